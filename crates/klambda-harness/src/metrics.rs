//! The stage's Prometheus metrics: requests by event type and outcome, and handling latency.
//!
//! Labels are bounded: the event type is a catalogue type or `other`, never a free string from
//! the request, so a producer cannot blow up the series count.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// The OpenMetrics text media type `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    stage: &'static str,
    event_type: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    stage: &'static str,
    event_type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideEventLabels {
    stage: &'static str,
    outcome: &'static str,
}

/// The metrics of one stage.
pub struct Metrics {
    stage: &'static str,
    /// Shared by every [`Metrics::for_stage`] view, so one process serving several stages
    /// (`klambda up`) exports one registry with a `stage` label per stage.
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    side_events: Family<SideEventLabels, Counter>,
}

impl Metrics {
    /// A fresh registry for `stage` (one per harness, so tests do not share counters).
    pub fn new(stage: &'static str) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency =
            Family::<LatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
            });
        let side_events = Family::<SideEventLabels, Counter>::default();
        registry.register(
            "klambda_stage_requests",
            "Events received, by event type and outcome (reply, done, rejected, retryable, too_large, malformed)",
            requests.clone(),
        );
        registry.register(
            "klambda_stage_handler_duration_seconds",
            "Time from a decoded event to its outcome",
            latency.clone(),
        );
        registry.register(
            "klambda_stage_side_events",
            "Side events (such as *.started) published to the broker, by outcome",
            side_events.clone(),
        );
        Self {
            stage,
            registry: Arc::new(registry),
            requests,
            latency,
            side_events,
        }
    }

    /// The same registry and counters, labelled for another stage: what an embedded platform
    /// gives each in-process stage, so its single `/metrics` covers all of them.
    pub fn for_stage(&self, stage: &'static str) -> Self {
        Self {
            stage,
            registry: Arc::clone(&self.registry),
            requests: self.requests.clone(),
            latency: self.latency.clone(),
            side_events: self.side_events.clone(),
        }
    }

    /// Counts one request.
    pub fn request(&self, event_type: &'static str, outcome: &'static str) {
        self.requests
            .get_or_create(&RequestLabels {
                stage: self.stage,
                event_type,
                outcome,
            })
            .inc();
    }

    /// Records how long handling took.
    pub fn latency(&self, event_type: &'static str, seconds: f64) {
        self.latency
            .get_or_create(&LatencyLabels {
                stage: self.stage,
                event_type,
            })
            .observe(seconds);
    }

    /// Counts one side-event publish.
    pub fn side_event(&self, outcome: &'static str) {
        self.side_events
            .get_or_create(&SideEventLabels {
                stage: self.stage,
                outcome,
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The bounded label for an event type: the catalogue's own string, or `other`.
pub fn type_label(event_type: &str) -> &'static str {
    klambda_events::catalogue::find(event_type).map_or("other", |spec| spec.type_name)
}
