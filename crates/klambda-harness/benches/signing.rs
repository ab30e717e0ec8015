//! What signing internal events costs on the stage hop: the same hop with event keys (the input's
//! signature checked, the reply signed) and without, in the same run.
//!
//! A stage that does no work (it replies with its input) behind the harness, in-process
//! (`tower::ServiceExt::oneshot`, no network), a signed `parser.completed` of 1 KiB in, its
//! reply out. Run: `cargo bench -p klambda-harness --bench signing`.

use std::hint::black_box;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use cloudevents::{Event, EventBuilder as _, EventBuilderV10};
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use http_body_util::BodyExt as _;
use klambda_events::EventType as _;
use klambda_events::Stage;
use klambda_events::catalogue::ParserCompleted;
use klambda_harness::signing::EventKeys;
use klambda_harness::{Context, Handler, HandlerError, Harness, Outcome, codec};
use tower::ServiceExt as _;

/// Replies with the event it received: the harness's own cost, no stage work.
struct EchoStage;

impl Handler for EchoStage {
    fn stage(&self) -> Stage {
        Stage::ContextUploader
    }
    async fn handle(&self, event: Event, _: &Context) -> Result<Outcome, HandlerError> {
        Ok(Outcome::Reply(event))
    }
}

fn request(event: &Event) -> Request<Body> {
    let (headers, body) = codec::encode_binary(event);
    let mut request = Request::post("/")
        .body(Body::from(body))
        .unwrap_or_else(|e| panic!("{e}"));
    request.headers_mut().extend(headers);
    request
}

async fn hop(router: &Router, event: &Event) {
    let response = router
        .clone()
        .oneshot(request(event))
        .await
        .unwrap_or_else(|e| match e {});
    assert_eq!(response.status(), 200);
    black_box(response.into_body().collect().await.map(|b| b.to_bytes())).ok();
}

fn signing_overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let keys = EventKeys::parse("a-benchmark-event-key-of-at-least-32-bytes")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut event = EventBuilderV10::new()
        .id("bench-1")
        .source("/knative-lambda/parser")
        .ty(ParserCompleted::TYPE)
        .subject("hello")
        .data(
            "application/json",
            serde_json::json!({"name": "hello", "pad": "x".repeat(1000)}),
        )
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    keys.sign(&mut event);
    let unsigned = Harness::new(EchoStage).router();
    let signed = Harness::new(EchoStage)
        .with_event_keys(Arc::new(keys))
        .router();

    let mut group = c.benchmark_group("stage hop, 1 KiB internal event, in-process");
    group.bench_function("without event keys", |b| {
        b.to_async(&runtime).iter(|| hop(&unsigned, &event))
    });
    group.bench_function("checked and signed", |b| {
        b.to_async(&runtime).iter(|| hop(&signed, &event))
    });
    group.finish();
}

criterion_group!(benches, signing_overhead);
criterion_main!(benches);
