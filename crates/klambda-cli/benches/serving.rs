//! Serving on one machine, measured (issue 18), on the platform `klambda up` runs
//! (`Platform::start`, sandboxed as root as in `klambda up`). Prints tables:
//!
//! - cold starts per runtime: a function scaled to zero (`scaleToZeroAfterSeconds: 1`, waited
//!   out before each sample), then one call: the call's latency and the process start the
//!   activator timed, against a warm call right after; once without the warm pool and once with
//!   `klambda up`'s default pool (two platforms, one after the other, same run);
//! - per runtime, the first build on an empty build cache, a second function's on the cache the
//!   first left, and the idle RSS of one function process;
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
        let handler = if runtime.starts_with("rust") {
            std::fs::create_dir_all(dir.join("src"))?;
            std::fs::write(
                dir.join("Cargo.toml"),
                format!(
                    "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nklambda-function = \"0.1\"\nserde_json = \"1\"\n"
                ),
            )?;
            std::fs::write(dir.join("src/lib.rs"), code)?;
            "handler"
        } else if runtime.starts_with("python") {
            std::fs::write(dir.join("app.py"), code)?;
            "app.handler"
        } else if runtime.starts_with("go") {
            std::fs::write(
                dir.join("go.mod"),
                format!("module example.com/{name}\n\ngo 1.24\n"),
            )?;
            std::fs::write(dir.join("handler.go"), code)?;
            "Handler"
        } else {
            std::fs::write(dir.join("index.js"), code)?;
            "index.handler"
        };
        let manifest =
            json!({"name": name, "runtime": runtime, "handler": handler, "scaling": scaling});
        std::fs::write(dir.join("klambda.json"), manifest.to_string())?;
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
    call_for(url, id).await.map(|(took, cold, _)| (took, cold))
}

/// One call to `url`: its latency, the cold start reported, and the reply.
async fn call_for(url: &str, id: &str) -> Result<(Duration, Option<u64>, Value)> {
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
    Ok((took, cold, answer.json().unwrap_or_default()))
}

/// The resident memory of process `pid`, in MiB.
fn rss_mib(pid: u64) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Each runtime's handler, answering its process id.
const RUNTIMES: [(&str, &str); 4] = [
    (
        "nodejs20",
        "exports.handler = async () => ({ pid: process.pid });\n",
    ),
    (
        "python3.11",
        "import os\ndef handler(event, context):\n    return {\"pid\": os.getpid()}\n",
    ),
    (
        "go1.24",
        "package probe\n\nimport (\n\t\"context\"\n\t\"encoding/json\"\n\t\"os\"\n)\n\nfunc Handler(ctx context.Context, event json.RawMessage) (any, error) {\n\treturn map[string]int{\"pid\": os.Getpid()}, nil\n}\n",
    ),
    (
        "rust1",
        "pub async fn handler(\n    _event: serde_json::Value,\n    _ctx: klambda_function::Context,\n) -> Result<serde_json::Value, klambda_function::Error> {\n    Ok(serde_json::json!({\"pid\": std::process::id()}))\n}\n",
    ),
];

/// Per runtime: the first build (empty build cache), a second function's (on the cache the
/// first left), and the idle RSS of one process; rows of a table.
async fn builds(bench: &Bench) -> Result<Vec<String>> {
    let mut rows = Vec::new();
    for (runtime, code) in RUNTIMES {
        let slug = runtime.replace('.', "-");
        let mut took = Vec::new();
        for n in ["first", "second"] {
            let name = format!("build-{slug}-{n}");
            // A different source each time: nothing is served from the build record.
            let code = format!("{code}{}", comment(runtime, n));
            let started = Instant::now();
            bench.deploy(&name, runtime, &code, json!({})).await?;
            took.push(started.elapsed());
        }
        let url = bench
            .platform
            .runner
            .serving(&FunctionName::new(format!("build-{slug}-second"))?)
            .context("serves")?
            .0;
        let (_, _, reply) = call_for(&url, "rss").await?;
        // Idle for a moment after its first call, as a function waiting for the next.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss = reply["pid"].as_u64().and_then(rss_mib);
        rows.push(format!(
            "| {runtime} | {:.1} s | {:.2} s | {} |",
            took[0].as_secs_f64(),
            took[1].as_secs_f64(),
            rss.map_or_else(|| "?".to_owned(), |m| format!("{m:.1} MiB"))
        ));
    }
    Ok(rows)
}

/// A comment line in `runtime`'s language, making a source distinct.
fn comment(runtime: &str, text: &str) -> String {
    if runtime.starts_with("python") {
        format!("# {text}\n")
    } else {
        format!("// {text}\n")
    }
}

fn ms(sorted: &[Duration], p: f64) -> f64 {
    percentile(sorted, p).as_secs_f64() * 1e3
}

/// Cold and warm calls per runtime, one table row each.
async fn cold_starts(bench: &Bench, samples: usize, pool: &str) -> Result<Vec<String>> {
    let mut rows = Vec::new();
    for (runtime, code) in RUNTIMES {
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
        // First, while its build cache is empty.
        let built = builds(&bench).await?;
        rows.extend(cold_starts(&bench, samples, &format!("{size} per runtime")).await?);
        println!("\n## Builds and idle memory per runtime\n");
        println!(
            "| runtime | first build → ready (empty build cache) | second function → ready (shared cache) | idle RSS of one process |"
        );
        println!("|---|---|---|---|");
        for row in built {
            println!("{row}");
        }
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
