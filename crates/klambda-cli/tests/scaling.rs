//! Serving on one machine as Knative serves on a cluster, through the real `klambda up`: a
//! function's processes go to zero when idle and the next call waits for one (a cold start,
//! recorded); `scaling.concurrency` holds per process and a burst adds processes up to
//! `maxScale`, then they go again. Processes are counted in `/proc`
//! (`klambda_test_support::process::function_processes`), not taken from the platform's word.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use common::{Up, deploy_node, klambda, metrics, text, up};
use serde_json::{Value, json};

fn scratch(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("klambda-scaling-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// How many processes run for the function `name` on this machine now.
fn processes_of(name: &str) -> usize {
    klambda_test_support::process::function_processes()
        .iter()
        .filter(|(_, function)| function == name)
        .count()
}

/// `klambda status NAME -o json`.
fn status(platform: &Up, name: &str) -> Result<Value> {
    let shown = klambda(platform, &["status", name, "-o", "json"])?;
    ensure!(shown.status.success(), "{}", text(&shown));
    let list: Value = serde_json::from_slice(&shown.stdout)?;
    Ok(match list {
        Value::Array(mut all) if !all.is_empty() => all.remove(0),
        other => other,
    })
}

/// Waits (at most `within`) until `name` has no process left, by `/proc` and by its status.
fn scaled_to_zero(platform: &Up, name: &str, within: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        let scale = status(platform, name)?["scale"].clone();
        if processes_of(name) == 0 && scale["replicas"] == 0 {
            return Ok(());
        }
        if started.elapsed() > within {
            bail!(
                "{name} still has {} processes after {within:?}; its status says {scale}",
                processes_of(name)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_idle_function_scales_to_zero_and_the_next_call_is_a_recorded_cold_start() -> Result<()> {
    let root = scratch("zero")?;
    let platform = up(&root.join("data"), &[])?;
    deploy_node(
        &platform,
        &root,
        "sleepy",
        json!({"scaling": {"scaleToZeroAfterSeconds": 1}}),
        "exports.handler = async (e) => ({ pid: process.pid, hello: e.name });",
    )?;
    // Deployed: one process, proven ready, then gone once idle for a second.
    let warm = klambda(&platform, &["invoke", "sleepy", r#"{"name":"ada"}"#])?;
    ensure!(warm.status.success(), "{}", text(&warm));
    ensure!(text(&warm).contains("warm: "), "{}", text(&warm));
    let first = status(&platform, "sleepy")?;
    ensure!(first["scale"]["replicas"] == 1, "{first}");
    ensure!(first["scale"]["coldStarts"] == 0, "{first}");
    ensure!(
        processes_of("sleepy") == 1,
        "{} processes",
        processes_of("sleepy")
    );
    scaled_to_zero(&platform, "sleepy", Duration::from_secs(10))?;

    // The next call waits for a process (held, not refused) and is answered.
    let cold = klambda(
        &platform,
        &["invoke", "sleepy", r#"{"name":"grace"}"#, "-o", "json"],
    )?;
    ensure!(cold.status.success(), "{}", text(&cold));
    let answer: Value = serde_json::from_slice(&cold.stdout)?;
    ensure!(answer["status"] == 200, "{answer}");
    ensure!(answer["reply"]["hello"] == "grace", "{answer}");
    ensure!(answer["coldStart"] == true, "{answer}");
    ensure!(answer["coldStartMs"].as_u64().is_some(), "{answer}");
    // The human form says so too.
    scaled_to_zero(&platform, "sleepy", Duration::from_secs(10))?;
    let said = text(&klambda(&platform, &["invoke", "sleepy", "{}"])?);
    ensure!(said.contains("cold start: "), "{said}");

    let after = status(&platform, "sleepy")?;
    ensure!(after["scale"]["coldStarts"] == 2, "{after}");
    let last = &after["scale"]["lastColdStart"];
    ensure!(last["durationMs"].as_u64().is_some(), "{after}");
    ensure!(
        last["at"].as_str().is_some_and(|at| at.ends_with('Z')),
        "{after}"
    );
    let table = text(&klambda(&platform, &["status"])?);
    ensure!(
        table.contains("COLD STARTS") && table.contains("2 (last "),
        "{table}"
    );

    // And the platform's metrics count them by runtime.
    let metrics = metrics(&platform)?;
    let count = metrics
        .lines()
        .find(|line| {
            line.starts_with("klambda_cold_start_duration_seconds_count")
                && line.contains(r#"runtime="nodejs20""#)
        })
        .with_context(|| format!("no cold start count in\n{metrics}"))?;
    ensure!(count.ends_with(" 2"), "{count}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_at_concurrency_one_uses_at_most_max_scale_processes_then_none() -> Result<()> {
    let root = scratch("burst")?;
    let platform = tokio::task::block_in_place(|| up(&root.join("data"), &[]))?;
    tokio::task::block_in_place(|| {
        deploy_node(
            &platform,
            &root,
            "busy",
            json!({"scaling": {"concurrency": 1, "maxScale": 4, "scaleToZeroAfterSeconds": 2}}),
            // Each call holds its process for 50 ms; a process taking a second call at once
            // would show as two calls overlapping in one pid.
            r#"let busy = false;
exports.handler = async () => {
  const overlapped = busy;
  busy = true;
  await new Promise((r) => setTimeout(r, 50));
  busy = false;
  return { pid: process.pid, overlapped };
};"#,
        )
    })?;
    let url = tokio::task::block_in_place(|| status(&platform, "busy"))?["url"]
        .as_str()
        .context("busy has no URL")?
        .to_owned();

    // The most processes seen at once, sampled from /proc while the burst runs.
    let most = Arc::new(AtomicUsize::new(0));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (most, sampling) = (Arc::clone(&most), Arc::clone(&sampling));
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                most.fetch_max(processes_of("busy"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let calls: Vec<_> = (0..100)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                klambda_test_support::http::post(
                    &format!("{url}/"),
                    &[
                        ("ce-specversion", "1.0"),
                        ("ce-id", &format!("burst-{i}")),
                        ("ce-source", "/test"),
                        ("ce-type", "test.burst"),
                        ("content-type", "application/json"),
                    ],
                    "{}",
                )
                .await
            })
        })
        .collect();
    let mut pids = BTreeSet::new();
    for call in calls {
        let answer = call.await??;
        ensure!(
            answer.status == 200,
            "{} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
        let reply = answer.json()?;
        ensure!(
            reply["overlapped"] == false,
            "a process took two calls at once: {reply}"
        );
        pids.insert(reply["pid"].as_u64().context("no pid")?);
    }
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    let most = most.load(Ordering::Relaxed);
    ensure!(
        (2..=4).contains(&most),
        "{most} processes ran at once (maxScale 4, and a burst should add some)"
    );
    ensure!(
        (2..=4).contains(&pids.len()),
        "the calls were served by {} processes: {pids:?}",
        pids.len()
    );
    // Idle for scaleToZeroAfterSeconds (2 s): every process goes.
    tokio::task::block_in_place(|| scaled_to_zero(&platform, "busy", Duration::from_secs(10)))?;
    Ok(())
}

/// The processes `platform`'s warm pool started (waiting or claimed since): its children whose
/// environment at start, as `/proc` shows it, says `KLAMBDA_POOL=1`.
fn pool_started(platform: &Up) -> BTreeSet<u32> {
    klambda_test_support::process::children(platform.child.id())
        .into_iter()
        .filter_map(|(pid, _)| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let pooled = environ
                .split(|b| *b == 0)
                .any(|var| var == b"KLAMBDA_POOL=1");
            pooled.then_some(pid)
        })
        .collect()
}

/// What the test functions of the warm pool report about the process serving them.
const WHO_NODE: &str = "exports.handler = async () => ({ pid: process.pid, uid: process.getuid(), \
    gid: process.getgid(), groups: process.getgroups(), cwd: process.cwd(), env: process.env });";

#[test]
fn warm_pool_processes_each_become_one_functions_process_as_its_own_user() -> Result<()> {
    let root = scratch("pool")?;
    let platform = up(&root.join("data"), &[])?;
    // `klambda up` keeps 2 warm interpreters per runtime by default.
    let started = Instant::now();
    while pool_started(&platform).len() < 4 {
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "the warm pool did not fill: {:?}",
            pool_started(&platform)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let warm = pool_started(&platform);
    let config = json!({"env": {"GREETING": "hi"}, "scaling": {"scaleToZeroAfterSeconds": 1}});
    deploy_node(&platform, &root, "pool-a", config.clone(), WHO_NODE)?;
    deploy_node(&platform, &root, "pool-b", config, WHO_NODE)?;
    let python = root.join("pool-py");
    std::fs::create_dir_all(&python)?;
    std::fs::write(
        python.join("klambda.json"),
        json!({"name": "pool-py", "runtime": "python3.11", "handler": "app.handler"}).to_string(),
    )?;
    std::fs::write(
        python.join("app.py"),
        "import os\ndef handler(event, context):\n    return {'pid': os.getpid(), 'uid': os.getuid()}\n",
    )?;
    let deployed = klambda(&platform, &["deploy", &python.display().to_string()])?;
    ensure!(deployed.status.success(), "{}", text(&deployed));
    let who = |name: &str| -> Result<Value> {
        let called = klambda(&platform, &["invoke", name, "{}", "-o", "json"])?;
        ensure!(called.status.success(), "{}", text(&called));
        let answer: Value = serde_json::from_slice(&called.stdout)?;
        Ok(answer["reply"].clone())
    };
    let pid = |reply: &Value| reply["pid"].as_u64().map(|p| p as u32).unwrap_or_default();
    let (a, b, py) = (who("pool-a")?, who("pool-b")?, who("pool-py")?);
    // Each function's first process was a warm one, and no two functions share one.
    ensure!(warm.contains(&pid(&a)), "pool-a {a} not from {warm:?}");
    ensure!(
        pool_started(&platform).contains(&pid(&b)),
        "pool-b {b} not from the pool"
    );
    ensure!(warm.contains(&pid(&py)), "pool-py {py} not from {warm:?}");
    ensure!(
        pid(&a) != pid(&b),
        "one process serves two functions: {a} {b}"
    );

    // Claimed, each is the process a direct start makes: the function's environment only (not
    // the pool's), its directory, its own user with no supplementary groups (as root).
    for (name, reply) in [("pool-a", &a), ("pool-b", &b)] {
        let env = &reply["env"];
        ensure!(env["KLAMBDA_FUNCTION_NAME"] == name, "{reply}");
        ensure!(env["GREETING"] == "hi", "{reply}");
        ensure!(env.get("KLAMBDA_POOL").is_none(), "{reply}");
        ensure!(
            reply["cwd"]
                .as_str()
                .is_some_and(|cwd| cwd.ends_with("/function")),
            "{reply}"
        );
        let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", pid(reply)))?;
        if std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m))? == 0 {
            ensure!(reply["uid"] != 0 && reply["uid"] == reply["gid"], "{reply}");
            // Node.js lists the effective group among the groups; the kernel has none else.
            ensure!(reply["groups"] == json!([reply["gid"]]), "{reply}");
            let status = std::fs::read_to_string(format!("/proc/{}/status", pid(reply)))?;
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .map(str::trim)
            };
            ensure!(
                field("Groups:") == Some("")
                    && field("NoNewPrivs:") == Some("1")
                    && field("CapEff:") == Some("0000000000000000"),
                "{status}"
            );
            ensure!(cgroup.contains(&format!("/klambda/{name}-")), "{cgroup}");
        }
    }
    ensure!(a["uid"] != b["uid"] || py["uid"] != 0, "{a} {b} {py}");

    // pool-a goes to zero: its process ends, never to serve again; the next call is a cold
    // start on another warm process, which is not pool-b's.
    scaled_to_zero(&platform, "pool-a", Duration::from_secs(10))?;
    ensure!(
        !std::path::Path::new(&format!("/proc/{}", pid(&a))).exists(),
        "pool-a's process {} still runs",
        pid(&a)
    );
    let again = who("pool-a")?;
    ensure!(
        ![pid(&a), pid(&b), pid(&py)].contains(&pid(&again)),
        "{again}"
    );
    ensure!(
        pool_started(&platform).contains(&pid(&again)),
        "the cold start did not take a warm process: {again}"
    );
    Ok(())
}
