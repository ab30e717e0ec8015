//! Bearer tokens on the routes that change or reveal state: `klambda up`'s API token, the
//! webhook gateway's admin token. [`require_bearer`] is the one check, applied as a layer to the
//! routes it guards.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

use crate::problem::ProblemDetails;

/// A token to ask for, and what to tell a client that has not got it.
#[derive(Clone)]
pub struct BearerToken {
    token: Arc<str>,
    hint: &'static str,
}

impl BearerToken {
    /// Asks for `token`; `hint` says where a client finds it.
    pub fn new(token: &str, hint: &'static str) -> Self {
        Self {
            token: Arc::from(token),
            hint,
        }
    }
}

/// Lets a request through when it carries `Authorization: Bearer <token>`; anything else gets
/// `401` problem+json with `WWW-Authenticate: Bearer`, whatever it carries, so a client without
/// the token learns nothing and changes nothing.
pub async fn require_bearer(
    State(expected): State<BearerToken>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if presented.is_some_and(|p| same_secret(p.as_bytes(), expected.token.as_bytes())) {
        return next.run(request).await;
    }
    let mut response = ProblemDetails::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "A token is required",
        format!(
            "send it as `Authorization: Bearer <token>`; {}",
            expected.hint
        ),
    )
    .into_response();
    response.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"klambda\""),
    );
    response
}

/// Compares two secrets in time that depends on their lengths only.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
