//! The knative-lambda event contract: every CloudEvent type the platform emits or consumes, its
//! data as typed serde structs with a JSON Schema, its version, its producers and its consumer.
//!
//! Events are the only interface between stages, so this crate is the one place a type name, a
//! data field or a version is spelled. Stages decode their input with [`decode`] and build their
//! output with [`Envelope::encode`]; they never write a type string themselves.
//!
//! # Layout
//! - [`catalogue`]: the event types as marker structs implementing [`EventType`], and
//!   [`CATALOGUE`], the same list as data (producers, consumer, schema).
//! - [`data`]: the data each type carries.
//! - [`spec`]: the function as submitted and as normalised by the parser.
//! - [`ids`]: `FunctionName`, `ContentDigest`, `BuildId`: identifiers that validate on
//!   construction.
//! - [`runtime`]: the known runtimes and their template versions.
//! - [`envelope`]: typed data in and out of `cloudevents::Event`, deterministic reply ids.
//! - [`external`]: types other components define that stages consume (ApiServerSource).
//! - [`ssrf`]: which hosts and addresses a source may be fetched from (parser and uploader).
//! - [`status`]: the status API's answers, served by the status reporter and read by the CLI.
//! - [`docs`]: the generated `docs/EVENTS.md` and `eventing/schemas/` files.

pub mod catalogue;
pub mod codec;
pub mod data;
pub mod digest;
pub mod docs;
pub mod envelope;
pub mod external;
pub mod ids;
pub mod iso8601;
pub mod manifest;
pub mod runtime;
pub mod spec;
pub mod ssrf;
pub mod status;

pub use catalogue::{
    CATALOGUE, Emission, EventSpec, EventType, Producer, Progress, Stage, TYPE_PREFIX,
};
pub use envelope::{DecodeError, Envelope, Reply, decode, reply};
pub use ids::{BuildId, ContentDigest, FunctionName, InvalidId};
pub use runtime::{Language, Runtime};
pub use spec::FunctionSpec;

/// Re-exported so stages and tests name one `cloudevents` version.
pub use cloudevents;
