//! The status API's answers: what the status reporter serves on `GET /functions`,
//! `GET /functions/{name}` and `GET /functions/{name}/events` (and the dead-letter list), and
//! what the CLI reads. One definition, so the two cannot drift apart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::FunctionName;
use crate::data::{Phase, RestartReason};

/// A function as the status API shows it: its folded state, the stage timings of its current
/// submission, and whether its journey is stalled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    /// The function.
    pub name: FunctionName,
    /// Its phase.
    pub phase: Phase,
    /// The revision serving or being rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The content digest of the latest submission that parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The commit a git source's ref resolved to for the current build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The image (or local artifact) built for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Where it is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// What runs the serving revision, when known (`Python 3.11.2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// The last error, while failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The type of the last event folded in.
    pub last_event_type: String,
    /// When the last event was received (RFC 3339).
    pub updated_at: String,
    /// When each event type was first received for the current submission (RFC 3339).
    #[serde(default)]
    pub marks: BTreeMap<String, String>,
    /// The W3C trace id of the current submission's journey.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Milliseconds each stage took for the current submission (`parse`, `context`, `build`,
    /// `deploy`), where both ends were seen.
    #[serde(default)]
    pub timings_ms: BTreeMap<String, i64>,
    /// Set while the journey has waited on one stage longer than that stage may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled: Option<Stalled>,
    /// How many times the serving revision's process was restarted (over its memory limit,
    /// exited, or hung); back to 0 with each new revision.
    #[serde(default)]
    pub restarts: u32,
    /// The last of those restarts, while the revision serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart: Option<LastRestart>,
    /// The serving revision's processes now, where the platform runs them itself (the local
    /// runner); absent on a cluster, where Knative's autoscaler owns them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<Scale>,
}

/// A serving revision's processes and the requests on them, at the moment of asking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Scale {
    /// Processes ready to serve.
    pub replicas: u32,
    /// Processes starting.
    pub starting: u32,
    /// Requests being served.
    pub in_flight: u32,
    /// Requests held in the activator, waiting for a process to be free or to start.
    pub queued: u32,
    /// Whether the autoscaler reacts to a burst (panic mode: no scaling down).
    pub panicking: bool,
    /// Requests that found no process and waited for one to start, since the revision serves.
    pub cold_starts: u64,
    /// The last of those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_cold_start: Option<ColdStart>,
}

/// A process started for a request that found none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ColdStart {
    /// When it was ready (RFC 3339).
    pub at: String,
    /// Milliseconds from the start of the process to its first healthy answer.
    pub duration_ms: u64,
}

/// Why the serving revision's process was last restarted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastRestart {
    /// `OOMKilled`, `Exited` or `Unresponsive`.
    pub reason: RestartReason,
    /// What happened, in words.
    pub message: String,
    /// When it was reported (RFC 3339).
    pub at: String,
}

/// A journey waiting on one stage for longer than that stage may take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stalled {
    /// The stage it waits on (its Service name).
    pub stage: String,
    /// Seconds since the journey's last event.
    pub waiting_seconds: i64,
    /// How long that stage may take.
    pub deadline_seconds: i64,
}

/// One recorded event (a function's history, or a dead letter), in the order received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRecord {
    /// Its place in the store's order; `?after=SEQ` pages from it.
    pub seq: i64,
    /// When it was received (RFC 3339).
    pub received_at: String,
    /// The event in the CloudEvents JSON format.
    pub event: Value,
}
