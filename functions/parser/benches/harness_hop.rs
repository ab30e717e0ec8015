//! The harness hop: decode + dispatch + encode of a 1 KiB CloudEvent through the parser router,
//! against a bare axum handler echoing the same bytes, in the same run.
//!
//! Two settings: over HTTP/1.1 on loopback with a keep-alive client (what a broker dispatcher
//! sees), and in-process through `tower::ServiceExt::oneshot` (the harness's own cost, no
//! network). Run: `cargo bench -p parser --bench harness_hop`.

use klambda_events::EventType as _;
use std::hint::black_box;

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use bytes::Bytes;
use cloudevents::Event;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Request};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use klambda_events::Stage;
use klambda_harness::{Context, Handler, HandlerError, Harness, Outcome};
use parser::Parser;
use tower::ServiceExt as _;

/// A `function.created` event whose data is 1 KiB.
fn one_kib_event() -> (Vec<(&'static str, &'static str)>, Bytes) {
    let headers = vec![
        ("ce-specversion", "1.0"),
        ("ce-id", "bench-1"),
        ("ce-source", "/bench"),
        ("ce-type", klambda_events::catalogue::FunctionCreated::TYPE),
        ("content-type", "application/json"),
    ];
    let skeleton = r#"{"name":"hello","runtime":"nodejs22","handler":"index.handler","source":{"kind":"inline","files":[{"path":"index.js","content":"PAD"}]},"env":{"GREETING":"hi"}}"#;
    let pad = "x".repeat(1024 - (skeleton.len() - 3));
    let body = skeleton.replace("PAD", &pad);
    assert_eq!(body.len(), 1024);
    (headers, Bytes::from(body))
}

async fn echo(headers: HeaderMap, body: Bytes) -> (HeaderMap, Bytes) {
    let mut echoed = HeaderMap::new();
    for (name, value) in &headers {
        if name.as_str().starts_with("ce-") || name == "content-type" {
            echoed.insert(name.clone(), value.clone());
        }
    }
    (echoed, body)
}

/// The harness around a handler that does no work: it replies with the event it received.
/// Separates the harness's own cost (decode, route, trace, measure, encode) from the parser's.
struct EchoStage;

impl Handler for EchoStage {
    fn stage(&self) -> Stage {
        Stage::Parser
    }
    async fn handle(&self, event: Event, _: &Context) -> Result<Outcome, HandlerError> {
        Ok(Outcome::Reply(event))
    }
}

fn routers() -> [(&'static str, Router); 3] {
    [
        ("bare axum echo", Router::new().route("/", post(echo))),
        ("echo via harness", Harness::new(EchoStage).router()),
        ("parser via harness", Harness::new(Parser::new()).router()),
    ]
}

fn request<B>(uri: &str, headers: &[(&str, &str)], body: B) -> Request<B> {
    let mut builder = Request::post(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(body)
        .unwrap_or_else(|_| unreachable!("static request parts are valid"))
}

fn over_http(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let (headers, body) = one_kib_event();
    let mut group = c.benchmark_group("1 KiB CloudEvent, HTTP/1.1 loopback, keep-alive");
    for (name, router) in routers() {
        let url = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let url = format!(
                "http://{}/",
                listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
            );
            tokio::spawn(async move { axum::serve(listener, router).await });
            url
        });
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                let response = client
                    .request(request(&url, &headers, Full::new(body.clone())))
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(response.status(), 200);
                black_box(
                    response
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default(),
                )
            })
        });
    }
    group.finish();
}

fn in_process(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let (headers, body) = one_kib_event();
    let mut group = c.benchmark_group("1 KiB CloudEvent, in-process oneshot");
    for (name, router) in routers() {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                let response = router
                    .clone()
                    .oneshot(request("/", &headers, Body::from(body.clone())))
                    .await
                    .unwrap_or_else(|e| match e {});
                assert_eq!(response.status(), 200);
                black_box(
                    response
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default(),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, over_http, in_process);
criterion_main!(benches);
