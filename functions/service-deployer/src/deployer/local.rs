//! The local runner: each revision is a process of the runtime's shim serving the built
//! artifact on a free port. A new revision must answer its health check before the previous one
//! stops; a revision that exits unexpectedly is restarted with backoff on the same port.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use klambda_events::{ContentDigest, FunctionName, FunctionSpec};
use klambda_runtimes::Template;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, oneshot};

use super::{BoxFuture, Deployer, NotReady, Revision};

/// How long a new revision has to answer `/health`.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// Lines of a revision's output kept (for `service.failed` and `klambda logs`).
const TAIL: usize = 200;
/// Lines of a failed revision's output put into `service.failed`.
const FAILURE_LINES: usize = 20;

/// How to start one revision.
#[derive(Debug, Clone)]
struct Launch {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: PathBuf,
    port: u16,
}

#[derive(Debug)]
struct RevisionState {
    revision: Revision,
    config: String,
    launch: Launch,
    stop: Option<oneshot::Sender<()>>,
    output: Tail,
}

#[derive(Debug, Default)]
struct FunctionState {
    revisions: Vec<RevisionState>,
    current: Option<usize>,
    next: u32,
}

/// Runs functions as local processes.
#[derive(Debug, Default)]
pub struct LocalRunner {
    functions: Mutex<HashMap<FunctionName, FunctionState>>,
}

impl LocalRunner {
    /// A runner with no functions.
    pub fn new() -> Self {
        Self::default()
    }
}

/// What decides whether a deployment is new: the image and the configuration the shim runs with.
fn config_of(spec: &FunctionSpec) -> String {
    format!("{}|{:?}|{:?}", spec.handler, spec.env, spec.resources)
}

fn launch_for(spec: &FunctionSpec, image: &str, port: u16) -> Result<Launch, NotReady> {
    let failed = |message: String| NotReady {
        revision: None,
        reason: "RevisionFailed".into(),
        message,
    };
    let artifact = image
        .strip_prefix("local:")
        .map(PathBuf::from)
        .ok_or_else(|| {
            failed(format!(
                "{image} is not a local artifact; the local runner runs local builds"
            ))
        })?;
    let template = Template::of(spec.runtime).map_err(|e| failed(e.to_string()))?;
    let mut start = template.descriptor().start.clone();
    // The container paths of the start command, mapped onto the artifact directory.
    for arg in &mut start {
        if let Some(rest) = arg.strip_prefix("/var/runtime/") {
            *arg = artifact.join("runtime").join(rest).display().to_string();
        }
    }
    let (program, args) = start
        .split_first()
        .ok_or_else(|| failed("the runtime's start command is empty".into()))?;
    let function = artifact.join("function");
    let mut env: Vec<(String, String)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.extend([
        ("PORT".to_owned(), port.to_string()),
        (
            "KLAMBDA_FUNCTION_ROOT".to_owned(),
            function.display().to_string(),
        ),
        ("KLAMBDA_HANDLER".to_owned(), spec.handler.clone()),
        ("KLAMBDA_FUNCTION_NAME".to_owned(), spec.name.to_string()),
        (
            "KLAMBDA_TIMEOUT_SECONDS".to_owned(),
            spec.resources.timeout_seconds.to_string(),
        ),
    ]);
    Ok(Launch {
        program: program.clone(),
        args: args.to_vec(),
        env,
        dir: function,
        port,
    })
}

fn free_port() -> Result<u16, NotReady> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| NotReady {
            revision: None,
            reason: "RevisionFailed".into(),
            message: format!("no free port: {e}"),
        })
}

/// The last lines a process wrote, shared with the tasks reading its output.
type Tail = Arc<SyncMutex<VecDeque<String>>>;

/// Starts the process, keeping the last lines of its output in `tail`.
fn spawn(launch: &Launch, tail: &Tail) -> Result<Child, String> {
    let mut child = Command::new(&launch.program)
        .args(&launch.args)
        .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&launch.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{} could not start: {e}", launch.program))?;
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    {
        let tail = Arc::clone(tail);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut tail) = tail.lock() {
                    tail.push_back(line);
                    while tail.len() > TAIL {
                        tail.pop_front();
                    }
                }
            }
        });
    }
    Ok(child)
}

fn tail_lines(tail: &SyncMutex<VecDeque<String>>, last: usize) -> Vec<String> {
    tail.lock()
        .map(|t| {
            t.iter()
                .skip(t.len().saturating_sub(last))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the process answers `GET /health` with 200, or exits, or the time is up.
async fn healthy(child: &mut Child, port: u16) -> Result<(), String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let url = format!("http://127.0.0.1:{port}/health");
    let deadline = tokio::time::Instant::now() + READY_WITHIN;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the process exited ({status}) before it was ready"));
        }
        if let Ok(uri) = url.parse::<http::Uri>()
            && let Ok(response) = client.get(uri).await
            && response.status().is_success()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "no healthy answer on {url} within {READY_WITHIN:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Keeps a ready revision running: restarts it with backoff if it exits, until stopped.
fn supervise(launch: Launch, tail: Tail, mut child: Child, mut stop: oneshot::Receiver<()>) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            tokio::select! {
                _ = &mut stop => {
                    let _ = child.kill().await;
                    return;
                }
                status = child.wait() => {
                    tracing::warn!(port = launch.port, ?status, ?backoff, "function process exited; restarting");
                    tokio::select! {
                        _ = &mut stop => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    match spawn(&launch, &tail) {
                        Ok(next) => child = next,
                        Err(error) => tracing::error!(%error, "function process could not restart"),
                    }
                }
            }
        }
    });
}

/// Starts a revision and waits until it is ready; on success it is supervised.
async fn start(launch: &Launch, name: &str, tail: &Tail) -> Result<oneshot::Sender<()>, NotReady> {
    let mut child = spawn(launch, tail).map_err(|message| NotReady {
        revision: Some(name.to_owned()),
        reason: "RevisionFailed".into(),
        message,
    })?;
    if let Err(problem) = healthy(&mut child, launch.port).await {
        let _ = child.kill().await;
        // Give the output readers a moment to drain what the process said before it died.
        tokio::time::sleep(Duration::from_millis(100)).await;
        return Err(NotReady {
            revision: Some(name.to_owned()),
            reason: "RevisionFailed".into(),
            message: format!("{problem}\n{}", tail_lines(tail, FAILURE_LINES).join("\n"))
                .trim()
                .to_owned(),
        });
    }
    let (stop, stopped) = oneshot::channel();
    supervise(launch.clone(), Arc::clone(tail), child, stopped);
    Ok(stop)
}

fn stop(state: &mut RevisionState) {
    if let Some(stop) = state.stop.take() {
        let _ = stop.send(());
    }
}

impl Deployer for LocalRunner {
    fn deploy<'a>(
        &'a self,
        spec: &'a FunctionSpec,
        digest: &'a ContentDigest,
        image: &'a str,
    ) -> BoxFuture<'a, Result<Revision, NotReady>> {
        Box::pin(async move {
            let mut functions = self.functions.lock().await;
            let function = functions.entry(spec.name.clone()).or_default();
            let config = config_of(spec);
            if let Some(current) = function.current.map(|i| &function.revisions[i])
                && current.revision.image == image
                && current.config == config
                && current.stop.is_some()
            {
                return Ok(Revision {
                    changed: false,
                    ..current.revision.clone()
                });
            }
            function.next += 1;
            let name = format!("{}-{:05}", spec.name, function.next);
            let port = free_port()?;
            let launch = launch_for(spec, image, port).map_err(|e| NotReady {
                revision: Some(name.clone()),
                ..e
            })?;
            let output = Tail::default();
            let stopper = start(&launch, &name, &output).await?;
            let first = function.revisions.is_empty();
            let revision = Revision {
                name,
                url: format!("http://127.0.0.1:{port}"),
                image: image.to_owned(),
                digest: digest.clone(),
                first,
                changed: true,
            };
            // The new revision is ready: only now does the previous one stop.
            if let Some(previous) = function.current {
                stop(&mut function.revisions[previous]);
            }
            function.revisions.push(RevisionState {
                revision: revision.clone(),
                config,
                launch,
                stop: Some(stopper),
                output,
            });
            function.current = Some(function.revisions.len() - 1);
            Ok(revision)
        })
    }

    fn rollback<'a>(
        &'a self,
        name: &'a FunctionName,
        to: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Revision, NotReady>> {
        Box::pin(async move {
            let mut functions = self.functions.lock().await;
            let missing = |message: String| NotReady {
                revision: None,
                reason: "RevisionMissing".into(),
                message,
            };
            let function = functions
                .get_mut(name)
                .ok_or_else(|| missing(format!("{name} has no revisions")))?;
            let current = function
                .current
                .ok_or_else(|| missing(format!("{name} serves no revision")))?;
            let target = match to {
                Some(wanted) => function
                    .revisions
                    .iter()
                    .position(|r| r.revision.name == wanted)
                    .ok_or_else(|| missing(format!("{name} has no revision {wanted}")))?,
                None => current.checked_sub(1).ok_or_else(|| {
                    missing(format!(
                        "{name} has no revision before {}",
                        function.revisions[current].revision.name
                    ))
                })?,
            };
            if target == current {
                return Ok(Revision {
                    changed: false,
                    ..function.revisions[current].revision.clone()
                });
            }
            let launch = function.revisions[target].launch.clone();
            let revision_name = function.revisions[target].revision.name.clone();
            let output = Arc::clone(&function.revisions[target].output);
            let stopper = start(&launch, &revision_name, &output).await?;
            stop(&mut function.revisions[current]);
            function.revisions[target].stop = Some(stopper);
            function.current = Some(target);
            Ok(Revision {
                changed: true,
                first: false,
                ..function.revisions[target].revision.clone()
            })
        })
    }

    fn logs<'a>(&'a self, name: &'a FunctionName) -> BoxFuture<'a, Option<(String, Vec<String>)>> {
        Box::pin(async move {
            let functions = self.functions.lock().await;
            let function = functions.get(name)?;
            let current = &function.revisions[function.current?];
            Some((
                current.revision.name.clone(),
                tail_lines(&current.output, TAIL),
            ))
        })
    }

    fn delete<'a>(&'a self, name: &'a FunctionName) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let mut functions = self.functions.lock().await;
            match functions.remove(name) {
                Some(mut function) => {
                    for revision in &mut function.revisions {
                        stop(revision);
                    }
                    true
                }
                None => false,
            }
        })
    }
}
