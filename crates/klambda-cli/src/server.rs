//! `klambda up`'s HTTP face, one port: `POST /` is the broker ingress (a CloudEvent in, `202`
//! once it is queued for every matching Trigger: for RabbitMQ, once the publish is confirmed;
//! `500` when it could not be), the status API is the status reporter's
//! (`/functions…`, `/events/{id}`, `/dead-letters`), `GET /functions/{name}/logs` gives the
//! latest build's log and the serving revision's output, `GET /health` says it is up.

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use klambda_events::Stage;
use klambda_harness::Handler as _;
use klambda_harness::codec::{self, DecodeFailure};
use klambda_harness::problem::ProblemDetails;

use crate::embedded::Platform;

/// The router of a running platform.
pub fn router(platform: Platform) -> Router {
    let status = platform.reporter.routes();
    Router::new()
        .route("/", post(ingress))
        .route("/functions/{name}/logs", get(logs))
        .route("/metrics", get(metrics))
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({"status": "alive"})) }),
        )
        .with_state(platform)
        .merge(status)
}

async fn ingress(State(platform): State<Platform>, headers: HeaderMap, body: Bytes) -> Response {
    match codec::decode(&headers, body) {
        Ok(event) => match platform.accept(event).await {
            Ok(()) => StatusCode::ACCEPTED.into_response(),
            Err(error) => ProblemDetails::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "publish-failed",
                "The broker did not take the event",
                format!("{error}; nothing was accepted, send it again"),
            )
            .into_response(),
        },
        Err(failure) => {
            let problems = match failure {
                DecodeFailure::Invalid(problems) => problems,
                DecodeFailure::Batch => vec![klambda_events::data::Problem::new(
                    "",
                    "batch mode is not supported; send one event per request",
                )],
            };
            ProblemDetails::new(
                StatusCode::BAD_REQUEST,
                "invalid-cloudevent",
                "Invalid CloudEvent",
                "the broker ingress accepts one valid CloudEvent per request",
            )
            .with_problems(problems)
            .into_response()
        }
    }
}

/// `GET /metrics`: every in-process stage's metrics (one registry, a `stage` label each).
async fn metrics(State(platform): State<Platform>) -> Response {
    let reporter = platform
        .metrics
        .for_stage(Stage::StatusReporter.service_name());
    platform.reporter.refresh_metrics(&reporter).await;
    (
        [(
            http::header::CONTENT_TYPE,
            klambda_harness::metrics::CONTENT_TYPE,
        )],
        platform.metrics.encode(),
    )
        .into_response()
}

/// `GET /functions/{name}/logs`: the latest build's log and the serving revision's output.
async fn logs(State(platform): State<Platform>, Path(name): Path<String>) -> Response {
    use klambda_events::{BuildId, ContentDigest, FunctionName};
    use service_deployer::deployer::Deployer as _;
    let not_found = || {
        ProblemDetails::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("no function named {name:?}"),
        )
        .into_response()
    };
    let Ok(function) = FunctionName::new(name.clone()) else {
        return not_found();
    };
    let state = match platform.store.function(&name).await {
        Ok(Some(state)) => state,
        Ok(None) => return not_found(),
        Err(error) => {
            return ProblemDetails::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "Status store unavailable",
                error.to_string(),
            )
            .into_response();
        }
    };
    let build = state
        .digest
        .as_deref()
        .and_then(|d| ContentDigest::parse(d).ok())
        .map(|digest| BuildId::derive(&function, &digest));
    let build_lines: Vec<String> = match &build {
        Some(id) => std::fs::read_to_string(
            platform
                .builds
                .join(id.as_str())
                .join(job_launcher::builder::local::BUILD_LOG),
        )
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default(),
        None => Vec::new(),
    };
    let runtime = platform.runner.logs(&function).await;
    axum::Json(serde_json::json!({
        "build": {"id": build.map(|b| b.to_string()), "lines": build_lines},
        "runtime": {
            "revision": runtime.as_ref().map(|(revision, _)| revision.clone()),
            "lines": runtime.map(|(_, lines)| lines).unwrap_or_default(),
        },
    }))
    .into_response()
}
