//! The harness over real HTTP: both CloudEvents modes, every malformed case answered with the
//! right status and a problem body, outcomes and their statuses, probes, metrics, trace
//! continuation, side events to a real sink, and a graceful drain.

use klambda_events::EventType as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use cloudevents::{AttributesReader, Event, EventBuilder as _};
use klambda_events::catalogue::{HealthCheck, ParserStarted};
use klambda_events::data::{HealthProbe, Operation, ParseStart};
use klambda_events::{Envelope, Stage};
use klambda_harness::publisher::{HttpSink, Memory};
use klambda_harness::{Context, Handler, HandlerError, Harness, Outcome};
use klambda_test_support::http::{TestServer, get, post};
use serde_json::{Value, json};

/// Replies `health.check` with `origin` = the input id; other behaviours by input type.
struct Echo;

impl Handler for Echo {
    fn stage(&self) -> Stage {
        Stage::StatusReporter
    }
    fn accepts(&self, event_type: &str) -> bool {
        event_type != "test.misrouted"
    }
    async fn handle(&self, event: Event, context: &Context) -> Result<Outcome, HandlerError> {
        match event.ty() {
            "test.done" => Ok(Outcome::Done),
            "test.unavailable" => Err(HandlerError::Unavailable("the store is down".into())),
            "test.invalid" => Err(HandlerError::Invalid(vec![
                klambda_events::data::Problem::new("data.x", "x is wrong"),
            ])),
            "test.slow" => {
                tokio::time::sleep(Duration::from_millis(600)).await;
                Ok(Outcome::Done)
            }
            _ => {
                context
                    .progress(
                        klambda_events::reply::<ParserStarted>(&event, Stage::StatusReporter),
                        &ParseStart {
                            function: Some("side".into()),
                            operation: Operation::Create,
                        },
                    )
                    .await;
                let reply = klambda_events::reply::<HealthCheck>(&event, Stage::StatusReporter)
                    .data(&HealthProbe {
                        origin: event.id().to_owned(),
                        extra: Default::default(),
                    });
                Ok(Outcome::Reply(reply))
            }
        }
    }
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn server() -> Result<(TestServer, Memory)> {
    let memory = Memory::default();
    let harness = Harness::new(Echo)
        .with_publisher(Arc::new(memory.clone()))
        .with_body_limit(4096);
    Ok((TestServer::start(harness.router()).await?, memory))
}

fn binary_headers<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut headers = vec![
        ("ce-specversion", "1.0"),
        ("ce-id", "e-1"),
        ("ce-source", "/tests"),
        ("ce-type", "test.echo"),
        ("content-type", "application/json"),
    ];
    for (name, value) in extra {
        headers.retain(|(n, _)| n != name);
        headers.push((name, value));
    }
    headers
}

fn problem_fields(body: &Value) -> Vec<String> {
    body["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["field"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn binary_mode_round_trip() -> Result<()> {
    let (server, memory) = server().await?;
    let reply = post(
        &server.url("/"),
        &binary_headers(&[("traceparent", TRACEPARENT)]),
        r#"{"hello":"world"}"#,
    )
    .await?;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(
        reply.header("ce-type"),
        klambda_events::catalogue::HealthCheck::TYPE
    );
    assert_eq!(reply.header("ce-source"), "/knative-lambda/status-reporter");
    assert_eq!(reply.header("ce-specversion"), "1.0");
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.json()?, json!({"origin": "e-1"}));
    // The trace continues: same trace id, a new span id, on the event and the HTTP header.
    let trace = reply.header("ce-traceparent");
    assert!(
        trace.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{trace}"
    );
    assert!(!trace.contains("00f067aa0ba902b7"), "{trace}");
    assert_eq!(reply.header("traceparent"), trace);
    // The side event went to the publisher, in the same trace.
    let side = memory.events();
    assert_eq!(side.len(), 1);
    let side_trace = side[0]
        .extension("traceparent")
        .map(|v| v.to_string())
        .unwrap_or_default();
    assert!(
        side_trace.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{side_trace}"
    );
    assert_ne!(side_trace, trace);
    Ok(())
}

#[tokio::test]
async fn structured_mode_round_trip() -> Result<()> {
    let (server, _) = server().await?;
    let event = json!({
        "specversion": "1.0", "id": "s-1", "source": "/tests", "type": "test.echo",
        "subject": "hello", "time": "2026-11-23T10:00:00Z", "myext": "v", "count": 3, "flag": true,
        "datacontenttype": "application/json", "data": {"a": 1}
    });
    let reply = post(
        &server.url("/"),
        &[(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )],
        event.to_string(),
    )
    .await?;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.header("ce-subject"), "hello");
    assert_eq!(reply.json()?, json!({"origin": "s-1"}));

    // data_base64 carries binary data.
    let event = json!({"specversion": "1.0", "id": "s-2", "source": "/t", "type": "test.echo",
                       "datacontenttype": "application/octet-stream", "data_base64": "AAECAw=="});
    let reply = post(
        &server.url("/"),
        &[("content-type", "application/cloudevents+json")],
        event.to_string(),
    )
    .await?;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    Ok(())
}

#[tokio::test]
async fn percent_encoded_header_values_are_decoded_and_reencoded() -> Result<()> {
    let (server, _) = server().await?;
    // "café au lait %" percent-encoded as the spec requires.
    let headers = binary_headers(&[
        ("ce-subject", "caf%C3%A9%20au%20lait%20%25"),
        ("ce-id", "p%201"),
    ]);
    let reply = post(&server.url("/"), &headers, "{}").await?;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()?, json!({"origin": "p 1"}));
    assert_eq!(reply.header("ce-subject"), "caf%C3%A9%20au%20lait%20%25");

    let reply = post(
        &server.url("/"),
        &binary_headers(&[("ce-subject", "%FF%FE")]),
        "{}",
    )
    .await?;
    assert_eq!(reply.status, 400);
    assert_eq!(problem_fields(&reply.json()?), ["subject"]);
    Ok(())
}

/// Headers and body of one request.
type Request = (Vec<(&'static str, &'static str)>, String);

/// Each malformed request: its status and the problem fields named in the body.
#[tokio::test]
async fn malformed_requests_get_problem_details() -> Result<()> {
    let (server, _) = server().await?;
    let structured = |v: Value| {
        (
            vec![("content-type", "application/cloudevents+json")],
            v.to_string(),
        )
    };
    let base = json!({"specversion": "1.0", "id": "x", "source": "/t", "type": "test.echo"});
    let without = |key: &str| {
        let mut v = base.clone();
        v.as_object_mut().map(|m| m.remove(key));
        v
    };
    let with = |key: &str, value: Value| {
        let mut v = base.clone();
        v[key] = value;
        v
    };
    let cases: Vec<(&str, Request, Vec<&str>)> = vec![
        ("missing id", structured(without("id")), vec!["id"]),
        (
            "missing source",
            structured(without("source")),
            vec!["source"],
        ),
        ("missing type", structured(without("type")), vec!["type"]),
        (
            "missing specversion",
            structured(without("specversion")),
            vec!["specversion"],
        ),
        (
            "all four missing",
            structured(json!({"data": 1})),
            vec!["id", "source", "specversion", "type"],
        ),
        ("empty id", structured(with("id", json!(""))), vec!["id"]),
        (
            "wrong specversion",
            structured(with("specversion", json!("0.3"))),
            vec!["specversion"],
        ),
        (
            "bad time",
            structured(with("time", json!("yesterday"))),
            vec!["time"],
        ),
        (
            "relative dataschema",
            structured(with("dataschema", json!("schemas/x"))),
            vec!["dataschema"],
        ),
        (
            "bad attribute name",
            structured(with("My_Ext", json!("v"))),
            vec!["My_Ext"],
        ),
        (
            "data and data_base64",
            structured(
                with("data_base64", json!("AA=="))
                    .as_object()
                    .map(|m| {
                        let mut m = m.clone();
                        m.insert("data".into(), json!(1));
                        Value::Object(m)
                    })
                    .unwrap_or_default(),
            ),
            vec!["data"],
        ),
        (
            "structured not an object",
            structured(json!([1, 2])),
            vec![""],
        ),
        (
            "structured bad JSON",
            (
                vec![("content-type", "application/cloudevents+json")],
                "{\"id\": ".to_owned(),
            ),
            vec![""],
        ),
        (
            "binary bad JSON body",
            (binary_headers(&[]), "{not json".to_owned()),
            vec!["data"],
        ),
        (
            "binary missing ce-id and ce-type",
            (
                vec![
                    ("ce-specversion", "1.0"),
                    ("ce-source", "/t"),
                    ("content-type", "application/json"),
                ],
                "{}".to_owned(),
            ),
            vec!["id", "type"],
        ),
        (
            "binary bad time",
            (
                binary_headers(&[("ce-time", "2026-13-01T00:00:00Z")]),
                "{}".to_owned(),
            ),
            vec!["time"],
        ),
        (
            "binary ce-datacontenttype",
            (
                binary_headers(&[("ce-datacontenttype", "text/plain")]),
                "{}".to_owned(),
            ),
            vec!["datacontenttype"],
        ),
        (
            "binary ce-id sent twice",
            (
                [binary_headers(&[]), vec![("ce-id", "other")]].concat(),
                "{}".to_owned(),
            ),
            vec!["id"],
        ),
        (
            "binary data nested 65 deep",
            (
                binary_headers(&[]),
                format!("{}{}", "[".repeat(65), "]".repeat(65)),
            ),
            vec!["data"],
        ),
        (
            "structured data nested 65 deep",
            (
                vec![("content-type", "application/cloudevents+json")],
                format!(
                    r#"{{"specversion":"1.0","id":"x","source":"/t","type":"test.echo","data":{}{}}}"#,
                    "[".repeat(65),
                    "]".repeat(65)
                ),
            ),
            vec!["data"],
        ),
    ];
    for (name, (headers, body), fields) in cases {
        let reply = post(&server.url("/"), &headers, body).await?;
        assert_eq!(reply.status, 400, "{name}: {:?}", reply.body);
        assert_eq!(
            reply.header("content-type"),
            "application/problem+json",
            "{name}"
        );
        let problem = reply.json()?;
        assert_eq!(problem["status"], 400, "{name}");
        assert_eq!(
            problem["type"], "urn:knative-lambda:problem:invalid-cloudevent",
            "{name}"
        );
        let mut actual = problem_fields(&problem);
        actual.sort();
        assert_eq!(actual, fields, "{name}: {problem}");
    }
    Ok(())
}

#[tokio::test]
async fn batch_mode_is_refused() -> Result<()> {
    let (server, _) = server().await?;
    let reply = post(
        &server.url("/"),
        &[("content-type", "application/cloudevents-batch+json")],
        "[]",
    )
    .await?;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.json()?["type"],
        "urn:knative-lambda:problem:batch-not-supported"
    );
    Ok(())
}

#[tokio::test]
async fn oversize_bodies_get_413_with_or_without_content_length() -> Result<()> {
    let (server, _) = server().await?;
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(5000));
    let reply = post(&server.url("/"), &binary_headers(&[]), big.clone()).await?;
    assert_eq!(reply.status, 413);
    assert_eq!(
        reply.json()?["type"],
        "urn:knative-lambda:problem:body-too-large"
    );

    // Chunked, no Content-Length: the limit still holds while reading.
    let stream = futures_stream(big.into_bytes());
    let mut request = http::Request::post(server.url("/"));
    for (name, value) in binary_headers(&[]) {
        request = request.header(name, value);
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let response = client.request(request.body(stream)?).await?;
    assert_eq!(response.status(), 413);
    Ok(())
}

/// A streaming body of several chunks, so hyper sends it chunked without a Content-Length.
fn futures_stream(bytes: Vec<u8>) -> http_body_util::StreamBody<tokio_stream_shim::Chunks> {
    http_body_util::StreamBody::new(tokio_stream_shim::Chunks::new(bytes, 1000))
}

mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use hyper::body::Frame;

    /// Yields a buffer in fixed-size frames.
    pub(crate) struct Chunks {
        rest: Vec<u8>,
        size: usize,
    }

    impl Chunks {
        pub(crate) fn new(rest: Vec<u8>, size: usize) -> Self {
            Self { rest, size }
        }
    }

    impl futures_core::Stream for Chunks {
        type Item = Result<Frame<Bytes>, std::convert::Infallible>;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            if self.rest.is_empty() {
                return Poll::Ready(None);
            }
            let n = self.size.min(self.rest.len());
            let chunk: Vec<u8> = self.rest.drain(..n).collect();
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
        }
    }
}

#[tokio::test]
async fn outcomes_map_to_knative_statuses() -> Result<()> {
    let (server, _) = server().await?;
    let send = |ty: &'static str| {
        let url = server.url("/");
        async move { post(&url, &binary_headers(&[("ce-type", ty)]), "{}").await }
    };
    let done = send("test.done").await?;
    assert_eq!(done.status, 202);
    assert!(done.body.is_empty());

    let unavailable = send("test.unavailable").await?;
    assert_eq!(unavailable.status, 503);
    assert!(
        unavailable.json()?["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("retry")
    );

    let invalid = send("test.invalid").await?;
    assert_eq!(invalid.status, 400);
    assert_eq!(problem_fields(&invalid.json()?), ["data.x"]);

    let misrouted = send("test.misrouted").await?;
    assert_eq!(misrouted.status, 400);
    assert_eq!(problem_fields(&misrouted.json()?), ["type"]);

    let get_root = get(&server.url("/")).await?;
    assert_eq!(get_root.status, 405);
    Ok(())
}

#[tokio::test]
async fn health_ready_and_metrics() -> Result<()> {
    let (server, _) = server().await?;
    assert_eq!(get(&server.url("/health")).await?.status, 200);
    assert_eq!(get(&server.url("/ready")).await?.status, 200);
    post(
        &server.url("/"),
        &binary_headers(&[("ce-type", klambda_events::catalogue::HealthCheck::TYPE)]),
        "{}",
    )
    .await?;
    post(
        &server.url("/"),
        &binary_headers(&[("ce-type", "test.unavailable")]),
        "{}",
    )
    .await?;
    post(&server.url("/"), &binary_headers(&[("ce-id", "")]), "{}").await?;
    let metrics = get(&server.url("/metrics")).await?;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .starts_with("application/openmetrics-text")
    );
    let text = String::from_utf8(metrics.body.to_vec())?;
    for line in [
        r#"klambda_stage_requests_total{stage="status-reporter",event_type="io.knative.lambda.health.check",outcome="reply"} 1"#,
        // Free-form types are bounded to "other".
        r#"klambda_stage_requests_total{stage="status-reporter",event_type="other",outcome="retryable"} 1"#,
        r#"klambda_stage_requests_total{stage="status-reporter",event_type="other",outcome="malformed"} 1"#,
        r#"klambda_stage_handler_duration_seconds_count{stage="status-reporter",event_type="io.knative.lambda.health.check"} 1"#,
        r#"klambda_stage_side_events_total{stage="status-reporter",outcome="published"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
    Ok(())
}

#[tokio::test]
async fn side_events_reach_a_real_sink_and_readiness_follows_it() -> Result<()> {
    // The sink is itself a harness: a real HTTP broker stand-in that records what it receives.
    let received = Memory::default();
    let sink_harness = Harness::new(Echo).with_publisher(Arc::new(received.clone()));
    let sink = TestServer::start(sink_harness.router()).await?;
    let sink_url = url::Url::parse(&sink.url("/"))?;

    let stage = Harness::new(Echo).with_publisher(Arc::new(HttpSink::new(sink_url)));
    let server = TestServer::start(stage.router()).await?;
    let reply = post(
        &server.url("/"),
        &binary_headers(&[("traceparent", TRACEPARENT)]),
        "{}",
    )
    .await?;
    assert_eq!(reply.status, 200);
    // The sink got the side event, and replied to it in turn (its own side event in memory).
    assert_eq!(received.events().len(), 1);
    assert_eq!(get(&server.url("/ready")).await?.status, 200);

    sink.shutdown().await;
    let not_ready = get(&server.url("/ready")).await?;
    assert_eq!(not_ready.status, 503);
    assert_eq!(problem_fields(&not_ready.json()?), ["K_SINK"]);
    // A side event that cannot be published does not fail the handling.
    let reply = post(&server.url("/"), &binary_headers(&[("ce-id", "e-2")]), "{}").await?;
    assert_eq!(reply.status, 200);
    Ok(())
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(klambda_harness::serve(
        listener,
        Harness::new(Echo),
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
        klambda_harness::listen::ConnectionLimits::default(),
    ));
    let in_flight = tokio::spawn(async move {
        post(&url, &binary_headers(&[("ce-type", "test.slow")]), "{}").await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let _ = stop.send(());
    let reply = in_flight.await??;
    assert_eq!(reply.status, 202, "the in-flight request finished");
    serving.await??;
    Ok(())
}

#[tokio::test]
async fn in_process_dispatch_matches_http() -> Result<()> {
    let harness = Harness::new(Echo);
    let event = Envelope::new("ip-1", "/tests").encode::<HealthCheck>(&HealthProbe {
        origin: "t".into(),
        extra: Default::default(),
    });
    match harness.dispatch(event).await? {
        Outcome::Reply(reply) => {
            assert_eq!(reply.ty(), klambda_events::catalogue::HealthCheck::TYPE);
            assert_eq!(
                klambda_events::decode::<HealthCheck>(&reply)?.origin,
                "ip-1"
            );
        }
        Outcome::Done => anyhow::bail!("expected a reply"),
    }
    Ok(())
}

/// Log lines written by the harness, for reading back what its spans recorded.
#[derive(Clone, Default)]
struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
    type Writer = Lines;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The handling span carries the build an event is about, so a build's log lines can be found
/// by its id across stages.
#[tokio::test]
async fn the_handling_span_records_the_build_id() -> Result<()> {
    let lines = Lines::default();
    let settings = klambda_harness::Settings {
        log_filter: "info".to_owned(),
        ..klambda_harness::Settings::default()
    };
    let (subscriber, _telemetry) =
        klambda_harness::telemetry::subscriber("test", &settings, lines.clone())?;
    let _default = tracing::subscriber::set_default(subscriber);
    let harness = Harness::new(Echo).with_publisher(Arc::new(Memory::default()));
    let event = cloudevents::EventBuilderV10::new()
        .id("b-1")
        .source("/t")
        .ty("test.done")
        .data(
            "application/json",
            json!({"buildId": "hello-0123456789abcdef"}),
        )
        .build()?;
    harness.dispatch(event).await?;
    let text = String::from_utf8(
        lines
            .0
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone(),
    )?;
    assert!(
        text.contains("\"build_id\":\"hello-0123456789abcdef\""),
        "no build_id in the logs:\n{text}"
    );
    Ok(())
}
