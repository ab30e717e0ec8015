//! Nothing lost, nothing twice, under crashes (issue 14): the stages split over four
//! `klambda up` processes on the real RabbitMQ and PostgreSQL, as an operator scales them out,
//! a dozen functions submitted at once, and while they build and deploy: the parser/uploader,
//! job-launcher and service-deployer processes are killed with SIGKILL and started again, and
//! RabbitMQ is stopped and started (`rabbitmqctl stop_app` / `start_app`). Every submission
//! must end `ready` and answer with its own code; each function runs exactly one process; no
//! message is left in any queue; no function process outlives the platform. And the embedded
//! default, whose broker keeps nothing: `klambda up` killed mid-run and started again resumes
//! every accepted submission.
//!
//! Bounded: 12 (and 6) functions whose builds take ~2 s each (an npm `preinstall` that waits), faults
//! at fixed offsets, two minutes for everything to settle.
//!
//! Needs RabbitMQ on 127.0.0.1:5672 and PostgreSQL on 127.0.0.1:5432 (`scripts/services.sh`
//! starts both), or `$KLAMBDA_TEST_AMQP_URL` / `$KLAMBDA_TEST_DATABASE_URL`; stops the RabbitMQ
//! application for a moment, which is why it is a test binary of its own (they run one after
//! another).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use klambda_events::Envelope;
use klambda_events::catalogue::FunctionCreated;
use klambda_events::spec::FunctionSubmission;
use klambda_test_support::http::{get_with, post};
use klambda_test_support::process::{free_port, terminate, wait_healthy};
use klambda_test_support::{rabbitmq, repo};
use klambda_tests::workspace_binary;

const FUNCTIONS: usize = 12;

fn database_url() -> String {
    std::env::var("KLAMBDA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// One `klambda up` process: the whole platform, or some stages of a split one.
struct Process {
    /// What it runs, for messages and its log's name.
    label: String,
    /// Its arguments after `up --port P --data-dir D --eventing-dir E`.
    args: Vec<String>,
    port: u16,
    data_dir: PathBuf,
    child: Child,
}

impl Process {
    /// The stages `stages` of the platform `instance`, on RabbitMQ and PostgreSQL.
    async fn stages(stages: &str, instance: &str, data_dir: &Path) -> Result<Self> {
        let args = [
            "--instance",
            instance,
            "--stages",
            stages,
            "--broker",
            &rabbitmq::url(),
            "--database-url",
            &database_url(),
        ];
        Self::start(stages, args.map(str::to_owned).to_vec(), data_dir).await
    }

    async fn start(label: &str, args: Vec<String>, data_dir: &Path) -> Result<Self> {
        let port = free_port()?;
        let label = label.replace(',', "+");
        let child = spawn(&label, &args, port, data_dir)?;
        let mut process = Self {
            label,
            args,
            port,
            data_dir: data_dir.to_owned(),
            child,
        };
        process.wait().await?;
        Ok(process)
    }

    async fn wait(&mut self) -> Result<()> {
        let health = format!("http://127.0.0.1:{}/health", self.port);
        wait_healthy(&health, &mut self.child, Duration::from_secs(60))
            .await
            .with_context(|| {
                format!(
                    "klambda up ({}) did not start; log: {}",
                    self.label,
                    log(&self.data_dir, &self.label).display()
                )
            })
    }

    /// SIGKILL, as the OOM killer or a lost node would; started again after `pause`.
    async fn crash_and_restart(&mut self, pause: Duration) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        tokio::time::sleep(pause).await;
        self.child = spawn(&self.label, &self.args, self.port, &self.data_dir)?;
        self.wait().await
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// SIGTERM, as Knative stops a pod: it must exit cleanly.
    fn stop(&mut self) -> Result<()> {
        let code =
            tokio::task::block_in_place(|| terminate(&mut self.child, Duration::from_secs(20)))?;
        ensure!(code.success(), "klambda up ({}) exited {code}", self.label);
        Ok(())
    }
}

impl Drop for Process {
    /// A failed test leaves no platform running (a passing one stopped it with SIGTERM).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The API token the platforms of these tests are started with (`KLAMBDA_TOKEN`).
const API_TOKEN: &str = "chaos-test-api-token";

/// The `Authorization` header that token makes.
fn authorized() -> (&'static str, &'static str) {
    ("authorization", "Bearer chaos-test-api-token")
}

fn log(data_dir: &Path, label: &str) -> PathBuf {
    data_dir.join(format!("{label}.log"))
}

fn spawn(label: &str, args: &[String], port: u16, data_dir: &Path) -> Result<Child> {
    std::fs::create_dir_all(data_dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log(data_dir, label))?;
    Command::new(workspace_binary("klambda")?)
        .args(["up", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--eventing-dir")
        .arg(repo::root().join("eventing"))
        .args(args)
        .env("RUST_LOG", "info")
        .env("KLAMBDA_TOKEN", API_TOKEN)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting klambda up")
}

fn rabbitmqctl(args: &[&str]) -> Result<()> {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .context("running rabbitmqctl (scripts/services.sh installs RabbitMQ)")?;
    ensure!(status.success(), "rabbitmqctl {args:?} failed: {status}");
    Ok(())
}

/// Starts the RabbitMQ application again however the test ends.
struct RabbitRestart;

impl RabbitRestart {
    fn stop() -> Result<Self> {
        rabbitmqctl(&["stop_app"])?;
        Ok(Self)
    }
}

impl Drop for RabbitRestart {
    fn drop(&mut self) {
        if let Err(error) =
            rabbitmqctl(&["start_app"]).and_then(|()| rabbitmqctl(&["await_startup"]))
        {
            eprintln!("could not start RabbitMQ again: {error}; run scripts/services.sh");
        }
    }
}

/// A Node.js function whose build takes ~2 s (an npm `preinstall` that waits), so builds are
/// running when the faults hit.
fn submission(name: &str, n: usize) -> Result<FunctionSubmission> {
    let handler = format!("exports.handler = async (e) => ({{ hello: e.name, n: {n} }});");
    let package = format!(
        r#"{{"name":"{name}","version":"1.0.0","scripts":{{"preinstall":"node -e \"setTimeout(()=>{{}},2000)\""}}}}"#
    );
    Ok(serde_json::from_value(serde_json::json!({
        "name": name,
        "runtime": "nodejs20",
        "handler": "index.handler",
        "source": {"kind": "inline", "files": [
            {"path": "index.js", "content": handler},
            {"path": "package.json", "content": package},
        ]},
    }))?)
}

/// Each function's phase, as the status API reports it.
async fn phases(status: &Process, names: &[String]) -> Result<BTreeMap<String, String>> {
    let mut phases = BTreeMap::new();
    for name in names {
        let reply = get_with(&status.url(&format!("/functions/{name}")), &[authorized()]).await?;
        let phase = if reply.status == 200 {
            reply.json()?["phase"].as_str().unwrap_or("?").to_owned()
        } else {
            format!("HTTP {}", reply.status)
        };
        phases.insert(name.clone(), phase);
    }
    Ok(phases)
}

/// Submits `count` functions named `<prefix>-<n>` through `platform`'s ingress; their names.
async fn submit(platform: &Process, prefix: &str, count: usize) -> Result<Vec<String>> {
    let names: Vec<String> = (0..count).map(|n| format!("{prefix}-{n}")).collect();
    for (n, name) in names.iter().enumerate() {
        let event = Envelope::new(name.clone(), "/tests")
            .subject(name.clone())
            .encode::<FunctionCreated>(&submission(name, n)?);
        let answer = post(
            &platform.url("/"),
            &[
                ("content-type", "application/cloudevents+json"),
                authorized(),
            ],
            klambda_harness::codec::to_structured(&event).to_string(),
        )
        .await?;
        ensure!(answer.status == 202, "submitting {name}: {answer:?}");
    }
    Ok(names)
}

/// Waits until every one of `names` settled, then checks that each is ready, serves its own
/// code (`n`), and runs in exactly one process.
async fn all_ready_once(status: &Process, names: &[String], data_dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let settled = loop {
        let phases = phases(status, names).await?;
        if phases.values().all(|p| p == "ready" || p == "failed") {
            break phases;
        }
        if Instant::now() > deadline {
            bail!(
                "not settled within 120 s of the faults: {phases:?}; logs in {}",
                data_dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let not_ready: Vec<_> = settled.iter().filter(|(_, p)| *p != "ready").collect();
    ensure!(
        not_ready.is_empty(),
        "every function is genuine and must end ready: {not_ready:?}; logs in {}",
        data_dir.display()
    );
    for (n, name) in names.iter().enumerate() {
        let state = get_with(&status.url(&format!("/functions/{name}")), &[authorized()])
            .await?
            .json()?;
        let url = state["url"]
            .as_str()
            .context("a ready function has a URL")?;
        let reply = klambda_tests::invoke(url, "chaos").await?;
        ensure!(
            reply["n"] == n,
            "{name} serves another function's code: {reply}"
        );
    }
    // Nothing twice: one process per function, though its build.completed may have been
    // delivered to a runner that was killed and again to the one that replaced it.
    let Some(prefix) = names
        .first()
        .and_then(|n| n.rsplit_once('-'))
        .map(|(p, _)| p)
    else {
        return Ok(());
    };
    let running = function_processes(&format!("{prefix}-"))?;
    for name in names {
        let copies = running.iter().filter(|(_, f)| f == name).count();
        ensure!(
            copies == 1,
            "{name} runs in {copies} processes: {running:?}"
        );
    }
    Ok(())
}

/// No process serves a function named `prefix…` any more, moments after the platform exited:
/// its functions die with it (SIGTERM stops them, `--pdeathsig KILL` kills what is left when
/// it exits), which the kernel carries out within milliseconds, not at the instant of exit.
fn no_orphans(prefix: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let orphans = function_processes(prefix)?;
        if orphans.is_empty() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "function processes outlived the platform by 5 s: {orphans:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until at least one of `names` reports `phase`.
async fn wait_for_any(
    status: &Process,
    names: &[String],
    phase: &str,
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let phases = phases(status, names).await?;
        if phases.values().any(|p| p == phase) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no function reached {phase} within {within:?}: {phases:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The live processes on this machine serving a function whose name starts with `prefix`:
/// pid and function.
fn function_processes(prefix: &str) -> Result<Vec<(u32, String)>> {
    Ok(klambda_test_support::process::function_processes()
        .into_iter()
        .filter(|(_, function)| function.starts_with(prefix))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_submission_ends_ready_when_stages_and_rabbitmq_crash_mid_run() -> Result<()> {
    let run = std::process::id();
    let instance = rabbitmq::Instance::new("chaos");
    let instance = instance.name();
    let data_dir = klambda_tests::data_dir("chaos");
    let mut status = Process::stages("status-reporter", instance, &data_dir).await?;
    let mut front = Process::stages("parser,context-uploader", instance, &data_dir).await?;
    let mut builder = Process::stages("job-launcher", instance, &data_dir).await?;
    let mut deployer = Process::stages("service-deployer", instance, &data_dir).await?;

    let names = submit(&status, &format!("chaos-{run}"), FUNCTIONS).await?;

    // Faults while the work is in flight: the parser/uploader process right away, the
    // job-launcher once builds run, RabbitMQ while later builds and deploys run.
    front
        .crash_and_restart(Duration::from_millis(500))
        .await
        .context("restarting the parser/uploader process")?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    builder
        .crash_and_restart(Duration::from_secs(2))
        .await
        .context("restarting the job-launcher process")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    {
        let down = tokio::task::spawn_blocking(RabbitRestart::stop).await??;
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Dropping it starts RabbitMQ again.
        tokio::task::spawn_blocking(move || drop(down)).await?;
    }
    // The service-deployer once functions are being deployed.
    wait_for_any(&status, &names, "ready", Duration::from_secs(60)).await?;
    deployer
        .crash_and_restart(Duration::from_secs(1))
        .await
        .context("restarting the service-deployer process")?;

    all_ready_once(&status, &names, &data_dir).await?;
    // Nothing left unsent: every queue of the platform drains (redeliveries of work already
    // done are answered from what is recorded, quickly, but may still be in flight).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let queues = rabbitmq::queues(instance)?;
        ensure!(!queues.is_empty(), "no queue of {instance} found");
        let held: Vec<_> = queues.iter().filter(|(_, count)| *count > 0).collect();
        if held.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "messages left in {held:?} 30 s after every function was ready"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    for process in [&mut deployer, &mut builder, &mut front, &mut status] {
        process.stop()?;
    }
    // No orphan: the killed service-deployer's functions died with it, the last one's on stop.
    no_orphans(&format!("chaos-{run}-"))?;
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}

/// The embedded default keeps nothing in its broker: `klambda up` killed with SIGKILL while
/// functions parse and build, and started again on the same data directory, resumes every
/// accepted submission from its status store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn klambda_up_killed_mid_run_resumes_every_accepted_submission() -> Result<()> {
    let run = std::process::id();
    let data_dir = klambda_tests::data_dir("crash");
    let mut platform = Process::start("embedded", Vec::new(), &data_dir).await?;
    let names = submit(&platform, &format!("crash-{run}"), 6).await?;
    // Killed while builds run (each takes ~2 s), some functions still parsing.
    wait_for_any(&platform, &names, "building", Duration::from_secs(60)).await?;
    platform
        .crash_and_restart(Duration::from_millis(200))
        .await
        .context("starting klambda up again")?;
    all_ready_once(&platform, &names, &data_dir).await?;
    platform.stop()?;
    no_orphans(&format!("crash-{run}-"))?;
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}
