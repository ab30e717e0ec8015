//! Users' functions on the bus, measured (issue 17), on the in-memory broker and on the
//! RabbitMQ of this machine, in one run. Prints tables:
//!
//! - latency: an event published to the broker until the function's reply is back on the
//!   broker (delivered to a Trigger of its own), against the same event POSTed straight to the
//!   same function process with the same HTTP client; p50 and p99, interleaved, after a
//!   warm-up. Over RabbitMQ that path is two broker hops (the event, then the reply), so the
//!   raw lapin round trip is measured in the same run for comparison;
//! - throughput: events through one function Trigger (parallelism 1, then 8) for a Node.js and
//!   a Python function, against direct calls with as many in flight;
//! - faults: 10,000 events to a function that fails 10% of its calls at random (one retry),
//!   updated to a new revision halfway through: every event must end answered or dead-lettered,
//!   counted from the broker (replies, dead letters) and from the function's own log.
//!
//! The platform is `klambda up`'s (`Platform::start`), functions deployed through its API and
//! run by its local runner (sandboxed as root, as in `klambda up`).
//!
//! Run: `cargo bench -p klambda-cli --bench bus` (`-- --samples N --events M --faults K`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use cloudevents::{AttributesReader as _, Event, EventBuilder as _, EventBuilderV10};
use klambda_broker::subscriber::BoxFuture;
use klambda_broker::{Answer, Delivery, Http, Subscriber, Trigger};
use klambda_cli::client::{Api, Output};
use klambda_cli::embedded::{Bus, Platform, Settings};
use klambda_events::FunctionName;
use klambda_test_support::bench::{argument, percentile};
use klambda_test_support::http::TestServer;
use klambda_test_support::{rabbitmq, repo};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Which broker the platform runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Memory,
    RabbitMq,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Memory => "in memory",
            Mode::RabbitMq => "RabbitMQ",
        }
    }
}

/// A reply as it came back on the broker, and when.
type Arrival = (Event, Instant);

/// The Trigger that takes the functions' replies off the broker.
struct Replies(mpsc::UnboundedSender<Arrival>);

impl Subscriber for Replies {
    fn address(&self) -> String {
        "bench://replies".into()
    }
    fn deliver(&self, event: Event) -> BoxFuture<'_, Answer> {
        let _ = self.0.send((event, Instant::now()));
        Box::pin(async { Answer::Accepted })
    }
}

/// A running platform with a Trigger on `bench.out` replies.
struct Bench {
    platform: Platform,
    server: TestServer,
    root: PathBuf,
    replies: mpsc::UnboundedReceiver<Arrival>,
    _dispatcher: Option<klambda_broker::amqp::Dispatcher>,
    _instance: Option<rabbitmq::Instance>,
}

const REPLY_TYPE: &str = "bench.out";

impl Bench {
    async fn start(mode: Mode) -> Result<Self> {
        let root = std::env::temp_dir().join(format!(
            "klambda-bench-bus-{}-{}",
            mode.label().replace(' ', "-"),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root)?;
        let instance = (mode == Mode::RabbitMq).then(|| rabbitmq::Instance::new("bench-bus"));
        let mut settings = Settings::new(root.join("data"), repo::root().join("eventing"));
        if let Some(instance) = &instance {
            settings.broker_url = Some(rabbitmq::url());
            settings.instance = instance.name().to_owned();
        }
        let platform = Platform::start(&settings)
            .await
            .with_context(|| format!("starting the platform {}", mode.label()))?;
        let server = TestServer::start(klambda_cli::server::router(platform.clone())).await?;
        let (sender, replies) = mpsc::unbounded_channel();
        let trigger = Trigger {
            name: "bench-replies".into(),
            filter: BTreeMap::from([("type".to_owned(), REPLY_TYPE.to_owned())]),
            subscriber: "bench".into(),
            delivery: Delivery::default(),
            parallelism: 16,
        };
        let capture = Arc::new(Replies(sender));
        let dispatcher = match &platform.bus {
            Bus::Embedded(broker) => {
                broker.subscribe(trigger, capture);
                None
            }
            Bus::Amqp { broker, .. } => {
                broker.subscribe(&trigger, None).await?;
                Some(broker.dispatch(trigger, capture))
            }
        };
        Ok(Self {
            platform,
            server,
            root,
            replies,
            _dispatcher: dispatcher,
            _instance: instance,
        })
    }

    /// Deploys a function `name` with `files` and `config` merged into its `klambda.json`.
    async fn deploy(
        &self,
        name: &str,
        runtime: &str,
        files: &[(&str, &str)],
        config: Value,
    ) -> Result<()> {
        let dir = self.write(name, runtime, files, config)?;
        let code = klambda_cli::client::deploy(&self.api(), &dir, Output::Json, None).await?;
        ensure!(code == 0, "deploying {name} exited {code}");
        Ok(())
    }

    fn api(&self) -> Api {
        Api::new(&self.server.url(""))
    }

    /// Writes the function directory of `name`.
    fn write(
        &self,
        name: &str,
        runtime: &str,
        files: &[(&str, &str)],
        config: Value,
    ) -> Result<PathBuf> {
        let dir = self.root.join("functions").join(name);
        std::fs::create_dir_all(&dir)?;
        let handler = if runtime.starts_with("python") {
            "app.handler"
        } else {
            "index.handler"
        };
        let mut manifest = json!({"name": name, "runtime": runtime, "handler": handler});
        for (key, value) in config.as_object().into_iter().flatten() {
            manifest[key] = value.clone();
        }
        std::fs::write(dir.join("klambda.json"), manifest.to_string())?;
        for (file, text) in files {
            std::fs::write(dir.join(file), text)?;
        }
        Ok(dir)
    }

    /// Where `name` serves, to call it directly.
    fn direct(&self, name: &str) -> Result<Http> {
        let function = FunctionName::new(name.to_owned())?;
        let (url, _) = self
            .platform
            .runner
            .serving(&function)
            .context("the function serves")?;
        Ok(Http::new(url.parse()?))
    }

    /// The next reply to event `id`, skipping any other.
    async fn reply_to(&mut self, id: &str, within: Duration) -> Result<Arrival> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.replies.recv()).await {
                Ok(Some((reply, at))) if reply.id() == format!("{id}.response") => {
                    return Ok((reply, at));
                }
                Ok(Some(_)) => {}
                Ok(None) => bail!("the reply Trigger stopped"),
                Err(_) => bail!("no reply to {id} within {within:?}"),
            }
        }
    }
}

fn event(ty: &str, id: &str, n: usize) -> Result<Event> {
    Ok(EventBuilderV10::new()
        .id(id)
        .source("/bench")
        .ty(ty)
        .data("application/json", json!({ "n": n }))
        .build()?)
}

const NODE_ECHO: &str = "exports.handler = async (event) => ({ n: event.n });\n";
const PYTHON_ECHO: &str = "def handler(event, context):\n    return {\"n\": event[\"n\"]}\n";

/// Two Triggers, one in order and one eight wide, both replying `bench.out`.
fn echo_config(name: &str) -> Value {
    json!({"triggers": [
        {"attributes": {"type": format!("bench.{name}.1")}, "replyType": REPLY_TYPE},
        {"attributes": {"type": format!("bench.{name}.8")}, "replyType": REPLY_TYPE, "parallelism": 8},
    ]})
}

fn micros(sorted: &[Duration], p: f64) -> f64 {
    percentile(sorted, p).as_secs_f64() * 1e6
}

/// A pooled HTTP client, as an AWS SDK keeps one.
type LambdaClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

/// One synchronous call through the Lambda Invoke API (the platform asks no signature when it
/// runs without an API token, as here), checked for the function's answer.
async fn lambda_invoke(client: &LambdaClient, url: &str, n: usize) -> Result<Duration> {
    use http_body_util::BodyExt as _;
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            json!({ "n": n }).to_string(),
        )))?;
    let started = Instant::now();
    let response = client.request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let took = started.elapsed();
    ensure!(
        status == 200 && serde_json::from_slice::<Value>(&body)? == json!({ "n": n }),
        "the Invoke API answered {status}: {body:?}"
    );
    Ok(took)
}

/// What [`latency`] measured, each sorted.
struct Latencies {
    bus: Vec<Duration>,
    direct: Vec<Duration>,
    lambda: Vec<Duration>,
}

/// Sequential events, interleaved: through the broker, straight to the function, and through
/// the Lambda Invoke API.
async fn latency(bench: &mut Bench, samples: usize) -> Result<Latencies> {
    let direct = bench.direct("echo-node")?;
    let client: LambdaClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let invoke_url = bench
        .server
        .url("/2015-03-31/functions/echo-node/invocations");
    let (mut bus, mut straight, mut lambda) = (Vec::new(), Vec::new(), Vec::new());
    let warmup = 50;
    for n in 0..samples + warmup {
        let id = format!("lat-{n}");
        let started = Instant::now();
        bench
            .platform
            .bus
            .publish(event("bench.echo-node.1", &id, n)?)
            .await?;
        let (_, at) = bench.reply_to(&id, Duration::from_secs(10)).await?;
        let through_bus = at - started;
        let started = Instant::now();
        let answer = direct
            .deliver(event("bench.echo-node.1", &format!("direct-{n}"), n)?)
            .await;
        let called = started.elapsed();
        ensure!(
            matches!(answer, Answer::Reply(_)),
            "the direct call failed: {answer:?}"
        );
        let invoked = lambda_invoke(&client, &invoke_url, n).await?;
        if n >= warmup {
            bus.push(through_bus);
            straight.push(called);
            lambda.push(invoked);
        }
    }
    bus.sort();
    straight.sort();
    lambda.sort();
    Ok(Latencies {
        bus,
        direct: straight,
        lambda,
    })
}

/// Events/s through the function's Trigger of `parallelism`, and straight to it with as many
/// calls in flight.
async fn throughput(
    bench: &mut Bench,
    function: &str,
    parallelism: usize,
    events: usize,
) -> Result<(f64, f64)> {
    let ty = format!("bench.{function}.{parallelism}");
    let started = Instant::now();
    let mut publishing = tokio::task::JoinSet::new();
    for n in 0..events {
        if publishing.len() >= 256
            && let Some(done) = publishing.join_next().await
        {
            done??;
        }
        let bus = bench.platform.bus.clone();
        let event = event(&ty, &format!("{ty}-{n}"), n)?;
        publishing.spawn(async move { bus.publish(event).await });
    }
    while let Some(done) = publishing.join_next().await {
        done??;
    }
    let mut answered = BTreeSet::new();
    while answered.len() < events {
        let (reply, _) = tokio::time::timeout(Duration::from_secs(30), bench.replies.recv())
            .await
            .context("replies stopped coming")?
            .context("the reply Trigger stopped")?;
        if reply.id().starts_with(&ty) {
            answered.insert(reply.id().to_owned());
        }
    }
    let through_bus = events as f64 / started.elapsed().as_secs_f64();

    let direct = Arc::new(bench.direct(function)?);
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..events {
        if calls.len() >= parallelism
            && let Some(done) = calls.join_next().await
        {
            done??;
        }
        let direct = Arc::clone(&direct);
        let event = event(&ty, &format!("direct-{ty}-{n}"), n)?;
        calls.spawn(async move {
            match direct.deliver(event).await {
                Answer::Reply(_) => Ok(()),
                other => Err(anyhow::anyhow!("the direct call failed: {other:?}")),
            }
        });
    }
    while let Some(done) = calls.join_next().await {
        done??;
    }
    let straight = events as f64 / started.elapsed().as_secs_f64();
    Ok((through_bus, straight))
}

/// Fails 10% of its calls at random; writes each outcome to its revision's tally file.
const FLAKY: &str = r#"const fs = require('fs');
const tally = `${process.env.TALLY}-${process.env.MARK}`;
exports.handler = async (event) => {
  if (Math.random() < 0.1) {
    fs.appendFileSync(tally, `fail ${event.n}\n`);
    throw new Error(`unlucky ${event.n}`);
  }
  fs.appendFileSync(tally, `ok ${event.n}\n`);
  return { n: event.n };
};
"#;

/// What the faults run counted.
struct Faults {
    published: usize,
    answered: usize,
    dead_lettered: usize,
    lost: usize,
    logged_ok: usize,
    logged_failures: usize,
    by_revision: Vec<(String, usize)>,
    seconds: f64,
}

async fn faults(bench: &mut Bench, events: usize) -> Result<Faults> {
    let tally_dir = bench.root.join("tally");
    std::fs::create_dir_all(&tally_dir)?;
    // Each revision runs as a user of its own: it must be able to write here.
    std::fs::set_permissions(
        &tally_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )?;
    let tally = tally_dir.join("flaky");
    let config = |mark: &str| {
        json!({
            "env": {"TALLY": tally.display().to_string(), "MARK": mark},
            "triggers": [{"attributes": {"type": "bench.flaky"}, "replyType": REPLY_TYPE, "parallelism": 8}],
            "delivery": {"retry": 1, "backoffPolicy": "linear", "backoffDelay": "PT0.01S"},
        })
    };
    bench
        .deploy("flaky", "nodejs20", &[("index.js", FLAKY)], config("a"))
        .await?;
    let started = Instant::now();
    let mut update = None;
    for n in 0..events {
        bench
            .platform
            .bus
            .publish(event("bench.flaky", &format!("flaky-{n}"), n)?)
            .await?;
        if n == events / 2 {
            // Halfway: a new revision (another MARK), deployed while events keep coming.
            let dir = bench.write("flaky", "nodejs20", &[("index.js", FLAKY)], config("b"))?;
            let api = bench.api();
            update = Some(tokio::spawn(async move {
                klambda_cli::client::deploy(&api, &dir, Output::Json, None).await
            }));
        }
    }
    let mut answered = BTreeSet::new();
    let mut dead = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while answered.len() + dead.len() < events && Instant::now() < deadline {
        while let Ok((reply, _)) = bench.replies.try_recv() {
            if let Some(n) = reply
                .id()
                .strip_prefix("flaky-")
                .and_then(|r| r.strip_suffix(".response"))
            {
                answered.insert(n.parse::<usize>()?);
            }
        }
        dead = dead_letters(&bench.platform).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(update) = update {
        ensure!(update.await?? == 0, "the update failed");
    }
    let both: Vec<_> = answered.intersection(&dead).collect();
    ensure!(both.is_empty(), "answered and dead-lettered: {both:?}");
    let mut logged_ok = BTreeSet::new();
    let mut logged_failures = 0;
    let mut by_revision = Vec::new();
    for mark in ["a", "b"] {
        let text =
            std::fs::read_to_string(format!("{}-{mark}", tally.display())).unwrap_or_default();
        let mut ok = 0;
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("ok", n)) => {
                    ok += 1;
                    logged_ok.insert(n.parse::<usize>()?);
                }
                Some(("fail", _)) => logged_failures += 1,
                _ => bail!("unexpected tally line {line:?}"),
            }
        }
        by_revision.push((mark.to_owned(), ok));
    }
    ensure!(
        logged_ok == answered,
        "the function's log and the broker disagree: {} answered, {} logged",
        answered.len(),
        logged_ok.len()
    );
    Ok(Faults {
        published: events,
        answered: answered.len(),
        dead_lettered: dead.len(),
        lost: events - answered.len() - dead.len(),
        logged_ok: logged_ok.len(),
        logged_failures,
        by_revision,
        seconds,
    })
}

/// The faults run's events in the platform's dead letters, by number.
async fn dead_letters(platform: &Platform) -> Result<BTreeSet<usize>> {
    let mut found = BTreeSet::new();
    for letter in platform.store.dead_letters(100_000).await? {
        let event: Value = serde_json::from_str(&letter.body)?;
        if event["type"] == "bench.flaky"
            && let Some(n) = event["data"]["n"].as_u64()
        {
            found.insert(usize::try_from(n)?);
        }
    }
    Ok(found)
}

async fn run(
    mode: Mode,
    samples: usize,
    events: usize,
    fault_events: usize,
    report: &mut String,
) -> Result<()> {
    use std::fmt::Write as _;
    let mut bench = Bench::start(mode).await?;
    bench
        .deploy(
            "echo-node",
            "nodejs20",
            &[("index.js", NODE_ECHO)],
            echo_config("echo-node"),
        )
        .await?;
    bench
        .deploy(
            "echo-python",
            "python3.11",
            &[("app.py", PYTHON_ECHO)],
            echo_config("echo-python"),
        )
        .await?;

    let Latencies {
        bus,
        direct,
        lambda,
    } = latency(&mut bench, samples).await?;
    writeln!(
        report,
        "\n### {}: latency, {samples} sequential events (Node.js echo)\n",
        mode.label()
    )?;
    writeln!(report, "| path | p50 | p99 |\n| --- | --- | --- |")?;
    writeln!(
        report,
        "| event → broker → function → reply on the broker | {:.0} µs | {:.0} µs |",
        micros(&bus, 0.5),
        micros(&bus, 0.99)
    )?;
    writeln!(
        report,
        "| direct POST to the same function process | {:.0} µs | {:.0} µs |",
        micros(&direct, 0.5),
        micros(&direct, 0.99)
    )?;
    writeln!(
        report,
        "| added by the bus | {:.0} µs | {:.0} µs |",
        micros(&bus, 0.5) - micros(&direct, 0.5),
        micros(&bus, 0.99) - micros(&direct, 0.99)
    )?;
    writeln!(
        report,
        "| Lambda Invoke API (RequestResponse) to the same function | {:.0} µs | {:.0} µs |",
        micros(&lambda, 0.5),
        micros(&lambda, 0.99)
    )?;
    writeln!(
        report,
        "| added by the Invoke API | {:.0} µs | |",
        micros(&lambda, 0.5) - micros(&direct, 0.5)
    )?;
    if mode == Mode::RabbitMq {
        let mut raw = rabbitmq::raw_round_trips(&rabbitmq::url(), samples, 50).await?;
        raw.sort();
        writeln!(
            report,
            "| raw lapin round trip (one hop; the bus path has two) | {:.0} µs | {:.0} µs |",
            micros(&raw, 0.5),
            micros(&raw, 0.99)
        )?;
        writeln!(
            report,
            "| added by the bus / two raw round trips | {:.2}× | {:.2}× |",
            (micros(&bus, 0.5) - micros(&direct, 0.5)) / (2.0 * micros(&raw, 0.5)),
            (micros(&bus, 0.99) - micros(&direct, 0.99)) / (2.0 * micros(&raw, 0.99)),
        )?;
    }

    writeln!(
        report,
        "\n### {}: throughput, {events} events per row\n",
        mode.label()
    )?;
    writeln!(
        report,
        "| function | parallelism | through its Trigger | direct | ratio |\n| --- | --- | --- | --- | --- |"
    )?;
    for function in ["echo-node", "echo-python"] {
        for parallelism in [1, 8] {
            let (bus, direct) = throughput(&mut bench, function, parallelism, events).await?;
            writeln!(
                report,
                "| {function} | {parallelism} | {bus:.0}/s | {direct:.0}/s | {:.0}% |",
                100.0 * bus / direct
            )?;
        }
    }

    let counted = faults(&mut bench, fault_events).await?;
    writeln!(
        report,
        "\n### {}: {fault_events} events, 10% of calls failing, one retry, an update halfway\n",
        mode.label()
    )?;
    writeln!(
        report,
        "| published | answered | dead-lettered | lost | logged ok (a / b) | logged failures | seconds |\n| --- | --- | --- | --- | --- | --- | --- |"
    )?;
    writeln!(
        report,
        "| {} | {} | {} | **{}** | {} ({}) | {} | {:.1} |",
        counted.published,
        counted.answered,
        counted.dead_lettered,
        counted.lost,
        counted.logged_ok,
        counted
            .by_revision
            .iter()
            .map(|(m, n)| format!("{m}: {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        counted.logged_failures,
        counted.seconds,
    )?;
    let root = bench.root.clone();
    let Bench { server, .. } = bench;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(root);
    Ok(())
}

fn main() -> Result<()> {
    let samples = argument("--samples", 1000);
    let events = argument("--events", 2000);
    let fault_events = argument("--faults", 10_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut report = String::new();
    runtime.block_on(async {
        for mode in [Mode::Memory, Mode::RabbitMq] {
            run(mode, samples, events, fault_events, &mut report).await?;
        }
        anyhow::Ok(())
    })?;
    println!("{report}");
    Ok(())
}
