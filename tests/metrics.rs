//! docs/METRICS.md against what runs: a real stage (the parser, through the harness) and the
//! webhook gateway are served, exercised and scraped; every metric family they export must be
//! in the table and every row must be exported, under the `klambda_<subsystem>_<name>_<unit>`
//! convention; and `klambda up` exports all five in-process stages in one registry.

use klambda_events::EventType as _;
use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use klambda_harness::Harness;
use klambda_harness::publisher::Memory;
use klambda_test_support::http::{TestServer, get, post};

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

/// `klambda up`'s `/metrics` after one deploy of the Node.js example.
async fn scrape_klambda_up_after_a_deploy(test: &str) -> Result<String> {
    let (_platform, server) = klambda_tests::serve_embedded(test, |s| s).await?;
    assert_eq!(
        klambda_tests::deploy_example(&server, "hello-node", None).await?,
        0
    );
    let scrape = get(&server.url("/metrics")).await?;
    assert_eq!(scrape.status, 200);
    server.shutdown().await;
    Ok(String::from_utf8_lossy(&scrape.body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exported_metric_is_documented_and_every_documented_one_exported() -> Result<()> {
    // Families appear once used: the platform after a deploy uses every stage's.
    let platform = scrape_klambda_up_after_a_deploy("metrics-families").await?;
    let stage = TestServer::start(Harness::new(parser::Parser::new()).router()).await?;
    let event = post(
        &stage.url("/"),
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "m-1"),
            ("ce-source", "/tests"),
            ("ce-type", klambda_events::catalogue::FunctionCreated::TYPE),
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

    let mut exported_names: BTreeSet<(String, String)> = families(&platform)
        .into_iter()
        .map(|(name, kind)| (exported(&name, &kind), kind))
        .collect();
    for server in [&stage, &gateway] {
        let scrape = get(&server.url("/metrics")).await?;
        let text = String::from_utf8_lossy(&scrape.body).into_owned();
        for (name, kind) in families(&text) {
            exported_names.insert((exported(&name, &kind), kind));
        }
    }
    let documented: BTreeSet<(String, String)> = klambda_tests::documented::metrics()?
        .into_iter()
        .map(|(name, metric)| (name, metric.kind))
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
    let text = scrape_klambda_up_after_a_deploy("metrics").await?;
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
    // One deploy of a Node.js function shows in every pipeline metric.
    let value = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    for (sample, expected) in [
        (
            r#"klambda_build_outcomes_total{runtime="nodejs20",outcome="completed",cause="none"}"#,
            1.0,
        ),
        (
            r#"klambda_build_outcomes_total{runtime="nodejs20",outcome="failed",cause="compile_error"}"#,
            0.0,
        ),
        (
            r#"klambda_context_size_bytes_count{runtime="nodejs20"}"#,
            1.0,
        ),
        (
            r#"klambda_build_duration_seconds_count{runtime="nodejs20",outcome="completed"}"#,
            1.0,
        ),
        (
            r#"klambda_deploy_duration_seconds_count{operation="apply",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"klambda_pipeline_step_duration_seconds_count{step="parse",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"klambda_pipeline_step_duration_seconds_count{step="build",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"klambda_pipeline_step_duration_seconds_count{step="deploy",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"klambda_pipeline_step_duration_seconds_count{step="deploy",outcome="failed"}"#,
            0.0,
        ),
        ("klambda_pipeline_submit_to_ready_seconds_count", 1.0),
        (r#"klambda_pipeline_journeys_total{outcome="ready"}"#, 1.0),
        (r#"klambda_pipeline_journeys_total{outcome="failed"}"#, 0.0),
        (r#"klambda_status_functions{phase="ready"}"#, 1.0),
        (r#"klambda_status_functions{phase="failed"}"#, 0.0),
        ("klambda_status_dead_letters", 0.0),
    ] {
        assert!(text.contains(sample), "no {sample} in:\n{text}");
        assert_eq!(value(sample), expected, "{sample}");
    }
    assert!(
        value(
            r#"klambda_broker_delivery_attempts_total{trigger="parser-function-created",outcome="replied"}"#
        ) >= 1.0,
        "the broker's deliveries are not counted:\n{text}"
    );
    // Every label value the running platform exports is one the table lists.
    let documented = klambda_tests::documented::metrics()?;
    let mut checked = 0;
    for sample in text.lines().filter(|l| l.starts_with("klambda_")) {
        let Some((name, labels)) = sample.split_once('{') else {
            continue;
        };
        let family = ["_bucket", "_count", "_sum", "_created"]
            .iter()
            .fold(name, |n, suffix| n.trim_end_matches(suffix));
        let row = documented
            .get(family)
            .with_context(|| format!("{family} is exported but not documented"))?;
        let labels = labels.split('}').next().unwrap_or_default();
        for pair in labels.split(',') {
            let Some((label, value)) = pair.split_once('=') else {
                continue;
            };
            if label == "le" {
                continue;
            }
            let allowed = row
                .labels
                .get(label)
                .with_context(|| format!("{family} exports label {label}, undocumented"))?;
            let value = value.trim_matches('"');
            assert!(
                allowed.is_empty() || allowed.contains(value),
                "{family}{{{label}={value:?}}} is exported; docs/METRICS.md lists {allowed:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 50, "only {checked} labels checked");
    // One registry: each family is declared once, whatever the number of stages.
    let declared: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let unique: BTreeSet<&str> = declared.iter().copied().collect();
    assert_eq!(declared.len(), unique.len(), "{declared:?}");
    Ok(())
}
