//! Knative's delivery rules (`spec.delivery` of a Broker or Trigger), as the embedded broker
//! applies them: which answers are retried, how long to wait before each retry, how long one
//! attempt may take.
//!
//! From the Knative data-plane spec and eventing-rabbitmq (see `../shared/EVENTING.md`):
//! retried on no response / transport error, 5xx, 404, 408, 409 and 429; the wait before retry
//! `n` (1-based) is `delay × n` (linear) or `delay × 2^n` (exponential); attempts = retry + 1.
//! Other 4xx are not retried and, unlike eventing-rabbitmq (which acks and drops them), are
//! dead-lettered so nothing is lost.

use std::time::Duration;

use cloudevents::Event;
use klambda_harness::metrics::Metrics;
use serde_json::Value;

use crate::dead_letter::{DeadLetter, with_error_attributes};
use crate::journal::{Attempt, Outcome};
use crate::subscriber::{Answer, Subscriber};

/// How the wait between attempts grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackoffPolicy {
    /// `delay × n`.
    Linear,
    /// `delay × 2^n`.
    Exponential,
}

/// The delivery settings that apply to one Trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Retries after the first attempt.
    pub retry: u32,
    /// How the wait grows.
    pub backoff_policy: BackoffPolicy,
    /// The base wait.
    pub backoff_delay: Duration,
    /// The longest one attempt may take (`None`: no limit beyond the subscriber's own).
    pub timeout: Option<Duration>,
}

impl Default for Delivery {
    /// Knative's cluster defaults, used when neither the Trigger nor the Broker says anything.
    fn default() -> Self {
        Self {
            retry: 10,
            backoff_policy: BackoffPolicy::Exponential,
            backoff_delay: Duration::from_millis(200),
            timeout: None,
        }
    }
}

impl Delivery {
    /// The wait before retry `n` (1-based).
    pub fn backoff(&self, n: u32) -> Duration {
        match self.backoff_policy {
            BackoffPolicy::Linear => self.backoff_delay.saturating_mul(n),
            BackoffPolicy::Exponential => self
                .backoff_delay
                .saturating_mul(2u32.saturating_pow(n.min(30))),
        }
    }

    /// Total attempts: the first plus the retries.
    pub fn attempts(&self) -> u32 {
        self.retry.saturating_add(1)
    }

    /// A function's `delivery` (from its `klambda.json`, validated by the parser), read as a
    /// Trigger's `spec.delivery` is.
    pub fn from_function(spec: &klambda_events::spec::DeliverySpec) -> Result<Self, String> {
        Self::from_spec(&serde_json::to_value(spec).map_err(|e| e.to_string())?)
    }

    /// Reads a `spec.delivery` object. Absent fields take Knative's defaults.
    pub fn from_spec(spec: &Value) -> Result<Self, String> {
        let mut delivery = Delivery::default();
        if let Some(retry) = spec.get("retry") {
            delivery.retry = retry
                .as_u64()
                .and_then(|r| u32::try_from(r).ok())
                .ok_or_else(|| format!("delivery.retry {retry} is not a non-negative integer"))?;
        }
        match spec.get("backoffPolicy").and_then(Value::as_str) {
            None | Some("exponential") => {}
            Some("linear") => delivery.backoff_policy = BackoffPolicy::Linear,
            Some(other) => {
                return Err(format!(
                    "delivery.backoffPolicy {other:?} is not linear or exponential"
                ));
            }
        }
        if let Some(delay) = spec.get("backoffDelay").and_then(Value::as_str) {
            delivery.backoff_delay = klambda_events::iso8601::duration(delay).ok_or_else(|| {
                format!("delivery.backoffDelay {delay:?} is not an ISO-8601 duration")
            })?;
        }
        if let Some(timeout) = spec.get("timeout").and_then(Value::as_str) {
            delivery.timeout =
                Some(klambda_events::iso8601::duration(timeout).ok_or_else(|| {
                    format!("delivery.timeout {timeout:?} is not an ISO-8601 duration")
                })?);
        }
        Ok(delivery)
    }
}

/// Whether an HTTP answer is retried (`None`: no answer at all, a transport error or timeout).
pub fn is_retryable(status: Option<u16>) -> bool {
    match status {
        None => true,
        Some(code) => code >= 500 || matches!(code, 404 | 408 | 409 | 429),
    }
}

/// How one event's delivery through a Trigger ended.
pub(crate) enum Delivered {
    /// The subscriber replied with this event.
    Reply(Event),
    /// The subscriber accepted it; nothing follows.
    Accepted,
    /// Retries are exhausted or the failure is not retryable.
    DeadLetter(DeadLetter),
}

/// Delivers `event` to `subscriber` for the Trigger named `trigger` under its `delivery` rules:
/// per-attempt timeout, retry on retryable answers with the policy's backoff, dead letter with
/// Knative's error attributes at the end.
pub(crate) async fn deliver(
    trigger: &str,
    delivery: &Delivery,
    subscriber: &dyn Subscriber,
    event: Event,
    metrics: &Metrics,
) -> Delivered {
    let started = std::time::Instant::now();
    let delivered = deliver_with_retries(trigger, delivery, subscriber, event, metrics).await;
    metrics.delivered(trigger, started.elapsed().as_secs_f64());
    delivered
}

async fn deliver_with_retries(
    trigger: &str,
    delivery: &Delivery,
    subscriber: &dyn Subscriber,
    event: Event,
    metrics: &Metrics,
) -> Delivered {
    let attempts = delivery.attempts();
    let mut attempt = 1;
    loop {
        let started = std::time::Instant::now();
        let answer = match delivery.timeout {
            None => subscriber.deliver(event.clone()).await,
            Some(limit) => {
                match tokio::time::timeout(limit, subscriber.deliver(event.clone())).await {
                    Ok(answer) => answer,
                    Err(_) => Answer::Failed {
                        status: None,
                        body: format!("no answer within {limit:?}").into(),
                    },
                }
            }
        };
        let (outcome, status, reason) = match &answer {
            Answer::Reply(_) => (Outcome::Replied, None, None),
            Answer::Accepted => (Outcome::Accepted, None, None),
            Answer::Failed { status, body } => {
                let last = !is_retryable(*status) || attempt >= attempts;
                let outcome = if last {
                    Outcome::DeadLettered
                } else {
                    Outcome::Retried
                };
                let reason = String::from_utf8_lossy(body).into_owned();
                (outcome, *status, Some(reason))
            }
        };
        metrics.delivery(trigger, outcome.as_str());
        subscriber.attempted(&Attempt {
            trigger,
            event: &event,
            attempt,
            outcome,
            status,
            duration: started.elapsed(),
            reason,
        });
        match (answer, outcome) {
            (Answer::Reply(reply), _) => return Delivered::Reply(reply),
            (Answer::Accepted, _) => return Delivered::Accepted,
            (Answer::Failed { status, body }, Outcome::DeadLettered) => {
                let event = with_error_attributes(event, &subscriber.address(), status, &body);
                return Delivered::DeadLetter(DeadLetter {
                    trigger: trigger.to_owned(),
                    attempts: attempt,
                    event,
                });
            }
            (Answer::Failed { status, .. }, _) => {
                tracing::debug!(trigger = %trigger, attempt, ?status, "delivery failed; retrying");
                tokio::time::sleep(delivery.backoff(attempt)).await;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_the_knative_formulas() {
        let mut delivery = Delivery {
            retry: 3,
            backoff_policy: BackoffPolicy::Linear,
            backoff_delay: Duration::from_millis(100),
            timeout: None,
        };
        let waits: Vec<u128> = (1..=3).map(|n| delivery.backoff(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 300]);
        delivery.backoff_policy = BackoffPolicy::Exponential;
        let waits: Vec<u128> = (1..=3).map(|n| delivery.backoff(n).as_millis()).collect();
        assert_eq!(waits, [200, 400, 800]);
        assert_eq!(delivery.attempts(), 4);
    }

    #[test]
    fn retries_exactly_the_retryable_answers() {
        for status in [
            None,
            Some(500),
            Some(503),
            Some(404),
            Some(408),
            Some(409),
            Some(429),
        ] {
            assert!(is_retryable(status), "{status:?}");
        }
        for status in [Some(400), Some(401), Some(403), Some(413), Some(422)] {
            assert!(!is_retryable(status), "{status:?}");
        }
    }

    #[test]
    fn reads_a_delivery_spec() {
        let spec = serde_json::json!({"retry": 5, "backoffPolicy": "linear", "backoffDelay": "PT0.5S", "timeout": "PT10S"});
        let delivery = Delivery::from_spec(&spec).unwrap();
        assert_eq!(delivery.retry, 5);
        assert_eq!(delivery.backoff_policy, BackoffPolicy::Linear);
        assert_eq!(delivery.backoff_delay, Duration::from_millis(500));
        assert_eq!(delivery.timeout, Some(Duration::from_secs(10)));
        assert!(Delivery::from_spec(&serde_json::json!({"backoffPolicy": "random"})).is_err());
        assert!(Delivery::from_spec(&serde_json::json!({"retry": -1})).is_err());
    }
}
