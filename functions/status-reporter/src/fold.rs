//! Folding platform events into a function's state: a pure function, so the rules are tested as
//! a table and the stores only persist what it returns.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cloudevents::{AttributesReader as _, Event};
use klambda_events::catalogue::*;
use klambda_events::data::{Phase, ServiceRestart};
use klambda_events::{Emission, EventType, FunctionName, Producer, Stage, TYPE_PREFIX, decode};
use serde::{Deserialize, Serialize};

/// What the status reporter knows about one function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionState {
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
    /// What runs the serving revision, when the deployer said (`Python 3.11.2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// The last error, while failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The type of the last event folded in.
    pub last_event_type: String,
    /// When the last event was received.
    pub updated_at: DateTime<Utc>,
    /// When each event type was first received for the current submission (reset by
    /// `function.created` / `function.updated`), from which stage timings are derived.
    pub marks: BTreeMap<String, DateTime<Utc>>,
    /// The W3C trace id of the current submission's journey (from the first of its events that
    /// carries a `traceparent`): look it up in the tracing backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// How many times the serving revision's process was restarted (reset by each new
    /// revision).
    #[serde(default)]
    pub restarts: u32,
    /// The last of those restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart: Option<RestartSeen>,
    /// What the latest submission that parsed asks for (absent from states recorded before
    /// it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<Configuration>,
}

/// A function's configuration as its latest parsed submission normalised it: what the Lambda
/// API's GetFunction and ListFunctions show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Configuration {
    /// The runtime id (`nodejs22`).
    pub runtime: String,
    /// The handler (`index.handler`).
    pub handler: String,
    /// `resources.memoryMib`.
    pub memory_mib: u32,
    /// `resources.timeoutSeconds`.
    pub timeout_seconds: u32,
}

/// A restart of the serving revision's process, as reported, and when the report arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestartSeen {
    /// The deployer's report.
    pub report: ServiceRestart,
    /// When it was received.
    pub received_at: DateTime<Utc>,
}

impl FunctionState {
    /// Milliseconds each stage took for the current submission, where both ends were seen.
    pub fn timings_ms(&self) -> BTreeMap<&'static str, i64> {
        let mark = |ty: &str| self.marks.get(ty).copied();
        let submitted = mark(FunctionCreated::TYPE)
            .into_iter()
            .chain(mark(FunctionUpdated::TYPE))
            .max();
        let spans = [
            (
                "parse",
                submitted,
                mark(ParserCompleted::TYPE).or(mark(ParserFailed::TYPE)),
            ),
            (
                "context",
                mark(ParserCompleted::TYPE),
                mark(ContextUploaded::TYPE),
            ),
            (
                "build",
                mark(ContextUploaded::TYPE),
                mark(BuildCompleted::TYPE).or(mark(BuildFailed::TYPE)),
            ),
            (
                "deploy",
                mark(BuildCompleted::TYPE),
                mark(ServiceReady::TYPE).or(mark(ServiceFailed::TYPE)),
            ),
            ("total", submitted, mark(ServiceReady::TYPE)),
        ];
        spans
            .into_iter()
            .filter_map(|(stage, from, to)| Some((stage, (to? - from?).num_milliseconds())))
            .filter(|(_, ms)| *ms >= 0)
            .collect()
    }
}

/// A journey waiting on a stage longer than that stage takes when it works: reported by the
/// API (`stalled`), `klambda status` and `/metrics` (`klambda_status_functions_stalled`), so a
/// lost piece of work is seen rather than waited on. `klambda replay` of the stage's input
/// resumes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stalled {
    /// The stage it waits on (its Service name).
    pub stage: &'static str,
    /// Seconds since the journey's last event.
    pub waiting_seconds: i64,
    /// How long that stage may take.
    pub deadline_seconds: i64,
}

/// How long `stage` may take before a journey waiting on it is stalled: beyond the slowest
/// honest run.
pub fn stage_deadline_seconds(stage: Stage) -> i64 {
    match stage {
        Stage::Parser => 60,
        // A git clone or an S3 download of a large source.
        Stage::ContextUploader => 600,
        // The longest build deadline a spec may set (3600 s), and a wait for a builder.
        Stage::JobLauncher => 3900,
        // Knative's default progress deadline (600 s), and a wait for a node.
        Stage::ServiceDeployer => 900,
        Stage::StatusReporter => i64::MAX,
    }
}

impl FunctionState {
    /// The stage the function's journey waits on: the consumer of its last event, or, after
    /// progress (`build.started`), the stage that reported it. `None` once the journey ended.
    pub fn waiting_on(&self) -> Option<Stage> {
        if !matches!(
            self.phase,
            Phase::Parsing | Phase::Building | Phase::Deploying
        ) {
            return None;
        }
        let spec = klambda_events::catalogue::find(&self.last_event_type)?;
        spec.consumer.or_else(|| {
            (spec.emission == Emission::Progress)
                .then(|| {
                    spec.producers.iter().find_map(|producer| match producer {
                        Producer::Stage(stage) => Some(*stage),
                        Producer::Client => None,
                    })
                })
                .flatten()
        })
    }

    /// Whether the journey waited on its stage past that stage's deadline, as of `now`.
    pub fn stalled(&self, now: DateTime<Utc>) -> Option<Stalled> {
        let stage = self.waiting_on()?;
        let waiting_seconds = (now - self.updated_at).num_seconds();
        let deadline_seconds = stage_deadline_seconds(stage);
        (waiting_seconds > deadline_seconds).then_some(Stalled {
            stage: stage.service_name(),
            waiting_seconds,
            deadline_seconds,
        })
    }
}

/// The function an event is about: its `subject`, when that is a valid function name.
pub fn function_of(event: &Event) -> Option<FunctionName> {
    if !event.ty().starts_with(TYPE_PREFIX) {
        return None;
    }
    FunctionName::new(event.subject()?).ok()
}

/// Whether `event` is a `service.failed` refusing a rollback to a revision that does not exist
/// (`RevisionMissing`): the deployer changed nothing.
fn refused_rollback(event: &Event) -> bool {
    event.ty() == ServiceFailed::TYPE
        && decode::<ServiceFailed>(event).is_ok_and(|f| f.reason == "RevisionMissing")
}

/// The state after `event`, or `None` when the event does not change it (unknown types,
/// `status.updated` itself, `health.check`).
pub fn fold(
    state: Option<FunctionState>,
    event: &Event,
    received_at: DateTime<Utc>,
) -> Option<FunctionState> {
    let name = function_of(event)?;
    let ty = event.ty();
    if ty == StatusUpdated::TYPE
        || ty == HealthCheck::TYPE
        || klambda_events::catalogue::find(ty).is_none()
    {
        return None;
    }
    // Requests about a function the platform never had, and the answers to them, create no
    // entry: a delete or rollback of an unknown name leaves no phantom behind.
    let about_nothing = [
        FunctionDeleted::TYPE,
        FunctionRollback::TYPE,
        BuildCancel::TYPE,
        ServiceDeleted::TYPE,
    ]
    .contains(&ty)
        || (ty == ServiceFailed::TYPE && refused_rollback(event));
    if state.is_none() && about_nothing {
        return None;
    }
    let mut next = state.unwrap_or_else(|| FunctionState {
        name: name.clone(),
        phase: Phase::Parsing,
        revision: None,
        digest: None,
        commit: None,
        image: None,
        url: None,
        runtime: None,
        last_error: None,
        last_event_type: String::new(),
        updated_at: received_at,
        marks: BTreeMap::new(),
        trace_id: None,
        restarts: 0,
        last_restart: None,
        configuration: None,
    });
    let is = |t: &str| ty == t;
    let submitted = is(FunctionCreated::TYPE) || is(FunctionUpdated::TYPE);
    if submitted {
        next.trace_id = None;
    }
    if next.trace_id.is_none()
        && let Some(trace) = klambda_harness::trace::TraceParent::of_event(event, None)
    {
        next.trace_id = Some(hex::encode(trace.trace_id));
    }
    if submitted {
        next.commit = None;
        next.marks.clear();
        next.phase = Phase::Parsing;
        next.last_error = None;
    } else if is(ParserCompleted::TYPE) {
        next.phase = Phase::Building;
        if let Ok(data) = decode::<ParserCompleted>(event) {
            next.digest = Some(data.digest.to_string());
            next.configuration = Some(Configuration {
                runtime: data.spec.runtime.id().to_owned(),
                handler: data.spec.handler.clone(),
                memory_mib: data.spec.resources.memory_mib,
                timeout_seconds: data.spec.resources.timeout_seconds,
            });
        }
    } else if is(ParserFailed::TYPE) {
        next.phase = Phase::Failed;
        next.last_error = decode::<ParserFailed>(event).ok().map(|f| {
            f.problems
                .iter()
                .map(|p| format!("{}: {}", p.field, p.reason))
                .collect::<Vec<_>>()
                .join("; ")
        });
    } else if is(ContextUploaded::TYPE) || is(BuildStarted::TYPE) {
        next.phase = Phase::Building;
        if let Ok(data) = decode::<ContextUploaded>(event) {
            // For a git source, the digest pinned to the commit its ref resolved to.
            next.digest = Some(data.digest.to_string());
            next.commit = data.commit;
        }
    } else if is(BuildCompleted::TYPE) {
        next.phase = Phase::Deploying;
        if let Ok(data) = decode::<BuildCompleted>(event) {
            next.image = Some(data.image);
            next.digest = Some(data.digest.to_string());
        }
    } else if is(BuildFailed::TYPE) {
        next.phase = Phase::Failed;
        next.last_error = decode::<BuildFailed>(event).ok().map(|f| {
            // The cause as the contract spells it (`compileError`), not as Rust debug-prints it.
            let cause = serde_json::to_value(f.cause)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let mut error = format!("build failed ({cause}): {}", f.reason);
            let said = error_lines(f.log_excerpt.as_deref().unwrap_or_default());
            if !said.is_empty() {
                error.push_str(": ");
                error.push_str(&said.join(" / "));
            }
            error
        });
    } else if is(BuildTimeout::TYPE) {
        next.phase = Phase::Failed;
        next.last_error = decode::<BuildTimeout>(event)
            .ok()
            .map(|t| format!("build timed out after {} s", t.deadline_seconds));
    } else if is(BuildCancelled::TYPE) || is(BuildStopped::TYPE) {
        next.phase = Phase::Failed;
        next.last_error = decode::<BuildCancelled>(event)
            .or_else(|_| decode::<BuildStopped>(event))
            .ok()
            .map(|end| format!("build ended: {}", end.reason));
    } else if is(ServiceCreated::TYPE) || is(ServiceUpdated::TYPE) {
        next.phase = Phase::Deploying;
        let revision = decode::<ServiceCreated>(event).or_else(|_| decode::<ServiceUpdated>(event));
        if let Ok(revision) = revision {
            next.revision = Some(revision.revision);
        }
        next.restarts = 0;
        next.last_restart = None;
    } else if is(ServiceRestarted::TYPE) {
        // The function keeps its phase: its process is serving again. A report about a
        // revision that no longer serves changes nothing.
        if let Ok(restart) = decode::<ServiceRestarted>(event)
            && next.revision.as_deref() == Some(restart.revision.as_str())
        {
            next.restarts = next.restarts.max(restart.restarts);
            next.last_restart = Some(RestartSeen {
                report: restart,
                received_at,
            });
        }
    } else if is(ServiceReady::TYPE) {
        next.phase = Phase::Ready;
        next.last_error = None;
        if let Ok(ready) = decode::<ServiceReady>(event) {
            next.revision = Some(ready.revision);
            next.url = Some(ready.url);
            next.runtime = ready.runtime;
        }
    } else if is(ServiceFailed::TYPE) {
        // A rollback refused (no such revision) changed nothing: what served still serves.
        if !refused_rollback(event) {
            next.phase = Phase::Failed;
        }
        next.last_error = decode::<ServiceFailed>(event)
            .ok()
            .map(|f| format!("{}: {}", f.reason, f.message));
    } else if is(ServiceDeleted::TYPE) {
        next.phase = Phase::Deleted;
        next.url = None;
        next.runtime = None;
    }
    // Other platform types (parser.started, function.deleted, build.cancel, function.rollback)
    // are recorded in the log and marked, without changing the phase.
    next.marks.entry(ty.to_owned()).or_insert(received_at);
    next.last_event_type = ty.to_owned();
    next.updated_at = received_at;
    Some(next)
}

/// The first lines of a build log that state an error (`SyntaxError: …`, `npm ERR! …`,
/// `ERROR: Could not find a version …`), at most three; else its last three lines: what a user
/// reads first in `klambda status` rather than the command that failed.
fn error_lines(log: &str) -> Vec<String> {
    const SHOWN: usize = 3;
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let errors: Vec<String> = lines
        .iter()
        .filter(|line| {
            let lower = line.to_ascii_lowercase();
            [
                "error",
                "err!",
                "traceback",
                "exception",
                "cannot find",
                "not found",
            ]
            .iter()
            .any(|word| lower.contains(word))
        })
        .take(SHOWN)
        .map(|l| (*l).to_owned())
        .collect();
    if !errors.is_empty() {
        return errors;
    }
    lines[lines.len().saturating_sub(SHOWN)..]
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::error_lines;

    #[test]
    fn error_lines_are_the_ones_stating_an_error_else_the_last_ones() {
        let node = "/w/index.js:1\nexports.handler = async (e) => {\n\nSyntaxError: Unexpected end of input\n    at wrapSafe (node:internal)\n\nNode.js v20.19.0";
        assert_eq!(error_lines(node), ["SyntaxError: Unexpected end of input"]);
        let pip = "Collecting nosuchpkg\nERROR: Could not find a version that satisfies the requirement nosuchpkg\nERROR: No matching distribution found for nosuchpkg";
        assert_eq!(error_lines(pip).len(), 2);
        assert_eq!(error_lines("a\nb\nc\nd\n"), ["b", "c", "d"]);
        assert!(error_lines("").is_empty());
    }
}
