//! The alerts in deploy/monitoring: `promtool check rules` and `promtool test rules` (every
//! alert fires on its symptom and stays quiet without it) pass; every metric an expression uses
//! is one the code exports (docs/METRICS.md, itself checked against the code by metrics.rs);
//! every alert has a summary, a description and a runbook section that exists.

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use klambda_test_support::repo;
use klambda_tests::documented;
use serde_json::Value;

fn rules() -> Result<Value> {
    let text = std::fs::read_to_string(repo::root().join("deploy/monitoring/rules.yaml"))?;
    Ok(serde_norway::from_str(&text)?)
}

fn promtool(args: &[&str], dir: &std::path::Path) -> Result<String> {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .context("promtool is not installed: run scripts/services.sh (it installs Debian's prometheus package)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!("promtool {args:?} failed:\n{text}");
    }
    Ok(text)
}

#[test]
fn promtool_checks_the_rules_and_every_alert_fires_and_stays_quiet() -> Result<()> {
    let rules = rules()?;
    assert_eq!(rules["kind"], "PrometheusRule");
    let dir = std::env::temp_dir().join(format!("klambda-promtool-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // promtool reads plain rule files: the PrometheusRule's spec is exactly one.
    std::fs::write(
        dir.join("rules.plain.yaml"),
        serde_norway::to_string(&rules["spec"])?,
    )?;
    std::fs::copy(
        repo::root().join("tests/monitoring/rules.test.yaml"),
        dir.join("rules.test.yaml"),
    )?;
    promtool(&["check", "rules", "rules.plain.yaml"], &dir)?;
    let tested = promtool(&["test", "rules", "rules.test.yaml"], &dir)?;
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert is tested, firing and not firing.
    let tests = std::fs::read_to_string(dir.join("rules.test.yaml"))?;
    for alert in alerts(&rules) {
        let name = alert["alert"].as_str().unwrap_or_default();
        let cases = tests.matches(&format!("alertname: {name}\n")).count();
        assert!(
            cases >= 2,
            "{name} has {cases} test case(s); it needs one firing and one quiet"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn alerts(rules: &Value) -> Vec<Value> {
    rules["spec"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
        .filter(|rule| rule.get("alert").is_some())
        .collect()
}

#[test]
fn alerts_use_exported_metrics_and_link_existing_runbook_sections() -> Result<()> {
    let rules = rules()?;
    let documented = documented::metrics()?;
    let runbook = std::fs::read_to_string(repo::root().join("docs/RUNBOOK.md"))?;
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|heading| heading.trim().to_lowercase().replace(' ', "-"))
        .collect();
    let mut selected = 0;
    let mut problems = Vec::new();
    for group in rules["spec"]["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            let expr = rule["expr"].as_str().unwrap_or_default();
            selected += documented::selectors(expr).len();
            problems.extend(documented::check(expr, &documented));
        }
    }
    assert!(selected > 0);
    assert!(problems.is_empty(), "{problems:#?}");
    for alert in alerts(&rules) {
        let name = alert["alert"].as_str().unwrap_or_default();
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                alert["annotations"][key]
                    .as_str()
                    .is_some_and(|v| !v.is_empty()),
                "{name} has no {key}"
            );
        }
        let url = alert["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_default();
        let anchor = url.rsplit('#').next().unwrap_or_default();
        assert!(url.contains("docs/RUNBOOK.md#"), "{name}: {url}");
        assert!(
            anchors.contains(anchor),
            "{name}: docs/RUNBOOK.md has no section #{anchor}"
        );
        assert_eq!(
            anchor,
            name.to_lowercase(),
            "{name}'s runbook section is named after it"
        );
    }
    Ok(())
}

#[test]
fn every_dashboard_query_uses_exported_metrics_or_recording_rules() -> Result<()> {
    let documented = documented::metrics()?;
    let rules = rules()?;
    let recorded: BTreeSet<String> = rules["spec"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|rule| rule["record"].as_str().map(str::to_owned))
        .collect();
    let dir = repo::root().join("deploy/monitoring/dashboards");
    let mut queries = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let dashboard: Value = serde_json::from_slice(&std::fs::read(&path)?)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        assert!(
            dashboard["uid"].is_string() && dashboard["title"].is_string(),
            "{}",
            path.display()
        );
        for panel in dashboard["panels"].as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_default();
                queries += 1;
                let mut names = 0;
                for word in
                    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                {
                    if word.starts_with("klambda:") {
                        names += 1;
                        assert!(
                            recorded.contains(word),
                            "{}: {word} is not a recording rule",
                            path.display()
                        );
                    } else if word.starts_with("klambda_") {
                        names += 1;
                    }
                }
                let problems = documented::check(expr, &documented);
                assert!(problems.is_empty(), "{}: {problems:#?}", path.display());
                assert!(
                    names > 0,
                    "{}: the query {expr:?} uses no knative-lambda metric",
                    path.display()
                );
            }
        }
    }
    assert!(queries >= 8, "only {queries} queries");
    // Every dashboard ships: the kustomization's ConfigMap lists each file.
    let kustomization: Value = serde_norway::from_str(&std::fs::read_to_string(
        repo::root().join("deploy/monitoring/kustomization.yaml"),
    )?)?;
    let shipped: BTreeSet<String> = kustomization["configMapGenerator"][0]["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect();
    for entry in std::fs::read_dir(&dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        assert!(
            shipped.contains(&format!("dashboards/{name}")),
            "deploy/monitoring/kustomization.yaml does not ship dashboards/{name}"
        );
    }
    for required in ["overview", "pipeline", "builds", "broker"] {
        assert!(shipped.contains(&format!("dashboards/{required}.json")));
    }
    Ok(())
}

#[test]
fn the_query_check_catches_a_value_the_code_never_exports() -> Result<()> {
    let documented = documented::metrics()?;
    let problems = documented::check(
        r#"sum(rate(klambda_stage_requests_total{outcome=~"retryable|internal"}[5m]))"#,
        &documented,
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("internal"), "{problems:?}");
    assert_eq!(
        documented::check("klambda_build_outcomes_total{colour=\"red\"}", &documented).len(),
        1
    );
    assert_eq!(
        documented::check("rate(klambda_no_such_metric_total[5m])", &documented).len(),
        1
    );
    assert!(
        documented::check(
            r#"sum by (cause) (rate(klambda_build_outcomes_total{outcome="failed"}[30m]))"#,
            &documented
        )
        .is_empty()
    );
    Ok(())
}
