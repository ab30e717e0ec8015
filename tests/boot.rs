//! Every binary boots as it is deployed: for each Knative Service that `deploy/` installs, the
//! real binary (the container's name) is started with that container's environment, resolved
//! the way the kubelet resolves it (ConfigMap values from `envFrom`, Secrets given test values,
//! volume mounts mapped onto temporary directories), with only what is cluster-specific pointed
//! at local stand-ins: the broker ingress (`K_SINK`) at a recording sink, the S3 endpoint at
//! `s3s-fs`, the database Secret at the real PostgreSQL, the pod's ServiceAccount at the fake
//! Kubernetes API (through `KUBECONFIG`, acting as the pod's ServiceAccount under the Roles of
//! `deploy/rbac/`). Each must answer `/health` and `/ready`, handle a first event, write
//! nothing in its working directory (the pods' root filesystem is read-only) and stop on
//! SIGTERM.
//!
//! The first events chain through the stages as the broker would carry them: a submission to
//! the parser, its reply to the context-uploader, that reply to the job-launcher (a Kaniko Job
//! in the fake API), a `build.completed` to the service-deployer (a Knative Service in the fake
//! API), every event to the status reporter, and a Buildkite delivery to the webhook gateway.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use bytes::Bytes;
use cloudevents::{AttributesReader as _, Event};
use http::HeaderMap;
use klambda_events::catalogue::{BuildCompleted, ContextUploaded, ServiceReady};
use klambda_events::data::{BuiltImage, ServiceReadiness};
use klambda_events::{BuildId, Envelope, EventType as _, decode};
use klambda_harness::codec;
use klambda_test_support::fixtures::EVENT_KEY;
use klambda_test_support::http::{Reply, TestServer, get, get_with, post};
use klambda_test_support::images::{self, podman};
use klambda_test_support::jobs;
use klambda_test_support::kubernetes::{FakeKube, service_account};
use klambda_test_support::manifests::render;
use klambda_test_support::process::{free_port, terminate, wait_healthy};
use klambda_test_support::repo;
use klambda_test_support::s3::{self, S3Server};
use klambda_tests::deliver;
use serde_json::Value;

/// The image digest the fake Kaniko build pushed (its termination message).
const KANIKO_DIGEST: &str =
    "sha256:5f0c1e9d7b3a2c4e6f8a0b1d3c5e7f9a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e";

/// What stands in for the cluster around the binaries.
struct Stand {
    s3: S3Server,
    kube: klambda_test_support::kubernetes::Served,
    sink: TestServer,
    received: Arc<Mutex<Vec<Event>>>,
    scratch: PathBuf,
}

/// How a Knative Service's container is started.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// The workspace's binary named like the container, on this machine.
    Binary,
    /// The platform's image of that binary (`scripts/images`: `localhost/knative-lambda/<name>:built`),
    /// run by podman as the kubelet would run it: the manifest's user, read-only root, no
    /// capabilities, its memory limit, its volumes; the host's network stands for the cluster's.
    Image,
}

/// A Knative Service of `deploy/`, started as its pod would start it.
struct Booted {
    name: String,
    /// The process: the binary itself, or `podman run` attached to the container.
    child: Child,
    /// The container's name, when started as an image.
    container: Option<String>,
    url: String,
    cwd: PathBuf,
}

impl Booted {
    /// Kills the stage at once, as a node's failure would.
    fn kill(&mut self) -> Result<()> {
        self.remove_container();
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Kills and removes the container at once, when started as an image (its `podman run`
    /// then ends; a container outlives a killed `podman run`).
    fn remove_container(&self) {
        if let Some(container) = &self.container {
            let _ = podman()
                .args(["rm", "--force", "--time", "0", container])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A test that fails part-way leaves no stage running: a container outlives its `podman run`.
impl Drop for Booted {
    fn drop(&mut self) {
        self.remove_container();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The rendered Knative Services of `deploy/`, with the objects they refer to.
fn deployed() -> Result<(Vec<Value>, Vec<Value>)> {
    let objects = render(&repo::root().join("deploy"))?;
    let services = objects
        .iter()
        .filter(|o| {
            o["kind"] == "Service" && o["apiVersion"].as_str() == Some("serving.knative.dev/v1")
        })
        .cloned()
        .collect();
    Ok((services, objects))
}

/// Test values for the Secrets the manifests reference (never in the manifests themselves).
fn secret(name: &str, key: &str) -> Option<String> {
    let database = std::env::var("KLAMBDA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    Some(match (name, key) {
        ("klambda-status-db", "url") => database,
        ("klambda-store-credentials", "AWS_ACCESS_KEY_ID") => s3::ACCESS_KEY.to_owned(),
        ("klambda-store-credentials", "AWS_SECRET_ACCESS_KEY") => s3::SECRET_KEY.to_owned(),
        ("klambda-webhook-secrets", "buildkite-token") => BUILDKITE_TOKEN.to_owned(),
        ("klambda-webhook-secrets", "github-secret") => "boot-github-secret".to_owned(),
        ("klambda-event-keys", "keys") => EVENT_KEY.to_owned(),
        ("klambda-api-token", "token") => API_TOKEN.to_owned(),
        _ => return None,
    })
}

const BUILDKITE_TOKEN: &str = "boot-buildkite-token";
const API_TOKEN: &str = "boot-api-token";

/// The container's environment as the kubelet gives it, then cluster addresses swapped for the
/// stand-ins. Fails on a reference nothing here can resolve, so a new Secret or ConfigMap in a
/// manifest is noticed.
fn environment(
    stand: &Stand,
    service: &Value,
    objects: &[Value],
    port: u16,
    start: Start,
) -> Result<BTreeMap<String, String>> {
    let pod = &service["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let namespace = service["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default();
    let mut env = BTreeMap::new();
    for source in container["envFrom"].as_array().into_iter().flatten() {
        let name = source["configMapRef"]["name"]
            .as_str()
            .context("envFrom: only configMapRef is resolved here")?;
        let map = objects
            .iter()
            .find(|o| {
                o["kind"] == "ConfigMap"
                    && o["metadata"]["name"] == name
                    && o["metadata"]["namespace"] == namespace
            })
            .with_context(|| format!("ConfigMap {name} is not in deploy/"))?;
        for (key, value) in map["data"].as_object().into_iter().flatten() {
            env.insert(key.clone(), value.as_str().unwrap_or_default().to_owned());
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let key = var["name"].as_str().unwrap_or_default().to_owned();
        if let Some(value) = var["value"].as_str() {
            env.insert(key, value.to_owned());
        } else if let Some(reference) = var["valueFrom"]["secretKeyRef"].as_object() {
            let name = reference["name"].as_str().unwrap_or_default();
            let secret_key = reference["key"].as_str().unwrap_or_default();
            match secret(name, secret_key) {
                Some(value) => {
                    env.insert(key, value);
                }
                None if reference.get("optional") == Some(&Value::Bool(true)) => {}
                None => bail!(
                    "{key}: Secret {name} key {secret_key} has no test value; add one to tests/boot.rs"
                ),
            }
        } else {
            bail!("{key}: only value and secretKeyRef are resolved here");
        }
    }
    // Volume mounts become directories of their own; a container has them at their path.
    for mount in container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|_| start == Start::Binary)
    {
        let path = mount["mountPath"].as_str().unwrap_or_default();
        let local = stand
            .scratch
            .join(format!("volume-{}", mount["name"].as_str().unwrap_or("v")));
        std::fs::create_dir_all(&local)?;
        for value in env.values_mut() {
            if let Some(rest) = value.strip_prefix(path) {
                *value = format!("{}{rest}", local.display());
            }
        }
    }
    // What Knative injects, and the cluster's addresses swapped for the stand-ins.
    env.insert("PORT".into(), port.to_string());
    env.insert("KLAMBDA_LOG_FORMAT".into(), "json".into());
    for (key, value) in [
        ("K_SINK", stand.sink.url("/")),
        ("KLAMBDA_S3_ENDPOINT", stand.s3.endpoint.clone()),
    ] {
        if env.contains_key(key) {
            env.insert(key.into(), value);
        }
    }
    let account = pod["serviceAccountName"].as_str().unwrap_or("default");
    env.insert(
        "KUBECONFIG".into(),
        kubeconfig(stand, namespace, account)?.display().to_string(),
    );
    Ok(env)
}

/// A kubeconfig that reaches the fake API as `namespace/account`, as the pod's mounted token
/// would.
fn kubeconfig(stand: &Stand, namespace: &str, account: &str) -> Result<PathBuf> {
    let path = stand
        .scratch
        .join(format!("kubeconfig-{namespace}-{account}"));
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": stand.kube.url()}}],
        "users": [{"name": "pod", "user": {"as": service_account(namespace, account)}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "pod"}}],
    });
    std::fs::write(&path, serde_json::to_vec(&config)?)?;
    Ok(path)
}

async fn boot(stand: &Stand, service: &Value, objects: &[Value], start: Start) -> Result<Booted> {
    let name = service["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let container = service["spec"]["template"]["spec"]["containers"][0]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let port = free_port()?;
    let started = std::time::Instant::now();
    let env = environment(stand, service, objects, port, start)?;
    let cwd = stand.scratch.join(format!("cwd-{name}"));
    std::fs::create_dir_all(&cwd)?;
    let log = std::fs::File::create(stand.scratch.join(format!("{name}.log")))?;
    let (mut command, container_name) = match start {
        Start::Binary => {
            let mut command = Command::new(klambda_tests::workspace_binary(&container)?);
            command
                .env_clear()
                .envs(&env)
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .current_dir(&cwd);
            (command, None)
        }
        Start::Image => {
            // Unique per start: a stage started again never shares a name with the one before.
            static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let container_name = format!("klambda-boot-{name}-{}-{n}", std::process::id());
            let command = podman_run(stand, service, &env, &container_name, &container)?;
            (command, Some(container_name))
        }
    };
    let mut child = command
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {container}"))?;
    let url = format!("http://127.0.0.1:{port}");
    wait_healthy(
        &format!("{url}/health"),
        &mut child,
        Duration::from_secs(20),
    )
    .await
    .with_context(|| format!("{name} did not boot; its log: {}", log_of(stand, &name)))?;
    let booted_in = started.elapsed();
    let ready = get(&format!("{url}/ready")).await?;
    ensure!(
        ready.status == 200,
        "{name}: /ready answered {} {:?}; log: {}",
        ready.status,
        ready.body,
        log_of(stand, &name)
    );
    if container_name.is_some() {
        // A row of scripts/bench-images' table (a figure, not a check).
        println!(
            "| {name} | {} MiB | {} ms |",
            image_size_mib(&container)?,
            booted_in.as_millis()
        );
    }
    Ok(Booted {
        name,
        child,
        container: container_name,
        url,
        cwd,
    })
}

/// `podman run` of the platform's image for `binary` as the Knative Service `service` runs it:
/// the pod's securityContext (the image's non-root user, read-only root, no capabilities, no
/// privilege escalation), the container's memory limit, an emptyDir for each volume mount.
/// The host's network stands for the cluster's: the stand-ins listen on loopback.
fn podman_run(
    stand: &Stand,
    service: &Value,
    env: &BTreeMap<String, String>,
    name: &str,
    binary: &str,
) -> Result<Command> {
    let image = images::built(binary)?;
    let container = &service["spec"]["template"]["spec"]["containers"][0];
    let security = &container["securityContext"];
    ensure!(
        security["runAsNonRoot"] == true
            && security["readOnlyRootFilesystem"] == true
            && security["allowPrivilegeEscalation"] == false,
        "{binary}: the manifest's securityContext is not the one this test reproduces: {security}"
    );
    let mut command = podman();
    command.args([
        "run",
        "--rm",
        "--name",
        name,
        "--network",
        "host",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
    ]);
    if let Some(limit) = container["resources"]["limits"]["memory"].as_str() {
        command.args(["--memory", &memory_bytes(limit)?.to_string()]);
    }
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let path = mount["mountPath"].as_str().unwrap_or_default();
        let local = stand.scratch.join(format!(
            "volume-{}-{name}",
            mount["name"].as_str().unwrap_or("v")
        ));
        std::fs::create_dir_all(&local)?;
        // An emptyDir is writable by the pod's user, whoever it is.
        std::fs::set_permissions(&local, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
        command.args(["--volume", &format!("{}:{path}", local.display())]);
    }
    // The kubeconfigs (the pod's mounted ServiceAccount token, here) are files in the scratch
    // directory, read where the environment names them.
    command.args(["--volume", &format!("{0}:{0}:ro", stand.scratch.display())]);
    for (key, value) in env {
        command.args(["--env", &format!("{key}={value}")]);
    }
    command.arg(&image);
    Ok(command)
}

/// A Kubernetes memory quantity (`128Mi`, `1Gi`, `500M`) in bytes.
fn memory_bytes(quantity: &str) -> Result<u64> {
    let split = quantity
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(quantity.len());
    let (number, unit) = quantity.split_at(split);
    let number: u64 = number
        .parse()
        .with_context(|| format!("memory {quantity}"))?;
    let scale = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => bail!("memory {quantity}: unit {unit} is not read here"),
    };
    Ok(number * scale)
}

/// The size of the image `binary` runs, in MiB.
fn image_size_mib(binary: &str) -> Result<String> {
    let bytes: f64 = images::inspect(&images::reference(binary), "{{.Size}}")?
        .parse()
        .with_context(|| format!("the size of {binary}'s image"))?;
    Ok(format!("{:.1}", bytes / 1_048_576.0))
}

fn log_of(stand: &Stand, name: &str) -> String {
    std::fs::read_to_string(stand.scratch.join(format!("{name}.log"))).unwrap_or_default()
}

/// The reply event of a stage's answer; fails unless it is a 200 carrying `expected`.
fn reply_of(stage: &Booted, reply: &Reply, expected: &str) -> Result<Event> {
    ensure!(
        reply.status == 200,
        "{}: answered {} {:?}",
        stage.name,
        reply.status,
        reply.body
    );
    let event = codec::decode(&reply.headers, reply.body.clone())
        .map_err(|e| anyhow::anyhow!("{}: the reply is not a CloudEvent: {e:?}", stage.name))?;
    ensure!(
        event.ty() == expected,
        "{}: replied {} where {expected} was expected: {:?}",
        stage.name,
        event.ty(),
        reply.body
    );
    Ok(event)
}

/// The stand-ins of one journey; `label` keeps two journeys of one run apart.
async fn stand(label: &str) -> Result<Stand> {
    let scratch = std::env::temp_dir().join(format!("klambda-boot-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let s3 = S3Server::start(&format!("boot-{label}")).await?;
    let rbac: Vec<PathBuf> = ["job-launcher", "service-deployer", "sources"]
        .iter()
        .map(|f| repo::root().join(format!("deploy/rbac/{f}.yaml")))
        .collect();
    let kube = FakeKube::new(&rbac)?.serve().await?;
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = {
        let received = Arc::clone(&received);
        TestServer::start(axum::Router::new().route(
            "/",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let received = Arc::clone(&received);
                async move {
                    match codec::decode(&headers, body) {
                        Ok(event) => {
                            if let Ok(mut events) = received.lock() {
                                events.push(event);
                            }
                            http::StatusCode::ACCEPTED
                        }
                        Err(_) => http::StatusCode::BAD_REQUEST,
                    }
                }
            }),
        ))
        .await?
    };
    Ok(Stand {
        s3,
        kube,
        sink,
        received,
        scratch,
    })
}

/// The object `name` (of `(group, resource)`) a stage applied in the namespace the ConfigMap
/// `config` names under `namespace_key`; fails when there is none.
fn applied(
    stand: &Stand,
    config: &serde_json::Value,
    namespace_key: &str,
    (group, resource): (&str, &str),
    name: &str,
) -> Result<Value> {
    let namespace = config["data"][namespace_key].as_str().unwrap_or_default();
    stand
        .kube
        .kube
        .object(group, resource, namespace, name)
        .with_context(|| {
            format!(
                "no {resource} {name} in {namespace}: {:?}",
                stand.kube.kube.objects(group, resource, namespace)
            )
        })
}

#[tokio::test]
async fn every_deployed_binary_boots_with_its_manifests_environment_and_handles_a_first_event()
-> Result<()> {
    journey(Start::Binary).await
}

/// The same journey on the platform's images (issue 20): what a cluster would pull, started
/// with the manifests' environment, user, read-only root and memory limits.
#[tokio::test]
async fn every_platform_image_boots_with_its_manifests_environment_and_handles_a_first_event()
-> Result<()> {
    journey(Start::Image).await
}

/// Boots every Knative Service of `deploy/` as `start` says, then carries first events through
/// them as the broker would.
async fn journey(start: Start) -> Result<()> {
    let label = match start {
        Start::Binary => "binary",
        Start::Image => "image",
    };
    let stand = stand(label).await?;
    let (services, objects) = deployed()?;
    let mut names: Vec<&str> = services
        .iter()
        .filter_map(|s| s["metadata"]["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "context-uploader",
            "job-launcher",
            "parser",
            "service-deployer",
            "status-reporter",
            "webhook-gateway"
        ],
        "deploy/ installs a Knative Service this test does not know how to feed"
    );
    // The bucket KLAMBDA_STORE names exists, as docs/INSTALL.md asks.
    let config = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "klambda-config")
        .context("klambda-config")?;
    let bucket = config["data"]["KLAMBDA_STORE"]
        .as_str()
        .and_then(|s| s.strip_prefix("s3://"))
        .context("KLAMBDA_STORE is not s3://bucket")?;
    stand.s3.bucket(bucket)?;

    let mut booted = BTreeMap::new();
    for service in &services {
        let stage = boot(&stand, service, &objects, start).await?;
        booted.insert(stage.name.clone(), stage);
    }
    let stage = |name: &str| booted.get(name).context("not booted");
    // Unique per run: the status reporter's PostgreSQL outlives runs and dedupes on source + id,
    // and every reply id derives from the submission's.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let function = format!("boot-{label}-{run}");
    let mut seen = Vec::new();

    // parser: a submission.
    let parser = stage("parser")?;
    let submission = serde_json::json!({
        "name": function, "runtime": "python3.12", "handler": "app.handler",
        "source": {"kind": "inline", "files": [
            {"path": "app.py", "content": "def handler(event, context):\n    return event\n"}
        ]},
    });
    let created = post(
        &format!("{}/", parser.url),
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", &function),
            ("ce-source", "/tests/boot"),
            ("ce-type", klambda_events::catalogue::FunctionCreated::TYPE),
            ("content-type", "application/json"),
        ],
        submission.to_string(),
    )
    .await?;
    let parsed = reply_of(
        parser,
        &created,
        klambda_events::catalogue::ParserCompleted::TYPE,
    )?;
    seen.push(parsed.clone());

    // context-uploader: the parser's reply; the context lands in the bucket.
    let uploader = stage("context-uploader")?;
    let answer = deliver(&format!("{}/", uploader.url), &parsed).await?;
    let uploaded = reply_of(uploader, &answer, ContextUploaded::TYPE)?;
    seen.push(uploaded.clone());
    let context = decode::<ContextUploaded>(&uploaded)?;
    let key = format!("contexts/{}.tar.gz", context.digest.hex());
    ensure!(
        stand.s3.root.join(bucket).join(&key).is_file(),
        "{key} is not in the bucket"
    );

    // job-launcher: a Kaniko Job in the build namespace, created as its ServiceAccount.
    let launcher = stage("job-launcher")?;
    let answer = deliver(&format!("{}/", launcher.url), &uploaded).await?;
    seen.push(reply_of(
        launcher,
        &answer,
        klambda_events::catalogue::BuildStarted::TYPE,
    )?);
    let build_id = BuildId::derive(&context.spec.name, &context.digest);
    let job = applied(
        &stand,
        config,
        "KLAMBDA_BUILD_NAMESPACE",
        ("batch", "jobs"),
        &format!("klambda-{}", build_id.as_str()),
    )?;

    // A job-launcher killed while its Job runs loses no outcome: started again, it answers the
    // Job's end (the source's event, which the broker keeps for it meanwhile) from what the
    // first process recorded, as the reply to that context.uploaded.
    let launcher = booted.get_mut("job-launcher").context("not booted")?;
    launcher.kill()?;
    let service = services
        .iter()
        .find(|s| s["metadata"]["name"] == "job-launcher")
        .context("job-launcher")?;
    *launcher = boot(&stand, service, &objects, start).await?;
    let stage = |name: &str| booted.get(name).context("not booted");
    let done = jobs::finished(&job, None);
    stand.kube.kube.put("batch", "jobs", done.clone());
    stand.kube.kube.put(
        "",
        "pods",
        jobs::pod(
            &job,
            "Succeeded",
            jobs::terminated(0, "Completed", KANIKO_DIGEST),
            None,
        ),
    );
    let ended = jobs::job_event(
        &done,
        &format!("{function}-job-done"),
        klambda_events::external::APISERVER_RESOURCE_UPDATE,
    )?;
    let launcher = stage("job-launcher")?;
    let answer = deliver(&format!("{}/", launcher.url), &ended).await?;
    let completed = reply_of(launcher, &answer, BuildCompleted::TYPE)?;
    let image = decode::<BuildCompleted>(&completed)?.image;
    ensure!(
        image.ends_with(&format!("@{KANIKO_DIGEST}")),
        "the restarted job-launcher answered {image}"
    );
    seen.push(completed);

    // service-deployer: the build's image becomes a Knative Service and its Trigger.
    let deployer = stage("service-deployer")?;
    let built = Envelope::new(format!("{function}-built"), "/tests/boot")
        .subject(function.clone())
        .encode::<BuildCompleted>(&BuiltImage {
            spec: context.spec.clone(),
            digest: context.digest.clone(),
            build_id,
            image: format!(
                "registry.example.com/functions/{function}@sha256:{}",
                "0".repeat(64)
            ),
            cached: false,
        });
    // Only the platform may speak for the platform: unsigned, the service-deployer refuses it;
    // signed with the platform's key (as the job-launcher would), it deploys.
    let refused = deliver(&format!("{}/", deployer.url), &built).await?;
    ensure!(
        refused.status == 403,
        "service-deployer answered {} to an unsigned build.completed: {:?}",
        refused.status,
        refused.body
    );
    let mut built = built;
    klambda_harness::signing::EventKeys::parse(EVENT_KEY)?.sign(&mut built);
    seen.push(built.clone());
    let answer = deliver(&format!("{}/", deployer.url), &built).await?;
    ensure!(
        answer.status.is_success(),
        "service-deployer answered {} {:?}",
        answer.status,
        answer.body
    );
    applied(
        &stand,
        config,
        "KLAMBDA_FUNCTIONS_NAMESPACE",
        ("serving.knative.dev", "services"),
        &function,
    )?;

    // status-reporter: every event so far, into PostgreSQL; the function's status follows.
    let reporter = stage("status-reporter")?;
    let side_events = stand
        .received
        .lock()
        .map(|events| events.clone())
        .unwrap_or_default();
    for event in seen.iter().chain(&side_events) {
        let answer = deliver(&format!("{}/", reporter.url), event).await?;
        ensure!(
            answer.status.is_success(),
            "status-reporter answered {} to {}: {:?}",
            answer.status,
            event.ty(),
            answer.body
        );
    }
    // Its API asks for the token; the broker's deliveries above did not need it.
    let refused = get(&format!("{}/functions/{function}", reporter.url)).await?;
    ensure!(
        refused.status == 401,
        "status without the token: {refused:?}"
    );
    let status = get_with(
        &format!("{}/functions/{function}", reporter.url),
        &[("authorization", &format!("Bearer {API_TOKEN}"))],
    )
    .await?;
    ensure!(status.status == 200, "status: {status:?}");
    let status = status.json()?;
    ensure!(
        status["name"] == function.as_str() && status["phase"].is_string(),
        "{status}"
    );
    // It keeps any event in the CloudEvents JSON format, whatever its data (issue 24).
    klambda_test_support::event_format::conformance(
        &reporter.url,
        API_TOKEN,
        &format!("boot-{}", std::process::id()),
    )
    .await?;

    // The Lambda API on the status reporter's Service (issue 18).
    lambda_api_on_the_cluster(&stand, reporter, &function).await?;

    // webhook-gateway: a Buildkite delivery with the Secret's token reaches the sink.
    let gateway = stage("webhook-gateway")?;
    let before = stand.received.lock().map(|e| e.len()).unwrap_or_default();
    let delivery = post(
        &format!("{}/buildkite", gateway.url),
        &[
            ("content-type", "application/json"),
            ("x-buildkite-event", "ping"),
            ("x-buildkite-token", BUILDKITE_TOKEN),
        ],
        r#"{"event":"ping","service":{"id":"boot"},"organization":{"slug":"acme"}}"#,
    )
    .await?;
    ensure!(
        delivery.status.is_success(),
        "webhook-gateway answered {} {:?}",
        delivery.status,
        delivery.body
    );
    let after = stand.received.lock().map(|e| e.len()).unwrap_or_default();
    ensure!(
        after == before + 1,
        "the gateway published {} events",
        after - before
    );

    // Nothing written where the read-only root filesystem would refuse it; SIGTERM stops all.
    for (name, mut stage) in booted {
        let written: Vec<_> = std::fs::read_dir(&stage.cwd)?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        let exit = tokio::task::spawn_blocking(move || {
            terminate(&mut stage.child, Duration::from_secs(15))
        })
        .await??;
        ensure!(
            written.is_empty(),
            "{name} wrote {written:?} in its working directory"
        );
        ensure!(
            exit.success(),
            "{name} exited {exit:?} on SIGTERM; log: {}",
            log_of(&stand, &name)
        );
    }
    let _ = std::fs::remove_dir_all(&stand.scratch);
    Ok(())
}

/// The Lambda API of the status reporter's Service, driven by the real AWS CLI signed with the
/// API token: a synchronous invocation reaches the function at the URL its status records (a
/// real Node.js shim stands for its Knative Service), an `Event` invocation goes to the broker
/// (the recording sink) for the invocation Trigger, GetFunction reads the status, and an
/// unsigned request is refused as Lambda refuses it.
async fn lambda_api_on_the_cluster(stand: &Stand, reporter: &Booted, function: &str) -> Result<()> {
    let code = stand.scratch.join("lambda-function");
    std::fs::create_dir_all(&code)?;
    std::fs::write(
        code.join("index.js"),
        "exports.handler = async (event, context) => ({ hello: event.name, id: context.awsRequestId });\n",
    )?;
    let port = free_port()?;
    let mut shim = Command::new("node")
        .arg(repo::root().join("runtimes/nodejs/shim.js"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORT", port.to_string())
        .env("KLAMBDA_BIND", "127.0.0.1")
        .env("KLAMBDA_FUNCTION_ROOT", &code)
        .env("KLAMBDA_HANDLER", "index.handler")
        .env("KLAMBDA_FUNCTION_NAME", function)
        .stdout(Stdio::null())
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    let outcome = async {
        wait_healthy(&format!("{url}/health"), &mut shim, Duration::from_secs(10)).await?;
        let mut ready = Envelope::new(format!("{function}-ready"), "/tests/boot")
            .subject(function.to_owned())
            .encode::<ServiceReady>(&ServiceReadiness {
                function: klambda_events::FunctionName::new(function.to_owned())?,
                revision: format!("{function}-00001"),
                url: url.clone(),
                runtime: None,
            });
        klambda_harness::signing::EventKeys::parse(EVENT_KEY)?.sign(&mut ready);
        let answer = deliver(&format!("{}/", reporter.url), &ready).await?;
        ensure!(answer.status.is_success(), "service.ready: {answer:?}");

        // Off the runtime's thread: the recording sink answers the reporter meanwhile.
        let aws = |args: &[&str]| {
            let endpoint = reporter.url.clone();
            let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                klambda_test_support::aws::lambda(&endpoint, API_TOKEN, &args)
            })
        };
        let out = stand.scratch.join("lambda-response.json");
        let out_arg = out.display().to_string();
        let invoked = aws(&[
            "invoke",
            "--function-name",
            function,
            "--payload",
            r#"{"name":"ada"}"#,
            &out_arg,
        ])
        .await??;
        ensure!(invoked.status.success(), "aws lambda invoke: {invoked:?}");
        let printed: Value = serde_json::from_slice(&invoked.stdout)?;
        ensure!(
            printed["StatusCode"] == 200 && printed["ExecutedVersion"] == "1",
            "{printed}"
        );
        let reply: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
        ensure!(reply["hello"] == "ada", "{reply}");

        let before = stand.received.lock().map(|e| e.len()).unwrap_or_default();
        let queued = aws(&[
            "invoke",
            "--function-name",
            function,
            "--invocation-type",
            "Event",
            "--payload",
            r#"{"name":"later"}"#,
            &out_arg,
        ])
        .await??;
        ensure!(
            queued.status.success(),
            "aws lambda invoke --invocation-type Event: {queued:?}"
        );
        ensure!(
            serde_json::from_slice::<Value>(&queued.stdout)?["StatusCode"] == 202,
            "{queued:?}"
        );
        let sent: Vec<Event> = stand
            .received
            .lock()
            .map(|e| e[before..].to_vec())
            .unwrap_or_default();
        let invocation = sent
            .iter()
            .find(|e| e.ty() == klambda_events::external::INVOKE)
            .with_context(|| format!("no invocation reached the broker: {sent:?}"))?;
        ensure!(
            invocation
                .extension(klambda_events::external::INVOKE_FUNCTION_EXTENSION)
                .is_some_and(|f| f.to_string() == function),
            "{invocation}"
        );

        let got = aws(&["get-function", "--function-name", function]).await??;
        ensure!(got.status.success(), "aws lambda get-function: {got:?}");
        let got: Value = serde_json::from_slice(&got.stdout)?;
        ensure!(
            got["Configuration"]["FunctionName"] == function
                && got["Configuration"]["State"] == "Active",
            "{got}"
        );

        let unsigned = get(&format!("{}/2015-03-31/functions/", reporter.url)).await?;
        ensure!(
            unsigned.status == 403
                && unsigned.header("x-amzn-errortype") == "MissingAuthenticationTokenException",
            "unsigned: {unsigned:?}"
        );
        Ok(())
    }
    .await;
    let _ = shim.kill();
    let _ = shim.wait();
    outcome
}
