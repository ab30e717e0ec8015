//! The cluster builder: one Kaniko `batch/v1` Job per build, driven through the Kubernetes API.
//!
//! Unlike the local builder, nothing here waits for a build. job-launcher creates the Job and
//! answers `build.started`; the Job's status changes come back as ApiServerSource events
//! (`eventing/sources/build-jobs.yaml`), from which [`KanikoJobs::outcome`] reads how the build
//! ended: the pushed digest from the Kaniko container's termination message
//! (`--digest-file=/dev/termination-log`), or a classified cause from the pod's status and the
//! end of its log.
//!
//! The Job is named after the build id, so a replayed `context.uploaded` finds the Job that is
//! already there (`AlreadyExists` is success) instead of starting a second build.
//!
//! API calls, all in the build namespace, and nothing else (deploy/rbac/job-launcher.yaml grants
//! exactly these): `create` and `delete` jobs, `list` pods, `get` pods/log.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use klambda_events::data::BuildFailureCause;
use klambda_events::{BuildId, ContentDigest, FunctionName};
use kube::Api;
use kube::api::{DeleteParams, ListParams, LogParams, PostParams};
use serde_json::json;

use klambda_kube::KubeError;

use cloudevents::Event;
use tokio::sync::oneshot;

use crate::builder::{BoxFuture, BuildOutcome, BuildRequest, Builder, BuilderError, Ended, Launch};

/// Labels and annotations of build Jobs (besides [`klambda_kube::labels`]).
pub mod labels {
    pub use klambda_kube::labels::{COMPONENT, FUNCTION, MANAGED_BY, PLATFORM};
    /// The build id.
    pub const BUILD_ID: &str = "lambda.knative.dev/build-id";
    /// The runtime.
    pub const RUNTIME: &str = "lambda.knative.dev/runtime";
    /// Annotation: the content digest built.
    pub const DIGEST: &str = "lambda.knative.dev/digest";
    /// Annotation: the image pushed, without its digest.
    pub const DESTINATION: &str = "lambda.knative.dev/destination";
}

/// The container in the build pod.
const CONTAINER: &str = "kaniko";

/// Lines of build log carried in `build.failed`.
const LOG_LINES: i64 = 40;

/// How the cluster builder is configured (`KLAMBDA_KANIKO_*`, `KLAMBDA_REGISTRY`, …).
#[derive(Debug, Clone, PartialEq)]
pub struct KanikoSettings {
    /// Where build Jobs run.
    pub namespace: String,
    /// The Kaniko executor image. Upstream Kaniko is archived (2025); the default is Chainguard's
    /// maintained fork. Pin it by digest in production (`KLAMBDA_KANIKO_IMAGE`).
    pub image: String,
    /// Where images are pushed: `<registry>/<function>:<digest>`.
    pub registry: String,
    /// The layer cache repository (`--cache-repo`); `None` turns the cache off.
    pub cache_repo: Option<String>,
    /// The S3 endpoint Kaniko reads contexts from (`S3_ENDPOINT`), for S3-compatible stores.
    pub s3_endpoint: Option<String>,
    /// The S3 region.
    pub s3_region: String,
    /// The Secret holding `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` for the context store.
    pub s3_secret: String,
    /// The `kubernetes.io/dockerconfigjson` Secret Kaniko pushes with.
    pub registry_secret: String,
    /// The build pods' ServiceAccount (not `default`; no token mounted).
    pub service_account: String,
    /// How long a finished Job stays for inspection.
    pub ttl_seconds_after_finished: i32,
    /// CPU request and memory request/limit of the build container.
    pub cpu: String,
    /// Memory request and limit.
    pub memory: String,
}

impl Default for KanikoSettings {
    fn default() -> Self {
        Self {
            namespace: "knative-lambda-builds".to_owned(),
            image: "cgr.dev/chainguard/kaniko:latest".to_owned(),
            registry: "registry.knative-lambda.svc.cluster.local/functions".to_owned(),
            cache_repo: None,
            s3_endpoint: None,
            s3_region: "us-east-1".to_owned(),
            s3_secret: "klambda-build-store".to_owned(),
            registry_secret: "klambda-registry".to_owned(),
            service_account: "klambda-builder".to_owned(),
            ttl_seconds_after_finished: 3600,
            cpu: "1".to_owned(),
            memory: "2Gi".to_owned(),
        }
    }
}

impl KanikoSettings {
    /// The settings from the environment, each with its default:
    /// `KLAMBDA_BUILD_NAMESPACE`, `KLAMBDA_KANIKO_IMAGE`, `KLAMBDA_REGISTRY`,
    /// `KLAMBDA_CACHE_REPO` (unset: no layer cache), `KLAMBDA_S3_ENDPOINT`, `KLAMBDA_S3_REGION`,
    /// `KLAMBDA_BUILD_STORE_SECRET`, `KLAMBDA_REGISTRY_SECRET`, `KLAMBDA_BUILDER_SERVICE_ACCOUNT`,
    /// `KLAMBDA_BUILD_TTL_SECONDS`, `KLAMBDA_BUILD_CPU`, `KLAMBDA_BUILD_MEMORY`.
    /// A value that cannot be used is a problem naming the variable, never a silent default.
    pub fn from_config(config: &dyn klambda_harness::ConfigSource) -> Result<Self, Vec<String>> {
        let d = Self::default();
        let get = |key: &str| config.setting(key);
        let or = |key: &str, default: String| get(key).unwrap_or(default);
        let ttl = match get("KLAMBDA_BUILD_TTL_SECONDS") {
            None => Ok(d.ttl_seconds_after_finished),
            Some(v) => v.parse::<i32>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                vec![format!(
                    "KLAMBDA_BUILD_TTL_SECONDS={v:?}: must be a number of seconds (0 or more)"
                )]
            }),
        }?;
        Ok(Self {
            namespace: or("KLAMBDA_BUILD_NAMESPACE", d.namespace),
            image: or("KLAMBDA_KANIKO_IMAGE", d.image),
            registry: or("KLAMBDA_REGISTRY", d.registry),
            cache_repo: get("KLAMBDA_CACHE_REPO"),
            s3_endpoint: get("KLAMBDA_S3_ENDPOINT"),
            s3_region: or("KLAMBDA_S3_REGION", d.s3_region),
            s3_secret: or("KLAMBDA_BUILD_STORE_SECRET", d.s3_secret),
            registry_secret: or("KLAMBDA_REGISTRY_SECRET", d.registry_secret),
            service_account: or("KLAMBDA_BUILDER_SERVICE_ACCOUNT", d.service_account),
            ttl_seconds_after_finished: ttl,
            cpu: or("KLAMBDA_BUILD_CPU", d.cpu),
            memory: or("KLAMBDA_BUILD_MEMORY", d.memory),
        })
    }
}

/// Why a build Job could not be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The build context is not in S3: Kaniko reads contexts from S3 only.
    #[error("the build context {0} is not in S3; the cluster builder needs KLAMBDA_STORE=s3://…")]
    ContextNotInS3(String),
    /// The Job manifest did not form (a defect).
    #[error("the build Job manifest is invalid: {0}")]
    Manifest(String),
    /// The API refused or failed.
    #[error(transparent)]
    Api(#[from] KubeError),
}

/// Whether [`KanikoJobs::launch`] created the Job or found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launched {
    /// A new Job.
    Created,
    /// The Job was already there (a replay).
    Existing,
}

/// Build Jobs in one namespace.
#[derive(Clone)]
pub struct KanikoJobs {
    client: kube::Client,
    settings: KanikoSettings,
}

/// The Job name of a build.
pub fn job_name(build_id: &BuildId) -> String {
    format!("klambda-{}", build_id.as_str())
}

/// Where a function's images go, without tag or digest.
fn repository(settings: &KanikoSettings, function: &FunctionName) -> String {
    format!("{}/{}", settings.registry.trim_end_matches('/'), function)
}

impl KanikoJobs {
    /// Build Jobs through `client`.
    pub fn new(client: kube::Client, settings: KanikoSettings) -> Self {
        Self { client, settings }
    }

    /// The settings.
    pub fn settings(&self) -> &KanikoSettings {
        &self.settings
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    /// The Job for `request` (pure: what [`KanikoJobs::launch`] creates).
    pub fn job(&self, request: &BuildRequest) -> Result<Job, LaunchError> {
        let s = &self.settings;
        let uri = &request.context.uri;
        if !uri.starts_with("s3://") {
            return Err(LaunchError::ContextNotInS3(uri.clone()));
        }
        let repository = repository(s, &request.spec.name);
        let mut args = vec![
            format!("--context={uri}"),
            format!("--destination={repository}:{}", request.digest.hex()),
            "--digest-file=/dev/termination-log".to_owned(),
            "--dockerfile=Dockerfile".to_owned(),
        ];
        if let Some(cache) = &s.cache_repo {
            args.push("--cache=true".to_owned());
            args.push(format!("--cache-repo={cache}"));
        }
        let secret_key = |key: &str| json!({ "name": key, "valueFrom": { "secretKeyRef": { "name": s.s3_secret, "key": key } } });
        let mut env = vec![
            secret_key("AWS_ACCESS_KEY_ID"),
            secret_key("AWS_SECRET_ACCESS_KEY"),
            json!({ "name": "AWS_REGION", "value": s.s3_region }),
        ];
        if let Some(endpoint) = &s.s3_endpoint {
            env.push(json!({ "name": "S3_ENDPOINT", "value": endpoint }));
            env.push(json!({ "name": "S3_FORCE_PATH_STYLE", "value": "true" }));
        }
        let labels = json!({
            labels::MANAGED_BY: labels::PLATFORM,
            labels::COMPONENT: "build",
            labels::FUNCTION: request.spec.name.as_str(),
            labels::BUILD_ID: request.build_id.as_str(),
            labels::RUNTIME: request.spec.runtime.id(),
        });
        let job = json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": job_name(&request.build_id),
                "namespace": s.namespace,
                "labels": labels,
                "annotations": {
                    labels::DIGEST: request.digest.as_str(),
                    labels::DESTINATION: repository,
                },
            },
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": request.spec.build.timeout_seconds,
                "ttlSecondsAfterFinished": s.ttl_seconds_after_finished,
                "template": {
                    "metadata": { "labels": labels },
                    "spec": {
                        "restartPolicy": "Never",
                        "serviceAccountName": s.service_account,
                        "automountServiceAccountToken": false,
                        "containers": [{
                            "name": CONTAINER,
                            "image": s.image,
                            "args": args,
                            "env": env,
                            "terminationMessagePath": "/dev/termination-log",
                            "terminationMessagePolicy": "File",
                            "resources": {
                                "requests": { "cpu": s.cpu, "memory": s.memory },
                                "limits": { "memory": s.memory },
                            },
                            "volumeMounts": [{
                                "name": "registry-auth",
                                "mountPath": "/kaniko/.docker",
                                "readOnly": true,
                            }],
                        }],
                        "volumes": [{
                            "name": "registry-auth",
                            "secret": {
                                "secretName": s.registry_secret,
                                "items": [{ "key": ".dockerconfigjson", "path": "config.json" }],
                            },
                        }],
                    },
                },
            },
        });
        // Our own literal: it always has the shape of a Job.
        serde_json::from_value(job).map_err(|e| LaunchError::Manifest(e.to_string()))
    }

    /// Creates the build's Job; an existing one (a replay) is success.
    #[tracing::instrument(name = "builder", skip_all, fields(otel.name = "builder.launch", backend = "kubernetes"))]
    pub async fn launch(&self, request: &BuildRequest) -> Result<Launched, LaunchError> {
        let job = self.job(request)?;
        let action = format!("creating Job {}", job_name(&request.build_id));
        match self.jobs().create(&PostParams::default(), &job).await {
            Ok(_) => Ok(Launched::Created),
            Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(Launched::Existing),
            Err(error) => Err(LaunchError::Api(KubeError::of(action)(error))),
        }
    }

    /// Deletes the build's Job and, in the foreground, its pods; false when there was none.
    #[tracing::instrument(name = "builder", skip_all, fields(otel.name = "builder.cancel", backend = "kubernetes"))]
    pub async fn cancel(&self, build_id: &BuildId) -> Result<bool, KubeError> {
        let name = job_name(build_id);
        match self.jobs().delete(&name, &DeleteParams::foreground()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(false),
            Err(error) => Err(KubeError::of(format!("deleting Job {name}"))(error)),
        }
    }

    /// The builds (Jobs) of `function` that exist now.
    #[tracing::instrument(name = "builder", skip_all, fields(otel.name = "builder.list", backend = "kubernetes"))]
    pub async fn builds_of(&self, function: &FunctionName) -> Result<Vec<BuildId>, KubeError> {
        let selector = format!("{}={}", labels::FUNCTION, function.as_str());
        let jobs = self
            .jobs()
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(KubeError::of(format!(
                "listing the build Jobs of {function}"
            )))?;
        Ok(jobs.items.iter().filter_map(build_id_of).collect())
    }

    /// How the build of `job` ended, `None` while it runs. Reads the Job's pod (termination
    /// message, container state, scheduling) and, for failures, the end of its log.
    #[tracing::instrument(name = "builder", skip_all, fields(otel.name = "builder.outcome", backend = "kubernetes"))]
    pub async fn outcome(&self, job: &Job) -> Result<Option<BuildOutcome>, KubeError> {
        let Some(end) = job_end(job) else {
            return Ok(None);
        };
        let name = job.metadata.name.clone().unwrap_or_default();
        let pods = self
            .pods()
            .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={name}")))
            .await
            .map_err(KubeError::of(format!("listing the pods of Job {name}")))?
            .items;
        let log = match (&end, pods.first()) {
            (JobEnd::Failed { .. }, Some(pod)) => {
                let pod_name = pod.metadata.name.clone().unwrap_or_default();
                let params = LogParams {
                    container: Some(CONTAINER.to_owned()),
                    tail_lines: Some(LOG_LINES),
                    ..LogParams::default()
                };
                match self.pods().logs(&pod_name, &params).await {
                    Ok(log) => Some(log),
                    // A pod that never started has no log: the classification uses its status.
                    Err(kube::Error::Api(status))
                        if status.code == 400 || status.is_not_found() =>
                    {
                        None
                    }
                    Err(error) => {
                        return Err(KubeError::of(format!("reading the log of {pod_name}"))(
                            error,
                        ));
                    }
                }
            }
            _ => None,
        };
        Ok(Some(classify(job, end, &pods, log.as_deref())))
    }
}

impl Builder for KanikoJobs {
    fn backend(&self) -> &'static str {
        "kubernetes"
    }

    fn launch(
        &self,
        request: BuildRequest,
        _cancel: oneshot::Receiver<String>,
    ) -> BoxFuture<Result<Launch, BuilderError>> {
        let jobs = self.clone();
        Box::pin(async move {
            let launched = jobs.launch(&request).await.map_err(|e| match e {
                LaunchError::Api(e) => BuilderError::from(e),
                other => BuilderError::Unavailable(other.to_string()),
            })?;
            tracing::info!(build_id = %request.build_id, ?launched, "build Job launched");
            Ok(Launch::Running {
                started: launched == Launched::Created,
            })
        })
    }

    fn status_events(&self) -> &'static [&'static str] {
        &klambda_kube::APISERVER_EVENT_TYPES
    }

    fn ended(&self, event: &Event) -> Result<Option<BuildId>, BuilderError> {
        let job: Job = klambda_kube::object_of(event).map_err(BuilderError::Unreadable)?;
        // A running Job's updates cost nothing.
        Ok(build_id_of(&job).filter(|_| finished(&job)))
    }

    fn outcome(&self, event: Event) -> BoxFuture<Result<Option<Ended>, BuilderError>> {
        let jobs = self.clone();
        Box::pin(async move {
            let job: Job = klambda_kube::object_of(&event).map_err(BuilderError::Unreadable)?;
            let outcome = KanikoJobs::outcome(&jobs, &job).await?;
            Ok(outcome.map(|outcome| Ended {
                outcome,
                seconds: duration_of(&job),
            }))
        })
    }

    fn cancel(
        &self,
        function: FunctionName,
        build: Option<BuildId>,
    ) -> BoxFuture<Result<Vec<BuildId>, BuilderError>> {
        let jobs = self.clone();
        Box::pin(async move {
            let targets = match build {
                Some(id) => vec![id],
                None => jobs.builds_of(&function).await?,
            };
            let mut cancelled = Vec::new();
            for build_id in targets {
                if KanikoJobs::cancel(&jobs, &build_id).await? {
                    cancelled.push(build_id);
                }
            }
            Ok(cancelled)
        })
    }
}

/// How a Job finished, from its conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
enum JobEnd {
    Complete,
    DeadlineExceeded,
    Failed { reason: String, message: String },
}

/// Whether the Job finished (completed, failed or past its deadline).
pub fn finished(job: &Job) -> bool {
    job_end(job).is_some()
}

/// The Job's terminal condition, if it has one.
fn job_end(job: &Job) -> Option<JobEnd> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let holds = |ty: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == ty && c.status == "True")
    };
    if holds("Complete").is_some() {
        return Some(JobEnd::Complete);
    }
    let failed = holds("Failed")?;
    let reason = failed.reason.clone().unwrap_or_default();
    if reason == "DeadlineExceeded" {
        return Some(JobEnd::DeadlineExceeded);
    }
    Some(JobEnd::Failed {
        reason,
        message: failed.message.clone().unwrap_or_default(),
    })
}

/// The outcome of a finished Job, from its pods and log.
fn classify(job: &Job, end: JobEnd, pods: &[Pod], log: Option<&str>) -> BuildOutcome {
    let status = pods.first().and_then(|p| p.status.as_ref());
    let container = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == CONTAINER));
    let terminated = container
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    match end {
        JobEnd::Complete => {
            let destination = job
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(labels::DESTINATION))
                .cloned()
                .unwrap_or_default();
            let digest = terminated
                .and_then(|t| t.message.as_deref())
                .map(str::trim)
                .filter(|m| m.starts_with("sha256:") && m.len() == 71);
            match digest {
                Some(digest) => BuildOutcome::Completed {
                    image: format!("{destination}@{digest}"),
                },
                None => BuildOutcome::Failed {
                    cause: BuildFailureCause::Unknown,
                    reason: "the build Job completed but its pod reported no image digest"
                        .to_owned(),
                    log_excerpt: None,
                },
            }
        }
        JobEnd::DeadlineExceeded => match never_ran(container, status) {
            // A pod that never ran was not slow: it could not start, and that is the cause.
            Some((cause, why)) => BuildOutcome::Failed {
                cause,
                reason: why,
                log_excerpt: None,
            },
            None => BuildOutcome::TimedOut {
                deadline_seconds: job
                    .spec
                    .as_ref()
                    .and_then(|s| s.active_deadline_seconds)
                    .and_then(|s| u32::try_from(s).ok())
                    .unwrap_or_default(),
            },
        },
        JobEnd::Failed { reason, message } => {
            let excerpt = log.map(str::to_owned).filter(|l| !l.trim().is_empty());
            let (cause, why) =
                if let Some(t) = terminated.filter(|t| t.reason.as_deref() == Some("OOMKilled")) {
                    (
                        BuildFailureCause::OutOfMemory,
                        format!("the build ran out of memory (exit code {})", t.exit_code),
                    )
                } else if let Some(never) = never_ran(container, status) {
                    never
                } else {
                    let cause = log.map_or(BuildFailureCause::Unknown, cause_from_log);
                    let detail = terminated
                        .and_then(|t| t.message.clone())
                        .filter(|m| !m.trim().is_empty())
                        .unwrap_or_else(|| format!("{reason}: {message}"));
                    (cause, format!("the build failed: {}", detail.trim()))
                };
            BuildOutcome::Failed {
                cause,
                reason: why,
                log_excerpt: excerpt,
            }
        }
    }
}

/// Why the build pod never ran its container, if it did not: its image could not be pulled,
/// or it could not be scheduled.
fn never_ran(
    container: Option<&k8s_openapi::api::core::v1::ContainerStatus>,
    status: Option<&k8s_openapi::api::core::v1::PodStatus>,
) -> Option<(BuildFailureCause, String)> {
    let waiting = container
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .filter(|w| {
            matches!(
                w.reason.as_deref(),
                Some("ErrImagePull" | "ImagePullBackOff" | "InvalidImageName")
            )
        });
    if let Some(w) = waiting {
        return Some((
            BuildFailureCause::ImagePull,
            format!(
                "the builder image could not be pulled: {}",
                w.message.clone().unwrap_or_default()
            ),
        ));
    }
    let unschedulable = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
        .filter(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))?;
    Some((
        BuildFailureCause::Unschedulable,
        format!(
            "the build pod could not be scheduled: {}",
            unschedulable.message.clone().unwrap_or_default()
        ),
    ))
}

/// The cause a Kaniko log points at.
fn cause_from_log(log: &str) -> BuildFailureCause {
    let lower = log.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    if any(&[
        "unauthorized",
        "authentication required",
        "denied: requested access",
        "error checking push permissions",
    ]) {
        BuildFailureCause::RegistryAuth
    } else if any(&[
        "missing go.sum entry",
        "module lookup disabled",
        "no required module provides package",
        "cannot find module providing package",
    ]) {
        BuildFailureCause::DependencyResolution
    } else if !klambda_runtimes::diagnostics::parse(log).is_empty() {
        // The compiler said where the code is wrong (a Go build that downloaded modules first
        // still failed to compile).
        BuildFailureCause::CompileError
    } else if any(&[
        "npm err!",
        "npm error",
        "could not find a version that satisfies",
        "no matching distribution found",
        "go: downloading",
        "failed to select a version",
        "no matching package named",
    ]) {
        BuildFailureCause::DependencyResolution
    } else if any(&[
        "syntaxerror",
        "error[e",
        "could not compile",
        "syntax error",
        "undefined:",
    ]) {
        BuildFailureCause::CompileError
    } else {
        BuildFailureCause::Unknown
    }
}

/// The digest recorded on a Job (its `lambda.knative.dev/digest` annotation).
pub fn digest_of(job: &Job) -> Option<ContentDigest> {
    let text = job.metadata.annotations.as_ref()?.get(labels::DIGEST)?;
    serde_json::from_value(serde_json::Value::String(text.clone())).ok()
}

/// Seconds from a finished Job's start to its end (completion, or the terminal condition).
pub fn duration_of(job: &Job) -> Option<f64> {
    let status = job.status.as_ref()?;
    let start = status.start_time.as_ref()?.0;
    let end = status.completion_time.as_ref().map(|t| t.0).or_else(|| {
        status
            .conditions
            .as_ref()?
            .iter()
            .filter(|c| c.type_ == "Failed" && c.status == "True")
            .find_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
    })?;
    Some(end.duration_since(start).as_secs_f64().max(0.0))
}

/// The build id a Job carries (its `lambda.knative.dev/build-id` label).
pub fn build_id_of(job: &Job) -> Option<BuildId> {
    BuildId::try_from(job.metadata.labels.as_ref()?.get(labels::BUILD_ID)?.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Settings<'a>(&'a [(&'a str, &'a str)]);

    impl klambda_harness::ConfigSource for Settings<'_> {
        fn get(&self, key: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn settings_default_and_refuse_what_cannot_be_used() {
        let defaults = KanikoSettings::from_config(&Settings(&[]));
        assert_eq!(defaults, Ok(KanikoSettings::default()));
        let set = KanikoSettings::from_config(&Settings(&[
            ("KLAMBDA_CACHE_REPO", " registry.example.com/cache "),
            ("KLAMBDA_BUILD_TTL_SECONDS", "600"),
        ]));
        let set = set.unwrap_or_default();
        assert_eq!(
            set.cache_repo.as_deref(),
            Some("registry.example.com/cache")
        );
        assert_eq!(set.ttl_seconds_after_finished, 600);
        for bad in ["soon", "-1"] {
            let problems =
                KanikoSettings::from_config(&Settings(&[("KLAMBDA_BUILD_TTL_SECONDS", bad)]));
            assert!(
                problems
                    .as_ref()
                    .is_err_and(|p| p[0].contains("KLAMBDA_BUILD_TTL_SECONDS")),
                "{bad}: {problems:?}"
            );
        }
    }

    #[test]
    fn log_causes() {
        let cases = [
            (
                "npm ERR! 404 Not Found - GET https://registry.npmjs.org/nope",
                BuildFailureCause::DependencyResolution,
            ),
            (
                "ERROR: Could not find a version that satisfies the requirement nope==9",
                BuildFailureCause::DependencyResolution,
            ),
            (
                "/app/index.js:3\nSyntaxError: Unexpected token ';'",
                BuildFailureCause::CompileError,
            ),
            (
                "error[E0425]: cannot find value `x`",
                BuildFailureCause::CompileError,
            ),
            (
                "go: downloading example.com/dep v1.0.0\n# example.com/hello\n./handler.go:13:15: undefined: errr",
                BuildFailureCause::CompileError,
            ),
            (
                "handler.go:5:2: missing go.sum entry for module providing package example.com/dep",
                BuildFailureCause::DependencyResolution,
            ),
            (
                "go: example.com/dep@v1.0.0: module lookup disabled by GOPROXY=off",
                BuildFailureCause::DependencyResolution,
            ),
            (
                "error checking push permissions -- make sure you entered the correct tag name, and that you are authenticated correctly: UNAUTHORIZED",
                BuildFailureCause::RegistryAuth,
            ),
            ("something else broke", BuildFailureCause::Unknown),
        ];
        for (log, cause) in cases {
            assert_eq!(cause_from_log(log), cause, "{log}");
        }
    }
}
