//! The webhook gateway: the platform's second ingress, for CI systems. Buildkite and GitHub
//! webhooks come in, are authenticated, validated field by field and turned into compact
//! CloudEvents (`com.buildkite.build.finished`, `com.github.push`, …) that any Trigger can route,
//! and go onto the broker.
//!
//! # Layout
//! - [`auth`]: Buildkite token and signature (with a replay window), GitHub signature.
//! - [`payload`]: reading payloads with every problem listed.
//! - [`sources`]: payloads into CloudEvents; unknown events forwarded as they are.
//! - [`limit`]: per-source rate limiting.
//! - [`metrics`]: what `/metrics` exports.
//! - [`openapi`]: the OpenAPI document of the routes.
//! - [`outbox`]: retries, circuit breaker, dead-letter store.
//! - [`settings`]: the settings file and environment, validated and shown redacted.
//! - [`rules`]: a passed build into `function.updated` for the function it builds.
//! - [`gateway`]: the routes, security headers, problem details, publishing.

pub mod auth;
pub mod gateway;
pub mod limit;
pub mod metrics;
pub mod openapi;
pub mod outbox;
pub mod payload;
pub mod rules;
pub mod settings;
pub mod sources;

pub use gateway::{Config, router};
