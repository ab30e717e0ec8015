//! The AWS Lambda path: API Gateway (HTTP API, payload 2.0) and ALB requests parsed by
//! `lambda_http`'s own request types, served by the same router `lambda_http::run` serves.

use anyhow::Result;
use cloudevents::{AttributesReader, Event};
use http_body_util::BodyExt as _;
use klambda_events::Stage;
use klambda_harness::{Context, Handler, HandlerError, Harness, Outcome};
use serde_json::json;
use tower::ServiceExt as _;

struct Done;

impl Handler for Done {
    fn stage(&self) -> Stage {
        Stage::StatusReporter
    }
    fn accepts(&self, _: &str) -> bool {
        true
    }
    async fn handle(&self, event: Event, _: &Context) -> Result<Outcome, HandlerError> {
        if event.id() == "bad" {
            return Err(HandlerError::Internal("boom".into()));
        }
        Ok(Outcome::Done)
    }
}

fn api_gateway_v2(id: &str, body: &str, base64: bool) -> String {
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/",
        "rawQueryString": "",
        "headers": {
            "ce-specversion": "1.0", "ce-id": id, "ce-source": "/lambda", "ce-type": "test.lambda",
            "content-type": "application/json", "host": "abc.lambda-url.eu-west-1.on.aws"
        },
        "requestContext": {
            "accountId": "123456789012", "apiId": "abc", "domainName": "abc.lambda-url.eu-west-1.on.aws",
            "domainPrefix": "abc", "requestId": "r-1", "routeKey": "$default", "stage": "$default",
            "time": "23/Nov/2026:10:00:00 +0000", "timeEpoch": 1795000000000u64,
            "http": {"method": "POST", "path": "/", "protocol": "HTTP/1.1", "sourceIp": "203.0.113.1", "userAgent": "test"}
        },
        "body": body,
        "isBase64Encoded": base64
    })
    .to_string()
}

async fn status_of(payload: &str) -> Result<(u16, bytes::Bytes)> {
    let request = lambda_http::request::from_str(payload)?;
    let router = Harness::new(Done).router();
    let response = router.oneshot(request).await?;
    let status = response.status().as_u16();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

#[tokio::test]
async fn api_gateway_requests_reach_the_handler() -> Result<()> {
    assert_eq!(
        status_of(&api_gateway_v2("ok", "{\"a\":1}", false))
            .await?
            .0,
        202
    );
    // Base64 bodies (binary-safe API Gateway integrations) decode the same way.
    assert_eq!(
        status_of(&api_gateway_v2("ok", "eyJhIjoxfQ==", true))
            .await?
            .0,
        202
    );
    assert_eq!(status_of(&api_gateway_v2("bad", "{}", false)).await?.0, 500);
    let (status, body) = status_of(&api_gateway_v2("", "{}", false)).await?;
    assert_eq!(status, 400);
    let problem: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(problem["problems"][0]["field"], "id");
    Ok(())
}
