//! Users' functions on the event bus, through the real `klambda` binary (issue 17): Triggers
//! from `klambda.json` route what `klambda publish` sends to exactly the functions whose
//! filters match (an extension attribute included); a reply goes back on the bus, typed by the
//! Trigger's `replyType` and sourced `/functions/<name>`, so functions chain; a deleted function
//! receives nothing more; after a restart of `klambda up` the Triggers are back.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use common::{Up, deploy_node, klambda, metrics, text, up};
use klambda_events::EventType as _;
use klambda_events::catalogue::{FunctionCreated, ParserCompleted};
use klambda_test_support::rabbitmq;
use serde_json::{Value, json};

/// An empty directory of this test run's own.
fn scratch(name: &str) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("klambda-bus-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Which broker `klambda up` runs: function Triggers must behave the same on both.
#[derive(Debug, Clone, Copy)]
enum Mode<'a> {
    Memory,
    /// Over RabbitMQ, as the platform instance given.
    RabbitMq(&'a rabbitmq::Instance),
}

impl Mode<'_> {
    /// The mode in a file name.
    fn label(self) -> &'static str {
        match self {
            Mode::Memory => "memory",
            Mode::RabbitMq(_) => "rabbitmq",
        }
    }
}

/// A scenario as two tests: on the in-memory broker and over RabbitMQ.
macro_rules! on_both_brokers {
    ($scenario:ident: $memory:ident, $rabbitmq:ident) => {
        #[test]
        fn $memory() -> Result<()> {
            $scenario(Mode::Memory)
        }

        #[test]
        fn $rabbitmq() -> Result<()> {
            // The test's own platform instance, whose queues go when the test ends.
            let instance = rabbitmq::Instance::new(concat!("bus-", stringify!($scenario)));
            $scenario(Mode::RabbitMq(&instance))
        }
    };
}

/// `klambda up` over `data` with `mode`'s broker; over RabbitMQ the test's own instance, the
/// same across restarts (its queues are the ones it had).
fn start(data: &Path, mode: Mode) -> Result<Up> {
    match mode {
        Mode::Memory => up(data, &[]),
        Mode::RabbitMq(instance) => up(
            data,
            &["--broker", &rabbitmq::url(), "--instance", instance.name()],
        )
        .map_err(|e| {
            e.context(format!(
                "klambda up over RabbitMQ: {}",
                rabbitmq::HOW_TO_START
            ))
        }),
    }
}

/// Writes a Node.js function `name` with `triggers` and `code` under `root`, and deploys it.
fn deploy(platform: &Up, root: &Path, name: &str, triggers: Value, code: &str) -> Result<()> {
    deploy_node(platform, root, name, json!({ "triggers": triggers }), code)
}

/// Publishes an event of `ty` with `data` and `args`, returning its id.
fn publish(platform: &Up, ty: &str, data: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["publish", ty, data, "-o", "json"];
    all.extend_from_slice(args);
    let published = klambda(platform, &all)?;
    ensure!(published.status.success(), "{}", text(&published));
    let answer: Value = serde_json::from_slice(&published.stdout)?;
    Ok(answer["id"].as_str().unwrap_or_default().to_owned())
}

/// The serving revision's output lines of `name`.
fn output(platform: &Up, name: &str) -> Result<String> {
    let logs = klambda(platform, &["logs", name])?;
    Ok(text(&logs))
}

/// Waits until `name`'s output holds `line`.
fn said(platform: &Up, name: &str, line: &str) -> Result<()> {
    let started = Instant::now();
    loop {
        let lines = output(platform, name)?;
        if lines.contains(line) {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(15) {
            bail!("{name} never said {line:?}:\n{lines}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const PRICER: &str = r#"exports.handler = async (order, context) => {
  console.log(`pricing ${order.id} region=${context.cloudevent.region}`);
  console.log(`pricer trace ${order.id} ${context.cloudevent.traceparent}`);
  return { id: order.id, price: order.total * 2 };
};"#;

const SHIPPER: &str = r#"exports.handler = async (priced, context) => {
  console.log(`shipping ${priced.id} at ${priced.price}`);
  console.log(`shipper trace ${priced.id} ${context.cloudevent.traceparent}`);
};"#;

/// The trace an order is published in.
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PUBLISHER_SPAN: &str = "b7ad6b7169203331";

/// The `traceparent` `name` logged for order `id` (`<name> trace <id> <traceparent>`).
fn logged_trace(platform: &Up, name: &str, id: &str) -> Result<(String, String)> {
    let prefix = format!("{name} trace {id} ");
    let line = lines_with(platform, name, &prefix)?
        .pop()
        .unwrap_or_default();
    let traceparent = line.split(&prefix).nth(1).unwrap_or_default().trim();
    match traceparent.split('-').collect::<Vec<_>>()[..] {
        ["00", trace, span, _] => Ok((trace.to_owned(), span.to_owned())),
        _ => bail!("{name} logged no traceparent for {id}: {line:?}"),
    }
}

/// `klambda events --function NAME -o json`: the delivery records among its lines.
fn deliveries(platform: &Up, name: &str) -> Result<Vec<Value>> {
    let listed = klambda(platform, &["events", "--function", name, "-o", "json"])?;
    ensure!(listed.status.success(), "{}", text(&listed));
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&listed.stdout).lines() {
        let entry: Value = serde_json::from_str(line)?;
        if !entry["delivery"].is_null() {
            found.push(entry["delivery"].clone());
        }
    }
    Ok(found)
}

const PICKY: &str = r#"exports.handler = async (order) => {
  console.log(`picky got ${order.id}`);
};"#;

on_both_brokers!(
    chain:
    events_reach_the_functions_whose_triggers_match_and_replies_chain,
    over_rabbitmq_events_reach_the_functions_whose_triggers_match_and_replies_chain
);

fn chain(mode: Mode) -> Result<()> {
    let root = scratch(&format!("chain-{}", mode.label()))?;
    let data = root.join("data");
    let platform = start(&data, mode)?;
    let created = json!([{"attributes": {"type": "com.example.order.created"},
                          "replyType": "com.example.order.priced"}]);
    deploy(&platform, &root, "pricer", created, PRICER)?;
    deploy(
        &platform,
        &root,
        "shipper",
        json!([{"attributes": {"type": "com.example.order.priced", "source": "/functions/pricer"}}]),
        SHIPPER,
    )?;
    deploy(
        &platform,
        &root,
        "picky",
        json!([{"attributes": {"type": "com.example.order.created", "region": "eu"}}]),
        PICKY,
    )?;

    // An order from the US: priced, and the priced order's reply triggers the shipper; the
    // function that wants only European orders gets nothing.
    let traceparent = format!("traceparent=00-{TRACE_ID}-{PUBLISHER_SPAN}-01");
    let order = publish(
        &platform,
        "com.example.order.created",
        r#"{"id":"o-1","total":21}"#,
        &["--ext", "region=us", "--ext", &traceparent],
    )?;
    said(&platform, "pricer", "pricing o-1")?;
    said(&platform, "shipper", "shipping o-1 at 42")?;
    // One trace through the chain: each function sees the order's trace, under the span of its
    // own delivery (not the publisher's), and the pricer's reply carried it to the shipper.
    let (trace, pricer_span) = logged_trace(&platform, "pricer", "o-1")?;
    ensure!(trace == TRACE_ID, "the pricer is in trace {trace}");
    ensure!(
        pricer_span != PUBLISHER_SPAN,
        "the pricer's parent is its delivery"
    );
    let (trace, shipper_span) = logged_trace(&platform, "shipper", "o-1")?;
    ensure!(trace == TRACE_ID, "the shipper is in trace {trace}");
    ensure!(shipper_span != pricer_span && shipper_span != PUBLISHER_SPAN);
    // `klambda events` shows each delivery: the pricer replied to the order at once.
    let priced = deliveries(&platform, "pricer")?;
    ensure!(
        priced.iter().any(|d| d["eventId"] == order.as_str()
            && d["outcome"] == "replied"
            && d["attempt"] == 1
            && d["trigger"] == "fn-pricer-0"),
        "the pricer's deliveries: {priced:#?}"
    );
    let shipped = deliveries(&platform, "shipper")?;
    ensure!(
        shipped
            .iter()
            .any(|d| d["eventType"] == "com.example.order.priced" && d["outcome"] == "accepted"),
        "the shipper's deliveries: {shipped:#?}"
    );
    // A European order: the two-attribute filter (type and the extension) matches too.
    publish(
        &platform,
        "com.example.order.created",
        r#"{"id":"o-2","total":1}"#,
        &["--ext", "region=eu"],
    )?;
    said(&platform, "picky", "picky got o-2")?;
    said(&platform, "shipper", "shipping o-2 at 2")?;
    ensure!(
        !output(&platform, "picky")?.contains("o-1"),
        "picky got the US order"
    );
    // Any other type reaches no function.
    publish(
        &platform,
        "com.example.order.cancelled",
        r#"{"id":"o-3"}"#,
        &[],
    )?;

    // Deleted: the shipper's Trigger goes with it; the chain stops at the pricer.
    let deleted = klambda(&platform, &["delete", "shipper"])?;
    ensure!(deleted.status.success(), "{}", text(&deleted));
    publish(
        &platform,
        "com.example.order.created",
        r#"{"id":"o-4","total":2}"#,
        &["--ext", "region=us"],
    )?;
    said(&platform, "pricer", "pricing o-4")?;

    // A restart of the platform: the Triggers of the functions that serve are back.
    drop(platform);
    let platform = start(&data, mode)?;
    publish(
        &platform,
        "com.example.order.created",
        r#"{"id":"o-5","total":3}"#,
        &["--ext", "region=eu"],
    )?;
    said(&platform, "pricer", "pricing o-5")?;
    said(&platform, "picky", "picky got o-5")?;
    // What the deleted shipper would have got went nowhere: no dead letter names it.
    let letters = klambda(&platform, &["dlq", "list", "-o", "json"])?;
    ensure!(!text(&letters).contains("shipper"), "{}", text(&letters));
    Ok(())
}

#[test]
fn publish_refuses_what_a_client_may_not_send() -> Result<()> {
    let root = scratch("refused")?;
    let platform = up(&root.join("data"), &[])?;
    let forged = klambda(&platform, &["publish", ParserCompleted::TYPE, "{}"])?;
    ensure!(!forged.status.success(), "{}", text(&forged));
    ensure!(text(&forged).contains("403"), "{}", text(&forged));
    let bad = klambda(
        &platform,
        &["publish", "com.example.x", "{}", "--ext", "Bad=1"],
    )?;
    ensure!(
        !bad.status.success() && text(&bad).contains("extension name"),
        "{}",
        text(&bad)
    );
    Ok(())
}

/// Fails the first three calls for each job, then succeeds: retried, dead-lettered, redriven.
const FLAKY: &str = r#"const calls = {};
exports.handler = async (job) => {
  calls[job.id] = (calls[job.id] || 0) + 1;
  console.log(`attempt ${job.id} ${calls[job.id]} at ${Date.now()}`);
  if (calls[job.id] <= 3) throw new Error(`down for ${job.id}`);
  console.log(`done ${job.id}`);
};"#;

/// Observes the platform's deploys; its reply (typed `<input type>.response`) is a platform
/// type, which a function may not emit.
const WATCHER: &str = r#"exports.handler = async (submission) => {
  console.log(`watched ${submission.name}`);
  return { seen: submission.name };
};"#;

/// The lines of `name`'s output that contain `needle`.
fn lines_with(platform: &Up, name: &str, needle: &str) -> Result<Vec<String>> {
    Ok(output(platform, name)?
        .lines()
        .filter(|line| line.contains(needle))
        .map(str::to_owned)
        .collect())
}

/// `klambda dlq list --function NAME -o json`.
fn dead_letters_of(platform: &Up, function: &str) -> Result<Vec<Value>> {
    let listed = klambda(
        platform,
        &["dlq", "list", "--function", function, "-o", "json"],
    )?;
    ensure!(listed.status.success(), "{}", text(&listed));
    Ok(serde_json::from_slice::<Value>(&listed.stdout)?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// Waits until `function` has `count` dead letters.
fn dead_lettered(platform: &Up, function: &str, count: usize) -> Result<Vec<Value>> {
    let started = Instant::now();
    loop {
        let letters = dead_letters_of(platform, function)?;
        if letters.len() == count {
            return Ok(letters);
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!(
                "{function} has {} dead letters, not {count}: {letters:#?}",
                letters.len()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

on_both_brokers!(
    delivery:
    failed_deliveries_are_retried_as_configured_then_dead_lettered_and_redriven,
    over_rabbitmq_failed_deliveries_are_retried_as_configured_then_dead_lettered_and_redriven
);

fn delivery(mode: Mode) -> Result<()> {
    let root = scratch(&format!("delivery-{}", mode.label()))?;
    let platform = start(&root.join("data"), mode)?;
    // Observing the platform's own events is allowed; replying with one is not.
    deploy_node(
        &platform,
        &root,
        "watcher",
        json!({"triggers": [{"attributes": {"type": FunctionCreated::TYPE}}],
               "delivery": {"retry": 3, "backoffDelay": "PT0.1S"}}),
        WATCHER,
    )?;
    let delay_ms = 300;
    deploy_node(
        &platform,
        &root,
        "flaky",
        json!({"triggers": [{"attributes": {"type": "com.example.job"}}],
               "delivery": {"retry": 2, "backoffPolicy": "linear", "backoffDelay": "PT0.3S"}}),
        FLAKY,
    )?;

    // 5xx: the first attempt and two retries, `backoffDelay × n` apart, then a dead letter.
    publish(&platform, "com.example.job", r#"{"id":"j-1"}"#, &[])?;
    let letters = dead_lettered(&platform, "flaky", 1)?;
    let event = &letters[0]["event"];
    ensure!(event["type"] == "com.example.job", "{event}");
    ensure!(event["knativeerrorcode"] == "500", "{event}");
    ensure!(event["knativeerrordest"] == "function://flaky", "{event}");
    let attempts = lines_with(&platform, "flaky", "attempt j-1")?;
    ensure!(attempts.len() == 3, "three attempts: {attempts:#?}");
    // `klambda events` shows the same three attempts, their outcomes and the function's answer.
    let journal: Vec<(u64, String)> = deliveries(&platform, "flaky")?
        .iter()
        .filter(|d| d["eventType"] == "com.example.job")
        .map(|d| {
            ensure!(d["status"] == 500, "{d}");
            ensure!(
                d["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("down for j-1"),
                "{d}"
            );
            Ok((
                d["attempt"].as_u64().unwrap_or_default(),
                d["outcome"].as_str().unwrap_or_default().to_owned(),
            ))
        })
        .collect::<Result<_>>()?;
    let expected =
        [(1, "retried"), (2, "retried"), (3, "dead_lettered")].map(|(n, o)| (n, o.to_owned()));
    ensure!(journal == expected, "flaky's deliveries: {journal:?}");
    let listed = klambda(&platform, &["events", "flaky"])?;
    let lines = text(&listed);
    let ready = lines.find("service.ready").unwrap_or(usize::MAX);
    let retried = lines.find("attempt 1 retried 500").unwrap_or_default();
    ensure!(
        ready < retried,
        "deliveries follow the deploy in time order:\n{lines}"
    );
    let at: Vec<u64> = attempts
        .iter()
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    ensure!(at.len() == 3, "{attempts:#?}");
    for (n, pair) in at.windows(2).enumerate() {
        let waited = pair[1] - pair[0];
        let backoff = delay_ms * (n as u64 + 1);
        ensure!(
            waited >= backoff,
            "retry {} came {waited} ms after the attempt before it, under the linear backoff of {backoff} ms",
            n + 1
        );
    }

    // 4xx: the watcher saw flaky's deploy, replied with a platform type, and that reply was
    // refused (403): dead-lettered after one attempt although its delivery allows 3 retries.
    let refused = dead_lettered(&platform, "watcher", 1)?;
    let event = &refused[0]["event"];
    ensure!(event["type"] == FunctionCreated::TYPE, "{event}");
    ensure!(event["knativeerrorcode"] == "403", "{event}");
    ensure!(lines_with(&platform, "watcher", "watched flaky")?.len() == 1);
    // Neither function's letters show under the other.
    ensure!(dead_letters_of(&platform, "nobody")?.is_empty());

    // A redrive of flaky's letters reaches it (its fourth call succeeds); the letter goes.
    let redriven = klambda(
        &platform,
        &["dlq", "redrive", "--all", "--function", "flaky"],
    )?;
    ensure!(redriven.status.success(), "{}", text(&redriven));
    said(&platform, "flaky", "done j-1")?;
    dead_lettered(&platform, "flaky", 0)?;
    ensure!(
        dead_letters_of(&platform, "watcher")?.len() == 1,
        "only flaky's letters were redriven"
    );
    Ok(())
}

/// Answers each tick with the revision that handled it.
const COUNTER: &str = r#"exports.handler = async (tick) => ({ n: tick.n, rev: process.env.REV });"#;

/// Logs every answer the counter put on the bus.
const TALLY: &str = r#"exports.handler = async (tock) => {
  console.log(`tallied ${tock.n} from ${tock.rev}`);
};"#;

/// The series of `klambda_broker_delivery_attempts_total` for `trigger`: outcome → count.
fn delivery_attempts(platform: &Up, trigger: &str) -> Result<Vec<(String, f64)>> {
    Ok(metrics(platform)?
        .lines()
        .filter(|line| {
            line.starts_with("klambda_broker_delivery_attempts_total{")
                && line.contains(&format!("trigger=\"{trigger}\""))
        })
        .filter_map(|line| {
            let outcome = line.split("outcome=\"").nth(1)?.split('"').next()?;
            let count = line.rsplit(' ').next()?.parse().ok()?;
            Some((outcome.to_owned(), count))
        })
        .collect())
}

on_both_brokers!(
    rollout:
    an_update_and_a_rollback_during_a_stream_lose_no_event,
    over_rabbitmq_an_update_and_a_rollback_during_a_stream_lose_no_event
);

fn rollout(mode: Mode) -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let root = scratch(&format!("rollout-{}", mode.label()))?;
    let platform = start(&root.join("data"), mode)?;
    let counter = |rev: &str| {
        json!({"triggers": [{"attributes": {"type": "com.example.tick"}, "replyType": "com.example.tock"}],
               "env": {"REV": rev}})
    };
    deploy_node(&platform, &root, "counter", counter("1"), COUNTER)?;
    deploy(
        &platform,
        &root,
        "tally",
        json!([{"attributes": {"type": "com.example.tock"}}]),
        TALLY,
    )?;

    // A stream of ticks that goes on until told to stop; meanwhile a new revision, which must
    // answer some of them, then a rollback to the first, which must answer more.
    let published = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let wait_for = |count: usize| {
        while published.load(Ordering::SeqCst) < count {
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let answered_by = |rev: &str| -> Result<()> {
        let started = Instant::now();
        while lines_with(&platform, "tally", &format!("from {rev}"))?.is_empty() {
            ensure!(
                started.elapsed() < Duration::from_secs(30),
                "revision {rev} answered no tick within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    };
    std::thread::scope(|scope| -> Result<()> {
        let stream = scope.spawn(|| -> Result<()> {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                publish(
                    &platform,
                    "com.example.tick",
                    &json!({ "n": n }).to_string(),
                    &[],
                )?;
                n += 1;
                published.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        });
        let rolled_out = (|| -> Result<()> {
            wait_for(30);
            deploy_node(&platform, &root, "counter", counter("2"), COUNTER)?;
            answered_by("2")?;
            let rolled = klambda(&platform, &["rollback", "counter"])?;
            ensure!(rolled.status.success(), "{}", text(&rolled));
            wait_for(published.load(Ordering::SeqCst) + 30);
            Ok(())
        })();
        stop.store(true, Ordering::SeqCst);
        let streamed = stream
            .join()
            .map_err(|_| anyhow::anyhow!("the stream panicked"))?;
        rolled_out.and(streamed)
    })?;
    let events = published.load(Ordering::SeqCst);

    // Every tick was answered exactly once, by one of the revisions that served.
    let started = Instant::now();
    let tallied = loop {
        let tallied = lines_with(&platform, "tally", "tallied ")?;
        if tallied.len() >= events || started.elapsed() > Duration::from_secs(30) {
            break tallied;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut seen: Vec<usize> = tallied
        .iter()
        .filter_map(|line| {
            line.split("tallied ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    seen.sort_unstable();
    ensure!(
        seen == (0..events).collect::<Vec<_>>(),
        "ticks lost or answered twice: {seen:?}"
    );
    for rev in ["from 1", "from 2"] {
        ensure!(
            tallied.iter().any(|line| line.ends_with(rev)),
            "no tick was answered by revision {rev}: {tallied:#?}"
        );
    }
    // None went to a stopped revision: not one delivery to the counter failed.
    let attempts = delivery_attempts(&platform, "fn-counter-0")?;
    ensure!(
        attempts == vec![("replied".to_owned(), events as f64)],
        "the counter's deliveries: {attempts:?}"
    );
    ensure!(dead_letters_of(&platform, "counter")?.is_empty());
    // Each delivery's time is observed for the function's Trigger.
    let count = format!(
        "klambda_broker_delivery_duration_seconds_count{{trigger=\"fn-counter-0\"}} {events}"
    );
    ensure!(
        metrics(&platform)?.contains(&count),
        "no {count} in /metrics"
    );
    Ok(())
}

/// Fails every invocation whose data says so.
const WORKER: &str = r#"exports.handler = async (job, context) => {
  console.log(`invoked ${job.id} as ${context.cloudevent.type}`);
  if (job.fail) throw new Error(`cannot do ${job.id}`);
  return { done: job.id };
};"#;

on_both_brokers!(
    invoke_async:
    asynchronous_invocations_go_through_the_broker,
    over_rabbitmq_asynchronous_invocations_go_through_the_broker
);

fn invoke_async(mode: Mode) -> Result<()> {
    let root = scratch(&format!("async-{}", mode.label()))?;
    let platform = start(&root.join("data"), mode)?;
    // No triggers of its own: every function takes invocations addressed to it.
    deploy(&platform, &root, "worker", json!([]), WORKER)?;
    deploy(&platform, &root, "bystander", json!([]), WORKER)?;

    let sent = klambda(
        &platform,
        &[
            "invoke",
            "--async",
            "worker",
            r#"{"id":"a-1"}"#,
            "-o",
            "json",
        ],
    )?;
    ensure!(sent.status.success(), "{}", text(&sent));
    let id: Value = serde_json::from_slice(&sent.stdout)?;
    ensure!(id["id"].as_str().is_some_and(|id| !id.is_empty()), "{id}");
    said(&platform, "worker", "invoked a-1 as klambda.invoke")?;

    // A failing invocation: the first attempt and Lambda's two retries, then a dead letter.
    let failing = klambda(
        &platform,
        &["invoke", "--async", "worker", r#"{"id":"a-2","fail":true}"#],
    )?;
    ensure!(failing.status.success(), "{}", text(&failing));
    let letters = dead_lettered(&platform, "worker", 1)?;
    ensure!(
        letters[0]["event"]["knativeerrorcode"] == "500",
        "{letters:#?}"
    );
    ensure!(lines_with(&platform, "worker", "invoked a-2")?.len() == 3);
    // Addressed to one function only.
    ensure!(lines_with(&platform, "bystander", "invoked")?.is_empty());
    let refused = klambda(
        &platform,
        &[
            "invoke",
            "--async",
            "worker",
            "{}",
            "--type",
            "com.example.x",
        ],
    )?;
    ensure!(
        !refused.status.success(),
        "--async with --type must be refused"
    );
    Ok(())
}
