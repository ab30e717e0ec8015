//! The broker off the cluster: Knative Eventing's Broker and Triggers in one process
//! ([`Broker`], in memory) or over RabbitMQ ([`AmqpBroker`], laid out as eventing-rabbitmq
//! lays it out).
//!
//! It reads the same Trigger manifests as the cluster (`eventing/`), matches events with the
//! RabbitMQ broker's exact-match filters, delivers them to in-process stages or HTTP endpoints
//! with Knative's retry, backoff and timeout rules, publishes replies back in, and dead-letters
//! what cannot be delivered with the `knativeerror*` attributes. Used by the embedded mode and by
//! tests; on a cluster, Knative and RabbitMQ do this job. Both brokers share the Trigger
//! loading, the delivery rules and the subscribers.
//!
//! # Layout
//! - [`amqp`]: the RabbitMQ broker: topology, AMQP binary mode, per-Trigger dispatchers.
//! - [`trigger`]: Triggers loaded from manifests; filter matching.
//! - [`delivery`]: retry decisions, backoff formulas, ISO-8601 durations.
//! - [`subscriber`]: delivery targets: in-process harness or HTTP.
//! - [`broker`]: queues, workers, re-ingestion of replies.
//! - [`dead_letter`]: failed deliveries with their error attributes.
//! - [`ingress`]: the broker as the harness's side-event publisher.
//! - [`journal`]: each attempt of each delivery to a function, for `klambda events`.

pub mod amqp;
pub mod broker;
pub mod dead_letter;
pub mod delivery;
pub mod ingress;
pub mod journal;
pub mod subscriber;
pub mod trigger;

pub use amqp::{AmqpBroker, AmqpError};
pub use broker::{Broker, Options, StartError};
pub use dead_letter::DeadLetter;
pub use delivery::Delivery;
pub use ingress::Ingress;
pub use subscriber::{Answer, Http, InProcess, Subscriber};
pub use trigger::Trigger;
