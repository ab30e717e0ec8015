//! The choreography in `eventing/` against the event contract in `klambda-events`.
//!
//! Fails when a consumed type has no Trigger, when two stages consume one type, when a Trigger
//! routes a type nobody declared as consumed (or an unknown type), when a filter uses what the
//! RabbitMQ broker ignores (`spec.filters`, empty values), and when a manifest would be refused
//! or silently pruned by the API server.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use klambda_events::catalogue::find;
use klambda_events::{CATALOGUE, Stage};
use klambda_test_support::manifests::{CrdSchemas, load_yaml, render};
use klambda_test_support::repo;
use serde_json::Value;

struct Trigger {
    file: String,
    name: String,
    filter: BTreeMap<String, String>,
    subscriber: String,
    raw: Value,
}

fn yaml_files(dir: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![repo::root().join(dir)];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn triggers() -> Result<Vec<Trigger>> {
    let mut triggers = Vec::new();
    for path in yaml_files("eventing")? {
        for doc in load_yaml(&path)? {
            if doc["kind"] != "Trigger" {
                continue;
            }
            let filter = doc["spec"]["filter"]["attributes"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            triggers.push(Trigger {
                file: path.display().to_string(),
                name: doc["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                filter,
                subscriber: doc["spec"]["subscriber"]["ref"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                raw: doc,
            });
        }
    }
    Ok(triggers)
}

fn stage_named(name: &str) -> Option<Stage> {
    Stage::ALL.into_iter().find(|s| s.service_name() == name)
}

#[test]
fn every_consumed_type_has_exactly_one_trigger_to_its_consumer() -> Result<()> {
    let triggers = triggers()?;
    let mut problems = Vec::new();
    for spec in CATALOGUE.iter().filter(|s| s.consumer.is_some()) {
        let routes: Vec<&Trigger> = triggers
            .iter()
            .filter(|t| t.filter.get("type").map(String::as_str) == Some(spec.type_name))
            .collect();
        if routes.len() != 1 {
            problems.push(format!(
                "{} has {} Triggers, needs exactly one",
                spec.type_name,
                routes.len()
            ));
        }
    }
    for trigger in &triggers {
        let Some(stage) = stage_named(&trigger.subscriber) else {
            problems.push(format!(
                "{}: subscriber {:?} is not a stage",
                trigger.file, trigger.subscriber
            ));
            continue;
        };
        // Kubernetes events (ApiServerSources) are told apart by their klambdakind extension.
        let source_kind = trigger.filter.get(klambda_kube::sources::EXTENSION);
        if let Some(kind) = source_kind {
            let expected = match kind.as_str() {
                klambda_kube::sources::BUILD_JOB => Some(Stage::JobLauncher),
                klambda_kube::sources::FUNCTION_SERVICE => Some(Stage::ServiceDeployer),
                _ => None,
            };
            let ty = trigger
                .filter
                .get("type")
                .map(String::as_str)
                .unwrap_or_default();
            if expected != Some(stage) || !klambda_kube::APISERVER_EVENT_TYPES.contains(&ty) {
                problems.push(format!(
                    "{}: routes {ty} {kind} to {}; ApiServerSource events go by kind to their stage",
                    trigger.file, trigger.subscriber
                ));
            }
            continue;
        }
        match trigger.filter.get("type") {
            None if stage == Stage::StatusReporter => {}
            None => problems.push(format!(
                "{}: only the status reporter may receive every event; {} needs a type filter",
                trigger.file, trigger.subscriber
            )),
            Some(ty) => match find(ty) {
                None => problems.push(format!("{}: unknown event type {ty}", trigger.file)),
                Some(spec) if spec.consumer != Some(stage) => problems.push(format!(
                    "{}: routes {ty} to {}, but the catalogue says its consumer is {:?}",
                    trigger.file, trigger.subscriber, spec.consumer
                )),
                Some(_) => {}
            },
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    Ok(())
}

#[test]
fn no_type_is_consumed_by_two_stages() -> Result<()> {
    let mut consumers: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    let triggers = triggers()?;
    for trigger in &triggers {
        if let Some(ty) = trigger.filter.get("type") {
            let kind = trigger
                .filter
                .get(klambda_kube::sources::EXTENSION)
                .map(String::as_str)
                .unwrap_or_default();
            consumers
                .entry((ty, kind))
                .or_default()
                .push(&trigger.subscriber);
        }
    }
    let shared: Vec<_> = consumers
        .iter()
        .filter(|(_, stages)| stages.len() > 1)
        .collect();
    assert!(
        shared.is_empty(),
        "types routed to more than one stage: {shared:?}"
    );
    Ok(())
}

#[test]
fn the_status_reporter_sees_every_event() -> Result<()> {
    let catch_all: Vec<_> = triggers()?
        .into_iter()
        .filter(|t| t.subscriber == "status-reporter" && t.filter.is_empty())
        .map(|t| t.name)
        .collect();
    assert_eq!(
        catch_all.len(),
        1,
        "one unfiltered Trigger to status-reporter: {catch_all:?}"
    );
    Ok(())
}

#[test]
fn filters_use_only_what_the_rabbitmq_broker_implements() -> Result<()> {
    let mut problems = Vec::new();
    for trigger in triggers()? {
        if !trigger.raw["spec"]["filters"].is_null() {
            problems.push(format!(
                "{}: spec.filters is ignored by the RabbitMQ broker",
                trigger.file
            ));
        }
        for (key, value) in &trigger.filter {
            if value.is_empty() {
                problems.push(format!(
                    "{}: filter {key} is empty; it does not mean 'any'",
                    trigger.file
                ));
            }
        }
        let annotation =
            &trigger.raw["metadata"]["annotations"]["rabbitmq.eventing.knative.dev/parallelism"];
        if annotation
            .as_str()
            .and_then(|v| v.parse::<u32>().ok())
            .is_none_or(|n| n == 0)
        {
            problems.push(format!(
                "{}: parallelism annotation must be a positive integer",
                trigger.file
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    Ok(())
}

#[test]
fn every_manifest_passes_the_crd_schemas_or_decodes_strictly() -> Result<()> {
    let schemas = CrdSchemas::knative()?;
    let mut problems = Vec::new();
    let mut checked = 0;
    for path in yaml_files("eventing")?
        .into_iter()
        .chain(yaml_files("deploy")?)
    {
        for doc in load_yaml(&path)? {
            let api_version = doc["apiVersion"].as_str().unwrap_or_default();
            let kind = doc["kind"].as_str().unwrap_or_default();
            if kind == "Kustomization" {
                continue;
            }
            // No CRD schema for the prometheus-operator here: monitoring.rs runs promtool on it.
            if api_version == "monitoring.coreos.com/v1" && kind == "PrometheusRule" {
                continue;
            }
            if let Some(strict) = klambda_test_support::manifests::check_builtin(&doc) {
                checked += 1;
                problems.extend(
                    strict
                        .into_iter()
                        .map(|p| format!("{}: {p}", path.display())),
                );
                continue;
            }
            if !schemas.knows(api_version, kind) {
                problems.push(format!(
                    "{}: no schema to check {api_version} {kind} against",
                    path.display()
                ));
                continue;
            }
            checked += 1;
            for problem in schemas.check(&doc)? {
                problems.push(format!("{}: {problem}", path.display()));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(checked >= 10, "only {checked} manifests were checked");
    Ok(())
}

#[test]
fn kustomization_lists_every_manifest() -> Result<()> {
    let kustomization = load_yaml(&repo::root().join("eventing/kustomization.yaml"))?;
    let listed: Vec<String> = kustomization[0]["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect();
    let root = repo::root().join("eventing");
    for path in yaml_files("eventing")? {
        let relative = path.strip_prefix(&root)?.display().to_string();
        if relative != "kustomization.yaml" {
            assert!(
                listed.contains(&relative),
                "eventing/kustomization.yaml does not list {relative}"
            );
        }
    }
    Ok(())
}

#[test]
fn the_brokers_dead_letter_sink_is_a_route_the_status_reporter_serves() -> Result<()> {
    let broker = load_yaml(&repo::root().join("eventing/broker.yaml"))?
        .into_iter()
        .find(|doc| doc["kind"] == "Broker")
        .context("eventing/broker.yaml has a Broker")?;
    let sink = &broker["spec"]["delivery"]["deadLetterSink"];
    assert_eq!(sink["ref"]["name"], Stage::StatusReporter.service_name());
    assert_eq!(sink["uri"], status_reporter::api::DEAD_LETTER_PATH);
    Ok(())
}

#[test]
fn deploy_kustomization_lists_every_manifest() -> Result<()> {
    let kustomization = load_yaml(&repo::root().join("deploy/kustomization.yaml"))?;
    let listed: Vec<&str> = kustomization[0]["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str())
        .collect();
    let root = repo::root().join("deploy");
    for path in yaml_files("deploy")? {
        let relative = path
            .strip_prefix(&root)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        // The monitoring kustomization is installed on its own (it needs the prometheus-operator).
        if relative == "kustomization.yaml" || relative.starts_with("monitoring/") {
            continue;
        }
        assert!(
            listed.contains(&relative.as_str()),
            "deploy/kustomization.yaml does not list {relative}"
        );
    }
    Ok(())
}

#[test]
fn the_install_kustomizations_render_into_a_consistent_whole() -> Result<()> {
    let mut objects = render(&repo::root().join("deploy"))?;
    objects.extend(render(&repo::root().join("eventing"))?);
    let key = |o: &serde_json::Value| {
        (
            o["kind"].as_str().unwrap_or_default().to_owned(),
            o["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    let mut seen = BTreeSet::new();
    let mut problems = Vec::new();
    for object in &objects {
        if !seen.insert(key(object)) {
            problems.push(format!("{:?} is defined twice", key(object)));
        }
    }
    let has =
        |kind: &str, ns: &str, name: &str| seen.contains(&(kind.into(), ns.into(), name.into()));
    for object in &objects {
        let (kind, ns, name) = key(object);
        if kind != "Namespace" && !has("Namespace", "", &ns) {
            problems.push(format!(
                "{kind} {name}: namespace {ns:?} is not created by deploy/"
            ));
        }
        let pod = &object["spec"]["template"]["spec"];
        if let Some(account) = pod["serviceAccountName"].as_str()
            && !has("ServiceAccount", &ns, account)
        {
            problems.push(format!(
                "{kind} {name}: ServiceAccount {account} does not exist"
            ));
        }
        for container in pod["containers"].as_array().into_iter().flatten() {
            let image = container["image"].as_str().unwrap_or_default();
            if image.starts_with("knative-lambda/") {
                problems.push(format!(
                    "{kind} {name}: image {image} is not pinned by deploy/kustomization.yaml"
                ));
            }
            for source in container["envFrom"].as_array().into_iter().flatten() {
                if let Some(map) = source["configMapRef"]["name"].as_str()
                    && !has("ConfigMap", &ns, map)
                {
                    problems.push(format!("{kind} {name}: ConfigMap {map} does not exist"));
                }
            }
        }
        if kind == "RoleBinding" {
            let role = object["roleRef"]["name"].as_str().unwrap_or_default();
            if !has("Role", &ns, role) {
                problems.push(format!("RoleBinding {name}: Role {role} does not exist"));
            }
            for subject in object["subjects"].as_array().into_iter().flatten() {
                let sns = subject["namespace"].as_str().unwrap_or(&ns);
                let sname = subject["name"].as_str().unwrap_or_default();
                if !has("ServiceAccount", sns, sname) {
                    problems.push(format!(
                        "RoleBinding {name}: ServiceAccount {sns}/{sname} does not exist"
                    ));
                }
            }
        }
        if kind == "ApiServerSource" {
            let account = object["spec"]["serviceAccountName"]
                .as_str()
                .unwrap_or_default();
            if !has("ServiceAccount", &ns, account) {
                problems.push(format!(
                    "ApiServerSource {name}: ServiceAccount {account} does not exist"
                ));
            }
            let sink = &object["spec"]["sink"]["ref"];
            let sink_ns = sink["namespace"].as_str().unwrap_or(&ns);
            if !has(
                sink["kind"].as_str().unwrap_or_default(),
                sink_ns,
                sink["name"].as_str().unwrap_or_default(),
            ) {
                problems.push(format!("ApiServerSource {name}: its sink does not exist"));
            }
        }
        if kind == "Trigger" {
            let subscriber = &object["spec"]["subscriber"]["ref"];
            let sub_ns = subscriber["namespace"].as_str().unwrap_or(&ns);
            if !has(
                "Service",
                sub_ns,
                subscriber["name"].as_str().unwrap_or_default(),
            ) {
                problems.push(format!(
                    "Trigger {name}: subscriber {subscriber} is not installed"
                ));
            }
            if !has(
                "Broker",
                &ns,
                object["spec"]["broker"].as_str().unwrap_or_default(),
            ) {
                problems.push(format!("Trigger {name}: its Broker is not in {ns}"));
            }
        }
    }
    // Every stage is installed, and each stage's Trigger subscribers are Services in deploy/.
    for stage in Stage::ALL {
        if !has("Service", "knative-lambda", stage.service_name()) {
            problems.push(format!(
                "stage {} is not installed by deploy/",
                stage.service_name()
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    Ok(())
}
