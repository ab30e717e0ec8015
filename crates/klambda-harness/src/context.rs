//! What a handler gets besides its event: a way to publish side events, traced and counted; and
//! what a stage publishes on its own, outside any event ([`Emitter`]).

use std::sync::Arc;

use cloudevents::Event;
use klambda_events::{Envelope, Progress, Reply};

use crate::metrics::Metrics;
use crate::publisher::Publisher;
use crate::signing::EventKeys;
use crate::trace::{self, TraceParent};

/// Publishes the events a stage originates on its own, in answer to no input (the local runner
/// reporting a function process it restarted): signed like every event the stage emits, best
/// effort, and counted as side events. A [`crate::Handler`] gets one in
/// [`crate::Handler::on_start`].
#[derive(Clone)]
pub struct Emitter {
    pub(crate) publisher: Arc<dyn Publisher>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) keys: Option<Arc<EventKeys>>,
}

impl Emitter {
    /// Publishes `data` as a [`Progress`] event of type `T` under `envelope`. Best effort: a
    /// broker hiccup is logged and counted (`klambda_stage_side_events_total{outcome="failed"}`).
    pub async fn emit<T: Progress>(&self, envelope: Envelope, data: &T::Data) {
        self.publish(envelope.encode::<T>(data)).await;
    }

    /// Puts a client's event into the broker as the client made it (not signed: it speaks for
    /// the client, not the stage), and says whether the broker took it: for what a stage accepts
    /// on a client's behalf, such as the Lambda API's asynchronous invocations.
    pub async fn forward(&self, event: Event) -> Result<(), crate::publisher::PublishError> {
        self.publisher.publish(event).await
    }

    async fn publish(&self, mut event: Event) {
        if let Some(keys) = &self.keys {
            keys.sign(&mut event);
        }
        match self.publisher.publish(event).await {
            Ok(()) => self.metrics.side_event("published"),
            Err(error) => {
                self.metrics.side_event("failed");
                tracing::warn!(%error, "side event not published");
            }
        }
    }
}

/// The per-event context a [`crate::Handler`] receives.
#[derive(Clone)]
pub struct Context {
    pub(crate) emitter: Emitter,
    pub(crate) trace: Option<TraceParent>,
    pub(crate) span: tracing::Span,
}

impl Context {
    /// Publishes progress (e.g. `*.started`) to the broker, in the input's trace.
    ///
    /// Best effort by design, and so only for [`Progress`] types: progress is informative, the
    /// reply carries the outcome, so a broker hiccup here is logged and counted
    /// (`klambda_stage_side_events_total{outcome="failed"}`) but does not fail the handling and
    /// cause a redelivery. An outcome is always the handler's reply ([`crate::Outcome::Reply`]).
    pub async fn progress<T: Progress>(&self, progress: Reply<T>, data: &T::Data) {
        self.publish(progress.data(data)).await;
    }

    async fn publish(&self, mut event: Event) {
        let trace = trace::for_emitted(
            self.trace,
            &self.span,
            cloudevents::AttributesReader::id(&event),
        );
        trace::stamp(&mut event, trace);
        self.emitter.publish(event).await;
    }

    /// The process's metrics, for what only this stage can count (build outcomes, context
    /// sizes, …).
    pub fn metrics(&self) -> &Metrics {
        &self.emitter.metrics
    }

    /// The trace context of the input event, if it had one.
    pub fn trace(&self) -> Option<TraceParent> {
        self.trace
    }
}
