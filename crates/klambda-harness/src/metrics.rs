//! Every Prometheus metric knative-lambda exports, in one registry per process.
//!
//! One place defines them all, so docs/METRICS.md has one thing to be checked against, and a
//! process serving several stages (`klambda up`) exports each family once. Each stage records
//! what it alone can see: every stage its requests and handler time; the broker its delivery
//! attempts; context-uploader context sizes; job-launcher build outcomes; service-deployer its
//! deployer calls; status-reporter the pipeline's journeys and the stored state. The stages that
//! change the world (job-launcher, service-deployer) also count each change where they make it
//! ([`Effect`]), so one submission can be seen to have one build and one revision however often
//! its events were delivered.
//!
//! Labels are bounded: event types are catalogue types or `other`, runtimes are the known
//! runtimes, Trigger names come from the installed Triggers, outcomes, causes, steps and phases
//! are fixed words. No function names or ids are labels.

use klambda_events::data::{BuildFailureCause, Phase};
use klambda_events::{Runtime, Stage};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// The OpenMetrics text media type `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Submit→ready buckets (seconds): the latency SLO's threshold (300 s) is one of them.
const JOURNEY_BUCKETS: [f64; 14] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    stage: &'static str,
    event_type: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    stage: &'static str,
    event_type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideEventLabels {
    stage: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    trigger: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    trigger: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuntimeLabels {
    runtime: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    runtime: &'static str,
    outcome: &'static str,
    cause: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildDurationLabels {
    runtime: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeployLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EffectLabels {
    stage: &'static str,
    effect: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn histograms<L: Clone + std::hash::Hash + Eq>(buckets: fn() -> Histogram) -> Histograms<L> {
    Family::new_with_constructor(buckets)
}

/// How a build ended, as job-launcher counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildResult {
    /// The image (or local artifact) was built.
    Completed,
    /// The build failed, for this reason.
    Failed(BuildFailureCause),
    /// The build ran past its deadline.
    TimedOut,
    /// The build was cancelled.
    Cancelled,
}

impl BuildResult {
    fn labels(self) -> (&'static str, &'static str) {
        match self {
            Self::Completed => ("completed", "none"),
            Self::Failed(cause) => ("failed", cause.label()),
            Self::TimedOut => ("timeout", "none"),
            Self::Cancelled => ("cancelled", "none"),
        }
    }
}

/// A change in the world that a stage made, counted where it was made. Replays and
/// redeliveries of work already done make none, so each should be counted once per submission
/// (per update, rollback or delete): a count above that is work done twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// A build began: a local build process, or a new build Job (not one found already there).
    BuildStarted,
    /// A new revision was cut: a function process started for it by the local runner, or a
    /// Knative Service change that makes a new revision.
    RevisionDeployed,
    /// A rollback changed which revision serves.
    RevisionRestored,
    /// A delete removed a function that ran.
    FunctionRemoved,
}

impl Effect {
    /// Every effect, in the order docs/METRICS.md lists them.
    pub const ALL: [Effect; 4] = [
        Effect::BuildStarted,
        Effect::RevisionDeployed,
        Effect::RevisionRestored,
        Effect::FunctionRemoved,
    ];

    /// The `effect` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::BuildStarted => "build_started",
            Self::RevisionDeployed => "revision_deployed",
            Self::RevisionRestored => "revision_restored",
            Self::FunctionRemoved => "function_removed",
        }
    }
}

/// The families, shared by every [`Metrics::for_stage`] view.
#[derive(Clone)]
struct Families {
    requests: Family<RequestLabels, Counter>,
    latency: Histograms<LatencyLabels>,
    side_events: Family<SideEventLabels, Counter>,
    deliveries: Family<DeliveryLabels, Counter>,
    delivery_duration: Histograms<TriggerLabels>,
    context_size: Histograms<RuntimeLabels>,
    context_upload: Histograms<RuntimeLabels>,
    cold_starts: Histograms<RuntimeLabels>,
    builds: Family<BuildLabels, Counter>,
    effects: Family<EffectLabels, Counter>,
    build_duration: Histograms<BuildDurationLabels>,
    deploys: Histograms<DeployLabels>,
    steps: Histograms<StepLabels>,
    submit_to_ready: Histogram,
    journeys: Family<OutcomeLabels, Counter>,
    functions: Family<PhaseLabels, Gauge>,
    stalled: Family<StageLabels, Gauge>,
    dead_letters: Gauge,
}

impl Families {
    fn register(registry: &mut Registry) -> Self {
        let families = Self {
            requests: Family::default(),
            latency: histograms(|| Histogram::new(exponential_buckets(0.000_25, 2.0, 16))),
            side_events: Family::default(),
            deliveries: Family::default(),
            // 0.25 ms … 8 s.
            delivery_duration: histograms(|| {
                Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
            }),
            // 1 KiB … 1 GiB.
            context_size: histograms(|| Histogram::new(exponential_buckets(1024.0, 4.0, 11))),
            // 5 ms … 80 s.
            context_upload: histograms(|| Histogram::new(exponential_buckets(0.005, 2.0, 15))),
            // 1 ms … 16 s.
            cold_starts: histograms(|| Histogram::new(exponential_buckets(0.001, 2.0, 15))),
            builds: Family::default(),
            effects: Family::default(),
            // 1 s … 68 min.
            build_duration: histograms(|| Histogram::new(exponential_buckets(1.0, 2.0, 13))),
            // 10 ms … 160 s.
            deploys: histograms(|| Histogram::new(exponential_buckets(0.01, 2.0, 15))),
            steps: histograms(|| Histogram::new(JOURNEY_BUCKETS)),
            submit_to_ready: Histogram::new(JOURNEY_BUCKETS),
            journeys: Family::default(),
            functions: Family::default(),
            stalled: Family::default(),
            dead_letters: Gauge::default(),
        };
        let f = families.clone();
        registry.register(
            "klambda_stage_requests",
            "Events received, by event type and outcome",
            f.requests,
        );
        registry.register(
            "klambda_stage_handler_duration_seconds",
            "Time from a decoded event to its outcome",
            f.latency,
        );
        registry.register(
            "klambda_stage_side_events",
            "Side events (such as *.started) published to the broker, by outcome",
            f.side_events,
        );
        registry.register(
            "klambda_broker_delivery_attempts",
            "Deliveries of an event to a Trigger's subscriber, by how each attempt ended",
            f.deliveries,
        );
        registry.register(
            "klambda_broker_delivery_duration_seconds",
            "Time from taking an event off a Trigger's queue to its outcome (accepted, replied or dead-lettered), retries and backoff included",
            f.delivery_duration,
        );
        registry.register(
            "klambda_context_size_bytes",
            "Size of the compressed build contexts uploaded",
            f.context_size,
        );
        registry.register(
            "klambda_context_upload_duration_seconds",
            "Time to render and upload a build context",
            f.context_upload,
        );
        registry.register(
            "klambda_cold_start_duration_seconds",
            "Time from a request finding no process of its function's revision to a started process being ready for it, by runtime (the count is the cold starts)",
            f.cold_starts,
        );
        registry.register(
            "klambda_build_outcomes",
            "Builds ended, by runtime, outcome and classified failure cause",
            f.builds,
        );
        registry.register(
            "klambda_effects",
            "Changes a stage made in the world (builds started, revisions deployed or restored, functions removed)",
            f.effects,
        );
        registry.register(
            "klambda_build_duration_seconds",
            "Time from a build's start to its end",
            f.build_duration,
        );
        registry.register(
            "klambda_deploy_duration_seconds",
            "Time of one deployer call (apply, rollback, delete), by outcome (ok, failed)",
            f.deploys,
        );
        registry.register(
            "klambda_pipeline_step_duration_seconds",
            "Time each pipeline step took for a submission and how it ended, from the events' arrival",
            f.steps,
        );
        registry.register(
            "klambda_pipeline_submit_to_ready_seconds",
            "Time from a function's submission to its service being ready",
            f.submit_to_ready,
        );
        registry.register(
            "klambda_pipeline_journeys",
            "Submissions that ended, ready or failed",
            f.journeys,
        );
        registry.register(
            "klambda_status_functions",
            "Functions by phase, as stored by the status reporter",
            f.functions,
        );
        registry.register(
            "klambda_status_functions_stalled",
            "Functions whose journey waits on a stage past that stage's deadline, by stage",
            f.stalled,
        );
        registry.register(
            "klambda_status_dead_letters",
            "Dead letters kept by the status reporter (the broker's dead-letter sink)",
            f.dead_letters,
        );
        families
    }
}

/// The metrics of one stage (or, for [`Metrics::delivery`], the broker in this process).
pub struct Metrics {
    stage: &'static str,
    /// Shared by every [`Metrics::for_stage`] view, so one process serving several stages
    /// (`klambda up`) exports one registry with a `stage` label per stage.
    registry: Arc<Registry>,
    families: Families,
}

impl Metrics {
    /// A fresh registry for `stage` (one per harness, so tests do not share counters).
    pub fn new(stage: &'static str) -> Self {
        let mut registry = Registry::default();
        let families = Families::register(&mut registry);
        Self {
            stage,
            registry: Arc::new(registry),
            families,
        }
    }

    /// The same registry and counters, labelled for another stage: what an embedded platform
    /// gives each in-process stage, so its single `/metrics` covers all of them.
    pub fn for_stage(&self, stage: &'static str) -> Self {
        Self {
            stage,
            registry: Arc::clone(&self.registry),
            families: self.families.clone(),
        }
    }

    /// Counts one request.
    pub fn request(&self, event_type: &'static str, outcome: &'static str) {
        self.families
            .requests
            .get_or_create(&RequestLabels {
                stage: self.stage,
                event_type,
                outcome,
            })
            .inc();
    }

    /// Records how long handling took.
    pub fn latency(&self, event_type: &'static str, seconds: f64) {
        self.families
            .latency
            .get_or_create(&LatencyLabels {
                stage: self.stage,
                event_type,
            })
            .observe(seconds);
    }

    /// Counts one side-event publish.
    pub fn side_event(&self, outcome: &'static str) {
        self.families
            .side_events
            .get_or_create(&SideEventLabels {
                stage: self.stage,
                outcome,
            })
            .inc();
    }

    /// Counts one delivery attempt under `trigger`: `accepted`, `replied`, `retried` (failed,
    /// another attempt follows) or `dead_lettered` (failed, no attempt follows).
    pub fn delivery(&self, trigger: &str, outcome: &'static str) {
        self.families
            .deliveries
            .get_or_create(&DeliveryLabels {
                trigger: trigger.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Records how long one event's delivery through `trigger` took, to its outcome.
    pub fn delivered(&self, trigger: &str, seconds: f64) {
        self.families
            .delivery_duration
            .get_or_create(&TriggerLabels {
                trigger: trigger.to_owned(),
            })
            .observe(seconds);
    }

    /// Records one uploaded build context.
    pub fn context_uploaded(&self, runtime: Runtime, bytes: u64, seconds: f64) {
        let labels = RuntimeLabels {
            runtime: runtime.id(),
        };
        self.families
            .context_size
            .get_or_create(&labels)
            .observe(bytes as f64);
        self.families
            .context_upload
            .get_or_create(&labels)
            .observe(seconds);
    }

    /// Records one cold start of a function of `runtime`.
    pub fn cold_start(&self, runtime: Runtime, seconds: f64) {
        self.families
            .cold_starts
            .get_or_create(&RuntimeLabels {
                runtime: runtime.id(),
            })
            .observe(seconds);
    }

    /// The build-outcome counter of `runtime` and `end`.
    fn build_count(&self, runtime: Runtime, end: BuildResult) -> Counter {
        let (outcome, cause) = end.labels();
        self.families
            .builds
            .get_or_create(&BuildLabels {
                runtime: runtime.id(),
                outcome,
                cause,
            })
            .clone()
    }

    /// Starts every build-outcome series at zero, so the first failure after a restart is an
    /// increase that `rate()` sees, not a series appearing at 1.
    pub fn init_builds(&self) {
        for runtime in klambda_events::runtime::RUNTIMES {
            let ends = [
                BuildResult::Completed,
                BuildResult::TimedOut,
                BuildResult::Cancelled,
            ]
            .into_iter()
            .chain(BuildFailureCause::ALL.map(BuildResult::Failed));
            for end in ends {
                self.build_count(*runtime, end).inc_by(0);
            }
        }
    }

    /// Records one ended build.
    pub fn build_ended(&self, runtime: Runtime, end: BuildResult, seconds: f64) {
        self.build_count(runtime, end).inc();
        let (outcome, _) = end.labels();
        self.families
            .build_duration
            .get_or_create(&BuildDurationLabels {
                runtime: runtime.id(),
                outcome,
            })
            .observe(seconds);
    }

    /// Starts the series of `effects` at zero for this stage (see [`Metrics::init_builds`]).
    pub fn init_effects(&self, effects: &[Effect]) {
        for effect in effects {
            self.effect_count(*effect).inc_by(0);
        }
    }

    /// Counts one change made in the world.
    pub fn effect(&self, effect: Effect) {
        self.effect_count(effect).inc();
    }

    fn effect_count(&self, effect: Effect) -> Counter {
        self.families
            .effects
            .get_or_create(&EffectLabels {
                stage: self.stage,
                effect: effect.label(),
            })
            .clone()
    }

    /// Records one deployer call: `operation` is `apply`, `rollback` or `delete`; `outcome`
    /// is `ok` or `failed` (the local runner's apply is ok once the revision is ready; the
    /// Knative deployer's once the API accepted it: readiness comes later, see the `deploy`
    /// pipeline step).
    pub fn deployed(&self, operation: &'static str, outcome: &'static str, seconds: f64) {
        self.families
            .deploys
            .get_or_create(&DeployLabels { operation, outcome })
            .observe(seconds);
    }

    /// Records how long a pipeline step took (`parse`, `context`, `build`, `deploy`) and how
    /// it ended (`ok` or `failed`).
    pub fn step(&self, step: &'static str, outcome: &'static str, seconds: f64) {
        self.families
            .steps
            .get_or_create(&StepLabels { step, outcome })
            .observe(seconds);
    }

    /// Starts the journey and step series at zero (see [`Metrics::init_builds`]).
    pub fn init_journeys(&self) {
        for step in ["parse", "context", "build", "deploy"] {
            for outcome in ["ok", "failed"] {
                let _ = self
                    .families
                    .steps
                    .get_or_create(&StepLabels { step, outcome });
            }
        }
        for outcome in ["ready", "failed"] {
            self.families
                .journeys
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(0);
        }
    }

    /// Records a submission that reached ready after `seconds`.
    pub fn journey_ready(&self, seconds: f64) {
        self.families.submit_to_ready.observe(seconds);
        self.families
            .journeys
            .get_or_create(&OutcomeLabels { outcome: "ready" })
            .inc();
    }

    /// Records a submission that failed (parse, build or deploy).
    pub fn journey_failed(&self) {
        self.families
            .journeys
            .get_or_create(&OutcomeLabels { outcome: "failed" })
            .inc();
    }

    /// Sets the stored state: functions per phase (every phase, zero included) and dead
    /// letters.
    pub fn stored(&self, functions: impl Fn(Phase) -> i64, dead_letters: i64) {
        for phase in Phase::ALL {
            self.families
                .functions
                .get_or_create(&PhaseLabels {
                    phase: phase.label(),
                })
                .set(functions(phase));
        }
        self.families.dead_letters.set(dead_letters);
    }

    /// Sets how many journeys are stalled, per stage that journeys can wait on (zero included).
    pub fn stalled(&self, stalled: impl Fn(Stage) -> i64) {
        for stage in Stage::ALL {
            if stage == Stage::StatusReporter {
                continue;
            }
            self.families
                .stalled
                .get_or_create(&StageLabels {
                    stage: stage.service_name(),
                })
                .set(stalled(stage));
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The bounded label for an event type: the catalogue's own string, or `other`.
pub fn type_label(event_type: &str) -> &'static str {
    klambda_events::catalogue::find(event_type).map_or("other", |spec| spec.type_name)
}
