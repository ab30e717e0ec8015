//! The gateway over real HTTP, with signatures computed here from known secrets: tokens, HMAC
//! signatures, wrong and stale ones, missing headers, unknown events (forwarded as they are),
//! malformed and incomplete payloads, oversize bodies, delivery-id dedupe, GitHub pushes, a
//! broker that is down, and the security headers.

use klambda_events::EventType as _;
use std::sync::Arc;

use anyhow::Result;
use cloudevents::{AttributesReader as _, Event};
use hmac::{KeyInit as _, Mac as _};
use klambda_harness::config::Secret;
use klambda_harness::publisher::{BoxFuture, Memory, PublishError, Publisher};
use klambda_test_support::http::{Reply, TestServer, post};
use webhook_gateway::Config;

const TOKEN: &str = "bk-token-123";
const SIGNING_KEY: &str = "bk-signing-key";
const GITHUB_SECRET: &str = "gh-secret";

fn config() -> Config {
    let mut config = Config::default();
    config.buildkite.token = Some(Secret::new(TOKEN));
    config.buildkite.signing_key = Some(Secret::new(SIGNING_KEY));
    config.github_secret = Some(Secret::new(GITHUB_SECRET));
    config.admin_token = Some(Secret::new(ADMIN_TOKEN));
    config.body_limit = 64 * 1024;
    config
}

const ADMIN_TOKEN: &str = "gateway-admin-token";
const ADMIN: (&str, &str) = ("authorization", "Bearer gateway-admin-token");

async fn start(publisher: Arc<dyn Publisher>) -> Result<TestServer> {
    TestServer::start(webhook_gateway::router(config(), publisher)).await
}

fn hmac_hex(key: &str, parts: &[&[u8]]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn build_finished(state: &str) -> String {
    serde_json::json!({
        "event": "build.finished",
        "build": {
            "id": "01890b6a-1111-2222-3333-444455556666", "number": 42, "state": state,
            "branch": "main", "commit": "3f2a9c1e0b7d5a6c4e8f9a0b1c2d3e4f5a6b7c8d",
            "message": "Fix the thing", "web_url": "https://buildkite.com/acme/app/builds/42",
            "author": {"name": "Ada"}, "created_at": "2026-11-23T10:00:00Z",
            "started_at": "2026-11-23T10:00:05Z", "finished_at": "2026-11-23T10:03:00Z"
        },
        "pipeline": {"slug": "app", "web_url": "https://buildkite.com/acme/app"},
        "sender": {"name": "Ada"}
    })
    .to_string()
}

async fn buildkite(
    server: &TestServer,
    event: &str,
    auth: &[(&str, String)],
    body: &str,
) -> Result<Reply> {
    let mut headers: Vec<(&str, &str)> = vec![
        ("content-type", "application/json"),
        ("x-buildkite-event", event),
    ];
    for (name, value) in auth {
        headers.push((name, value));
    }
    post(&server.url("/buildkite"), &headers, body.to_owned()).await
}

/// Credential headers of one request.
type Auth = Vec<(&'static str, String)>;

fn token() -> Auth {
    vec![("x-buildkite-token", TOKEN.to_owned())]
}

fn signed(body: &str, at: i64, key: &str) -> Auth {
    let signature = hmac_hex(key, &[at.to_string().as_bytes(), b".", body.as_bytes()]);
    vec![(
        "x-buildkite-signature",
        format!("timestamp={at},signature={signature}"),
    )]
}

fn problem_detail(reply: &Reply) -> String {
    reply.json().map(|p| p.to_string()).unwrap_or_default()
}

#[tokio::test]
async fn a_build_finished_webhook_becomes_a_compact_cloudevent() -> Result<()> {
    let memory = Memory::default();
    let server = start(Arc::new(memory.clone())).await?;
    let body = build_finished("passed");
    for auth in [token(), signed(&body, now(), SIGNING_KEY)] {
        let reply = buildkite(&server, "build.finished", &auth, &body).await?;
        assert_eq!(reply.status, 202, "{}", problem_detail(&reply));
        assert_eq!(reply.json()?["type"], "com.buildkite.build.finished");
    }
    let events: Vec<Event> = memory.events();
    assert_eq!(events.len(), 2);
    let event = &events[0];
    assert_eq!(event.ty(), "com.buildkite.build.finished");
    assert_eq!(event.source().to_string(), "https://buildkite.com/acme/app");
    assert_eq!(event.subject(), Some("42"));
    let data: serde_json::Value = match event.data() {
        Some(cloudevents::Data::Json(value)) => value.clone(),
        other => panic!("JSON data expected, got {other:?}"),
    };
    assert_eq!(data["pipeline"], "app");
    assert_eq!(data["state"], "passed");
    assert_eq!(data["branch"], "main");
    assert_eq!(data["commit"], "3f2a9c1e0b7d5a6c4e8f9a0b1c2d3e4f5a6b7c8d");
    assert_eq!(data["author"], "Ada");
    assert_eq!(data["finishedAt"], "2026-11-23T10:03:00Z");
    // The same webhook delivered again is the same event: it dedupes downstream.
    assert_eq!(events[0].id(), events[1].id());
    Ok(())
}

#[tokio::test]
async fn webhooks_that_are_not_authentic_get_401() -> Result<()> {
    let memory = Memory::default();
    let server = start(Arc::new(memory.clone())).await?;
    let body = build_finished("passed");
    let cases: Vec<(&str, Auth, &str)> = vec![
        (
            "no credential",
            vec![],
            "no X-Buildkite-Signature or X-Buildkite-Token",
        ),
        (
            "wrong token",
            vec![("x-buildkite-token", "nope".into())],
            "X-Buildkite-Token does not match",
        ),
        (
            "wrong key",
            signed(&body, now(), "another key"),
            "X-Buildkite-Signature does not match",
        ),
        (
            "stale",
            signed(&body, now() - 3600, SIGNING_KEY),
            "timestamp is",
        ),
        (
            "future",
            signed(&body, now() + 3600, SIGNING_KEY),
            "timestamp is",
        ),
        (
            "malformed",
            vec![("x-buildkite-signature", "sha256=abc".into())],
            "malformed",
        ),
        (
            "body changed after signing",
            signed(&build_finished("failed"), now(), SIGNING_KEY),
            "does not match",
        ),
    ];
    for (case, auth, needle) in cases {
        let reply = buildkite(&server, "build.finished", &auth, &body).await?;
        assert_eq!(reply.status, 401, "{case}");
        assert_eq!(
            reply.header("content-type"),
            "application/problem+json",
            "{case}"
        );
        assert!(
            problem_detail(&reply).contains(needle),
            "{case}: {}",
            problem_detail(&reply)
        );
    }
    assert!(
        memory.events().is_empty(),
        "nothing unauthenticated is published"
    );
    Ok(())
}

#[tokio::test]
async fn bad_payloads_get_400_listing_every_field() -> Result<()> {
    let memory = Memory::default();
    let server = start(Arc::new(memory.clone())).await?;
    let incomplete =
        serde_json::json!({"build": {"number": "forty-two", "branch": ""}, "pipeline": {}})
            .to_string();
    let reply = buildkite(&server, "build.finished", &token(), &incomplete).await?;
    assert_eq!(reply.status, 400);
    let problems = reply.json()?["problems"].clone();
    let fields: Vec<&str> = problems
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["field"].as_str())
        .collect();
    for field in [
        "pipeline.slug",
        "build.number",
        "build.id",
        "build.state",
        "build.branch",
        "build.commit",
    ] {
        assert!(fields.contains(&field), "{field} not in {fields:?}");
    }
    let malformed = buildkite(&server, "build.finished", &token(), "{not json").await?;
    assert_eq!(malformed.status, 400);
    assert!(problem_detail(&malformed).contains("not valid JSON"));
    let no_event = post(
        &server.url("/buildkite"),
        &[("x-buildkite-token", TOKEN)],
        build_finished("passed"),
    )
    .await?;
    assert_eq!(no_event.status, 400);
    assert!(problem_detail(&no_event).contains("X-Buildkite-Event"));
    let oversize = buildkite(&server, "build.finished", &token(), &"x".repeat(100 * 1024)).await?;
    assert_eq!(oversize.status, 413);
    assert!(memory.events().is_empty());
    Ok(())
}

#[tokio::test]
async fn unknown_events_are_forwarded_as_they_are() -> Result<()> {
    let memory = Memory::default();
    let server = start(Arc::new(memory.clone())).await?;
    let body = r#"{"event":"cluster.token.created","token":{"id":"t1"}}"#;
    let reply = buildkite(&server, "cluster.token.created", &token(), body).await?;
    assert_eq!(reply.status, 202, "{}", problem_detail(&reply));
    let event = &memory.events()[0];
    assert_eq!(event.ty(), "com.buildkite.cluster.token.created");
    let bad_name = buildkite(&server, "Build Finished!", &token(), body).await?;
    assert_eq!(bad_name.status, 400);
    Ok(())
}

#[tokio::test]
async fn github_pushes_are_verified_and_keep_their_delivery_id() -> Result<()> {
    let memory = Memory::default();
    let server = start(Arc::new(memory.clone())).await?;
    let body = serde_json::json!({
        "ref": "refs/heads/main", "after": "9b2c0e1", "compare": "https://github.com/acme/app/compare/a...b",
        "repository": {"full_name": "acme/app", "html_url": "https://github.com/acme/app"},
        "pusher": {"name": "ada"}, "head_commit": {"message": "Ship it", "timestamp": "2026-11-23T10:00:00Z"}
    })
    .to_string();
    let signature = format!("sha256={}", hmac_hex(GITHUB_SECRET, &[body.as_bytes()]));
    let send = |signature: String, delivery: &'static str| {
        let url = server.url("/github");
        let body = body.clone();
        async move {
            post(
                &url,
                &[
                    ("x-github-event", "push"),
                    ("x-github-delivery", delivery),
                    ("x-hub-signature-256", signature.as_str()),
                ],
                body,
            )
            .await
        }
    };
    let reply = send(signature.clone(), "72d3162e-cc78-11e3-81ab-4c9367dc0958").await?;
    assert_eq!(reply.status, 202, "{}", problem_detail(&reply));
    let event = &memory.events()[0];
    assert_eq!(event.id(), "72d3162e-cc78-11e3-81ab-4c9367dc0958");
    assert_eq!(event.ty(), "com.github.push");
    assert_eq!(event.subject(), Some("refs/heads/main"));
    assert_eq!(event.source().to_string(), "https://github.com/acme/app");
    let wrong = send(format!("sha256={}", "0".repeat(64)), "d-2").await?;
    assert_eq!(wrong.status, 401);
    let no_delivery = post(
        &server.url("/github"),
        &[
            ("x-github-event", "push"),
            ("x-hub-signature-256", signature.as_str()),
        ],
        body.clone(),
    )
    .await?;
    assert_eq!(no_delivery.status, 400);
    assert!(problem_detail(&no_delivery).contains("X-GitHub-Delivery"));
    Ok(())
}

/// A broker that can be switched off; what it takes goes into `taken`.
#[derive(Clone, Default)]
struct Switch {
    down: Arc<std::sync::atomic::AtomicBool>,
    taken: Memory,
}

impl Publisher for Switch {
    fn publish(&self, event: Event) -> BoxFuture<'_, Result<(), PublishError>> {
        let down = self.down.load(std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            if down {
                return Err(PublishError::Unreachable {
                    sink: "http://broker".into(),
                    reason: "connection refused".into(),
                });
            }
            self.taken.publish(event).await
        })
    }
    fn ready(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn the_breaker_opens_on_failures_dead_letters_are_kept_and_redriven() -> Result<()> {
    let broker = Switch::default();
    broker.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("klambda-webhook-dlq-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = config();
    config.dead_letter_dir = dir.clone();
    config.policy = webhook_gateway::outbox::Policy {
        attempts: 2,
        backoff: std::time::Duration::from_millis(10),
        failure_threshold: 2,
        open_for: std::time::Duration::from_millis(300),
    };
    let server =
        TestServer::start(webhook_gateway::router(config, Arc::new(broker.clone()))).await?;
    let body =
        |n: u64| build_finished("passed").replace("\"number\":42", &format!("\"number\":{n}"));
    // Two failures in a row: both kept as dead letters (202: the gateway has them)...
    for n in [1, 2] {
        let reply = buildkite(&server, "build.finished", &token(), &body(n)).await?;
        assert_eq!(reply.status, 202, "{}", problem_detail(&reply));
        assert_eq!(reply.json()?["deadLettered"], true);
    }
    // ...and the breaker is open: refused at once, with Retry-After, and /ready says so.
    let refused = buildkite(&server, "build.finished", &token(), &body(3)).await?;
    assert_eq!(refused.status, 503);
    assert!(!refused.header("retry-after").is_empty());
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("cache-control", "no-store"),
        ("x-frame-options", "DENY"),
    ] {
        assert_eq!(refused.header(name), value, "{name}");
    }
    let ready = klambda_test_support::http::get(&server.url("/ready")).await?;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()?["breaker"], "open");
    let letters = klambda_test_support::http::get_with(&server.url("/dead-letters"), &[ADMIN])
        .await?
        .json()?;
    let letters = letters.as_array().cloned().unwrap_or_default();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["attempts"], 2);
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("connection refused")
    );
    assert!(letters[0]["receivedAt"].is_string());
    assert_eq!(letters[0]["event"]["subject"], "1");

    // The broker recovers; after open_for one probe closes the breaker.
    broker
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(350)).await;
    let probe = buildkite(&server, "build.finished", &token(), &body(4)).await?;
    assert_eq!(probe.status, 202);
    assert_eq!(probe.json()?["deadLettered"], false);
    let ready = klambda_test_support::http::get(&server.url("/ready")).await?;
    assert_eq!(ready.json()?["breaker"], "closed");

    // Redrive: the kept events reach the broker, in order, and leave the store.
    let redriven = post(&server.url("/dead-letters/redrive"), &[ADMIN], "").await?;
    assert_eq!(redriven.json()?["redriven"], 2);
    let subjects: Vec<String> = broker
        .taken
        .events()
        .iter()
        .map(|e| e.subject().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(subjects, ["4", "1", "2"]);
    let left = klambda_test_support::http::get_with(&server.url("/dead-letters"), &[ADMIN])
        .await?
        .json()?;
    assert_eq!(left, serde_json::json!([]));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

const RULES: &str = r#"{"rules": [{
  "name": "deploy-app",
  "type": "com.buildkite.build.finished",
  "match": {"pipeline": "app", "branch": "main", "state": "passed"},
  "function": {"name": "app", "runtime": "nodejs22", "handler": "index.handler",
               "source": {"kind": "git", "url": "https://github.com/acme/app.git"}}
}]}"#;

#[tokio::test]
async fn a_passed_build_fires_a_function_update_pinned_to_the_commit() -> Result<()> {
    let memory = Memory::default();
    let mut config = config();
    config.rules = webhook_gateway::rules::Rules::parse(RULES)?;
    let server =
        TestServer::start(webhook_gateway::router(config, Arc::new(memory.clone()))).await?;
    let failed = buildkite(
        &server,
        "build.finished",
        &token(),
        &build_finished("failed"),
    )
    .await?;
    assert_eq!(failed.status, 202);
    assert_eq!(memory.events().len(), 1, "a failed build updates nothing");
    let passed = buildkite(
        &server,
        "build.finished",
        &token(),
        &build_finished("passed"),
    )
    .await?;
    assert_eq!(passed.status, 202);
    assert_eq!(passed.json()?["updated"], serde_json::json!(["app"]));
    let events = memory.events();
    let update = events
        .iter()
        .find(|e| e.ty() == klambda_events::catalogue::FunctionUpdated::TYPE)
        .ok_or_else(|| anyhow::anyhow!("no function.updated in {events:?}"))?;
    let submission = klambda_events::decode::<klambda_events::catalogue::FunctionUpdated>(update)?;
    match submission.source {
        klambda_events::spec::SourceSubmission::Git { reference, .. } => {
            assert_eq!(reference, "3f2a9c1e0b7d5a6c4e8f9a0b1c2d3e4f5a6b7c8d");
        }
        other => panic!("a git source expected, got {other:?}"),
    }
    Ok(())
}

#[test]
fn rules_files_are_checked_when_loaded() {
    use webhook_gateway::rules::Rules;
    for (text, needle) in [
        ("[]", "expected {\"rules\""),
        (r#"{"rules": [{"type": "x"}]}"#, "name is required"),
        (
            r#"{"rules": [{"name": "r", "type": "x", "function": {"source": {"kind": "inline"}}}]}"#,
            "git source",
        ),
        (
            r#"{"rules": [{"name": "r", "type": "x", "function": {"source": {"kind": "git", "url": "https://x/y"}}}]}"#,
            "not a valid",
        ),
    ] {
        let error = Rules::parse(text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains(needle), "{text}: {error}");
    }
    assert!(Rules::parse(RULES).is_ok());
}

#[tokio::test]
async fn each_source_is_rate_limited_on_its_own() -> Result<()> {
    let memory = Memory::default();
    let mut config = config();
    config.rate_limit = webhook_gateway::limit::RateLimit {
        per_second: 0.5,
        burst: 2,
    };
    let server =
        TestServer::start(webhook_gateway::router(config, Arc::new(memory.clone()))).await?;
    let body = build_finished("passed");
    for _ in 0..2 {
        let reply = buildkite(&server, "build.finished", &token(), &body).await?;
        assert_eq!(reply.status, 202);
    }
    let limited = buildkite(&server, "build.finished", &token(), &body).await?;
    assert_eq!(limited.status, 429);
    assert!(
        limited
            .header("retry-after")
            .parse::<u64>()
            .unwrap_or_default()
            >= 1
    );
    // GitHub has its own bucket: a Buildkite flood does not block it (it fails auth, not 429).
    let github = post(&server.url("/github"), &[("x-github-event", "ping")], "{}").await?;
    assert_eq!(github.status, 401);
    Ok(())
}

/// A flood that fails authentication is limited in its own small bucket (429 once it is empty)
/// and never takes a genuine sender's tokens.
#[tokio::test]
async fn an_unauthenticated_flood_does_not_starve_signed_webhooks() -> Result<()> {
    let memory = Memory::default();
    let mut config = config();
    config.rate_limit = webhook_gateway::limit::RateLimit {
        per_second: 0.001,
        burst: 3,
    };
    let server =
        TestServer::start(webhook_gateway::router(config, Arc::new(memory.clone()))).await?;
    let body = build_finished("passed");
    let mut answers = Vec::new();
    for _ in 0..40 {
        let forged = buildkite(
            &server,
            "build.finished",
            &[("x-buildkite-token", "forged".into())],
            &body,
        )
        .await?;
        answers.push(forged.status.as_u16());
    }
    assert_eq!(
        answers.iter().filter(|s| **s == 401).count(),
        20,
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|s| **s == 429).count(),
        20,
        "{answers:?}"
    );
    // The genuine bucket (3) is whole: three signed deliveries go through.
    for _ in 0..3 {
        let genuine = buildkite(&server, "build.finished", &token(), &body).await?;
        assert_eq!(genuine.status, 202);
    }
    Ok(())
}

/// The admin routes ask for their own token, and are not served at all without one configured.
#[tokio::test]
async fn admin_routes_need_the_admin_token_and_exist_only_with_one() -> Result<()> {
    let server = start(Arc::new(Memory::default())).await?;
    for credentials in [vec![], vec![("authorization", "Bearer wrong")]] {
        let listed =
            klambda_test_support::http::get_with(&server.url("/dead-letters"), &credentials)
                .await?;
        assert_eq!(listed.status, 401, "{credentials:?}");
        assert_eq!(listed.header("content-type"), "application/problem+json");
        let redriven = post(&server.url("/dead-letters/redrive"), &credentials, "").await?;
        assert_eq!(redriven.status, 401, "{credentials:?}");
    }
    let listed =
        klambda_test_support::http::get_with(&server.url("/dead-letters"), &[ADMIN]).await?;
    assert_eq!(listed.status, 200);

    let mut without = config();
    without.admin_token = None;
    let open = TestServer::start(webhook_gateway::router(
        without,
        Arc::new(Memory::default()),
    ))
    .await?;
    let listed = klambda_test_support::http::get_with(&open.url("/dead-letters"), &[ADMIN]).await?;
    assert_eq!(listed.status, 404, "not served without an admin token");
    Ok(())
}

#[tokio::test]
async fn metrics_and_the_openapi_document_describe_what_is_served() -> Result<()> {
    let memory = Memory::default();
    let server = start(Arc::new(memory.clone())).await?;
    let body = build_finished("passed");
    buildkite(&server, "build.finished", &token(), &body).await?;
    buildkite(
        &server,
        "build.finished",
        &[("x-buildkite-token", "bad".into())],
        &body,
    )
    .await?;
    buildkite(&server, "some.new.event", &token(), "{}").await?;
    let metrics = klambda_test_support::http::get(&server.url("/metrics")).await?;
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    for line in [
        r#"klambda_webhook_requests_total{source="buildkite",event="build.finished",outcome="published"} 1"#,
        r#"klambda_webhook_requests_total{source="buildkite",event="build.finished",outcome="unauthenticated"} 1"#,
        r#"klambda_webhook_requests_total{source="buildkite",event="other",outcome="published"} 1"#,
        r#"klambda_webhook_auth_failures_total{source="buildkite"} 1"#,
        "klambda_webhook_breaker_state 0",
        "klambda_webhook_dead_letters 0",
        "klambda_webhook_publish_duration_seconds_count 2",
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
    // Every path the document lists answers (not 404 or 405).
    let document = klambda_test_support::http::get(&server.url("/openapi.json"))
        .await?
        .json()?;
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().cloned().unwrap_or_default();
    assert!(paths.len() >= 8);
    for (path, operations) in paths {
        for method in operations
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let url = server.url(&path);
            let reply = match method.as_str() {
                "get" => klambda_test_support::http::get(&url).await?,
                "post" => post(&url, &[], "").await?,
                other => anyhow::bail!("unexpected method {other}"),
            };
            assert!(
                reply.status != 404 && reply.status != 405,
                "{method} {path} answered {}",
                reply.status
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn job_and_agent_events_are_shaped_too() -> Result<()> {
    let memory = Memory::default();
    let server = start(Arc::new(memory.clone())).await?;
    let job = serde_json::json!({
        "event": "job.finished",
        "job": {"id": "j-1", "state": "passed", "name": "test", "exit_status": 0,
                "web_url": "https://buildkite.com/acme/app/builds/42#j-1"},
        "build": {"id": "b-1", "number": 42},
        "pipeline": {"slug": "app", "web_url": "https://buildkite.com/acme/app"}
    })
    .to_string();
    let agent = serde_json::json!({
        "event": "agent.connected",
        "agent": {"id": "a-1", "name": "builder-1", "connection_state": "connected"}
    })
    .to_string();
    assert_eq!(
        buildkite(&server, "job.finished", &token(), &job)
            .await?
            .status,
        202
    );
    assert_eq!(
        buildkite(&server, "agent.connected", &token(), &agent)
            .await?
            .status,
        202
    );
    let incomplete = buildkite(&server, "job.finished", &token(), r#"{"job": {}}"#).await?;
    assert_eq!(incomplete.status, 400);
    assert!(problem_detail(&incomplete).contains("job.id"));
    let events = memory.events();
    assert_eq!(events[0].ty(), "com.buildkite.job.finished");
    assert_eq!(events[0].subject(), Some("42"));
    assert_eq!(events[1].ty(), "com.buildkite.agent.connected");
    assert_eq!(events[1].subject(), Some("a-1"));
    let data = |event: &Event| match event.data() {
        Some(cloudevents::Data::Json(value)) => value.clone(),
        _ => serde_json::Value::Null,
    };
    assert_eq!(data(&events[0])["exitStatus"], 0);
    assert_eq!(data(&events[1])["state"], "connected");
    Ok(())
}
