//! The HTTP face: `POST /buildkite` and `POST /github` verify, validate, transform and publish;
//! `GET /health`. Every answer carries security headers; errors are RFC 7807 problem details.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use cloudevents::AttributesReader as _;
use http::{HeaderMap, HeaderValue, StatusCode};
use klambda_harness::config::Secret;
use klambda_harness::problem::ProblemDetails;
use klambda_harness::publisher::Publisher;

use crate::auth::{self, AuthError, BuildkiteSecrets};
use crate::rules::Rules;
use crate::sources::{Origin, to_event};

/// How the gateway is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Buildkite's token and/or signing key.
    pub buildkite: BuildkiteSecrets,
    /// GitHub's webhook secret.
    pub github_secret: Option<Secret>,
    /// Larger bodies are refused with 413.
    pub body_limit: usize,
    /// What passed builds update.
    pub rules: Rules,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            buildkite: BuildkiteSecrets {
                tolerance: Duration::from_secs(300),
                ..BuildkiteSecrets::default()
            },
            github_secret: None,
            body_limit: 1024 * 1024,
            rules: Rules::default(),
        }
    }
}

#[derive(Clone)]
struct Gateway {
    config: Arc<Config>,
    publisher: Arc<dyn Publisher>,
}

/// The gateway's routes, publishing into `publisher` (the broker ingress).
pub fn router(config: Config, publisher: Arc<dyn Publisher>) -> Router {
    let limit = config.body_limit;
    let gateway = Gateway {
        config: Arc::new(config),
        publisher,
    };
    Router::new()
        .route("/buildkite", post(buildkite))
        .route("/github", post(github))
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({"status": "alive"})) }),
        )
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(gateway)
}

/// Headers every answer carries: nothing here is meant for a browser to render or cache.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("cache-control", "no-store"),
        (
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'",
        ),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn unauthorized(origin: Origin, error: &AuthError) -> Response {
    tracing::warn!(source = origin.name(), %error, "webhook refused: authentication");
    ProblemDetails::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated-webhook",
        "Webhook not authenticated",
        error.to_string(),
    )
    .into_response()
}

fn missing_header(name: &str) -> Response {
    ProblemDetails::new(
        StatusCode::BAD_REQUEST,
        "missing-header",
        "Missing header",
        format!("the {name} header is required"),
    )
    .into_response()
}

async fn buildkite(State(gateway): State<Gateway>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(error) = auth::buildkite(&headers, &body, &gateway.config.buildkite, now()) {
        return unauthorized(Origin::Buildkite, &error);
    }
    let Some(event) = headers
        .get("x-buildkite-event")
        .and_then(|v| v.to_str().ok())
    else {
        return missing_header("X-Buildkite-Event");
    };
    forward(&gateway, Origin::Buildkite, event, &body, None).await
}

async fn github(State(gateway): State<Gateway>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(error) = auth::github(&headers, &body, gateway.config.github_secret.as_ref()) {
        return unauthorized(Origin::GitHub, &error);
    }
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(event) = text("x-github-event") else {
        return missing_header("X-GitHub-Event");
    };
    let Some(delivery) = text("x-github-delivery").filter(|d| !d.is_empty()) else {
        return missing_header("X-GitHub-Delivery");
    };
    forward(&gateway, Origin::GitHub, event, &body, Some(delivery)).await
}

async fn forward(
    gateway: &Gateway,
    origin: Origin,
    event: &str,
    body: &[u8],
    delivery: Option<&str>,
) -> Response {
    let cloud_event = match to_event(origin, event, body, delivery) {
        Ok(cloud_event) => cloud_event,
        Err(problems) => {
            return ProblemDetails::new(
                StatusCode::BAD_REQUEST,
                "invalid-webhook",
                "Invalid webhook payload",
                format!("the {} {event} payload has problems", origin.name()),
            )
            .with_problems(problems)
            .into_response();
        }
    };
    let id = cloud_event.id().to_owned();
    let ty = cloud_event.ty().to_owned();
    // The rules' updates go after the webhook's own event; a redelivery re-sends both with the
    // same ids, so a failure part-way is repaired by the sender's retry.
    let updates = gateway.config.rules.fire(&cloud_event);
    let mut published = gateway.publisher.publish(cloud_event).await;
    let mut fired = Vec::new();
    for update in updates {
        if published.is_err() {
            break;
        }
        fired.push(update.subject().unwrap_or_default().to_owned());
        published = gateway.publisher.publish(update).await;
    }
    match published {
        Ok(()) => {
            tracing::info!(source = origin.name(), event, delivery = %id, updated = ?fired, "forwarded");
            (
                StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({"id": id, "type": ty, "updated": fired})),
            )
                .into_response()
        }
        Err(error) => {
            tracing::error!(source = origin.name(), event, delivery = %id, %error, "publish failed");
            let mut response = ProblemDetails::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker-unavailable",
                "The broker did not take the event",
                format!("{error}; send the webhook again"),
            )
            .into_response();
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("5"));
            response
        }
    }
}
