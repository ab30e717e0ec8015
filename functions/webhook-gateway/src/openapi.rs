//! The OpenAPI 3.1 document served at `/openapi.json`: what a CI administrator needs to point
//! webhooks here and read the answers. A test checks that every path it lists is served.

use serde_json::{Value, json};

/// The document.
pub fn document() -> Value {
    let problem = json!({"$ref": "#/components/schemas/Problem"});
    let problem_response = |description: &str| json!({"description": description, "content": {"application/problem+json": {"schema": problem}}});
    let accepted = json!({
        "description": "Verified and published (or kept in the dead letters, deadLettered: true)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}
    });
    let webhook_responses = json!({
        "202": accepted,
        "400": problem_response("Missing event header, or a payload with problems (each listed)"),
        "401": problem_response("Not authenticated"),
        "413": {"description": "The body is larger than the limit"},
        "429": problem_response("Rate limited; see Retry-After"),
        "503": problem_response("The broker is unavailable (circuit breaker open); see Retry-After"),
    });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "knative-lambda webhook gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Buildkite and GitHub webhooks in, verified CloudEvents (com.buildkite.<event>, com.github.<event>) onto the broker."
        },
        "paths": {
            "/buildkite": {"post": {
                "summary": "A Buildkite webhook",
                "parameters": [
                    {"name": "X-Buildkite-Event", "in": "header", "required": true, "schema": {"type": "string"}, "example": "build.finished"},
                    {"name": "X-Buildkite-Token", "in": "header", "schema": {"type": "string"}},
                    {"name": "X-Buildkite-Signature", "in": "header", "schema": {"type": "string"}, "example": "timestamp=1700000000,signature=<hex HMAC-SHA256 of timestamp.body>"}
                ],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": webhook_responses.clone()
            }},
            "/github": {"post": {
                "summary": "A GitHub webhook",
                "parameters": [
                    {"name": "X-GitHub-Event", "in": "header", "required": true, "schema": {"type": "string"}, "example": "push"},
                    {"name": "X-GitHub-Delivery", "in": "header", "required": true, "schema": {"type": "string"}},
                    {"name": "X-Hub-Signature-256", "in": "header", "required": true, "schema": {"type": "string"}, "example": "sha256=<hex HMAC-SHA256 of the body>"}
                ],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": webhook_responses
            }},
            "/dead-letters": {"get": {
                "summary": "Events that could not be published, oldest first",
                "responses": {"200": {"description": "The dead letters", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/DeadLetter"}}}}}}
            }},
            "/dead-letters/redrive": {"post": {
                "summary": "Publish dead letters again (all, or ?id=)",
                "parameters": [{"name": "id", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "How many went", "content": {"application/json": {"schema": {"type": "object", "properties": {"redriven": {"type": "integer"}}}}}}, "503": problem_response("Stopped: the broker still fails")}
            }},
            "/health": {"get": {"summary": "Alive", "responses": {"200": {"description": "Alive"}}}},
            "/ready": {"get": {"summary": "Ready unless the circuit breaker is open", "responses": {"200": {"description": "Ready"}, "503": {"description": "The breaker is open"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (OpenMetrics text)", "responses": {"200": {"description": "Metrics"}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}}
        },
        "components": {"schemas": {
            "Problem": {"type": "object", "description": "RFC 7807 problem details", "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"},
                "problems": {"type": "array", "items": {"type": "object", "properties": {"field": {"type": "string"}, "reason": {"type": "string"}}}}
            }},
            "Accepted": {"type": "object", "properties": {
                "id": {"type": "string", "description": "The CloudEvent id (the delivery id)"},
                "type": {"type": "string"},
                "updated": {"type": "array", "items": {"type": "string"}, "description": "Functions a rule updated"},
                "deadLettered": {"type": "boolean"}
            }},
            "DeadLetter": {"type": "object", "properties": {
                "id": {"type": "string"}, "event": {"type": "object"}, "reason": {"type": "string"},
                "attempts": {"type": "integer"}, "receivedAt": {"type": "string", "format": "date-time"}
            }}
        }}
    })
}
