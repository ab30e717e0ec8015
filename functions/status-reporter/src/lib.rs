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
//! - **Serves the AWS Lambda API** ([`lambda_api`]) on a cluster: Invoke, GetFunction,
//!   ListFunctions, signed with SigV4 and the API token (`klambda up` serves the same module).
//! - **Store**: SQLite by default (`DATABASE_URL=sqlite:klambda-status.db`), PostgreSQL when
//!   `DATABASE_URL` is a postgres URL.
//!
//! # Layout
//! - [`fold`]: events → function state (pure).
//! - [`store`]: the event log and states, SQLite or PostgreSQL.
//! - [`api`]: the query routes.
//! - [`lambda_api`]: the AWS Lambda API.

pub mod api;
pub mod fold;
pub mod lambda_api;
pub mod resume;
pub mod store;

use std::sync::Arc;

use chrono::DateTime;
use chrono::Utc;
use cloudevents::{AttributesReader as _, Event};
use klambda_events::catalogue::{
    BuildCompleted, BuildFailed, BuildTimeout, ContextUploaded, ParserCompleted, ParserFailed,
    ServiceFailed, ServiceReady, StatusUpdated,
};
use klambda_events::data::{FunctionStatus, Phase};
use klambda_events::{EventType, Stage, reply};
use klambda_harness::metrics::Metrics;
use klambda_harness::{ConfigError, ConfigSource, Context, Handler, HandlerError, Outcome};

use crate::fold::{FunctionState, fold, function_of};
use crate::store::StatusStore;

/// The settings this stage reads besides the harness's.
pub const SETTINGS: &[klambda_harness::StageSetting] = &[
    klambda_harness::StageSetting::new(
        "DATABASE_URL",
        "the status store: sqlite:PATH or postgres://…",
    )
    .default(DEFAULT_DATABASE_URL)
    .secret(),
    klambda_harness::StageSetting::new(
        "KLAMBDA_API_TOKEN",
        "required: the token the status and dead-letter API asks for (Authorization: Bearer; the CLI's KLAMBDA_TOKEN) and the Lambda API's secret access key (SigV4, access key id klambda)",
    )
    .secret(),
];

/// What a client without the API token is told.
const TOKEN_HINT: &str =
    "the platform's API token (the klambda-api-token Secret; the CLI reads KLAMBDA_TOKEN)";

/// The store used when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "sqlite:klambda-status.db";

/// The status reporter's handler.
#[derive(Clone)]
pub struct StatusReporter {
    store: Arc<dyn StatusStore>,
    /// The token its API asks for; `None` where something in front asks for it (`klambda up`).
    api_token: Option<klambda_harness::auth::BearerToken>,
    /// The Lambda API over a cluster's functions, where this stage serves it (its Service;
    /// `klambda up` serves its own).
    lambda: Option<(Arc<str>, Arc<lambda_api::Cluster>)>,
}

impl StatusReporter {
    /// A reporter over `store`.
    pub fn new(store: Arc<dyn StatusStore>) -> Self {
        Self {
            store,
            api_token: None,
            lambda: None,
        }
    }

    /// Serves the AWS Lambda API too ([`lambda_api`]), signed with `token`, for the functions of
    /// a cluster ([`lambda_api::Cluster`]).
    pub fn with_lambda_api(mut self, token: &str) -> Self {
        self.lambda = Some((Arc::from(token), Arc::default()));
        self
    }

    /// Asks every request to its API (not the broker's deliveries, not `/health`, `/ready` or
    /// `/metrics`) for `token` as `Authorization: Bearer`.
    pub fn with_api_token(mut self, token: &str) -> Self {
        self.api_token = Some(klambda_harness::auth::BearerToken::new(token, TOKEN_HINT));
        self
    }

    /// Records `event` without answering it. The embedded platform's ingress keeps a client's
    /// event here before it answers `202`, so an accepted event outlives the in-memory broker
    /// (see [`resume`]); the catch-all delivery that follows finds it recorded.
    pub async fn record(&self, event: &Event) -> Result<(), store::StoreError> {
        let function = function_of(event);
        self.store
            .record(
                event,
                function.as_ref().map(|f| f.as_str()),
                Utc::now(),
                fold,
            )
            .await
            .map(drop)
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
        // The API reveals every function's history and changes dead letters: never open.
        let token = config.setting("KLAMBDA_API_TOKEN").ok_or_else(|| ConfigError {
            problems: vec![
                "KLAMBDA_API_TOKEN is required: the token the status API asks for (docs/SECURITY.md)"
                    .to_owned(),
            ],
        })?;
        Ok(Self::new(Arc::from(store))
            .with_api_token(&token)
            .with_lambda_api(&token))
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

    async fn handle(&self, event: Event, context: &Context) -> Result<Outcome, HandlerError> {
        let function = function_of(&event);
        let received_at = Utc::now();
        let recorded = self
            .store
            .record(
                &event,
                function.as_ref().map(|f| f.as_str()),
                received_at,
                fold,
            )
            .await
            .map_err(|e| HandlerError::Unavailable(e.to_string()))?;
        // A redelivery (or an event the ingress recorded ahead) gets the same answer again: the
        // first may not have reached the broker. Its id is derived, so it is recorded once.
        let Some(state) = recorded.state.filter(|_| event.ty() != StatusUpdated::TYPE) else {
            return Ok(Outcome::Done);
        };
        if recorded.new {
            observe(context.metrics(), &state, event.ty(), received_at);
        }
        let status = FunctionStatus {
            function: state.name.clone(),
            phase: state.phase,
            revision: state.revision.clone(),
            cause: event.ty().to_owned(),
            last_error: state.last_error.clone(),
        };
        let reply = reply::<StatusUpdated>(&event, Stage::StatusReporter)
            .subject(state.name.to_string())
            .data(&status);
        Ok(Outcome::Reply(reply))
    }

    fn routes(&self) -> axum::Router {
        let routes = api::routes(Arc::clone(&self.store));
        let routes = match &self.api_token {
            Some(token) => routes.layer(axum::middleware::from_fn_with_state(
                token.clone(),
                klambda_harness::auth::require_bearer,
            )),
            None => routes,
        };
        match &self.lambda {
            // Outside the bearer guard: the Lambda API checks its own signatures (SigV4).
            Some((token, cluster)) => routes.merge(lambda_api::routes(lambda_api::LambdaApi {
                store: Arc::clone(&self.store),
                token: Some(Arc::clone(token)),
                functions: Arc::clone(cluster) as Arc<dyn lambda_api::Functions>,
            })),
            None => routes,
        }
    }

    fn on_start(&self, emitter: klambda_harness::Emitter) {
        if let Some((_, cluster)) = &self.lambda {
            cluster.start(emitter);
        }
    }

    async fn ready(&self) -> Result<(), String> {
        self.store.ping().await.map_err(|e| e.to_string())
    }

    fn init_metrics(&self, metrics: &Metrics) {
        metrics.init_journeys();
    }

    async fn refresh_metrics(&self, metrics: &Metrics) {
        let under_way = match self.store.census().await {
            Ok(census) => {
                metrics.stored(
                    |phase| census.phases.get(&phase).copied().unwrap_or_default(),
                    census.dead_letters,
                );
                [Phase::Parsing, Phase::Building, Phase::Deploying]
                    .iter()
                    .map(|phase| census.phases.get(phase).copied().unwrap_or_default())
                    .sum::<i64>()
            }
            // The gauges keep their last values; the scrape still answers.
            Err(error) => {
                tracing::warn!(%error, "the status store could not be counted");
                return;
            }
        };
        // Only a journey under way can stall: with none (the usual scrape), no state is read.
        if under_way == 0 {
            metrics.stalled(|_| 0);
            return;
        }
        match self.store.functions().await {
            Ok(functions) => {
                let now = Utc::now();
                let waiting: Vec<Stage> = functions
                    .iter()
                    .filter(|f| f.stalled(now).is_some())
                    .filter_map(FunctionState::waiting_on)
                    .collect();
                metrics.stalled(|stage| {
                    i64::try_from(waiting.iter().filter(|s| **s == stage).count())
                        .unwrap_or(i64::MAX)
                });
            }
            Err(error) => tracing::warn!(%error, "stalled journeys could not be counted"),
        }
    }
}

/// The events that end a submission in failure.
const JOURNEY_FAILURES: [&str; 4] = [
    ParserFailed::TYPE,
    BuildFailed::TYPE,
    BuildTimeout::TYPE,
    ServiceFailed::TYPE,
];

/// Pipeline timings from a newly recorded event: the step it ends (the first time this
/// submission saw it) and, at `service.ready` or a failure, the journey's end. Replays and
/// repeated events were filtered out before (`recorded.new`); a second `build.failed` for the
/// same submission is not a new end, since its mark is older than this event.
fn observe(metrics: &Metrics, state: &FunctionState, ty: &str, received_at: DateTime<Utc>) {
    if state.marks.get(ty) != Some(&received_at) {
        return;
    }
    let timings = state.timings_ms();
    let seconds = |step: &str| timings.get(step).map(|ms| *ms as f64 / 1000.0);
    let step = match ty {
        t if t == ParserCompleted::TYPE => Some(("parse", "ok")),
        t if t == ParserFailed::TYPE => Some(("parse", "failed")),
        t if t == ContextUploaded::TYPE => Some(("context", "ok")),
        t if t == BuildCompleted::TYPE => Some(("build", "ok")),
        t if t == BuildFailed::TYPE => Some(("build", "failed")),
        t if t == ServiceReady::TYPE => Some(("deploy", "ok")),
        t if t == ServiceFailed::TYPE => Some(("deploy", "failed")),
        _ => None,
    };
    if let Some((step, outcome)) = step
        && let Some(secs) = seconds(step)
    {
        metrics.step(step, outcome, secs);
    }
    if ty == ServiceReady::TYPE {
        if let Some(total) = seconds("total") {
            metrics.journey_ready(total);
        }
    } else if JOURNEY_FAILURES.contains(&ty) {
        metrics.journey_failed();
    }
}
