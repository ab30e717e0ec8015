//! The Knative deployer against the fake Kubernetes API (klambda_test_support::kubernetes), as
//! service-deployer's ServiceAccount with the Role in deploy/rbac/service-deployer.yaml: every
//! Service and Trigger is validated against the real CRD schemas on apply; deploy, replay,
//! update (a new revision), rollback (traffic pinned to the previous revision) and delete; the
//! Service's Ready condition (as Knative writes it) turned into `service.ready` /
//! `service.failed`, once per generation; and least privilege: the Role grants exactly what
//! these paths use.

use std::sync::Arc;

use anyhow::{Result, bail};
use cloudevents::{AttributesReader as _, Event, EventBuilder as _};
use klambda_events::catalogue::{
    FunctionDeleted, FunctionRollback, ServiceCreated, ServiceDeleted, ServiceFailed, ServiceReady,
    ServiceUpdated,
};
use klambda_events::data::{FunctionDeletion, RollbackRequest};
use klambda_events::{Envelope, EventType, FunctionName, decode};
use klambda_harness::publisher::Memory;
use klambda_harness::{Harness, Outcome};
use klambda_test_support::kubernetes::{FakeKube, Served, service_account};
use klambda_test_support::repo;
use serde_json::{Value, json};
use service_deployer::ServiceDeployer;
use service_deployer::deployer::knative::{KnativeServices, KnativeSettings, PREVIOUS_REVISION};

const NS: &str = "knative-lambda";
const SERVING: &str = "serving.knative.dev";
const SETTLED: &str = "2026-11-23T10:05:00Z";

struct Cluster {
    fake: Served,
    deployer: Harness<ServiceDeployer>,
    published: Memory,
}

async fn cluster() -> Result<Cluster> {
    let fake = FakeKube::new(&[repo::root().join("deploy/rbac/service-deployer.yaml")])?
        .serve()
        .await?;
    let mut config = kube::Config::new(fake.url().parse()?);
    config.auth_info.impersonate = Some(service_account(NS, "service-deployer"));
    let services =
        KnativeServices::new(kube::Client::try_from(config)?, KnativeSettings::default());
    let published = Memory::default();
    let deployer = Harness::new(ServiceDeployer::new(Arc::new(services)))
        .with_publisher(Arc::new(published.clone()));
    Ok(Cluster {
        fake,
        deployer,
        published,
    })
}

/// `build.completed` for `name` built as `image`, with `env` and one Trigger filter.
fn built(name: &str, image: &str, greeting: &str) -> Result<Event> {
    let runtime = klambda_test_support::fixtures::runtime("nodejs20")?;
    let code = format!("// {greeting}");
    let (mut spec, digest) = klambda_test_support::fixtures::inline_function(
        name,
        runtime,
        "index.handler",
        &[("index.js", &code)],
    )?;
    spec.env.insert("GREETING".to_owned(), greeting.to_owned());
    spec.secrets
        .insert("DB_PASSWORD".to_owned(), "db-password".to_owned());
    spec.scaling =
        serde_json::from_value(json!({"minScale": 1, "maxScale": 5, "concurrency": 10}))?;
    spec.triggers = vec![serde_json::from_value(
        json!({"attributes": {"type": "com.example.order.created"},
               "replyType": "com.example.order.priced", "parallelism": 5}),
    )?];
    spec.delivery = Some(serde_json::from_value(json!({
        "retry": 3, "backoffPolicy": "linear", "backoffDelay": "PT0.2S", "timeout": "PT5S"
    }))?);
    Ok(klambda_test_support::fixtures::build_completed(
        spec, digest, image,
    ))
}

async fn answer(cluster: &Cluster, event: Event) -> Result<Option<Event>> {
    Ok(match cluster.deployer.dispatch(event).await? {
        Outcome::Reply(reply) => Some(reply),
        Outcome::Done => None,
    })
}

/// What Knative's controllers do once the latest generation is rolled out: the Revision (from
/// the template) and the Service's status, Ready `True`, or `False` with `failure`.
fn settle(cluster: &Cluster, name: &str, failure: Option<(&str, &str)>) -> Result<Value> {
    let Some(mut service) = cluster.fake.kube.object(SERVING, "services", NS, name) else {
        bail!("no Service {name}");
    };
    let generation = service["metadata"]["generation"].as_i64().unwrap_or(1);
    let created = format!("{name}-{generation:05}");
    let template = &service["spec"]["template"];
    cluster.fake.kube.put(SERVING, "revisions", json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Revision",
        "metadata": {"name": created, "namespace": NS,
                     "labels": {"serving.knative.dev/service": name, "serving.knative.dev/configurationGeneration": generation.to_string()},
                     "annotations": template["metadata"]["annotations"].clone()},
        "spec": template["spec"].clone(),
    }));
    let pinned = service["spec"]["traffic"][0]["revisionName"]
        .as_str()
        .map(str::to_owned);
    let condition = |ty: &str| match failure {
        None => json!({"type": ty, "status": "True", "lastTransitionTime": SETTLED}),
        Some((reason, message)) => json!({"type": ty, "status": "False", "reason": reason,
                                          "message": message, "lastTransitionTime": SETTLED}),
    };
    let ready_revision = match failure {
        None => created.clone(),
        Some(_) => format!("{name}-{:05}", (generation - 1).max(1)),
    };
    let serving = pinned.clone().unwrap_or_else(|| ready_revision.clone());
    service["status"] = json!({
        "observedGeneration": generation,
        "conditions": [condition("ConfigurationsReady"), condition("Ready"), condition("RoutesReady")],
        "latestCreatedRevisionName": created,
        "latestReadyRevisionName": ready_revision,
        "url": format!("http://{name}.{NS}.example.com"),
        "address": {"url": format!("http://{name}.{NS}.svc.cluster.local")},
        "traffic": [{"revisionName": serving, "latestRevision": pinned.is_none(), "percent": 100}],
    });
    cluster.fake.kube.put(SERVING, "services", service.clone());
    Ok(service)
}

/// The ApiServerSource event for `service`.
fn service_event(service: &Value, id: &str) -> Result<Event> {
    let name = service["metadata"]["name"].as_str().unwrap_or_default();
    Ok(cloudevents::EventBuilderV10::new()
        .id(id)
        .source("https://10.96.0.1:443")
        .ty(klambda_events::external::APISERVER_RESOURCE_UPDATE)
        .subject(format!(
            "/apis/serving.knative.dev/v1/namespaces/{NS}/services/{name}"
        ))
        .extension("klambdakind", "function-service")
        .data("application/json", service.clone())
        .build()?)
}

/// Settles the Service and delivers its status event twice; the (identical) answer.
async fn settled(cluster: &Cluster, name: &str, failure: Option<(&str, &str)>) -> Result<Event> {
    let service = settle(cluster, name, failure)?;
    let Some(first) = answer(cluster, service_event(&service, "u-1")?).await? else {
        bail!("no answer to a settled Service");
    };
    let Some(again) = answer(cluster, service_event(&service, "u-2")?).await? else {
        bail!("no answer to the repeated update");
    };
    assert_eq!(first, again, "repeated Service updates must give one event");
    Ok(first)
}

fn side_events(cluster: &Cluster) -> Vec<Event> {
    cluster.published.events()
}

#[tokio::test]
async fn deploy_replay_update_rollback_and_delete_with_exactly_the_granted_verbs() -> Result<()> {
    let cluster = cluster().await?;
    let v1 = "registry.example.com/functions/hello@sha256:1111111111111111111111111111111111111111111111111111111111111111";
    let v2 = "registry.example.com/functions/hello@sha256:2222222222222222222222222222222222222222222222222222222222222222";

    // Deploy: the Service and its Trigger are applied (and validated); no answer until ready.
    assert!(
        answer(&cluster, built("hello", v1, "Hello")?)
            .await?
            .is_none()
    );
    let Some(service) = cluster.fake.kube.object(SERVING, "services", NS, "hello") else {
        bail!("no Service");
    };
    let template = &service["spec"]["template"];
    assert_eq!(template["spec"]["containers"][0]["image"], v1);
    assert_eq!(template["spec"]["containerConcurrency"], 10);
    assert_eq!(
        template["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"],
        "1"
    );
    assert_eq!(
        template["metadata"]["annotations"]["autoscaling.knative.dev/max-scale"],
        "5"
    );
    assert_eq!(
        template["metadata"]["annotations"]["autoscaling.knative.dev/scale-to-zero-pod-retention-period"],
        "60s"
    );
    assert_eq!(
        template["spec"]["containers"][0]["env"],
        // Secret env by reference to the functions' Secret: the value never passes here.
        json!([
            {"name": "GREETING", "value": "Hello"},
            {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {
                "name": "klambda-function-secrets", "key": "db-password"}}}
        ])
    );
    let triggers = cluster
        .fake
        .kube
        .objects("eventing.knative.dev", "triggers", NS);
    // Its filter's Trigger and its invocation Trigger (`klambda invoke --async`).
    assert_eq!(triggers.len(), 2);
    let invocations = triggers
        .iter()
        .find(|t| t["metadata"]["name"] == "fn-hello-async")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        invocations["spec"]["filter"]["attributes"],
        json!({"type": "klambda.invoke", "klambdafunction": "hello"})
    );
    // Its result is dropped, as Lambda drops an asynchronous invocation's: the shim is told so
    // on the subscriber URI, resolved against the Service's address.
    assert_eq!(invocations["spec"]["subscriber"]["uri"], "/?reply=none");
    assert_eq!(invocations["spec"]["subscriber"]["ref"]["name"], "hello");
    let parallelism = |trigger: &Value| {
        trigger["metadata"]["annotations"]["rabbitmq.eventing.knative.dev/parallelism"].clone()
    };
    assert_eq!(parallelism(&invocations), "10");
    let triggers: Vec<Value> = triggers
        .into_iter()
        .filter(|t| t["metadata"]["name"] == "fn-hello-0")
        .collect();
    assert_eq!(triggers.len(), 1);
    assert_eq!(
        triggers[0]["spec"]["filter"]["attributes"]["type"],
        "com.example.order.created"
    );
    assert_eq!(triggers[0]["spec"]["subscriber"]["ref"]["name"], "hello");
    assert_eq!(parallelism(&triggers[0]), "5");
    // The filter's replyType, for the shim to type the reply with (query-encoded).
    assert_eq!(
        triggers[0]["spec"]["subscriber"]["uri"],
        "/?replyType=com.example.order.priced"
    );
    // The function's delivery, 1:1, and (since a Trigger's delivery replaces the Broker's) the
    // platform's dead letters named as the Broker names them.
    let broker =
        klambda_test_support::manifests::load_yaml(&repo::root().join("eventing/broker.yaml"))?
            .into_iter()
            .find(|doc| doc["kind"] == "Broker")
            .unwrap_or_default();
    assert!(broker["spec"]["delivery"]["deadLetterSink"].is_object());
    assert_eq!(
        triggers[0]["spec"]["delivery"],
        json!({
            "retry": 3, "backoffPolicy": "linear", "backoffDelay": "PT0.2S", "timeout": "PT5S",
            "deadLetterSink": broker["spec"]["delivery"]["deadLetterSink"],
        })
    );
    let created = side_events(&cluster);
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].ty(), ServiceCreated::TYPE);
    assert_eq!(
        decode::<ServiceCreated>(&created[0])?.revision,
        "hello-00001"
    );

    let ready = settled(&cluster, "hello", None).await?;
    assert_eq!(ready.ty(), ServiceReady::TYPE);
    let readiness = decode::<ServiceReady>(&ready)?;
    assert_eq!(readiness.revision, "hello-00001");
    assert_eq!(readiness.url, "http://hello.knative-lambda.example.com");

    // A replay of the same build: nothing changes, the same readiness at once.
    let Some(replayed) = answer(&cluster, built("hello", v1, "Hello")?).await? else {
        bail!("a replay of a ready deployment must answer service.ready");
    };
    assert_eq!(decode::<ServiceReady>(&replayed)?.revision, "hello-00001");
    let service = cluster
        .fake
        .kube
        .object(SERVING, "services", NS, "hello")
        .unwrap_or_default();
    assert_eq!(service["metadata"]["generation"], 1);

    // An update: a new revision, the serving one remembered.
    assert!(answer(&cluster, built("hello", v2, "Hi")?).await?.is_none());
    let service = cluster
        .fake
        .kube
        .object(SERVING, "services", NS, "hello")
        .unwrap_or_default();
    assert_eq!(service["metadata"]["generation"], 2);
    assert_eq!(
        service["metadata"]["annotations"][PREVIOUS_REVISION],
        "hello-00001"
    );
    let updated = side_events(&cluster);
    assert_eq!(
        updated.last().map(|e| e.ty().to_owned()).as_deref(),
        Some(ServiceUpdated::TYPE)
    );
    assert_eq!(
        decode::<ServiceUpdated>(&updated[updated.len() - 1])?.revision,
        "hello-00002"
    );
    assert_eq!(
        decode::<ServiceReady>(&settled(&cluster, "hello", None).await?)?.revision,
        "hello-00002"
    );

    // Rollback: traffic pinned to the previous revision, which then serves.
    let rollback = Envelope::new("r-1", "/tests")
        .subject("hello")
        .encode::<FunctionRollback>(&RollbackRequest {
            name: FunctionName::new("hello")?,
            to_revision: None,
            extra: Default::default(),
        });
    assert!(answer(&cluster, rollback).await?.is_none());
    let service = cluster
        .fake
        .kube
        .object(SERVING, "services", NS, "hello")
        .unwrap_or_default();
    assert_eq!(
        service["spec"]["traffic"],
        json!([{"revisionName": "hello-00001", "percent": 100}])
    );
    let rolled = side_events(&cluster);
    let rolled = decode::<ServiceUpdated>(&rolled[rolled.len() - 1])?;
    assert_eq!(
        (rolled.revision.as_str(), rolled.image.as_str()),
        ("hello-00001", v1)
    );
    assert_eq!(
        decode::<ServiceReady>(&settled(&cluster, "hello", None).await?)?.revision,
        "hello-00001"
    );

    // Delete: the Service and the Trigger go.
    let delete = Envelope::new("d-1", "/tests")
        .subject("hello")
        .encode::<FunctionDeleted>(&FunctionDeletion {
            name: FunctionName::new("hello")?,
            extra: Default::default(),
        });
    let Some(deleted) = answer(&cluster, delete).await? else {
        bail!("no service.deleted");
    };
    assert_eq!(deleted.ty(), ServiceDeleted::TYPE);
    assert!(
        cluster
            .fake
            .kube
            .object(SERVING, "services", NS, "hello")
            .is_none()
    );
    assert!(
        cluster
            .fake
            .kube
            .objects("eventing.knative.dev", "triggers", NS)
            .is_empty()
    );

    // Counted where they happen: two revisions cut (the replay cut none), one rollback, one
    // delete.
    let metrics = cluster.deployer.metrics().encode();
    for (effect, count) in [
        ("revision_deployed", 2),
        ("revision_restored", 1),
        ("function_removed", 1),
    ] {
        assert!(
            metrics.contains(&format!(
                r#"klambda_effects_total{{stage="service-deployer",effect="{effect}"}} {count}"#
            )),
            "{effect} is not {count}: {metrics}"
        );
    }

    // Least privilege: every call allowed, and the Role grants nothing more than was used.
    let requests = cluster.fake.kube.requests();
    assert!(
        requests.iter().all(|r| r.status < 400 || r.status == 404),
        "{requests:#?}"
    );
    let used = cluster.fake.kube.used();
    let granted = cluster
        .fake
        .kube
        .granted(&service_account(NS, "service-deployer"));
    assert_eq!(
        used, granted,
        "deploy/rbac/service-deployer.yaml must grant exactly what service-deployer uses (left: used, right: granted)"
    );
    Ok(())
}

#[tokio::test]
async fn a_revision_that_fails_its_readiness_is_reported_with_knatives_reason() -> Result<()> {
    let cluster = cluster().await?;
    let image = "registry.example.com/functions/crash@sha256:3333333333333333333333333333333333333333333333333333333333333333";
    assert!(
        answer(&cluster, built("crash", image, "Boom")?)
            .await?
            .is_none()
    );
    let failed = settled(
        &cluster,
        "crash",
        Some(("RevisionFailed", "Revision \"crash-00001\" failed with message: Container failed with: Error: Cannot find module '/app/shim.js'.")),
    )
    .await?;
    assert_eq!(failed.ty(), ServiceFailed::TYPE);
    let failure = decode::<ServiceFailed>(&failed)?;
    assert_eq!(failure.reason, "RevisionFailed");
    assert!(
        failure.message.contains("Cannot find module"),
        "{}",
        failure.message
    );
    assert_eq!(failure.revision.as_deref(), Some("crash-00001"));
    Ok(())
}

#[tokio::test]
async fn rolling_back_a_function_with_one_revision_is_a_clear_failure() -> Result<()> {
    let cluster = cluster().await?;
    let image = "registry.example.com/functions/solo@sha256:4444444444444444444444444444444444444444444444444444444444444444";
    assert!(
        answer(&cluster, built("solo", image, "Hey")?)
            .await?
            .is_none()
    );
    settled(&cluster, "solo", None).await?;
    let rollback = Envelope::new("r-2", "/tests")
        .subject("solo")
        .encode::<FunctionRollback>(&RollbackRequest {
            name: FunctionName::new("solo")?,
            to_revision: None,
            extra: Default::default(),
        });
    let Some(answer) = answer(&cluster, rollback).await? else {
        bail!("no answer to an impossible rollback");
    };
    assert_eq!(answer.ty(), ServiceFailed::TYPE);
    assert_eq!(decode::<ServiceFailed>(&answer)?.reason, "RevisionMissing");
    Ok(())
}
