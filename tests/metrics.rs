//! docs/METRICS.md against what runs: a real stage (the parser, through the harness) and the
//! webhook gateway are served, exercised and scraped; every metric family they export must be
//! in the table and every row must be exported, under the `klambda_<subsystem>_<name>_<unit>`
//! convention; and `klambda up` exports all five in-process stages in one registry.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use klambda_harness::Harness;
use klambda_harness::publisher::Memory;
use klambda_test_support::http::{TestServer, get, post};
use klambda_test_support::repo;

/// Metric family names in an OpenMetrics text (from its `# TYPE` lines).
fn families(text: &str) -> BTreeSet<(String, String)> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let (name, kind) = rest.split_once(' ')?;
            Some((name.to_owned(), kind.trim().to_owned()))
        })
        .collect()
}

/// The exported name of a family: counters carry `_total` on their samples.
fn exported(name: &str, kind: &str) -> String {
    if kind == "counter" {
        format!("{name}_total")
    } else {
        name.to_owned()
    }
}

#[tokio::test]
async fn every_exported_metric_is_documented_and_every_documented_one_exported() -> Result<()> {
    let stage = TestServer::start(Harness::new(parser::Parser::new()).router()).await?;
    let event = post(
        &stage.url("/"),
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "m-1"),
            ("ce-source", "/tests"),
            ("ce-type", "io.knative.lambda.function.created"),
            ("content-type", "application/json"),
        ],
        "{}",
    )
    .await?;
    assert!(event.status.as_u16() < 500, "{:?}", event.body);
    let mut config = webhook_gateway::Config::default();
    config.buildkite.token = Some(klambda_harness::config::Secret::new("t"));
    let gateway =
        TestServer::start(webhook_gateway::router(config, Arc::new(Memory::default()))).await?;
    // A verified webhook and one that fails authentication: families appear once used.
    for token in ["t", "wrong"] {
        post(
            &gateway.url("/buildkite"),
            &[("x-buildkite-token", token), ("x-buildkite-event", "ping")],
            "{}",
        )
        .await?;
    }

    let mut exported_names = BTreeSet::new();
    for server in [&stage, &gateway] {
        let scrape = get(&server.url("/metrics")).await?;
        let text = String::from_utf8_lossy(&scrape.body).into_owned();
        for (name, kind) in families(&text) {
            exported_names.insert((exported(&name, &kind), kind));
        }
    }
    let docs =
        std::fs::read_to_string(repo::root().join("docs/METRICS.md")).context("docs/METRICS.md")?;
    let documented: BTreeSet<(String, String)> = docs
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| {
            let (name, rest) = rest.split_once('`')?;
            let kind = rest.trim_start_matches(" |").split('|').next()?.trim();
            Some((name.to_owned(), kind.to_owned()))
        })
        .collect();
    assert_eq!(
        exported_names, documented,
        "docs/METRICS.md and the exported metrics differ (left: exported, right: documented)"
    );
    for (name, kind) in &exported_names {
        let parts: Vec<&str> = name.split('_').collect();
        assert!(
            parts.len() >= 3
                && parts[0] == "klambda"
                && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{name} does not follow klambda_<subsystem>_<name>_<unit>"
        );
        match kind.as_str() {
            "counter" => assert!(name.ends_with("_total"), "{name}"),
            "histogram" => assert!(
                name.ends_with("_seconds") || name.ends_with("_bytes"),
                "{name} has no unit"
            ),
            _ => {}
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn klambda_up_exports_every_stage_in_one_registry() -> Result<()> {
    let (_platform, server) = klambda_tests::serve_embedded("metrics", |s| s).await?;
    assert_eq!(
        klambda_tests::deploy_example(&server, "hello-node", None).await?,
        0
    );
    let scrape = get(&server.url("/metrics")).await?;
    assert_eq!(scrape.status, 200);
    let text = String::from_utf8_lossy(&scrape.body).into_owned();
    for stage in [
        "parser",
        "context-uploader",
        "job-launcher",
        "service-deployer",
        "status-reporter",
    ] {
        assert!(
            text.contains(&format!("klambda_stage_requests_total{{stage=\"{stage}\",")),
            "no requests of {stage} in:\n{text}"
        );
    }
    // One registry: each family is declared once, whatever the number of stages.
    let declared: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let unique: BTreeSet<&str> = declared.iter().copied().collect();
    assert_eq!(declared.len(), unique.len(), "{declared:?}");
    server.shutdown().await;
    Ok(())
}
