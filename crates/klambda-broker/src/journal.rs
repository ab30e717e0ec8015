//! What happened to each delivery to a user's function: one record per attempt (replied,
//! accepted, retried, dead-lettered), the latest few hundred per function, kept by the process
//! that delivers to it (the data plane, where the function runs), as its logs are.
//!
//! This is observability, not work: an event's fate is kept by the broker (delivered, or in the
//! dead letters), never by this journal. So it is bounded and in memory; a restart starts it
//! afresh, and the dead letters still say what failed.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use cloudevents::{AttributesReader as _, Event};
use serde::Serialize;

/// How many records are kept per function: the oldest go first.
pub const KEPT_PER_FUNCTION: usize = 500;

/// How one attempt of a delivery ended, as the delivery loop decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The subscriber replied with an event, which goes back on the bus.
    Replied,
    /// The subscriber accepted it; nothing follows.
    Accepted,
    /// It failed and will be tried again after the backoff.
    Retried,
    /// It failed for good: not retryable, or the last attempt. The event is in the dead letters.
    DeadLettered,
}

impl Outcome {
    /// The outcome as `/metrics` and the journal name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replied => "replied",
            Self::Accepted => "accepted",
            Self::Retried => "retried",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

/// One attempt of one delivery through one Trigger.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    /// The Trigger delivering.
    pub trigger: &'a str,
    /// The event delivered.
    pub event: &'a Event,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// The subscriber's HTTP status, when one came back.
    pub status: Option<u16>,
    /// How long the attempt took (the backoff before it excluded).
    pub duration: Duration,
    /// What the subscriber answered when it failed (its body, or why there was no answer).
    pub reason: Option<String>,
}

/// An [`Attempt`] as recorded and served (`GET /functions/{name}/deliveries`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    /// When the attempt ended (RFC 3339).
    pub time: String,
    /// The Trigger delivering.
    pub trigger: String,
    /// The delivered event's id.
    pub event_id: String,
    /// The delivered event's type.
    pub event_type: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// The function's HTTP status, when one came back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// How long the attempt took, in milliseconds.
    pub duration_ms: f64,
    /// Why it failed, at most 512 bytes of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The reason is an excerpt: a function's error body can be large.
const REASON_LIMIT: usize = 512;

impl DeliveryRecord {
    fn of(attempt: &Attempt<'_>) -> Self {
        let reason = attempt.reason.as_deref().map(|reason| {
            let mut end = reason.len().min(REASON_LIMIT);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason[..end].to_owned()
        });
        Self {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            trigger: attempt.trigger.to_owned(),
            event_id: attempt.event.id().to_owned(),
            event_type: attempt.event.ty().to_owned(),
            attempt: attempt.attempt,
            outcome: attempt.outcome,
            status: attempt.status,
            duration_ms: attempt.duration.as_secs_f64() * 1000.0,
            reason,
        }
    }
}

/// The latest deliveries to each function.
#[derive(Debug, Default)]
pub struct Journal {
    functions: Mutex<HashMap<String, VecDeque<DeliveryRecord>>>,
}

impl Journal {
    /// Records `attempt` for `function`, forgetting its oldest record past
    /// [`KEPT_PER_FUNCTION`].
    pub fn record(&self, function: &str, attempt: &Attempt<'_>) {
        let record = DeliveryRecord::of(attempt);
        let mut functions = self
            .functions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let records = functions.entry(function.to_owned()).or_default();
        if records.len() == KEPT_PER_FUNCTION {
            records.pop_front();
        }
        records.push_back(record);
    }

    /// `function`'s records, oldest first: the latest `limit`.
    pub fn recent(&self, function: &str, limit: usize) -> Vec<DeliveryRecord> {
        let functions = self
            .functions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(records) = functions.get(function) else {
            return Vec::new();
        };
        let skip = records.len().saturating_sub(limit);
        records.iter().skip(skip).cloned().collect()
    }

    /// Forgets `function` (deleted): a function created again under its name starts afresh.
    pub fn forget(&self, function: &str) {
        self.functions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(function);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::EventBuilder as _;

    fn event(id: &str) -> Event {
        cloudevents::EventBuilderV10::new()
            .id(id)
            .ty("com.example.order.created")
            .source("/test")
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn attempt<'a>(event: &'a Event, outcome: Outcome, reason: Option<String>) -> Attempt<'a> {
        Attempt {
            trigger: "fn-pricer-0",
            event,
            attempt: 1,
            outcome,
            status: Some(503),
            duration: Duration::from_millis(3),
            reason,
        }
    }

    #[test]
    fn keeps_the_latest_records_of_each_function_apart() {
        let journal = Journal::default();
        for n in 0..KEPT_PER_FUNCTION + 3 {
            let event = event(&n.to_string());
            journal.record("pricer", &attempt(&event, Outcome::Accepted, None));
        }
        let other = event("x");
        journal.record("shipper", &attempt(&other, Outcome::Retried, None));
        let kept = journal.recent("pricer", usize::MAX);
        assert_eq!(kept.len(), KEPT_PER_FUNCTION);
        assert_eq!(kept[0].event_id, "3", "the oldest three were forgotten");
        let last_two: Vec<_> = journal
            .recent("pricer", 2)
            .into_iter()
            .map(|r| r.event_id)
            .collect();
        assert_eq!(last_two, ["501", "502"]);
        assert_eq!(journal.recent("shipper", 10)[0].outcome, Outcome::Retried);
        journal.forget("pricer");
        assert!(journal.recent("pricer", 10).is_empty());
        assert_eq!(journal.recent("shipper", 10).len(), 1);
    }

    #[test]
    fn a_reason_is_cut_on_a_character_boundary() {
        let event = event("1");
        let long = "é".repeat(REASON_LIMIT);
        let journal = Journal::default();
        journal.record(
            "pricer",
            &attempt(&event, Outcome::DeadLettered, Some(long)),
        );
        let record = &journal.recent("pricer", 1)[0];
        let reason = record.reason.as_deref().unwrap_or_default();
        assert_eq!(reason.len(), REASON_LIMIT);
        assert!(reason.chars().all(|c| c == 'é'));
        let json = serde_json::to_value(record).unwrap_or_default();
        assert_eq!(json["outcome"], "dead_lettered");
        assert_eq!(json["eventType"], "com.example.order.created");
        assert_eq!(json["status"], 503);
    }
}
