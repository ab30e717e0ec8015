//! What a stage implements: [`Handler`], its [`Outcome`] and its [`HandlerError`].

use std::future::Future;

use cloudevents::Event;
use http::StatusCode;
use klambda_events::catalogue::{Stage, find};
use klambda_events::data::Problem;
use klambda_events::envelope::DecodeError;

use crate::context::{Context, Emitter};
use crate::metrics::Metrics;
use crate::problem::ProblemDetails;

/// A stage's event handler. The harness decodes, routes, traces and measures; the handler only
/// turns one input event into its outcome.
///
/// **Invariant:** `handle` is idempotent: the same input gives the same outcome, whatever ran
/// before, so the broker may redeliver and users may replay.
pub trait Handler: Send + Sync + 'static {
    /// The stage this handler is.
    fn stage(&self) -> Stage;

    /// Whether this stage takes events of `event_type`. By default, the types the catalogue
    /// names this stage as consumer of; anything else was misrouted.
    fn accepts(&self, event_type: &str) -> bool {
        find(event_type).is_some_and(|spec| spec.consumer == Some(self.stage()))
    }

    /// Handles one event.
    fn handle(
        &self,
        event: Event,
        context: &Context,
    ) -> impl Future<Output = Result<Outcome, HandlerError>> + Send;

    /// Routes the stage serves besides the harness's own (`POST /`, `/health`, `/ready`,
    /// `/metrics`), such as the status reporter's query API. None by default.
    fn routes(&self) -> axum::Router {
        axum::Router::new()
    }

    /// Starts the series this stage counts at zero (see [`Metrics::init_builds`]), so the
    /// first event after a restart is an increase alerts can see. Called once per registry.
    fn init_metrics(&self, _metrics: &Metrics) {}

    /// Brings gauges that describe stored state up to date, just before `/metrics` is read
    /// (the status reporter counts functions by phase). Nothing by default.
    fn refresh_metrics(&self, _metrics: &Metrics) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Called once when the stage starts serving, inside the Tokio runtime, with what publishes
    /// the events it originates on its own (the service-deployer's restarts of a function
    /// process). Nothing by default.
    fn on_start(&self, _emitter: Emitter) {}

    /// Whether the stage's own dependencies are reachable (the harness checks the publisher).
    fn ready(&self) -> impl Future<Output = Result<(), String>> + Send {
        async { Ok(()) }
    }
}

/// What handling an event led to.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one Outcome per request, moved straight into the response; boxing buys nothing"
)]
pub enum Outcome {
    /// The next event: answered as `200` with the event, which the broker routes on.
    Reply(Event),
    /// Nothing follows: answered as `202` with no body.
    Done,
}

/// A failure, with its retry decision.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The event cannot be handled as sent: `400`, not retried, dead-lettered.
    #[error("the event is invalid: {}", summary(.0))]
    Invalid(Vec<Problem>),
    /// A dependency is unavailable: `503`, retried by the broker with backoff.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Something failed that may succeed on retry: `500`, retried by the broker.
    #[error("internal error: {0}")]
    Internal(String),
    /// The event is well formed but what it needs cannot be used, and retrying will not change
    /// that (a corrupt stored object): `422`, not retried, dead-lettered with the reason for an
    /// operator.
    #[error("cannot be processed: {0}")]
    Unprocessable(String),
    /// The event claims to come from the platform and cannot prove it (an internal event
    /// unsigned or mis-signed, see [`crate::signing`]): `403`, not retried, dead-lettered with
    /// the reason.
    #[error("forbidden: {0}")]
    Forbidden(String),
}

impl From<klambda_storage::StorageError> for HandlerError {
    /// The one retry decision for storage failures: a store that failed may work later; an
    /// object that is not what the platform wrote, or a key it would never write, will not.
    fn from(error: klambda_storage::StorageError) -> Self {
        use klambda_storage::StorageError;
        match error {
            StorageError::Corrupt { .. } | StorageError::InvalidKey(_) => {
                HandlerError::Unprocessable(error.to_string())
            }
            StorageError::Remote { .. } | StorageError::Io { .. } => {
                HandlerError::Unavailable(error.to_string())
            }
        }
    }
}

fn summary(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}: {}", p.field, p.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

impl HandlerError {
    /// The HTTP status the harness answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            HandlerError::Invalid(_) => StatusCode::BAD_REQUEST,
            HandlerError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            HandlerError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            HandlerError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            HandlerError::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    /// Whether the broker retries it (per Knative's delivery rules for the status above).
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            HandlerError::Invalid(_) | HandlerError::Unprocessable(_) | HandlerError::Forbidden(_)
        )
    }

    /// The RFC 7807 body answered with this error (over HTTP and to in-process callers alike).
    pub fn problem(&self) -> ProblemDetails {
        match self {
            HandlerError::Invalid(problems) => ProblemDetails::new(
                self.status(),
                "invalid-event",
                "The event cannot be handled",
                "the event was refused and will not be retried; fix it and send it again",
            )
            .with_problems(problems.clone()),
            HandlerError::Unprocessable(reason) => ProblemDetails::new(
                self.status(),
                "unprocessable",
                "The event cannot be processed",
                format!("{reason}; the event will not be retried"),
            ),
            HandlerError::Forbidden(reason) => ProblemDetails::new(
                self.status(),
                "forbidden-event",
                "The event is not the platform's",
                format!("{reason}; the event will not be retried"),
            ),
            HandlerError::Unavailable(reason) | HandlerError::Internal(reason) => {
                ProblemDetails::new(
                    self.status(),
                    self.metric_label(),
                    "Temporary failure",
                    format!("{reason}; the broker will retry this event"),
                )
            }
        }
    }

    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            HandlerError::Invalid(_) => "invalid",
            HandlerError::Unavailable(_) => "unavailable",
            HandlerError::Internal(_) => "internal",
            HandlerError::Unprocessable(_) => "unprocessable",
            HandlerError::Forbidden(_) => "forbidden",
        }
    }
}

impl From<DecodeError> for HandlerError {
    fn from(error: DecodeError) -> Self {
        HandlerError::Invalid(vec![Problem::new("data", error.to_string())])
    }
}
