//! Traces reach an OTLP collector: the real parser binary, with `OTEL_EXPORTER_OTLP_ENDPOINT`
//! pointing at an OTLP/gRPC receiver in this test, exports the span of an event it handled, in
//! the trace of the event's `traceparent`, under its service name.

use klambda_events::EventType as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Result;
use klambda_test_support::http::post;
use klambda_test_support::otlp::Collector;
use klambda_test_support::process::{free_port, terminate, wait_healthy};

const BIN: &str = env!("CARGO_BIN_EXE_parser");
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test]
async fn spans_are_exported_in_the_events_trace() -> Result<()> {
    let (collector, collector_endpoint) = Collector::start().await?;

    let port = free_port()?;
    let mut child = Command::new(BIN)
        .args(["--port", &port.to_string()])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector_endpoint)
        .env("RUST_LOG", "info")
        .env(
            "KLAMBDA_EVENT_KEYS",
            klambda_test_support::fixtures::EVENT_KEY,
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(
        &format!("{base}/health"),
        &mut child,
        Duration::from_secs(10),
    )
    .await?;
    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    let reply = post(&format!("{base}/"), &[
        ("ce-specversion", "1.0"), ("ce-id", "otlp-1"), ("ce-source", "/t"),
        ("ce-type", klambda_events::catalogue::FunctionCreated::TYPE), ("content-type", "application/json"),
        ("ce-traceparent", &traceparent),
    ], r#"{"name":"traced","runtime":"python3.12","handler":"app.handler","source":{"kind":"inline","files":[{"path":"app.py","content":"def handler(e, c): return e"}]}}"#).await?;
    assert_eq!(reply.status, 200);
    // The reply continues the same trace, from the exported span.
    assert!(
        reply
            .header("ce-traceparent")
            .starts_with(&format!("00-{TRACE_ID}-")),
        "{}",
        reply.header("ce-traceparent")
    );

    // SIGTERM flushes the batch exporter on the way out.
    // On a blocking thread: the collector runs on this test's runtime and must keep serving
    // while the parser flushes.
    let exit = tokio::task::spawn_blocking(move || terminate(&mut child, Duration::from_secs(10)))
        .await??;
    assert!(exit.success(), "{exit:?}");

    let requests = collector.requests();
    let mut services = Vec::new();
    let mut handled = Vec::new();
    for request in &requests {
        for resource_spans in &request.resource_spans {
            for attribute in resource_spans.resource.iter().flat_map(|r| &r.attributes) {
                if attribute.key == "service.name" {
                    services.push(format!("{:?}", attribute.value));
                }
            }
            for scope in &resource_spans.scope_spans {
                for span in &scope.spans {
                    if span.name == "handle" {
                        handled.push(hex::encode(&span.trace_id));
                    }
                }
            }
        }
    }
    assert!(
        services.iter().any(|s| s.contains("parser")),
        "service names: {services:?}"
    );
    assert_eq!(
        handled,
        [TRACE_ID],
        "the handler's span is exported in the event's trace"
    );
    Ok(())
}
