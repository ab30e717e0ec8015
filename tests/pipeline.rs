//! The whole pipeline in one process, as `klambda up` runs it: the five real stages on the
//! embedded broker wired from the Trigger manifests in `eventing/` (the choreography as data,
//! running), with the local object store, builder and runner. A Python function goes from submission to a running,
//! invocable revision.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use cloudevents::Event;
use klambda_broker::Broker;
use klambda_cli::embedded;
use klambda_events::catalogue::FunctionCreated;
use klambda_events::data::Phase;
use klambda_events::spec::FunctionSubmission;
use klambda_events::{Envelope, EventType as _, Stage};
use klambda_test_support::http::post;
use klambda_test_support::repo;
use status_reporter::fold::FunctionState;
use status_reporter::store::StatusStore;

static RUN: AtomicUsize = AtomicUsize::new(0);

struct Pipeline {
    broker: Broker,
    store: Arc<dyn StatusStore>,
}

/// The embedded platform (what `klambda up` runs) on a fresh data directory.
async fn start() -> Result<Pipeline> {
    let data_dir =
        klambda_tests::data_dir(&format!("pipeline-{}", RUN.fetch_add(1, Ordering::SeqCst)));
    let platform = embedded::Platform::start(&embedded::Settings::new(
        data_dir,
        repo::root().join("eventing"),
    ))
    .await?;
    Ok(Pipeline {
        broker: platform
            .bus
            .embedded()
            .cloned()
            .context("the default bus is the embedded broker")?,
        store: platform.store,
    })
}

impl Pipeline {
    /// Waits until `name` reaches a final phase (builds and deploys finish after the broker's
    /// queues drain), then until the broker is idle.
    async fn settled(&self, name: &str) -> Result<FunctionState> {
        let started = Instant::now();
        loop {
            if let Some(state) = self.store.function(name).await?
                && matches!(state.phase, Phase::Ready | Phase::Failed)
            {
                self.broker.idle().await;
                return Ok(state);
            }
            if started.elapsed() > Duration::from_secs(90) {
                bail!(
                    "{name} did not settle within 90 s: {:?}",
                    self.store.function(name).await?
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn logged_types(&self, function: &str) -> Result<Vec<String>> {
        let events = self.store.function_events(function, 0, 1000).await?;
        Ok(events
            .iter()
            .map(|e| e.json()["type"].as_str().unwrap_or_default().to_owned())
            .collect())
    }
}

fn submission(name: &str, body: &str) -> Result<FunctionSubmission> {
    Ok(serde_json::from_value(serde_json::json!({
        "name": name, "runtime": "python3.11", "handler": "app.handler",
        "source": {"kind": "inline", "files": [{"path": "app.py", "content": format!("def handler(event, context):\n    return {body}\n")}]}
    }))?)
}

fn created(id: &str, data: &FunctionSubmission) -> Event {
    Envelope::new(id, "/klambda-cli")
        .subject(data.name.clone())
        .encode::<FunctionCreated>(data)
}

#[tokio::test]
async fn a_function_goes_from_submission_to_a_running_revision() -> Result<()> {
    let pipeline = start().await?;
    pipeline.broker.publish(created(
        "sub-1",
        &submission("hello", "{'hello': event['name']}")?,
    ));
    let state = pipeline.settled("hello").await?;
    assert_eq!(state.phase, Phase::Ready, "{state:?}");
    assert_eq!(state.revision.as_deref(), Some("hello-00001"));
    let url = state.url.clone().context("a ready function has a URL")?;
    assert_eq!(
        klambda_tests::invoke(&url, "world").await?,
        serde_json::json!({"hello": "world"})
    );

    // Every stage's events, in the status reporter's log; `idle` returning proves its own
    // status.updated replies did not loop through its catch-all Trigger.
    let mut seen = pipeline.logged_types("hello").await?;
    seen.sort();
    seen.dedup();
    use klambda_events::catalogue::*;
    let expected: Vec<String> = [
        BuildCompleted::TYPE,
        BuildStarted::TYPE,
        ContextUploaded::TYPE,
        FunctionCreated::TYPE,
        ParserCompleted::TYPE,
        ParserStarted::TYPE,
        ServiceCreated::TYPE,
        ServiceReady::TYPE,
        StatusUpdated::TYPE,
    ]
    .map(str::to_owned)
    .to_vec();
    assert_eq!(seen, expected);
    let timings = state.timings_ms();
    for stage in ["parse", "context", "build", "deploy", "total"] {
        assert!(
            timings.contains_key(stage),
            "no {stage} timing in {timings:?}"
        );
    }
    assert!(pipeline.broker.dead_letters().is_empty());
    Ok(())
}

#[tokio::test]
async fn an_invalid_submission_stops_at_the_parser_with_its_reasons_recorded() -> Result<()> {
    let pipeline = start().await?;
    let mut bad = submission("Bad Name", "event")?;
    bad.handler = "app.handler; curl evil".into();
    let input = created("sub-2", &bad);
    pipeline.broker.publish(input.clone());
    pipeline.broker.idle().await;
    // The name is invalid, so there is no function state; the failure is in the log by id.
    let failed_id =
        klambda_events::reply::<klambda_events::catalogue::ParserFailed>(&input, Stage::Parser)
            .id()
            .to_owned();
    let failed = pipeline
        .store
        .event(&failed_id)
        .await?
        .context("parser.failed recorded")?;
    assert_eq!(
        failed.json()["data"]["problems"].as_array().map(Vec::len),
        Some(2),
        "{}",
        failed.body
    );
    assert!(pipeline.store.functions().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn replaying_the_submission_builds_and_deploys_exactly_once() -> Result<()> {
    let pipeline = start().await?;
    let input = created("sub-3", &submission("replayed", "event")?);
    for _ in 0..3 {
        pipeline.broker.publish(input.clone());
    }
    let state = pipeline.settled("replayed").await?;
    assert_eq!(state.phase, Phase::Ready);
    // Let any late replay finish too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    pipeline.broker.idle().await;
    let events = pipeline.store.function_events("replayed", 0, 1000).await?;
    let of_type = |ty: &str| events.iter().filter(|e| e.json()["type"] == ty).count();
    // Replies are identical (same id), so the log keeps each once; one real build, one revision.
    assert_eq!(of_type(klambda_events::catalogue::ParserCompleted::TYPE), 1);
    let real_builds = events
        .iter()
        .filter(|e| {
            e.json()["type"] == klambda_events::catalogue::BuildCompleted::TYPE
                && e.json()["data"]["cached"] == false
        })
        .count();
    assert_eq!(real_builds, 1);
    assert_eq!(of_type(klambda_events::catalogue::ServiceCreated::TYPE), 1);
    assert_eq!(of_type(klambda_events::catalogue::ServiceUpdated::TYPE), 0);
    assert_eq!(state.revision.as_deref(), Some("replayed-00001"));
    Ok(())
}

#[tokio::test]
async fn a_contract_mismatch_is_dead_lettered_with_the_parsers_answer() -> Result<()> {
    let pipeline = start().await?;
    let mut newer = created("sub-4", &submission("newer", "event")?);
    cloudevents::AttributesWriter::set_dataschema(
        &mut newer,
        Some(url::Url::parse(&format!(
            "urn:knative-lambda:schema:{}:v2",
            FunctionCreated::TYPE
        ))?),
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
    // Delivered to the Broker's deadLetterSink too: the status reporter's dead-letter store.
    let stored = pipeline.store.dead_letters(10).await?;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].json()["knativeerrorcode"], "400");
    Ok(())
}

#[tokio::test]
async fn a_dead_letter_redriven_with_the_cli_goes_through_the_pipeline() -> Result<()> {
    use klambda_cli::client::{self, Dlq, Output};
    let (platform, server) = klambda_tests::serve_embedded("redrive", |s| s).await?;
    // What the Broker's deadLetterSink receives when the parser was down for every retry.
    let mut letter = created("sub-5", &submission("redriven", "event")?);
    letter.set_extension("knativeerrordest", "http://parser.knative-lambda.svc");
    letter.set_extension("knativeerrorcode", "503");
    letter.set_extension("knativeerrordata", "ZG93bg==");
    let sunk = klambda_tests::deliver(&server.url("/dead-letters"), &letter).await?;
    assert_eq!(sunk.status, 202, "{:?}", sunk.body);

    let endpoint = client::Api::new(&server.url(""));
    assert_eq!(
        client::dlq(&endpoint, Dlq::List { function: None }, Output::Json).await?,
        0
    );
    let stored = platform.store.dead_letters(10).await?;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        client::dlq(&endpoint, Dlq::Show(stored[0].seq), Output::Text).await?,
        0
    );
    assert_eq!(
        client::dlq(
            &endpoint,
            Dlq::Redrive {
                id: None,
                function: None
            },
            Output::Text
        )
        .await?,
        0
    );
    assert!(
        platform.store.dead_letters(10).await?.is_empty(),
        "a redriven letter is forgotten"
    );
    let pipeline = Pipeline {
        broker: platform
            .bus
            .embedded()
            .cloned()
            .context("embedded broker")?,
        store: Arc::clone(&platform.store),
    };
    let state = pipeline.settled("redriven").await?;
    assert_eq!(state.phase, Phase::Ready, "{state:?}");
    // The redriven event went without the error attributes.
    let submitted = pipeline.store.event("sub-5").await?.context("recorded")?;
    assert!(submitted.json().get("knativeerrorcode").is_none());
    // A letter that does not exist is a clear error.
    let missing = client::dlq(&endpoint, Dlq::Show(999_999), Output::Text)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(missing.contains("no dead letter 999999"), "{missing}");
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn webhook_dead_letters_are_listed_and_redriven_with_the_cli() -> Result<()> {
    use klambda_cli::client::{self, Output, WebhookDlq};
    use klambda_harness::publisher::{BoxFuture, Memory, PublishError, Publisher};
    use std::sync::atomic::AtomicBool;

    /// A broker that is down until switched on.
    #[derive(Clone, Default)]
    struct Switch(Arc<AtomicBool>, Memory);
    impl Publisher for Switch {
        fn publish(&self, event: Event) -> BoxFuture<'_, Result<(), PublishError>> {
            let up = self.0.load(Ordering::SeqCst);
            Box::pin(async move {
                if !up {
                    return Err(PublishError::Unreachable {
                        sink: "broker".into(),
                        reason: "down".into(),
                    });
                }
                self.1.publish(event).await
            })
        }
        fn ready(&self) -> BoxFuture<'_, Result<(), PublishError>> {
            Box::pin(async { Ok(()) })
        }
    }
    let broker = Switch::default();
    let dir = std::env::temp_dir().join(format!("klambda-webhook-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = webhook_gateway::Config::default();
    config.github_secret = Some(klambda_harness::config::Secret::new("s"));
    config.admin_token = Some(klambda_harness::config::Secret::new("admin"));
    config.dead_letter_dir = dir.clone();
    config.policy.attempts = 1;
    let gateway = klambda_test_support::http::TestServer::start(webhook_gateway::router(
        config,
        Arc::new(broker.clone()),
    ))
    .await?;
    let body = r#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
    let signature = {
        use hmac::{KeyInit as _, Mac as _};
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s")?;
        mac.update(body.as_bytes());
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    let reply = post(
        &gateway.url("/github"),
        &[
            ("x-github-event", "ping"),
            ("x-github-delivery", "d-1"),
            ("x-hub-signature-256", signature.as_str()),
        ],
        body,
    )
    .await?;
    assert_eq!(reply.status, 202);
    assert_eq!(reply.json()?["deadLettered"], true);
    let endpoint = client::Api::new(&gateway.url("")).with_token(Some("admin".into()));
    assert_eq!(
        client::webhook_dlq(&endpoint, WebhookDlq::List, Output::Text).await?,
        0
    );
    // Still down: the redrive stops and says so (exit 1), the letter stays.
    assert_eq!(
        client::webhook_dlq(&endpoint, WebhookDlq::Redrive(None), Output::Text).await?,
        1
    );
    broker.0.store(true, Ordering::SeqCst);
    assert_eq!(
        client::webhook_dlq(&endpoint, WebhookDlq::Redrive(None), Output::Text).await?,
        0
    );
    let published = broker.1.events();
    assert_eq!(published.len(), 1);
    assert_eq!(cloudevents::AttributesReader::id(&published[0]), "d-1");
    gateway.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
