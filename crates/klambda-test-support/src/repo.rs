//! Where the repository and the shared folder are, from any crate's tests.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The repository root (the folder holding the workspace `Cargo.toml`) of the tests running.
///
/// Read at run time: `cargo test` sets `CARGO_MANIFEST_DIR` to the tested package, in this
/// checkout. The value compiled in is only the fallback (a test binary started by hand): cargo
/// does not rebuild a path crate whose sources moved, so in a target directory shared by two
/// checkouts (CI's clone and a working tree) the compiled-in folder can be the other checkout's.
pub fn root() -> PathBuf {
    let package = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let workspace = package
        .ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|manifest| manifest.contains("[workspace]"))
        })
        .map(Path::to_path_buf);
    workspace.unwrap_or(package)
}

/// The shared folder with the Knative CRD schemas: `$KLAMBDA_SHARED_DIR`, else `../shared`
/// beside the repository (`.ci/run` names the workplace's copy when it clones elsewhere).
pub fn shared_dir() -> Result<PathBuf> {
    let candidates = std::env::var_os("KLAMBDA_SHARED_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([root().join("../shared")]);
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
