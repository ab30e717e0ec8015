//! RFC 7807 problem details: every 4xx and 5xx the harness answers carries one.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{CONTENT_TYPE, HeaderValue};
use klambda_events::data::Problem;
use serde::Serialize;

/// The media type of a problem body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 7807 problem document with the list of individual problems as an extension member.
#[derive(Debug, Clone, Serialize)]
pub struct ProblemDetails {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened in this case and what to do.
    pub detail: String,
    /// Every individual problem, located by field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

impl ProblemDetails {
    /// A problem of kind `slug` (appended to `urn:knative-lambda:problem:`).
    pub fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:knative-lambda:problem:{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            problems: Vec::new(),
        }
    }

    /// Adds the individual problems.
    pub fn with_problems(mut self, problems: Vec<Problem>) -> Self {
        self.problems = problems;
        self
    }
}

impl IntoResponse for ProblemDetails {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

/// Turns an error answered as text (what axum's extractors answer: a body
/// over the limit, a query that does not parse, an unknown route or method) into a problem
/// document with the same status, its text as the detail and its other headers kept (`Allow`,
/// `Retry-After`, `WWW-Authenticate`). Every router serves through it
/// (`axum::middleware::map_response`), so no error body is ever plain text.
pub async fn as_problem(response: Response) -> Response {
    let status = response.status();
    // A JSON answer (a problem document, or a route's own such as a readiness report) is what
    // its route meant; only text and empty bodies are wrapped.
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.to_str().is_ok_and(|t| t.contains("json")));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let slug = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body-too-large",
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        status if status.is_client_error() => "bad-request",
        _ => "internal",
    };
    let title = status.canonical_reason().unwrap_or("Error");
    let detail = match String::from_utf8_lossy(&text).trim() {
        "" => title.to_owned(),
        text => text.to_owned(),
    };
    let mut problem = ProblemDetails::new(status, slug, title, detail).into_response();
    parts.headers.remove(http::header::CONTENT_LENGTH);
    parts.headers.remove(CONTENT_TYPE);
    problem.headers_mut().extend(parts.headers);
    problem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn plain_errors_become_problem_documents_and_keep_their_headers() {
        let plain = (
            StatusCode::PAYLOAD_TOO_LARGE,
            [(http::header::RETRY_AFTER, "5")],
            "length limit exceeded",
        )
            .into_response();
        let answer = as_problem(plain).await;
        assert_eq!(answer.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(answer.headers()[CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(answer.headers()[http::header::RETRY_AFTER], "5");
        let body = axum::body::to_bytes(answer.into_body(), 4096)
            .await
            .unwrap();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["type"], "urn:knative-lambda:problem:body-too-large");
        assert_eq!(problem["detail"], "length limit exceeded");
        assert_eq!(problem["status"], 413);

        let fine = (StatusCode::OK, "ok").into_response();
        assert_eq!(
            as_problem(fine).await.headers()[CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }
}
