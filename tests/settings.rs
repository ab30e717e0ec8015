//! Every stage binary's `--help` lists every setting its code reads, `config show` prints each
//! with its value and never a secret, and the docs list them: a setting no one can discover is
//! a setting no operator will set right.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, ensure};
use klambda_test_support::repo;
use klambda_tests::workspace_binary;

/// The calls through which code reads a setting by name (`config.setting("X")`,
/// `get("X")`, `or("X", default)`, `std::env::var("X")`).
const READS: [&str; 5] = ["setting(", "get(", "or(", "var(", "var_os("];

/// Environment names a piece of Rust source reads as settings: string literals that are exactly
/// a `KLAMBDA_*` name or `DATABASE_URL` passed to a reading call, and `KUBECONFIG` through its
/// constant. Names inside messages (`"KLAMBDA_BUILDER=…: …"`) and names the code sets for
/// others (a function's `KLAMBDA_HANDLER`) are left out.
fn names_read(source: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let pieces: Vec<&str> = source.split('"').collect();
    for (i, piece) in pieces.iter().enumerate().skip(1).step_by(2) {
        let is_name = !piece.is_empty()
            && piece
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        let read = READS.iter().any(|call| pieces[i - 1].ends_with(call));
        if is_name && read && (piece.starts_with("KLAMBDA_") || *piece == "DATABASE_URL") {
            names.insert((*piece).to_owned());
        }
    }
    if source.contains("klambda_kube::KUBECONFIG") {
        names.insert("KUBECONFIG".to_owned());
    }
    names
}

#[test]
fn the_settings_scan_finds_a_name_it_is_fed() {
    let fed = r#"config.setting("KLAMBDA_NEW_KNOB"); format!("KLAMBDA_BUILDER={x}: bad");
        env.push(("KLAMBDA_HANDLER", h)); let k = klambda_kube::KUBECONFIG;"#;
    assert_eq!(
        names_read(fed),
        BTreeSet::from(["KLAMBDA_NEW_KNOB".to_owned(), "KUBECONFIG".to_owned()])
    );
}

/// Every `.rs` file under `dir`, concatenated.
fn sources(dir: &Path) -> Result<String> {
    let mut text = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| dir.display().to_string())? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                text.push_str(&std::fs::read_to_string(&path)?);
            }
        }
    }
    Ok(text)
}

const STAGES: [&str; 5] = [
    "parser",
    "context-uploader",
    "job-launcher",
    "service-deployer",
    "status-reporter",
];

/// What the stage's own code reads, and the store's settings when it opens a store.
fn settings_read(stage: &str) -> Result<BTreeSet<String>> {
    let root = repo::root();
    let code = sources(&root.join("functions").join(stage).join("src"))?;
    let mut names = names_read(&code);
    if code.contains("klambda_storage::from_settings") {
        names.extend(names_read(&std::fs::read_to_string(
            root.join("crates/klambda-storage/src/lib.rs"),
        )?));
    }
    Ok(names)
}

fn run(stage: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let output = Command::new(workspace_binary(stage)?)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()?;
    ensure!(
        output.status.success(),
        "{stage} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

#[test]
fn every_stage_binary_lists_every_setting_it_reads_and_the_docs_list_them() -> Result<()> {
    let docs = std::fs::read_to_string(repo::root().join("docs/INSTALL.md"))?;
    let mut checked = 0;
    for stage in STAGES {
        let help = run(stage, &["--help"], &[])?;
        let shown = run(stage, &["config", "show"], &[])?;
        for name in settings_read(stage)? {
            ensure!(
                help.contains(&name),
                "{stage} --help does not list {name}:\n{help}"
            );
            ensure!(
                shown.contains(&format!("\n{name}=")),
                "{stage} config show does not show {name}:\n{shown}"
            );
            ensure!(
                docs.contains(&format!("`{name}`")),
                "docs/INSTALL.md does not list {name} ({stage})"
            );
            checked += 1;
        }
    }
    // The scan found the stages' settings at all (a broken scan would pass vacuously).
    ensure!(
        checked >= 20,
        "only {checked} settings found in the stages' code"
    );
    Ok(())
}

/// Environment names a piece of Rust source spells as a whole string literal: how the webhook
/// gateway reads its settings (`text("/sink", "K_SINK")`, `env("KLAMBDA_WEBHOOK_RULES")`),
/// where every such name is a setting it reads.
fn names_spelled(source: &str) -> BTreeSet<String> {
    source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|piece| {
            piece.starts_with("KLAMBDA_") || ["K_SINK", "PORT", "DATABASE_URL"].contains(piece)
        })
        .filter(|piece| {
            piece
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
        .map(str::to_owned)
        .collect()
}

/// The serving settings every server reads (logs, traces, connection limits), by name.
fn serving_settings() -> Vec<&'static str> {
    klambda_harness::config::SERVING_SETTINGS
        .iter()
        .map(|s| s.name)
        .collect()
}

#[test]
fn the_gateway_and_klambda_up_list_every_setting_they_read_and_the_docs_list_them() -> Result<()> {
    let docs = std::fs::read_to_string(repo::root().join("docs/INSTALL.md"))?;
    let help = run("webhook-gateway", &["--help"], &[])?;
    let code = sources(&repo::root().join("functions/webhook-gateway/src"))?;
    let read = names_spelled(&code);
    ensure!(
        read.len() >= 15,
        "only {} settings found in the gateway's code: {read:?}",
        read.len()
    );
    for name in read.iter().map(String::as_str).chain(serving_settings()) {
        ensure!(
            help.contains(&format!("  {name} ")),
            "webhook-gateway --help does not list {name}:\n{help}"
        );
        ensure!(
            docs.contains(&format!("`{name}`")),
            "docs/INSTALL.md does not list {name} (webhook-gateway)"
        );
    }
    let help = run("klambda", &["up", "--help"], &[])?;
    for name in serving_settings() {
        ensure!(
            help.contains(&format!("  {name} ")),
            "klambda up --help does not list {name}:\n{help}"
        );
    }
    Ok(())
}

#[test]
fn the_settings_spelled_scan_finds_a_name_it_is_fed() {
    let fed = r#"text("/sink", "K_SINK"); env("KLAMBDA_NEW"); format!("KLAMBDA_X={v}")"#;
    assert_eq!(
        names_spelled(fed),
        BTreeSet::from(["K_SINK".to_owned(), "KLAMBDA_NEW".to_owned()])
    );
}

#[test]
fn config_show_prints_values_and_defaults_and_never_a_secret() -> Result<()> {
    let shown = run(
        "status-reporter",
        &["config", "show"],
        &[
            (
                "DATABASE_URL",
                "postgres://app:hunter2@db.example.com/status",
            ),
            ("PORT", "9123"),
        ],
    )?;
    ensure!(!shown.contains("hunter2"), "a secret was printed:\n{shown}");
    ensure!(shown.contains("DATABASE_URL=<redacted>\n"), "{shown}");
    ensure!(shown.contains("PORT=9123\n"), "{shown}");
    let shown = run("job-launcher", &["config", "show"], &[])?;
    ensure!(
        shown.contains("KLAMBDA_BUILDER=<default: local>\n"),
        "{shown}"
    );
    ensure!(shown.contains("KLAMBDA_CACHE_REPO=<unset>\n"), "{shown}");
    Ok(())
}
