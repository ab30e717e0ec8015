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
//! - [`lambda_api`]: the AWS Lambda API (Invoke, GetFunction, ListFunctions) with SigV4.

pub mod client;
pub mod embedded;
pub mod function_triggers;
pub mod lambda_api;
pub mod server;
