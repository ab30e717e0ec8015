//! The local builder: unpacks the context in a work directory, checks each source file's syntax
//! with the runtime's checker, installs dependencies with the runtime's own tool, all under the
//! build's deadline and cancellable; the artifact is the directory (`local:/path`).
//!
//! Known limit: a deadline or a cancel kills the running tool (npm, pip), not processes that
//! tool spawned itself (an npm `preinstall` script): those end on their own. On Kubernetes the
//! Kaniko builder runs in a pod that is deleted whole.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use klambda_events::data::BuildFailureCause;
use klambda_runtimes::{Template, interpreter};
use klambda_storage::ObjectStore;
use tokio::sync::oneshot;

use super::{BoxFuture, BuildOutcome, BuildRequest, Builder, BuilderError, Launch};

/// Lines of output kept in `build.failed`.
const EXCERPT_LINES: usize = 20;

/// Builds on this machine.
#[derive(Clone)]
pub struct LocalBuilder {
    store: Arc<dyn ObjectStore>,
    work: PathBuf,
    /// Where compiled runtimes' build caches are (see [`LocalBuilder::with_cache_dir`]).
    cache: PathBuf,
}

impl LocalBuilder {
    /// A builder reading contexts from `store` and building under `work`, its caches in
    /// `<work>/.cache`.
    pub fn new(store: Arc<dyn ObjectStore>, work: impl Into<PathBuf>) -> Self {
        let work = absolute(work.into());
        Self {
            store,
            cache: work.join(".cache"),
            work,
        }
    }

    /// Keeps compiled runtimes' build caches (Go's `GOCACHE`, `GOMODCACHE`) under `dir`, one
    /// per runtime id: builders sharing it (platforms on one machine, the tests) compile the
    /// standard library and shared dependencies once.
    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache = absolute(dir.into());
        self
    }

    async fn run(&self, request: &BuildRequest) -> BuildOutcome {
        let failed = |cause, reason: String, log: Option<String>| BuildOutcome::Failed {
            cause,
            reason,
            log_excerpt: log,
        };
        let template = match Template::of(request.spec.runtime) {
            Ok(template) => template,
            Err(error) => return failed(BuildFailureCause::Unknown, error.to_string(), None),
        };
        let key = klambda_storage::context_key(request.digest.hex());
        let archive = match self.store.get(&key).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                return failed(
                    BuildFailureCause::Unknown,
                    format!("the build context {key} is missing"),
                    None,
                );
            }
            Err(error) => return failed(BuildFailureCause::Unknown, error.to_string(), None),
        };
        let dir = self.work.join(request.build_id.as_str());
        // A previous attempt of this build may have left a partial directory.
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let unpacked = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || unpack(&archive, &dir)).await
        };
        match unpacked {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return failed(BuildFailureCause::Unknown, reason, None),
            Err(error) => return failed(BuildFailureCause::Unknown, error.to_string(), None),
        }
        let function = dir.join("function");
        let log_file = dir.join(BUILD_LOG);
        let descriptor = template.descriptor();
        // The interpreter the runtime id names (`python3.13`: a Python 3.13), or no build.
        let runtime = request.spec.runtime;
        let found = tokio::task::spawn_blocking(move || {
            interpreter::find(
                runtime,
                &std::env::var("KLAMBDA_INTERPRETERS").unwrap_or_default(),
                &std::env::var("PATH").unwrap_or_default(),
            )
        })
        .await;
        let interpreter = match found {
            Ok(Ok(interpreter)) => interpreter,
            Ok(Err(error)) => {
                return failed(
                    BuildFailureCause::RuntimeUnavailable,
                    error.to_string(),
                    None,
                );
            }
            Err(error) => return failed(BuildFailureCause::Unknown, error.to_string(), None),
        };
        append_log(
            &log_file,
            &format!(
                "runtime {}: {} ({})\n",
                runtime.id(),
                interpreter.describe(runtime),
                interpreter.program.display()
            ),
        )
        .await;
        // The runtime's own program in its commands (`python3 -m pip`) is that interpreter.
        let program = descriptor.start.first().cloned().unwrap_or_default();
        let with_interpreter = |command: &[String]| -> Vec<String> {
            let mut command = command.to_vec();
            if command.first() == Some(&program) {
                command[0] = interpreter.program.display().to_string();
            }
            command
        };
        for file in sources(&function, &descriptor.check.extensions) {
            let mut command = with_interpreter(&descriptor.check.command);
            command.push(file.display().to_string());
            if let Err((reason, log)) = run(&command, &function, &[], &log_file).await {
                return failed(BuildFailureCause::CompileError, reason, Some(log));
            }
        }
        if !descriptor.install.is_empty()
            && function.join(&descriptor.dependency_file).is_file()
            && let Err((reason, log)) = run(
                &with_interpreter(&descriptor.install),
                &function,
                &[],
                &log_file,
            )
            .await
        {
            return failed(BuildFailureCause::DependencyResolution, reason, Some(log));
        }
        if template.is_compiled() {
            let command: Vec<String> = descriptor
                .build
                .iter()
                .map(|arg| match arg.strip_prefix("/var/runtime/") {
                    Some(rest) => dir.join("runtime").join(rest).display().to_string(),
                    None => arg.clone(),
                })
                .collect();
            let env = self.build_env(runtime, descriptor, &interpreter.program);
            if let Err((reason, log)) = run(&command, &dir, &env, &log_file).await {
                let dependencies = descriptor
                    .dependency_errors
                    .iter()
                    .any(|marker| log.contains(marker.as_str()));
                let diagnostics = klambda_runtimes::diagnostics::parse(&log);
                return BuildOutcome::Failed {
                    cause: if dependencies {
                        BuildFailureCause::DependencyResolution
                    } else {
                        BuildFailureCause::CompileError
                    },
                    reason: diagnostics
                        .first()
                        .map_or(reason, |first| format!("{first}")),
                    log_excerpt: Some(log),
                };
            }
        }
        BuildOutcome::Completed {
            image: format!("local:{}", dir.display()),
        }
    }
}

impl LocalBuilder {
    /// The environment a compiled runtime's build runs with: the descriptor's, the toolchain
    /// found for the runtime id first on `PATH`, and each of its caches in a directory shared by
    /// every build of that runtime id (`<cache>/<runtime id>/<variable>`).
    fn build_env(
        &self,
        runtime: klambda_events::Runtime,
        descriptor: &klambda_runtimes::Descriptor,
        toolchain: &Path,
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = descriptor
            .build_env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(bin) = toolchain.parent() {
            let path = std::env::var("PATH").unwrap_or_default();
            env.push(("PATH".to_owned(), format!("{}:{path}", bin.display())));
        }
        for variable in &descriptor.build_caches {
            let dir = self.cache.join(runtime.id()).join(variable.to_lowercase());
            env.push((variable.clone(), dir.display().to_string()));
        }
        env
    }
}

impl Builder for LocalBuilder {
    fn backend(&self) -> &'static str {
        "local"
    }

    fn launch(
        &self,
        request: BuildRequest,
        cancel: oneshot::Receiver<String>,
    ) -> BoxFuture<Result<Launch, BuilderError>> {
        let builder = self.clone();
        Box::pin(async move {
            let deadline = request.spec.build.timeout_seconds;
            let build = builder.run(&request);
            let outcome = tokio::select! {
                outcome = tokio::time::timeout(Duration::from_secs(u64::from(deadline)), build) => {
                    outcome.unwrap_or(BuildOutcome::TimedOut { deadline_seconds: deadline })
                }
                Ok(reason) = cancel => BuildOutcome::Cancelled { reason },
            };
            // Dropping the build future kills its child process (kill_on_drop).
            Ok(Launch::Ended(outcome))
        })
    }
}

/// Unpacks our own context archive, refusing anything but regular files inside `dir`.
fn unpack(archive: &[u8], dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let entries = tar
        .entries()
        .map_err(|e| format!("reading the context: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("reading the context: {e}"))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err("the context holds something other than regular files".into());
        }
        // `unpack_in` refuses paths that would leave `dir`.
        let inside = entry
            .unpack_in(dir)
            .map_err(|e| format!("unpacking the context: {e}"))?;
        if !inside {
            return Err("the context holds a path outside its directory".into());
        }
    }
    Ok(())
}

/// Appends to the build log; a log that cannot be written does not fail the build.
async fn append_log(log: &Path, text: &str) {
    use tokio::io::AsyncWriteExt as _;
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .await;
    if let Ok(mut file) = file {
        let _ = file.write_all(text.as_bytes()).await;
    }
}

/// Source files with one of `extensions` under `root`, sorted, skipping installed dependencies.
fn sources(root: &Path, extensions: &[String]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if name != "node_modules" && name != ".deps" && name != "__pycache__" {
                    stack.push(path);
                }
            } else if extensions.iter().any(|ext| name.ends_with(ext.as_str())) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The file in a build's directory holding every command it ran and their output.
pub const BUILD_LOG: &str = "build.log";

/// `path` from the root: builds run their commands in the build's own directory, where a
/// relative path (the default data directory is `.klambda`) would mean something else.
fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

/// Runs `argv` in `dir`, appending the command and its output to `log`; on failure, a one-line
/// reason and the last lines of output.
async fn run(
    argv: &[String],
    dir: &Path,
    env: &[(String, String)],
    log: &Path,
) -> Result<(), (String, String)> {
    let Some((program, args)) = argv.split_first() else {
        return Err((
            "the runtime descriptor has an empty command".into(),
            String::new(),
        ));
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().map_err(|e| {
        (
            format!("{program} could not run ({e}); is it installed?"),
            String::new(),
        )
    })?;
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| (format!("{program} failed to run: {e}"), String::new()))?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    // A tool's JSON messages (Cargo's) as the text they render, for the log and its excerpt.
    let text = klambda_runtimes::diagnostics::readable(&text);
    append_log(log, &format!("$ {}\n{text}", argv.join(" "))).await;
    if output.status.success() {
        return Ok(());
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let excerpt = lines[lines.len().saturating_sub(EXCERPT_LINES)..].join("\n");
    let reason = format!("`{}` failed with {}", argv.join(" "), output.status);
    Err((reason, excerpt))
}
