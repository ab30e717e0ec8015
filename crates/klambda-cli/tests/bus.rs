//! Users' functions on the event bus, through the real `klambda` binary (issue 17): Triggers
//! from `klambda.json` route what `klambda publish` sends to exactly the functions whose
//! filters match (an extension attribute included); a reply goes back on the bus, typed by the
//! Trigger's `replyType` and sourced `/functions/<name>`, so functions chain; a deleted function
//! receives nothing more; after a restart of `klambda up` the Triggers are back.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use common::{Up, klambda, text, up};
use klambda_events::EventType as _;
use klambda_events::catalogue::ParserCompleted;
use serde_json::{Value, json};

/// An empty directory of this test run's own.
fn scratch(name: &str) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("klambda-bus-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Writes a Node.js function `name` with `triggers` and `code` under `root`, and deploys it.
fn deploy(platform: &Up, root: &Path, name: &str, triggers: Value, code: &str) -> Result<()> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("klambda.json"),
        json!({"name": name, "runtime": "nodejs20", "handler": "index.handler", "triggers": triggers})
            .to_string(),
    )?;
    std::fs::write(dir.join("index.js"), code)?;
    let deployed = klambda(platform, &["deploy", &dir.display().to_string()])?;
    ensure!(deployed.status.success(), "{name}: {}", text(&deployed));
    Ok(())
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
  return { id: order.id, price: order.total * 2 };
};"#;

const SHIPPER: &str = r#"exports.handler = async (priced) => {
  console.log(`shipping ${priced.id} at ${priced.price}`);
};"#;

const PICKY: &str = r#"exports.handler = async (order) => {
  console.log(`picky got ${order.id}`);
};"#;

#[test]
fn events_reach_the_functions_whose_triggers_match_and_replies_chain() -> Result<()> {
    let root = scratch("chain")?;
    let data = root.join("data");
    let platform = up(&data, &[])?;
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
    publish(
        &platform,
        "com.example.order.created",
        r#"{"id":"o-1","total":21}"#,
        &["--ext", "region=us"],
    )?;
    said(&platform, "pricer", "pricing o-1")?;
    said(&platform, "shipper", "shipping o-1 at 42")?;
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
    let platform = up(&data, &[])?;
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
