//! The embedded platform: the broker wired from `eventing/`, the five stages in-process, and
//! the local backends (object store, builder, runner, status store) under one data directory.
//! What `klambda up` runs, and what the end-to-end tests start.
//!
//! The broker is in memory by default, or RabbitMQ (`--broker amqp://…`). Over RabbitMQ a
//! platform may run only some stages (`--stages`): start more processes with the same broker
//! and instance name to scale a stage, each consuming the same Trigger queues.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use context_uploader::ContextUploader;
use job_launcher::JobLauncher;
use job_launcher::builder::local::LocalBuilder;
use klambda_broker::amqp::{Dispatcher, Topology};
use klambda_broker::{
    AmqpBroker, Answer, Broker, Delivery, InProcess, Ingress, Options, Subscriber, trigger,
};
use klambda_events::FunctionName;
use klambda_events::Stage;
use klambda_harness::metrics::Metrics;
use klambda_harness::publisher::{PublishError, Publisher};
use klambda_harness::signing::EventKeys;
use klambda_harness::{Handler, Harness};
use klambda_storage::{LocalDir, ObjectStore, S3Settings};
use parser::Parser;
use service_deployer::ServiceDeployer;
use service_deployer::deployer::local::LocalRunner;
use service_deployer::deployer::pool::WarmPool;
use service_deployer::secrets::SecretStore;
use status_reporter::StatusReporter;
use status_reporter::fold::FunctionState;
use status_reporter::store::StatusStore;

/// The name of the Broker in `eventing/`.
pub const BROKER: &str = "klambda";

/// Where the embedded platform keeps its data and finds its choreography.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Object store, builds and the status database live here.
    pub data_dir: PathBuf,
    /// The Trigger manifests (`eventing/`).
    pub eventing_dir: PathBuf,
    /// The status store (`sqlite:…` or `postgres://…`); SQLite in the data dir by default.
    pub database_url: Option<String>,
    /// RabbitMQ (`amqp://…`) instead of the in-memory broker.
    pub broker_url: Option<String>,
    /// The platform's name in RabbitMQ (the `<uid>` of its exchanges and queues); platforms
    /// with the same name share the queues.
    pub instance: String,
    /// The stages this process runs, by Service name; `None`: all five.
    pub stages: Option<Vec<String>>,
    /// S3-compatible storage for contexts and sources instead of the data directory.
    pub s3: Option<S3Settings>,
    /// The keys internal events are signed and checked with; `None`: the data directory's
    /// `event-keys`, created on first start.
    pub event_keys: Option<EventKeys>,
    /// The API token every request but `/health` and `/metrics` must carry
    /// (`Authorization: Bearer`); `None`: none is asked (what in-process tests use; `klambda up`
    /// always sets one).
    pub api_token: Option<String>,
    /// Warm interpreters kept per runtime (see `service_deployer::deployer::pool`); 0 (what
    /// in-process tests use) keeps none, `klambda up` keeps 2 unless told.
    pub warm_pool: usize,
    /// Where compiled runtimes' build caches are; `None`: `<data_dir>/builds/.cache`.
    pub build_cache_dir: Option<PathBuf>,
}

impl Settings {
    /// The defaults for `data_dir`: every stage, in-memory broker, SQLite.
    pub fn new(data_dir: PathBuf, eventing_dir: PathBuf) -> Self {
        Self {
            data_dir,
            eventing_dir,
            database_url: None,
            broker_url: None,
            instance: "local".into(),
            stages: None,
            s3: None,
            event_keys: None,
            api_token: None,
            warm_pool: 0,
            build_cache_dir: None,
        }
    }
}

/// The broker a platform publishes into.
#[derive(Clone)]
pub enum Bus {
    /// In memory, in this process.
    Embedded(Broker),
    /// RabbitMQ, with this process's dispatchers (they stop when the last clone is dropped).
    Amqp {
        /// The broker.
        broker: AmqpBroker,
        /// The Trigger queues this process consumes.
        dispatchers: Arc<Vec<Dispatcher>>,
    },
}

impl Bus {
    /// Publishes `event`; `Ok` once the broker has it (for RabbitMQ: confirmed).
    pub async fn publish(&self, event: cloudevents::Event) -> Result<(), PublishError> {
        match self {
            Self::Embedded(broker) => {
                broker.publish(event);
                Ok(())
            }
            Self::Amqp { broker, .. } => Publisher::publish(broker, event).await,
        }
    }

    /// The in-memory broker, when that is the bus.
    pub fn embedded(&self) -> Option<&Broker> {
        match self {
            Self::Embedded(broker) => Some(broker),
            Self::Amqp { .. } => None,
        }
    }
}

impl Platform {
    /// Takes a client's event: `Ok` once it is safe. RabbitMQ confirms it; the in-memory broker
    /// keeps nothing across a crash, so the event is first recorded in the status store, from
    /// which a restarted platform resumes it.
    pub async fn accept(&self, event: cloudevents::Event) -> Result<(), PublishError> {
        if let Bus::Embedded(_) = &self.bus {
            self.reporter
                .record(&event)
                .await
                .map_err(|error| PublishError::Unreachable {
                    sink: "the status store".to_owned(),
                    reason: error.to_string(),
                })?;
        }
        self.bus.publish(event).await
    }
}

/// A running embedded platform.
#[derive(Clone)]
pub struct Platform {
    /// The broker: publish events here.
    pub bus: Bus,
    /// The status store the status reporter writes.
    pub store: Arc<dyn StatusStore>,
    /// The status reporter's handler (its query routes).
    pub reporter: StatusReporter,
    /// The local runner (its revisions' output, for `klambda logs`).
    pub runner: Arc<LocalRunner>,
    /// Where builds happen (`<builds>/<build id>/build.log`).
    pub builds: PathBuf,
    /// Every in-process stage's metrics, one registry (`GET /metrics`).
    pub metrics: Arc<Metrics>,
    /// The API token requests must carry, if one is set.
    pub api_token: Option<Arc<str>>,
    /// Functions' secret values (`<data-dir>/secrets`), read by the runner.
    pub secrets: SecretStore,
    /// Each attempt of each delivery to a function from this process (`klambda events`).
    pub deliveries: Arc<klambda_broker::journal::Journal>,
}

/// The Lambda API's functions on one machine: the local runner's serving revisions (held while
/// called), their output for the log tail, and the platform's own ingress for asynchronous
/// invocations.
impl status_reporter::lambda_api::Functions for Platform {
    fn serving(&self, state: &FunctionState) -> Option<(String, Box<dyn Send>)> {
        let (url, hold) = self.runner.serving(&state.name)?;
        Some((url, Box::new(hold)))
    }

    fn output<'a>(
        &'a self,
        function: &'a FunctionName,
    ) -> status_reporter::lambda_api::BoxFuture<'a, Option<Vec<String>>> {
        Box::pin(async move { self.runner.output(function).await.map(|(_, lines)| lines) })
    }

    fn accept(
        &self,
        event: cloudevents::Event,
    ) -> status_reporter::lambda_api::BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            Platform::accept(self, event)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// A stage in-process, by its Service name, with its side events going into the broker and
/// its metrics into the platform's registry.
fn stage<H: Handler>(
    handler: H,
    ingress: &Ingress,
    metrics: &Metrics,
    keys: &Arc<EventKeys>,
) -> (String, Arc<dyn Subscriber>) {
    let name = handler.stage().service_name();
    let harness = Harness::new(handler)
        .with_publisher(Arc::new(ingress.clone()))
        .with_metrics(Arc::new(metrics.for_stage(name)))
        .with_event_keys(Arc::clone(keys));
    harness.start();
    (name.to_owned(), Arc::new(InProcess::new(harness, name)))
}

impl Platform {
    /// Starts everything. Must run inside a Tokio runtime.
    pub async fn start(settings: &Settings) -> Result<Self> {
        std::fs::create_dir_all(&settings.data_dir).with_context(|| {
            format!(
                "creating the data directory {}",
                settings.data_dir.display()
            )
        })?;
        let data = |name: &str| settings.data_dir.join(name);
        let objects: Arc<dyn ObjectStore> = match &settings.s3 {
            Some(s3) => klambda_storage::s3(s3),
            None => Arc::new(LocalDir::new(data("store"))),
        };
        // Everything `klambda up` writes is under its data directory.
        let uploader = ContextUploader::new(Arc::clone(&objects)).with_work_dir(data("sources"));
        let database_url = settings
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite:{}", data("status.db").display()));
        let store: Arc<dyn StatusStore> = Arc::from(
            status_reporter::store::open(&database_url).context("opening the status store")?,
        );
        let reporter = StatusReporter::new(Arc::clone(&store));
        let ingress = Ingress::new();
        let metrics = Arc::new(Metrics::new("klambda"));
        let mut builder = LocalBuilder::new(Arc::clone(&objects), data("builds"));
        if let Some(cache) = &settings.build_cache_dir {
            builder = builder.with_cache_dir(cache);
        }
        let builder = Arc::new(builder);
        // The runner serves its recorded functions again only in the process that runs the
        // service-deployer: processes sharing a data directory must not each start a copy.
        let deploys = settings.stages.as_ref().is_none_or(|stages| {
            stages
                .iter()
                .any(|s| s == Stage::ServiceDeployer.service_name())
        });
        let secrets = SecretStore::new(data("secrets"));
        let runner = Arc::new(
            if deploys {
                LocalRunner::recover(data("runner"))
                    .await
                    .context("reading the local runner's state")?
            } else {
                LocalRunner::new()
            }
            .with_secrets(&secrets)
            .with_metrics(metrics.for_stage(Stage::ServiceDeployer.service_name()))
            .with_warm_pool(Arc::new(
                // Only where functions are started.
                WarmPool::new(
                    data("warm-pool"),
                    if deploys { settings.warm_pool } else { 0 },
                )
                .context("writing the warm pool's shims")?,
            )),
        );
        // Every process of one platform signs with the same keys: the data directory's, unless
        // given.
        let keys = Arc::new(match &settings.event_keys {
            Some(keys) => keys.clone(),
            None => EventKeys::load_or_create(&data("event-keys"))
                .context("reading the platform's event keys")?,
        });
        let mut subscribers: HashMap<String, Arc<dyn Subscriber>> = [
            stage(Parser::new(), &ingress, &metrics, &keys),
            stage(uploader, &ingress, &metrics, &keys),
            stage(
                JobLauncher::new(builder, Arc::clone(&objects)),
                &ingress,
                &metrics,
                &keys,
            ),
            stage(
                ServiceDeployer::new(Arc::clone(&runner) as _),
                &ingress,
                &metrics,
                &keys,
            ),
            stage(reporter.clone(), &ingress, &metrics, &keys),
        ]
        .into_iter()
        .collect();
        if let Some(stages) = &settings.stages {
            let unknown: Vec<&str> = stages
                .iter()
                .filter(|s| !subscribers.contains_key(s.as_str()))
                .map(String::as_str)
                .collect();
            if !unknown.is_empty() {
                let mut known: Vec<&str> = subscribers.keys().map(String::as_str).collect();
                known.sort();
                anyhow::bail!(
                    "unknown stage(s) {}; the stages are {}",
                    unknown.join(", "),
                    known.join(", ")
                );
            }
            subscribers.retain(|name, _| stages.contains(name));
        }
        let triggers = trigger::load(&settings.eventing_dir, BROKER).with_context(|| {
            format!(
                "loading the Triggers in {}",
                settings.eventing_dir.display()
            )
        })?;
        // The Broker's deadLetterSink is the status reporter's dead-letter store, in-process.
        let sink: Arc<dyn Subscriber> = Arc::new(DeadLetterStore(Arc::clone(&store)));
        let bus = match &settings.broker_url {
            None => {
                anyhow::ensure!(
                    settings.stages.is_none(),
                    "running only some stages needs a shared broker: add --broker amqp://…"
                );
                let broker = Broker::start_with(
                    triggers,
                    &subscribers,
                    Options {
                        dead_letter_sink: Some(sink),
                        metrics: Some(Arc::new(metrics.for_stage("broker"))),
                    },
                )?;
                ingress.connect(Arc::new(broker.clone()));
                Bus::Embedded(broker)
            }
            Some(url) => {
                let topology = Topology::new(BROKER, &settings.instance);
                let broker = AmqpBroker::connect(url, topology, &triggers)
                    .await?
                    .with_metrics(Arc::new(metrics.for_stage("broker")));
                ingress.connect(Arc::new(broker.clone()));
                let mut dispatchers: Vec<Dispatcher> = triggers
                    .into_iter()
                    .filter_map(|trigger| {
                        let subscriber = Arc::clone(subscribers.get(&trigger.subscriber)?);
                        Some(broker.dispatch(trigger, subscriber))
                    })
                    .collect();
                // The process that runs the status reporter also drains the dead letters into
                // its store.
                if subscribers.contains_key(Stage::StatusReporter.service_name()) {
                    dispatchers.push(broker.dispatch_dead_letters(sink, Delivery::default()));
                }
                Bus::Amqp {
                    broker,
                    dispatchers: Arc::new(dispatchers),
                }
            }
        };
        // The in-memory broker starts empty: journeys a killed process left unfinished are sent
        // on again from what the status store recorded (RabbitMQ keeps its own queues).
        if let Bus::Embedded(broker) = &bus {
            let unfinished = status_reporter::resume::unfinished(store.as_ref())
                .await
                .context("reading unfinished journeys from the status store")?;
            if !unfinished.is_empty() {
                tracing::info!(
                    journeys = unfinished.len(),
                    "resuming journeys a previous run left unfinished"
                );
            }
            for event in unfinished {
                broker.publish(event);
            }
        }
        // Functions' Triggers go on the bus while they serve (those serving now at once).
        let default_delivery = trigger::broker_delivery(&settings.eventing_dir, BROKER)
            .with_context(|| {
                format!(
                    "reading the Broker's delivery in {}",
                    settings.eventing_dir.display()
                )
            })?;
        let deliveries = Arc::new(klambda_broker::journal::Journal::default());
        runner
            .attach(Arc::new(crate::function_triggers::FunctionTriggers::new(
                &bus,
                Arc::downgrade(&runner),
                default_delivery,
                Arc::clone(&deliveries),
            )))
            .await;
        // Functions run as users of their own (when this is root): what the platform keeps here
        // is closed to them.
        service_deployer::deployer::sandbox::close_data_dir(&settings.data_dir)
            .context("closing the data directory to functions")?;
        Ok(Self {
            bus,
            store,
            reporter,
            runner,
            builds: data("builds"),
            metrics,
            api_token: settings.api_token.as_deref().map(Arc::from),
            secrets,
            deliveries,
        })
    }
}

/// The status reporter's dead-letter store as the broker's dead-letter sink (on the cluster:
/// `POST /dead-letters` of the status-reporter Service, per `eventing/broker.yaml`).
struct DeadLetterStore(Arc<dyn StatusStore>);

impl Subscriber for DeadLetterStore {
    fn address(&self) -> String {
        format!(
            "inprocess://status-reporter{}",
            status_reporter::api::DEAD_LETTER_PATH
        )
    }

    fn deliver(
        &self,
        event: cloudevents::Event,
    ) -> klambda_broker::subscriber::BoxFuture<'_, Answer> {
        Box::pin(async move {
            match self.0.record_dead_letter(&event, chrono::Utc::now()).await {
                Ok(_) => Answer::Accepted,
                Err(error) => Answer::Failed {
                    status: Some(503),
                    body: bytes::Bytes::from(error.to_string()),
                },
            }
        })
    }
}

/// The `eventing/` folder: `$KLAMBDA_EVENTING_DIR`, else `eventing/` in the current directory
/// or above it (so `klambda up` works from anywhere in a checkout).
pub fn find_eventing_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir.to_owned());
    }
    let mut dir = std::env::current_dir()?;
    loop {
        let candidate = dir.join("eventing");
        if candidate.join("broker.yaml").is_file() {
            return Ok(candidate);
        }
        if !dir.pop() {
            anyhow::bail!(
                "no eventing/ folder (with broker.yaml) here or above; run from the knative-lambda checkout or pass --eventing-dir"
            );
        }
    }
}
