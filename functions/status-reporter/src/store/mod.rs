//! Where the status reporter keeps the event log and the folded function states: SQLite by
//! default (a file, nothing to run), PostgreSQL when `DATABASE_URL` is a postgres URL.
//!
//! **Invariant:** appending an event and folding it into its function's state happen in one
//! transaction, and an event already recorded (same `source` + `id`) changes nothing: replays
//! and broker redeliveries are no-ops.

mod sql;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use cloudevents::Event;
use klambda_events::data::Phase;
use serde_json::Value;

use crate::fold::FunctionState;

pub use sql::SqlStore;

/// A boxed future, so the handler holds `Arc<dyn StatusStore>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why the store failed. Always retryable from the broker's point of view.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or could not be reached.
    #[error("status store: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored state could not be read back.
    #[error("status store: corrupt state for {name}: {reason}")]
    Corrupt {
        /// The function.
        name: String,
        /// What failed.
        reason: String,
    },
    /// `DATABASE_URL` names no supported database.
    #[error("DATABASE_URL {0:?} is neither sqlite:… nor postgres://…")]
    UnsupportedUrl(String),
}

/// The outcome of recording one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// False when the event was already in the log.
    pub new: bool,
    /// The function's state after folding, when it changed.
    pub state: Option<FunctionState>,
}

/// Counts over the stored state, for gauges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Census {
    /// Functions per phase (phases with none are absent).
    pub phases: BTreeMap<Phase, i64>,
    /// Dead letters kept.
    pub dead_letters: i64,
}

/// One stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Position in the log.
    pub seq: i64,
    /// When it was received.
    pub received_at: DateTime<Utc>,
    /// The event in structured mode, exactly as stored.
    pub body: String,
}

impl StoredEvent {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// The fold applied while recording.
pub type Folder = fn(Option<FunctionState>, &Event, DateTime<Utc>) -> Option<FunctionState>;

/// The event log and function states.
pub trait StatusStore: Send + Sync + 'static {
    /// Appends `event` (unless already recorded) and folds it into `function`'s state.
    fn record<'a>(
        &'a self,
        event: &'a Event,
        function: Option<&'a str>,
        received_at: DateTime<Utc>,
        fold: Folder,
    ) -> BoxFuture<'a, Result<Recorded, StoreError>>;
    /// Every function's state, by name.
    fn functions(&self) -> BoxFuture<'_, Result<Vec<FunctionState>, StoreError>>;
    /// One function's state.
    fn function<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<FunctionState>, StoreError>>;
    /// A function's events recorded after sequence number `after` (0: from the start), oldest
    /// first, at most `limit`.
    fn function_events<'a>(
        &'a self,
        name: &'a str,
        after: i64,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<StoredEvent>, StoreError>>;
    /// The first event recorded with this id.
    fn event<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<StoredEvent>, StoreError>>;
    /// Keeps a dead-lettered event (with its `knativeerror*` attributes); false when this
    /// event was already dead-lettered from the same destination.
    fn record_dead_letter<'a>(
        &'a self,
        event: &'a Event,
        received_at: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Dead letters, oldest first, at most `limit`.
    fn dead_letters(&self, limit: i64) -> BoxFuture<'_, Result<Vec<StoredEvent>, StoreError>>;
    /// One dead letter by its sequence number.
    fn dead_letter(&self, seq: i64) -> BoxFuture<'_, Result<Option<StoredEvent>, StoreError>>;
    /// Removes one dead letter (after a redrive), or all of them (`None`: a purge); returns how
    /// many were removed.
    fn remove_dead_letters(&self, seq: Option<i64>) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// Whether the database answers.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// What `/metrics` reports about the store: functions per phase and dead letters kept.
    fn census(&self) -> BoxFuture<'_, Result<Census, StoreError>>;
}

/// Opens the store `url` names: `postgres://…` / `postgresql://…`, or `sqlite:PATH`.
/// Connections are lazy, so this works before the runtime has started serving.
pub fn open(url: &str) -> Result<Box<dyn StatusStore>, StoreError> {
    Ok(Box::new(SqlStore::connect_lazy(url)?))
}

fn encode_state(state: &FunctionState) -> String {
    serde_json::to_string(state).unwrap_or_default()
}

fn decode_state(name: &str, text: &str) -> Result<FunctionState, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

fn structured(event: &Event) -> String {
    klambda_harness::codec::to_structured(event).to_string()
}
