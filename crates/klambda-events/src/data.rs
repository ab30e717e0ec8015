//! The data carried by each event type. [`crate::catalogue`] says which type carries which.
//!
//! Pipeline events carry the whole normalised [`FunctionSpec`] forward, so every stage can be
//! replayed from its input event alone: no stage reads another stage's state.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::spec::Extra;
use crate::{BuildId, ContentDigest, FunctionName, FunctionSpec};

/// Whether a submission creates a function or updates an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// From `function.created`.
    Create,
    /// From `function.updated`.
    Update,
}

/// `function.deleted`: remove a function's Service and Trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionDeletion {
    /// The function to delete.
    pub name: FunctionName,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `function.rollback`: pin traffic to an earlier revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackRequest {
    /// The function to roll back.
    pub name: FunctionName,
    /// The revision to return to; the one before the current when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_revision: Option<String>,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `parser.started`: the parser took a submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParseStart {
    /// The submitted name, as submitted (it may be invalid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Create or update.
    pub operation: Operation,
}

/// `parser.completed`: the submission is valid; here it is normalised, with its digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParsedFunction {
    /// Create or update.
    pub operation: Operation,
    /// The normalised function.
    pub spec: FunctionSpec,
    /// sha256 over the normalised source, the runtime and its template version.
    pub digest: ContentDigest,
}

/// One thing wrong with an input, located by a JSON-pointer-like path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Problem {
    /// Where: `name`, `source.files[2].path`, `env.PATH`, … (empty for the whole input).
    pub field: String,
    /// What is wrong and what is allowed.
    pub reason: String,
}

impl Problem {
    /// A problem at `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// `parser.failed`: the submission was refused; every reason is listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParseFailure {
    /// The submitted name, when one could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Create or update.
    pub operation: Operation,
    /// Every problem found.
    pub problems: Vec<Problem>,
}

/// Where a build context is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// `s3://bucket/contexts/<digest>.tar.gz` or `file:///…` in the embedded mode.
    pub uri: String,
    /// Size in bytes.
    pub size: u64,
}

/// `context.uploaded`: the build context is in the object store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildContext {
    /// The normalised function.
    pub spec: FunctionSpec,
    /// The content digest; for a git source, the parser's digest pinned to `commit`.
    pub digest: ContentDigest,
    /// Where the context is.
    pub context: ObjectRef,
    /// The commit a git source's ref resolved to when the context was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// `build.started`: a build began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildStart {
    /// The function.
    pub function: FunctionName,
    /// The build.
    pub build_id: BuildId,
    /// The content digest being built.
    pub digest: ContentDigest,
}

/// `build.completed`: an image (or local artifact) exists for the digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuiltImage {
    /// The normalised function, carried on to the deployer.
    pub spec: FunctionSpec,
    /// The content digest.
    pub digest: ContentDigest,
    /// The build.
    pub build_id: BuildId,
    /// The image reference pinned by digest (`registry/fn@sha256:…`), or the local artifact.
    pub image: String,
    /// True when no build ran because the digest was already built.
    pub cached: bool,
}

/// Why a build failed, classified so alerts and users can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BuildFailureCause {
    /// Dependencies could not be resolved or installed.
    DependencyResolution,
    /// The code did not compile (or failed a syntax check).
    CompileError,
    /// The registry refused the push.
    RegistryAuth,
    /// The build ran out of memory.
    OutOfMemory,
    /// The build could not be scheduled.
    Unschedulable,
    /// The builder image could not be pulled.
    ImagePull,
    /// The interpreter the runtime id names (`python3.13`: a Python 3.13) is not installed where
    /// the build runs (one machine; a cluster's image pins it).
    RuntimeUnavailable,
    /// Anything else.
    Unknown,
}

impl BuildFailureCause {
    /// Every cause, for metrics that start each series at zero.
    pub const ALL: [Self; 8] = [
        Self::DependencyResolution,
        Self::CompileError,
        Self::RegistryAuth,
        Self::OutOfMemory,
        Self::Unschedulable,
        Self::ImagePull,
        Self::RuntimeUnavailable,
        Self::Unknown,
    ];

    /// The metric label value (`snake_case`, as Prometheus labels are written).
    pub fn label(self) -> &'static str {
        match self {
            Self::DependencyResolution => "dependency_resolution",
            Self::CompileError => "compile_error",
            Self::RegistryAuth => "registry_auth",
            Self::OutOfMemory => "out_of_memory",
            Self::Unschedulable => "unschedulable",
            Self::ImagePull => "image_pull",
            Self::RuntimeUnavailable => "runtime_unavailable",
            Self::Unknown => "unknown",
        }
    }
}

/// `build.failed`: a build ended in failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildFailure {
    /// The function.
    pub function: FunctionName,
    /// The build.
    pub build_id: BuildId,
    /// The content digest.
    pub digest: ContentDigest,
    /// The classified cause.
    pub cause: BuildFailureCause,
    /// A one-line reason.
    pub reason: String,
    /// The last lines of the build log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_excerpt: Option<String>,
    /// The compiler's first errors, each at its place in the function's source (a compiled
    /// runtime's build that failed to compile).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<Diagnostic>,
}

/// A compiler's error at one place in a function's source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Diagnostic {
    /// The file, relative to the function's directory.
    pub file: String,
    /// Its line (from 1).
    pub line: u32,
    /// Its column (from 1), where the compiler says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
    /// What the compiler said.
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.column {
            Some(column) => write!(f, "{}:{}:{column}: {}", self.file, self.line, self.message),
            None => write!(f, "{}:{}: {}", self.file, self.line, self.message),
        }
    }
}

/// `build.timeout`: a build passed its deadline and was stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildTimedOut {
    /// The function.
    pub function: FunctionName,
    /// The build.
    pub build_id: BuildId,
    /// The content digest.
    pub digest: ContentDigest,
    /// The deadline that passed.
    pub deadline_seconds: u32,
}

/// `build.cancel`: a request to cancel a function's running build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CancelRequest {
    /// The function.
    pub function: FunctionName,
    /// The build to cancel; the function's running build when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<BuildId>,
    /// Why, for the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `build.cancelled` (a user asked) and `build.stopped` (the platform stopped a build that a
/// newer submission of the same function superseded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildEnd {
    /// The function.
    pub function: FunctionName,
    /// The build that ended.
    pub build_id: BuildId,
    /// Why it ended.
    pub reason: String,
}

/// `service.created` / `service.updated`: a revision of the function's Service was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRevision {
    /// The function.
    pub function: FunctionName,
    /// The revision name.
    pub revision: String,
    /// The image (pinned by digest) the revision runs.
    pub image: String,
    /// The content digest.
    pub digest: ContentDigest,
}

/// `service.deleted`: the function's Service and Trigger are gone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRemoval {
    /// The function.
    pub function: FunctionName,
}

/// `service.ready`: a revision serves traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceReadiness {
    /// The function.
    pub function: FunctionName,
    /// The revision serving.
    pub revision: String,
    /// Where to reach it.
    pub url: String,
    /// What runs it, when the deployer knows (`Python 3.11.2` on one machine, where the runtime
    /// id's version is found on the machine; a cluster's image pins it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
}

/// `service.failed`: a revision did not become ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceFailure {
    /// The function.
    pub function: FunctionName,
    /// The revision, when one was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The Ready condition's reason.
    pub reason: String,
    /// The Ready condition's message.
    pub message: String,
}

/// Why a serving revision's process was started again (the Kubernetes container states'
/// reasons, so the same words mean the same on one machine and on a cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RestartReason {
    /// It went over its memory limit (`resources.memoryMib`) and the kernel killed it.
    #[serde(rename = "OOMKilled")]
    OomKilled,
    /// It exited on its own (a crash, or an exit the handler called).
    Exited,
    /// It stopped answering its liveness probe and was killed.
    Unresponsive,
}

impl RestartReason {
    /// The reason as the contract spells it (`OOMKilled`).
    pub fn label(self) -> &'static str {
        match self {
            Self::OomKilled => "OOMKilled",
            Self::Exited => "Exited",
            Self::Unresponsive => "Unresponsive",
        }
    }
}

/// `service.restarted`: the serving revision's process ended and was started again. The
/// function keeps its phase; its status counts the restarts and keeps the last reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRestart {
    /// The function.
    pub function: FunctionName,
    /// The revision whose process ended.
    pub revision: String,
    /// Why it ended.
    pub reason: RestartReason,
    /// What happened, in words (the exit status, the limit it went over).
    pub message: String,
    /// How many times this revision's process has been restarted, this one included.
    pub restarts: u32,
}

/// The phase of a function, as the status reporter folds it from events.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// Submitted, being parsed.
    Parsing,
    /// Context being prepared or image being built.
    Building,
    /// Service being created or updated.
    Deploying,
    /// Serving.
    Ready,
    /// The last submission failed.
    Failed,
    /// Deleted.
    Deleted,
}

impl Phase {
    /// Every phase, for gauges that report each one (zero included).
    pub const ALL: [Self; 6] = [
        Self::Parsing,
        Self::Building,
        Self::Deploying,
        Self::Ready,
        Self::Failed,
        Self::Deleted,
    ];

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Parsing => "parsing",
            Self::Building => "building",
            Self::Deploying => "deploying",
            Self::Ready => "ready",
            Self::Failed => "failed",
            Self::Deleted => "deleted",
        }
    }
}

/// `status.updated`: a function's folded status changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    /// The function.
    pub function: FunctionName,
    /// Its phase now.
    pub phase: Phase,
    /// The serving revision, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The type of the event that caused this update.
    pub cause: String,
    /// The last error, if the function failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// `health.check`: a probe event sent through the broker to prove the path works.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthProbe {
    /// Who sent the probe.
    pub origin: String,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub extra: Extra,
}
