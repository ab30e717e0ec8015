//! The fake Kubernetes API refuses what a real one would: calls the caller's Roles do not
//! allow (403), Knative objects that break their CRD schema or carry undeclared fields (422),
//! built-in objects with unknown fields (422), and a second create (409).

use anyhow::Result;
use k8s_openapi::api::batch::v1::Job;
use klambda_test_support::kubernetes::{FakeKube, service_account};
use klambda_test_support::repo;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use serde_json::json;

fn client(url: &str, account: &str) -> Result<kube::Client> {
    let mut config = kube::Config::new(url.parse()?);
    config.auth_info.impersonate = Some(service_account("knative-lambda", account));
    Ok(kube::Client::try_from(config)?)
}

fn status_of(error: kube::Error) -> (u16, String) {
    match error {
        kube::Error::Api(status) => (status.code, status.message.clone()),
        other => (0, other.to_string()),
    }
}

#[tokio::test]
async fn the_fake_refuses_what_rbac_schemas_and_strict_decoding_refuse() -> Result<()> {
    let fake = FakeKube::new(&[
        repo::root().join("deploy/rbac/job-launcher.yaml"),
        repo::root().join("deploy/rbac/service-deployer.yaml"),
    ])?
    .serve()
    .await?;
    let triggers = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("eventing.knative.dev", "v1", "Trigger"),
        "triggers",
    );
    let deployer: Api<DynamicObject> = Api::namespaced_with(
        client(&fake.url(), "service-deployer")?,
        "knative-lambda",
        &triggers,
    );
    let apply = PatchParams::apply("test").force();

    // A Trigger whose filter attributes are a string, not a map.
    let typo = json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
        "metadata": {"name": "fn-x-0", "namespace": "knative-lambda"},
        "spec": {"broker": "klambda", "filter": {"attributes": "type=t"},
                 "subscriber": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "x"}}}});
    let (code, message) = status_of(
        deployer
            .patch("fn-x-0", &apply, &Patch::Apply(&typo))
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("case 1: accepted"))?,
    );
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("attributes"), "{message}");

    // A Trigger whose broker is not a string.
    let incomplete = json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
        "metadata": {"name": "fn-y-0", "namespace": "knative-lambda"}, "spec": {"broker": 5}});
    let (code, message) = status_of(
        deployer
            .patch("fn-y-0", &apply, &Patch::Apply(&incomplete))
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("case 2: accepted"))?,
    );
    assert_eq!(code, 422, "{message}");

    // job-launcher may not touch Triggers.
    let launcher_triggers: Api<DynamicObject> = Api::namespaced_with(
        client(&fake.url(), "job-launcher")?,
        "knative-lambda",
        &triggers,
    );
    let (code, message) = status_of(
        launcher_triggers
            .list(&Default::default())
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("case 3: allowed"))?,
    );
    assert_eq!(code, 403, "{message}");

    // A Job with an unknown field is refused; a good one is created once.
    let jobs: Api<Job> = Api::namespaced(
        client(&fake.url(), "job-launcher")?,
        "knative-lambda-builds",
    );
    let mut job = json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "j", "namespace": "knative-lambda-builds"},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
                 "containers": [{"name": "c", "image": "busybox"}]}}}});
    let good: Job = serde_json::from_value(job.clone())?;
    job["spec"]["backofLimit"] = json!(0);
    let created = fake.kube.clone();
    let raw = client(&fake.url(), "job-launcher")?;
    let request = http::Request::post("/apis/batch/v1/namespaces/knative-lambda-builds/jobs")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&job)?)?;
    let (code, message) = status_of(
        raw.request::<Job>(request)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("case 4: accepted"))?,
    );
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("backofLimit"), "{message}");
    jobs.create(&PostParams::default(), &good).await?;
    let (code, _) = status_of(
        jobs.create(&PostParams::default(), &good)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("case 5: created twice"))?,
    );
    assert_eq!(code, 409);
    assert_eq!(
        created
            .objects("batch", "jobs", "knative-lambda-builds")
            .len(),
        1
    );
    Ok(())
}
