//! The HTTP face: `POST /buildkite` and `POST /github` verify, validate, transform and publish;
//! `GET /health`. Every answer carries security headers; errors are RFC 7807 problem details.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use cloudevents::AttributesReader as _;
use http::{HeaderMap, HeaderValue, StatusCode};
use klambda_harness::auth::{BearerToken, require_bearer};
use klambda_harness::config::Secret;
use klambda_harness::problem::ProblemDetails;
use klambda_harness::publisher::Publisher;

use crate::auth::{self, AuthError, BuildkiteSecrets};
use crate::limit::{Limiter, RateLimit};
use crate::metrics::Metrics;
use crate::outbox::{Outbox, Outcome, Policy};
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
    /// Retries and the circuit breaker.
    pub policy: Policy,
    /// Where events that could not be published are kept.
    pub dead_letter_dir: PathBuf,
    /// Authenticated requests per source.
    pub rate_limit: RateLimit,
    /// Requests that fail authentication, per client address.
    pub unauthenticated_rate_limit: RateLimit,
    /// The bearer token of the admin routes (dead letters, redrive); without one they are not
    /// served.
    pub admin_token: Option<Secret>,
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
            policy: Policy::default(),
            dead_letter_dir: PathBuf::from("klambda-webhook-dead-letters"),
            rate_limit: RateLimit::default(),
            unauthenticated_rate_limit: RateLimit::UNAUTHENTICATED,
            admin_token: None,
        }
    }
}

#[derive(Clone)]
struct Gateway {
    config: Arc<Config>,
    outbox: Arc<Outbox>,
    limiter: Arc<Limiter>,
    metrics: Arc<Metrics>,
}

/// The gateway's routes, publishing into `publisher` (the broker ingress).
pub fn router(config: Config, publisher: Arc<dyn Publisher>) -> Router {
    let limit = config.body_limit;
    let metrics = Arc::new(Metrics::default());
    let outbox = Outbox::new(
        publisher,
        config.policy.clone(),
        config.dead_letter_dir.clone(),
        Arc::clone(&metrics),
    );
    let gateway = Gateway {
        metrics,
        limiter: Arc::new(Limiter::new(
            config.rate_limit,
            config.unauthenticated_rate_limit,
        )),
        config: Arc::new(config),
        outbox: Arc::new(outbox),
    };
    // The admin routes reveal and re-send what the gateway received: served only with a token
    // of their own, which they then ask for.
    let admin = gateway.config.admin_token.clone().map(|token| {
        Router::new()
            .route("/dead-letters", get(dead_letters))
            .route("/dead-letters/redrive", post(redrive))
            .layer(axum::middleware::from_fn_with_state(
                BearerToken::new(token.expose(), ADMIN_HINT),
                require_bearer,
            ))
            .with_state(gateway.clone())
    });
    let routes = Router::new()
        .route("/buildkite", post(buildkite))
        .route("/github", post(github))
        .route("/ready", get(ready))
        .route("/metrics", get(scrape))
        .route(
            "/openapi.json",
            get(|| async { axum::Json(crate::openapi::document()) }),
        )
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({"status": "alive"})) }),
        )
        .with_state(gateway);
    admin
        .into_iter()
        .fold(routes, Router::merge)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(
            klambda_harness::problem::as_problem,
        ))
        .layer(axum::middleware::map_response(security_headers))
}

/// Where a client finds the admin token.
const ADMIN_HINT: &str = "the gateway's admin token is KLAMBDA_WEBHOOK_ADMIN_TOKEN \
                          (`klambda webhooks` reads it from the same variable)";

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

fn too_many(origin: Origin, wait: Duration) -> Response {
    let mut response = ProblemDetails::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        "Too many webhooks",
        format!(
            "{} webhooks are arriving faster than the gateway's limit",
            origin.name()
        ),
    )
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
        response.headers_mut().insert("retry-after", value);
    }
    response
}

/// The client's address, when the server knows it.
fn client_of(extensions: &http::Extensions) -> Option<std::net::IpAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip())
}

/// Authentication first, then the bucket the outcome says: a delivery that failed
/// authentication takes from its client's small bucket (429 once empty, else 401); a genuine
/// one from its source's. `None`: go on.
fn admit(
    gateway: &Gateway,
    origin: Origin,
    counted: &str,
    authenticated: Result<(), AuthError>,
    extensions: &http::Extensions,
) -> Option<Response> {
    if let Err(error) = authenticated {
        gateway.metrics.auth_failure(origin);
        if let Err(wait) = gateway.limiter.take_unauthenticated(client_of(extensions)) {
            gateway.metrics.request(origin, counted, "rate_limited");
            return Some(too_many(origin, wait));
        }
        gateway.metrics.request(origin, counted, "unauthenticated");
        return Some(unauthorized(origin, &error));
    }
    if let Err(wait) = gateway.limiter.take(origin) {
        gateway.metrics.request(origin, counted, "rate_limited");
        return Some(too_many(origin, wait));
    }
    None
}

async fn buildkite(
    State(gateway): State<Gateway>,
    extensions: http::Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let origin = Origin::Buildkite;
    let event = headers
        .get("x-buildkite-event")
        .and_then(|v| v.to_str().ok());
    let counted = event.unwrap_or("other");
    let authenticated = auth::buildkite(&headers, &body, &gateway.config.buildkite, now());
    if let Some(refused) = admit(&gateway, origin, counted, authenticated, &extensions) {
        return refused;
    }
    let Some(event) = event else {
        gateway.metrics.request(origin, counted, "invalid");
        return missing_header("X-Buildkite-Event");
    };
    forward(&gateway, Origin::Buildkite, event, &body, None).await
}

async fn github(
    State(gateway): State<Gateway>,
    extensions: http::Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let origin = Origin::GitHub;
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let counted = text("x-github-event").unwrap_or("other");
    let authenticated = auth::github(&headers, &body, gateway.config.github_secret.as_ref());
    if let Some(refused) = admit(&gateway, origin, counted, authenticated, &extensions) {
        return refused;
    }
    let Some(event) = text("x-github-event") else {
        gateway.metrics.request(origin, counted, "invalid");
        return missing_header("X-GitHub-Event");
    };
    let Some(delivery) = text("x-github-delivery").filter(|d| !d.is_empty()) else {
        gateway.metrics.request(origin, counted, "invalid");
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
            gateway.metrics.request(origin, event, "invalid");
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
    let mut outcome = gateway.outbox.publish(cloud_event).await;
    let mut fired = Vec::new();
    for update in updates {
        if matches!(outcome, Outcome::Refused { .. }) {
            break;
        }
        fired.push(update.subject().unwrap_or_default().to_owned());
        outcome = gateway.outbox.publish(update).await;
    }
    match outcome {
        Outcome::Published | Outcome::DeadLettered { .. } => {
            let dead_lettered = matches!(outcome, Outcome::DeadLettered { .. });
            let counted = if dead_lettered {
                "dead_lettered"
            } else {
                "published"
            };
            gateway.metrics.request(origin, event, counted);
            tracing::info!(source = origin.name(), event, delivery = %id, updated = ?fired, dead_lettered, "forwarded");
            (
                StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({
                    "id": id, "type": ty, "updated": fired, "deadLettered": dead_lettered,
                })),
            )
                .into_response()
        }
        Outcome::Refused { retry_after } => {
            gateway.metrics.request(origin, event, "refused");
            tracing::warn!(source = origin.name(), event, delivery = %id, "refused: the breaker is open");
            let mut response = ProblemDetails::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker-unavailable",
                "The broker is unavailable",
                "the gateway is not publishing while the broker recovers; send the webhook again later",
            )
            .into_response();
            let seconds = retry_after.as_secs().max(1).to_string();
            if let Ok(value) = HeaderValue::from_str(&seconds) {
                response.headers_mut().insert("retry-after", value);
            }
            response
        }
    }
}

/// `GET /metrics`: the breaker and dead-letter gauges are read now, the rest is counted as it
/// happens.
async fn scrape(State(gateway): State<Gateway>) -> Response {
    let breaker = match gateway.outbox.breaker() {
        "closed" => 0,
        "half-open" => 1,
        _ => 2,
    };
    gateway.metrics.breaker.set(breaker);
    if let Ok(count) = gateway.outbox.dead_letter_count() {
        gateway
            .metrics
            .dead_letters
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gateway.metrics.encode(),
    )
        .into_response()
}

/// `GET /ready`: 503 while the breaker is open (the broker is failing).
async fn ready(State(gateway): State<Gateway>) -> Response {
    let breaker = gateway.outbox.breaker();
    let status = if breaker == "open" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, axum::Json(serde_json::json!({"breaker": breaker}))).into_response()
}

/// `GET /dead-letters`: events that could not be published, oldest first.
async fn dead_letters(State(gateway): State<Gateway>) -> Response {
    match gateway.outbox.dead_letters() {
        Ok(letters) => axum::Json(letters).into_response(),
        Err(error) => ProblemDetails::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "dead-letter-store",
            "The dead-letter store cannot be read",
            error.to_string(),
        )
        .into_response(),
    }
}

#[derive(serde::Deserialize)]
struct Only {
    id: Option<String>,
}

/// `POST /dead-letters/redrive[?id=ID]`: publishes them again; answers how many went.
async fn redrive(State(gateway): State<Gateway>, Query(only): Query<Only>) -> Response {
    match gateway.outbox.redrive(only.id.as_deref()).await {
        Ok(redriven) => axum::Json(serde_json::json!({"redriven": redriven})).into_response(),
        Err(reason) => ProblemDetails::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "redrive-failed",
            "Redrive stopped",
            reason,
        )
        .into_response(),
    }
}
