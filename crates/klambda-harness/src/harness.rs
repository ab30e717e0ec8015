//! [`Harness`]: one handler, three ways in: the Knative HTTP router, AWS Lambda (the same
//! router), and [`Harness::dispatch`] in-process. All three go through the same routing check,
//! tracing, metrics and reply stamping.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cloudevents::{AttributesReader, Event};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use klambda_events::data::Problem;
use tracing::{Instrument as _, field};

use crate::codec::{self, DecodeFailure};
use crate::config::Settings;
use crate::context::{Context, Emitter};
use crate::handler::{Handler, HandlerError, Outcome};
use crate::metrics::{self, Metrics, type_label};
use crate::problem::ProblemDetails;
use crate::publisher::{Discard, HttpSink, Publisher};
use crate::signing::EventKeys;
use crate::trace::{self, TRACEPARENT, TraceParent};

/// A stage handler with everything needed to serve it.
pub struct Harness<H> {
    handler: Arc<H>,
    metrics: Arc<Metrics>,
    publisher: Arc<dyn Publisher>,
    body_limit: usize,
    keys: Option<Arc<EventKeys>>,
}

impl<H> Clone for Harness<H> {
    fn clone(&self) -> Self {
        Self {
            handler: Arc::clone(&self.handler),
            metrics: Arc::clone(&self.metrics),
            publisher: Arc::clone(&self.publisher),
            body_limit: self.body_limit,
            keys: self.keys.clone(),
        }
    }
}

impl<H: Handler> Harness<H> {
    /// A harness with default settings; side events are discarded.
    pub fn new(handler: H) -> Self {
        let stage = handler.stage().service_name();
        let metrics = Metrics::new(stage);
        handler.init_metrics(&metrics);
        Self {
            handler: Arc::new(handler),
            metrics: Arc::new(metrics),
            publisher: Arc::new(Discard),
            body_limit: Settings::default().body_limit,
            keys: None,
        }
    }

    /// A harness configured from validated settings (side events to `K_SINK` when set).
    pub fn from_settings(handler: H, settings: &Settings) -> Self {
        let mut harness = Self::new(handler).with_body_limit(settings.body_limit);
        if let Some(keys) = &settings.event_keys {
            harness = harness.with_event_keys(Arc::new(keys.clone()));
        }
        match &settings.sink {
            Some(sink) => harness.with_publisher(Arc::new(HttpSink::new(sink.clone()))),
            None => harness,
        }
    }

    /// Sends side events to `publisher`.
    pub fn with_publisher(mut self, publisher: Arc<dyn Publisher>) -> Self {
        self.publisher = publisher;
        self
    }

    /// Counts into `metrics` (a view of a shared registry, see [`Metrics::for_stage`]) instead of
    /// a registry of its own.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.handler.init_metrics(&metrics);
        self.metrics = metrics;
        self
    }

    /// Signs what the stage emits with `keys` and refuses internal events they do not verify
    /// (see [`crate::signing`]). Without keys, nothing is signed or checked: what tests of a
    /// stage's logic use; every binary and `klambda up` set them.
    pub fn with_event_keys(mut self, keys: Arc<EventKeys>) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Refuses bodies above `bytes` with 413.
    pub fn with_body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The handler this harness serves.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The stage's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What publishes the events the stage originates on its own, with this harness's
    /// publisher, keys and metrics.
    pub fn emitter(&self) -> Emitter {
        Emitter {
            publisher: Arc::clone(&self.publisher),
            metrics: Arc::clone(&self.metrics),
            keys: self.keys.clone(),
        }
    }

    /// Tells the handler the stage is starting to serve ([`Handler::on_start`]). Whatever
    /// serves the harness calls it once, inside the Tokio runtime, after configuring it.
    pub fn start(&self) {
        self.handler.on_start(self.emitter());
    }

    /// The HTTP interface: `POST /`, `GET /health`, `GET /ready`, `GET /metrics`, and the
    /// stage's own [`Handler::routes`].
    pub fn router(&self) -> Router {
        self.handler
            .routes()
            .merge(self.stage_router())
            .layer(axum::middleware::map_response(crate::problem::as_problem))
    }

    fn stage_router(&self) -> Router {
        Router::new()
            .route("/", post(receive::<H>))
            .route("/health", get(health))
            .route("/ready", get(ready::<H>))
            .route("/metrics", get(metrics_text::<H>))
            .with_state(self.clone())
    }

    /// Handles one event in-process, exactly as the HTTP path does after decoding.
    pub async fn dispatch(&self, event: Event) -> Result<Outcome, HandlerError> {
        self.dispatch_traced(event, None).await
    }

    async fn dispatch_traced(
        &self,
        event: Event,
        header_trace: Option<&str>,
    ) -> Result<Outcome, HandlerError> {
        let stage = self.handler.stage();
        let label = type_label(event.ty());
        let input_trace = TraceParent::of_event(&event, header_trace);
        let span = tracing::info_span!(
            "handle",
            stage = stage.service_name(),
            event_id = %event.id(),
            event_type = %event.ty(),
            function = event.subject().unwrap_or_default(),
            build_id = field::Empty,
            trace_id = field::Empty,
        );
        if let Some(parent) = input_trace {
            parent.adopt_as_parent_of(&span);
            span.record("trace_id", hex::encode(parent.trace_id));
        }
        if let Some(build_id) = build_id_of(&event) {
            span.record("build_id", build_id);
        }
        let started = Instant::now();
        let result = async {
            if let Some(keys) = &self.keys
                && let Err(refusal) = keys.check(&event)
            {
                return Err(HandlerError::Forbidden(refusal.to_string()));
            }
            if !self.handler.accepts(event.ty()) {
                return Err(HandlerError::Invalid(vec![Problem::new(
                    "type",
                    format!(
                        "the {} stage does not consume {}; check the Trigger that sent it",
                        stage.service_name(),
                        event.ty()
                    ),
                )]));
            }
            let context = Context {
                emitter: self.emitter(),
                trace: input_trace,
                span: tracing::Span::current(),
            };
            self.handler.handle(event, &context).await
        }
        .instrument(span.clone())
        .await;
        self.metrics.latency(label, started.elapsed().as_secs_f64());

        let _entered = span.enter();
        match result {
            Ok(Outcome::Reply(mut reply)) => {
                if let Some(build_id) = build_id_of(&reply) {
                    span.record("build_id", build_id);
                }
                let reply_trace = trace::for_emitted(input_trace, &span, reply.id());
                trace::stamp(&mut reply, reply_trace);
                if let Some(keys) = &self.keys {
                    keys.sign(&mut reply);
                }
                self.metrics.request(label, "reply");
                tracing::info!(reply_type = %reply.ty(), reply_id = %reply.id(), "replied");
                Ok(Outcome::Reply(reply))
            }
            Ok(Outcome::Done) => {
                self.metrics.request(label, "done");
                tracing::info!("handled, nothing follows");
                Ok(Outcome::Done)
            }
            Err(error) => {
                if error.is_retryable() {
                    self.metrics.request(label, "retryable");
                    tracing::error!(%error, kind = error.metric_label(), "failed; the broker will retry");
                } else {
                    self.metrics.request(label, "rejected");
                    tracing::warn!(%error, "rejected; the broker will dead-letter it");
                }
                Err(error)
            }
        }
    }
}

async fn receive<H: Handler>(State(harness): State<Harness<H>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let claimed_type = type_label(header("ce-type").unwrap_or_default());
    let limit = harness.body_limit;
    let too_large = || {
        harness.metrics.request(claimed_type, "too_large");
        ProblemDetails::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Payload too large",
            format!(
                "the body exceeds this stage's limit of {limit} bytes (KLAMBDA_BODY_LIMIT_BYTES)"
            ),
        )
        .into_response()
    };
    let declared = header(CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return too_large();
    }
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Err(error) => {
            harness.metrics.request(claimed_type, "malformed");
            return ProblemDetails::new(
                StatusCode::BAD_REQUEST,
                "unreadable-body",
                "Unreadable body",
                format!("the request body could not be read: {error}"),
            )
            .into_response();
        }
    };
    let event = match codec::decode(&parts.headers, bytes) {
        Ok(event) => event,
        Err(DecodeFailure::Batch) => {
            harness.metrics.request(claimed_type, "malformed");
            return ProblemDetails::new(
                StatusCode::BAD_REQUEST,
                "batch-not-supported",
                "Batch mode is not supported",
                "send one event per request, in binary or structured mode",
            )
            .into_response();
        }
        Err(DecodeFailure::Invalid(problems)) => {
            harness.metrics.request(claimed_type, "malformed");
            return ProblemDetails::new(
                StatusCode::BAD_REQUEST,
                "invalid-cloudevent",
                "Invalid CloudEvent",
                format!(
                    "the request is not a valid CloudEvent: {} problem(s)",
                    problems.len()
                ),
            )
            .with_problems(problems)
            .into_response();
        }
    };
    match harness.dispatch_traced(event, header(TRACEPARENT)).await {
        Ok(Outcome::Reply(reply)) => event_response(reply),
        Ok(Outcome::Done) => StatusCode::ACCEPTED.into_response(),
        Err(error) => error_response(&error),
    }
}

/// `200` with `event` in binary mode (and its `traceparent` as an HTTP header too).
fn event_response(event: Event) -> Response {
    let trace = event
        .extension(TRACEPARENT)
        .and_then(|t| HeaderValue::from_str(&t.to_string()).ok());
    let (headers, body) = codec::into_binary(event);
    let mut response = (StatusCode::OK, Body::from(body)).into_response();
    if let Some(trace) = trace {
        response.headers_mut().insert(TRACEPARENT, trace);
    }
    response.headers_mut().extend(headers);
    response
}

fn error_response(error: &HandlerError) -> Response {
    error.problem().into_response()
}

async fn health() -> Response {
    axum::Json(serde_json::json!({"status": "alive"})).into_response()
}

async fn ready<H: Handler>(State(harness): State<Harness<H>>) -> Response {
    let mut problems = Vec::new();
    if let Err(reason) = harness.handler.ready().await {
        problems.push(Problem::new("stage", reason));
    }
    if let Err(error) = harness.publisher.ready().await {
        problems.push(Problem::new("K_SINK", error.to_string()));
    }
    if problems.is_empty() {
        axum::Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        ProblemDetails::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "Not ready",
            "a dependency of this stage is unreachable",
        )
        .with_problems(problems)
        .into_response()
    }
}

async fn metrics_text<H: Handler>(State(harness): State<Harness<H>>) -> Response {
    harness.handler.refresh_metrics(&harness.metrics).await;
    let mut response = harness.metrics.encode().into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    response
}

/// The build an event is about (`data.buildId` of the build events and their answers), for the
/// handling span's `build_id` field.
fn build_id_of(event: &Event) -> Option<&str> {
    match event.data()? {
        cloudevents::Data::Json(data) => data.get("buildId")?.as_str(),
        _ => None,
    }
}
