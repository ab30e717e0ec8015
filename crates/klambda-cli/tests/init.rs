//! `klambda init` through the real binary: for every runtime it can start, the function it
//! writes passes its own test with the language's test tool, deploys unchanged on `klambda up`
//! and answers; it refuses what it cannot do with the reason.

mod common;

use std::process::Command;

use anyhow::{Result, ensure};
use common::{BIN, klambda, text, up};
use serde_json::Value;

/// `klambda ARGS` without a platform.
fn offline(args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(BIN).args(args).output()?)
}

#[test]
fn init_writes_a_function_that_passes_its_test_deploys_and_answers() -> Result<()> {
    let root = std::env::temp_dir().join(format!("klambda-init-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;

    let listed = offline(&["init", "--list", "-o", "json"])?;
    ensure!(listed.status.success(), "{}", text(&listed));
    let runtimes: Vec<Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let ids: Vec<&str> = runtimes
        .iter()
        .filter_map(|r| r["runtime"].as_str())
        .collect();
    ensure!(
        ids.contains(&"nodejs20") && ids.contains(&"python3.11"),
        "{ids:?}"
    );

    let platform = up(&root.join("data"), &[])?;
    for (runtime, name) in [
        ("nodejs20", "greeter-node"),
        ("python3.11", "greeter-python"),
        ("go1.24", "greeter-go"),
        ("rust1", "greeter-rust"),
    ] {
        let dir = root.join(name);
        let made = offline(&["init", &dir.to_string_lossy(), "--runtime", runtime])?;
        ensure!(made.status.success(), "{runtime}: {}", text(&made));
        // Its own test, with the language's own tool, as the README it wrote says.
        let listed = runtimes.iter().find(|r| r["runtime"] == runtime);
        let test: Vec<String> = listed
            .and_then(|r| r["test"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|part| part.as_str().map(str::to_owned))
            .collect();
        ensure!(
            !test.is_empty(),
            "{runtime} has no test command: {listed:?}"
        );
        // The toolchains scripts/services.sh installs (Go), as a user has them on PATH.
        let path = format!(
            "{}/go/bin:{}",
            klambda_runtimes::interpreter::TOOLS_DIR,
            std::env::var("PATH").unwrap_or_default()
        );
        let tested = Command::new(&test[0])
            .args(&test[1..])
            .current_dir(&dir)
            .env("PATH", path)
            .env("GOTOOLCHAIN", "local")
            // Not the workspace's target directory, which this test's own build holds.
            .env(
                "CARGO_TARGET_DIR",
                format!("{}/init-target", common::BUILD_CACHE),
            )
            .output()?;
        ensure!(
            tested.status.success(),
            "{runtime}'s test: {}",
            text(&tested)
        );
        // Deployed as written, named after its directory.
        let deployed = klambda(&platform, &["deploy", &dir.to_string_lossy()])?;
        ensure!(deployed.status.success(), "{runtime}: {}", text(&deployed));
        let invoked = klambda(
            &platform,
            &["invoke", name, r#"{"name":"init"}"#, "-o", "json"],
        )?;
        let answer: Value = serde_json::from_slice(&invoked.stdout)?;
        ensure!(answer["status"] == 200, "{runtime}: {answer}");
        ensure!(
            answer["reply"]["message"] == "Hello, init!",
            "{runtime}: {answer}"
        );
    }

    // What it refuses, and why.
    let taken = offline(&[
        "init",
        &root.join("greeter-node").to_string_lossy(),
        "--runtime",
        "nodejs20",
    ])?;
    ensure!(
        !taken.status.success() && text(&taken).contains("not empty"),
        "{}",
        text(&taken)
    );
    let unknown = offline(&[
        "init",
        &root.join("x").to_string_lossy(),
        "--runtime",
        "cobol",
    ])?;
    ensure!(
        !unknown.status.success() && text(&unknown).contains("nodejs20"),
        "{}",
        text(&unknown)
    );
    let badly_named = offline(&[
        "init",
        &root.join("Not_A_Name").to_string_lossy(),
        "--runtime",
        "nodejs20",
    ])?;
    ensure!(
        !badly_named.status.success() && text(&badly_named).contains("--name"),
        "{}",
        text(&badly_named)
    );
    ensure!(
        !root.join("x").exists() && !root.join("Not_A_Name").exists(),
        "nothing written on refusal"
    );
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
