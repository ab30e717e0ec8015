//! The broker as a [`Publisher`], so in-process stages send their side events (`*.started`)
//! into it, as they would post to the broker ingress at `K_SINK` on the cluster.
//!
//! Stages are built before the broker that delivers to them, so the ingress is created first
//! and connected once the broker has started.

use std::sync::{Arc, OnceLock};

use cloudevents::Event;
use klambda_harness::publisher::{BoxFuture, PublishError, Publisher};

use crate::Broker;

/// A publisher into a broker that is connected after construction.
#[derive(Clone, Default)]
pub struct Ingress {
    broker: Arc<OnceLock<Broker>>,
}

impl Ingress {
    /// An ingress not yet connected: publishing fails until [`Ingress::connect`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Connects to `broker`; later calls keep the first broker.
    pub fn connect(&self, broker: &Broker) {
        let _ = self.broker.set(broker.clone());
    }

    fn broker(&self) -> Result<&Broker, PublishError> {
        self.broker.get().ok_or_else(|| PublishError::Unreachable {
            sink: "embedded broker".into(),
            reason: "the broker has not started yet".into(),
        })
    }
}

impl Publisher for Ingress {
    fn publish(&self, event: Event) -> BoxFuture<'_, Result<(), PublishError>> {
        let result = self.broker().map(|broker| {
            broker.publish(event);
        });
        Box::pin(async move { result })
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        let result = self.broker().map(|_| ());
        Box::pin(async move { result })
    }
}
