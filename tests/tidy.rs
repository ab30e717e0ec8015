//! Repository hygiene that `cargo test` enforces: every Rust source file opens with a `//!`
//! header saying what it is for.

use std::path::{Path, PathBuf};

use anyhow::Result;
use klambda_test_support::repo;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out)?;
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
    Ok(())
}

#[test]
fn every_source_file_has_a_module_header() -> Result<()> {
    let mut files = Vec::new();
    for dir in ["crates", "functions", "tests"] {
        rust_files(&repo::root().join(dir), &mut files)?;
    }
    assert!(
        files.len() > 20,
        "found only {} files; is the walk broken?",
        files.len()
    );
    let missing: Vec<String> = files
        .iter()
        .filter(|f| {
            !std::fs::read_to_string(f)
                .unwrap_or_default()
                .starts_with("//!")
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a //! header: {missing:#?}"
    );
    Ok(())
}

/// The string literals in `source` that spell an event type: a platform type
/// (`io.knative.lambda.…`), an external type the contract names (`dev.knative.apiserver.…`),
/// and, with `short_forms`, a platform type's short form (`service.ready`). Comment lines are
/// skipped; what is spelled in `klambda-events` is the contract itself.
fn event_type_strings(source: &str, short_forms: bool) -> Vec<(usize, String)> {
    let short: Vec<&str> = klambda_events::CATALOGUE
        .iter()
        .filter_map(|spec| spec.type_name.strip_prefix(klambda_events::TYPE_PREFIX))
        .collect();
    let mut found = Vec::new();
    for (number, line) in source.lines().enumerate() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        // The odd-numbered pieces between quotes are literals (escaped quotes are rare enough
        // in this codebase that a split on `"` reads every literal that could hold a type).
        for literal in line.split('"').skip(1).step_by(2) {
            let spells_a_type = literal.starts_with(klambda_events::TYPE_PREFIX)
                || literal.starts_with("dev.knative.apiserver.")
                || (short_forms && short.contains(&literal));
            if spells_a_type {
                found.push((number + 1, literal.to_owned()));
            }
        }
    }
    found
}

#[test]
fn the_tidy_check_finds_a_type_string_it_is_fed() {
    let source = "// io.knative.lambda.parser.started in a comment is prose\n\
                  let a = \"io.knative.lambda.build.completed\";\n\
                  if short == \"service.ready\" { return; }\n\
                  let b = (\"build.log\", \"dev.knative.apiserver.resource.add\");\n";
    assert_eq!(
        event_type_strings(source, true),
        [
            (2, "io.knative.lambda.build.completed".to_owned()),
            (3, "service.ready".to_owned()),
            (4, "dev.knative.apiserver.resource.add".to_owned()),
        ]
    );
    assert_eq!(event_type_strings(source, false).len(), 2);
}

#[test]
fn no_crate_but_the_contract_spells_an_event_type() -> Result<()> {
    let mut files = Vec::new();
    for dir in ["crates", "functions", "tests"] {
        rust_files(&repo::root().join(dir), &mut files)?;
    }
    let contract = repo::root().join("crates/klambda-events");
    let this_file = repo::root().join("tests/tidy.rs");
    let mut spelled = Vec::new();
    for file in files
        .iter()
        .filter(|f| !f.starts_with(&contract) && **f != this_file)
    {
        let source = std::fs::read_to_string(file)?;
        // Tests may assert on the short forms `klambda` prints (`service.ready`); code never
        // matches on them.
        let is_test = file.components().any(|c| c.as_os_str() == "tests")
            || file.starts_with(repo::root().join("tests"));
        for (line, literal) in event_type_strings(&source, !is_test) {
            spelled.push(format!("{}:{line}: {literal:?}", file.display()));
        }
    }
    assert!(
        spelled.is_empty(),
        "event types are named through klambda-events (`T::TYPE`, `klambda_events::external`), not spelled: {spelled:#?}"
    );
    Ok(())
}

/// Dependencies (of any kind: normal, dev, build) from one stage to another, read from
/// `cargo metadata --no-deps` output: `(from, to, kind)`. Stages are the packages under
/// `functions/`.
fn stage_to_stage_edges(metadata: &serde_json::Value) -> Vec<(String, String, String)> {
    let packages = metadata["packages"].as_array().cloned().unwrap_or_default();
    let is_stage = |package: &serde_json::Value| {
        package["manifest_path"]
            .as_str()
            .is_some_and(|path| path.contains("/functions/"))
    };
    let stages: Vec<&str> = packages
        .iter()
        .filter(|p| is_stage(p))
        .filter_map(|p| p["name"].as_str())
        .collect();
    let mut edges = Vec::new();
    for package in packages.iter().filter(|p| is_stage(p)) {
        let from = package["name"].as_str().unwrap_or_default();
        for dependency in package["dependencies"].as_array().into_iter().flatten() {
            let to = dependency["name"].as_str().unwrap_or_default();
            if stages.contains(&to) {
                let kind = dependency["kind"].as_str().unwrap_or("normal");
                edges.push((from.to_owned(), to.to_owned(), kind.to_owned()));
            }
        }
    }
    edges
}

#[test]
fn the_stage_dependency_check_finds_an_edge_it_is_fed() {
    let fed = serde_json::json!({"packages": [
        {"name": "parser", "manifest_path": "/r/functions/parser/Cargo.toml", "dependencies": []},
        {"name": "job-launcher", "manifest_path": "/r/functions/job-launcher/Cargo.toml",
         "dependencies": [{"name": "parser", "kind": "dev"}, {"name": "klambda-events", "kind": null}]},
    ]});
    assert_eq!(
        stage_to_stage_edges(&fed),
        vec![("job-launcher".into(), "parser".into(), "dev".into())]
    );
}

/// Stages meet only through the contract: none depends on another, not even in its tests
/// (their inputs come from `klambda_test_support::fixtures`).
#[test]
fn no_stage_depends_on_another_stage() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(repo::root())
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let stages = metadata["packages"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter(|p| {
                    p["manifest_path"]
                        .as_str()
                        .is_some_and(|m| m.contains("/functions/"))
                })
                .count()
        })
        .unwrap_or_default();
    anyhow::ensure!(
        stages >= 5,
        "found only {stages} stage packages under functions/"
    );
    let edges = stage_to_stage_edges(&metadata);
    assert!(edges.is_empty(), "stages depending on stages: {edges:?}");
    Ok(())
}

/// Lines of production code that name a concrete store type rather than `dyn ObjectStore`.
fn concrete_store_uses(source: &str) -> Vec<usize> {
    source
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//") && line.contains("S3Store"))
        .map(|(number, _)| number + 1)
        .collect()
}

#[test]
fn the_store_check_finds_a_use_it_is_fed() {
    let fed = "/// reads through S3Store docs\nlet s = klambda_storage::S3Store::new(&x);\n";
    assert_eq!(concrete_store_uses(fed), vec![2]);
}

/// Stores are a seam: outside `klambda-storage`, production code holds `dyn ObjectStore`
/// (users' buckets through `ObjectStore::source_buckets`), so a new store is one impl there.
#[test]
fn no_production_code_outside_storage_names_a_concrete_store() -> Result<()> {
    let mut files = Vec::new();
    for dir in ["crates", "functions"] {
        rust_files(&repo::root().join(dir), &mut files)?;
    }
    let mut found = Vec::new();
    for file in files {
        let path = file.to_string_lossy().into_owned();
        let production = path.contains("/src/") && !path.contains("crates/klambda-storage/");
        // The test-support crate serves tests only.
        if !production || path.contains("crates/klambda-test-support/") {
            continue;
        }
        for line in concrete_store_uses(&std::fs::read_to_string(&file)?) {
            found.push(format!("{path}:{line}"));
        }
    }
    assert!(
        found.is_empty(),
        "concrete stores named outside klambda-storage: {found:?}"
    );
    Ok(())
}
