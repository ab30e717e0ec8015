//! Getting events onto the broker: retries with exponential backoff for retryable failures, a
//! circuit breaker so a broker that is down is not hammered (and senders are told when to come
//! back), and a dead-letter store for events that could not be published.
//!
//! - **Closed**: publish; `failure_threshold` failed publishes in a row open the breaker.
//! - **Open**: refuse at once (503 with `Retry-After`, `/ready` says so) until `open_for` passes.
//! - **Half-open**: one probe goes through; success closes the breaker, failure opens it again.
//!
//! An event whose retries are exhausted is written to the dead-letter directory (one JSON file
//! per event: the event, the reason, the attempts, when it was received), so nothing the gateway
//! answered `202` for is lost; `redrive` publishes it again.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cloudevents::Event;
use klambda_harness::publisher::{PublishError, Publisher};
use serde_json::{Value, json};

/// How publishing is retried and when the breaker opens.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Attempts per event, the first included.
    pub attempts: u32,
    /// The wait before retry n is `backoff × 2^(n-1)`.
    pub backoff: Duration,
    /// Events failed in a row that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before a probe.
    pub open_for: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff: Duration::from_millis(100),
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// What happened to an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The broker has it.
    Published,
    /// The broker refused it for good or retries ran out: it is in the dead-letter store.
    DeadLettered {
        /// Why.
        reason: String,
    },
    /// The breaker is open: nothing was tried; come back after this long.
    Refused {
        /// When to try again.
        retry_after: Duration,
    },
}

/// The publisher with retries, breaker and dead letters.
pub struct Outbox {
    publisher: std::sync::Arc<dyn Publisher>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    policy: Policy,
    state: Mutex<State>,
    dead_letters: PathBuf,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

impl Outbox {
    /// Publishes through `publisher`, dead-lettering into the directory `dead_letters`.
    pub fn new(
        publisher: std::sync::Arc<dyn Publisher>,
        policy: Policy,
        dead_letters: PathBuf,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self {
            publisher,
            metrics,
            policy,
            state: Mutex::new(State::Closed { failures: 0 }),
            dead_letters,
        }
    }

    /// `closed`, `open` or `half-open`.
    pub fn breaker(&self) -> &'static str {
        match self.state.lock().map(|s| *s) {
            Ok(State::Closed { .. }) => "closed",
            Ok(State::Open { until }) if Instant::now() >= until => "half-open",
            Ok(State::Open { .. }) => "open",
            Ok(State::HalfOpen { .. }) => "half-open",
            Err(_) => "open",
        }
    }

    /// Whether an attempt may go out now; otherwise how long until one may.
    fn admit(&self) -> Result<(), Duration> {
        let Ok(mut state) = self.state.lock() else {
            return Err(self.policy.open_for);
        };
        match *state {
            State::Closed { .. } => Ok(()),
            State::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    *state = State::HalfOpen { probing: true };
                    Ok(())
                } else {
                    Err(until - now)
                }
            }
            State::HalfOpen { probing: true } => Err(self.policy.open_for),
            State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                Ok(())
            }
        }
    }

    fn record(&self, success: bool) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        *state = match (*state, success) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.policy.failure_threshold => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            (_, false) => State::Open {
                until: Instant::now() + self.policy.open_for,
            },
        };
    }

    /// Publishes `event`: retried while the failure is retryable, dead-lettered when it cannot
    /// be published, refused at once while the breaker is open.
    pub async fn publish(&self, event: Event) -> Outcome {
        if let Err(retry_after) = self.admit() {
            return Outcome::Refused { retry_after };
        }
        let mut attempt = 1;
        let started = Instant::now();
        let reason = loop {
            match self.publisher.publish(event.clone()).await {
                Ok(()) => {
                    self.record(true);
                    self.metrics
                        .publish_duration
                        .observe(started.elapsed().as_secs_f64());
                    return Outcome::Published;
                }
                Err(error) if retryable(&error) && attempt < self.policy.attempts => {
                    tokio::time::sleep(self.policy.backoff * 2u32.pow(attempt - 1)).await;
                    self.metrics.retries.inc();
                    attempt += 1;
                }
                Err(error) => break error.to_string(),
            }
        };
        self.metrics
            .publish_duration
            .observe(started.elapsed().as_secs_f64());
        self.record(false);
        match self.keep(&event, &reason, attempt) {
            Ok(()) => Outcome::DeadLettered { reason },
            // Not even the dead-letter store took it: the sender must retry.
            Err(error) => {
                tracing::error!(%error, "the dead-letter store failed");
                Outcome::Refused {
                    retry_after: self.policy.open_for.min(Duration::from_secs(5)),
                }
            }
        }
    }

    fn keep(&self, event: &Event, reason: &str, attempts: u32) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dead_letters)?;
        let letter = json!({
            "event": klambda_harness::codec::to_structured(event),
            "reason": reason,
            "attempts": attempts,
            "receivedAt": chrono::Utc::now().to_rfc3339(),
        });
        let name = format!(
            "{}-{}-{}.json",
            chrono::Utc::now().timestamp_micros(),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let temp = self.dead_letters.join(format!(".{name}"));
        std::fs::write(&temp, serde_json::to_vec_pretty(&letter)?)?;
        std::fs::rename(&temp, self.dead_letters.join(name))
    }

    /// The dead letters' file names, oldest first (temporary files excluded).
    fn letter_names(&self) -> std::io::Result<Vec<String>> {
        let mut names: Vec<String> = match std::fs::read_dir(&self.dead_letters) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        names.sort();
        Ok(names)
    }

    /// How many dead letters there are (names only: what `/metrics` reads on every scrape).
    pub fn dead_letter_count(&self) -> std::io::Result<usize> {
        Ok(self.letter_names()?.len())
    }

    /// The dead letters, oldest first: `{id, event, reason, attempts, receivedAt}`.
    pub fn dead_letters(&self) -> std::io::Result<Vec<Value>> {
        let names = self.letter_names()?;
        let mut letters = Vec::new();
        for name in names {
            let text = std::fs::read(self.dead_letters.join(&name))?;
            let mut letter: Value = serde_json::from_slice(&text)?;
            letter["id"] = Value::String(name.trim_end_matches(".json").to_owned());
            letters.push(letter);
        }
        Ok(letters)
    }

    /// Publishes dead letters again (`only` one id, or all), removing each the broker took;
    /// returns how many were redriven. Stops at the first that fails again.
    pub async fn redrive(&self, only: Option<&str>) -> Result<usize, String> {
        let letters = self.dead_letters().map_err(|e| e.to_string())?;
        let mut redriven = 0;
        for letter in letters {
            let id = letter["id"].as_str().unwrap_or_default().to_owned();
            if only.is_some_and(|only| only != id) {
                continue;
            }
            let event: Event = serde_json::from_value(letter["event"].clone())
                .map_err(|e| format!("dead letter {id} is not an event: {e}"))?;
            if let Err(retry_after) = self.admit() {
                return Err(format!(
                    "the breaker is open; retry in {} s",
                    retry_after.as_secs().max(1)
                ));
            }
            match self.publisher.publish(event).await {
                Ok(()) => {
                    self.record(true);
                    std::fs::remove_file(self.dead_letters.join(format!("{id}.json")))
                        .map_err(|e| e.to_string())?;
                    redriven += 1;
                }
                Err(error) => {
                    self.record(false);
                    return Err(format!("dead letter {id} failed again: {error}"));
                }
            }
        }
        if let Some(only) = only
            && redriven == 0
        {
            return Err(format!("no dead letter {only}"));
        }
        Ok(redriven)
    }
}

/// Unreachable, 5xx, 408 and 429 are worth retrying; other refusals are not.
fn retryable(error: &PublishError) -> bool {
    match error {
        PublishError::Unreachable { .. } => true,
        PublishError::Refused { status, .. } => *status >= 500 || *status == 408 || *status == 429,
    }
}
