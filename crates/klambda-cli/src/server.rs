//! `klambda up`'s HTTP face, one port: `POST /` is the broker ingress (a CloudEvent in, `202`
//! once it is queued for every matching Trigger: for RabbitMQ, once the publish is confirmed;
//! `500` when it could not be; `403` for a type only the platform may emit, see
//! [`client_may_send`]), `POST /events/{id}/replay` publishes a recorded event again as it was
//! recorded, `POST /dead-letters/{seq}/redrive` a dead letter without its error attributes,
//! the status API is the status reporter's
//! (`/functions…`, `/events/{id}`, `/dead-letters`), `GET /functions/{name}/logs` gives the
//! latest build's log and the serving revision's output, `GET /health` says it is up.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use cloudevents::AttributesReader as _;
use http::{HeaderMap, StatusCode};
use klambda_events::Stage;
use klambda_harness::Handler as _;
use klambda_harness::auth::{BearerToken, require_bearer};
use klambda_harness::codec::{self, DecodeFailure};
use klambda_harness::problem::ProblemDetails;

use crate::embedded::Platform;

/// The router of a running platform: with an API token set, every route but `GET /health` and
/// `GET /metrics` (what probes and Prometheus read) asks for it
/// (`klambda_harness::auth::require_bearer`).
pub fn router(platform: Platform) -> Router {
    // The status API shows each function's processes as the local runner counts them.
    let runner = std::sync::Arc::downgrade(&platform.runner);
    let status =
        platform
            .reporter
            .routes()
            .layer(axum::Extension(status_reporter::api::LiveScale(
                std::sync::Arc::new(move |name: &str| {
                    let name = klambda_events::FunctionName::new(name).ok()?;
                    runner.upgrade()?.scale(&name)
                }),
            )));
    let token = platform.api_token.clone();
    let guarded = Router::new()
        .route("/", post(ingress))
        .route("/events/{id}/replay", post(replay))
        .route("/dead-letters/{seq}/redrive", post(redrive))
        .route("/functions/{name}/logs", get(logs))
        .route("/functions/{name}/deliveries", get(deliveries))
        .route("/secrets", get(secret_names))
        .route(
            "/secrets/{name}",
            axum::routing::put(set_secret).delete(delete_secret),
        )
        .with_state(platform.clone())
        .merge(status);
    let guarded = match token {
        Some(token) => guarded.layer(axum::middleware::from_fn_with_state(
            BearerToken::new(&token, TOKEN_HINT),
            require_bearer,
        )),
        None => guarded,
    };
    Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({"status": "alive"})) }),
        )
        .with_state(platform.clone())
        .merge(guarded)
        // The Lambda API authenticates as AWS does (SigV4), not with the bearer token.
        .merge(status_reporter::lambda_api::routes(
            status_reporter::lambda_api::LambdaApi {
                store: Arc::clone(&platform.store),
                token: platform.api_token.clone(),
                functions: Arc::new(platform),
            },
        ))
        .layer(axum::middleware::map_response(
            klambda_harness::problem::as_problem,
        ))
}

/// Where a client finds `klambda up`'s API token.
const TOKEN_HINT: &str = "`klambda` reads it from KLAMBDA_TOKEN, else from .klambda/api-token, \
                          where `klambda up` keeps it (in its --data-dir)";

/// Whether a client may send events of type `ty` through the front door: anything but what the
/// platform's stages emit (outcomes, progress) and what Kubernetes' sources report (a forged Job
/// status would be a forged build). Those reach the broker from the stages only; a recorded one
/// goes again through `replay` or `redrive`, never through the ingress.
pub fn client_may_send(ty: &str) -> bool {
    !klambda_harness::signing::must_be_signed(ty)
        && !klambda_events::external::APISERVER_EVENT_TYPES.contains(&ty)
}

async fn ingress(State(platform): State<Platform>, headers: HeaderMap, body: Bytes) -> Response {
    match codec::decode(&headers, body) {
        Ok(event) if !client_may_send(event.ty()) => ProblemDetails::new(
            StatusCode::FORBIDDEN,
            "internal-event-type",
            "Only the platform may send this event type",
            format!(
                "{} is emitted by the platform's stages; clients send requests such as \
                 function.created (docs/EVENTS.md); `klambda replay ID` sends a recorded event again",
                event.ty()
            ),
        )
        .into_response(),
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

/// `POST /events/{id}/replay`: the recorded event `id`, published again exactly as recorded (its
/// signature included, so the stage that consumes it accepts it).
async fn replay(State(platform): State<Platform>, Path(id): Path<String>) -> Response {
    match platform.store.event(&id).await {
        Ok(Some(stored)) => republish(&platform, stored.body, &[]).await,
        Ok(None) => ProblemDetails::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("no event with id {id:?} has been recorded (`klambda events NAME` lists them)"),
        )
        .into_response(),
        Err(error) => status_reporter::api::unavailable(&error),
    }
}

/// The attributes the broker adds to a dead letter; a redriven event goes without them.
const ERROR_ATTRIBUTES: [&str; 3] = ["knativeerrordest", "knativeerrorcode", "knativeerrordata"];

/// `POST /dead-letters/{seq}/redrive`: the dead letter published again without its error
/// attributes, then forgotten (a failure in between redrives it twice, which the stages
/// deduplicate, rather than losing it).
async fn redrive(State(platform): State<Platform>, Path(seq): Path<i64>) -> Response {
    let letter = match platform.store.dead_letter(seq).await {
        Ok(Some(letter)) => letter,
        Ok(None) => {
            return ProblemDetails::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                format!("no dead letter {seq} (`klambda dlq list` lists them)"),
            )
            .into_response();
        }
        Err(error) => return status_reporter::api::unavailable(&error),
    };
    let published = republish(&platform, letter.body, &ERROR_ATTRIBUTES).await;
    if published.status() != StatusCode::ACCEPTED {
        return published;
    }
    match platform.store.remove_dead_letters(Some(seq)).await {
        Ok(_) => published,
        Err(error) => status_reporter::api::unavailable(&error),
    }
}

/// Publishes a stored structured-mode event, without the extensions `drop`: `202`, or why not.
async fn republish(platform: &Platform, body: String, drop: &[&str]) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/cloudevents+json"),
    );
    let mut event = match codec::decode(&headers, Bytes::from(body)) {
        Ok(event) => event,
        Err(_) => {
            return ProblemDetails::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unreadable-record",
                "The recorded event cannot be read",
                "the stored event is not a CloudEvent",
            )
            .into_response();
        }
    };
    for name in drop {
        event.remove_extension(name);
    }
    match platform.bus.publish(event).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(error) => ProblemDetails::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "publish-failed",
            "The broker did not take the event",
            format!("{error}; nothing was published, try again"),
        )
        .into_response(),
    }
}

/// `GET /secrets`: the names of the secrets set (never their values).
async fn secret_names(State(platform): State<Platform>) -> Response {
    match platform.secrets.names() {
        Ok(names) => axum::Json(names).into_response(),
        Err(error) => secret_store_error(&error),
    }
}

/// `PUT /secrets/{name}`: sets the secret to the body (UTF-8 text), replacing it.
async fn set_secret(
    State(platform): State<Platform>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(value) = String::from_utf8(body.to_vec()) else {
        return ProblemDetails::new(
            StatusCode::BAD_REQUEST,
            "invalid-secret",
            "Invalid secret",
            "a secret value is UTF-8 text",
        )
        .into_response();
    };
    match platform.secrets.set(&name, &value) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => secret_store_error(&error),
    }
}

/// `DELETE /secrets/{name}`: `204`, or `404` when it was not set.
async fn delete_secret(State(platform): State<Platform>, Path(name): Path<String>) -> Response {
    match platform.secrets.delete(&name) {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => ProblemDetails::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("no secret named {name:?}"),
        )
        .into_response(),
        Err(error) => secret_store_error(&error),
    }
}

fn secret_store_error(error: &std::io::Error) -> Response {
    if error.kind() == std::io::ErrorKind::InvalidInput {
        ProblemDetails::new(
            StatusCode::BAD_REQUEST,
            "invalid-secret",
            "Invalid secret",
            error.to_string(),
        )
        .into_response()
    } else {
        status_reporter::api::unavailable(error)
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
/// `?limit=N` of `GET /functions/{name}/deliveries`.
#[derive(Debug, serde::Deserialize)]
struct DeliveriesQuery {
    limit: Option<usize>,
}

/// `GET /functions/{name}/deliveries`: the latest attempts of deliveries to the function from
/// this process, oldest first (`?limit=N`, default 100). A known function with none answers
/// `[]`; an unknown one 404.
async fn deliveries(
    State(platform): State<Platform>,
    Path(name): Path<String>,
    axum::extract::Query(query): axum::extract::Query<DeliveriesQuery>,
) -> Response {
    match platform.store.function(&name).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return ProblemDetails::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                format!("no function named {name:?}"),
            )
            .into_response();
        }
        Err(error) => return status_reporter::api::unavailable(&error),
    }
    let limit = query.limit.unwrap_or(100);
    axum::Json(platform.deliveries.recent(&name, limit)).into_response()
}

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
        Err(error) => return status_reporter::api::unavailable(&error),
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
