//! Deployers: what runs a built function. The `Deployer` trait and the local process runner
//! wait for a deployment to settle; the Knative deployer (`knative`) applies a Service and reads
//! its readiness from the Service's status events, since a stage must not wait out a rollout.

pub mod knative;
pub mod local;

use std::future::Future;
use std::pin::Pin;

use klambda_events::{ContentDigest, FunctionName, FunctionSpec};

/// A boxed future, so the stage holds `Arc<dyn Deployer>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A revision serving a function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    /// `<function>-00001`, numbered from one.
    pub name: String,
    /// Where it answers.
    pub url: String,
    /// The image it runs.
    pub image: String,
    /// The content digest it was built from.
    pub digest: ContentDigest,
    /// True for the function's first revision.
    pub first: bool,
    /// False when the requested deployment was already the serving revision (a replay).
    pub changed: bool,
}

/// Why a deployment did not become ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady {
    /// The revision that failed, if one was created.
    pub revision: Option<String>,
    /// A Knative-style reason (`RevisionFailed`, `RevisionMissing`, …).
    pub reason: String,
    /// What happened.
    pub message: String,
}

/// Runs functions.
pub trait Deployer: Send + Sync + 'static {
    /// Serves `spec` at `image`: a new revision, ready before the previous one stops. The same
    /// image and configuration as the serving revision change nothing.
    fn deploy<'a>(
        &'a self,
        spec: &'a FunctionSpec,
        digest: &'a ContentDigest,
        image: &'a str,
    ) -> BoxFuture<'a, Result<Revision, NotReady>>;
    /// Serves an earlier revision again: `to`, or the one before the current.
    fn rollback<'a>(
        &'a self,
        name: &'a FunctionName,
        to: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Revision, NotReady>>;
    /// The recent output of the serving revision (`None` when the function is unknown).
    fn logs<'a>(&'a self, name: &'a FunctionName) -> BoxFuture<'a, Option<(String, Vec<String>)>>;
    /// Stops and forgets every revision; false when there was nothing to delete.
    fn delete<'a>(&'a self, name: &'a FunctionName) -> BoxFuture<'a, bool>;
}
