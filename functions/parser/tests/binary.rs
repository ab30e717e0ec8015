//! The real `parser` binary: configuration errors exit 64 listing every problem, `--help`, JSON
//! logs carrying the event id, and SIGTERM stopping it cleanly.

use klambda_events::EventType as _;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result};
use klambda_test_support::http::post;
use klambda_test_support::process::{free_port, terminate, wait_healthy};

const BIN: &str = env!("CARGO_BIN_EXE_parser");

#[test]
fn bad_configuration_exits_64_listing_every_problem() -> Result<()> {
    let output = Command::new(BIN)
        .env("PORT", "eighty")
        .env("K_SINK", "ftp://broker")
        .env("OTEL_EXPORTER_OTLP_HEADERS", "hunter2")
        .output()?;
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8(output.stderr)?;
    // A stage without event keys would trust anything on the broker: it does not start.
    for key in [
        "PORT",
        "K_SINK",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "KLAMBDA_EVENT_KEYS",
    ] {
        assert!(stderr.contains(key), "{key} not in {stderr}");
    }
    assert!(
        !stderr.contains("hunter2"),
        "a secret was printed: {stderr}"
    );

    let output = Command::new(BIN).arg("--no-such-flag").output()?;
    assert_eq!(output.status.code(), Some(64));
    Ok(())
}

#[test]
fn help_prints_the_flags() -> Result<()> {
    let output = Command::new(BIN).arg("--help").output()?;
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout)?;
    assert!(
        stdout.contains("--port") && stdout.contains("K_SINK"),
        "{stdout}"
    );
    Ok(())
}

#[tokio::test]
async fn serves_logs_json_and_stops_on_sigterm() -> Result<()> {
    let port = free_port()?;
    let mut child = Command::new(BIN)
        .arg("--port")
        .arg(port.to_string())
        .env("RUST_LOG", "info")
        .env(
            "KLAMBDA_EVENT_KEYS",
            klambda_test_support::fixtures::EVENT_KEY,
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(
        &format!("{base}/health"),
        &mut child,
        Duration::from_secs(10),
    )
    .await?;
    let reply = post(&format!("{base}/"), &[
        ("ce-specversion", "1.0"), ("ce-id", "bin-1"), ("ce-source", "/t"),
        ("ce-type", klambda_events::catalogue::FunctionCreated::TYPE), ("content-type", "application/json"),
    ], r#"{"name":"hello","runtime":"python3.12","handler":"app.handler","source":{"kind":"inline","files":[{"path":"app.py","content":"def handler(e, c): return e"}]}}"#).await?;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("ce-type"),
        klambda_events::catalogue::ParserCompleted::TYPE
    );

    let exit = terminate(&mut child, Duration::from_secs(10))?;
    assert!(exit.success(), "exit status {exit:?}");

    // Every log line is JSON; the handling line carries the event id, type and function.
    let stdout = child.stdout.take().context("stdout")?;
    let lines: Vec<serde_json::Value> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .map(|line| serde_json::from_str(&line).with_context(|| format!("not JSON: {line}")))
        .collect::<Result<_>>()?;
    let handled = lines
        .iter()
        .find(|l| l["message"] == "replied")
        .with_context(|| format!("no 'replied' line in {lines:?}"))?;
    assert_eq!(handled["span"]["event_id"], "bin-1");
    assert_eq!(
        handled["span"]["event_type"],
        klambda_events::catalogue::FunctionCreated::TYPE
    );
    assert_eq!(
        handled["reply_type"],
        klambda_events::catalogue::ParserCompleted::TYPE
    );
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "shutting down: draining in-flight requests")
    );
    Ok(())
}
