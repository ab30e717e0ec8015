//! The gateway's metrics, on `GET /metrics` (OpenMetrics text). Labels are bounded: sources are
//! two, outcomes a fixed set, and event names outside the ones this gateway knows are `other`.
//!
//! | metric | labels | meaning |
//! | --- | --- | --- |
//! | `klambda_webhook_requests_total` | `source`, `event`, `outcome` | webhooks by how they ended |
//! | `klambda_webhook_auth_failures_total` | `source` | deliveries that failed authentication |
//! | `klambda_webhook_publish_duration_seconds` | | one publish, retries included |
//! | `klambda_webhook_publish_retries_total` | | publish attempts after the first |
//! | `klambda_webhook_breaker_state` | | 0 closed, 1 half-open, 2 open |
//! | `klambda_webhook_dead_letters` | | events in the dead-letter store |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::sources::Origin;

/// Event names counted by name; anything else is `other`.
const KNOWN_EVENTS: &[&str] = &[
    "ping",
    "build.scheduled",
    "build.running",
    "build.failing",
    "build.finished",
    "build.skipped",
    "build.canceling",
    "job.scheduled",
    "job.started",
    "job.finished",
    "job.activated",
    "agent.connected",
    "agent.lost",
    "agent.disconnected",
    "agent.stopping",
    "agent.stopped",
    "push",
    "workflow_run",
    "pull_request",
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    source: &'static str,
    event: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

/// The gateway's registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    auth_failures: Family<SourceLabels, Counter>,
    /// One publish, retries included.
    pub publish_duration: Histogram,
    /// Publish attempts after the first.
    pub retries: Counter,
    /// 0 closed, 1 half-open, 2 open.
    pub breaker: Gauge,
    /// Events in the dead-letter store.
    pub dead_letters: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let auth_failures = Family::<SourceLabels, Counter>::default();
        let publish_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let retries = Counter::default();
        let breaker = Gauge::default();
        let dead_letters = Gauge::default();
        registry.register(
            "klambda_webhook_requests",
            "Webhooks by source, event and how they ended",
            requests.clone(),
        );
        registry.register(
            "klambda_webhook_auth_failures",
            "Deliveries that failed authentication",
            auth_failures.clone(),
        );
        registry.register_with_unit(
            "klambda_webhook_publish_duration",
            "One publish to the broker, retries included",
            prometheus_client::registry::Unit::Seconds,
            publish_duration.clone(),
        );
        registry.register(
            "klambda_webhook_publish_retries",
            "Publish attempts after the first",
            retries.clone(),
        );
        registry.register(
            "klambda_webhook_breaker_state",
            "The circuit breaker: 0 closed, 1 half-open, 2 open",
            breaker.clone(),
        );
        registry.register(
            "klambda_webhook_dead_letters",
            "Events in the dead-letter store",
            dead_letters.clone(),
        );
        Self {
            registry,
            requests,
            auth_failures,
            publish_duration,
            retries,
            breaker,
            dead_letters,
        }
    }
}

impl Metrics {
    /// Counts one webhook.
    pub fn request(&self, origin: Origin, event: &str, outcome: &'static str) {
        let event = KNOWN_EVENTS
            .iter()
            .copied()
            .find(|known| *known == event)
            .unwrap_or("other");
        self.requests
            .get_or_create(&RequestLabels {
                source: origin.name(),
                event,
                outcome,
            })
            .inc();
    }

    /// Counts one authentication failure.
    pub fn auth_failure(&self, origin: Origin) {
        self.auth_failures
            .get_or_create(&SourceLabels {
                source: origin.name(),
            })
            .inc();
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
