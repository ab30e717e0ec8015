//! The cluster builder against the fake Kubernetes API (klambda_test_support::kubernetes), as
//! job-launcher's ServiceAccount with the Role in deploy/rbac/job-launcher.yaml: the Job a
//! `context.uploaded` creates (validated strictly), a replay that finds it, cancellation with
//! foreground deletion, every way a build Job ends (Job, Pod and log shapes as Kubernetes
//! writes them), repeated Job events answered identically, and least privilege: the Role grants
//! exactly what these paths use.

use std::sync::Arc;

use anyhow::{Result, bail};
use cloudevents::{AttributesReader as _, Event};
use job_launcher::JobLauncher;
use job_launcher::builder::kaniko::{KanikoJobs, KanikoSettings, job_name};
use klambda_events::catalogue::{
    BuildCancel, BuildCancelled, BuildCompleted, BuildFailed, BuildStarted, BuildTimeout,
};
use klambda_events::data::{BuildFailureCause, CancelRequest};
use klambda_events::{BuildId, Envelope, EventType, FunctionName, decode};
use klambda_harness::publisher::Memory;
use klambda_harness::{Harness, Outcome};
use klambda_storage::LocalDir;
use klambda_test_support::jobs::{self, finished, pod, terminated};
use klambda_test_support::kubernetes::{FakeKube, Served, service_account};
use klambda_test_support::repo;
use serde_json::{Value, json};

const BUILDS: &str = "knative-lambda-builds";

struct Cluster {
    fake: Served,
    launcher: Harness<JobLauncher>,
    published: Memory,
}

async fn cluster(test: &str) -> Result<Cluster> {
    let fake = FakeKube::new(&[repo::root().join("deploy/rbac/job-launcher.yaml")])?
        .serve()
        .await?;
    let mut config = kube::Config::new(fake.url().parse()?);
    config.auth_info.impersonate = Some(service_account("knative-lambda", "job-launcher"));
    let client = kube::Client::try_from(config)?;
    let settings = KanikoSettings {
        s3_endpoint: Some("http://s3.knative-lambda.svc:9000".into()),
        cache_repo: Some("registry.example.com/cache".into()),
        registry: "registry.example.com/functions".into(),
        ..KanikoSettings::default()
    };
    let dir = std::env::temp_dir().join(format!("klambda-kube-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let published = Memory::default();
    let launcher = Harness::new(JobLauncher::new(
        Arc::new(KanikoJobs::new(client, settings)),
        Arc::new(LocalDir::new(dir)),
    ))
    .with_publisher(Arc::new(published.clone()));
    Ok(Cluster {
        fake,
        launcher,
        published,
    })
}

/// A `context.uploaded` for a Node.js function (a Go one when `name` starts with `go-`), its
/// context in S3.
fn uploaded(name: &str) -> Result<Event> {
    let (mut spec, digest) = if name.starts_with("go-") {
        klambda_test_support::fixtures::inline_function(
            name,
            klambda_test_support::fixtures::runtime("go1.24")?,
            "Handler",
            &[
                ("go.mod", "module example.com/hello\n\ngo 1.24\n"),
                ("handler.go", "package hello\n"),
            ],
        )?
    } else {
        klambda_test_support::fixtures::node_function(name)?
    };
    spec.build.timeout_seconds = 600;
    let uri = format!("s3://klambda/contexts/{}.tar.gz", digest.hex());
    Ok(klambda_test_support::fixtures::context_uploaded(
        spec, digest, &uri,
    ))
}

async fn reply(cluster: &Cluster, event: Event) -> Result<Option<Event>> {
    Ok(match cluster.launcher.dispatch(event).await? {
        Outcome::Reply(reply) => Some(reply),
        Outcome::Done => None,
    })
}

/// Starts a build; returns its id and the Job as stored.
async fn launch(cluster: &Cluster, name: &str) -> Result<(BuildId, Value)> {
    let Some(started) = reply(cluster, uploaded(name)?).await? else {
        bail!("no build.started");
    };
    assert_eq!(started.ty(), BuildStarted::TYPE);
    let build_id = decode::<BuildStarted>(&started)?.build_id;
    let Some(job) = cluster
        .fake
        .kube
        .object("batch", "jobs", BUILDS, &job_name(&build_id))
    else {
        bail!("no Job {}", job_name(&build_id));
    };
    Ok((build_id, job))
}

/// The ApiServerSource event for `job` (Resource mode: the object is the data).
fn job_event(job: &Value, id: &str) -> Result<Event> {
    jobs::job_event(job, id, klambda_events::external::APISERVER_RESOURCE_UPDATE)
}

/// A failure scenario: function name, the Job's failure, its pod, its log, the expected cause.
type Case<'a> = (
    &'a str,
    Option<(&'a str, &'a str)>,
    Box<dyn Fn(&Value) -> Value>,
    &'a str,
    BuildFailureCause,
);

const DIGEST: &str = "sha256:9b2a0c1e5d7f3a8b6c4e2d1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b";

#[tokio::test]
async fn a_context_becomes_one_strictly_valid_kaniko_job_and_a_replay_finds_it() -> Result<()> {
    let cluster = cluster("launch").await?;
    let (build_id, job) = launch(&cluster, "hello").await?;
    let spec = &job["spec"];
    assert_eq!(spec["backoffLimit"], 0);
    assert_eq!(spec["activeDeadlineSeconds"], 600);
    assert_eq!(spec["ttlSecondsAfterFinished"], 3600);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "klambda-builder");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["restartPolicy"], "Never");
    let args: Vec<&str> = pod["containers"][0]["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let digest = job["metadata"]["annotations"]["lambda.knative.dev/digest"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("sha256:")
        .to_owned();
    assert!(
        args.contains(&format!("--context=s3://klambda/contexts/{digest}.tar.gz").as_str()),
        "{args:?}"
    );
    assert!(
        args.contains(
            &format!("--destination=registry.example.com/functions/hello:{digest}").as_str()
        ),
        "{args:?}"
    );
    assert!(args.contains(&"--digest-file=/dev/termination-log"));
    assert!(
        args.contains(&"--cache=true") && args.contains(&"--cache-repo=registry.example.com/cache")
    );
    assert_eq!(
        job["metadata"]["labels"]["lambda.knative.dev/build-id"],
        build_id.as_str()
    );

    // A compiled runtime's build is the same Job (the Dockerfile in its context differs),
    // as strictly valid: the fake API checks every create against the schemas.
    let (go_build, go_job) = launch(&cluster, "go-hello").await?;
    assert_eq!(
        go_job["metadata"]["labels"]["lambda.knative.dev/build-id"],
        go_build.as_str()
    );
    assert_eq!(go_job["spec"]["template"]["spec"]["restartPolicy"], "Never");

    // A replay: the same answer, still one Job (the second create met AlreadyExists).
    let (again, _) = launch(&cluster, "hello").await?;
    assert_eq!(again, build_id);
    assert_eq!(cluster.fake.kube.objects("batch", "jobs", BUILDS).len(), 2);
    let creates: Vec<u16> = cluster
        .fake
        .kube
        .requests()
        .iter()
        .filter(|r| r.verb == "create")
        .map(|r| r.status)
        .collect();
    assert_eq!(creates, [201, 201, 409]);
    // Counted where it happens: one per build started, though hello was launched twice.
    let metrics = cluster.launcher.metrics().encode();
    assert!(
        metrics.contains(r#"klambda_effects_total{stage="job-launcher",effect="build_started"} 2"#),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn cancel_deletes_the_job_in_the_foreground_and_reports_it() -> Result<()> {
    let cluster = cluster("cancel").await?;
    let (build_id, _) = launch(&cluster, "hello").await?;
    let cancel = Envelope::new("c-1", "/tests")
        .subject("hello")
        .encode::<BuildCancel>(&CancelRequest {
            function: FunctionName::new("hello")?,
            build_id: None,
            reason: Some("superseded".into()),
            extra: Default::default(),
        });
    // The cancellation is the outcome, so it is the reply (never best-effort progress).
    let answered = reply(&cluster, cancel)
        .await?
        .ok_or_else(|| anyhow::anyhow!("build.cancel was not answered"))?;
    assert!(
        cluster
            .fake
            .kube
            .objects("batch", "jobs", BUILDS)
            .is_empty()
    );
    let delete = cluster
        .fake
        .kube
        .requests()
        .into_iter()
        .find(|r| r.verb == "delete")
        .ok_or_else(|| anyhow::anyhow!("no delete"))?;
    assert_eq!(delete.name.as_deref(), Some(job_name(&build_id).as_str()));
    assert!(
        delete
            .detail
            .contains("\"propagationPolicy\":\"Foreground\""),
        "{}",
        delete.detail
    );
    assert!(cluster.published.events().is_empty(), "nothing best-effort");
    assert_eq!(answered.ty(), BuildCancelled::TYPE);
    let ended = decode::<BuildCancelled>(&answered)?;
    assert_eq!(ended.build_id, build_id);
    assert_eq!(ended.reason, "cancelled by request: superseded");
    Ok(())
}

/// Launches a build, puts the finished Job and its pod, sends the Job event twice; returns the
/// (identical) answers.
async fn finish(
    cluster: &Cluster,
    name: &str,
    failed: Option<(&str, &str)>,
    pod_of: impl Fn(&Value) -> Value,
    log: &str,
) -> Result<Event> {
    let (_, job) = launch(cluster, name).await?;
    let done = finished(&job, failed);
    cluster.fake.kube.put("batch", "jobs", done.clone());
    let pod = pod_of(&job);
    let pod_name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    cluster.fake.kube.put("", "pods", pod);
    cluster.fake.kube.set_log(&pod_name, log);
    // While running, a Job event is no outcome.
    assert!(reply(cluster, job_event(&job, "running")?).await?.is_none());
    let Some(first) = reply(cluster, job_event(&done, "update-1")?).await? else {
        bail!("no outcome for a finished Job");
    };
    let relisted = jobs::job_event(
        &done,
        "add-1",
        klambda_events::external::APISERVER_RESOURCE_ADD,
    )?;
    let Some(second) = reply(cluster, relisted).await? else {
        bail!("no outcome for the repeated update");
    };
    assert_eq!(
        first.id(),
        second.id(),
        "repeated Job updates must give the same event"
    );
    assert_eq!(first, second);
    Ok(first)
}

#[tokio::test]
async fn a_completed_job_answers_the_image_pinned_by_the_digest_kaniko_pushed() -> Result<()> {
    let cluster = cluster("completed").await?;
    let event = finish(
        &cluster,
        "hello",
        None,
        |job| pod(job, "Succeeded", terminated(0, "Completed", DIGEST), None),
        "INFO Pushed registry.example.com/functions/hello",
    )
    .await?;
    assert_eq!(event.ty(), BuildCompleted::TYPE);
    let built = decode::<BuildCompleted>(&event)?;
    assert_eq!(
        built.image,
        format!("registry.example.com/functions/hello@{DIGEST}")
    );
    assert!(!built.cached);
    // The answer continues the build that context.uploaded started: same subject, traced id.
    assert_eq!(event.subject(), Some("hello"));
    // Answered for each of the Job's repeated events, counted once, timed from the Job.
    let metrics = cluster.launcher.metrics().encode();
    assert!(
        metrics.contains(
            r#"klambda_build_outcomes_total{runtime="nodejs20",outcome="completed",cause="none"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"klambda_build_duration_seconds_sum{runtime="nodejs20",outcome="completed"} 125.0"#
        ),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn every_failure_is_classified_from_the_pod_and_its_log() -> Result<()> {
    let cluster = cluster("failures").await?;
    let backoff = Some((
        "BackoffLimitExceeded",
        "Job has reached the specified backoff limit",
    ));
    let deadline = Some((
        "DeadlineExceeded",
        "Job was active longer than specified deadline",
    ));
    let waiting =
        |reason: &str, message: &str| json!({"waiting": {"reason": reason, "message": message}});
    let cases: Vec<Case> = vec![
        (
            "oom",
            backoff,
            Box::new(|j: &Value| pod(j, "Failed", terminated(137, "OOMKilled", ""), None)),
            "INFO Unpacking rootfs",
            BuildFailureCause::OutOfMemory,
        ),
        (
            "compile",
            backoff,
            Box::new(|j: &Value| pod(j, "Failed", terminated(1, "Error", ""), None)),
            "RUN node --check index.js\n/workspace/index.js:3\nSyntaxError: Unexpected token ';'\nerror building image: error building stage: failed to execute command: waiting for process to exit: exit status 1",
            BuildFailureCause::CompileError,
        ),
        (
            "gocompile",
            backoff,
            Box::new(|j: &Value| pod(j, "Failed", terminated(1, "Error", ""), None)),
            "RUN [\"sh\",\"/var/runtime/build.sh\"]\ngo: downloading example.com/dep v1.0.0\n# example.com/gocompile\n./handler.go:13:15: undefined: errr\nerror building image: error building stage: failed to execute command: waiting for process to exit: exit status 1",
            BuildFailureCause::CompileError,
        ),
        (
            "deps",
            backoff,
            Box::new(|j: &Value| pod(j, "Failed", terminated(1, "Error", ""), None)),
            "RUN npm ci --omit=dev\nnpm ERR! code E404\nnpm ERR! 404 Not Found - GET https://registry.npmjs.org/left-padd",
            BuildFailureCause::DependencyResolution,
        ),
        (
            "auth",
            backoff,
            Box::new(|j: &Value| pod(j, "Failed", terminated(1, "Error", ""), None)),
            "error checking push permissions -- make sure you entered the correct tag name, and that you are authenticated correctly, and try again: checking push permission for \"registry.example.com/functions/auth\": POST https://registry.example.com/v2/functions/auth/blobs/uploads/: UNAUTHORIZED: authentication required",
            BuildFailureCause::RegistryAuth,
        ),
        (
            "pull",
            deadline,
            Box::new(move |j: &Value| {
                pod(
                    j,
                    "Pending",
                    waiting(
                        "ImagePullBackOff",
                        "Back-off pulling image \"cgr.dev/chainguard/kaniko:latest\"",
                    ),
                    None,
                )
            }),
            "",
            BuildFailureCause::ImagePull,
        ),
        (
            "unschedulable",
            deadline,
            Box::new(|j: &Value| {
                pod(
                    j,
                    "Pending",
                    json!({}),
                    Some(
                        "0/3 nodes are available: 3 Insufficient memory. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.",
                    ),
                )
            }),
            "",
            BuildFailureCause::Unschedulable,
        ),
    ];
    for (name, failed, pod_of, log, cause) in cases {
        let event = finish(&cluster, name, failed, pod_of, log).await?;
        assert_eq!(event.ty(), BuildFailed::TYPE, "{name}");
        let failure = decode::<BuildFailed>(&event)?;
        assert_eq!(failure.cause, cause, "{name}: {}", failure.reason);
        // Where the compiler said the code is wrong, read from Kaniko's log.
        if name == "gocompile" {
            let first = failure.diagnostics.first().map(ToString::to_string);
            assert_eq!(
                first.as_deref(),
                Some("handler.go:13:15: undefined: errr"),
                "{:?}",
                failure.diagnostics
            );
        }
        if !log.is_empty() {
            let excerpt = failure.log_excerpt.unwrap_or_default();
            assert!(
                excerpt.contains(log.lines().last().unwrap_or_default()),
                "{name}: {excerpt}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_job_past_its_deadline_is_a_timeout() -> Result<()> {
    let cluster = cluster("timeout").await?;
    let event = finish(
        &cluster,
        "slow",
        Some((
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        )),
        |job| pod(job, "Failed", terminated(137, "Error", ""), None),
        "INFO Taking snapshot of full filesystem...",
    )
    .await?;
    assert_eq!(event.ty(), BuildTimeout::TYPE);
    assert_eq!(decode::<BuildTimeout>(&event)?.deadline_seconds, 600);
    Ok(())
}

#[tokio::test]
async fn the_role_grants_exactly_what_the_code_uses() -> Result<()> {
    // Every path: launch, replay, outcome (pods, log), cancel by function (list), by id.
    let cluster = cluster("rbac").await?;
    finish(
        &cluster,
        "used",
        Some((
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        )),
        |job| pod(job, "Failed", terminated(1, "Error", ""), None),
        "npm ERR! 404",
    )
    .await?;
    launch(&cluster, "used").await?;
    let cancel = Envelope::new("c-2", "/tests")
        .subject("used")
        .encode::<BuildCancel>(&CancelRequest {
            function: FunctionName::new("used")?,
            build_id: None,
            reason: None,
            extra: Default::default(),
        });
    reply(&cluster, cancel).await?;
    let requests = cluster.fake.kube.requests();
    assert!(requests.iter().all(|r| r.status != 403), "{requests:#?}");
    let used = cluster.fake.kube.used();
    let granted = cluster
        .fake
        .kube
        .granted(&service_account("knative-lambda", "job-launcher"));
    assert_eq!(
        used, granted,
        "deploy/rbac/job-launcher.yaml must grant exactly what job-launcher uses (left: used, right: granted)"
    );
    Ok(())
}

#[tokio::test]
async fn a_role_without_a_verb_makes_the_stage_answer_503_and_keep_the_event() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("klambda-kube-narrow-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let narrow = dir.join("rbac.yaml");
    std::fs::write(
        &narrow,
        std::fs::read_to_string(repo::root().join("deploy/rbac/job-launcher.yaml"))?.replace(
            r#"verbs: ["create", "delete", "list"]"#,
            r#"verbs: ["delete", "list"]"#,
        ),
    )?;
    let fake = FakeKube::new(&[narrow])?.serve().await?;
    let mut config = kube::Config::new(fake.url().parse()?);
    config.auth_info.impersonate = Some(service_account("knative-lambda", "job-launcher"));
    let launcher = Harness::new(JobLauncher::new(
        Arc::new(KanikoJobs::new(
            kube::Client::try_from(config)?,
            KanikoSettings::default(),
        )),
        Arc::new(LocalDir::new(dir.join("store"))),
    ));
    let error = match launcher.dispatch(uploaded("hello")?).await {
        Err(error) => error,
        Ok(outcome) => bail!("a forbidden create succeeded: {outcome:?}"),
    };
    assert_eq!(error.status(), 503, "{error}");
    assert!(error.to_string().contains("forbidden"), "{error}");
    assert_eq!(fake.kube.requests()[0].status, 403);
    Ok(())
}
