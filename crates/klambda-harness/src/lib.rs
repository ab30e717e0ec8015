//! The harness: one way to serve any knative-lambda stage handler.
//!
//! A stage implements [`Handler`] (one CloudEvent in, an [`Outcome`] out); the harness serves it
//! - as a Knative Service: axum on `$PORT`, `POST /` in binary or structured mode, answering
//!   `200` + the reply event, `202` when nothing follows, `4xx` with RFC 7807 problem details,
//!   `5xx` for retryable failures; `GET /health`, `GET /ready`, `GET /metrics`;
//! - as an AWS Lambda through `lambda_http` when `AWS_LAMBDA_RUNTIME_API` is set (same router);
//! - in-process through [`Harness::dispatch`], for the embedded mode and tests.
//!
//! # Layout
//! - [`handler`]: the [`Handler`] trait, [`Outcome`], [`HandlerError`] with its retry decision.
//! - [`harness`]: [`Harness`], the router and the in-process path.
//! - [`codec`]: CloudEvents over HTTP, decoding with every problem listed.
//! - [`problem`]: RFC 7807 problem details.
//! - [`context`]: what a handler gets besides its event (side-event publishing).
//! - [`publisher`]: where side events go (`K_SINK` over HTTP, discard, memory).
//! - [`config`]: settings from environment and flags, validated at once; secrets.
//! - [`trace`]: W3C trace context through events.
//! - [`auth`]: bearer tokens on the routes that change or reveal state.
//! - [`listen`]: serving a router with header and body deadlines and a connection cap.
//! - [`metrics`]: Prometheus metrics with bounded labels.
//! - [`signing`]: internal events signed by the stage that emits them, checked by the next.
//! - [`telemetry`]: JSON logs and OTLP traces.
//! - [`serve`]: serving with a graceful drain on SIGTERM; a stage's whole `main`.
//! - [`lambda`]: the AWS Lambda entry.

pub mod auth;
/// CloudEvents over HTTP, in the contract crate (`klambda_events::codec`) so the decoders can be
/// fuzzed without the server around them.
pub use klambda_events::codec;
pub mod config;
pub mod context;
pub mod handler;
pub mod harness;
pub mod lambda;
pub mod listen;
pub mod metrics;
pub mod problem;
pub mod publisher;
pub mod serve;
pub mod signing;
pub mod telemetry;
pub mod trace;

pub use config::{ConfigError, ConfigSource, Settings, StageSetting};
pub use context::{Context, Emitter};
pub use handler::{Handler, HandlerError, Outcome};
pub use harness::Harness;
pub use serve::{run, serve};
