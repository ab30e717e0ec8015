//! `klambda up`'s HTTP face, one port: `POST /` is the broker ingress (a CloudEvent in, `202`
//! once it is queued for every matching Trigger), the status API is the status reporter's
//! (`/functions…`, `/events/{id}`, `/dead-letters`), `GET /health` says it is up.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use klambda_harness::Handler as _;
use klambda_harness::codec::{self, DecodeFailure};
use klambda_harness::problem::ProblemDetails;

use crate::embedded::Platform;

/// The router of a running platform.
pub fn router(platform: Platform) -> Router {
    let status = platform.reporter.routes();
    Router::new()
        .route("/", post(ingress))
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({"status": "alive"})) }),
        )
        .with_state(platform)
        .merge(status)
}

async fn ingress(State(platform): State<Platform>, headers: HeaderMap, body: Bytes) -> Response {
    match codec::decode(&headers, body) {
        Ok(event) => {
            let matched = platform.broker.publish(event);
            tracing::debug!(matched, "accepted");
            StatusCode::ACCEPTED.into_response()
        }
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
