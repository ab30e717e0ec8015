//! Event types the platform consumes but does not define: Knative's ApiServerSource reports
//! (Resource mode) of the objects the cluster stages create. Their data is the Kubernetes object
//! itself, so there is no schema of ours; they are named here so that no other crate spells a
//! type string (`tests/tidy.rs`), and their consumers are listed so the choreography test can
//! check the Triggers that carry them (`tests/contract.rs`).

use crate::catalogue::Stage;

/// An object was added (or listed again after the source restarted).
pub const APISERVER_RESOURCE_ADD: &str = "dev.knative.apiserver.resource.add";
/// An object changed.
pub const APISERVER_RESOURCE_UPDATE: &str = "dev.knative.apiserver.resource.update";

/// The ApiServerSource event types a cluster stage reacts to; the object is the event's data.
pub const APISERVER_EVENT_TYPES: [&str; 2] = [APISERVER_RESOURCE_ADD, APISERVER_RESOURCE_UPDATE];

/// The stages that consume ApiServerSource events, each through Triggers filtered by the
/// `klambdakind` extension of its source.
pub const APISERVER_CONSUMERS: [Stage; 2] = [Stage::JobLauncher, Stage::ServiceDeployer];

/// The type of an invocation a client sends a function (`klambda invoke`): directly to the
/// function, or through the broker (`klambda invoke --async`), where it carries
/// [`INVOKE_FUNCTION_EXTENSION`] naming the function.
pub const INVOKE: &str = "klambda.invoke";

/// The extension attribute that addresses an asynchronous invocation to one function: every
/// function has a Trigger on the broker filtered on [`INVOKE`] and this attribute = its name.
pub const INVOKE_FUNCTION_EXTENSION: &str = "klambdafunction";
