//! The status reporter as a stage over real HTTP: it records any CloudEvent, replies
//! `status.updated` when a function's state changes, never replies to `status.updated`, and
//! serves what it knows.

use std::sync::Arc;

use anyhow::Result;
use klambda_events::catalogue::{
    BuildFailed, FunctionCreated, ParserFailed, ServiceReady, StatusUpdated,
};
use klambda_events::data::{
    BuildFailure, BuildFailureCause, Operation, ParseFailure, Phase, Problem, ServiceReadiness,
};
use klambda_events::{BuildId, ContentDigest, Envelope, EventType, FunctionName, decode};
use klambda_harness::{Harness, codec};
use klambda_test_support::http::{Reply, TestServer, delete, get, post};
use status_reporter::StatusReporter;

async fn start() -> Result<TestServer> {
    let path = std::env::temp_dir().join(format!(
        "klambda-stage-{}-{}.db",
        std::process::id(),
        rand_suffix()
    ));
    let store = status_reporter::store::open(&format!("sqlite:{}", path.display()))?;
    let harness = Harness::new(StatusReporter::new(Arc::from(store)));
    TestServer::start(harness.router()).await
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

async fn send(server: &TestServer, event: cloudevents::Event) -> Result<Reply> {
    let (headers, body) = codec::into_binary(event);
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    post(&server.url("/"), &headers, body).await
}

fn name() -> FunctionName {
    FunctionName::new("hello").unwrap_or_else(|e| panic!("{e}"))
}

fn digest() -> ContentDigest {
    ContentDigest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn records_folds_replies_and_serves() -> Result<()> {
    let server = start().await?;
    let submission = serde_json::from_value(serde_json::json!({
        "name": "hello", "runtime": "nodejs22", "handler": "index.handler",
        "source": {"kind": "git", "url": "https://github.com/a/b", "ref": "main"}
    }))?;
    let created = Envelope::new("e-1", "/cli")
        .subject("hello")
        .encode::<FunctionCreated>(&submission);
    let reply = send(&server, created.clone()).await?;
    assert_eq!(reply.status, 200);
    let status =
        codec::decode(&reply.headers, reply.body.clone()).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(
        cloudevents::AttributesReader::ty(&status),
        StatusUpdated::TYPE
    );
    let data = decode::<StatusUpdated>(&status)?;
    assert_eq!(data.phase, Phase::Parsing);
    assert_eq!(data.cause, FunctionCreated::TYPE);

    // Redelivery of the same event: recorded once, nothing follows.
    assert_eq!(send(&server, created).await?.status, 202);
    // Its own status.updated comes back through the catch-all Trigger: recorded, no reply.
    assert_eq!(send(&server, status).await?.status, 202);

    let failed = Envelope::new("e-2", "/knative-lambda/job-launcher")
        .subject("hello")
        .encode::<BuildFailed>(&BuildFailure {
            function: name(),
            build_id: BuildId::derive(&name(), &digest()),
            digest: digest(),
            cause: BuildFailureCause::CompileError,
            reason: "SyntaxError: Unexpected token".into(),
            log_excerpt: None,
            diagnostics: Vec::new(),
        });
    let reply = send(&server, failed).await?;
    let data = decode::<StatusUpdated>(
        &codec::decode(&reply.headers, reply.body.clone()).map_err(|e| anyhow::anyhow!("{e:?}"))?,
    )?;
    assert_eq!(data.phase, Phase::Failed);
    assert!(data.last_error.unwrap_or_default().contains("SyntaxError"));

    let ready = Envelope::new("e-3", "/knative-lambda/service-deployer")
        .subject("hello")
        .encode::<ServiceReady>(&ServiceReadiness {
            function: name(),
            revision: "hello-00001".into(),
            url: "http://hello.local".into(),
            runtime: Some("Node.js 20.20.2".into()),
        });
    send(&server, ready).await?;

    // Any CloudEvent is recorded, platform or not; a bad name is logged without state.
    let foreign = post(
        &server.url("/"),
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "o-1"),
            ("ce-source", "/shop"),
            ("ce-type", "com.example.order.created"),
            ("content-type", "application/json"),
        ],
        "{\"order\":1}",
    )
    .await?;
    assert_eq!(foreign.status, 202);
    let bad = Envelope::new("e-4", "/knative-lambda/parser")
        .subject("Bad Name")
        .encode::<ParserFailed>(&ParseFailure {
            function: Some("Bad Name".into()),
            operation: Operation::Create,
            problems: vec![Problem::new("name", "invalid")],
        });
    assert_eq!(send(&server, bad).await?.status, 202);

    let function = get(&server.url("/functions/hello")).await?.json()?;
    assert_eq!(function["phase"], "ready");
    assert_eq!(function["revision"], "hello-00001");
    assert_eq!(function["url"], "http://hello.local");
    assert_eq!(function["runtime"], "Node.js 20.20.2");
    assert!(
        function.get("lastError").is_none(),
        "ready clears the error: {function}"
    );
    assert!(function["timingsMs"].is_object());

    let list = get(&server.url("/functions")).await?.json()?;
    assert_eq!(list.as_array().map(Vec::len), Some(1));

    let events = get(&server.url("/functions/hello/events")).await?.json()?;
    let types: Vec<&str> = events
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["event"]["type"].as_str())
        .collect();
    assert_eq!(
        types,
        [
            FunctionCreated::TYPE,
            StatusUpdated::TYPE,
            BuildFailed::TYPE,
            ServiceReady::TYPE
        ]
    );

    let stored = get(&server.url("/events/o-1")).await?;
    assert_eq!(
        stored.header("content-type"),
        "application/cloudevents+json"
    );
    let stored = stored.json()?;
    assert_eq!(stored["source"], "/shop");
    assert_eq!(stored["data"], serde_json::json!({"order": 1}));

    let missing = get(&server.url("/functions/nobody")).await?;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("content-type"), "application/problem+json");
    assert_eq!(get(&server.url("/events/none")).await?.status, 404);
    assert_eq!(get(&server.url("/ready")).await?.status, 200);
    Ok(())
}

#[tokio::test]
async fn an_unreachable_store_is_retryable_and_not_ready() -> Result<()> {
    let store =
        status_reporter::store::open("postgres://postgres@127.0.0.1:1/none?connect_timeout=1")?;
    let harness = Harness::new(StatusReporter::new(Arc::from(store)));
    let server = TestServer::start(harness.router()).await?;
    let reply = post(
        &server.url("/"),
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "u-1"),
            ("ce-source", "/t"),
            ("ce-type", "t.any"),
        ],
        "",
    )
    .await?;
    assert_eq!(
        reply.status, 503,
        "the broker must retry, not drop: {:?}",
        reply.body
    );
    assert_eq!(get(&server.url("/ready")).await?.status, 503);
    Ok(())
}

#[tokio::test]
async fn is_the_brokers_dead_letter_sink() -> Result<()> {
    let server = start().await?;
    let url = server.url(status_reporter::api::DEAD_LETTER_PATH);
    let headers = [
        ("ce-specversion", "1.0"),
        ("ce-id", "d-1"),
        ("ce-source", "/cli"),
        ("ce-type", klambda_events::catalogue::FunctionCreated::TYPE),
        ("content-type", "application/json"),
        (
            "ce-knativeerrordest",
            "http://parser.knative-lambda.svc.cluster.local",
        ),
        ("ce-knativeerrorcode", "500"),
        ("ce-knativeerrordata", "Ym9vbQ=="),
    ];
    assert_eq!(post(&url, &headers, "{\"name\":\"x\"}").await?.status, 202);
    // A redelivery of the same dead letter is kept once.
    assert_eq!(post(&url, &headers, "{\"name\":\"x\"}").await?.status, 202);
    let letters = get(&url).await?.json()?;
    let letters = letters.as_array().cloned().unwrap_or_default();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["event"]["knativeerrorcode"], "500");
    assert_eq!(
        letters[0]["event"]["knativeerrordest"],
        "http://parser.knative-lambda.svc.cluster.local"
    );
    assert_eq!(letters[0]["event"]["data"]["name"], "x");

    let invalid = post(&url, &[("content-type", "application/json")], "{}").await?;
    assert_eq!(invalid.status, 400);
    assert_eq!(invalid.header("content-type"), "application/problem+json");

    // One letter by id, forgotten once (a redrive), then gone.
    let seq = letters[0]["seq"].as_i64().unwrap_or_default();
    let one = get(&format!("{url}/{seq}")).await?;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()?["event"]["id"], "d-1");
    assert_eq!(delete(&format!("{url}/{seq}")).await?.status, 204);
    assert_eq!(delete(&format!("{url}/{seq}")).await?.status, 404);
    assert_eq!(get(&format!("{url}/{seq}")).await?.status, 404);

    // A purge forgets them all and says how many.
    for id in ["d-2", "d-3"] {
        let mut again = headers;
        again[1] = ("ce-id", id);
        assert_eq!(post(&url, &again, "{}").await?.status, 202);
    }
    let purged = delete(&url).await?;
    assert_eq!(purged.json()?["removed"], 2);
    assert_eq!(get(&url).await?.json()?, serde_json::json!([]));
    Ok(())
}
