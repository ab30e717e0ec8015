//! Builders: what turns a build context into something runnable. The `Builder` trait and the
//! local builder run a build to its end; the Kaniko Job builder (`kaniko`) starts a Job and
//! reads its outcome from the Job's status events, since a stage must not wait out a build.

pub mod kaniko;
pub mod local;

use std::future::Future;
use std::pin::Pin;

use klambda_events::data::{BuildFailureCause, ObjectRef};
use klambda_events::{BuildId, ContentDigest, FunctionSpec};
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

/// Runs builds.
pub trait Builder: Send + Sync + 'static {
    /// Runs `request` to its end; a message on `cancel` stops it (with that reason). The
    /// deadline is `request.spec.build.timeout_seconds`.
    fn build(
        &self,
        request: BuildRequest,
        cancel: oneshot::Receiver<String>,
    ) -> BoxFuture<BuildOutcome>;
}
