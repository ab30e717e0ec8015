//! Where the repository and the shared folder are, from any crate's tests.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The repository root (the folder holding the workspace `Cargo.toml`).
pub fn root() -> PathBuf {
    // This crate lives at <root>/crates/klambda-test-support.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The shared folder with the Knative CRD schemas: `$KLAMBDA_SHARED_DIR`, else `../shared`
/// beside the repository, else `/work/shared`.
pub fn shared_dir() -> Result<PathBuf> {
    let candidates = std::env::var_os("KLAMBDA_SHARED_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([root().join("../shared"), PathBuf::from("/work/shared")]);
    let mut tried = Vec::new();
    for dir in candidates {
        if dir.join("schemas/knative").is_dir() {
            return Ok(dir);
        }
        tried.push(dir.display().to_string());
    }
    bail!(
        "the shared folder with schemas/knative/*.crd.yaml was not found (tried {tried:?}); \
         set KLAMBDA_SHARED_DIR to the folder that holds schemas/"
    )
}
