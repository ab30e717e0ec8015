//! What Kubernetes' Job controller and kubelet leave on a build Job and its pod, and the
//! ApiServerSource event that carries a Job to the job-launcher: enough of the cluster's side
//! for a test to finish a Kaniko build the way a cluster would, whichever process launched it.

use anyhow::Result;
use cloudevents::{Event, EventBuilder as _, EventBuilderV10};
use serde_json::{Value, json};

/// When the fake build's pod started.
pub const STARTED: &str = "2026-11-23T10:00:00Z";
/// When it ended: 125 s after [`STARTED`].
pub const ENDED: &str = "2026-11-23T10:02:05Z";

/// The Job as the Job controller leaves it: `Complete`, or `Failed` with `(reason, message)`.
pub fn finished(job: &Value, failed: Option<(&str, &str)>) -> Value {
    let mut job = job.clone();
    let condition = |ty: &str, reason: &str, message: &str| {
        json!({"type": ty, "status": "True", "reason": reason, "message": message,
               "lastProbeTime": ENDED, "lastTransitionTime": ENDED})
    };
    job["status"] = match failed {
        None => json!({
            "startTime": STARTED, "completionTime": ENDED, "succeeded": 1, "ready": 0,
            "terminating": 0, "uncountedTerminatedPods": {},
            "conditions": [
                condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"),
                condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods"),
            ],
        }),
        Some((reason, message)) => json!({
            "startTime": STARTED, "failed": 1, "ready": 0, "terminating": 0,
            "uncountedTerminatedPods": {},
            "conditions": [
                condition("FailureTarget", reason, message),
                condition("Failed", reason, message),
            ],
        }),
    };
    job
}

/// The Job's pod as the kubelet reports it, in `phase`, with `state` as the kaniko container's
/// state; `scheduled` is the scheduler's message when the pod could not be placed.
pub fn pod(job: &Value, phase: &str, state: Value, scheduled: Option<&str>) -> Value {
    let job_name = job["metadata"]["name"].as_str().unwrap_or_default();
    let uid = job["metadata"]["uid"].clone();
    let mut labels = job["spec"]["template"]["metadata"]["labels"].clone();
    labels["batch.kubernetes.io/job-name"] = json!(job_name);
    labels["job-name"] = json!(job_name);
    labels["batch.kubernetes.io/controller-uid"] = uid.clone();
    labels["controller-uid"] = uid;
    let conditions = match scheduled {
        Some(message) => {
            json!([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": message, "lastProbeTime": null, "lastTransitionTime": STARTED}])
        }
        None => {
            json!([{"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": STARTED}])
        }
    };
    let statuses = if scheduled.is_some() {
        json!(null)
    } else {
        json!([{"name": "kaniko", "state": state, "lastState": {}, "ready": false,
                 "restartCount": 0, "started": false,
                 "image": "cgr.dev/chainguard/kaniko:latest", "imageID": ""}])
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{job_name}-x7k2p"), "namespace": job["metadata"]["namespace"],
                     "labels": labels},
        "spec": job["spec"]["template"]["spec"].clone(),
        "status": {"phase": phase, "conditions": conditions, "containerStatuses": statuses,
                   "qosClass": "Burstable", "startTime": STARTED},
    })
}

/// A container state: terminated with `exit_code`, `reason` and its termination `message`
/// (Kaniko writes the pushed digest there).
pub fn terminated(exit_code: i32, reason: &str, message: &str) -> Value {
    json!({"terminated": {"exitCode": exit_code, "reason": reason, "message": message,
                          "startedAt": STARTED, "finishedAt": ENDED,
                          "containerID": "containerd://0123abcd"}})
}

/// The ApiServerSource event (Resource mode: the object is the data) of type `ty` for `job`,
/// as `eventing/` configures the source (`klambdakind: build-job`).
pub fn job_event(job: &Value, id: &str, ty: &str) -> Result<Event> {
    let name = job["metadata"]["name"].as_str().unwrap_or_default();
    let namespace = job["metadata"]["namespace"].as_str().unwrap_or_default();
    Ok(EventBuilderV10::new()
        .id(id)
        .source("https://10.96.0.1:443")
        .ty(ty)
        .subject(format!("/apis/batch/v1/namespaces/{namespace}/jobs/{name}"))
        .extension("klambdakind", "build-job")
        .data("application/json", job.clone())
        .build()?)
}
