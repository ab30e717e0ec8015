//! The `klambda` command: `klambda up` runs the whole platform on one machine (the embedded
//! broker wired from `eventing/`, the five stages, local storage, builder and runner); the other
//! commands are clients of a running platform: deploy a function directory and follow it,
//! invoke, status, events, replay, delete, rollback.
//!
//! # Layout
//! - [`embedded`]: the embedded platform.
//! - [`server`]: `klambda up`'s HTTP face: broker ingress and status API.
//! - [`client`]: the client commands.
//! - [`function_triggers`]: users' function Triggers on the bus.
//! - The AWS Lambda API is `status_reporter::lambda_api`, over the local runner here
//!   ([`embedded::Platform`] is its `Functions`).

pub mod client;
pub mod embedded;
pub mod function_triggers;
pub mod server;
