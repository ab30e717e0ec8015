//! Rust functions through the real `klambda` (issue 19): the example deploys and answers with its
//! Lambda context; a function with crates.io dependencies (serde, tokio) builds; a handler's
//! returned error and its panic answer 500 with the message, a handler past its timeout 504; an
//! unchanged redeploy is served from the build cache without compiling; a compile error fails the
//! build with `build.failed` naming file, line and column (from Cargo's JSON diagnostics) while
//! the previous revision keeps serving. Builds share one Cargo target directory (the tests'
//! `common::BUILD_CACHE`), so the runtime's dependencies compile once per machine.

mod common;

use std::path::{Path, PathBuf};

use anyhow::{Result, ensure};
use common::{invoke_json, klambda, latest_event_data, text, up};
use serde_json::json;

const CARGO_TOML: &str = r#"[package]
name = "probe"
version = "0.1.0"
edition = "2021"

[dependencies]
klambda-function = "0.1"
serde = { version = "1", features = ["derive"] }
serde_json = "1"
tokio = { version = "1", features = ["time"] }
"#;

/// Answers as asked: a result, a returned error, a panic, or too late.
const PROBE: &str = r#"use klambda_function::{Context, Error};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
pub struct Probe {
    #[serde(default)]
    mode: String,
    #[serde(default)]
    name: String,
}

pub async fn handler(event: Probe, _ctx: Context) -> Result<Value, Error> {
    match event.mode.as_str() {
        "fail" => Err(format!("no luck for {}", event.name).into()),
        "panic" => panic!("boom for {}", event.name),
        "sleep" => {
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
            Ok(json!("late"))
        }
        _ => Ok(json!({"hello": event.name})),
    }
}
"#;

fn scratch() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("klambda-rust-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[test]
fn rust_functions_answer_fail_time_out_and_a_compile_error_keeps_the_serving_revision() -> Result<()>
{
    let root = scratch()?;
    let platform = up(&root.join("data"), &[])?;

    // The example, as the README deploys it: its reply carries the Lambda context's request id.
    let deployed = klambda(&platform, &["deploy", "examples/hello-rust"])?;
    ensure!(deployed.status.success(), "{}", text(&deployed));
    let (status, reply) = invoke_json(&platform, "hello-rust", r#"{"name":"ferris"}"#)?;
    ensure!(status == 200, "{reply}");
    ensure!(reply["message"] == "Hello, ferris!", "{reply}");
    ensure!(
        reply["requestId"]
            .as_str()
            .is_some_and(|id| id.starts_with("invoke-")),
        "{reply}"
    );

    let dir = root.join("probe");
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(
        dir.join("klambda.json"),
        json!({"name": "probe", "runtime": "rust1", "handler": "handler",
               "resources": {"timeoutSeconds": 1}})
        .to_string(),
    )?;
    std::fs::write(dir.join("Cargo.toml"), CARGO_TOML)?;
    std::fs::write(dir.join("src/lib.rs"), PROBE)?;
    let dir = dir.to_string_lossy().into_owned();
    let deployed = klambda(&platform, &["deploy", &dir])?;
    ensure!(deployed.status.success(), "{}", text(&deployed));
    let (status, reply) = invoke_json(&platform, "probe", r#"{"name":"ada"}"#)?;
    ensure!(status == 200 && reply["hello"] == "ada", "{status} {reply}");
    let (status, reply) = invoke_json(&platform, "probe", r#"{"mode":"fail","name":"ada"}"#)?;
    ensure!(
        status == 500 && reply["detail"] == "no luck for ada",
        "{status} {reply}"
    );
    let (status, reply) = invoke_json(&platform, "probe", r#"{"mode":"panic","name":"ada"}"#)?;
    ensure!(
        status == 500
            && reply["detail"]
                .as_str()
                .is_some_and(|d| d.contains("boom for ada")),
        "{status} {reply}"
    );
    let (status, reply) = invoke_json(&platform, "probe", r#"{"mode":"sleep"}"#)?;
    ensure!(status == 504, "{status} {reply}");
    // An event its type cannot take is the caller's mistake.
    let (status, reply) = invoke_json(&platform, "probe", r#"{"name":7}"#)?;
    ensure!(status == 400, "{status} {reply}");

    // Unchanged: the build record answers, nothing compiles, no new revision.
    let again = klambda(&platform, &["deploy", &dir])?;
    ensure!(again.status.success(), "{}", text(&again));
    ensure!(
        latest_event_data(&platform, "probe", "build.completed")?["cached"] == true,
        "{}",
        text(&again)
    );

    // A compile error: the build fails saying where, and the serving revision stays.
    let broken = PROBE.replace(
        "Ok(json!({\"hello\": event.name}))",
        "Ok(json!({\"hello\": nope}))",
    );
    std::fs::write(Path::new(&dir).join("src/lib.rs"), broken)?;
    let failed = klambda(&platform, &["deploy", &dir])?;
    ensure!(!failed.status.success(), "{}", text(&failed));
    let data = latest_event_data(&platform, "probe", "build.failed")?;
    ensure!(data["cause"] == "compileError", "{data}");
    let first = &data["diagnostics"][0];
    ensure!(
        first["file"] == "src/lib.rs" && first["line"] == 21,
        "{data}"
    );
    ensure!(
        first["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("error[E0425]: cannot find value `nope`")),
        "{data}"
    );
    ensure!(
        text(&failed).contains("src/lib.rs:21:"),
        "{}",
        text(&failed)
    );
    let (status, reply) = invoke_json(&platform, "probe", r#"{"name":"still"}"#)?;
    ensure!(
        status == 200 && reply["hello"] == "still",
        "{status} {reply}"
    );
    Ok(())
}
