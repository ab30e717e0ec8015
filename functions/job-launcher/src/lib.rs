//! The job-launcher stage: starts builds and turns their outcomes into events.
//!
//! - **Consumes** `io.knative.lambda.context.uploaded` and `io.knative.lambda.build.cancel`.
//! - **Replies** with the build's outcome: `build.completed` (the image or local artifact;
//!   `cached: true` when the digest was already built), `build.failed` (classified cause and the
//!   end of the log), `build.timeout`, or `build.cancelled` after a `build.cancel`. The same
//!   events on either backend, always as replies, so none is lost to a crash or a broker restart:
//!   - **local**: the delivery of `context.uploaded` waits for the build and answers its
//!     outcome; `build.started` is reported as progress when the build starts. The input is
//!     settled only once the outcome is confirmed, so a crash means redelivery and the build
//!     runs again (same id, same directory); a redelivery while it runs, or within ten minutes
//!     of its end, joins it rather than building twice.
//!   - **Kubernetes**: `context.uploaded` is answered `build.started` once the Job exists; the
//!     Job's status events (ApiServerSource, replayed as `add` when the source restarts) are
//!     answered with the outcome.
//! - **Side effects**: runs the build; on success writes the build record
//!   `images/<digest>.json`, which makes later submissions of the same digest cache hits.
//!
//! # Layout
//! - [`builder`]: the `Builder` trait (the seam to a build backend), the local builder and the
//!   Kaniko Job builder. Nothing here names a backend but [`JobLauncher::from_config`].

pub mod builder;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudevents::Event;
use klambda_events::catalogue::{
    BuildCancel, BuildCancelled, BuildCompleted, BuildFailed, BuildStarted, BuildTimeout,
    ContextUploaded,
};
use klambda_events::data::{BuildEnd, BuildFailure, BuildStart, BuildTimedOut, BuiltImage};
use klambda_events::{BuildId, EventType, FunctionName, Reply, Stage, decode, reply};
use klambda_harness::metrics::{BuildResult, Effect, Metrics};
use klambda_harness::{
    ConfigError, ConfigSource, Context, Handler, HandlerError, Outcome, StageSetting,
};
use klambda_storage::{ImageRecord, ObjectStore};
use tokio::sync::{oneshot, watch};
use tracing::Instrument as _;

use crate::builder::kaniko::{KanikoJobs, KanikoSettings};
use crate::builder::local::LocalBuilder;
use crate::builder::{BuildOutcome, BuildRequest, Builder, Launch};

/// The settings this stage reads besides the harness's and the store's
/// (`klambda_harness::config::STORE_SETTINGS`); the Kaniko ones only with
/// `KLAMBDA_BUILDER=kubernetes` (see [`KanikoSettings::from_config`]).
pub const SETTINGS: &[StageSetting] = &[
    StageSetting::new("KLAMBDA_BUILDER", "where builds run: local or kubernetes").default("local"),
    StageSetting::new("KLAMBDA_BUILD_DIR", "local builds' work directory")
        .default("klambda-builds"),
    StageSetting::new(
        "KLAMBDA_BUILD_CACHE_DIR",
        "local: compiled runtimes' build caches (Go's GOCACHE, GOMODCACHE), one per runtime id, shared by every build of it; default <KLAMBDA_BUILD_DIR>/.cache",
    ),
    StageSetting::new("KLAMBDA_INTERPRETERS", klambda_runtimes::interpreter::HELP),
    StageSetting::new(
        klambda_kube::KUBECONFIG,
        "kubernetes: a kubeconfig instead of the pod's ServiceAccount",
    ),
    StageSetting::new(
        "KLAMBDA_BUILD_NAMESPACE",
        "kubernetes: where build Jobs run",
    )
    .default("knative-lambda-builds"),
    StageSetting::new(
        "KLAMBDA_KANIKO_IMAGE",
        "kubernetes: the Kaniko executor image (pin by digest)",
    )
    .default("cgr.dev/chainguard/kaniko:latest"),
    StageSetting::new("KLAMBDA_REGISTRY", "kubernetes: where images are pushed")
        .default("registry.knative-lambda.svc.cluster.local/functions"),
    StageSetting::new(
        "KLAMBDA_CACHE_REPO",
        "kubernetes: Kaniko's layer cache repository (unset: no cache)",
    ),
    StageSetting::new(
        "KLAMBDA_BUILD_STORE_SECRET",
        "kubernetes: the Secret with the context store's AWS keys",
    )
    .default("klambda-build-store"),
    StageSetting::new(
        "KLAMBDA_REGISTRY_SECRET",
        "kubernetes: the dockerconfigjson Secret Kaniko pushes with",
    )
    .default("klambda-registry"),
    StageSetting::new(
        "KLAMBDA_BUILDER_SERVICE_ACCOUNT",
        "kubernetes: the build pods' ServiceAccount",
    )
    .default("klambda-builder"),
    StageSetting::new(
        "KLAMBDA_BUILD_TTL_SECONDS",
        "kubernetes: how long a finished Job stays",
    )
    .default("3600"),
    StageSetting::new(
        "KLAMBDA_BUILD_CPU",
        "kubernetes: the build container's CPU request",
    )
    .default("1"),
    StageSetting::new(
        "KLAMBDA_BUILD_MEMORY",
        "kubernetes: the build container's memory",
    )
    .default("2Gi"),
];

/// job-launcher's event of type `T` answering `input`, about `function`.
fn answer<T: EventType>(input: &Event, function: &FunctionName) -> Reply<T> {
    reply::<T>(input, Stage::JobLauncher).subject(function.to_string())
}

/// A local build of this process.
struct LocalBuild {
    function: FunctionName,
    /// How to stop it, while it runs.
    cancel: Option<oneshot::Sender<String>>,
    /// Its outcome, once it ended.
    outcome: watch::Receiver<Option<Reported>>,
    /// When it ended.
    ended: Option<Instant>,
}

/// What a build running here reported: its outcome, or why the builder gave none (retried).
type Reported = Result<BuildOutcome, String>;

/// This process's local builds by id, running or ended within [`REMEMBER_OUTCOMES`].
type Builds = Arc<Mutex<HashMap<BuildId, LocalBuild>>>;

/// How long an ended local build's outcome answers a redelivery of its input without building
/// again (a redelivery after the broker restarted, whose first answer was not confirmed).
const REMEMBER_OUTCOMES: Duration = Duration::from_secs(600);

/// The job-launcher's handler.
#[derive(Clone)]
pub struct JobLauncher {
    builder: Arc<dyn Builder>,
    store: Arc<dyn ObjectStore>,
    builds: Builds,
}

/// Where the `context.uploaded` event that started a cluster build is kept, so the Job's outcome
/// can be answered as the same build (same reply id, same trace) whichever replica sees it.
fn build_record_key(build_id: &BuildId) -> String {
    format!("builds/{}.json", build_id.as_str())
}

/// Present once a cluster build's outcome was counted in the metrics.
fn build_counted_key(build_id: &BuildId) -> String {
    format!("builds/{}.counted", build_id.as_str())
}

impl JobLauncher {
    /// A launcher running builds with `builder`, keeping build records in `store` (where the
    /// contexts are).
    pub fn new(builder: Arc<dyn Builder>, store: Arc<dyn ObjectStore>) -> Self {
        Self {
            builder,
            store,
            builds: Arc::default(),
        }
    }

    /// A launcher configured from the environment.
    ///
    /// - `KLAMBDA_BUILDER`: `local` (default) runs builds here under `KLAMBDA_BUILD_DIR`
    ///   (default `klambda-builds`); `kubernetes` runs them as Kaniko Jobs through the in-cluster
    ///   ServiceAccount (see [`KanikoSettings::from_config`]), which needs the contexts in S3.
    /// - `KLAMBDA_STORE` (see `klambda_storage::from_settings`; default the directory
    ///   `klambda-store`): where contexts and build records are.
    /// - `KUBECONFIG`: with `kubernetes`, a kubeconfig to use instead of the pod's
    ///   ServiceAccount (see `klambda_kube::client`).
    pub async fn from_config(config: &dyn ConfigSource) -> Result<Self, ConfigError> {
        let setting =
            |key: &str, default: &str| config.setting(key).unwrap_or_else(|| default.to_owned());
        let store = klambda_storage::from_settings(|key| config.get(key), "klambda-store")
            .map_err(|problem| ConfigError {
                problems: vec![problem],
            })?;
        match setting("KLAMBDA_BUILDER", "local").as_str() {
            "local" => {
                let work = PathBuf::from(setting("KLAMBDA_BUILD_DIR", "klambda-builds"));
                let mut builder = LocalBuilder::new(Arc::clone(&store), work);
                if let Some(cache) = config.setting("KLAMBDA_BUILD_CACHE_DIR") {
                    builder = builder.with_cache_dir(cache);
                }
                Ok(Self::new(Arc::new(builder), store))
            }
            "kubernetes" => {
                let mut problems = Vec::new();
                if !store.uri("").starts_with("s3://") {
                    problems.push(
                        "KLAMBDA_BUILDER=kubernetes: Kaniko reads build contexts from S3; set KLAMBDA_STORE=s3://bucket"
                            .to_owned(),
                    );
                }
                let settings = KanikoSettings::from_config(config)
                    .map_err(|more| problems.extend(more))
                    .ok();
                let kubeconfig = config.setting(klambda_kube::KUBECONFIG);
                let client = klambda_kube::client(kubeconfig.as_deref())
                    .await
                    .map_err(|error| problems.push(format!("KLAMBDA_BUILDER=kubernetes: {error}")))
                    .ok();
                match (client, settings) {
                    (Some(client), Some(settings)) if problems.is_empty() => Ok(Self::new(
                        Arc::new(KanikoJobs::new(client, settings)),
                        store,
                    )),
                    _ => Err(ConfigError { problems }),
                }
            }
            other => Err(ConfigError {
                problems: vec![format!(
                    "KLAMBDA_BUILDER={other:?}: must be local or kubernetes"
                )],
            }),
        }
    }

    /// How many local builds are running now.
    pub fn running(&self) -> usize {
        self.builds
            .lock()
            .map(|builds| builds.values().filter(|b| b.ended.is_none()).count())
            .unwrap_or_default()
    }

    async fn start(&self, event: Event, context: &Context) -> Result<Outcome, HandlerError> {
        let uploaded = decode::<ContextUploaded>(&event)?;
        let name = uploaded.spec.name.clone();
        let build_id = BuildId::derive(&name, &uploaded.digest);
        let record = ImageRecord::load(self.store.as_ref(), uploaded.digest.hex()).await?;
        if let Some(record) = record {
            let reply = answer::<BuildCompleted>(&event, &name).data(&BuiltImage {
                spec: uploaded.spec,
                digest: uploaded.digest,
                build_id,
                image: record.image,
                cached: true,
            });
            return Ok(Outcome::Reply(reply));
        }

        let request = BuildRequest {
            spec: uploaded.spec.clone(),
            digest: uploaded.digest.clone(),
            build_id: build_id.clone(),
            context: uploaded.context.clone(),
        };
        if !self.builder.status_events().is_empty() {
            return self
                .start_elsewhere(&event, uploaded, request, context)
                .await;
        }
        // A build that runs here answers its outcome as this delivery's reply: the input stays
        // unsettled until the broker confirmed the outcome, so a crash or a broker restart
        // delivers it again and the build runs again (same id, same directory), or is joined if
        // it still runs here.
        let (mut ended, fresh) = self.join_or_start(request, context)?;
        if fresh {
            context
                .progress(
                    answer::<BuildStarted>(&event, &name),
                    &BuildStart {
                        function: name.clone(),
                        build_id: build_id.clone(),
                        digest: uploaded.digest.clone(),
                    },
                )
                .await;
        }
        let outcome = ended
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|outcome| outcome.clone())
            .ok_or_else(|| {
                HandlerError::Unavailable(format!("build {build_id} stopped without an outcome"))
            })?
            .map_err(HandlerError::Unavailable)?;
        let ended = self
            .outcome_event(&event, uploaded, build_id, outcome)
            .await;
        Ok(Outcome::Reply(ended))
    }

    /// Starts a build that runs elsewhere and answers `build.started`; its outcome arrives later
    /// as the builder's status events, answered then as the build started by `event`, which is
    /// kept for that (same reply id, same trace, whichever replica sees the status).
    async fn start_elsewhere(
        &self,
        event: &Event,
        uploaded: klambda_events::data::BuildContext,
        request: BuildRequest,
        context: &Context,
    ) -> Result<Outcome, HandlerError> {
        let record =
            serde_json::to_vec(event).map_err(|e| HandlerError::Internal(e.to_string()))?;
        self.store
            .put(&build_record_key(&request.build_id), record.into())
            .await?;
        // Nothing runs here to cancel: the builder's own `cancel` stops it.
        let (_, never) = oneshot::channel();
        let name = request.spec.name.clone();
        let build_id = request.build_id.clone();
        match self.builder.launch(request, never).await? {
            Launch::Running { started } => {
                if started {
                    context.metrics().effect(Effect::BuildStarted);
                }
                Ok(Outcome::Reply(answer::<BuildStarted>(event, &name).data(
                    &BuildStart {
                        function: name.clone(),
                        build_id,
                        digest: uploaded.digest,
                    },
                )))
            }
            Launch::Ended(outcome) => Ok(Outcome::Reply(
                self.outcome_event(event, uploaded, build_id, outcome).await,
            )),
        }
    }

    /// The running (or just finished) build `request.build_id` of this process, or a new one:
    /// the receiver of its outcome, and whether it was started now. The build runs in a task of
    /// its own, so it finishes even when the delivery that started it is abandoned, and a
    /// redelivery joins it instead of starting a second one.
    fn join_or_start(
        &self,
        request: BuildRequest,
        context: &Context,
    ) -> Result<(watch::Receiver<Option<Reported>>, bool), HandlerError> {
        let mut builds = self
            .builds
            .lock()
            .map_err(|_| HandlerError::Internal("the build table is poisoned".into()))?;
        builds.retain(|_, build| {
            build
                .ended
                .is_none_or(|ended| ended.elapsed() < REMEMBER_OUTCOMES)
        });
        if let Some(build) = builds.get(&request.build_id) {
            // Ended with an outcome, or running (its task holds the sender); a task that died
            // without one is started again.
            let alive = build.outcome.borrow().is_some() || build.outcome.has_changed().is_ok();
            if alive {
                return Ok((build.outcome.clone(), false));
            }
        }
        let (cancel, cancelled) = oneshot::channel();
        let (report, outcome) = watch::channel(None);
        builds.insert(
            request.build_id.clone(),
            LocalBuild {
                function: request.spec.name.clone(),
                cancel: Some(cancel),
                outcome: outcome.clone(),
                ended: None,
            },
        );
        // The build's span is a child of this handling span: the trace shows how long the build
        // took, inside the journey.
        let span = tracing::info_span!(
            "builder",
            otel.name = "builder.build",
            backend = self.builder.backend(),
            build_id = %request.build_id,
        );
        let builds = Arc::clone(&self.builds);
        let context = context.clone();
        let runtime = request.spec.runtime;
        let build_id = request.build_id.clone();
        let began = Instant::now();
        let build = self.builder.launch(request, cancelled).instrument(span);
        context.metrics().effect(Effect::BuildStarted);
        tokio::spawn(async move {
            let outcome = match build.await {
                Ok(Launch::Ended(outcome)) => Ok(outcome),
                Ok(Launch::Running { .. }) => Err(format!(
                    "build {build_id}: a builder without status events left the build running"
                )),
                Err(error) => Err(error.to_string()),
            };
            if let Ok(outcome) = &outcome {
                context.metrics().build_ended(
                    runtime,
                    result_of(outcome),
                    began.elapsed().as_secs_f64(),
                );
            }
            if let Ok(mut builds) = builds.lock()
                && let Some(build) = builds.get_mut(&build_id)
            {
                build.cancel = None;
                build.ended = Some(Instant::now());
            }
            let _ = report.send(Some(outcome));
        });
        Ok((outcome, true))
    }

    /// The event announcing how a build ended (writing the build record on success).
    async fn outcome_event(
        &self,
        input: &Event,
        uploaded: klambda_events::data::BuildContext,
        build_id: BuildId,
        outcome: BuildOutcome,
    ) -> Event {
        let name = uploaded.spec.name.clone();
        match outcome {
            BuildOutcome::Completed { image } => {
                let record = ImageRecord {
                    image: image.clone(),
                };
                if let Err(error) = record
                    .save(self.store.as_ref(), uploaded.digest.hex())
                    .await
                {
                    // The build stands; only the cache misses next time.
                    tracing::warn!(%error, "build record not written");
                }
                answer::<BuildCompleted>(input, &name).data(&BuiltImage {
                    spec: uploaded.spec,
                    digest: uploaded.digest,
                    build_id,
                    image,
                    cached: false,
                })
            }
            BuildOutcome::Failed {
                cause,
                reason,
                log_excerpt,
            } => answer::<BuildFailed>(input, &name).data(&BuildFailure {
                function: name.clone(),
                build_id,
                digest: uploaded.digest,
                cause,
                reason,
                // Where the compiler says the code is wrong, from the build's log (local or
                // Kaniko's alike).
                diagnostics: log_excerpt
                    .as_deref()
                    .map(klambda_runtimes::diagnostics::parse)
                    .unwrap_or_default(),
                log_excerpt,
            }),
            BuildOutcome::TimedOut { deadline_seconds } => answer::<BuildTimeout>(input, &name)
                .data(&BuildTimedOut {
                    function: name.clone(),
                    build_id,
                    digest: uploaded.digest,
                    deadline_seconds,
                }),
            BuildOutcome::Cancelled { reason } => {
                answer::<BuildCancelled>(input, &name).data(&BuildEnd {
                    function: name.clone(),
                    build_id,
                    reason,
                })
            }
        }
    }

    /// A build running elsewhere changed (a Job's status event): when it ended, answer its
    /// outcome as the build started by the recorded `context.uploaded`. Repeated updates of an
    /// ended build give the same event (same id), which the broker's consumers deduplicate.
    async fn status_changed(
        &self,
        event: Event,
        context: &Context,
    ) -> Result<Outcome, HandlerError> {
        // The backend is asked how the build ended only once its build record is known to exist.
        let Some(build_id) = self.builder.ended(&event)? else {
            return Ok(Outcome::Done);
        };
        let record = self.store.get(&build_record_key(&build_id)).await?;
        let Some(record) = record else {
            tracing::warn!(build_id = %build_id, "a finished build Job without a build record; ignored");
            return Ok(Outcome::Done);
        };
        let Some(ended) = self.builder.outcome(event).await? else {
            return Ok(Outcome::Done);
        };
        let outcome = ended.outcome;
        let started: Event = serde_json::from_slice(&record)
            .map_err(|e| HandlerError::Internal(format!("build record {build_id}: {e}")))?;
        let uploaded = decode::<ContextUploaded>(&started)?;
        // Counted once per build, whichever replica sees which of the Job's repeated updates
        // first: the marker says it was counted (a lost race counts twice, rarely; a failed
        // marker write only risks a later double count).
        let counted = build_counted_key(&build_id);
        if self.store.head(&counted).await.ok().flatten().is_none() {
            if let Some(seconds) = ended.seconds {
                context
                    .metrics()
                    .build_ended(uploaded.spec.runtime, result_of(&outcome), seconds);
            }
            if let Err(error) = self.store.put(&counted, bytes::Bytes::new()).await {
                tracing::warn!(%error, "the build's counted marker was not written");
            }
        }
        let ended = self
            .outcome_event(&started, uploaded, build_id, outcome)
            .await;
        Ok(Outcome::Reply(ended))
    }

    async fn cancel(&self, event: &Event) -> Result<Outcome, HandlerError> {
        let request = decode::<BuildCancel>(event)?;
        let reason = request.reason.clone().map_or_else(
            || "cancelled by request".to_owned(),
            |r| format!("cancelled by request: {r}"),
        );
        // Builds running elsewhere are stopped by the builder, and answered here.
        let cancelled = self
            .builder
            .cancel(request.function.clone(), request.build_id.clone())
            .await?;
        // A function has one build at a time (a newer submission stops the older), so the
        // answer names it; should there be more, the others are named in the log.
        if let Some((build_id, others)) = cancelled.split_first() {
            if !others.is_empty() {
                tracing::warn!(function = %request.function, ?others, "more than one build cancelled; build.cancelled names the first");
            }
            return Ok(Outcome::Reply(
                answer::<BuildCancelled>(event, &request.function).data(&BuildEnd {
                    function: request.function.clone(),
                    build_id: build_id.clone(),
                    reason,
                }),
            ));
        }
        let mut builds = self
            .builds
            .lock()
            .map_err(|_| HandlerError::Internal("the build table is poisoned".into()))?;
        let mut targets = Vec::new();
        for (id, build) in builds.iter_mut() {
            if build.function == request.function
                && request.build_id.as_ref().is_none_or(|b| b == id)
                && let Some(cancel) = build.cancel.take()
            {
                // The build's own delivery answers build.cancelled when it stops.
                let _ = cancel.send(reason.clone());
                targets.push(id.clone());
            }
        }
        tracing::info!(function = %request.function, cancelled = targets.len(), "build.cancel handled");
        Ok(Outcome::Done)
    }
}

impl Handler for JobLauncher {
    fn stage(&self) -> Stage {
        Stage::JobLauncher
    }

    fn init_metrics(&self, metrics: &Metrics) {
        metrics.init_builds();
        metrics.init_effects(&[Effect::BuildStarted]);
    }

    fn accepts(&self, event_type: &str) -> bool {
        klambda_events::catalogue::find(event_type)
            .is_some_and(|spec| spec.consumer == Some(Stage::JobLauncher))
            || self.builder.status_events().contains(&event_type)
    }

    async fn handle(&self, event: Event, context: &Context) -> Result<Outcome, HandlerError> {
        let ty = cloudevents::AttributesReader::ty(&event);
        if ty == BuildCancel::TYPE {
            self.cancel(&event).await
        } else if self.builder.status_events().contains(&ty) {
            self.status_changed(event, context).await
        } else {
            self.start(event, context).await
        }
    }
}

/// The metrics' word for how a build ended.
fn result_of(outcome: &BuildOutcome) -> BuildResult {
    match outcome {
        BuildOutcome::Completed { .. } => BuildResult::Completed,
        BuildOutcome::Failed { cause, .. } => BuildResult::Failed(*cause),
        BuildOutcome::TimedOut { .. } => BuildResult::TimedOut,
        BuildOutcome::Cancelled { .. } => BuildResult::Cancelled,
    }
}
