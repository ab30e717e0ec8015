//! The whole pipeline over the real RabbitMQ on this machine, as `klambda up --broker amqp://…`
//! runs it, with the parser scaled out into a second platform process: both examples are
//! deployed with the CLI's own `deploy` and answer an invocation.
//!
//! Needs RabbitMQ on 127.0.0.1:5672 (guest/guest; `scripts/services.sh` starts it) or
//! `$KLAMBDA_TEST_AMQP_URL`.

use anyhow::{Context as _, Result};
use klambda_broker::trigger;
use klambda_cli::client::{self, Output};
use klambda_cli::embedded::{self, BROKER, Bus, Platform};
use klambda_events::EventType as _;
use klambda_events::data::Phase;
use klambda_harness::signing::EventKeys;
use klambda_test_support::http::{TestServer, post};
use klambda_test_support::rabbitmq::{self, url};
use klambda_test_support::repo;

async fn platform(instance: &str, role: &str, stages: Vec<&str>) -> Result<Platform> {
    let data_dir = std::env::temp_dir().join(format!("klambda-{instance}-{role}"));
    let _ = std::fs::remove_dir_all(&data_dir);
    let settings = embedded::Settings {
        broker_url: Some(url()),
        instance: instance.to_owned(),
        stages: Some(stages.into_iter().map(str::to_owned).collect()),
        // Processes of one platform with data directories of their own share the keys their
        // events are signed with.
        event_keys: Some(EventKeys::parse(klambda_test_support::fixtures::EVENT_KEY)?),
        ..embedded::Settings::new(data_dir, repo::root().join("eventing"))
    };
    Platform::start(&settings)
        .await
        .context("starting a platform on RabbitMQ at 127.0.0.1:5672 (run scripts/services.sh)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_examples_deploy_over_rabbitmq_with_the_parser_in_its_own_process() -> Result<()> {
    let instance = rabbitmq::Instance::new("test-pipeline");
    let instance = instance.name();
    // This process runs every stage but the parser; a second one runs only the parser, and
    // receives the submissions through RabbitMQ.
    let main = platform(
        instance,
        "main",
        vec![
            "context-uploader",
            "job-launcher",
            "service-deployer",
            "status-reporter",
        ],
    )
    .await?;
    let parser = platform(instance, "parser", vec!["parser"]).await?;
    let server = TestServer::start(klambda_cli::server::router(main.clone())).await?;
    let endpoint = client::Api::new(&server.url(""));
    for (example, name) in [
        ("hello-python", "hello-python"),
        ("hello-node", "hello-node"),
    ] {
        let code = client::deploy(
            &endpoint,
            &repo::root().join("examples").join(example),
            Output::Json,
            None,
        )
        .await?;
        assert_eq!(code, 0, "{example} did not become ready");
        let state = main
            .store
            .function(name)
            .await?
            .context("the status reporter knows the function")?;
        assert_eq!(state.phase, Phase::Ready, "{state:?}");
        let function = state.url.context("a ready function has a URL")?;
        let reply = klambda_tests::invoke(&function, "rabbit").await?;
        assert_eq!(reply["message"], "Hello, rabbit!", "{name}");
    }
    // The parser's work came through its own process: its events are in the log.
    let events = main.store.function_events("hello-node", 0, 100).await?;
    assert!(
        events
            .iter()
            .any(|e| e.json()["type"] == klambda_events::catalogue::ParserCompleted::TYPE),
        "no parser.completed in {events:?}"
    );
    // A submission the parser refuses outright (a contract version it does not know) is
    // dead-lettered by the parser's process and lands in the status reporter's store.
    let refused = post(
        &server.url("/"),
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "v2-1"),
            ("ce-source", "/tests"),
            ("ce-type", klambda_events::catalogue::FunctionCreated::TYPE),
            (
                "ce-dataschema",
                "urn:knative-lambda:schema:io.knative.lambda.function.created:v2",
            ),
            ("content-type", "application/json"),
        ],
        r#"{"name":"newer"}"#,
    )
    .await?;
    assert_eq!(refused.status, 202);
    let mut letters = Vec::new();
    for _ in 0..400 {
        letters = main.store.dead_letters(10).await?;
        if !letters.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(letters.len(), 1, "the dead letter reached the store");
    assert_eq!(letters[0].json()["knativeerrorcode"], "400");
    assert_eq!(letters[0].json()["knativeerrordest"], "inprocess://parser");

    let Bus::Amqp { broker, .. } = &main.bus else {
        anyhow::bail!("the platform runs on RabbitMQ");
    };
    let broker = broker.clone();
    server.shutdown().await;
    drop(parser);
    drop(main);
    let triggers = trigger::load(&repo::root().join("eventing"), BROKER)?;
    broker.delete(&triggers).await?;
    Ok(())
}
