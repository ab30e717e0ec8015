//! `klambda init DIR --runtime R`: a new function that deploys as it is, from the runtime's
//! scaffold (`klambda_runtimes::scaffold`); `klambda init --list` lists what it can start.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use klambda_events::{FunctionName, Runtime};
use klambda_runtimes::scaffold;
use serde_json::json;

use super::Output;

/// `klambda init --list`: each runtime with its handler and test command.
pub fn list(output: Output) -> Result<i32> {
    for runtime in scaffold::runtimes() {
        let Some(scaffold) = scaffold::of(runtime) else {
            continue;
        };
        match output {
            Output::Json => say!(
                "{}",
                json!({"runtime": runtime.id(), "handler": scaffold.handler, "test": scaffold.test})
            ),
            Output::Text => say!(
                "{:<12} handler {:<14} test: {}",
                runtime.id(),
                scaffold.handler,
                scaffold.test.join(" ")
            ),
        }
    }
    Ok(0)
}

/// `klambda init DIR --runtime R [--name N]`: writes `klambda.json` and the scaffold into DIR,
/// which must be new or empty (nothing of the user's is overwritten).
pub fn init(dir: &Path, runtime: &str, name: Option<&str>, output: Output) -> Result<i32> {
    let startable = || {
        scaffold::runtimes()
            .iter()
            .map(|r| r.id())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(runtime) = Runtime::find(runtime) else {
        bail!(
            "unknown runtime {runtime:?}; klambda init starts: {}",
            startable()
        );
    };
    let Some(scaffold) = scaffold::of(runtime) else {
        bail!(
            "{} has no template yet; klambda init starts: {}",
            runtime.id(),
            startable()
        );
    };
    let name = match name {
        Some(name) => name.to_owned(),
        None => dir
            .canonicalize()
            .unwrap_or_else(|_| dir.to_owned())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .context("name the function with --name")?,
    };
    let function = FunctionName::new(name.clone())
        .map_err(|e| anyhow::anyhow!("{name:?} cannot name a function ({e}); pass --name"))?;
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{} is not empty; klambda init writes into a new or empty directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let manifest = json!({
        "name": function.as_str(),
        "runtime": runtime.id(),
        "handler": scaffold.handler,
    });
    let mut written = vec!["klambda.json"];
    std::fs::write(
        dir.join("klambda.json"),
        format!("{}\n", serde_json::to_string_pretty(&manifest)?),
    )?;
    for (path, text) in scaffold.render(function.as_str(), runtime) {
        if let Some(parent) = dir.join(path).parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(dir.join(path), text)?;
        written.push(path);
    }
    match output {
        Output::Json => say!(
            "{}",
            json!({"dir": dir, "name": function.as_str(), "runtime": runtime.id(), "files": written})
        ),
        Output::Text => {
            say!(
                "created {} ({}): {}",
                dir.display(),
                runtime.id(),
                written.join(", ")
            );
            say!(
                "  test:   cd {} && {}",
                dir.display(),
                scaffold.test.join(" ")
            );
            say!("  deploy: klambda deploy {}", dir.display());
            say!("  invoke: klambda invoke {function} '{{\"name\":\"you\"}}'");
        }
    }
    Ok(0)
}
