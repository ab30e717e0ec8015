//! The service-deployer stage: runs built functions.
//!
//! - **Consumes** `io.knative.lambda.build.completed`, `function.deleted`, `function.rollback`.
//! - **Emits** `service.created` (first revision) or `service.updated` (a new or rolled-back
//!   revision) as a side event, then **replies** `service.ready` (the revision and its URL) or
//!   `service.failed` (reason and message, as a Knative Ready condition would give them);
//!   `service.deleted` for deletions, whether or not the function existed.
//! - A replayed `build.completed` for the revision already serving changes nothing and gets the
//!   same `service.ready`.
//!
//! # Layout
//! - [`deployer`]: the `Deployer` trait and the local process runner.

pub mod deployer;

use std::sync::Arc;
use std::time::Instant;

use sha2::Digest as _;
use tracing::Instrument as _;

use cloudevents::{AttributesReader as _, Event};
use klambda_events::catalogue::{
    BuildCompleted, FunctionDeleted, FunctionRollback, ServiceCreated, ServiceDeleted,
    ServiceFailed, ServiceReady, ServiceUpdated,
};
use klambda_events::data::{
    Problem, ServiceFailure, ServiceReadiness, ServiceRemoval, ServiceRevision,
};
use klambda_events::{Envelope, EventType, FunctionName, Reply, Stage, decode, reply};
use klambda_harness::{ConfigError, ConfigSource, Context, Handler, HandlerError, Outcome};

use crate::deployer::knative::{self, KnativeServices, KnativeSettings};
use crate::deployer::local::LocalRunner;
use crate::deployer::{Deployer, NotReady, Revision};

/// service-deployer's event of type `T` answering `input`, about `function`.
fn answer<T: EventType>(input: &Event, function: &FunctionName) -> Reply<T> {
    reply::<T>(input, Stage::ServiceDeployer).subject(function.to_string())
}

/// A `build.completed`, refused (400, dead-lettered) when its spec sets an env name no function
/// may set: the parser refuses those, so such a spec did not come from the parser, and running
/// it would let its sender preload code into the runtime.
fn decoded_build(event: &Event) -> Result<klambda_events::data::BuiltImage, HandlerError> {
    let built = decode::<BuildCompleted>(event)?;
    let reserved: Vec<Problem> = built
        .spec
        .env
        .keys()
        .filter(|name| klambda_events::spec::is_reserved_env(name))
        .map(|name| {
            Problem::new(
                format!("data.spec.env.{name}"),
                "is reserved: the platform or the runtime sets it, or it changes how the runtime starts",
            )
        })
        .collect();
    if reserved.is_empty() {
        Ok(built)
    } else {
        Err(HandlerError::Invalid(reserved))
    }
}

/// Reports a new revision as progress: `service.created` for a function's first, else
/// `service.updated`.
async fn announce(
    context: &Context,
    input: &Event,
    function: &FunctionName,
    first: bool,
    revision: &ServiceRevision,
) {
    if first {
        context
            .progress(answer::<ServiceCreated>(input, function), revision)
            .await;
    } else {
        context
            .progress(answer::<ServiceUpdated>(input, function), revision)
            .await;
    }
}

/// Where functions run.
#[derive(Clone)]
enum Backend {
    /// A deployer that waits until the revision settles (the local process runner).
    Local(Arc<dyn Deployer>),
    /// Knative Services, whose readiness arrives as Service events.
    Cluster(Arc<KnativeServices>),
}

/// The service-deployer's handler.
#[derive(Clone)]
pub struct ServiceDeployer {
    backend: Backend,
}

impl ServiceDeployer {
    /// A deployer over `deployer`.
    pub fn new(deployer: Arc<dyn Deployer>) -> Self {
        Self {
            backend: Backend::Local(deployer),
        }
    }

    /// A deployer of Knative Services through `services`.
    pub fn on_kubernetes(services: KnativeServices) -> Self {
        Self {
            backend: Backend::Cluster(Arc::new(services)),
        }
    }

    /// A deployer configured from the environment: `KLAMBDA_DEPLOYER=local` (default) runs
    /// functions as local processes, keeping their revisions in `KLAMBDA_RUNNER_DIR` (default
    /// `klambda-runner`) and serving them again when it restarts; `kubernetes` deploys Knative
    /// Services through the in-cluster ServiceAccount (see [`KnativeSettings::from_config`]).
    /// With `kubernetes`, `KUBECONFIG` names a kubeconfig to use instead (see
    /// `klambda_kube::client`).
    pub async fn from_config(config: &dyn ConfigSource) -> Result<Self, ConfigError> {
        let choice = config
            .setting("KLAMBDA_DEPLOYER")
            .unwrap_or_else(|| "local".to_owned());
        let problem = |p: String| ConfigError { problems: vec![p] };
        match choice.as_str() {
            "local" => {
                let dir = config
                    .setting("KLAMBDA_RUNNER_DIR")
                    .unwrap_or_else(|| "klambda-runner".to_owned());
                let runner = LocalRunner::recover(&dir).await.map_err(|e| {
                    problem(format!(
                        "KLAMBDA_RUNNER_DIR={dir}: the runner's state cannot be read: {e}"
                    ))
                })?;
                Ok(Self::new(Arc::new(runner)))
            }
            "kubernetes" => {
                let kubeconfig = config.setting(klambda_kube::KUBECONFIG);
                let client = klambda_kube::client(kubeconfig.as_deref())
                    .await
                    .map_err(|e| problem(format!("KLAMBDA_DEPLOYER=kubernetes: {e}")))?;
                Ok(Self::on_kubernetes(KnativeServices::new(
                    client,
                    KnativeSettings::from_config(config),
                )))
            }
            other => Err(problem(format!(
                "KLAMBDA_DEPLOYER={other:?}: must be local or kubernetes"
            ))),
        }
    }

    /// On Kubernetes, what service-deployer answers: the apply's side event now, readiness
    /// later from the Service's status.
    async fn on_cluster(
        &self,
        services: &KnativeServices,
        event: &Event,
        context: &Context,
    ) -> Result<Outcome, HandlerError> {
        let ty = event.ty();
        if klambda_kube::APISERVER_EVENT_TYPES.contains(&ty) {
            return Ok(service_changed(event));
        }
        if ty == BuildCompleted::TYPE {
            let built = decoded_build(event)?;
            let function = &built.spec.name;
            let started = Instant::now();
            let applied = services
                .apply(&built.spec, &built.digest, &built.image)
                .await;
            let outcome = if applied.is_ok() { "ok" } else { "failed" };
            context
                .metrics()
                .deployed("apply", outcome, started.elapsed().as_secs_f64());
            let applied = applied.map_err(kube_failure)?;
            if let Some((revision, url)) = applied.ready {
                // A replay of what already serves: the same answer as the first time.
                return Ok(Outcome::Reply(
                    answer::<ServiceReady>(event, function).data(&ServiceReadiness {
                        function: function.clone(),
                        revision,
                        url,
                    }),
                ));
            }
            if let Some(revision) = applied.revision {
                let data = ServiceRevision {
                    function: function.clone(),
                    revision,
                    image: built.image.clone(),
                    digest: built.digest.clone(),
                };
                announce(context, event, function, applied.first, &data).await;
            }
            return Ok(Outcome::Done);
        }
        if ty == FunctionRollback::TYPE {
            let request = decode::<FunctionRollback>(event)?;
            let function = &request.name;
            let rolled = services
                .rollback(function, request.to_revision.as_deref())
                .await
                .map_err(kube_failure)?;
            let Some(rolled) = rolled else {
                return Ok(Outcome::Reply(
                    answer::<ServiceFailed>(event, function).data(&ServiceFailure {
                        function: function.clone(),
                        revision: request.to_revision.clone(),
                        reason: "RevisionMissing".to_owned(),
                        message: "no earlier revision to roll back to".to_owned(),
                    }),
                ));
            };
            if let Some(digest) = rolled.digest {
                let data = ServiceRevision {
                    function: function.clone(),
                    revision: rolled.revision,
                    image: rolled.image,
                    digest,
                };
                announce(context, event, function, false, &data).await;
            }
            return Ok(Outcome::Done);
        }
        let deletion = decode::<FunctionDeleted>(event)?;
        let existed = services
            .delete(&deletion.name)
            .await
            .map_err(kube_failure)?;
        tracing::info!(function = %deletion.name, existed, "deleted");
        Ok(Outcome::Reply(
            answer::<ServiceDeleted>(event, &deletion.name).data(&ServiceRemoval {
                function: deletion.name.clone(),
            }),
        ))
    }

    async fn settle(
        &self,
        input: &Event,
        context: &Context,
        function: &FunctionName,
        result: Result<Revision, NotReady>,
    ) -> Event {
        match result {
            Ok(revision) => {
                if revision.changed {
                    let data = ServiceRevision {
                        function: function.clone(),
                        revision: revision.name.clone(),
                        image: revision.image.clone(),
                        digest: revision.digest.clone(),
                    };
                    announce(context, input, function, revision.first, &data).await;
                }
                answer::<ServiceReady>(input, function).data(&ServiceReadiness {
                    function: function.clone(),
                    revision: revision.name,
                    url: revision.url,
                })
            }
            Err(not_ready) => answer::<ServiceFailed>(input, function).data(&ServiceFailure {
                function: function.clone(),
                revision: not_ready.revision,
                reason: not_ready.reason,
                message: not_ready.message,
            }),
        }
    }
}

impl Handler for ServiceDeployer {
    fn stage(&self) -> Stage {
        Stage::ServiceDeployer
    }

    fn accepts(&self, event_type: &str) -> bool {
        klambda_events::catalogue::find(event_type)
            .is_some_and(|spec| spec.consumer == Some(Stage::ServiceDeployer))
            || (matches!(self.backend, Backend::Cluster(_))
                && klambda_kube::APISERVER_EVENT_TYPES.contains(&event_type))
    }

    async fn handle(&self, event: Event, context: &Context) -> Result<Outcome, HandlerError> {
        let deployer = match &self.backend {
            Backend::Cluster(services) => return self.on_cluster(services, &event, context).await,
            Backend::Local(deployer) => deployer,
        };
        let ty = event.ty().to_owned();
        let started = Instant::now();
        let timed = |operation, ok: bool| {
            let outcome = if ok { "ok" } else { "failed" };
            context
                .metrics()
                .deployed(operation, outcome, started.elapsed().as_secs_f64());
        };
        let reply = if ty == BuildCompleted::TYPE {
            let built = decoded_build(&event)?;
            let result = deployer
                .deploy(&built.spec, &built.digest, &built.image)
                .instrument(deployer_span("deployer.apply"))
                .await;
            timed("apply", result.is_ok());
            self.settle(&event, context, &built.spec.name, result).await
        } else if ty == FunctionRollback::TYPE {
            let request = decode::<FunctionRollback>(&event)?;
            let result = deployer
                .rollback(&request.name, request.to_revision.as_deref())
                .instrument(deployer_span("deployer.rollback"))
                .await;
            timed("rollback", result.is_ok());
            self.settle(&event, context, &request.name, result).await
        } else {
            let deletion = decode::<FunctionDeleted>(&event)?;
            let existed = deployer
                .delete(&deletion.name)
                .instrument(deployer_span("deployer.delete"))
                .await;
            timed("delete", true);
            tracing::info!(function = %deletion.name, existed, "deleted");
            reply::<ServiceDeleted>(&event, Stage::ServiceDeployer)
                .subject(deletion.name.to_string())
                .data(&ServiceRemoval {
                    function: deletion.name,
                })
        };
        Ok(Outcome::Reply(reply))
    }
}

/// A function Service's status changed: `service.ready` or `service.failed` once Knative
/// decided about its latest generation. The answer's id derives from the Service's uid,
/// generation and verdict, so the repeated updates Knative makes give one event.
fn service_changed(event: &Event) -> Outcome {
    let Ok(service) = klambda_kube::object_of::<serde_json::Value>(event) else {
        return Outcome::Done;
    };
    let labels = &service["metadata"]["labels"];
    let function = labels[klambda_kube::labels::FUNCTION]
        .as_str()
        .and_then(|name| FunctionName::new(name).ok());
    let ours = labels[klambda_kube::labels::MANAGED_BY] == klambda_kube::labels::PLATFORM;
    let (Some(function), true) = (function, ours) else {
        return Outcome::Done;
    };
    let Some(verdict) = knative::readiness(&service) else {
        return Outcome::Done;
    };
    let key = format!(
        "{}/{}/{}",
        service["metadata"]["uid"].as_str().unwrap_or_default(),
        service["metadata"]["generation"],
        match &verdict {
            Ok((revision, _)) => format!("ready/{revision}"),
            Err(not_ready) => format!("failed/{}", not_ready.reason),
        }
    );
    let id = hex::encode(&sha2::Sha256::digest(key.as_bytes())[..16]);
    let envelope =
        Envelope::new(id, Stage::ServiceDeployer.event_source()).subject(function.to_string());
    Outcome::Reply(match verdict {
        Ok((revision, url)) => envelope.encode::<ServiceReady>(&ServiceReadiness {
            function,
            revision,
            url,
        }),
        Err(not_ready) => envelope.encode::<ServiceFailed>(&ServiceFailure {
            function,
            revision: not_ready.revision,
            reason: not_ready.reason,
            message: not_ready.message,
        }),
    })
}

/// A Kubernetes failure as the stage's answer: retried (5xx), whether the API is down or
/// refuses (a Role missing a verb is fixed by the operator; the events wait meanwhile).
fn kube_failure(error: klambda_kube::KubeError) -> HandlerError {
    HandlerError::Unavailable(error.to_string())
}

/// The span of one call to the local deployer (the Knative deployer's methods make their own).
fn deployer_span(name: &'static str) -> tracing::Span {
    tracing::info_span!("deployer", otel.name = name, backend = "local")
}
