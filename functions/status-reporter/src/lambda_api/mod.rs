//! The AWS Lambda API on the platform's endpoint, so what Lambda users already have (the AWS
//! CLI, boto3, every SDK) invokes and lists functions on `klambda up`:
//!
//! - `POST /2015-03-31/functions/{name}/invocations` (Invoke) with `X-Amz-Invocation-Type`
//!   `RequestResponse` (the serving revision is called and its result is the body; a handler
//!   error is `200` with `X-Amz-Function-Error: Unhandled` and Lambda's error document; the
//!   log tail on `X-Amz-Log-Type: Tail`), `Event` (`202`; through the broker as
//!   `klambda invoke --async`: the function's delivery, else Lambda's two retries, then the
//!   dead letters) and `DryRun` (`204`);
//! - `GET /2015-03-31/functions/{name}` (GetFunction) and `GET /2015-03-31/functions/`
//!   (ListFunctions), in Lambda's JSON shape;
//! - errors as Lambda answers them: the code in `X-Amzn-ErrorType`, `{"Type","message"}`.
//!
//! Requests are signed with Signature Version 4 ([`sigv4`]): access key id `klambda`, the
//! platform's API token as the secret access key, any region. A platform started without a
//! token (in-process tests) asks for none, as its other routes.
//!
//! Served where the status store is, over a [`Functions`] that says where each function
//! serves and takes asynchronous invocations: `klambda up` (its local runner, which also
//! keeps each revision's output for the log tail) and, on a cluster, the status reporter's
//! Service ([`Cluster`]: the function's Knative URL from its status, the broker through the
//! stage's sink).

pub mod sigv4;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use bytes::Bytes;
use cloudevents::{Event, EventBuilder as _, EventBuilderV10};
use klambda_broker::Answer;
use klambda_broker::subscriber::Poster;
use klambda_events::FunctionName;
use klambda_events::data::Phase;
use klambda_harness::context::Emitter;
use serde_json::{Value, json};

use crate::fold::FunctionState;
use crate::store::StatusStore;

/// A boxed future, as the [`Functions`] trait returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the Lambda API needs of the platform besides the status store.
pub trait Functions: Send + Sync + 'static {
    /// Where `state`'s function serves now, and what to keep while calling it (a revision is
    /// not stopped while a call holds it); `None` when it serves nothing.
    fn serving(&self, state: &FunctionState) -> Option<(String, Box<dyn Send>)>;
    /// The serving revision's last lines of output, where the platform keeps them (the log
    /// tail of a synchronous invocation); `None` where it does not.
    fn output<'a>(&'a self, function: &'a FunctionName) -> BoxFuture<'a, Option<Vec<String>>>;
    /// Puts a client's event (an asynchronous invocation) into the broker; `Err` with the
    /// reason when the broker did not take it.
    fn accept(&self, event: Event) -> BoxFuture<'_, Result<(), String>>;
}

/// The Lambda API over a status store and the [`Functions`] it fronts.
#[derive(Clone)]
pub struct LambdaApi {
    /// The status store (functions, their phases and history).
    pub store: Arc<dyn StatusStore>,
    /// The API token requests are signed with; `None`: none is asked.
    pub token: Option<Arc<str>>,
    /// Where functions serve.
    pub functions: Arc<dyn Functions>,
}

/// The functions of a cluster, as the status reporter's Service sees them: each serves at the
/// URL its status records (the Knative Service's, cluster-local), and asynchronous invocations
/// go to the broker through the stage's sink (`K_SINK`), given once the stage starts. No
/// revision output is kept here: a cluster's logs are in its log pipeline.
#[derive(Default)]
pub struct Cluster {
    emitter: OnceLock<Emitter>,
}

impl Cluster {
    /// Sends asynchronous invocations through `emitter` (the stage's, from `on_start`).
    pub fn start(&self, emitter: Emitter) {
        let _ = self.emitter.set(emitter);
    }
}

impl Functions for Cluster {
    fn serving(&self, state: &FunctionState) -> Option<(String, Box<dyn Send>)> {
        // While an update is under way, or after one failed, the Service keeps serving its
        // previous revision at the same URL, as Knative does.
        Some((state.url.clone()?, Box::new(())))
    }

    fn output<'a>(&'a self, _: &'a FunctionName) -> BoxFuture<'a, Option<Vec<String>>> {
        Box::pin(async { None })
    }

    fn accept(&self, event: Event) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let emitter = self
                .emitter
                .get()
                .ok_or_else(|| "the stage has not started".to_owned())?;
            emitter.forward(event).await.map_err(|e| e.to_string())
        })
    }
}

/// A request id of this process: time and a counter, unique per process.
fn request_id() -> String {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("lambda-{nanos:x}-{}-{n}", std::process::id())
}

/// Where Lambda's API puts functions.
const FUNCTIONS: &str = "/2015-03-31/functions";

/// Lambda's limit on a synchronous invocation's payload.
pub const MAX_SYNC_PAYLOAD: usize = 6 * 1024 * 1024;

/// Lambda's limit on an asynchronous invocation's payload.
pub const MAX_ASYNC_PAYLOAD: usize = 256 * 1024;

/// How much of an invocation's log `X-Amz-Log-Type: Tail` returns.
const LOG_TAIL_BYTES: usize = 4096;

/// The client synchronous invocations call functions with: connections kept alive per revision.
static FUNCTIONS_CLIENT: std::sync::LazyLock<Poster> = std::sync::LazyLock::new(Poster::default);

/// The account in the functions' ARNs: there is one platform, no accounts.
const ACCOUNT: &str = "000000000000";

/// The Lambda API's routes; they check their own authentication (SigV4), not the bearer token.
pub fn routes(platform: LambdaApi) -> Router {
    Router::new()
        .route(FUNCTIONS, get(list_functions))
        .route(&format!("{FUNCTIONS}/"), get(list_functions))
        .route(&format!("{FUNCTIONS}/{{name}}"), get(get_function))
        .route(&format!("{FUNCTIONS}/{{name}}/invocations"), post(invoke))
        .with_state(platform)
}

/// An error as Lambda answers it: its status, its code (in `X-Amzn-ErrorType`, which the SDKs
/// read) and a message.
#[derive(Debug)]
struct LambdaError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> LambdaError {
    LambdaError {
        status,
        code,
        message: message.into(),
    }
}

impl IntoResponse for LambdaError {
    fn into_response(self) -> Response {
        (
            self.status,
            [
                ("content-type", "application/json"),
                ("x-amzn-errortype", self.code),
            ],
            json!({ "Type": "User", "message": self.message }).to_string(),
        )
            .into_response()
    }
}

fn arn(name: &str) -> String {
    format!("arn:aws:lambda:local:{ACCOUNT}:function:{name}")
}

/// The function a path names: its name, its name with a qualifier (`name:$LATEST`), or its ARN.
fn function_name(given: &str) -> &str {
    let name = given
        .rsplit_once(":function:")
        .map_or(given, |(_, rest)| rest);
    name.split(':').next().unwrap_or(name)
}

/// Checks the request's SigV4 signature against the platform's API token.
fn authenticate(platform: &LambdaApi, parts: &Parts, body: &[u8]) -> Result<(), LambdaError> {
    let Some(token) = &platform.token else {
        return Ok(());
    };
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    let request = sigv4::SignedRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &headers,
        body,
    };
    sigv4::verify(&request, token, chrono::Utc::now().timestamp()).map_err(|refused| {
        let code = match refused {
            sigv4::SignatureError::Missing => "MissingAuthenticationTokenException",
            sigv4::SignatureError::Malformed(_) => "IncompleteSignatureException",
            sigv4::SignatureError::UnknownKey(_) => "UnrecognizedClientException",
            sigv4::SignatureError::Date(_) | sigv4::SignatureError::Mismatch => {
                "InvalidSignatureException"
            }
        };
        error(StatusCode::FORBIDDEN, code, refused.to_string())
    })
}

/// Reads the body up to `limit` bytes and authenticates the request.
async fn authenticated(
    platform: &LambdaApi,
    request: Request,
    limit: usize,
) -> Result<(Parts, Bytes), LambdaError> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, limit).await.map_err(|_| {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestTooLargeException",
            format!("Request must be smaller than {limit} bytes for the Invoke operation"),
        )
    })?;
    authenticate(platform, &parts, &body)?;
    Ok((parts, body))
}

/// The function's state, or Lambda's 404.
async fn known(platform: &LambdaApi, name: &str) -> Result<FunctionState, LambdaError> {
    match platform.store.function(name).await {
        Ok(Some(state)) if state.phase != Phase::Deleted => Ok(state),
        Ok(_) => Err(error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            format!("Function not found: {}", arn(name)),
        )),
        Err(failure) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceException",
            format!("the status store is unavailable: {failure}"),
        )),
    }
}

async fn invoke(
    State(platform): State<LambdaApi>,
    Path(given): Path<String>,
    request: Request,
) -> Response {
    invoke_checked(&platform, function_name(&given), request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn invoke_checked(
    platform: &LambdaApi,
    name: &str,
    request: Request,
) -> Result<Response, LambdaError> {
    let (parts, body) = authenticated(platform, request, MAX_SYNC_PAYLOAD).await?;
    let state = known(platform, name).await?;
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let payload: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                format!("Could not parse request body into json: {e}"),
            )
        })?
    };
    let request_id = request_id();
    match header("x-amz-invocation-type")
        .as_deref()
        .unwrap_or("RequestResponse")
    {
        "DryRun" => Ok(StatusCode::NO_CONTENT.into_response()),
        "Event" => {
            if body.len() > MAX_ASYNC_PAYLOAD {
                return Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestTooLargeException",
                    format!(
                        "an asynchronous invocation's payload is at most {MAX_ASYNC_PAYLOAD} bytes"
                    ),
                ));
            }
            let event = invocation(&request_id, name, payload)?;
            platform.functions.accept(event).await.map_err(|failure| {
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceException",
                    format!("the broker did not take the invocation: {failure}; send it again"),
                )
            })?;
            Ok(with_request_id(
                StatusCode::ACCEPTED.into_response(),
                &request_id,
            ))
        }
        "RequestResponse" => {
            let tail = header("x-amz-log-type").is_some_and(|t| t == "Tail");
            call(platform, &state, &request_id, payload, tail).await
        }
        other => Err(error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            format!("X-Amz-Invocation-Type {other:?} is not RequestResponse, Event or DryRun"),
        )),
    }
}

/// The invocation as the CloudEvent the function's shim takes (and its invocation Trigger
/// routes: `klambda.invoke` addressed to the function).
fn invocation(request_id: &str, name: &str, payload: Value) -> Result<Event, LambdaError> {
    EventBuilderV10::new()
        .id(request_id)
        .source("/lambda-api")
        .ty(klambda_events::external::INVOKE)
        .extension(klambda_events::external::INVOKE_FUNCTION_EXTENSION, name)
        .data("application/json", payload)
        .build()
        .map_err(|e| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                e.to_string(),
            )
        })
}

fn with_request_id(mut response: Response, request_id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-amzn-requestid", value);
    }
    response
}

/// The revision number a revision name ends with (`hello-00003` → `3`).
fn version(revision: Option<&str>) -> String {
    revision
        .and_then(|r| r.rsplit_once('-'))
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .map_or_else(|| "$LATEST".to_owned(), |n| n.to_string())
}

/// A synchronous invocation: the serving revision is called, its answer becomes Lambda's.
async fn call(
    platform: &LambdaApi,
    state: &FunctionState,
    request_id: &str,
    payload: Value,
    tail: bool,
) -> Result<Response, LambdaError> {
    let name = state.name.as_str();
    let function = FunctionName::new(name.to_owned()).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            e.to_string(),
        )
    })?;
    let not_serving = || {
        error(
            StatusCode::CONFLICT,
            "ResourceConflictException",
            format!(
                "The operation cannot be performed at this time: {name} is {} and serves no revision",
                state.phase.label()
            ),
        )
    };
    let (url, hold) = platform.functions.serving(state).ok_or_else(not_serving)?;
    let url: url::Url = url.parse().map_err(|_| not_serving())?;
    let before = match tail {
        true => platform
            .functions
            .output(&function)
            .await
            .unwrap_or_default(),
        false => Vec::new(),
    };
    let answer = FUNCTIONS_CLIENT
        .post(&url, invocation(request_id, name, payload)?)
        .await;
    drop(hold);
    let mut response = match answer {
        Answer::Reply(reply) => (
            StatusCode::OK,
            [("content-type", "application/json")],
            reply_body(&reply),
        )
            .into_response(),
        Answer::Accepted => (
            StatusCode::OK,
            [("content-type", "application/json")],
            "null",
        )
            .into_response(),
        Answer::Failed {
            status: Some(500 | 504),
            body,
        } => {
            let problem: Value = serde_json::from_slice(&body).unwrap_or_default();
            let message = problem["detail"].as_str().unwrap_or("the handler failed");
            let timed_out = problem["status"] == 504;
            let mut document = json!({
                "errorMessage": message,
                "errorType": if timed_out { "Sandbox.Timedout" } else { problem["errorType"].as_str().unwrap_or("Error") },
            });
            if let Some(stack) = problem["stackTrace"].as_array() {
                document["stackTrace"] = Value::Array(stack.clone());
            }
            let mut response = (
                StatusCode::OK,
                [("content-type", "application/json")],
                document.to_string(),
            )
                .into_response();
            response.headers_mut().insert(
                "x-amz-function-error",
                HeaderValue::from_static("Unhandled"),
            );
            response
        }
        // The revision's activator held the call as long as it holds any and no process
        // became free (or one is restarting): Lambda's throttle.
        Answer::Failed {
            status: Some(503),
            body,
        } => {
            let problem: Value = serde_json::from_slice(&body).unwrap_or_default();
            let why = problem["detail"].as_str().unwrap_or("it is restarting");
            return Err(error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequestsException",
                format!("{name} cannot take the call now ({why}); retry"),
            ));
        }
        Answer::Failed { status, body } => {
            return Err(error(
                StatusCode::BAD_GATEWAY,
                "ServiceException",
                format!(
                    "{name} answered {}: {}",
                    status.map_or_else(|| "nothing".to_owned(), |s| s.to_string()),
                    String::from_utf8_lossy(&body)
                ),
            ));
        }
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&version(state.revision.as_deref())) {
        headers.insert("x-amz-executed-version", value);
    }
    if tail {
        let after = platform
            .functions
            .output(&function)
            .await
            .unwrap_or_default();
        let log = new_lines(&before, &after).join("\n");
        let mut start = log.len().saturating_sub(LOG_TAIL_BYTES);
        while !log.is_char_boundary(start) {
            start += 1;
        }
        let encoded = base64::engine::general_purpose::STANDARD.encode(&log[start..]);
        if let Ok(value) = HeaderValue::from_str(&encoded) {
            headers.insert("x-amz-log-result", value);
        }
    }
    Ok(with_request_id(response, request_id))
}

/// The reply's data as the invocation's result.
fn reply_body(reply: &Event) -> Vec<u8> {
    match reply.data() {
        Some(cloudevents::Data::Json(value)) => value.to_string().into_bytes(),
        Some(cloudevents::Data::String(text)) => text.clone().into_bytes(),
        Some(cloudevents::Data::Binary(bytes)) => bytes.clone(),
        None => b"null".to_vec(),
    }
}

/// The lines of `after` that were not in `before`: the output keeps its last lines, so what
/// an invocation wrote is what follows the longest end of `before` that `after` starts with.
fn new_lines(before: &[String], after: &[String]) -> Vec<String> {
    let overlap = (0..=before.len().min(after.len()))
        .rev()
        .find(|&n| before[before.len() - n..] == after[..n])
        .unwrap_or(0);
    after[overlap..].to_vec()
}

async fn get_function(
    State(platform): State<LambdaApi>,
    Path(given): Path<String>,
    request: Request,
) -> Response {
    let lookup = async {
        authenticated(&platform, request, 0).await?;
        let state = known(&platform, function_name(&given)).await?;
        let configuration = configuration(&state);
        Ok::<_, LambdaError>(
            axum::Json(json!({
                "Configuration": configuration,
                "Code": {"RepositoryType": "klambda", "Location": state.image},
            }))
            .into_response(),
        )
    };
    lookup.await.unwrap_or_else(IntoResponse::into_response)
}

async fn list_functions(State(platform): State<LambdaApi>, request: Request) -> Response {
    let listing = async {
        authenticated(&platform, request, 0).await?;
        let states = platform.store.functions().await.map_err(|failure| {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceException",
                failure.to_string(),
            )
        })?;
        let functions: Vec<Value> = states
            .iter()
            .filter(|s| s.phase != Phase::Deleted)
            .map(configuration)
            .collect();
        Ok::<_, LambdaError>(axum::Json(json!({ "Functions": functions })).into_response())
    };
    listing.await.unwrap_or_else(IntoResponse::into_response)
}

/// A function's `Configuration` in Lambda's shape, from its status (the configuration its
/// latest parsed submission asks for; null fields for a state recorded before it was kept).
fn configuration(state: &FunctionState) -> Value {
    let name = state.name.as_str();
    let asked = state.configuration.as_ref();
    let lambda_state = match state.phase {
        Phase::Ready => "Active",
        Phase::Failed => "Failed",
        _ => "Pending",
    };
    let code_sha256 = state
        .digest
        .as_deref()
        .and_then(|d| d.strip_prefix("sha256:"))
        .and_then(|hex| hex::decode(hex).ok())
        .map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes));
    let mut configuration = json!({
        "FunctionName": name,
        "FunctionArn": arn(name),
        "Runtime": asked.map(|c| &c.runtime),
        "Handler": asked.map(|c| &c.handler),
        "MemorySize": asked.map(|c| c.memory_mib),
        "Timeout": asked.map(|c| c.timeout_seconds),
        "State": lambda_state,
        "LastModified": state.updated_at.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string(),
        "CodeSha256": code_sha256,
        "Version": version(state.revision.as_deref()),
        "RevisionId": state.revision,
        "PackageType": "Zip",
    });
    if let Some(reason) = &state.last_error {
        configuration["StateReason"] = json!(reason);
    }
    configuration
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_is_named_by_name_qualified_name_or_arn() {
        assert_eq!(function_name("hello"), "hello");
        assert_eq!(function_name("hello:$LATEST"), "hello");
        assert_eq!(function_name(&arn("hello")), "hello");
        assert_eq!(
            function_name("arn:aws:lambda:eu-west-1:123:function:hello:7"),
            "hello"
        );
    }

    #[test]
    fn an_invocations_log_is_what_follows_the_output_before_it() {
        let lines = |s: &[&str]| s.iter().map(|l| (*l).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            new_lines(&lines(&["a", "b"]), &lines(&["a", "b", "c"])),
            ["c"]
        );
        // The output keeps its last lines: the oldest fell off.
        assert_eq!(
            new_lines(&lines(&["a", "b", "c"]), &lines(&["b", "c", "d", "e"])),
            ["d", "e"]
        );
        assert_eq!(new_lines(&[], &lines(&["x"])), ["x"]);
        assert!(new_lines(&lines(&["a"]), &lines(&["a"])).is_empty());
    }

    #[test]
    fn a_revision_is_a_version() {
        assert_eq!(version(Some("hello-00003")), "3");
        assert_eq!(version(None), "$LATEST");
    }
}
