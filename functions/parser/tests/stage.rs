//! The parser stage over real HTTP: replies, side events, replays, broken data, version refusal.

use klambda_events::EventType as _;
use std::sync::Arc;

use anyhow::Result;
use cloudevents::AttributesReader as _;
use klambda_events::catalogue::{FunctionCreated, ParserCompleted, ParserFailed};
use klambda_events::data::Operation;
use klambda_events::decode;
use klambda_harness::Harness;
use klambda_harness::codec;
use klambda_harness::publisher::Memory;
use klambda_test_support::http::{Reply, TestServer, post};
use parser::Parser;
use serde_json::{Value, json};

fn submission() -> Value {
    json!({
        "name": "hello", "runtime": "nodejs22", "handler": "index.handler",
        "source": {"kind": "inline", "files": [{"path": "index.js", "content": "exports.handler = async (e) => e;"}]},
        "env": {"GREETING": "hi"}
    })
}

async fn send(
    server: &TestServer,
    ty: &str,
    id: &str,
    data: &str,
    extra: &[(&str, &str)],
) -> Result<Reply> {
    let mut headers = vec![
        ("ce-specversion", "1.0"),
        ("ce-id", id),
        ("ce-source", "/klambda-cli"),
        ("ce-type", ty),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    post(&server.url("/"), &headers, data.to_owned()).await
}

fn reply_event(reply: &Reply) -> Result<cloudevents::Event> {
    codec::decode(&reply.headers, reply.body.clone())
        .map_err(|e| anyhow::anyhow!("reply is not an event: {e:?}"))
}

async fn start() -> Result<(TestServer, Memory)> {
    let memory = Memory::default();
    let harness = Harness::new(Parser::new()).with_publisher(Arc::new(memory.clone()));
    Ok((TestServer::start(harness.router()).await?, memory))
}

#[tokio::test]
async fn a_valid_submission_gets_parser_completed() -> Result<()> {
    let (server, memory) = start().await?;
    let reply = send(
        &server,
        FunctionCreated::TYPE_NAME,
        "sub-1",
        &submission().to_string(),
        &[],
    )
    .await?;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let event = reply_event(&reply)?;
    assert_eq!(event.ty(), klambda_events::catalogue::ParserCompleted::TYPE);
    assert_eq!(event.subject(), Some("hello"));
    assert_eq!(event.source(), "/knative-lambda/parser");
    let parsed = decode::<ParserCompleted>(&event)?;
    assert_eq!(parsed.operation, Operation::Create);
    assert_eq!(parsed.spec.name.as_str(), "hello");
    assert!(parsed.digest.as_str().starts_with("sha256:"));

    let started = memory.events();
    assert_eq!(started.len(), 1);
    assert_eq!(
        started[0].ty(),
        klambda_events::catalogue::ParserStarted::TYPE
    );
    Ok(())
}

#[tokio::test]
async fn replaying_an_input_gives_the_identical_reply() -> Result<()> {
    let (server, _) = start().await?;
    let trace = [(
        "ce-traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )];
    let first = send(
        &server,
        FunctionCreated::TYPE_NAME,
        "sub-2",
        &submission().to_string(),
        &trace,
    )
    .await?;
    let second = send(
        &server,
        FunctionCreated::TYPE_NAME,
        "sub-2",
        &submission().to_string(),
        &trace,
    )
    .await?;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, second.body);
    let ce = |r: &Reply| {
        let mut h: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(n, _)| n.as_str().starts_with("ce-"))
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        h.sort();
        h
    };
    assert_eq!(ce(&first), ce(&second));

    // The same submission with its fields in another order has the same digest.
    let reordered = r#"{"env":{"GREETING":"hi"},"source":{"files":[{"content":"exports.handler = async (e) => e;","path":"index.js"}],"kind":"inline"},"handler":"index.handler","runtime":"nodejs22","name":"hello"}"#;
    let third = send(&server, FunctionCreated::TYPE_NAME, "sub-3", reordered, &[]).await?;
    let digest = |r: &Reply| -> Result<String> {
        Ok(decode::<ParserCompleted>(&reply_event(r)?)?
            .digest
            .to_string())
    };
    assert_eq!(digest(&first)?, digest(&third)?);
    // A different input id is a different submission: another reply id.
    assert_ne!(first.header("ce-id"), third.header("ce-id"));
    Ok(())
}

#[tokio::test]
async fn an_invalid_submission_gets_parser_failed_with_every_reason() -> Result<()> {
    let (server, _) = start().await?;
    let mut bad = submission();
    bad["name"] = json!("Hello World");
    bad["handler"] = json!("index.handler && curl evil");
    let reply = send(
        &server,
        klambda_events::catalogue::FunctionUpdated::TYPE,
        "sub-4",
        &bad.to_string(),
        &[],
    )
    .await?;
    assert_eq!(reply.status, 200);
    let event = reply_event(&reply)?;
    assert_eq!(event.ty(), klambda_events::catalogue::ParserFailed::TYPE);
    let failure = decode::<ParserFailed>(&event)?;
    assert_eq!(failure.operation, Operation::Update);
    assert_eq!(failure.function.as_deref(), Some("Hello World"));
    let fields: Vec<&str> = failure.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["name", "handler"]);
    Ok(())
}

#[tokio::test]
async fn structurally_broken_data_lists_every_structural_problem() -> Result<()> {
    let (server, _) = start().await?;
    // No name, no runtime, a numeric handler: serde would stop at the first.
    let broken = json!({"handler": 7, "source": {"kind": "inline", "files": []}});
    let reply = send(
        &server,
        FunctionCreated::TYPE_NAME,
        "sub-5",
        &broken.to_string(),
        &[],
    )
    .await?;
    assert_eq!(reply.status, 200);
    let failure = decode::<ParserFailed>(&reply_event(&reply)?)?;
    let reasons: Vec<String> = failure
        .problems
        .iter()
        .map(|p| format!("{}: {}", p.field, p.reason))
        .collect();
    assert!(reasons.len() >= 3, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("\"name\"")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("\"runtime\"")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with("handler:")),
        "{reasons:?}"
    );

    // Data that is not JSON at all.
    let reply = post(
        &server.url("/"),
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "sub-6"),
            ("ce-source", "/t"),
            ("ce-type", FunctionCreated::TYPE_NAME),
            ("content-type", "text/plain"),
        ],
        "name: hello",
    )
    .await?;
    assert_eq!(reply.status, 200);
    let failure = decode::<ParserFailed>(&reply_event(&reply)?)?;
    assert!(
        failure.problems[0].reason.contains("not JSON"),
        "{:?}",
        failure.problems
    );
    Ok(())
}

#[tokio::test]
async fn contract_mismatches_are_refused_for_the_dead_letter_queue() -> Result<()> {
    let (server, _) = start().await?;
    let newer = [(
        "ce-dataschema",
        "urn:knative-lambda:schema:io.knative.lambda.function.created:v2",
    )];
    let reply = send(
        &server,
        FunctionCreated::TYPE_NAME,
        "sub-7",
        &submission().to_string(),
        &newer,
    )
    .await?;
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()?["problems"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("v2")
    );

    let misrouted = send(
        &server,
        klambda_events::catalogue::ParserCompleted::TYPE,
        "sub-8",
        "{}",
        &[],
    )
    .await?;
    assert_eq!(misrouted.status, 400);
    assert_eq!(misrouted.json()?["problems"][0]["field"], "type");
    Ok(())
}

#[test]
fn the_parser_consumes_exactly_what_the_catalogue_says() {
    use klambda_events::{CATALOGUE, Stage};
    use klambda_harness::Handler as _;
    let parser = Parser::new();
    for spec in CATALOGUE {
        assert_eq!(
            parser.accepts(spec.type_name),
            spec.consumer == Some(Stage::Parser),
            "{}",
            spec.type_name
        );
    }
}

/// Type names used by this test file, from the contract (never spelled by hand).
trait TypeName {
    const TYPE_NAME: &'static str;
}
impl<T: klambda_events::EventType> TypeName for T {
    const TYPE_NAME: &'static str = T::TYPE;
}
