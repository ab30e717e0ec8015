//! The committed generated files (`eventing/schemas/*.json`, `docs/EVENTS.md`,
//! `schemas/klambda.schema.json`) match what the
//! contract generates today. Run with `KLAMBDA_BLESS=1` to rewrite them after changing a type.

use std::path::{Path, PathBuf};

use anyhow::Result;
use klambda_events::docs::{events_markdown, schema_files};

/// The repository root, from the package directory `cargo test` names at run time (the
/// compiled-in one can be another checkout's when they share a target directory).
fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../..")
}

fn bless() -> bool {
    std::env::var_os("KLAMBDA_BLESS").is_some()
}

fn check(path: &Path, expected: &str, stale: &mut Vec<String>) -> Result<()> {
    let actual = std::fs::read_to_string(path).unwrap_or_default();
    if actual != expected {
        if bless() {
            std::fs::write(path, expected)?;
        } else {
            stale.push(path.display().to_string());
        }
    }
    Ok(())
}

#[test]
fn generated_files_are_fresh() -> Result<()> {
    let mut stale = Vec::new();
    let schemas = root().join("eventing/schemas");
    std::fs::create_dir_all(&schemas)?;
    let files = schema_files();
    for (name, contents) in &files {
        check(&schemas.join(name), contents, &mut stale)?;
    }
    for entry in std::fs::read_dir(&schemas)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !files.iter().any(|(known, _)| *known == name) {
            if bless() {
                std::fs::remove_file(schemas.join(&name))?;
            } else {
                stale.push(format!("eventing/schemas/{name} (no such type any more)"));
            }
        }
    }
    check(
        &root().join("docs/EVENTS.md"),
        &events_markdown(),
        &mut stale,
    )?;
    let manifest_schema = root().join(klambda_events::manifest::SCHEMA_PATH);
    std::fs::create_dir_all(manifest_schema.parent().unwrap_or(&root()))?;
    check(
        &manifest_schema,
        &klambda_events::manifest::schema_file(),
        &mut stale,
    )?;
    assert!(
        stale.is_empty(),
        "generated files are stale: {stale:?}\n\
         run `KLAMBDA_BLESS=1 cargo test -p klambda-events --test generated` and commit the result"
    );
    Ok(())
}

#[test]
fn the_parser_docs_name_every_manifest_key() -> Result<()> {
    let docs = std::fs::read_to_string(root().join("docs/PARSER.md"))?;
    let missing: Vec<String> = klambda_events::manifest::key_paths()
        .into_iter()
        .filter(|path| !docs.contains(&format!("| `{path}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/PARSER.md's klambda.json table does not name: {missing:?}"
    );
    Ok(())
}
