//! The catalogue: every event type of the platform, its data, version, producers and consumer.
//!
//! **Invariant:** each type has at most one consuming stage (the status reporter observes every
//! type through its catch-all Trigger and is not counted as a consumer), and every consumed type
//! has a producer. `tests/contract.rs` checks both, and checks `eventing/triggers/` against this
//! table, so the choreography and the contract cannot drift apart.

use schemars::{JsonSchema, Schema};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::data::*;
use crate::spec::FunctionSubmission;

/// The prefix of every platform event type.
pub const TYPE_PREFIX: &str = "io.knative.lambda.";

/// A pipeline stage: one Knative Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// `functions/parser`.
    Parser,
    /// `functions/context-uploader`.
    ContextUploader,
    /// `functions/job-launcher`.
    JobLauncher,
    /// `functions/service-deployer`.
    ServiceDeployer,
    /// `functions/status-reporter`.
    StatusReporter,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 5] = [
        Stage::Parser,
        Stage::ContextUploader,
        Stage::JobLauncher,
        Stage::ServiceDeployer,
        Stage::StatusReporter,
    ];

    /// The stage's Knative Service name (and its folder under `functions/`).
    pub fn service_name(self) -> &'static str {
        match self {
            Stage::Parser => "parser",
            Stage::ContextUploader => "context-uploader",
            Stage::JobLauncher => "job-launcher",
            Stage::ServiceDeployer => "service-deployer",
            Stage::StatusReporter => "status-reporter",
        }
    }

    /// The CloudEvents `source` of events the stage emits.
    pub fn event_source(self) -> &'static str {
        match self {
            Stage::Parser => "/knative-lambda/parser",
            Stage::ContextUploader => "/knative-lambda/context-uploader",
            Stage::JobLauncher => "/knative-lambda/job-launcher",
            Stage::ServiceDeployer => "/knative-lambda/service-deployer",
            Stage::StatusReporter => "/knative-lambda/status-reporter",
        }
    }
}

/// Who emits an event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Producer {
    /// A pipeline stage.
    Stage(Stage),
    /// Anything outside the pipeline: the `klambda` CLI, the webhook gateway, a user's producer.
    Client,
}

/// How a producer hands an event to the broker, and so what a consumer may rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Emission {
    /// A client's request, posted to the broker ingress: `202` means the broker holds it.
    Request,
    /// A stage's answer to its input, carrying the outcome of accepted work: the input is not
    /// settled until the broker confirmed the answer, so a crash or a broker restart means the
    /// input is delivered again (at least once, deduplicated by id).
    Outcome,
    /// Progress a stage reports beside its answer (`*.started`, a new revision's name): best
    /// effort, lost if the broker is unreachable at that instant. Nothing waits for one.
    Progress,
}

impl Emission {
    /// The word in docs/EVENTS.md.
    pub fn describe(self) -> &'static str {
        match self {
            Emission::Request => "request",
            Emission::Outcome => "outcome (at least once)",
            Emission::Progress => "progress (best effort)",
        }
    }
}

/// A type only ever emitted as [`Emission::Progress`]: the harness publishes these beside a
/// reply (`klambda_harness::Context::progress`), and only these, so an outcome can never be
/// sent best effort by mistake.
pub trait Progress: EventType {}

/// The description of one event type, as data.
#[derive(Debug, Clone, Copy)]
pub struct EventSpec {
    /// The full CloudEvents `type`.
    pub type_name: &'static str,
    /// The data schema version.
    pub version: u32,
    /// The Rust name of the data type, for documentation.
    pub data_name: &'static str,
    /// One sentence: what the event means.
    pub description: &'static str,
    /// Who emits it.
    pub producers: &'static [Producer],
    /// How they emit it.
    pub emission: Emission,
    /// The stage that acts on it, if any (the status reporter records every type regardless).
    pub consumer: Option<Stage>,
    schema: fn() -> Schema,
}

impl EventSpec {
    /// The JSON Schema of the type's data.
    pub fn schema(&self) -> Schema {
        (self.schema)()
    }

    /// The CloudEvents `dataschema` naming this type's data version.
    pub fn dataschema(&self) -> String {
        dataschema_uri(self.type_name, self.version)
    }

    /// The file name of the committed schema under `eventing/schemas/`.
    pub fn schema_file_name(&self) -> String {
        format!("{}.v{}.json", self.type_name, self.version)
    }
}

/// The `dataschema` URI for a type and version.
pub fn dataschema_uri(type_name: &str, version: u32) -> String {
    format!("urn:knative-lambda:schema:{type_name}:v{version}")
}

/// An event type: a marker struct that ties the type name to its data and its place in the
/// choreography. Handlers decode with [`crate::decode`] and encode with [`crate::Envelope`].
pub trait EventType {
    /// The full CloudEvents `type`.
    const TYPE: &'static str;
    /// The data schema version.
    const VERSION: u32;
    /// The data the type carries.
    type Data: Serialize + DeserializeOwned + JsonSchema;
}

macro_rules! catalogue {
    ($(
        $(#[doc = $doc:literal])+
        $marker:ident = $suffix:literal, v $version:literal, $data:ty, $emission:ident,
        producers [$($producer:expr),+], consumer $consumer:expr;
    )+) => {
        $(
            $(#[doc = $doc])+
            #[derive(Debug, Clone, Copy)]
            pub struct $marker;

            impl EventType for $marker {
                const TYPE: &'static str = concat!("io.knative.lambda.", $suffix);
                const VERSION: u32 = $version;
                type Data = $data;
            }

            progress!($emission, $marker);
        )+

        /// Every event type, in lifecycle order.
        pub const CATALOGUE: &[EventSpec] = &[$(
            EventSpec {
                type_name: <$marker as EventType>::TYPE,
                version: $version,
                data_name: stringify!($data),
                description: concat!($($doc),+),
                producers: &[$($producer),+],
                emission: Emission::$emission,
                consumer: $consumer,
                schema: || schemars::schema_for!($data),
            },
        )+];
    };
}

/// Marks the [`Emission::Progress`] types as [`Progress`].
macro_rules! progress {
    (Progress, $marker:ident) => {
        impl Progress for $marker {}
    };
    ($other:ident, $marker:ident) => {};
}

use Producer::Client;
use Stage::*;
const fn by(stage: Stage) -> Producer {
    Producer::Stage(stage)
}

catalogue! {
    /// A user submitted a new function.
    FunctionCreated = "function.created", v 1, FunctionSubmission, Request,
        producers [Client], consumer Some(Parser);
    /// A user submitted a new version of an existing function.
    FunctionUpdated = "function.updated", v 1, FunctionSubmission, Request,
        producers [Client], consumer Some(Parser);
    /// A user asked to delete a function.
    FunctionDeleted = "function.deleted", v 1, FunctionDeletion, Request,
        producers [Client], consumer Some(ServiceDeployer);
    /// A user asked to return a function to an earlier revision.
    FunctionRollback = "function.rollback", v 1, RollbackRequest, Request,
        producers [Client], consumer Some(ServiceDeployer);
    /// The parser took a submission.
    ParserStarted = "parser.started", v 1, ParseStart, Progress,
        producers [by(Parser)], consumer None;
    /// The submission is valid; its normalised spec and content digest follow.
    ParserCompleted = "parser.completed", v 1, ParsedFunction, Outcome,
        producers [by(Parser)], consumer Some(ContextUploader);
    /// The submission was refused, with every reason.
    ParserFailed = "parser.failed", v 1, ParseFailure, Outcome,
        producers [by(Parser)], consumer None;
    /// The build context is in the object store.
    ContextUploaded = "context.uploaded", v 1, BuildContext, Outcome,
        producers [by(ContextUploader)], consumer Some(JobLauncher);
    /// A build began.
    BuildStarted = "build.started", v 1, BuildStart, Progress,
        producers [by(JobLauncher)], consumer None;
    /// An image exists for the digest (built now, or found in the cache).
    BuildCompleted = "build.completed", v 1, BuiltImage, Outcome,
        producers [by(ContextUploader), by(JobLauncher)], consumer Some(ServiceDeployer);
    /// A build failed, with a classified cause and the end of its log.
    BuildFailed = "build.failed", v 1, BuildFailure, Outcome,
        producers [by(JobLauncher)], consumer None;
    /// A build passed its deadline.
    BuildTimeout = "build.timeout", v 1, BuildTimedOut, Outcome,
        producers [by(JobLauncher)], consumer None;
    /// A user asked to cancel a running build.
    BuildCancel = "build.cancel", v 1, CancelRequest, Request,
        producers [Client], consumer Some(JobLauncher);
    /// A build was cancelled at a user's request.
    BuildCancelled = "build.cancelled", v 1, BuildEnd, Outcome,
        producers [by(JobLauncher)], consumer None;
    /// A build was stopped because a newer submission superseded it.
    BuildStopped = "build.stopped", v 1, BuildEnd, Outcome,
        producers [by(JobLauncher)], consumer None;
    /// The function's Service was created.
    ServiceCreated = "service.created", v 1, ServiceRevision, Progress,
        producers [by(ServiceDeployer)], consumer None;
    /// The function's Service got a new revision.
    ServiceUpdated = "service.updated", v 1, ServiceRevision, Progress,
        producers [by(ServiceDeployer)], consumer None;
    /// The function's Service and Trigger were deleted.
    ServiceDeleted = "service.deleted", v 1, ServiceRemoval, Outcome,
        producers [by(ServiceDeployer)], consumer None;
    /// A revision of the function serves traffic.
    ServiceReady = "service.ready", v 1, ServiceReadiness, Outcome,
        producers [by(ServiceDeployer)], consumer None;
    /// A revision of the function did not become ready.
    ServiceFailed = "service.failed", v 1, ServiceFailure, Outcome,
        producers [by(ServiceDeployer)], consumer None;
    /// The serving revision's process ended (over its memory limit, exited, or hung) and was
    /// started again.
    ServiceRestarted = "service.restarted", v 1, ServiceRestart, Progress,
        producers [by(ServiceDeployer)], consumer None;
    /// A function's folded status changed. The status reporter never replies to this type, so
    /// its catch-all Trigger cannot loop.
    StatusUpdated = "status.updated", v 1, FunctionStatus, Outcome,
        producers [by(StatusReporter)], consumer None;
    /// A probe sent through the broker to prove the event path works end to end.
    HealthCheck = "health.check", v 1, HealthProbe, Request,
        producers [Client], consumer None;
}

/// Whether `ty` is the platform's to send: every `io.knative.lambda.*` type, and what the
/// Kubernetes sources report (`crate::external`). A user's function may not emit one: its reply
/// would reach the stages as if the platform had sent it.
pub fn is_platform_type(ty: &str) -> bool {
    ty.starts_with(TYPE_PREFIX) || crate::external::APISERVER_EVENT_TYPES.contains(&ty)
}

/// The catalogue entry for a type name, if the type is known.
pub fn find(type_name: &str) -> Option<&'static EventSpec> {
    CATALOGUE.iter().find(|spec| spec.type_name == type_name)
}

/// The types a stage consumes.
pub fn consumed_by(stage: Stage) -> impl Iterator<Item = &'static EventSpec> {
    CATALOGUE
        .iter()
        .filter(move |spec| spec.consumer == Some(stage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_the_seed_catalogue_and_the_extras() {
        let seeds = [
            "function.created",
            "function.updated",
            "function.deleted",
            "build.started",
            "build.completed",
            "build.failed",
            "build.timeout",
            "build.cancelled",
            "build.stopped",
            "service.created",
            "service.updated",
            "service.deleted",
            "status.updated",
            "health.check",
            "parser.started",
            "parser.completed",
            "parser.failed",
        ];
        let extras = [
            "context.uploaded",
            "build.cancel",
            "function.rollback",
            "service.ready",
            "service.failed",
            "service.restarted",
        ];
        for suffix in seeds.iter().chain(&extras) {
            let full = format!("{TYPE_PREFIX}{suffix}");
            assert!(find(&full).is_some(), "{full} missing from the catalogue");
        }
        assert_eq!(CATALOGUE.len(), seeds.len() + extras.len());
    }

    #[test]
    fn type_names_are_unique_and_prefixed() {
        let mut names: Vec<_> = CATALOGUE.iter().map(|s| s.type_name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len());
        assert!(names.iter().all(|n| n.starts_with(TYPE_PREFIX)));
    }

    #[test]
    fn every_consumed_type_has_a_producer_other_than_its_consumer() {
        for spec in CATALOGUE {
            if let Some(consumer) = spec.consumer {
                assert!(
                    spec.producers
                        .iter()
                        .any(|p| *p != Producer::Stage(consumer)),
                    "{} is consumed by {consumer:?} but only {consumer:?} produces it: a loop",
                    spec.type_name
                );
            }
        }
    }

    #[test]
    fn the_status_reporter_consumes_nothing_exclusively() {
        assert_eq!(consumed_by(Stage::StatusReporter).count(), 0);
    }
}
