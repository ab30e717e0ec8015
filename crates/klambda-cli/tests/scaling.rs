//! Serving on one machine as Knative serves on a cluster, through the real `klambda up`: a
//! function's processes go to zero when idle and the next call waits for one (a cold start,
//! recorded); `scaling.concurrency` holds per process and a burst adds processes up to
//! `maxScale`, then they go again. Processes are counted in `/proc` (those carrying the
//! function's `KLAMBDA_FUNCTION_NAME`), not taken from the platform's word.

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
    let marker = format!("KLAMBDA_FUNCTION_NAME={name}\0");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|entry| std::fs::read(entry.path().join("environ")).ok())
        .filter(|environ| {
            environ
                .windows(marker.len())
                .any(|window| window == marker.as_bytes())
        })
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
