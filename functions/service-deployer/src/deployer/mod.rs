//! Deployers: what runs a built function. The [`Deployer`] trait is the one seam between the
//! stage and a backend: the local process runner waits for a deployment to settle; the Knative
//! deployer (`knative`) applies a Service and reads its readiness from the Service's status
//! events, since a stage must not wait out a rollout on a cluster.

pub mod activator;
pub mod autoscale;
pub mod knative;
pub mod limits;
pub mod local;
pub mod pool;
pub mod sandbox;

use std::future::Future;
use std::pin::Pin;

use cloudevents::Event;
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
    /// What runs it, when the deployer knows (`Python 3.11.2` on one machine).
    pub runtime: Option<String>,
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

/// What a deploy or rollback did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deployment {
    /// Settled now: the revision serves, or it will not.
    Settled(Result<Revision, NotReady>),
    /// Applied; readiness comes later as one of the deployer's [`Deployer::status_events`],
    /// read by [`Deployer::observe`]. `created` is the new revision, when one was cut (announced
    /// as `service.created` / `service.updated` now).
    Applied {
        /// The revision the change created, `url` empty until it is ready.
        created: Option<Revision>,
    },
}

/// A function's readiness, read from a status event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The function.
    pub function: FunctionName,
    /// What identifies this verdict, stable across the repeated updates that carry it (the
    /// answer's id derives from it, so consumers deduplicate them).
    pub key: String,
    /// Ready (the revision and its URL), or not.
    pub verdict: Result<(String, String), NotReady>,
}

/// Why a deployer could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The backend is unreachable or refused: retried.
    #[error("the deployer is unavailable: {0}")]
    Unavailable(String),
}

impl From<klambda_kube::KubeError> for DeployError {
    fn from(error: klambda_kube::KubeError) -> Self {
        // Retried whether the API is down or refuses: a Role missing a verb is fixed by the
        // operator, and the events wait meanwhile.
        Self::Unavailable(error.to_string())
    }
}

impl From<DeployError> for klambda_harness::HandlerError {
    fn from(error: DeployError) -> Self {
        match error {
            DeployError::Unavailable(reason) => klambda_harness::HandlerError::Unavailable(reason),
        }
    }
}

/// Runs functions: the seam between the service-deployer stage and where functions run. The
/// local process runner and Knative Services implement it; another platform is one more
/// implementation and a value of `KLAMBDA_DEPLOYER`.
///
/// A deployer either settles each change before it answers (no status events), or applies it
/// and reports readiness as status events the stage subscribes to.
pub trait Deployer: Send + Sync + 'static {
    /// The backend's name, for spans and logs (`local`, `knative`).
    fn backend(&self) -> &'static str;

    /// Serves `spec` at `image`: a new revision, ready before the previous one stops. The same
    /// image and configuration as the serving revision change nothing.
    fn deploy<'a>(
        &'a self,
        spec: &'a FunctionSpec,
        digest: &'a ContentDigest,
        image: &'a str,
    ) -> BoxFuture<'a, Result<Deployment, DeployError>>;

    /// Serves an earlier revision again: `to`, or the one before the current.
    fn rollback<'a>(
        &'a self,
        name: &'a FunctionName,
        to: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Deployment, DeployError>>;

    /// Stops and forgets every revision; false when there was nothing to delete.
    fn delete<'a>(&'a self, name: &'a FunctionName) -> BoxFuture<'a, Result<bool, DeployError>>;

    /// The recent output of the serving revision (`None` when the function is unknown or the
    /// backend keeps no output here).
    fn logs<'a>(&'a self, _name: &'a FunctionName) -> BoxFuture<'a, Option<(String, Vec<String>)>> {
        Box::pin(async { None })
    }

    /// The reports of serving processes the deployer restarted, taken once by the stage, which
    /// publishes them as `service.restarted`. `None` (the default) where something else restarts
    /// them and says so (a cluster's kubelet, in the Pod's container statuses), or once taken.
    fn restarts(
        &self,
    ) -> Option<tokio::sync::mpsc::Receiver<klambda_events::data::ServiceRestart>> {
        None
    }

    /// The CloudEvent types that report readiness; empty (the default) for a deployer whose
    /// changes settle before it answers.
    fn status_events(&self) -> &'static [&'static str] {
        &[]
    }

    /// The readiness a status event reports about one of our functions, if any.
    fn observe(&self, _event: &Event) -> Option<Observation> {
        None
    }
}
