//! One deploy is one trace: the embedded platform exports its spans to an OTLP/gRPC receiver,
//! and the spans of a function's whole journey (parser → context-uploader → job-launcher →
//! service-deployer, with the status reporter recording each event) share one trace id, in
//! causal order. A file of its own: it installs the process-wide trace pipeline.

use klambda_events::EventType as _;
use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result};
use klambda_test_support::otlp::{Collector, attribute};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_deploy_is_one_trace_through_all_five_stages() -> Result<()> {
    let (collector, endpoint) = Collector::start().await?;
    let settings = klambda_harness::Settings {
        otlp_endpoint: Some(url::Url::parse(&endpoint)?),
        log_filter:
            "warn,klambda_harness=info,klambda_broker=info,klambda_storage=info,job_launcher=info,service_deployer=info"
                .into(),
        ..klambda_harness::Settings::default()
    };
    let telemetry = klambda_harness::telemetry::init("klambda", &settings)?;
    let (platform, server) = klambda_tests::serve_embedded("trace", |s| s).await?;
    assert_eq!(
        klambda_tests::deploy_example(&server, "hello-node", None).await?,
        0
    );
    // A user's event in a trace of its own reaches a function through its Trigger.
    assert_eq!(
        klambda_tests::deploy_example(&server, "order-pipeline/pricer", None).await?,
        0
    );
    let publisher = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let order = klambda_test_support::http::post(
        &server.url("/"),
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "order-1"),
            ("ce-source", "/shop"),
            ("ce-type", "com.example.order.created"),
            ("ce-traceparent", publisher),
            ("content-type", "application/json"),
        ],
        r#"{"id":"o-1","items":[{"sku":"a","price":10,"qty":1}]}"#,
    )
    .await?;
    assert_eq!(order.status, 202, "{order:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while platform.deliveries.recent("pricer", 10).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the order never reached the pricer"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Flushing blocks until the collector (served on this runtime) has the spans.
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await?;

    let all = collector.spans();
    let spans: Vec<_> = all.iter().filter(|span| span.name == "handle").collect();
    let submission = spans
        .iter()
        .find(|s| {
            attribute(s, "stage").as_deref() == Some("parser")
                && attribute(s, "event_type").as_deref()
                    == Some(klambda_events::catalogue::FunctionCreated::TYPE)
        })
        .context("the parser's span for the submission was exported")?;
    let journey: Vec<_> = spans
        .iter()
        .filter(|s| s.trace_id == submission.trace_id)
        .collect();
    let stages: BTreeSet<String> = journey
        .iter()
        .filter_map(|s| attribute(s, "stage"))
        .collect();
    let expected: BTreeSet<String> = [
        "parser",
        "context-uploader",
        "job-launcher",
        "service-deployer",
        "status-reporter",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    assert_eq!(
        stages,
        expected,
        "the trace {} holds spans of {stages:?}",
        hex::encode(&submission.trace_id)
    );
    // Causal order: each pipeline stage first works on the function after the one before it.
    let mut first: BTreeMap<String, u64> = BTreeMap::new();
    for span in &journey {
        if let Some(stage) = attribute(span, "stage") {
            let start = first.entry(stage).or_insert(u64::MAX);
            *start = (*start).min(span.start_time_unix_nano);
        }
    }
    let order = [
        "parser",
        "context-uploader",
        "job-launcher",
        "service-deployer",
    ];
    for pair in order.windows(2) {
        assert!(
            first[pair[0]] <= first[pair[1]],
            "{} started before {}",
            pair[1],
            pair[0]
        );
    }
    // Inside the journey: the storage, builder and deployer calls, each its own span.
    let calls: BTreeSet<&str> = all
        .iter()
        .filter(|s| s.trace_id == submission.trace_id && s.name != "handle")
        .map(|s| s.name.as_str())
        .collect();
    for call in [
        "storage.put_stream",
        "storage.get",
        "builder.build",
        "deployer.apply",
    ] {
        assert!(
            calls.contains(call),
            "no {call} span in the journey's trace; it has {calls:?}"
        );
    }
    // The delivery to the function is a span of the order's trace, the publisher's child.
    let delivery = all
        .iter()
        .find(|s| s.name == "delivery" && attribute(s, "function").as_deref() == Some("pricer"))
        .context("the delivery to the pricer was exported as a span")?;
    assert_eq!(
        hex::encode(&delivery.trace_id),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(hex::encode(&delivery.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(attribute(delivery, "event_id").as_deref(), Some("order-1"));
    // The status API names the journey's trace, so an operator can open it.
    let state = platform
        .store
        .function("hello-node")
        .await?
        .context("the function is known")?;
    assert_eq!(
        state.trace_id.as_deref(),
        Some(hex::encode(&submission.trace_id).as_str())
    );
    server.shutdown().await;
    Ok(())
}
