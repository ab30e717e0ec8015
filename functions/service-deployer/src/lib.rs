//! The service-deployer stage: runs built functions.
//!
//! - **Consumes** `io.knative.lambda.build.completed`, `function.deleted`, `function.rollback`.
//! - **Emits** `service.created` (first revision) or `service.updated` (a new or rolled-back
//!   revision) as a side event, then **replies** `service.ready` (the revision and its URL) or
//!   `service.failed` (reason and message, as a Knative Ready condition would give them);
//!   `service.deleted` for deletions, whether or not the function existed.
//! - A replayed `build.completed` for the revision already serving changes nothing and gets the
//!   same `service.ready`.
//! - **Originates** `service.restarted` when the deployer restarts a serving function's process
//!   (over its memory limit, exited, or hung): the local runner's reports
//!   ([`deployer::Deployer::restarts`]).
//!
//! # Layout
//! - [`deployer`]: the `Deployer` trait (the seam to where functions run), the local process
//!   runner and Knative Services. Nothing here names a backend but
//!   [`ServiceDeployer::from_config`].

pub mod deployer;
pub mod secrets;

use std::sync::Arc;
use std::time::Instant;

use sha2::Digest as _;
use tracing::Instrument as _;

use cloudevents::{AttributesReader as _, Event};
use klambda_events::catalogue::{
    BuildCompleted, FunctionDeleted, FunctionRollback, ServiceCreated, ServiceDeleted,
    ServiceFailed, ServiceReady, ServiceRestarted, ServiceUpdated,
};
use klambda_events::data::{
    Problem, ServiceFailure, ServiceReadiness, ServiceRemoval, ServiceRevision,
};
use klambda_events::{Envelope, EventType, FunctionName, Reply, Stage, decode, reply};
use klambda_harness::metrics::{Effect, Metrics};
use klambda_harness::{
    ConfigError, ConfigSource, Context, Emitter, Handler, HandlerError, Outcome,
};

use crate::deployer::knative::{KnativeServices, KnativeSettings};
use crate::deployer::local::LocalRunner;
use crate::deployer::pool::WarmPool;
use crate::deployer::{DeployError, Deployer, Deployment, NotReady, Observation};

/// The settings this stage reads besides the harness's; the Knative ones only with
/// `KLAMBDA_DEPLOYER=kubernetes`.
pub const SETTINGS: &[klambda_harness::StageSetting] = &[
    klambda_harness::StageSetting::new(
        "KLAMBDA_DEPLOYER",
        "where functions run: local or kubernetes",
    )
    .default("local"),
    klambda_harness::StageSetting::new(
        "KLAMBDA_RUNNER_DIR",
        "local: where the runner keeps its revisions, served again after a restart",
    )
    .default("klambda-runner"),
    klambda_harness::StageSetting::new("KLAMBDA_INTERPRETERS", klambda_runtimes::interpreter::HELP),
    klambda_harness::StageSetting::new(
        deployer::pool::SETTING,
        "local: warm interpreters kept per runtime for fast cold starts (0: none)",
    )
    .default("2"),
    klambda_harness::StageSetting::new(
        klambda_kube::KUBECONFIG,
        "kubernetes: a kubeconfig instead of the pod's ServiceAccount",
    ),
    klambda_harness::StageSetting::new(
        "KLAMBDA_FUNCTIONS_NAMESPACE",
        "kubernetes: where function Services and Triggers go",
    )
    .default("knative-lambda"),
    klambda_harness::StageSetting::new(
        "KLAMBDA_BROKER",
        "kubernetes: the Broker functions subscribe to",
    )
    .default("klambda"),
];

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

/// The service-deployer's handler.
#[derive(Clone)]
pub struct ServiceDeployer {
    deployer: Arc<dyn Deployer>,
}

impl ServiceDeployer {
    /// A stage deploying through `deployer`.
    pub fn new(deployer: Arc<dyn Deployer>) -> Self {
        Self { deployer }
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
                let size =
                    deployer::pool::size_of(config.setting(deployer::pool::SETTING).as_deref())
                        .map_err(problem)?;
                let pool = WarmPool::new(std::path::Path::new(&dir).join("warm-pool"), size)
                    .map_err(|e| {
                        problem(format!(
                            "KLAMBDA_RUNNER_DIR={dir}: the warm pool's shims cannot be written: {e}"
                        ))
                    })?;
                let runner = LocalRunner::recover(&dir)
                    .await
                    .map_err(|e| {
                        problem(format!(
                            "KLAMBDA_RUNNER_DIR={dir}: the runner's state cannot be read: {e}"
                        ))
                    })?
                    .with_warm_pool(Arc::new(pool));
                Ok(Self::new(Arc::new(runner)))
            }
            "kubernetes" => {
                let kubeconfig = config.setting(klambda_kube::KUBECONFIG);
                let client = klambda_kube::client(kubeconfig.as_deref())
                    .await
                    .map_err(|e| problem(format!("KLAMBDA_DEPLOYER=kubernetes: {e}")))?;
                Ok(Self::new(Arc::new(KnativeServices::new(
                    client,
                    KnativeSettings::from_config(config),
                ))))
            }
            other => Err(problem(format!(
                "KLAMBDA_DEPLOYER={other:?}: must be local or kubernetes"
            ))),
        }
    }

    /// The answer to a deploy or rollback: `service.ready` / `service.failed` when it settled
    /// (a new revision announced first), else the new revision announced and readiness answered
    /// later from the deployer's status events.
    async fn settle(
        &self,
        input: &Event,
        context: &Context,
        function: &FunctionName,
        deployment: Deployment,
        effect: Effect,
    ) -> Outcome {
        // A new revision is announced first, whether it settled now or readiness comes later.
        let new = match &deployment {
            Deployment::Applied { created } => created.as_ref(),
            Deployment::Settled(Ok(revision)) => Some(revision).filter(|r| r.changed),
            Deployment::Settled(Err(_)) => None,
        };
        // A revision that was cut and then failed to start was still an effect (the local
        // runner started its process): a replay that cuts another is work done twice.
        let failed_start = effect == Effect::RevisionDeployed
            && matches!(
                &deployment,
                Deployment::Settled(Err(NotReady {
                    revision: Some(_),
                    ..
                }))
            );
        if new.is_some() || failed_start {
            context.metrics().effect(effect);
        }
        if let Some(revision) = new {
            let data = ServiceRevision {
                function: function.clone(),
                revision: revision.name.clone(),
                image: revision.image.clone(),
                digest: revision.digest.clone(),
            };
            announce(context, input, function, revision.first, &data).await;
        }
        match deployment {
            Deployment::Applied { .. } => Outcome::Done,
            Deployment::Settled(Ok(revision)) => Outcome::Reply(
                answer::<ServiceReady>(input, function).data(&ServiceReadiness {
                    function: function.clone(),
                    revision: revision.name,
                    url: revision.url,
                    runtime: revision.runtime,
                }),
            ),
            Deployment::Settled(Err(not_ready)) => Outcome::Reply(
                answer::<ServiceFailed>(input, function).data(&ServiceFailure {
                    function: function.clone(),
                    revision: not_ready.revision,
                    reason: not_ready.reason,
                    message: not_ready.message,
                }),
            ),
        }
    }
}

impl Handler for ServiceDeployer {
    fn stage(&self) -> Stage {
        Stage::ServiceDeployer
    }

    fn init_metrics(&self, metrics: &Metrics) {
        metrics.init_effects(&[
            Effect::RevisionDeployed,
            Effect::RevisionRestored,
            Effect::FunctionRemoved,
        ]);
    }

    /// Publishes the deployer's reports of restarted function processes as `service.restarted`
    /// (the status reporter counts them and keeps the last reason).
    fn on_start(&self, emitter: Emitter) {
        let Some(mut reports) = self.deployer.restarts() else {
            return;
        };
        tokio::spawn(async move {
            while let Some(report) = reports.recv().await {
                // Unique: a revision's count starts again when the runner restarts.
                let id = format!(
                    "{}-restart-{}-{}",
                    report.revision,
                    report.restarts,
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_nanos()
                );
                let envelope = Envelope::new(id, Stage::ServiceDeployer.event_source())
                    .subject(report.function.to_string());
                tracing::warn!(function = %report.function, revision = %report.revision, reason = ?report.reason, message = %report.message, "function process restarted");
                emitter.emit::<ServiceRestarted>(envelope, &report).await;
            }
        });
    }

    fn accepts(&self, event_type: &str) -> bool {
        klambda_events::catalogue::find(event_type)
            .is_some_and(|spec| spec.consumer == Some(Stage::ServiceDeployer))
            || self.deployer.status_events().contains(&event_type)
    }

    async fn handle(&self, event: Event, context: &Context) -> Result<Outcome, HandlerError> {
        let ty = event.ty().to_owned();
        if self.deployer.status_events().contains(&ty.as_str()) {
            return Ok(self
                .deployer
                .observe(&event)
                .map_or(Outcome::Done, |seen| Outcome::Reply(observed(seen))));
        }
        let started = Instant::now();
        let span = |name: &'static str| {
            tracing::info_span!(
                "deployer",
                otel.name = name,
                backend = self.deployer.backend()
            )
        };
        let timed = |operation, ok: bool| {
            let outcome = if ok { "ok" } else { "failed" };
            context
                .metrics()
                .deployed(operation, outcome, started.elapsed().as_secs_f64());
        };
        if ty == BuildCompleted::TYPE {
            let built = decoded_build(&event)?;
            let result = self
                .deployer
                .deploy(&built.spec, &built.digest, &built.image)
                .instrument(span("deployer.apply"))
                .await;
            timed("apply", went_through(&result));
            Ok(self
                .settle(
                    &event,
                    context,
                    &built.spec.name,
                    result?,
                    Effect::RevisionDeployed,
                )
                .await)
        } else if ty == FunctionRollback::TYPE {
            let request = decode::<FunctionRollback>(&event)?;
            let result = self
                .deployer
                .rollback(&request.name, request.to_revision.as_deref())
                .instrument(span("deployer.rollback"))
                .await;
            timed("rollback", went_through(&result));
            Ok(self
                .settle(
                    &event,
                    context,
                    &request.name,
                    result?,
                    Effect::RevisionRestored,
                )
                .await)
        } else {
            let deletion = decode::<FunctionDeleted>(&event)?;
            let existed = self
                .deployer
                .delete(&deletion.name)
                .instrument(span("deployer.delete"))
                .await;
            timed("delete", existed.is_ok());
            let existed = existed?;
            if existed {
                context.metrics().effect(Effect::FunctionRemoved);
            }
            tracing::info!(function = %deletion.name, existed, "deleted");
            Ok(Outcome::Reply(
                answer::<ServiceDeleted>(&event, &deletion.name).data(&ServiceRemoval {
                    function: deletion.name,
                }),
            ))
        }
    }
}

/// Whether a deploy or rollback did what was asked (the deployer answered, and not "not ready").
fn went_through(result: &Result<Deployment, DeployError>) -> bool {
    matches!(
        result,
        Ok(Deployment::Settled(Ok(_)) | Deployment::Applied { .. })
    )
}

/// The answer to a readiness a status event reported: its id derives from the observation's
/// key, so the repeated updates that carry one verdict give one event.
fn observed(seen: Observation) -> Event {
    let id = hex::encode(&sha2::Sha256::digest(seen.key.as_bytes())[..16]);
    let envelope =
        Envelope::new(id, Stage::ServiceDeployer.event_source()).subject(seen.function.to_string());
    match seen.verdict {
        Ok((revision, url)) => envelope.encode::<ServiceReady>(&ServiceReadiness {
            function: seen.function,
            revision,
            url,
            runtime: None,
        }),
        Err(not_ready) => envelope.encode::<ServiceFailed>(&ServiceFailure {
            function: seen.function,
            revision: not_ready.revision,
            reason: not_ready.reason,
            message: not_ready.message,
        }),
    }
}
