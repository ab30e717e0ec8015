//! Go functions through the real `klambda` (issue 19): the example deploys and answers with its
//! Lambda context; a handler's returned error and its panic answer 500 with the message, a
//! handler past its timeout 504; an unchanged redeploy is served from the build cache without
//! compiling; a compile error fails the build with `build.failed` naming file, line and column
//! while the previous revision keeps serving. Builds use the Go toolchain scripts/services.sh
//! installs and the build cache every test platform shares (`common::BUILD_CACHE`), so the
//! standard library compiles once per machine.

mod common;

use std::path::{Path, PathBuf};

use anyhow::{Result, ensure};
use common::{invoke_json, klambda, latest_event_data, text, up};
use serde_json::json;

/// Answers as asked: a result, a returned error, a panic, or too late.
const PROBE: &str = r#"package probe

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

func Handler(ctx context.Context, event json.RawMessage) (any, error) {
	var in struct{ Mode, Name string }
	if err := json.Unmarshal(event, &in); err != nil {
		return nil, err
	}
	switch in.Mode {
	case "fail":
		return nil, errors.New("no luck for " + in.Name)
	case "panic":
		panic("boom for " + in.Name)
	case "sleep":
		time.Sleep(3 * time.Second)
		return "late", nil
	}
	return map[string]string{"hello": in.Name}, nil
}
"#;

fn scratch() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("klambda-go-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Writes the Go function `name` (`handler.go` is `code`) with a one-second timeout.
fn write(root: &Path, name: &str, code: &str) -> Result<PathBuf> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    let manifest = json!({"name": name, "runtime": "go1.24", "handler": "Handler",
                          "resources": {"timeoutSeconds": 1}});
    std::fs::write(dir.join("klambda.json"), manifest.to_string())?;
    std::fs::write(
        dir.join("go.mod"),
        format!("module example.com/{name}\n\ngo 1.24\n"),
    )?;
    std::fs::write(dir.join("handler.go"), code)?;
    Ok(dir)
}

#[test]
fn go_functions_answer_fail_time_out_and_a_compile_error_keeps_the_serving_revision() -> Result<()>
{
    let root = scratch()?;
    let platform = up(&root.join("data"), &[])?;

    // The example, as the README deploys it: its reply carries the Lambda context's request id.
    let deployed = klambda(&platform, &["deploy", "examples/hello-go"])?;
    ensure!(deployed.status.success(), "{}", text(&deployed));
    let (status, reply) = invoke_json(&platform, "hello-go", r#"{"name":"gopher"}"#)?;
    ensure!(status == 200, "{reply}");
    ensure!(reply["message"] == "Hello, gopher!", "{reply}");
    ensure!(
        reply["requestId"]
            .as_str()
            .is_some_and(|id| id.starts_with("invoke-")),
        "{reply}"
    );

    let dir = write(&root, "probe", PROBE)?;
    let dir = dir.to_string_lossy().into_owned();
    let deployed = klambda(&platform, &["deploy", &dir])?;
    ensure!(deployed.status.success(), "{}", text(&deployed));
    let (status, reply) = invoke_json(&platform, "probe", r#"{"Name":"ada"}"#)?;
    ensure!(status == 200 && reply["hello"] == "ada", "{status} {reply}");
    let (status, reply) = invoke_json(&platform, "probe", r#"{"Mode":"fail","Name":"ada"}"#)?;
    ensure!(
        status == 500 && reply["detail"] == "no luck for ada",
        "{status} {reply}"
    );
    ensure!(reply["errorType"] == "*errors.errorString", "{reply}");
    let (status, reply) = invoke_json(&platform, "probe", r#"{"Mode":"panic","Name":"ada"}"#)?;
    ensure!(
        status == 500
            && reply["detail"]
                .as_str()
                .is_some_and(|d| d.contains("boom for ada")),
        "{status} {reply}"
    );
    let (status, reply) = invoke_json(&platform, "probe", r#"{"Mode":"sleep"}"#)?;
    ensure!(status == 504, "{status} {reply}");

    // Unchanged: the build record answers, nothing compiles, no new revision.
    let again = klambda(&platform, &["deploy", &dir])?;
    ensure!(again.status.success(), "{}", text(&again));
    ensure!(
        latest_event_data(&platform, "probe", "build.completed")?["cached"] == true,
        "{}",
        text(&again)
    );

    // A compile error: the build fails saying where, and the serving revision stays.
    let broken = PROBE.replace("return nil, err\n", "return nil, errr\n");
    std::fs::write(Path::new(&dir).join("handler.go"), broken)?;
    let failed = klambda(&platform, &["deploy", &dir])?;
    ensure!(!failed.status.success(), "{}", text(&failed));
    ensure!(
        text(&failed).contains("handler.go:13:15: undefined: errr"),
        "{}",
        text(&failed)
    );
    let data = latest_event_data(&platform, "probe", "build.failed")?;
    ensure!(data["cause"] == "compileError", "{data}");
    ensure!(
        data["diagnostics"][0]
            == json!({"file": "handler.go", "line": 13, "column": 15, "message": "undefined: errr"}),
        "{data}"
    );
    let (status, reply) = invoke_json(&platform, "probe", r#"{"Name":"still"}"#)?;
    ensure!(
        status == 200 && reply["hello"] == "still",
        "{status} {reply}"
    );
    Ok(())
}
