//! Builders: what turns a build context into something runnable. The [`Builder`] trait is the
//! one seam between the stage and a backend: the local builder runs a build to its end; the
//! Kaniko Job builder (`kaniko`) starts a Job and reads its outcome from the Job's status events,
//! since a stage must not wait out a build on a cluster.

pub mod kaniko;
pub mod local;

use std::future::Future;
use std::pin::Pin;

use cloudevents::Event;
use klambda_events::data::{BuildFailureCause, ObjectRef};
use klambda_events::{BuildId, ContentDigest, FunctionName, FunctionSpec};
use tokio::sync::oneshot;

/// A boxed future, so the stage holds `Arc<dyn Builder>`.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// One build to run.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The function.
    pub spec: FunctionSpec,
    /// Its content digest.
    pub digest: ContentDigest,
    /// The build's id (derived from name and digest).
    pub build_id: BuildId,
    /// Where the context is.
    pub context: ObjectRef,
}

/// How a build ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildOutcome {
    /// Built: the image (or local artifact).
    Completed {
        /// `registry/fn@sha256:…` or `local:/path`.
        image: String,
    },
    /// Failed, with a classified cause and the end of the log.
    Failed {
        /// The cause.
        cause: BuildFailureCause,
        /// One line.
        reason: String,
        /// The last lines of output.
        log_excerpt: Option<String>,
    },
    /// Ran past its deadline and was stopped.
    TimedOut {
        /// The deadline.
        deadline_seconds: u32,
    },
    /// Stopped on request.
    Cancelled {
        /// Why.
        reason: String,
    },
}

/// What launching a build gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// The build ran in this process to its end.
    Ended(BuildOutcome),
    /// The build runs elsewhere (a Kubernetes Job); how it ends comes back later as one of the
    /// builder's [`Builder::status_events`], read by [`Builder::ended`] and [`Builder::outcome`].
    Running {
        /// False when the build was already running (a replay found it): nothing new started.
        started: bool,
    },
}

/// A build that ended elsewhere, read from a status event.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    /// How it ended.
    pub outcome: BuildOutcome,
    /// How long it ran, when the backend says.
    pub seconds: Option<f64>,
}

/// Why a builder could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BuilderError {
    /// A status event that does not describe a build of ours as it should: not retried.
    #[error("the status event is unreadable: {0}")]
    Unreadable(String),
    /// The backend is unreachable, refused, or cannot build this request now (a setting the
    /// operator fixes): retried.
    #[error("the builder is unavailable: {0}")]
    Unavailable(String),
}

impl From<klambda_kube::KubeError> for BuilderError {
    fn from(error: klambda_kube::KubeError) -> Self {
        // Retried whether the API is down or refuses: a Role missing a verb is fixed by the
        // operator, and the events wait meanwhile.
        Self::Unavailable(error.to_string())
    }
}

impl From<BuilderError> for klambda_harness::HandlerError {
    fn from(error: BuilderError) -> Self {
        match error {
            BuilderError::Unreadable(reason) => {
                klambda_harness::HandlerError::Invalid(vec![klambda_events::data::Problem::new(
                    "data", reason,
                )])
            }
            BuilderError::Unavailable(reason) => klambda_harness::HandlerError::Unavailable(reason),
        }
    }
}

/// Runs builds: the seam between the job-launcher stage and a build backend. The local builder
/// and the Kaniko Job builder implement it; a new backend (BuildKit, a Kaniko successor) is one
/// more implementation and a value of `KLAMBDA_BUILDER`.
///
/// A builder either runs a build to its end inside [`Builder::launch`] (no status events), or
/// starts it elsewhere and reports its end as status events the stage subscribes to.
pub trait Builder: Send + Sync + 'static {
    /// The backend's name, for spans and logs (`local`, `kubernetes`).
    fn backend(&self) -> &'static str;

    /// Starts `request`; a message on `cancel` stops a build that runs here (with that reason).
    /// The deadline is `request.spec.build.timeout_seconds`. Launching the same build id again
    /// (a replay) must not start a second build elsewhere.
    fn launch(
        &self,
        request: BuildRequest,
        cancel: oneshot::Receiver<String>,
    ) -> BoxFuture<Result<Launch, BuilderError>>;

    /// The CloudEvent types that report builds running elsewhere; empty (the default) for a
    /// builder whose [`Builder::launch`] returns the outcome.
    fn status_events(&self) -> &'static [&'static str] {
        &[]
    }

    /// The build a status event says has ended, without calling the backend; `None` for an
    /// event about a build still running or about something else.
    fn ended(&self, _event: &Event) -> Result<Option<BuildId>, BuilderError> {
        Ok(None)
    }

    /// How the build of an [`Builder::ended`] status event ended (may call the backend).
    fn outcome(&self, _event: Event) -> BoxFuture<Result<Option<Ended>, BuilderError>> {
        Box::pin(async { Ok(None) })
    }

    /// Stops the builds of `function` running elsewhere (only `build` when given) and returns
    /// those stopped. Builds running here are stopped through their `cancel` channel instead,
    /// so the default stops nothing.
    fn cancel(
        &self,
        _function: FunctionName,
        _build: Option<BuildId>,
    ) -> BoxFuture<Result<Vec<BuildId>, BuilderError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}
