//! The `webhook-gateway` binary: `validate` lists every problem (exit 64) or says the settings
//! are valid, `config show` never prints a secret, `version`, and `serve` answers on its port.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Result;
use klambda_test_support::process::{free_port, terminate, wait_healthy};

const BIN: &str = env!("CARGO_BIN_EXE_webhook-gateway");

fn write(name: &str, text: &str) -> Result<std::path::PathBuf> {
    let path = std::env::temp_dir().join(format!("klambda-webhook-{}-{name}", std::process::id()));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The binary with a clean environment (only what the test passes).
fn gateway(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

const GOOD: &str = r#"{
  "sink": "http://127.0.0.1:9/",
  "buildkite": {"signingKey": "super-secret-signing-key", "toleranceSeconds": 120},
  "github": {"secret": "another-secret-value"},
  "rateLimit": {"perSecond": 50, "burst": 100},
  "rules": [{"name": "deploy-app", "type": "com.buildkite.build.finished",
             "match": {"pipeline": "app", "branch": "main", "state": "passed"},
             "function": {"name": "app", "runtime": "nodejs22", "handler": "index.handler",
                          "source": {"kind": "git", "url": "https://github.com/acme/app.git"}}}]
}"#;

#[test]
fn validate_and_show_the_settings_without_their_secrets() -> Result<()> {
    let good = write("good.json", GOOD)?;
    let out = gateway(&["validate", "--config", &good.display().to_string()]).output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 rule(s)"));

    let shown = gateway(&["config", "show", "--config", &good.display().to_string()]).output()?;
    assert!(shown.status.success());
    let text = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        !text.contains("super-secret-signing-key") && !text.contains("another-secret-value"),
        "{text}"
    );
    let shown: serde_json::Value = serde_json::from_str(&text)?;
    assert_eq!(shown["buildkite"]["signingKey"], "<redacted>");
    assert_eq!(shown["buildkite"]["token"], serde_json::Value::Null);
    assert_eq!(shown["rateLimit"]["burst"], 100);
    assert_eq!(shown["rules"][0]["name"], "deploy-app");

    let bad = write(
        "bad.json",
        r#"{"sink": "not a url", "port": 70000, "rateLimit": {"perSecond": "fast"}}"#,
    )?;
    let out = gateway(&["validate", "--config", &bad.display().to_string()]).output()?;
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "no webhook secret",
        "is not a URL",
        "not a port number",
        "must be a number",
    ] {
        assert!(stderr.contains(needle), "{needle} not in {stderr}");
    }
    let version = gateway(&["version"]).output()?;
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("webhook-gateway "));
    for path in [good, bad] {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

#[tokio::test]
async fn serve_answers_on_its_port() -> Result<()> {
    let port = free_port()?;
    let mut child = gateway(&["serve"])
        .env("PORT", port.to_string())
        .env("K_SINK", "http://127.0.0.1:9/")
        .env("KLAMBDA_GITHUB_SECRET", "s")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    wait_healthy(
        &format!("http://127.0.0.1:{port}/health"),
        &mut child,
        Duration::from_secs(10),
    )
    .await?;
    let ready = klambda_test_support::http::get(&format!("http://127.0.0.1:{port}/ready")).await?;
    assert_eq!(ready.status, 200);
    let status = terminate(&mut child, Duration::from_secs(10))?;
    assert!(status.success(), "{status}");
    Ok(())
}
