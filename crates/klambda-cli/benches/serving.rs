//! Serving on one machine, measured (issue 18), on the platform `klambda up` runs
//! (`Platform::start`, sandboxed as root as in `klambda up`). Prints tables:
//!
//! - cold starts per runtime: a function scaled to zero (`scaleToZeroAfterSeconds: 1`, waited
//!   out before each sample), then one call: the call's latency and the process start the
//!   activator timed, against a warm call right after; once without the warm pool and once with
//!   `klambda up`'s default pool (two platforms, one after the other, same run);
//! - a burst of N calls (1,000 by default) at once against a function at `concurrency: 1`,
//!   `maxScale: 8` whose handler takes 10 ms: throughput, p50/p99 latency, and the processes
//!   (ready + starting, from the activator) sampled every 100 ms.
//!
//! Run: `cargo bench -p klambda-cli --bench serving` (`-- --samples N --burst M`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use klambda_cli::client::{Api, Output};
use klambda_cli::embedded::{Platform, Settings};
use klambda_events::FunctionName;
use klambda_test_support::bench::{argument, percentile};
use klambda_test_support::http::{TestServer, post};
use klambda_test_support::repo;
use serde_json::{Value, json};

struct Bench {
    platform: Platform,
    server: TestServer,
    root: PathBuf,
}

impl Bench {
    /// A platform keeping `warm_pool` warm interpreters per runtime.
    async fn start(warm_pool: usize) -> Result<Self> {
        let root = std::env::temp_dir().join(format!(
            "klambda-bench-serving-{}-{warm_pool}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root)?;
        let settings = Settings {
            warm_pool,
            ..Settings::new(root.join("data"), repo::root().join("eventing"))
        };
        let platform = Platform::start(&settings).await?;
        let server = TestServer::start(klambda_cli::server::router(platform.clone())).await?;
        Ok(Self {
            platform,
            server,
            root,
        })
    }

    async fn deploy(
        &self,
        name: &str,
        runtime: &str,
        code: &str,
        scaling: Value,
    ) -> Result<String> {
        let dir = self.root.join("functions").join(name);
        std::fs::create_dir_all(&dir)?;
        let (handler, file) = if runtime.starts_with("python") {
            ("app.handler", "app.py")
        } else {
            ("index.handler", "index.js")
        };
        let manifest =
            json!({"name": name, "runtime": runtime, "handler": handler, "scaling": scaling});
        std::fs::write(dir.join("klambda.json"), manifest.to_string())?;
        std::fs::write(dir.join(file), code)?;
        let api = Api::new(&self.server.url(""));
        let code = klambda_cli::client::deploy(&api, &dir, Output::Json, None).await?;
        ensure!(code == 0, "deploying {name} exited {code}");
        let (url, _) = self
            .platform
            .runner
            .serving(&FunctionName::new(name.to_owned())?)
            .context("the function serves")?;
        Ok(url)
    }

    /// The function's processes, ready and starting.
    fn processes(&self, name: &str) -> Result<u32> {
        let scale = self
            .platform
            .runner
            .scale(&FunctionName::new(name.to_owned())?)
            .context("the function serves")?;
        Ok(scale.replicas + scale.starting)
    }

    /// Waits until `name` has no process.
    async fn at_zero(&self, name: &str) -> Result<()> {
        let started = Instant::now();
        while self.processes(name)? > 0 {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("{name} did not scale to zero within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// One call to `url`; its latency and the cold start the activator reported, if any.
async fn call(url: &str, id: &str) -> Result<(Duration, Option<u64>)> {
    let started = Instant::now();
    let answer = post(
        &format!("{url}/"),
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", id),
            ("ce-source", "/bench"),
            ("ce-type", "bench.call"),
            ("content-type", "application/json"),
        ],
        "{}",
    )
    .await?;
    let took = started.elapsed();
    ensure!(
        answer.status == 200,
        "{} {}",
        answer.status,
        String::from_utf8_lossy(&answer.body)
    );
    let cold = answer
        .header(service_deployer::deployer::activator::COLD_START_HEADER)
        .parse()
        .ok();
    Ok((took, cold))
}

fn ms(sorted: &[Duration], p: f64) -> f64 {
    percentile(sorted, p).as_secs_f64() * 1e3
}

/// Cold and warm calls per runtime, one table row each.
async fn cold_starts(bench: &Bench, samples: usize, pool: &str) -> Result<Vec<String>> {
    let runtimes = [
        (
            "nodejs20",
            "exports.handler = async () => ({ ok: true });\n",
        ),
        (
            "python3.11",
            "def handler(event, context):\n    return {\"ok\": True}\n",
        ),
    ];
    let mut rows = Vec::new();
    for (runtime, code) in runtimes {
        let name = format!("cold-{}", runtime.replace('.', "-"));
        let url = bench
            .deploy(&name, runtime, code, json!({"scaleToZeroAfterSeconds": 1}))
            .await?;
        let (mut cold, mut started, mut warm) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..samples {
            bench.at_zero(&name).await?;
            let (took, reported) = call(&url, &format!("cold-{i}")).await?;
            let reported = reported.context("a call from zero was not reported as a cold start")?;
            cold.push(took);
            started.push(Duration::from_millis(reported));
            let (took, reported) = call(&url, &format!("warm-{i}")).await?;
            ensure!(reported.is_none(), "a warm call was a cold start");
            warm.push(took);
        }
        for list in [&mut cold, &mut started, &mut warm] {
            list.sort();
        }
        rows.push(format!(
            "| {runtime} | {pool} | {:.1} ms | {:.1} ms | {:.1} ms | {:.2} ms | {:.2} ms |",
            ms(&cold, 0.50),
            ms(&cold, 0.99),
            ms(&started, 0.50),
            ms(&warm, 0.50),
            ms(&warm, 0.99),
        ));
    }
    Ok(rows)
}

async fn burst(bench: &Bench, calls: usize) -> Result<()> {
    let name = "burst";
    let url = bench
        .deploy(
            name,
            "nodejs20",
            "exports.handler = async () => { await new Promise((r) => setTimeout(r, 10)); return { pid: process.pid }; };\n",
            json!({"concurrency": 1, "maxScale": 8, "scaleToZeroAfterSeconds": 5}),
        )
        .await?;
    let url = Arc::new(url);
    let began = Instant::now();
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = Arc::clone(&sampling);
        let runner = Arc::clone(&bench.platform.runner);
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let function = FunctionName::new(name.to_owned()).ok();
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(scale) = function.as_ref().and_then(|f| runner.scale(f)) {
                    seen.push((began.elapsed(), scale));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            seen
        })
    };
    let tasks: Vec<_> = (0..calls)
        .map(|i| {
            let url = Arc::clone(&url);
            tokio::spawn(async move { call(&url, &format!("burst-{i}")).await })
        })
        .collect();
    let mut latencies = Vec::with_capacity(calls);
    for task in tasks {
        latencies.push(task.await??.0);
    }
    let elapsed = began.elapsed();
    // Keep sampling a little after, to show the processes staying for the idle time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let seen = sampler.await?;
    latencies.sort();
    println!("\n## A burst of {calls} calls at concurrency 1, maxScale 8 (10 ms handler)\n");
    println!("| calls | wall time | throughput | p50 | p99 | most processes |");
    println!("|---|---|---|---|---|---|");
    let most = seen
        .iter()
        .map(|(_, s)| s.replicas + s.starting)
        .max()
        .unwrap_or(0);
    println!(
        "| {calls} | {:.2} s | {:.0} calls/s | {:.1} ms | {:.1} ms | {most} |",
        elapsed.as_secs_f64(),
        calls as f64 / elapsed.as_secs_f64(),
        ms(&latencies, 0.50),
        ms(&latencies, 0.99),
    );
    println!("\n| t | ready | starting | in flight | queued | panicking |");
    println!("|---|---|---|---|---|---|");
    for (at, scale) in seen {
        println!(
            "| {:.1} s | {} | {} | {} | {} | {} |",
            at.as_secs_f64(),
            scale.replicas,
            scale.starting,
            scale.in_flight,
            scale.queued,
            scale.panicking
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let samples = argument("--samples", 20);
    let calls = argument("--burst", 1000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut rows = Vec::new();
        let without = Bench::start(0).await?;
        rows.extend(cold_starts(&without, samples, "none").await?);
        let _ = std::fs::remove_dir_all(&without.root);
        let size = service_deployer::deployer::pool::DEFAULT_SIZE;
        let bench = Bench::start(size).await?;
        rows.extend(cold_starts(&bench, samples, &format!("{size} per runtime")).await?);
        println!("\n## Cold start from zero ({samples} samples per runtime)\n");
        println!(
            "| runtime | warm pool | cold call p50 | cold call p99 | process start p50 (activator) | warm call p50 | warm call p99 |"
        );
        println!("|---|---|---|---|---|---|---|");
        for row in rows {
            println!("{row}");
        }
        burst(&bench, calls).await?;
        let _ = std::fs::remove_dir_all(&bench.root);
        Ok(())
    })
}
