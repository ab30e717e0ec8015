//! What metrics and tracing cost on the stage hop, on vs. off in the same run.
//!
//! A stage that does no work (it replies with its input) behind the harness, in-process
//! (`tower::ServiceExt::oneshot`, no network, so the telemetry is not hidden by loopback time),
//! a 1 KiB CloudEvent in, its reply out, under three subscribers:
//!
//! - **off**: no subscriber: spans and log events are disabled at their call site;
//! - **logs**: what every stage runs by default: JSON logs (to a sink here, stdout in production)
//!   with the request span's fields;
//! - **logs + OTLP traces**: the same plus the OpenTelemetry layer exporting every span in
//!   batches over gRPC to a collector in this process.
//!
//! Metrics cannot be switched off (every hop counts and times itself), so their cost is measured
//! on its own: the two calls one hop makes (`request` and `latency`). Run:
//! `cargo bench -p klambda-harness --bench telemetry`.

use klambda_events::EventType as _;
use std::hint::black_box;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use cloudevents::Event;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use http_body_util::BodyExt as _;
use klambda_events::Stage;
use klambda_harness::config::{LogFormat, Settings};
use klambda_harness::metrics::Metrics;
use klambda_harness::{Context, Handler, HandlerError, Harness, Outcome, telemetry};
use tower::ServiceExt as _;

/// Replies with the event it received: the harness's own cost, no stage work.
struct EchoStage;

impl Handler for EchoStage {
    fn stage(&self) -> Stage {
        Stage::Parser
    }
    async fn handle(&self, event: Event, _: &Context) -> Result<Outcome, HandlerError> {
        Ok(Outcome::Reply(event))
    }
}

fn request() -> Request<Body> {
    let body = format!(r#"{{"name":"hello","pad":"{}"}}"#, "x".repeat(1000));
    Request::post("/")
        .header("ce-specversion", "1.0")
        .header("ce-id", "bench-1")
        .header("ce-source", "/bench")
        .header("ce-type", klambda_events::catalogue::FunctionCreated::TYPE)
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("content-type", "application/json")
        .body(Body::from(Bytes::from(body)))
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn hop(router: &Router) {
    let response = router
        .clone()
        .oneshot(request())
        .await
        .unwrap_or_else(|e| match e {});
    assert_eq!(response.status(), 200);
    black_box(response.into_body().collect().await.map(|b| b.to_bytes())).ok();
}

fn telemetry_overhead(c: &mut Criterion) {
    // Multi-threaded so the OTLP exporter and the collector run beside the measured hop, which
    // `block_on` polls on this thread, where the scoped subscribers below apply.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let router = Harness::new(EchoStage).router();
    let mut group = c.benchmark_group("stage hop, 1 KiB event, in-process");

    group.bench_function("off", |b| b.to_async(&runtime).iter(|| hop(&router)));

    let logs = Settings {
        log_format: LogFormat::Json,
        ..Settings::default()
    };
    let (subscriber, _telemetry) =
        telemetry::subscriber("bench", &logs, std::io::sink).unwrap_or_else(|e| panic!("{e}"));
    {
        let _default = tracing::subscriber::set_default(subscriber);
        group.bench_function("logs", |b| b.to_async(&runtime).iter(|| hop(&router)));
    }

    let (collector, endpoint) = runtime
        .block_on(klambda_test_support::otlp::Collector::start())
        .unwrap_or_else(|e| panic!("{e}"));
    let traced = Settings {
        otlp_endpoint: Some(endpoint.parse().unwrap_or_else(|e| panic!("{e}"))),
        ..logs
    };
    let (subscriber, telemetry) = {
        let _entered = runtime.enter();
        telemetry::subscriber("bench", &traced, std::io::sink).unwrap_or_else(|e| panic!("{e}"))
    };
    {
        let _default = tracing::subscriber::set_default(subscriber);
        group.bench_function("logs + OTLP traces", |b| {
            b.to_async(&runtime).iter(|| hop(&router))
        });
    }
    {
        let _entered = runtime.enter();
        telemetry.shutdown();
    }
    let exported = collector.spans().len();
    assert!(exported > 0, "no span reached the collector");
    println!("spans exported to the collector: {exported}");
    group.finish();

    let metrics = Metrics::new("parser");
    c.bench_function("metrics of one hop (request + latency)", |b| {
        b.iter(|| {
            metrics.request(klambda_events::catalogue::FunctionCreated::TYPE, "reply");
            metrics.latency(
                klambda_events::catalogue::FunctionCreated::TYPE,
                black_box(0.000_1),
            );
        })
    });
}

criterion_group!(benches, telemetry_overhead);
criterion_main!(benches);
