//! Test helpers shared by every knative-lambda crate, so no test copies another's setup.
//!
//! # Layout
//! - [`manifests`]: load YAML manifests and check them against the real Knative CRD schemas in
//!   `../shared/schemas` (validation and the API server's pruning of undeclared fields).
//! - [`bench`]: arguments of the benchmark binaries.
//! - [`event_format`]: the CloudEvents JSON format conformance table, against any status store.
//! - [`fixtures`]: specs and events built from the contract, so no stage's tests borrow another.
//! - [`jobs`]: what the Job controller and kubelet leave on a build Job, and its source event.
//! - [`http`]: serve a router on a port-0 listener and talk to it over real HTTP.
//! - [`otlp`]: an OTLP/gRPC trace receiver that keeps what it is sent.
//! - [`process`]: free ports, waiting for a process to answer, stopping it with SIGTERM.
//! - [`rabbitmq`]: the RabbitMQ tests use, and a guard that deletes a test instance's topology.
//! - [`repo`]: paths of the repository and of the shared folder beside it.
//! - [`s3`]: a real S3-compatible server (`s3s-fs`) per test.

pub mod aws;
pub mod bench;
pub mod event_format;
pub mod fixtures;
pub mod http;
pub mod images;
pub mod jobs;
pub mod kubernetes;
pub mod manifests;
pub mod otlp;
pub mod process;
pub mod rabbitmq;
pub mod repo;
pub mod s3;
