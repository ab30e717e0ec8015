//! The status API: `GET /functions`, `GET /functions/{name}`, `GET /functions/{name}/events`,
//! `GET /events/{id}`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;
use http::header::CONTENT_TYPE;
use klambda_harness::problem::ProblemDetails;
use serde::Deserialize;
use serde_json::json;

use klambda_events::status::{self, EventRecord, FunctionStatus};

use crate::fold::FunctionState;
use crate::store::StatusStore;

/// Where the status API reads a function's processes live, when the platform runs them itself
/// (the local runner): added to the router as an `axum::Extension`, it fills
/// [`FunctionStatus::scale`]. On a cluster there is none: Knative's autoscaler owns the pods.
#[derive(Clone)]
pub struct LiveScale(pub Arc<ScaleOf>);

/// A function's processes now, by function name; `None` when none are counted.
pub type ScaleOf = dyn Fn(&str) -> Option<status::Scale> + Send + Sync;

/// Where the Broker's `deadLetterSink` delivers (`eventing/broker.yaml`).
pub const DEAD_LETTER_PATH: &str = "/dead-letters";

/// The routes, over `store`.
pub fn routes(store: Arc<dyn StatusStore>) -> Router {
    Router::new()
        .route(
            DEAD_LETTER_PATH,
            post(dead_letter)
                .get(dead_letters)
                .delete(purge_dead_letters),
        )
        .route(
            "/dead-letters/{seq}",
            get(one_dead_letter).delete(remove_dead_letter),
        )
        .route("/functions", get(functions))
        .route("/functions/{name}", get(function))
        .route("/functions/{name}/events", get(function_events))
        .route("/events/{id}", get(event))
        .with_state(store)
}

/// A function as the API shows it (`klambda_events::status`): its state, the stage timings
/// derived from it, and whether its journey is stalled.
fn status_of(state: FunctionState) -> FunctionStatus {
    let time = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339();
    let timings_ms = state
        .timings_ms()
        .into_iter()
        .map(|(stage, ms)| (stage.to_owned(), ms))
        .collect();
    let stalled = state.stalled(chrono::Utc::now()).map(|s| status::Stalled {
        stage: s.stage.to_owned(),
        waiting_seconds: s.waiting_seconds,
        deadline_seconds: s.deadline_seconds,
    });
    FunctionStatus {
        name: state.name,
        phase: state.phase,
        revision: state.revision,
        digest: state.digest,
        commit: state.commit,
        image: state.image,
        url: state.url,
        runtime: state.runtime,
        last_error: state.last_error,
        last_event_type: state.last_event_type,
        updated_at: time(state.updated_at),
        marks: state
            .marks
            .into_iter()
            .map(|(ty, at)| (ty, time(at)))
            .collect(),
        trace_id: state.trace_id,
        timings_ms,
        stalled,
        restarts: state.restarts,
        last_restart: state.last_restart.map(|seen| status::LastRestart {
            reason: seen.report.reason,
            message: seen.report.message,
            at: time(seen.received_at),
        }),
        scale: None,
    }
}

#[derive(Debug, Deserialize)]
struct Page {
    limit: Option<i64>,
    /// Only events with a greater `seq` (for following a function without rereading it).
    after: Option<i64>,
}

/// `503` problem+json: the status store (or another store of the platform's) failed.
pub fn unavailable(error: &dyn std::fmt::Display) -> Response {
    ProblemDetails::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store-unavailable",
        "Status store unavailable",
        error.to_string(),
    )
    .into_response()
}

fn not_found(what: String) -> Response {
    ProblemDetails::new(StatusCode::NOT_FOUND, "not-found", "Not found", what).into_response()
}

/// The status of `state`, with its processes when `live` counts them.
fn live_status_of(state: FunctionState, live: Option<&LiveScale>) -> FunctionStatus {
    let mut status = status_of(state);
    if let Some(LiveScale(scale)) = live {
        status.scale = scale(status.name.as_str());
    }
    status
}

async fn functions(
    State(store): State<Arc<dyn StatusStore>>,
    live: Option<axum::Extension<LiveScale>>,
) -> Response {
    match store.functions().await {
        Ok(states) => {
            let views: Vec<FunctionStatus> = states
                .into_iter()
                .map(|state| live_status_of(state, live.as_deref()))
                .collect();
            axum::Json(views).into_response()
        }
        Err(error) => unavailable(&error),
    }
}

async fn function(
    State(store): State<Arc<dyn StatusStore>>,
    live: Option<axum::Extension<LiveScale>>,
    Path(name): Path<String>,
) -> Response {
    match store.function(&name).await {
        Ok(Some(state)) => axum::Json(live_status_of(state, live.as_deref())).into_response(),
        Ok(None) => not_found(format!("no function named {name:?} has been seen")),
        Err(error) => unavailable(&error),
    }
}

async fn function_events(
    State(store): State<Arc<dyn StatusStore>>,
    Path(name): Path<String>,
    Query(page): Query<Page>,
) -> Response {
    let limit = page.limit.unwrap_or(1000).clamp(1, 10_000);
    match store
        .function_events(&name, page.after.unwrap_or(0), limit)
        .await
    {
        Ok(events) => {
            let views: Vec<EventRecord> = events.iter().map(record_of).collect();
            axum::Json(views).into_response()
        }
        Err(error) => unavailable(&error),
    }
}

async fn event(State(store): State<Arc<dyn StatusStore>>, Path(id): Path<String>) -> Response {
    match store.event(&id).await {
        Ok(Some(stored)) => (
            [(CONTENT_TYPE, "application/cloudevents+json")],
            stored.body,
        )
            .into_response(),
        Ok(None) => not_found(format!("no event with id {id:?} has been recorded")),
        Err(error) => unavailable(&error),
    }
}

/// The dead-letter sink: keeps the event with its `knativeerror*` attributes. Answers 202 only
/// once it is stored, 503 otherwise, so the broker keeps it until it is.
async fn dead_letter(
    State(store): State<Arc<dyn StatusStore>>,
    headers: http::HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let event = match klambda_harness::codec::decode(&headers, body) {
        Ok(event) => event,
        Err(failure) => {
            let problems = match failure {
                klambda_harness::codec::DecodeFailure::Invalid(problems) => problems,
                klambda_harness::codec::DecodeFailure::Batch => {
                    vec![klambda_events::data::Problem::new(
                        "",
                        "batch mode is not supported; send one event per request",
                    )]
                }
            };
            return ProblemDetails::new(
                StatusCode::BAD_REQUEST,
                "invalid-cloudevent",
                "Invalid CloudEvent",
                "the dead letter is not a valid CloudEvent",
            )
            .with_problems(problems)
            .into_response();
        }
    };
    match store.record_dead_letter(&event, chrono::Utc::now()).await {
        Ok(_) => StatusCode::ACCEPTED.into_response(),
        Err(error) => unavailable(&error),
    }
}

async fn dead_letters(
    State(store): State<Arc<dyn StatusStore>>,
    Query(page): Query<Page>,
) -> Response {
    let limit = page.limit.unwrap_or(1000).clamp(1, 10_000);
    match store.dead_letters(limit).await {
        Ok(letters) => {
            axum::Json(letters.iter().map(record_of).collect::<Vec<_>>()).into_response()
        }
        Err(error) => unavailable(&error),
    }
}

/// `GET /dead-letters/{seq}`: one letter, with its `knativeerror*` attributes.
async fn one_dead_letter(
    State(store): State<Arc<dyn StatusStore>>,
    Path(seq): Path<i64>,
) -> Response {
    match store.dead_letter(seq).await {
        Ok(Some(letter)) => axum::Json(record_of(&letter)).into_response(),
        Ok(None) => not_found(format!("no dead letter {seq}")),
        Err(error) => unavailable(&error),
    }
}

/// `DELETE /dead-letters/{seq}`: forgets one letter (after it was redriven). 204, or 404.
async fn remove_dead_letter(
    State(store): State<Arc<dyn StatusStore>>,
    Path(seq): Path<i64>,
) -> Response {
    match store.remove_dead_letters(Some(seq)).await {
        Ok(0) => not_found(format!("no dead letter {seq}")),
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => unavailable(&error),
    }
}

/// `DELETE /dead-letters`: forgets every letter; answers how many.
async fn purge_dead_letters(State(store): State<Arc<dyn StatusStore>>) -> Response {
    match store.remove_dead_letters(None).await {
        Ok(removed) => axum::Json(json!({ "removed": removed })).into_response(),
        Err(error) => unavailable(&error),
    }
}

/// A stored event as the API shows it.
fn record_of(stored: &crate::store::StoredEvent) -> EventRecord {
    EventRecord {
        seq: stored.seq,
        received_at: stored.received_at.to_rfc3339(),
        event: stored.json(),
    }
}
