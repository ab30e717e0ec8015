//! The real parser on the embedded broker, wired from the Trigger manifests in `eventing/`:
//! the choreography as data, running. Stages not built yet are recorders.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use cloudevents::{AttributesReader as _, Event};
use context_uploader::ContextUploader;
use job_launcher::JobLauncher;
use job_launcher::builder::local::LocalBuilder;
use klambda_broker::subscriber::BoxFuture;
use klambda_broker::{Answer, Broker, InProcess, Ingress, Subscriber, trigger};
use klambda_events::catalogue::BuildCompleted;
use klambda_events::catalogue::FunctionCreated;
use klambda_events::data::Phase;
use klambda_events::spec::FunctionSubmission;
use klambda_events::{Envelope, EventType, Stage, decode};
use klambda_harness::Harness;
use klambda_storage::{LocalDir, ObjectStore};
use klambda_test_support::repo;
use parser::Parser;
use status_reporter::StatusReporter;
use status_reporter::store::StatusStore;

/// A stage stand-in that records what the broker delivers to it.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Event>>>);

impl Recorder {
    /// Waits until at least `n` events arrived (builds finish after the broker goes idle).
    async fn wait_for(&self, n: usize) -> Result<()> {
        let started = std::time::Instant::now();
        while self.events().len() < n {
            if started.elapsed() > std::time::Duration::from_secs(60) {
                anyhow::bail!(
                    "only {} of {n} events arrived within 60 s",
                    self.events().len()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(())
    }

    fn types(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|e| e.iter().map(|e| e.ty().to_owned()).collect())
            .unwrap_or_default()
    }
    fn events(&self) -> Vec<Event> {
        self.0.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl Subscriber for Recorder {
    fn address(&self) -> String {
        "test://recorder".into()
    }
    fn deliver(&self, event: Event) -> BoxFuture<'_, Answer> {
        if let Ok(mut events) = self.0.lock() {
            events.push(event);
        }
        Box::pin(async { Answer::Accepted })
    }
}

struct Pipeline {
    broker: Broker,
    recorders: HashMap<Stage, Recorder>,
    store: Arc<dyn StatusStore>,
}

static RUN: AtomicUsize = AtomicUsize::new(0);

impl Pipeline {
    async fn logged_types(&self, function: &str) -> Result<Vec<String>> {
        let events = self.store.function_events(function, 1000).await?;
        Ok(events
            .iter()
            .map(|e| e.json()["type"].as_str().unwrap_or_default().to_owned())
            .collect())
    }
}

fn start() -> Result<Pipeline> {
    let ingress = Ingress::new();
    let parser = Harness::new(Parser::new()).with_publisher(Arc::new(ingress.clone()));
    let mut subscribers: HashMap<String, Arc<dyn Subscriber>> = HashMap::new();
    subscribers.insert("parser".into(), Arc::new(InProcess::new(parser, "parser")));
    // The real status reporter, on a fresh SQLite file.
    let db = std::env::temp_dir().join(format!(
        "klambda-pipeline-{}-{}.db",
        std::process::id(),
        RUN.fetch_add(1, Ordering::SeqCst)
    ));
    let store: Arc<dyn StatusStore> = Arc::from(status_reporter::store::open(&format!(
        "sqlite:{}",
        db.display()
    ))?);
    let reporter = Harness::new(StatusReporter::new(Arc::clone(&store)));
    subscribers.insert(
        "status-reporter".into(),
        Arc::new(InProcess::new(reporter, "status-reporter")),
    );
    // The real context-uploader, on a fresh local object store.
    let objects = std::env::temp_dir().join(format!(
        "klambda-pipeline-objects-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::SeqCst)
    ));
    let work = objects.join("builds");
    let objects: Arc<dyn ObjectStore> = Arc::new(LocalDir::new(objects.join("store")));
    let uploader = Harness::new(ContextUploader::new(Arc::clone(&objects)));
    subscribers.insert(
        "context-uploader".into(),
        Arc::new(InProcess::new(uploader, "context-uploader")),
    );
    // The real job launcher with the local builder, on the same object store; its build
    // outcomes go into the broker through the ingress, as Job events would on the cluster.
    let builder = Arc::new(LocalBuilder::new(Arc::clone(&objects), work));
    let launcher = Harness::new(JobLauncher::new(builder, Arc::clone(&objects)))
        .with_publisher(Arc::new(ingress.clone()));
    subscribers.insert(
        "job-launcher".into(),
        Arc::new(InProcess::new(launcher, "job-launcher")),
    );
    let mut recorders = HashMap::new();
    {
        let stage = Stage::ServiceDeployer;
        let recorder = Recorder::default();
        subscribers.insert(stage.service_name().into(), Arc::new(recorder.clone()));
        recorders.insert(stage, recorder);
    }
    let triggers = trigger::load(&repo::root().join("eventing"), "klambda")?;
    let broker = Broker::start(triggers, &subscribers)?;
    ingress.connect(&broker);
    Ok(Pipeline {
        broker,
        recorders,
        store,
    })
}

fn submission(name: &str) -> Result<FunctionSubmission> {
    Ok(serde_json::from_value(serde_json::json!({
        "name": name, "runtime": "python3.12", "handler": "app.handler",
        "source": {"kind": "inline", "files": [{"path": "app.py", "content": "def handler(event, context):\n    return event\n"}]}
    }))?)
}

fn created(id: &str, data: &FunctionSubmission) -> Event {
    Envelope::new(id, "/klambda-cli")
        .subject(data.name.clone())
        .encode::<FunctionCreated>(data)
}

#[tokio::test]
async fn a_submission_flows_from_the_broker_through_the_parser_to_the_next_stage() -> Result<()> {
    let pipeline = start()?;
    pipeline
        .broker
        .publish(created("sub-1", &submission("hello")?));
    pipeline.broker.idle().await;

    // parser → context-uploader → job-launcher (a real local build) → the deployer's Trigger.
    let deployer = &pipeline.recorders[&Stage::ServiceDeployer];
    deployer.wait_for(1).await?;
    pipeline.broker.idle().await;
    assert_eq!(deployer.types(), [BuildCompleted::TYPE]);
    let parsed = decode::<BuildCompleted>(&deployer.events()[0])?;
    assert_eq!(parsed.spec.name.as_str(), "hello");
    assert!(!parsed.cached);
    let artifact = parsed.image.strip_prefix("local:").unwrap_or_default();
    assert!(
        std::path::Path::new(artifact)
            .join("function/app.py")
            .is_file()
    );

    // The status reporter's catch-all Trigger saw the whole story, side events and its own
    // status.updated replies included; `idle` returning proves those replies did not loop.
    let mut seen = pipeline.logged_types("hello").await?;
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        [
            "io.knative.lambda.build.completed",
            "io.knative.lambda.build.started",
            "io.knative.lambda.context.uploaded",
            "io.knative.lambda.function.created",
            "io.knative.lambda.parser.completed",
            "io.knative.lambda.parser.started",
            "io.knative.lambda.status.updated",
        ]
    );
    let state = pipeline
        .store
        .function("hello")
        .await?
        .ok_or_else(|| anyhow::anyhow!("no state for hello"))?;
    assert_eq!(state.phase, Phase::Deploying);
    assert_eq!(state.digest.as_deref(), Some(parsed.digest.as_str()));
    assert!(pipeline.broker.dead_letters().is_empty());
    Ok(())
}

#[tokio::test]
async fn an_invalid_submission_stops_at_the_parser_with_its_reasons_recorded() -> Result<()> {
    let pipeline = start()?;
    let mut bad = submission("Bad Name")?;
    bad.handler = "app.handler; curl evil".into();
    pipeline.broker.publish(created("sub-2", &bad));
    pipeline.broker.idle().await;
    assert!(
        pipeline.recorders[&Stage::ServiceDeployer]
            .types()
            .is_empty()
    );
    // The name is invalid, so there is no function state; the failure is in the log by id.
    let failed_id = Envelope::answering(
        &created("sub-2", &bad),
        Stage::Parser,
        "io.knative.lambda.parser.failed",
    )
    .id()
    .to_owned();
    let failed = pipeline
        .store
        .event(&failed_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("parser.failed not recorded"))?;
    assert!(
        failed.json()["data"]["problems"]
            .as_array()
            .is_some_and(|p| p.len() == 2),
        "{}",
        failed.body
    );
    Ok(())
}

#[tokio::test]
async fn replaying_the_input_three_times_gives_identical_replies() -> Result<()> {
    let pipeline = start()?;
    let input = created("sub-3", &submission("replayed")?);
    for _ in 0..3 {
        pipeline.broker.publish(input.clone());
    }
    let deployer = &pipeline.recorders[&Stage::ServiceDeployer];
    deployer.wait_for(1).await?;
    pipeline.broker.idle().await;
    // Exactly one build ran; any replay that arrived after it finished was a cache hit, and
    // every build.completed names the same image.
    let completed: Vec<_> = deployer
        .events()
        .iter()
        .map(decode::<BuildCompleted>)
        .collect::<Result<_, _>>()?;
    assert_eq!(
        completed.iter().filter(|c| !c.cached).count(),
        1,
        "{completed:#?}"
    );
    assert!(completed.iter().all(|c| c.image == completed[0].image));
    Ok(())
}

#[tokio::test]
async fn a_contract_mismatch_is_dead_lettered_with_the_parsers_answer() -> Result<()> {
    let pipeline = start()?;
    let mut newer = created("sub-4", &submission("newer")?);
    cloudevents::AttributesWriter::set_dataschema(
        &mut newer,
        Some(url::Url::parse(
            "urn:knative-lambda:schema:io.knative.lambda.function.created:v2",
        )?),
    );
    pipeline.broker.publish(newer);
    pipeline.broker.idle().await;
    let letters = pipeline.broker.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 1, "a 400 is not retried");
    let attr = |name: &str| {
        letters[0]
            .event
            .extension(name)
            .map(|v| v.to_string())
            .unwrap_or_default()
    };
    assert_eq!(attr("knativeerrorcode"), "400");
    assert_eq!(attr("knativeerrordest"), "inprocess://parser");
    Ok(())
}
