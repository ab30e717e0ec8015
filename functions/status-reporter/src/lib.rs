//! The status reporter stage: the platform's memory.
//!
//! - **Consumes** every event the broker carries (its Trigger has no filter).
//! - **Side effects**: appends each event to the event log (deduplicated on `source` + `id`) and
//!   folds `io.knative.lambda.*` events into the state of the function named by their
//!   `subject`, in one transaction.
//! - **Replies** `io.knative.lambda.status.updated` when a function's state changed; `202`
//!   otherwise, always for `status.updated` itself (so its catch-all Trigger cannot loop) and for
//!   replays (already recorded: no effect).
//! - **Serves** `GET /functions`, `GET /functions/{name}`, `GET /functions/{name}/events`,
//!   `GET /events/{id}`, and is the Broker's dead-letter sink: `POST /dead-letters` keeps the
//!   event with its `knativeerror*` attributes, `GET /dead-letters` lists them.
//! - **Store**: SQLite by default (`DATABASE_URL=sqlite:klambda-status.db`), PostgreSQL when
//!   `DATABASE_URL` is a postgres URL.
//!
//! # Layout
//! - [`fold`]: events → function state (pure).
//! - [`store`]: the event log and states, SQLite or PostgreSQL.
//! - [`api`]: the query routes.

pub mod api;
pub mod fold;
pub mod store;

use std::sync::Arc;

use chrono::Utc;
use cloudevents::{AttributesReader as _, Event};
use klambda_events::catalogue::StatusUpdated;
use klambda_events::data::FunctionStatus;
use klambda_events::{Envelope, EventType, Stage};
use klambda_harness::{ConfigError, ConfigSource, Context, Handler, HandlerError, Outcome};

use crate::fold::{fold, function_of};
use crate::store::StatusStore;

/// The store used when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "sqlite:klambda-status.db";

/// The status reporter's handler.
#[derive(Clone)]
pub struct StatusReporter {
    store: Arc<dyn StatusStore>,
}

impl StatusReporter {
    /// A reporter over `store`.
    pub fn new(store: Arc<dyn StatusStore>) -> Self {
        Self { store }
    }

    /// A reporter over the store `DATABASE_URL` names (default [`DEFAULT_DATABASE_URL`]).
    pub fn from_config(config: &dyn ConfigSource) -> Result<Self, ConfigError> {
        let url = config
            .get("DATABASE_URL")
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        // Never echo the URL: it may carry a password.
        let store = store::open(url.trim()).map_err(|e| ConfigError {
            problems: vec![format!(
                "DATABASE_URL: {}",
                match e {
                    store::StoreError::UnsupportedUrl(_) =>
                        "must be sqlite:PATH or postgres://… (value not shown)".to_owned(),
                    other => other.to_string(),
                }
            )],
        })?;
        Ok(Self::new(Arc::from(store)))
    }
}

impl Handler for StatusReporter {
    fn stage(&self) -> Stage {
        Stage::StatusReporter
    }

    /// Every event: the status reporter is the broker's catch-all subscriber.
    fn accepts(&self, _: &str) -> bool {
        true
    }

    async fn handle(&self, event: Event, _: &Context) -> Result<Outcome, HandlerError> {
        let function = function_of(&event);
        let recorded = self
            .store
            .record(
                &event,
                function.as_ref().map(|f| f.as_str()),
                Utc::now(),
                fold,
            )
            .await
            .map_err(|e| HandlerError::Unavailable(e.to_string()))?;
        let Some(state) = recorded
            .state
            .filter(|_| recorded.new && event.ty() != StatusUpdated::TYPE)
        else {
            return Ok(Outcome::Done);
        };
        let status = FunctionStatus {
            function: state.name.clone(),
            phase: state.phase,
            revision: state.revision.clone(),
            cause: event.ty().to_owned(),
            last_error: state.last_error.clone(),
        };
        let reply = Envelope::answering(&event, Stage::StatusReporter, StatusUpdated::TYPE)
            .subject(state.name.to_string())
            .encode::<StatusUpdated>(&status);
        Ok(Outcome::Reply(reply))
    }

    fn routes(&self) -> axum::Router {
        api::routes(Arc::clone(&self.store))
    }

    async fn ready(&self) -> Result<(), String> {
        self.store.ping().await.map_err(|e| e.to_string())
    }
}
