//! The local runner: each revision is a process of the runtime's shim serving the built
//! artifact on a free port. A new revision must answer its health check before the previous one
//! stops; a revision that exits unexpectedly is restarted with backoff on the same port.
//!
//! One process per revision, whatever crashes:
//! - Function processes die with the runner (`setpriv --pdeathsig KILL`, util-linux): a runner
//!   killed with SIGKILL leaves no orphan serving unsupervised.
//! - With a state directory ([`LocalRunner::recover`]) the runner writes each function's
//!   revisions (name, port, artifact, configuration) there after every change, and on start
//!   serves each function's current revision again on its port. A redelivered
//!   `build.completed` then finds that revision serving and changes nothing.
//! - A function sees only its own: its process starts with a cleared environment (see
//!   [`INHERITED_ENV`]), not the platform's settings and credentials.
//! - Deploys of different functions run in parallel: each function has its own lock, held
//!   across its health wait; the table of functions is locked only to find one.
//! - A function's `triggers` are on the bus while it serves: once a revision is ready (deployed,
//!   rolled back to, or served again after a restart) the runner hands them to the
//!   [`Subscriptions`] it was given (the embedded platform's broker), and takes them away on
//!   delete. Deliveries find the serving revision through [`LocalRunner::serving`].

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use klambda_events::data::{RestartReason, ServiceRestart};
use klambda_events::runtime::Runtime;
use klambda_events::spec::{DeliverySpec, Scaling, TriggerFilter};
use klambda_events::status::Scale;
use klambda_events::{ContentDigest, FunctionName, FunctionSpec};
use klambda_harness::metrics::Metrics;
use klambda_runtimes::Template;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::activator::{self, Activator, ScaleGauge};
use super::autoscale::Bounds;
use super::pool::{Claim, WarmPool};
use super::{BoxFuture, DeployError, Deployer, Deployment, NotReady, Revision};
use crate::secrets::SecretStore;

/// How long a new revision has to answer `/health`.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// How often a serving revision's `/health` is probed (its liveness, as Kubernetes probes a
/// container's), how long a probe waits for an answer, and how many unanswered probes in a row
/// mean the process is hung and is killed (then restarted like any process that exits): a
/// handler that blocks Node's event loop (`while (true) {}`) cannot be interrupted from inside.
const LIVENESS_PERIOD: Duration = Duration::from_secs(2);
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(1);
const LIVENESS_FAILURES: u32 = 3;
/// Lines of a revision's output kept (for `service.failed` and `klambda logs`).
const TAIL: usize = 200;
/// Lines of a failed revision's output put into `service.failed`.
const FAILURE_LINES: usize = 20;

/// How to start one revision.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Launch {
    program: String,
    args: Vec<String>,
    /// What the program is (`Python 3.11.2`): the interpreter found for the runtime id.
    #[serde(default)]
    runtime: Option<String>,
    /// The revision's cgroup (its memory and CPU limits), where the machine has one for it.
    #[serde(default)]
    cgroup: Option<super::limits::RevisionCgroup>,
    env: Vec<(String, String)>,
    /// Secret env, by reference (variable, secret name): read from `secret_dir` each time the
    /// process starts, so values are never kept in the runner's state.
    #[serde(default)]
    secrets: Vec<(String, String)>,
    #[serde(default)]
    secret_dir: Option<PathBuf>,
    /// The user and group the process runs as (see [`super::sandbox`]), when the runner can
    /// switch to one.
    #[serde(default)]
    identity: Option<u32>,
    dir: PathBuf,
    /// The revision's port (its activator's); each process gets one of its own.
    port: u16,
    /// The runtime id (`nodejs22`), for the cold-start metrics.
    #[serde(default)]
    runtime_id: String,
    /// How the revision scales.
    #[serde(default)]
    scaling: Scaling,
}

impl Launch {
    /// This launch, for a process listening on `port`.
    fn on_port(&self, port: u16) -> Self {
        let mut launch = self.clone();
        launch.port = port;
        for (name, value) in &mut launch.env {
            if name == "PORT" {
                *value = port.to_string();
            }
        }
        launch
    }

    /// The function's timeout.
    fn timeout(&self) -> Duration {
        self.env
            .iter()
            .find(|(name, _)| name == "KLAMBDA_TIMEOUT_SECONDS")
            .and_then(|(_, seconds)| seconds.parse().ok())
            .map_or(Duration::from_secs(30), Duration::from_secs)
    }
}

#[derive(Debug)]
struct RevisionState {
    revision: Revision,
    config: String,
    launch: Launch,
    subscribed: Subscribed,
    /// Its front while it serves (see [`super::activator`]).
    activator: Option<Activator>,
    output: Tail,
}

#[derive(Debug, Default)]
struct FunctionState {
    revisions: Vec<RevisionState>,
    current: Option<usize>,
    next: u32,
}

/// A function's revisions as the state directory keeps them.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    revisions: Vec<SavedRevision>,
    current: Option<usize>,
    next: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedRevision {
    name: String,
    url: String,
    image: String,
    digest: ContentDigest,
    config: String,
    launch: Launch,
    #[serde(default, flatten)]
    subscribed: Subscribed,
}

impl FunctionState {
    fn saved(&self) -> Saved {
        Saved {
            revisions: self
                .revisions
                .iter()
                .map(|r| SavedRevision {
                    name: r.revision.name.clone(),
                    url: r.revision.url.clone(),
                    image: r.revision.image.clone(),
                    digest: r.revision.digest.clone(),
                    config: r.config.clone(),
                    launch: r.launch.clone(),
                    subscribed: r.subscribed.clone(),
                })
                .collect(),
            current: self.current,
            next: self.next,
        }
    }

    /// The state read back: nothing runs yet.
    fn from_saved(saved: Saved) -> Self {
        Self {
            revisions: saved
                .revisions
                .into_iter()
                .enumerate()
                .map(|(index, r)| RevisionState {
                    revision: Revision {
                        name: r.name,
                        url: r.url,
                        image: r.image,
                        digest: r.digest,
                        first: index == 0,
                        changed: true,
                        runtime: r.launch.runtime.clone(),
                    },
                    config: r.config,
                    launch: r.launch,
                    subscribed: r.subscribed,
                    activator: None,
                    output: Tail::default(),
                })
                .collect(),
            current: saved.current,
            next: saved.next,
        }
    }
}

/// One function's state, locked on its own so deploys of different functions run in parallel.
type Function = Arc<Mutex<FunctionState>>;

/// A function's place on the bus: its Triggers and how events are delivered through them. Not
/// part of the revision (on Knative Triggers are objects of their own): a change moves the
/// Triggers and starts no process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Subscribed {
    /// The Triggers' filters, in the order of `klambda.json` (the index names each Trigger).
    #[serde(default)]
    pub triggers: Vec<TriggerFilter>,
    /// Their delivery; `None`: the Broker's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

impl Subscribed {
    fn of(spec: &FunctionSpec) -> Self {
        Self {
            triggers: spec.triggers.clone(),
            delivery: spec.delivery.clone(),
        }
    }
}

/// Where a function's Triggers go while it serves: subscriptions on the running broker.
pub trait Subscriptions: Send + Sync + 'static {
    /// `function` serves: its Triggers are exactly those of `subscribed` from now on (replacing
    /// those it had; none removes them).
    fn serve(&self, function: &FunctionName, subscribed: &Subscribed);
    /// `function` was deleted: its Triggers go.
    fn remove(&self, function: &FunctionName);
}

/// A serving revision as deliveries find it: its URL, and one clone of `deliveries` held by
/// each delivery on its way to it, so a revision that stops serving is stopped only once the
/// deliveries that found it are over (as Knative drains a revision's in-flight requests).
struct Serving {
    url: String,
    deliveries: Arc<()>,
    scale: Option<ScaleGauge>,
}

/// The longest a replaced revision waits for deliveries on their way to it beyond the
/// function's own timeout.
const DRAIN_MARGIN: Duration = Duration::from_secs(2);

/// Waits until no delivery holds `deliveries` (at most the function's timeout and
/// [`DRAIN_MARGIN`]).
async fn drain(deliveries: Option<Arc<()>>, launch: &Launch) {
    let Some(deliveries) = deliveries else { return };
    let deadline = tokio::time::Instant::now() + launch.timeout() + DRAIN_MARGIN;
    while Arc::strong_count(&deliveries) > 1 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                in_flight = Arc::strong_count(&deliveries) - 1,
                "deliveries to a replaced revision outlived its timeout; stopping it anyway"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs functions as local processes.
pub struct LocalRunner {
    functions: SyncMutex<HashMap<FunctionName, Function>>,
    /// Where each function's revisions are kept (`<name>.json`), if anywhere.
    state_dir: Option<PathBuf>,
    /// Where secret values are (`<secret name>` files, see [`SecretStore`]), if anywhere.
    secret_dir: Option<PathBuf>,
    /// Where supervisors report the restarts of serving processes, and the other end, until
    /// the stage takes it ([`Deployer::restarts`]).
    reports: mpsc::Sender<ServiceRestart>,
    reported: SyncMutex<Option<mpsc::Receiver<ServiceRestart>>>,
    /// Whether new revisions run in the sandbox (their own user, their own cgroup) where the
    /// machine allows it.
    sandboxed: bool,
    /// Each serving function's revision, for deliveries ([`LocalRunner::serving`]).
    serving: SyncMutex<HashMap<FunctionName, Serving>>,
    /// Where functions' Triggers go, once attached.
    subscriptions: std::sync::OnceLock<Arc<dyn Subscriptions>>,
    /// What every process start shares.
    starts: Starts,
}

/// What every process start of every revision shares, each set once (with
/// [`LocalRunner::with_metrics`], [`LocalRunner::with_warm_pool`]), possibly after revisions
/// already serve: where cold starts are counted, and the warm pool.
#[derive(Default)]
struct Shared {
    metrics: std::sync::OnceLock<Metrics>,
    pool: std::sync::OnceLock<Arc<WarmPool>>,
}

type Starts = Arc<Shared>;

/// Serves a revision: its activator on `launch.port`, and its first process, ready.
async fn serve(
    launch: &Launch,
    reporter: Reporter,
    tail: &Tail,
    starts: &Starts,
) -> Result<Activator, NotReady> {
    let revision = reporter.revision.clone();
    let starter: activator::Start = {
        let launch = launch.clone();
        let tail = Arc::clone(tail);
        let starts = Arc::clone(starts);
        Arc::new(move |port| {
            let launch = launch.on_port(port);
            let reporter = reporter.clone();
            let tail = Arc::clone(&tail);
            let starts = Arc::clone(&starts);
            Box::pin(async move {
                start(&launch, reporter, &tail, &starts)
                    .await
                    .map_err(|not_ready| not_ready.message)
            })
        })
    };
    let on_cold_start: Option<activator::OnColdStart> =
        Runtime::find(&launch.runtime_id).map(|runtime| {
            let starts = Arc::clone(starts);
            let counted: activator::OnColdStart = Arc::new(move |took: Duration| {
                if let Some(metrics) = starts.metrics.get() {
                    metrics.cold_start(runtime, took.as_secs_f64());
                }
            });
            counted
        });
    Activator::start(
        revision.clone(),
        launch.port,
        Bounds::of(&launch.scaling),
        launch.timeout() + READY_WITHIN,
        starter,
        on_cold_start,
    )
    .await
    .map_err(|message| NotReady {
        revision: Some(revision),
        reason: "RevisionFailed".into(),
        message,
    })
}

/// Restart reports waiting for the stage to publish them; past this, more are logged and
/// dropped (a crash loop is also in the function's output).
const REPORTS_QUEUED: usize = 64;

impl Default for LocalRunner {
    fn default() -> Self {
        let (reports, reported) = mpsc::channel(REPORTS_QUEUED);
        Self {
            functions: SyncMutex::default(),
            state_dir: None,
            secret_dir: None,
            reports,
            reported: SyncMutex::new(Some(reported)),
            sandboxed: true,
            serving: SyncMutex::default(),
            subscriptions: std::sync::OnceLock::new(),
            starts: Starts::default(),
        }
    }
}

/// Where one revision's supervisor reports that it restarted the revision's process.
#[derive(Debug, Clone)]
struct Reporter {
    function: FunctionName,
    revision: String,
    reports: mpsc::Sender<ServiceRestart>,
}

impl Reporter {
    fn report(&self, reason: RestartReason, message: String, restarts: u32) {
        let report = ServiceRestart {
            function: self.function.clone(),
            revision: self.revision.clone(),
            reason,
            message,
            restarts,
        };
        if let Err(error) = self.reports.try_send(report) {
            tracing::warn!(function = %self.function, revision = %self.revision, %error, "restart not reported");
        }
    }
}

impl LocalRunner {
    /// A runner with no functions that keeps nothing: a restart forgets what ran (tests).
    pub fn new() -> Self {
        Self::default()
    }

    /// New revisions run as the runner's user, with no cgroup, whatever the machine allows:
    /// only to measure what the sandbox costs (`benches/start.rs`). The cleared environment
    /// stays.
    pub fn without_sandbox(mut self) -> Self {
        self.sandboxed = false;
        self
    }

    /// Puts every serving function's Triggers on the bus through `subscriptions`, and every
    /// later change (deploy, rollback, delete). Later calls keep the first.
    pub async fn attach(&self, subscriptions: Arc<dyn Subscriptions>) {
        if self.subscriptions.set(subscriptions).is_err() {
            return;
        }
        let functions: Vec<(FunctionName, Function)> = self
            .functions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(name, function)| (name.clone(), Arc::clone(function)))
            .collect();
        for (name, function) in functions {
            let function = function.lock().await;
            if let Some(current) = function.current.map(|i| &function.revisions[i])
                && current.activator.is_some()
            {
                self.now_serving(&name, current);
            }
        }
    }

    /// Where `function` serves now: its serving revision's URL, and a hold to keep while
    /// delivering to it (the revision is not stopped before the hold is dropped, up to the
    /// function's timeout).
    pub fn serving(&self, function: &FunctionName) -> Option<(String, Arc<()>)> {
        self.serving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(function)
            .map(|serving| (serving.url.clone(), Arc::clone(&serving.deliveries)))
    }

    /// `function`'s serving revision's processes and requests now.
    pub fn scale(&self, function: &FunctionName) -> Option<Scale> {
        self.serving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(function)
            .and_then(|serving| serving.scale.as_ref().map(ScaleGauge::scale))
    }

    /// Counts functions' cold starts in `metrics` (`klambda_cold_start_duration_seconds`),
    /// those of revisions already serving included. Later calls keep the first.
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        let _ = self.starts.metrics.set(metrics);
        self
    }

    /// Starts functions' processes from `pool` where one fits (see [`super::pool`]), those of
    /// revisions already serving included, and fills it. Later calls keep the first.
    pub fn with_warm_pool(self, pool: Arc<WarmPool>) -> Self {
        pool.begin(self.sandboxed);
        let _ = self.starts.pool.set(pool);
        self
    }

    /// `revision` serves `function` from now on: deliveries go to it, its Triggers are on the
    /// bus. Returns what deliveries to the revision it replaces hold, to [`drain`] before
    /// stopping that one.
    fn now_serving(&self, function: &FunctionName, revision: &RevisionState) -> Option<Arc<()>> {
        let replaced = self
            .serving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                function.clone(),
                Serving {
                    url: revision.revision.url.clone(),
                    deliveries: Arc::new(()),
                    scale: revision.activator.as_ref().map(Activator::gauge),
                },
            )
            .filter(|replaced| replaced.url != revision.revision.url);
        if let Some(subscriptions) = self.subscriptions.get() {
            subscriptions.serve(function, &revision.subscribed);
        }
        replaced.map(|replaced| replaced.deliveries)
    }

    fn reporter(&self, function: &FunctionName, revision: &str) -> Reporter {
        Reporter {
            function: function.clone(),
            revision: revision.to_owned(),
            reports: self.reports.clone(),
        }
    }

    /// Reads functions' secret env from `store` when it starts them.
    pub fn with_secrets(mut self, store: &SecretStore) -> Self {
        self.secret_dir = Some(store.dir().to_owned());
        self
    }

    /// A runner keeping its functions' revisions in `state_dir`: the current revision of every
    /// function recorded there is started again (on its port) before this returns, so a
    /// restarted runner serves what it served and never starts a second copy.
    pub async fn recover(state_dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        tokio::task::spawn_blocking(super::limits::sweep).await?;
        let state_dir = state_dir.into();
        tokio::fs::create_dir_all(&state_dir).await?;
        let mut functions = HashMap::new();
        let mut entries = tokio::fs::read_dir(&state_dir).await?;
        while let Some(entry) = entries.next_entry().await? {
            let path = entry.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| FunctionName::new(n).ok())
            else {
                continue;
            };
            let saved: Saved = match serde_json::from_slice(&tokio::fs::read(&path).await?) {
                Ok(saved) => saved,
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "unreadable runner state; the function is not restarted");
                    continue;
                }
            };
            functions.insert(name, FunctionState::from_saved(saved));
        }
        let runner = Self {
            state_dir: Some(state_dir),
            ..Self::default()
        };
        let mut restarts = tokio::task::JoinSet::new();
        for (name, mut function) in functions {
            let reports = runner.reports.clone();
            let starts = Arc::clone(&runner.starts);
            restarts.spawn(async move {
                if let Some(current) = function.current
                    && let Some(revision) = function.revisions.get_mut(current)
                {
                    let reporter = Reporter {
                        function: name.clone(),
                        revision: revision.revision.name.clone(),
                        reports,
                    };
                    match serve(&revision.launch, reporter, &revision.output, &starts).await {
                        Ok(activator) => {
                            tracing::info!(function = %name, revision = %revision.revision.name, "serving again after a restart");
                            revision.activator = Some(activator);
                        }
                        // Not serving: the next deploy of any image starts a new revision.
                        Err(not_ready) => {
                            tracing::error!(function = %name, revision = %revision.revision.name, message = %not_ready.message, "could not serve again after a restart");
                        }
                    }
                }
                (name, function)
            });
        }
        let mut recovered = HashMap::new();
        while let Some(restarted) = restarts.join_next().await {
            let (name, function) = restarted.map_err(std::io::Error::other)?;
            if let Some(current) = function.current.map(|i| &function.revisions[i])
                && current.activator.is_some()
            {
                runner.now_serving(&name, current);
            }
            recovered.insert(name, Arc::new(Mutex::new(function)));
        }
        Ok(Self {
            functions: SyncMutex::new(recovered),
            ..runner
        })
    }

    /// `name`'s state, created empty if the runner does not know it.
    fn function(&self, name: &FunctionName) -> Function {
        let mut functions = self
            .functions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(functions.entry(name.clone()).or_default())
    }

    /// `name`'s state, if the runner knows it.
    fn known(&self, name: &FunctionName) -> Option<Function> {
        self.functions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Writes `function`'s revisions to the state directory (atomically: a crash leaves the
    /// previous or the new file). A failed write is logged: what runs keeps running, and only
    /// a restart of the runner would forget it.
    async fn save(&self, name: &FunctionName, function: &FunctionState) {
        let Some(dir) = &self.state_dir else {
            return;
        };
        if let Err(error) = write_state(dir, name, &function.saved()).await {
            tracing::error!(function = %name, %error, "runner state not written");
        }
    }

    async fn forget(&self, name: &FunctionName) {
        if let Some(dir) = &self.state_dir {
            let _ = tokio::fs::remove_file(state_file(dir, name)).await;
        }
    }
}

fn state_file(dir: &Path, name: &FunctionName) -> PathBuf {
    dir.join(format!("{name}.json"))
}

async fn write_state(dir: &Path, name: &FunctionName, saved: &Saved) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(saved).map_err(std::io::Error::other)?;
    let path = state_file(dir, name);
    let partial = path.with_extension("json.partial");
    tokio::fs::write(&partial, json).await?;
    tokio::fs::rename(&partial, &path).await
}

/// What decides whether a deployment is new: the image and the configuration the shim runs with.
fn config_of(spec: &FunctionSpec) -> String {
    format!(
        "{}|{:?}|{:?}|{:?}|{:?}",
        spec.handler, spec.env, spec.secrets, spec.resources, spec.scaling
    )
}

fn launch_for(
    spec: &FunctionSpec,
    image: &str,
    port: u16,
    secret_dir: Option<&Path>,
    sandboxed: bool,
) -> Result<Launch, NotReady> {
    // Every secret the function names must be set before a process is started for it.
    for secret in spec.secrets.values() {
        let set = secret_dir.is_some_and(|dir| dir.join(secret).is_file());
        if !set {
            return Err(NotReady {
                revision: None,
                reason: "SecretMissing".into(),
                message: format!(
                    "the secret {secret} is not set; set it with `klambda secrets set {secret}` and deploy again"
                ),
            });
        }
    }
    let failed = |message: String| NotReady {
        revision: None,
        reason: "RevisionFailed".into(),
        message,
    };
    let artifact = image
        .strip_prefix("local:")
        .map(PathBuf::from)
        .ok_or_else(|| {
            failed(format!(
                "{image} is not a local artifact; the local runner runs local builds"
            ))
        })?;
    // Its own user and group, its own copy of the artifact readable by it alone, a temporary
    // directory of its own (when the runner is root; see `sandbox`).
    let identity = super::sandbox::identity_of(&spec.name).filter(|_| sandboxed);
    let prepared = identity
        .map(|id| super::sandbox::prepare(&artifact, id))
        .transpose()
        .map_err(|e| failed(format!("preparing the function's sandbox: {e}")))?;
    let artifact = prepared
        .as_ref()
        .map_or(artifact, |prepared| prepared.artifact.clone());
    let template = Template::of(spec.runtime).map_err(|e| failed(e.to_string()))?;
    let mut start = template.descriptor().start.clone();
    // The container paths of the start command, mapped onto the artifact directory.
    for arg in &mut start {
        if let Some(rest) = arg.strip_prefix("/var/runtime/") {
            *arg = artifact.join("runtime").join(rest).display().to_string();
        }
    }
    let (first, args) = start
        .split_first()
        .ok_or_else(|| failed("the runtime's start command is empty".into()))?;
    let function = artifact.join("function");
    // A compiled runtime's program is the built binary; an interpreted one's is the
    // interpreter the runtime id names, found where the function's own user can run it.
    let (program, runtime) = if template.is_compiled() {
        (first.clone(), format!("{} (compiled)", spec.runtime.id()))
    } else {
        let path = std::env::var("PATH").unwrap_or_default();
        let path = match identity {
            Some(_) => super::sandbox::reachable_path(&path),
            None => path,
        };
        let overrides = std::env::var("KLAMBDA_INTERPRETERS").unwrap_or_default();
        let interpreter = klambda_runtimes::interpreter::find(spec.runtime, &overrides, &path)
            .map_err(|error| NotReady {
                revision: None,
                reason: "RuntimeUnavailable".into(),
                message: error.to_string(),
            })?;
        (
            interpreter.program.display().to_string(),
            interpreter.describe(spec.runtime),
        )
    };
    let mut env: Vec<(String, String)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.extend([
        ("PORT".to_owned(), port.to_string()),
        (
            "KLAMBDA_FUNCTION_ROOT".to_owned(),
            function.display().to_string(),
        ),
        ("KLAMBDA_HANDLER".to_owned(), spec.handler.clone()),
        // Its URL says 127.0.0.1: it listens there only, not on every interface.
        ("KLAMBDA_BIND".to_owned(), "127.0.0.1".to_owned()),
        ("KLAMBDA_FUNCTION_NAME".to_owned(), spec.name.to_string()),
        (
            "KLAMBDA_TIMEOUT_SECONDS".to_owned(),
            spec.resources.timeout_seconds.to_string(),
        ),
    ]);
    if let Some(prepared) = &prepared {
        for variable in ["TMPDIR", "HOME"] {
            env.push((variable.to_owned(), prepared.tmp.display().to_string()));
        }
    }
    Ok(Launch {
        program,
        runtime: Some(runtime),
        cgroup: None,
        args: args.to_vec(),
        env,
        secrets: spec
            .secrets
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        secret_dir: secret_dir.map(Path::to_owned),
        identity,
        dir: function,
        port,
        runtime_id: spec.runtime.id().to_owned(),
        scaling: spec.scaling,
    })
}

pub(super) fn free_port() -> Result<u16, NotReady> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| NotReady {
            revision: None,
            reason: "RevisionFailed".into(),
            message: format!("no free port: {e}"),
        })
}

/// The last lines a process wrote, shared with the tasks reading its output.
type Tail = Arc<SyncMutex<VecDeque<String>>>;

/// What a function process inherits from the platform's environment: finding programs, the
/// locale and time zone, the machine's CA bundle and proxies. Nothing else: the platform's own
/// settings and credentials (`AWS_SECRET_ACCESS_KEY`, webhook secrets, `DATABASE_URL`) are not
/// the function's to read.
pub const INHERITED_ENV: &[&str] = &[
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// A started function process and the cgroup it runs in (one per process, so a revision started
/// again never shares, or loses, a group another process is leaving).
struct Running {
    child: Child,
    group: Option<super::limits::RevisionCgroup>,
    /// A claimed warm process's stdin, open while it runs (see [`super::pool`]).
    _stdin: Option<tokio::process::ChildStdin>,
}

impl Running {
    /// Kills the process and removes its group.
    async fn end(mut self) {
        let _ = self.child.kill().await;
        if let Some(group) = &self.group {
            group.remove();
        }
    }
}

/// What a function process runs and with what: the program (where the function's own user can
/// run it) and its whole environment, in order (a later value of a variable wins): a cleared
/// environment with [`INHERITED_ENV`], then the function's own env, the shim's settings and
/// its secrets.
struct Exec {
    program: PathBuf,
    env: Vec<(String, String)>,
}

fn exec_of(launch: &Launch) -> Result<Exec, String> {
    let mut env: Vec<(String, String)> = INHERITED_ENV
        .iter()
        .filter_map(|name| Some(((*name).to_owned(), std::env::var(name).ok()?)))
        .collect();
    let mut program = PathBuf::from(&launch.program);
    // A compiled function's program is in its own artifact, which its user reads.
    let built = launch
        .dir
        .parent()
        .is_some_and(|artifact| program.starts_with(artifact));
    if launch.identity.is_some() {
        // The function's user finds its interpreter, and what it runs, where that user can.
        let path = super::sandbox::reachable_path(&std::env::var("PATH").unwrap_or_default());
        if !built {
            program = super::sandbox::program_for(&launch.program, &path).ok_or_else(|| {
                format!(
                    "{} is not installed where a function's own user can run it",
                    launch.program
                )
            })?;
        }
        env.push(("PATH".to_owned(), path));
    }
    env.extend(launch.env.iter().cloned());
    for (variable, secret) in &launch.secrets {
        let value = launch
            .secret_dir
            .as_deref()
            .map(|dir| SecretStore::new(dir).get(secret))
            .transpose()
            .map_err(|e| format!("reading the secret {secret}: {e}"))?
            .flatten()
            .ok_or_else(|| format!("the secret {secret} is not set"))?;
        env.push((variable.clone(), value));
    }
    Ok(Exec { program, env })
}

/// Starts a process for `launch`, keeping the last lines of its output in `tail`: a warm one
/// from the pool where one fits (see [`super::pool`]), else a spare shell of the pool, already
/// in a cgroup of its own, where the revision has limits ([`claim_shell`]), else a new one
/// ([`spawn`]).
async fn begin(launch: &Launch, tail: &Tail, starts: &Starts) -> Result<Running, String> {
    let exec = exec_of(launch)?;
    if let Some(pool) = starts.pool.get() {
        if let Some(running) = claim(pool, launch, &exec, tail).await {
            return Ok(running);
        }
        if let Some(running) = claim_shell(pool, launch, &exec, tail).await {
            return Ok(running);
        }
    }
    spawn(launch, &exec, tail)
}

/// The group a claimed warm process runs in: its own spare group, limited for the revision,
/// or (when it waited in none) a new one of the revision's it is moved into. `None` when it
/// cannot have the revision's limits: it is then not claimed (dropped, it is killed; its group,
/// left empty, is swept).
fn group_for(
    launch: &Launch,
    spare: Option<super::limits::SpareCgroup>,
    pid: u32,
) -> Option<Option<super::limits::RevisionCgroup>> {
    match (&launch.cgroup, spare) {
        (None, None) => Some(None),
        // A pool places its processes only for a runner whose revisions have limits.
        (None, Some(_)) => None,
        (Some(limits), Some(spare)) => {
            let group = spare.claim(limits);
            if group.is_none() {
                tracing::warn!(
                    "a warm process's group could not take the revision's limits; starting anew"
                );
            }
            group.map(Some)
        }
        (Some(limits), None) => {
            let group = limits.fresh()?;
            match group.adopt(pid) {
                Ok(()) => Some(Some(group)),
                Err(error) => {
                    tracing::warn!(%error, "a warm process could not join the revision's cgroup; starting anew");
                    group.remove();
                    None
                }
            }
        }
    }
}

/// A warm process of `pool` made `launch`'s process: moved into a cgroup of the revision's,
/// then told its environment, directory and user. `None` where none fits or the hand-over
/// fails (the warm process is then killed, never offered again).
async fn claim(pool: &WarmPool, launch: &Launch, exec: &Exec, tail: &Tail) -> Option<Running> {
    let runtime = Runtime::find(&launch.runtime_id)?;
    let starts_with_env = launch
        .env
        .iter()
        .map(|(name, _)| name)
        .chain(launch.secrets.iter().map(|(name, _)| name))
        .any(|name| super::pool::takes_env(name));
    if starts_with_env {
        return None;
    }
    let mut warm = pool.take(runtime, &exec.program, Path::new(launch.args.first()?))?;
    let pid = warm.pid()?;
    let spare = warm.group();
    let group = group_for(launch, spare, pid)?;
    let claim = Claim {
        env: exec
            .env
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect(),
        cwd: &launch.dir,
        uid: launch.identity,
    };
    match warm.hand(&claim).await {
        Ok(mut claimed) => {
            follow_output(&mut claimed.child, tail);
            Some(Running {
                child: claimed.child,
                group,
                _stdin: Some(claimed.stdin),
            })
        }
        Err(error) => {
            tracing::warn!(%error, "a warm process could not be handed its function; starting anew");
            if let Some(group) = &group {
                group.remove();
            }
            None
        }
    }
}

/// Starts a new process for `launch`. It runs under `setpriv --pdeathsig KILL`, so it dies when
/// the runner dies, however the runner dies, with the environment of [`Exec`].
fn spawn(launch: &Launch, exec: &Exec, tail: &Tail) -> Result<Running, String> {
    // In the revision's cgroup before the function's program runs, when there is one.
    let group = launch
        .cgroup
        .as_ref()
        .and_then(super::limits::RevisionCgroup::fresh);
    let mut setpriv = match &group {
        Some(group) => {
            let wrapper = group.wrap();
            let mut command = Command::new("/bin/sh");
            command.args(&wrapper[1..]).arg("setpriv");
            command
        }
        None => Command::new("setpriv"),
    };
    let mut child = setpriv
        .args(setpriv_args(launch, exec))
        .env_clear()
        .envs(exec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&launch.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{} could not start: {e}", launch.program))?;
    follow_output(&mut child, tail);
    Ok(Running {
        child,
        group,
        _stdin: None,
    })
}

/// What `setpriv` is told to run `launch`'s program with: the function's own user and group
/// (where it has one), no new privileges, and death with the runner.
fn setpriv_args(launch: &Launch, exec: &Exec) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(id) = launch.identity {
        let id = id.to_string();
        args.extend(
            [
                "--reuid",
                &id,
                "--regid",
                &id,
                "--clear-groups",
                "--no-new-privs",
            ]
            .map(str::to_owned),
        );
    }
    args.extend(["--pdeathsig", "KILL", "--"].map(str::to_owned));
    args.push(exec.program.display().to_string());
    args.extend(launch.args.iter().cloned());
    args
}

/// A spare shell of `pool`, waiting in a cgroup of its own, made `launch`'s process: its group
/// gets the revision's limits, then its script runs what [`spawn`] runs, with the same
/// environment, directory and `setpriv`. `None` where the revision has no limits (nothing to
/// gain), no shell waits, or the environment cannot be a shell's (a name that is not one).
async fn claim_shell(
    pool: &WarmPool,
    launch: &Launch,
    exec: &Exec,
    tail: &Tail,
) -> Option<Running> {
    let limits = launch.cgroup.as_ref()?;
    let script = exec_script(launch, exec, pool.setpriv()?)?;
    let mut shell = pool.take_shell()?;
    let group = shell.group()?.claim(limits)?;
    match shell.run(&script).await {
        Ok(mut child) => {
            follow_output(&mut child, tail);
            Some(Running {
                child,
                group: Some(group),
                _stdin: None,
            })
        }
        Err(error) => {
            tracing::warn!(%error, "a spare shell could not be handed its script; starting anew");
            None
        }
    }
}

/// The script a spare shell runs for `launch`: into its directory, exactly [`Exec`]'s
/// environment (the shell started with none), then `exec setpriv` as [`spawn`] runs it. Every
/// word is single-quoted, so no value is ever read as shell syntax. `None` when a variable's
/// name is not a shell name (the parser allows none such; a direct start can still run it).
fn exec_script(launch: &Launch, exec: &Exec, setpriv: &Path) -> Option<String> {
    let shell_name = |name: &str| {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if !exec.env.iter().all(|(name, _)| shell_name(name)) {
        return None;
    }
    let quote = |word: &str| format!("'{}'", word.replace('\'', r"'\''"));
    let mut script = format!(
        "cd {} || exit 70\nunset PWD OLDPWD\n",
        quote(&launch.dir.display().to_string())
    );
    for (name, value) in &exec.env {
        script.push_str(&format!("export {}\n", quote(&format!("{name}={value}"))));
    }
    script.push_str("exec ");
    script.push_str(&quote(&setpriv.display().to_string()));
    for arg in setpriv_args(launch, exec) {
        script.push(' ');
        script.push_str(&quote(&arg));
    }
    script.push('\n');
    Some(script)
}

/// Keeps the last lines the process writes (stdout and stderr) in `tail`.
fn follow_output(child: &mut Child, tail: &Tail) {
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    {
        let tail = Arc::clone(tail);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                push_line(&tail, line);
            }
        });
    }
}

fn tail_lines(tail: &SyncMutex<VecDeque<String>>, last: usize) -> Vec<String> {
    tail.lock()
        .map(|t| {
            t.iter()
                .skip(t.len().saturating_sub(last))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the process answers `GET /health` with 200, or exits, or the time is up.
async fn healthy(child: &mut Child, port: u16) -> Result<(), String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let url = format!("http://127.0.0.1:{port}/health");
    let deadline = tokio::time::Instant::now() + READY_WITHIN;
    // Asked often for the first seconds (a request may be waiting on this start: every
    // millisecond between the process listening and the answer is cold-start time), then less.
    let started = tokio::time::Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the process exited ({status}) before it was ready"));
        }
        if let Ok(uri) = url.parse::<http::Uri>()
            && let Ok(response) = client.get(uri).await
            && response.status().is_success()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "no healthy answer on {url} within {READY_WITHIN:?}"
            ));
        }
        // A refused connection on loopback costs microseconds, so the first second is polled
        // every millisecond: a compiled function is listening a few milliseconds after exec.
        let pause = match started.elapsed() {
            waited if waited < Duration::from_secs(1) => Duration::from_millis(1),
            waited if waited < Duration::from_secs(2) => Duration::from_millis(5),
            _ => Duration::from_millis(50),
        };
        tokio::time::sleep(pause).await;
    }
}

/// Keeps a ready revision running: restarts it with backoff if it exits, and kills it first when
/// it stops answering `/health` at all (hung), until stopped.
fn supervise(
    launch: Launch,
    reporter: Reporter,
    tail: Tail,
    starts: Starts,
    mut running: Running,
    mut stop: oneshot::Receiver<()>,
) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        let mut probes = tokio::time::interval(LIVENESS_PERIOD);
        probes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unanswered = 0;
        // A restarted process gets the time a new revision gets to answer first.
        let mut started = tokio::time::Instant::now();
        let mut answered_since_start = true;
        // Why the process is ending when the supervisor killed it (hung), and how many times
        // it was started again.
        let mut killed_as_hung = false;
        let mut restarts = 0;
        loop {
            tokio::select! {
                _ = &mut stop => {
                    running.end().await;
                    return;
                }
                _ = probes.tick() => {
                    // Any answer, even 503 (a Python shim recycling), is a live process.
                    if answers_health(launch.port).await {
                        unanswered = 0;
                        answered_since_start = true;
                        continue;
                    }
                    if !answered_since_start && started.elapsed() < READY_WITHIN {
                        continue;
                    }
                    unanswered += 1;
                    if unanswered < LIVENESS_FAILURES {
                        continue;
                    }
                    unanswered = 0;
                    let said = format!(
                        "klambda: the process did not answer /health {LIVENESS_FAILURES} times in a row ({LIVENESS_TIMEOUT:?} each, every {LIVENESS_PERIOD:?}); killed, and restarted"
                    );
                    tracing::warn!(port = launch.port, "{said}");
                    push_line(&tail, said);
                    killed_as_hung = true;
                    let _ = running.child.start_kill();
                }
                status = running.child.wait() => {
                    tracing::warn!(port = launch.port, ?status, ?backoff, "function process exited; restarting");
                    let (reason, message) = match &running.group {
                        Some(group) if group.oom_kills() > 0 => (
                            RestartReason::OomKilled,
                            format!(
                                "went over its memory limit ({} MiB, resources.memoryMib) and the kernel killed it",
                                group.resources.memory_mib
                            ),
                        ),
                        _ if killed_as_hung => (
                            RestartReason::Unresponsive,
                            format!("did not answer /health {LIVENESS_FAILURES} times in a row and was killed"),
                        ),
                        _ => (
                            RestartReason::Exited,
                            match &status {
                                Ok(status) => format!("exited ({status})"),
                                Err(error) => format!("could not be waited for: {error}"),
                            },
                        ),
                    };
                    if reason == RestartReason::OomKilled {
                        push_line(&tail, format!("klambda: the process {message} (OOM); restarting"));
                    }
                    if let Some(group) = &running.group {
                        group.remove();
                    }
                    killed_as_hung = false;
                    restarts += 1;
                    reporter.report(reason, message, restarts);
                    tokio::select! {
                        _ = &mut stop => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    match begin(&launch, &tail, &starts).await {
                        Ok(next) => running = next,
                        Err(error) => tracing::error!(%error, "function process could not restart"),
                    }
                    started = tokio::time::Instant::now();
                    answered_since_start = false;
                    probes.reset();
                }
            }
        }
    });
}

/// Whether something answers `GET /health` on `port` within [`LIVENESS_TIMEOUT`].
async fn answers_health(port: u16) -> bool {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let Ok(uri) = format!("http://127.0.0.1:{port}/health").parse::<http::Uri>() else {
        return false;
    };
    matches!(
        tokio::time::timeout(LIVENESS_TIMEOUT, client.get(uri)).await,
        Ok(Ok(_))
    )
}

/// Adds `line` to the revision's output, keeping the last [`TAIL`] lines.
fn push_line(tail: &Tail, line: String) {
    if let Ok(mut tail) = tail.lock() {
        tail.push_back(line);
        while tail.len() > TAIL {
            tail.pop_front();
        }
    }
}

/// Starts a revision and waits until it is ready; on success it is supervised.
async fn start(
    launch: &Launch,
    reporter: Reporter,
    tail: &Tail,
    starts: &Starts,
) -> Result<oneshot::Sender<()>, NotReady> {
    let name = reporter.revision.clone();
    let mut running = begin(launch, tail, starts)
        .await
        .map_err(|message| NotReady {
            revision: Some(name.clone()),
            reason: "RevisionFailed".into(),
            message,
        })?;
    let health = healthy(&mut running.child, launch.port).await;
    // The pool is refilled once this start is over, not while it competes for the CPU.
    if let Some(pool) = starts.pool.get() {
        pool.fill();
    }
    if let Err(problem) = health {
        running.end().await;
        // Give the output readers a moment to drain what the process said before it died.
        tokio::time::sleep(Duration::from_millis(100)).await;
        return Err(NotReady {
            revision: Some(name),
            reason: "RevisionFailed".into(),
            message: format!("{problem}\n{}", tail_lines(tail, FAILURE_LINES).join("\n"))
                .trim()
                .to_owned(),
        });
    }
    let (stop, stopped) = oneshot::channel();
    supervise(
        launch.clone(),
        reporter,
        Arc::clone(tail),
        Arc::clone(starts),
        running,
        stopped,
    );
    Ok(stop)
}

/// Stops a revision once the requests on it (through its URL) are over, at most its timeout
/// and [`DRAIN_MARGIN`] from now.
async fn retire(state: &mut RevisionState) {
    if let Some(activator) = state.activator.take() {
        activator.stop(state.launch.timeout() + DRAIN_MARGIN).await;
    }
}

impl Deployer for LocalRunner {
    fn backend(&self) -> &'static str {
        "local"
    }

    fn deploy<'a>(
        &'a self,
        spec: &'a FunctionSpec,
        digest: &'a ContentDigest,
        image: &'a str,
    ) -> BoxFuture<'a, Result<Deployment, DeployError>> {
        Box::pin(async move { Ok(Deployment::Settled(self.run(spec, digest, image).await)) })
    }

    fn rollback<'a>(
        &'a self,
        name: &'a FunctionName,
        to: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Deployment, DeployError>> {
        Box::pin(async move { Ok(Deployment::Settled(self.return_to(name, to).await)) })
    }

    fn logs<'a>(&'a self, name: &'a FunctionName) -> BoxFuture<'a, Option<(String, Vec<String>)>> {
        Box::pin(self.output(name))
    }

    fn delete<'a>(&'a self, name: &'a FunctionName) -> BoxFuture<'a, Result<bool, DeployError>> {
        Box::pin(async move { Ok(self.remove(name).await) })
    }

    fn restarts(&self) -> Option<mpsc::Receiver<ServiceRestart>> {
        self.reported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

impl LocalRunner {
    /// Serves `spec` at `image` in a new process, ready before the previous one stops.
    async fn run(
        &self,
        spec: &FunctionSpec,
        digest: &ContentDigest,
        image: &str,
    ) -> Result<Revision, NotReady> {
        let function = self.function(&spec.name);
        let mut function = function.lock().await;
        let config = config_of(spec);
        if let Some(index) = function.current
            && let Some(current) = function.revisions.get_mut(index)
            && current.revision.image == image
            && current.config == config
            && current.activator.is_some()
        {
            // Triggers are not part of the revision (as on Knative): a change moves them.
            let subscribed = Subscribed::of(spec);
            if current.subscribed != subscribed {
                current.subscribed = subscribed;
                self.now_serving(&spec.name, current);
                let unchanged = current.revision.clone();
                self.save(&spec.name, &function).await;
                return Ok(Revision {
                    changed: false,
                    ..unchanged
                });
            }
            return Ok(Revision {
                changed: false,
                ..current.revision.clone()
            });
        }
        function.next += 1;
        // Numbers are never reused, even those of revisions that failed.
        self.save(&spec.name, &function).await;
        let name = format!("{}-{:05}", spec.name, function.next);
        let port = free_port()?;
        let mut launch = launch_for(
            spec,
            image,
            port,
            self.secret_dir.as_deref(),
            self.sandboxed,
        )
        .map_err(|e| NotReady {
            revision: Some(name.clone()),
            ..e
        })?;
        // Named for this runner too: two platforms on one machine never share a group.
        let group = format!("{name}.{}", std::process::id());
        // The revision's limits; each process of it gets a group of its own (`fresh`), so this
        // one only shows that the machine has groups to give.
        launch.cgroup = super::limits::RevisionCgroup::create(&group, &spec.resources)
            .filter(|_| self.sandboxed)
            .inspect(super::limits::RevisionCgroup::remove);
        let output = Tail::default();
        if launch.cgroup.is_none() {
            push_line(
                &output,
                "klambda: memory and CPU limits are not enforced here: no cgroup the runner can write (run it as root, or on a cluster)".to_owned(),
            );
        }
        if launch.identity.is_none() {
            push_line(
                &output,
                "klambda: this function runs as the platform's own user, with a cleared environment only (run the platform as root for a user of its own; docs/SECURITY.md)".to_owned(),
            );
        }
        let activator = serve(
            &launch,
            self.reporter(&spec.name, &name),
            &output,
            &self.starts,
        )
        .await?;
        let first = function.revisions.is_empty();
        let revision = Revision {
            name,
            url: format!("http://127.0.0.1:{port}"),
            image: image.to_owned(),
            digest: digest.clone(),
            first,
            changed: true,
            runtime: launch.runtime.clone(),
        };
        let previous = function.current;
        function.revisions.push(RevisionState {
            revision: revision.clone(),
            config,
            launch,
            subscribed: Subscribed::of(spec),
            activator: Some(activator),
            output,
        });
        function.current = Some(function.revisions.len() - 1);
        let replaced = function
            .revisions
            .last()
            .and_then(|current| self.now_serving(&spec.name, current));
        // The new revision is ready and deliveries go to it: only now, once those that went to
        // the previous one are over, does it stop.
        if let Some(previous) = previous {
            drain(replaced, &function.revisions[previous].launch).await;
            retire(&mut function.revisions[previous]).await;
        }
        self.save(&spec.name, &function).await;
        Ok(revision)
    }

    /// Serves an earlier revision again: `to`, or the one before the current.
    async fn return_to(&self, name: &FunctionName, to: Option<&str>) -> Result<Revision, NotReady> {
        let missing = |message: String| NotReady {
            revision: None,
            reason: "RevisionMissing".into(),
            message,
        };
        let function = self
            .known(name)
            .ok_or_else(|| missing(format!("{name} has no revisions")))?;
        let mut function = function.lock().await;
        let current = function
            .current
            .ok_or_else(|| missing(format!("{name} serves no revision")))?;
        let target = match to {
            Some(wanted) => function
                .revisions
                .iter()
                .position(|r| r.revision.name == wanted)
                .ok_or_else(|| missing(format!("{name} has no revision {wanted}")))?,
            None => current.checked_sub(1).ok_or_else(|| {
                missing(format!(
                    "{name} has no revision before {}",
                    function.revisions[current].revision.name
                ))
            })?,
        };
        if target == current {
            return Ok(Revision {
                changed: false,
                ..function.revisions[current].revision.clone()
            });
        }
        let launch = function.revisions[target].launch.clone();
        let revision_name = function.revisions[target].revision.name.clone();
        let output = Arc::clone(&function.revisions[target].output);
        let activator = serve(
            &launch,
            self.reporter(name, &revision_name),
            &output,
            &self.starts,
        )
        .await?;
        function.revisions[target].activator = Some(activator);
        function.current = Some(target);
        let replaced = self.now_serving(name, &function.revisions[target]);
        drain(replaced, &function.revisions[current].launch).await;
        retire(&mut function.revisions[current]).await;
        self.save(name, &function).await;
        Ok(Revision {
            changed: true,
            first: false,
            ..function.revisions[target].revision.clone()
        })
    }

    /// The serving revision's name and recent output lines.
    pub async fn output(&self, name: &FunctionName) -> Option<(String, Vec<String>)> {
        let function = self.known(name)?;
        let function = function.lock().await;
        let current = &function.revisions[function.current?];
        Some((
            current.revision.name.clone(),
            tail_lines(&current.output, TAIL),
        ))
    }

    /// Stops and forgets every revision of `name`; false when it had none.
    async fn remove(&self, name: &FunctionName) -> bool {
        let Some(function) = self.known(name) else {
            return false;
        };
        // A deploy of this function in progress finishes first; then it goes.
        let mut function = function.lock().await;
        for revision in &mut function.revisions {
            // Deleted: what is in flight is cut off now.
            revision.activator = None;
        }
        self.functions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
        self.serving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
        if let Some(subscriptions) = self.subscriptions.get() {
            subscriptions.remove(name);
        }
        self.forget(name).await;
        true
    }
}
