//! The function a user submits ([`FunctionSubmission`]) and the normalised form the parser
//! hands to the rest of the pipeline ([`FunctionSpec`]).
//!
//! The submission is deliberately loose (plain strings, optional sections) so the parser can
//! report every problem at once; the spec is strict (newtypes, defaults filled in) so no later
//! stage validates again.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{FunctionName, Runtime};

/// Unknown fields, kept so that an older stage forwards what a newer producer added.
pub type Extra = BTreeMap<String, Value>;

/// The data of `function.created` and `function.updated`: what a user hands over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionSubmission {
    /// The function's name (DNS-1123 label, at most 63 characters).
    pub name: String,
    /// The runtime id, e.g. `nodejs22` or `python3.12`.
    pub runtime: String,
    /// The entry point, in the runtime's form (`index.handler`, `app.handler`, …).
    pub handler: String,
    /// Where the code is.
    pub source: SourceSubmission,
    /// Environment variables for the running function.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Secret environment variables, by reference: variable name → secret name. Only the names
    /// travel; the value is read where the function starts (`klambda secrets set` on one
    /// machine, the `klambda-function-secrets` Secret on a cluster) and appears nowhere else.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// Resources of one instance; defaults apply when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesSubmission>,
    /// Autoscaling bounds; defaults apply when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingSubmission>,
    /// Build settings; defaults apply when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildSubmission>,
    /// The events the function subscribes to: one broker Trigger per entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<TriggerFilter>,
    /// How the broker delivers to the function's Triggers; absent: the platform Broker's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
    /// Fields this version does not know, kept.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Where a submitted function's code is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum SourceSubmission {
    /// Files carried in the event itself (small functions).
    Inline {
        /// The files, each with a relative path.
        files: Vec<InlineFile>,
    },
    /// An archive or prefix in S3-compatible storage: `s3://bucket/key`.
    S3 {
        /// The `s3://bucket/key` URL.
        url: String,
    },
    /// A git repository over https at a ref (branch, tag or commit).
    Git {
        /// The `https://` clone URL.
        url: String,
        /// The branch, tag or commit to build. Pin a commit for reproducible digests.
        #[serde(rename = "ref")]
        reference: String,
    },
    /// A tar.gz or zip archive over https, pinned by the sha256 of its bytes.
    Archive {
        /// The `https://` URL of the archive.
        url: String,
        /// The lowercase hex sha256 of the archive; a download that differs is refused.
        sha256: String,
    },
}

/// One file of an inline source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InlineFile {
    /// Relative path inside the function's directory, `/`-separated.
    pub path: String,
    /// The content, as text or base64 according to `encoding`.
    pub content: String,
    /// How `content` is encoded; UTF-8 text by default.
    #[serde(default)]
    pub encoding: ContentEncoding,
}

/// The encoding of an inline file's content.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContentEncoding {
    /// UTF-8 text.
    #[default]
    Utf8,
    /// Standard base64 (RFC 4648) of arbitrary bytes.
    Base64,
}

/// Submitted resources; absent fields take the defaults of [`Resources`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSubmission {
    /// Memory of one instance in MiB (128–10240).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<i64>,
    /// CPU of one instance in millicores (50–8000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<i64>,
    /// Longest time one invocation may take, in seconds (1–900).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
}

/// Submitted autoscaling bounds; absent fields take the defaults of [`Scaling`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingSubmission {
    /// Fewest instances (0–100; 0 scales to zero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_scale: Option<i64>,
    /// Most instances (1–1000, at least `minScale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_scale: Option<i64>,
    /// Requests one instance serves at once (0 = unlimited, up to 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<i64>,
    /// Seconds without a request before the last instance stops (1–3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_to_zero_after_seconds: Option<i64>,
}

/// Submitted build settings; absent fields take the defaults of [`BuildSettings`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildSubmission {
    /// Deadline of one build in seconds (60–3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
}

/// One Trigger of a function: exact-match CloudEvent attributes, as the RabbitMQ broker
/// implements them (`spec.filter.attributes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerFilter {
    /// Attribute name → the exact value it must have. Every listed attribute must match.
    pub attributes: BTreeMap<String, String>,
    /// The type of the function's reply to these events on the bus; absent: the runtime's
    /// `<input type>.response`. Never a platform type (`io.knative.lambda.*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_type: Option<String>,
    /// How many of these events are delivered to the function at once (1–1000); absent: 1,
    /// which keeps their order. The RabbitMQ Broker's `rabbitmq.eventing.knative.dev/parallelism`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i64>,
    /// Anything else (such as `filters`) is refused by the parser, never silently ignored.
    #[serde(flatten)]
    pub extra: Extra,
}

/// How the broker delivers events to a function's Triggers: a Knative Trigger's
/// `spec.delivery`, in Knative's own field names and formats, mapped 1:1 to it on a cluster and
/// applied by the same delivery loop on one machine. 5xx answers and timeouts are retried with
/// backoff; other 4xx answers and exhausted retries go to the platform's dead letters, with
/// `knativeerror*` attributes. Fields left out take Knative's defaults (10 retries, exponential,
/// `PT0.2S`, no timeout), as on a Trigger that sets a `delivery` of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySpec {
    /// Retries after the first attempt (at most 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<u32>,
    /// `linear` (the wait before retry n is `backoffDelay × n`) or `exponential`
    /// (`backoffDelay × 2^n`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_policy: Option<String>,
    /// The base wait, an ISO 8601 duration such as `PT0.2S` (at most `PT1H`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_delay: Option<String>,
    /// How long one attempt may take, an ISO 8601 duration (at most `PT15M`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Anything else (such as `deadLetterSink`: function dead letters always go to the
    /// platform's) is refused by the parser.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The name of a function's `index`-th Trigger, in every mode (the Knative Trigger, the
/// RabbitMQ queue, the in-memory route): `fn-<name>-<index>`, shortened with a hash when that
/// would pass the 63 characters of a Kubernetes name.
pub fn trigger_name(function: &FunctionName, index: usize) -> String {
    named_trigger(function, &index.to_string())
}

/// The name of a function's invocation Trigger (asynchronous invocations through the broker,
/// [`crate::external::INVOKE`]): `fn-<name>-async`, shortened as [`trigger_name`] is.
pub fn invocation_trigger_name(function: &FunctionName) -> String {
    named_trigger(function, "async")
}

/// Retries of an asynchronous invocation when the function sets no `delivery`: Lambda's
/// default for asynchronous invocations.
pub const INVOCATION_RETRIES: u32 = 2;

/// Asynchronous invocations of one function delivered at once, as Lambda runs them side by side.
pub const INVOCATION_PARALLELISM: u32 = 10;

fn named_trigger(function: &FunctionName, suffix: &str) -> String {
    let name = format!("fn-{function}-{suffix}");
    if name.len() <= 63 {
        return name;
    }
    let hash = hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(name.as_bytes())[..4]);
    let keep = &function.as_str()[..63 - 3 - 1 - 8 - 1 - suffix.len()];
    format!("fn-{}-{hash}-{suffix}", keep.trim_end_matches('-'))
}

/// Env names a function may not set: the platform or the runtime shim sets them, or they change
/// how the runtime itself starts (a preloaded library, interpreter options, module search
/// paths, a startup script). Part of the contract: the parser refuses them and every stage
/// that runs a spec checks again (a spec on the broker may not come from the parser).
pub const RESERVED_ENV: &[&str] = &[
    "PORT",
    "PATH",
    "HOME",
    "_HANDLER",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
    "NODE_OPTIONS",
    "NODE_PATH",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PYTHONHOME",
    "BASH_ENV",
];

/// Prefixes of env names a function may not set (the platform's, Knative's, Lambda's).
pub const RESERVED_ENV_PREFIXES: &[&str] = &["K_", "KLAMBDA_", "AWS_LAMBDA_", "KNATIVE_"];

/// Whether a function may not set the env name `name` (see [`RESERVED_ENV`]).
pub fn is_reserved_env(name: &str) -> bool {
    RESERVED_ENV.contains(&name) || RESERVED_ENV_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Whether `name` may name a secret: a DNS label (1 to 63 of `a-z`, `0-9` and `-`, starting and
/// ending with a letter or digit), so it is also a file name and a Kubernetes Secret key.
pub fn is_secret_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// The normalised function: validated, defaults filled in, source in canonical form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionSpec {
    /// The function's name.
    pub name: FunctionName,
    /// The runtime.
    pub runtime: Runtime,
    /// The entry point, validated for the runtime's form.
    pub handler: String,
    /// The code, normalised.
    pub source: Source,
    /// Environment variables, sorted by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Secret environment variables by reference (variable name → secret name), never values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// Resources of one instance.
    pub resources: Resources,
    /// Autoscaling bounds.
    pub scaling: Scaling,
    /// Build settings.
    pub build: BuildSettings,
    /// The function's Triggers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<TriggerFilter>,
    /// How the broker delivers to them (validated); absent: the platform Broker's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
    /// Fields of the submission this version does not know, kept.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A normalised source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Source {
    /// Inline files sorted by path, with normalised paths.
    Inline {
        /// The files.
        files: Vec<InlineFile>,
    },
    /// An object or prefix in S3-compatible storage.
    S3 {
        /// The bucket.
        bucket: String,
        /// The key (or prefix ending in `/`).
        key: String,
    },
    /// A git repository.
    Git {
        /// The normalised `https://` URL.
        url: String,
        /// The ref to build.
        #[serde(rename = "ref")]
        reference: String,
    },
    /// An archive over https, pinned by its sha256.
    Archive {
        /// The normalised `https://` URL.
        url: String,
        /// The lowercase hex sha256 of the archive.
        sha256: String,
    },
}

/// Resources of one instance of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Memory in MiB.
    pub memory_mib: u32,
    /// CPU in millicores.
    pub cpu_millis: u32,
    /// Invocation timeout in seconds.
    pub timeout_seconds: u32,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            memory_mib: 256,
            cpu_millis: 250,
            timeout_seconds: 30,
        }
    }
}

/// Autoscaling bounds of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scaling {
    /// Fewest instances.
    pub min_scale: u32,
    /// Most instances.
    pub max_scale: u32,
    /// Concurrent requests per instance (0 = unlimited).
    pub concurrency: u32,
    /// Seconds without a request before the last instance stops (Knative's scale-to-zero
    /// retention); with `minScale` above 0 that many stay.
    #[serde(default = "default_scale_to_zero_after")]
    pub scale_to_zero_after_seconds: u32,
}

/// The idle time before a function's last instance stops, when none is submitted.
pub const SCALE_TO_ZERO_AFTER_SECONDS: u32 = 60;

fn default_scale_to_zero_after() -> u32 {
    SCALE_TO_ZERO_AFTER_SECONDS
}

impl Default for Scaling {
    fn default() -> Self {
        Self {
            min_scale: 0,
            max_scale: 10,
            concurrency: 0,
            scale_to_zero_after_seconds: SCALE_TO_ZERO_AFTER_SECONDS,
        }
    }
}

/// Build settings of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildSettings {
    /// Build deadline in seconds.
    pub timeout_seconds: u32,
}

impl Default for BuildSettings {
    fn default() -> Self {
        Self {
            timeout_seconds: 900,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_names_fit_a_kubernetes_name() -> Result<(), crate::InvalidId> {
        assert_eq!(trigger_name(&FunctionName::new("hello")?, 0), "fn-hello-0");
        let long = FunctionName::new("a".repeat(63))?;
        for index in [0, 7, 12] {
            let name = trigger_name(&long, index);
            assert!(name.len() <= 63, "{name}");
            assert!(name.ends_with(&format!("-{index}")), "{name}");
        }
        assert!(invocation_trigger_name(&long).len() <= 63);
        assert_eq!(
            invocation_trigger_name(&FunctionName::new("hello")?),
            "fn-hello-async"
        );
        // Long names that differ stay apart.
        let other = FunctionName::new(format!("{}b", "a".repeat(62)))?;
        assert_ne!(trigger_name(&long, 0), trigger_name(&other, 0));
        Ok(())
    }
}
