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
