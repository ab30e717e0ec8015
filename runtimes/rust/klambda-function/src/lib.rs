//! The knative-lambda Rust runtime: serves a Lambda-style async handler as a CloudEvents HTTP
//! service, under the contract of `runtimes/README.md` (the return value is the reply, an error a
//! `500` with its message, `504` past the timeout, `GET /health`).
//!
//! A function is a library crate depending on `klambda-function = "0.1"` whose handler is
//!
//! ```ignore
//! pub async fn handler(event: E, ctx: klambda_function::Context) -> Result<R, klambda_function::Error>
//! ```
//!
//! with `E: DeserializeOwned` and `R: Serialize`; the platform supplies the program that calls
//! [`run`] with it, and its build resolves this crate to the platform's copy, never a registry.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// A handler's error: any error, so `?` works on all of them (as in Lambda's Rust runtime).
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The largest event body taken.
const MAX_BODY: usize = 1 << 20;

/// One invocation's Lambda context.
#[derive(Debug, Clone)]
pub struct Context {
    /// The CloudEvent's id (Lambda's request id).
    pub request_id: String,
    /// The function's name.
    pub function_name: String,
    /// When the invocation times out.
    pub deadline: Instant,
    /// The CloudEvent's attributes (id, source, type, subject, extensions…).
    pub cloud_event: BTreeMap<String, String>,
}

impl Context {
    /// How long the invocation has left.
    pub fn remaining_time(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// Runs `future` to its end on a runtime of its own: for a function's tests, which call the
/// async handler directly (`klambda_function::block_on(handler(event, ctx))`).
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|runtime| runtime.block_on(future))
        .unwrap_or_else(|error| panic!("no runtime to run the future on: {error}"))
}

impl Context {
    /// A context for a test call of the handler: request id `test`, a 30 s deadline.
    pub fn for_test(function_name: &str) -> Self {
        Self {
            request_id: "test".to_owned(),
            function_name: function_name.to_owned(),
            deadline: Instant::now() + Duration::from_secs(30),
            cloud_event: BTreeMap::new(),
        }
    }
}

/// What the process serves with, from its environment.
struct Settings {
    function_name: String,
    timeout: Duration,
}

/// Serves `handler` on `KLAMBDA_BIND:PORT` (`0.0.0.0:8080` by default) until SIGTERM.
pub fn run<E, R, F, Fut>(handler: F)
where
    E: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(E, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, Error>> + Send + 'static,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start: {error}");
            std::process::exit(1);
        }
    };
    runtime.block_on(serve(Arc::new(handler)));
}

async fn serve<E, R, F, Fut>(handler: Arc<F>)
where
    E: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(E, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, Error>> + Send + 'static,
{
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let port = env("PORT", "8080");
    let host = env("KLAMBDA_BIND", "0.0.0.0");
    let settings = Arc::new(Settings {
        function_name: env("KLAMBDA_FUNCTION_NAME", "function"),
        timeout: Duration::from_secs(
            env("KLAMBDA_TIMEOUT_SECONDS", "30")
                .parse()
                .ok()
                .filter(|s| *s > 0)
                .unwrap_or(30),
        ),
    });
    let listener = match tokio::net::TcpListener::bind(format!("{host}:{port}")).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("cannot start: {error}");
            std::process::exit(1);
        }
    };
    println!(
        "{}",
        json!({"message": "serving", "port": port, "host": host, "runtime": "rust"})
    );
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = async {
                match terminate.as_mut() {
                    Some(signal) => { signal.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let _ = stream.set_nodelay(true);
        let (handler, settings) = (Arc::clone(&handler), Arc::clone(&settings));
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (handler, settings) = (Arc::clone(&handler), Arc::clone(&settings));
                async move { Ok::<_, Infallible>(answer(request, handler, settings).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn problem(status: StatusCode, title: &str, detail: &str, extra: Value) -> Response<Full<Bytes>> {
    let mut body = json!({"type": "about:blank", "title": title, "status": status.as_u16(), "detail": detail});
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    Response::builder()
        .status(status)
        .header("content-type", "application/problem+json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

/// One JSON line on stderr per failed invocation, with its request id.
fn log_failure(request_id: &str, kind: &str, message: &str) {
    eprintln!(
        "{}",
        json!({"level": "error", "requestId": request_id, "kind": kind, "message": message})
    );
}

/// CloudEvents binary mode: percent-encode space, '"', '%' and every byte outside U+0021-U+007E.
fn encode_header(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte > 0x20 && byte < 0x7f && byte != b'"' && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn decode_header(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The event's attributes and data.
fn read_event(
    headers: &hyper::HeaderMap,
    body: &[u8],
) -> Result<(BTreeMap<String, String>, Value), String> {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with("application/cloudevents-batch") {
        return Err("batch mode is not supported".into());
    }
    let mut attributes = BTreeMap::new();
    if content_type.starts_with("application/cloudevents") {
        let structured: serde_json::Map<String, Value> =
            serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let mut data = Value::Null;
        for (name, value) in structured {
            match (name.as_str(), value) {
                ("data", value) => data = value,
                ("data_base64", Value::String(encoded)) => data = Value::String(encoded),
                (_, Value::String(text)) => {
                    attributes.insert(name, text);
                }
                (_, other) => {
                    attributes.insert(name, other.to_string());
                }
            }
        }
        return Ok((attributes, data));
    }
    for (name, value) in headers {
        if let (Some(attribute), Ok(value)) =
            (name.as_str().strip_prefix("ce-"), value.to_str())
        {
            attributes.insert(attribute.to_owned(), decode_header(value));
        }
    }
    let data = if body.is_empty() {
        Value::Null
    } else if content_type.is_empty() || content_type.contains("json") {
        serde_json::from_slice(body).map_err(|e| e.to_string())?
    } else {
        Value::String(String::from_utf8_lossy(body).into_owned())
    };
    Ok((attributes, data))
}

async fn answer<E, R, F, Fut>(
    request: Request<Incoming>,
    handler: Arc<F>,
    settings: Arc<Settings>,
) -> Response<Full<Bytes>>
where
    E: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(E, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, Error>> + Send + 'static,
{
    let none = Value::Null;
    if request.method() == hyper::Method::GET && request.uri().path() == "/health" {
        return Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(br#"{"status":"alive"}"#)))
            .unwrap_or_default();
    }
    if request.method() != hyper::Method::POST || request.uri().path() != "/" {
        return problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            "POST / with a CloudEvent",
            none,
        );
    }
    // The subscriber URI may say what becomes of the reply (a Knative Trigger cannot):
    // ?replyType=T types it T; ?reply=none drops it (an asynchronous invocation's result).
    let query = request.uri().query().unwrap_or_default().to_owned();
    let param = |key: &str| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| decode_header(v))
    };
    let reply_type = param("replyType");
    let drop_reply = param("reply").as_deref() == Some("none");
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Payload too large",
                &format!("limit {MAX_BODY} bytes"),
                none,
            );
        }
    };
    let (attributes, data) = match read_event(&parts.headers, &body) {
        Ok(event) => event,
        Err(reason) => {
            return problem(StatusCode::BAD_REQUEST, "Invalid CloudEvent", &reason, none);
        }
    };
    for required in ["id", "source", "type", "specversion"] {
        if attributes.get(required).is_none_or(String::is_empty) {
            return problem(
                StatusCode::BAD_REQUEST,
                "Invalid CloudEvent",
                &format!("missing {required}"),
                none,
            );
        }
    }
    let id = attributes.get("id").cloned().unwrap_or_default();
    let ty = attributes.get("type").cloned().unwrap_or_default();
    let event: E = match serde_json::from_value(data) {
        Ok(event) => event,
        Err(error) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Invalid event data",
                &format!("the event's data does not fit the handler's type: {error}"),
                none,
            );
        }
    };
    let context = Context {
        request_id: id.clone(),
        function_name: settings.function_name.clone(),
        deadline: Instant::now() + settings.timeout,
        cloud_event: attributes,
    };
    // Its own task: a panic is an answer, and a call past the timeout is cancelled.
    let task = tokio::spawn(handler(event, context));
    let abort = task.abort_handle();
    let outcome = match tokio::time::timeout(settings.timeout, task).await {
        Err(_) => {
            abort.abort();
            let message = format!("handler ran past {} s", settings.timeout.as_secs());
            log_failure(&id, "timeout", &message);
            return problem(StatusCode::GATEWAY_TIMEOUT, "Handler timeout", &message, none);
        }
        Ok(Err(joined)) => {
            let message = match joined.try_into_panic() {
                Ok(panic) => panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .map_or_else(|| "panic".to_owned(), |m| format!("panic: {m}")),
                Err(error) => error.to_string(),
            };
            Err((message, "Panic"))
        }
        Ok(Ok(Err(error))) => Err((error.to_string(), "Error")),
        Ok(Ok(Ok(result))) => Ok(result),
    };
    let result = match outcome {
        Ok(result) => result,
        Err((message, error_type)) => {
            log_failure(&id, "error", &message);
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Handler error",
                &message,
                json!({"errorType": error_type, "stackTrace": []}),
            );
        }
    };
    let reply = match serde_json::to_value(result) {
        Ok(reply) => reply,
        Err(error) => {
            log_failure(&id, "error", &error.to_string());
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Handler error",
                &format!("the result is not JSON: {error}"),
                none,
            );
        }
    };
    if reply.is_null() || drop_reply {
        return Response::builder()
            .status(StatusCode::ACCEPTED)
            .body(Full::new(Bytes::new()))
            .unwrap_or_default();
    }
    Response::builder()
        .header("ce-specversion", "1.0")
        .header("ce-id", encode_header(&format!("{id}.response")))
        .header(
            "ce-source",
            encode_header(&format!("/functions/{}", settings.function_name)),
        )
        .header(
            "ce-type",
            encode_header(&reply_type.unwrap_or_else(|| format!("{ty}.response"))),
        )
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(reply.to_string())))
        .unwrap_or_default()
}
