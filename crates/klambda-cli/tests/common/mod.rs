//! What the tests of the real `klambda` binary share: `klambda up` on a free port, and the CLI
//! run against it.

#![allow(dead_code, reason = "each test file uses part of the helpers")]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use klambda_test_support::process::{free_port, terminate};
use klambda_test_support::repo;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_klambda");

/// The compiled runtimes' build cache every test platform shares (`--build-cache-dir`).
pub(crate) const BUILD_CACHE: &str = "/var/tmp/knative-lambda/build-cache";

pub(crate) struct Up {
    pub(crate) child: Child,
    pub(crate) endpoint: String,
    /// The API token `klambda up` created in its data directory.
    pub(crate) token: String,
}

impl Drop for Up {
    fn drop(&mut self) {
        // SIGTERM: `klambda up` stops its functions on the way out.
        let _ = terminate(&mut self.child, Duration::from_secs(10));
    }
}

/// `klambda up` on a free port over `data`, with `args` added, once it answers.
pub(crate) fn up(data: &Path, args: &[&str]) -> Result<Up> {
    up_in(&repo::root(), data, args)
}

/// [`up`] run in the directory `dir`, where a relative `data` is (as `klambda up`'s default,
/// `.klambda`, is).
pub(crate) fn up_in(dir: &Path, data: &Path, args: &[&str]) -> Result<Up> {
    let port = free_port()?;
    let child = Command::new(BIN)
        .current_dir(dir)
        .args(["up", "--port", &port.to_string(), "--data-dir"])
        .arg(data)
        .arg("--eventing-dir")
        .arg(repo::root().join("eventing"))
        // One Go build cache for every test platform on the machine: the standard library
        // compiles once.
        .args(["--build-cache-dir", BUILD_CACHE])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut up = Up {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
        token: String::new(),
    };
    // Wait for an HTTP answer, not a TCP connect: on loopback a connect to a free ephemeral
    // port can connect to itself and look like a listener.
    let started = Instant::now();
    loop {
        // The token is in the data directory once `klambda up` has started.
        up.token = std::fs::read_to_string(dir.join(data).join("api-token"))
            .map(|t| t.trim().to_owned())
            .unwrap_or_default();
        let answered = Command::new(BIN)
            .args(["--endpoint", &up.endpoint, "status"])
            .env("KLAMBDA_TOKEN", &up.token)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if answered {
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!("klambda up did not answer within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(up)
}

/// The CLI with `args`, against `up`, from the repository's root.
pub(crate) fn klambda(up: &Up, args: &[&str]) -> Result<Output> {
    let output = Command::new(BIN)
        .arg("--endpoint")
        .arg(&up.endpoint)
        .env("KLAMBDA_TOKEN", &up.token)
        .args(args)
        .current_dir(repo::root())
        .output()?;
    Ok(output)
}

/// Everything a command printed.
pub(crate) fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Writes a Node.js function `name` (`index.js` is `code`; `config`'s fields, such as triggers
/// or delivery, in its `klambda.json`) under `root`, and deploys it with `klambda deploy`.
pub(crate) fn deploy_node(
    platform: &Up,
    root: &Path,
    name: &str,
    config: serde_json::Value,
    code: &str,
) -> Result<()> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    let mut manifest =
        serde_json::json!({"name": name, "runtime": "nodejs20", "handler": "index.handler"});
    for (key, value) in config.as_object().into_iter().flatten() {
        manifest[key] = value.clone();
    }
    std::fs::write(dir.join("klambda.json"), manifest.to_string())?;
    std::fs::write(dir.join("index.js"), code)?;
    let deployed = klambda(platform, &["deploy", &dir.display().to_string()])?;
    if !deployed.status.success() {
        bail!("deploying {name}: {}", text(&deployed));
    }
    Ok(())
}

/// The platform's `/metrics` text.
pub(crate) fn metrics(platform: &Up) -> Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let metrics = runtime.block_on(klambda_test_support::http::get(&format!(
        "{}/metrics",
        platform.endpoint
    )))?;
    Ok(String::from_utf8_lossy(&metrics.body).into_owned())
}

/// `klambda invoke NAME EVENT -o json`: the answer's status and reply.
pub(crate) fn invoke_json(
    platform: &Up,
    name: &str,
    event: &str,
) -> Result<(u64, serde_json::Value)> {
    let called = klambda(platform, &["invoke", name, event, "-o", "json"])?;
    let answer: serde_json::Value = serde_json::from_slice(&called.stdout)
        .map_err(|e| anyhow::anyhow!("invoke {name}: {e}: {}", text(&called)))?;
    Ok((
        answer["status"].as_u64().unwrap_or_default(),
        answer["reply"].clone(),
    ))
}

/// The data of `name`'s latest event whose type ends with `ty` (`build.failed`), from
/// `klambda events`.
pub(crate) fn latest_event_data(platform: &Up, name: &str, ty: &str) -> Result<serde_json::Value> {
    let events = klambda(platform, &["events", name, "-o", "json"])?;
    String::from_utf8_lossy(&events.stdout)
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|e| e["event"]["type"].as_str().is_some_and(|t| t.ends_with(ty)))
        .map(|e| e["event"]["data"].clone())
        .ok_or_else(|| anyhow::anyhow!("no {ty} for {name}: {}", text(&events)))
}
