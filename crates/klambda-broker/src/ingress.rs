//! A publisher connected after construction, so in-process stages send their side events
//! (`*.started`) into the broker, as they would post to the broker ingress at `K_SINK` on the
//! cluster.
//!
//! Stages are built before the embedded broker that delivers to them, so the ingress is created
//! first and connected once the broker has started.

use std::sync::{Arc, OnceLock};

use cloudevents::Event;
use klambda_harness::publisher::{BoxFuture, PublishError, Publisher};

/// A publisher into a broker that is connected after construction.
#[derive(Clone, Default)]
pub struct Ingress {
    broker: Arc<OnceLock<Arc<dyn Publisher>>>,
}

impl Ingress {
    /// An ingress not yet connected: publishing fails until [`Ingress::connect`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Connects to `broker` (the embedded [`crate::Broker`] or a [`crate::AmqpBroker`]); later
    /// calls keep the first broker.
    pub fn connect(&self, broker: Arc<dyn Publisher>) {
        let _ = self.broker.set(broker);
    }

    fn broker(&self) -> Result<&Arc<dyn Publisher>, PublishError> {
        self.broker.get().ok_or_else(|| PublishError::Unreachable {
            sink: "broker".into(),
            reason: "the broker has not started yet".into(),
        })
    }
}

impl Publisher for Ingress {
    fn publish(&self, event: Event) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async move { self.broker()?.publish(event).await })
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async move { self.broker()?.ready().await })
    }
}
