//! What job-launcher and service-deployer share when they drive Kubernetes: how API failures
//! become a stage's answer, the labels every platform object carries, the in-cluster client,
//! and the ApiServerSource events that report what the cluster did.

use cloudevents::Event;
use serde::de::DeserializeOwned;

/// Labels and annotations the platform puts on the objects it creates.
pub mod labels {
    /// Marks every object the platform manages (the ApiServerSources select on it).
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// The value of [`MANAGED_BY`].
    pub const PLATFORM: &str = "knative-lambda";
    /// The component: `build` for Jobs, `function` for function Services and Triggers.
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    /// The function an object belongs to.
    pub const FUNCTION: &str = "lambda.knative.dev/function";
}

/// The CloudEvent extension the ApiServerSources add (`ceOverrides`), so Triggers route each
/// watched kind to its stage: eventing/sources/.
pub mod sources {
    /// The extension attribute.
    pub const EXTENSION: &str = "klambdakind";
    /// Build Jobs' changes, for job-launcher.
    pub const BUILD_JOB: &str = "build-job";
    /// Function Services' changes, for service-deployer.
    pub const FUNCTION_SERVICE: &str = "function-service";
}

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "knative-lambda";

/// The CloudEvent types an ApiServerSource (Resource mode) sends when an object is added or
/// changed; the object is the event's data. Defined by the contract.
pub use klambda_events::external::APISERVER_EVENT_TYPES;

/// Why the Kubernetes API refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The API answered with an error status (forbidden, invalid, conflict, …).
    #[error("the Kubernetes API refused {action}: {code} {reason}: {message}")]
    Refused {
        /// What was asked.
        action: String,
        /// HTTP status.
        code: u16,
        /// The Status reason.
        reason: String,
        /// The Status message.
        message: String,
    },
    /// The API could not be reached or answered 5xx.
    #[error("the Kubernetes API is unavailable for {action}: {source}")]
    Unavailable {
        /// What was asked.
        action: String,
        /// The client error.
        source: kube::Error,
    },
}

impl KubeError {
    /// Maps a client error of `action`.
    pub fn of(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        move |error| match error {
            kube::Error::Api(status) if (400..500).contains(&status.code) => Self::Refused {
                action: action.into(),
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            },
            source => Self::Unavailable {
                action: action.into(),
                source,
            },
        }
    }
}

/// The setting naming a kubeconfig file; see [`client`].
pub const KUBECONFIG: &str = "KUBECONFIG";

/// The Kubernetes client a stage runs as, for its `from_config`: the kubeconfig file
/// `kubeconfig` names (the value of [`KUBECONFIG`]: a stage run outside the cluster, or against
/// the fake API in `tests/boot.rs`), else the ServiceAccount the pod runs as
/// (`KUBERNETES_SERVICE_HOST` and the mounted token).
pub async fn client(kubeconfig: Option<&str>) -> Result<kube::Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("KUBECONFIG={path:?} cannot be read: {e}"))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("KUBECONFIG={path:?} is not usable: {e}"))?
        }
        None => kube::Config::incluster().map_err(|e| {
            format!(
                "no in-cluster Kubernetes configuration ({e}); outside a cluster set KUBECONFIG"
            )
        })?,
    };
    kube::Client::try_from(config).map_err(|e| format!("the Kubernetes client: {e}"))
}

/// The object an ApiServerSource event carries.
pub fn object_of<T: DeserializeOwned>(event: &Event) -> Result<T, String> {
    match event.data() {
        Some(cloudevents::Data::Json(value)) => serde_json::from_value(value.clone()),
        Some(cloudevents::Data::Binary(bytes)) => serde_json::from_slice(bytes),
        Some(cloudevents::Data::String(text)) => serde_json::from_str(text),
        None => return Err("the event carries no object".to_owned()),
    }
    .map_err(|e| format!("the event's object does not decode: {e}"))
}
