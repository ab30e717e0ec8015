//! The platform's images (the Dockerfile, `scripts/images`) and the podman that runs them, with
//! the project's containers configuration (`images/containers.conf`).

use std::process::Command;

use anyhow::{Context as _, Result, ensure};

use crate::repo;

/// podman with the project's containers configuration.
pub fn podman() -> Command {
    let mut command = Command::new("podman");
    command.env(
        "CONTAINERS_CONF",
        repo::root().join("images/containers.conf"),
    );
    command
}

/// The local name `scripts/images` gives the image of `binary`.
pub fn reference(binary: &str) -> String {
    format!("localhost/knative-lambda/{binary}:built")
}

/// The image `scripts/images` built for `binary`; fails saying how to build it when there is
/// none, or how to install podman.
pub fn built(binary: &str) -> Result<String> {
    let image = reference(binary);
    let found = podman()
        .args(["image", "exists", &image])
        .status()
        .context(
            "podman is not installed: run scripts/services.sh (it installs podman and runc)",
        )?;
    ensure!(
        found.success(),
        "no image {image}: run scripts/images (scripts/test runs it before the tests)"
    );
    Ok(image)
}

/// One field of `podman image inspect` (a Go template such as `{{.Size}}`) of `image`.
pub fn inspect(image: &str, format: &str) -> Result<String> {
    let output = podman()
        .args(["image", "inspect", "--format", format, image])
        .output()?;
    ensure!(
        output.status.success(),
        "podman image inspect {image}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
