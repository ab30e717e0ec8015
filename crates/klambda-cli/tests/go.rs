//! Go functions through the real `klambda` (issue 19): the example deploys and answers with its
//! Lambda context; a handler's returned error and its panic answer 500 with the message, a
//! handler past its timeout 504; an unchanged redeploy is served from the build cache without
//! compiling; a compile error fails the build with `build.failed` naming file, line and column
//! while the previous revision keeps serving. Builds use the Go toolchain scripts/services.sh
//! installs and the build cache every test platform shares (`common::BUILD_CACHE`), so the
//! standard library compiles once per machine.
//!
//! And the start of a compiled function from the warm pool (`deployer::pool`), on a platform
//! started as a newcomer starts it (a relative data directory): the pool's processes outlive
//! the thread that started them, and a Go function's process is a spare shell that waited in a
//! cgroup of its own, now the function's, with exactly the environment a direct start gives.

mod common;

use std::path::{Path, PathBuf};

use anyhow::{Result, ensure};
use common::{invoke_json, klambda, latest_event_data, text, up, up_in};
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

/// Tells who serves it: its process, user, directory and whole environment.
const WHO: &str = r#"package who

import (
	"context"
	"encoding/json"
	"os"
)

func Handler(ctx context.Context, event json.RawMessage) (any, error) {
	cwd, _ := os.Getwd()
	return map[string]any{"pid": os.Getpid(), "uid": os.Getuid(), "cwd": cwd, "env": os.Environ()}, nil
}
"#;

fn scratch(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("klambda-go-{name}-{}", std::process::id()));
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
    let root = scratch("probe")?;
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

/// The warm pool's processes of `platform` now: spare shells and interpreters with a shim.
fn warm_processes(platform: &common::Up) -> Vec<(u32, String)> {
    klambda_test_support::process::children(platform.child.id())
        .into_iter()
        .filter(|(_, command)| command == "/bin/sh -s" || command.contains("/warm-pool/"))
        .collect()
}

#[test]
fn a_go_function_starts_from_a_spare_shell_already_in_its_cgroup_with_a_direct_starts_env()
-> Result<()> {
    let root = scratch("spare")?;
    // As a newcomer runs it: the data directory relative to where `klambda up` runs.
    let platform = up_in(&root, Path::new(".klambda"), &[])?;
    let root_user =
        std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m))? == 0;
    // Two per interpreter found (Node.js, Python here), and two spare shells where the runner
    // has cgroups to put them in (as root); none where it has not.
    let shells = if root_user { 2 } else { 0 };
    let filled = std::time::Instant::now();
    let warm = loop {
        let warm = warm_processes(&platform);
        let waiting = warm.iter().filter(|(_, c)| c == "/bin/sh -s").count();
        if waiting == shells && warm.len() == 4 + shells {
            break warm;
        }
        ensure!(
            filled.elapsed() < std::time::Duration::from_secs(20),
            "the warm pool did not fill: {warm:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };

    let dir = write(&root, "who", WHO)?;
    let tricky = "it's \"quoted\" $(touch /tmp/klambda-pwned) `id`\nand a second line";
    let manifest = json!({"name": "who", "runtime": "go1.24", "handler": "Handler",
                          "env": {"TRICKY": tricky}});
    std::fs::write(dir.join("klambda.json"), manifest.to_string())?;
    let deployed = klambda(&platform, &["deploy", &dir.display().to_string()])?;
    ensure!(deployed.status.success(), "{}", text(&deployed));
    let (status, reply) = invoke_json(&platform, "who", "{}")?;
    ensure!(status == 200, "{status} {reply}");
    let pid = reply["pid"].as_u64().unwrap_or_default() as u32;
    let env: Vec<&str> = reply["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(serde_json::Value::as_str)
        .collect();
    // The function's environment, word for word, and nothing a shell adds.
    ensure!(
        env.contains(&format!("TRICKY={tricky}").as_str()),
        "{env:?}"
    );
    ensure!(env.contains(&"KLAMBDA_FUNCTION_NAME=who"), "{env:?}");
    for shell_own in ["PWD=", "OLDPWD=", "SHLVL=", "_=", "KLAMBDA_POOL="] {
        ensure!(
            !env.iter().any(|v| v.starts_with(shell_own)),
            "{shell_own}: {env:?}"
        );
    }
    ensure!(
        !Path::new("/tmp/klambda-pwned").exists(),
        "a value ran as shell code"
    );
    ensure!(
        reply["cwd"]
            .as_str()
            .is_some_and(|cwd| cwd.ends_with("/function")),
        "{reply}"
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    ensure!(status.contains("NoNewPrivs:\t1"), "{status}");
    if root_user {
        // A spare shell became the function: its own user, in its group, named for it, with
        // the revision's memory limit (256 MiB by default).
        ensure!(
            warm.iter().any(|(p, c)| *p == pid && c == "/bin/sh -s"),
            "{pid} not from {warm:?}"
        );
        ensure!(reply["uid"] != 0, "{reply}");
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let memory = cgroup
            .lines()
            .find_map(|line| {
                line.split_once(":memory:")
                    .map(|(_, group)| group.to_owned())
            })
            .or_else(|| {
                cgroup
                    .lines()
                    .find_map(|line| line.strip_prefix("0::").map(str::to_owned))
            });
        let memory = memory.unwrap_or_default();
        ensure!(memory.starts_with("/klambda/who-00001."), "{cgroup}");
        let limit = ["memory/", ""].iter().find_map(|v1| {
            let dir = format!("/sys/fs/cgroup/{v1}{}", memory.trim_start_matches('/'));
            std::fs::read_to_string(format!("{dir}/memory.limit_in_bytes"))
                .or_else(|_| std::fs::read_to_string(format!("{dir}/memory.max")))
                .ok()
        });
        ensure!(
            limit.as_deref().map(str::trim) == Some("268435456"),
            "{limit:?}"
        );
    }

    // Long after the pool filled (a runtime's idle thread goes after 10 s, and took the pool's
    // processes with it when it had started them), every process it started still waits,
    // but the one claimed, which serves.
    let idle = std::time::Duration::from_secs(12).saturating_sub(filled.elapsed());
    std::thread::sleep(idle);
    for (waiting, command) in warm.iter().filter(|(p, _)| *p != pid) {
        let alive = std::fs::read_to_string(format!("/proc/{waiting}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        });
        ensure!(alive, "the warm process {waiting} ({command}) is gone");
    }
    Ok(())
}
