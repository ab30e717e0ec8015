//! Stage configuration from the environment (what Knative injects: `PORT`, `K_SINK`, …) and
//! command-line flags, validated at start: one error lists every bad or missing setting.
//!
//! Settings are read through [`ConfigSource`] so tests pass a map and never touch the process
//! environment. Secrets are [`Secret`]s, which never print.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use url::Url;

use crate::listen::ConnectionLimits;
use crate::signing::{EventKeys, MIN_KEY_BYTES};

/// Where settings come from.
pub trait ConfigSource {
    /// The raw value of `key`, if set.
    fn get(&self, key: &str) -> Option<String>;

    /// The value of `key` trimmed, if set and not blank: what a setting with a default reads.
    fn setting(&self, key: &str) -> Option<String> {
        self.get(key)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }
}

/// The process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct Env;

impl ConfigSource for Env {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl ConfigSource for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

impl<const N: usize> ConfigSource for [(&str, &str); N] {
    fn get(&self, key: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| (*v).to_owned())
    }
}

/// Flags layered over another source: `--port 9000` overrides `PORT`.
#[derive(Debug, Clone)]
pub struct WithFlags<S> {
    flags: HashMap<String, String>,
    base: S,
}

/// The flags a stage binary takes, and the setting each one overrides.
pub const FLAGS: &[(&str, &str, &str)] = &[
    ("--port", "PORT", "TCP port to listen on (default 8080)"),
    (
        "--sink",
        "K_SINK",
        "broker ingress URL for side events (http://…)",
    ),
    (
        "--body-limit-bytes",
        "KLAMBDA_BODY_LIMIT_BYTES",
        "largest request body (default 1048576)",
    ),
    (
        "--shutdown-grace-seconds",
        "KLAMBDA_SHUTDOWN_GRACE_SECONDS",
        "how long SIGTERM waits for in-flight requests (default 30)",
    ),
    (
        "--log-format",
        "KLAMBDA_LOG_FORMAT",
        "json (default) or text",
    ),
    (
        "--otlp-endpoint",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTLP/gRPC endpoint for traces",
    ),
];

/// A setting a stage reads besides the harness's own ([`FLAGS`]): shown by `--help` and
/// `config show`, and checked against what the stage's code reads (`tests/boot.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageSetting {
    /// The environment variable.
    pub name: &'static str,
    /// What it does, its values.
    pub help: &'static str,
    /// The value used when it is unset, if any.
    pub default: Option<&'static str>,
    /// Never printed (`config show` redacts it).
    pub secret: bool,
}

impl StageSetting {
    /// A setting without a default.
    pub const fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            default: None,
            secret: false,
        }
    }

    /// With the value used when it is unset.
    pub const fn default(self, value: &'static str) -> Self {
        Self {
            default: Some(value),
            ..self
        }
    }

    /// Redacted by `config show`.
    pub const fn secret(self) -> Self {
        Self {
            secret: true,
            ..self
        }
    }
}

/// What every serving binary reads besides its own settings (each stage, `klambda up`, the
/// webhook gateway): its logs and traces, and its connection limits
/// ([`Settings::telemetry`]).
pub const SERVING_SETTINGS: &[StageSetting] = &[
    StageSetting::new("KLAMBDA_LOG_FORMAT", "log format: json or text").default("json"),
    StageSetting::new("RUST_LOG", "log filter (tracing's EnvFilter)").default("info"),
    StageSetting::new(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTLP/gRPC endpoint for traces (unset: no traces exported)",
    ),
    StageSetting::new(
        "OTEL_EXPORTER_OTLP_HEADERS",
        "key=value pairs sent with every export, comma-separated",
    )
    .secret(),
    StageSetting::new(
        HEADER_TIMEOUT,
        "seconds a client may take to send a request's headers (also the idle keep-alive limit)",
    )
    .default("10"),
    StageSetting::new(BODY_TIMEOUT, "seconds a client may take to send a body").default("30"),
    StageSetting::new(MAX_CONNECTIONS, "connections served at once").default("2048"),
];

/// The keys internal events are signed and checked with: every stage requires one of them.
pub const EVENT_KEY_SETTINGS: &[StageSetting] = &[
    StageSetting::new(
        EVENT_KEYS,
        "required (or KLAMBDA_EVENT_KEYS_FILE): keys internal events are signed and checked with, the signing key first",
    )
    .secret(),
    StageSetting::new(EVENT_KEYS_FILE, "a file holding KLAMBDA_EVENT_KEYS"),
];

/// Where a stage keeps build contexts and records: `klambda_storage::from_settings`.
pub const STORE_SETTINGS: &[StageSetting] = &[
    StageSetting::new(
        "KLAMBDA_STORE",
        "where contexts and build records are: s3://bucket or a directory",
    )
    .default("klambda-store"),
    StageSetting::new(
        "KLAMBDA_STORE_DIR",
        "the directory store (older name of KLAMBDA_STORE)",
    ),
    StageSetting::new(
        "KLAMBDA_S3_ENDPOINT",
        "S3-compatible endpoint (MinIO, Garage, …); unset: AWS",
    ),
    StageSetting::new(
        "KLAMBDA_S3_REGION",
        "S3 region (unset: the AWS configuration's, else us-east-1)",
    ),
];

/// What the command line asked for.
#[derive(Debug)]
pub enum Command<S> {
    /// Run with these settings.
    Run(WithFlags<S>),
    /// Print the usage and exit.
    Help,
    /// Print every setting with its value (secrets redacted) and exit.
    ShowConfig(WithFlags<S>),
}

impl<S: ConfigSource> WithFlags<S> {
    /// Parses `args` (without the program name) over `base`.
    pub fn parse(
        args: impl IntoIterator<Item = String>,
        base: S,
    ) -> Result<Command<S>, ConfigError> {
        let mut flags = HashMap::new();
        let mut problems = Vec::new();
        let args: Vec<String> = args.into_iter().collect();
        if args == ["config", "show"] {
            return Ok(Command::ShowConfig(Self { flags, base }));
        }
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "--help" || arg == "-h" {
                return Ok(Command::Help);
            }
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (arg.clone(), None),
            };
            let Some((_, key, _)) = FLAGS.iter().find(|(flag, _, _)| *flag == name) else {
                problems.push(format!("unknown argument {arg:?}; see --help"));
                continue;
            };
            match inline.or_else(|| args.next()) {
                Some(value) => {
                    flags.insert((*key).to_owned(), value);
                }
                None => problems.push(format!("{name} needs a value")),
            }
        }
        if problems.is_empty() {
            Ok(Command::Run(Self { flags, base }))
        } else {
            Err(ConfigError { problems })
        }
    }
}

impl<S: ConfigSource> ConfigSource for WithFlags<S> {
    fn get(&self, key: &str) -> Option<String> {
        self.flags.get(key).cloned().or_else(|| self.base.get(key))
    }
}

/// The usage text of a stage binary reading `settings` besides the harness's own.
pub fn usage(stage: &str, settings: &[StageSetting]) -> String {
    let mut text = format!(
        "{stage}: a knative-lambda stage. Serves CloudEvents on POST /, with /health, /ready, /metrics.\n\
         Runs as an AWS Lambda when AWS_LAMBDA_RUNTIME_API is set.\n\n\
         Usage: {stage} [FLAGS]      serve\n       {stage} config show  print every setting (secrets redacted)\n\n\
         Flags (each overrides its environment variable):\n"
    );
    for (flag, key, help) in FLAGS {
        text.push_str(&format!("  {flag:<26} {key:<32} {help}\n"));
    }
    if !settings.is_empty() {
        text.push_str(&format!("\n{stage} settings (environment):\n"));
        text.push_str(&describe(settings));
    }
    text.push_str("\nAlso (environment):\n");
    text.push_str(&describe(&beyond_flags().collect::<Vec<_>>()));
    text
}

/// The harness's settings that no flag sets: the serving settings and the event keys.
fn beyond_flags() -> impl Iterator<Item = StageSetting> {
    SERVING_SETTINGS
        .iter()
        .chain(EVENT_KEY_SETTINGS)
        .filter(|s| !FLAGS.iter().any(|(_, key, _)| *key == s.name))
        .copied()
}

/// One line per setting: its name, what it does, its default, and whether it is a secret.
pub fn describe(settings: &[StageSetting]) -> String {
    let mut text = String::new();
    for setting in settings {
        let default = setting
            .default
            .map(|d| format!(" (default {d})"))
            .unwrap_or_default();
        let secret = if setting.secret { " (secret)" } else { "" };
        text.push_str(&format!(
            "  {:<40} {}{default}{secret}\n",
            setting.name, setting.help
        ));
    }
    text
}

/// Every setting of a stage reading `settings`, one `NAME=value` line each: its value from
/// `source`, else `<default: …>` or `<unset>`; secrets as `<redacted>` when set.
pub fn show(source: &dyn ConfigSource, settings: &[StageSetting]) -> String {
    let flagged = FLAGS.iter().map(|(_, key, _)| StageSetting::new(key, ""));
    let common = flagged.chain(beyond_flags());
    let mut text = String::new();
    for setting in common.chain(settings.iter().copied()) {
        let value = match (source.setting(setting.name), setting.default) {
            (Some(_), _) if setting.secret => "<redacted>".to_owned(),
            (Some(value), _) => value,
            (None, Some(default)) => format!("<default: {default}>"),
            (None, None) => "<unset>".to_owned(),
        };
        text.push_str(&format!("{}={value}\n", setting.name));
    }
    text
}

/// The text of the secret file `path` (trimmed), or, when there is none, 32 random bytes as hex
/// written there first, readable by its owner only (mode 0600): how `klambda up` keeps its event
/// key and API token in its data directory across restarts.
pub fn secret_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::read_to_string(path) {
        Ok(text) => return Ok(text.trim().to_owned()),
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        Err(_) => {}
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let secret = hex::encode(bytes);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(format!("{secret}\n").as_bytes())?;
    file.sync_all()?;
    Ok(secret)
}

/// A value that must never appear in logs or error messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (production).
    Json,
    /// Human-readable lines (local runs).
    Text,
}

/// A stage's validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The port to listen on.
    pub port: u16,
    /// Where side events go; none means they are dropped.
    pub sink: Option<Url>,
    /// The largest request body accepted.
    pub body_limit: usize,
    /// How long SIGTERM waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// The log format.
    pub log_format: LogFormat,
    /// The log filter (`RUST_LOG` syntax).
    pub log_filter: String,
    /// Where to export traces, if anywhere.
    pub otlp_endpoint: Option<Url>,
    /// Headers for the OTLP exporter (often an API key).
    pub otlp_headers: Option<Secret>,
    /// Set when running inside AWS Lambda.
    pub lambda_runtime_api: Option<String>,
    /// The keys internal events are signed and checked with (required of a stage binary).
    pub event_keys: Option<EventKeys>,
    /// Header and body deadlines and the connection cap of the HTTP server.
    pub connections: ConnectionLimits,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            port: 8080,
            sink: None,
            body_limit: 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
            log_format: LogFormat::Json,
            log_filter: "info".into(),
            otlp_endpoint: None,
            otlp_headers: None,
            lambda_runtime_api: None,
            event_keys: None,
            connections: ConnectionLimits::default(),
        }
    }
}

/// Every problem with the configuration, listed together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n  - {}", problems.join("\n  - "))]
pub struct ConfigError {
    /// One line per problem, naming the setting.
    pub problems: Vec<String>,
}

/// The platform's event keys (see [`crate::signing`]): `KLAMBDA_EVENT_KEYS` (from a Secret), or
/// the file `KLAMBDA_EVENT_KEYS_FILE` names; one is required, since a stage that cannot sign
/// or check internal events would trust anyone who reaches the broker.
fn read_event_keys(source: &impl ConfigSource) -> Result<EventKeys, String> {
    if let Some(keys) = source.setting(EVENT_KEYS) {
        // Never echo the value.
        return EventKeys::parse(&keys).map_err(|e| format!("{EVENT_KEYS}: {e} (value not shown)"));
    }
    if let Some(path) = source.setting(EVENT_KEYS_FILE) {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("{EVENT_KEYS_FILE}={path:?} cannot be read: {e}"))?;
        return EventKeys::parse(&text)
            .map_err(|e| format!("{EVENT_KEYS_FILE}={path:?}: {e} (value not shown)"));
    }
    Err(format!(
        "{EVENT_KEYS} (or {EVENT_KEYS_FILE}) is required: the keys internal events are signed \
         and checked with, at least {MIN_KEY_BYTES} bytes each, the signing key first \
         (docs/SECURITY.md)"
    ))
}

/// How long a client may take to send a request's headers (and a connection may stay idle).
pub const HEADER_TIMEOUT: &str = "KLAMBDA_HEADER_TIMEOUT_SECONDS";
/// How long a client may take to send a request's body.
pub const BODY_TIMEOUT: &str = "KLAMBDA_BODY_TIMEOUT_SECONDS";
/// How many connections are served at once.
pub const MAX_CONNECTIONS: &str = "KLAMBDA_MAX_CONNECTIONS";

/// The setting holding the event keys.
pub const EVENT_KEYS: &str = "KLAMBDA_EVENT_KEYS";
/// The setting naming a file holding the event keys.
pub const EVENT_KEYS_FILE: &str = "KLAMBDA_EVENT_KEYS_FILE";

/// Reads the connection settings (`KLAMBDA_HEADER_TIMEOUT_SECONDS`,
/// `KLAMBDA_BODY_TIMEOUT_SECONDS`, `KLAMBDA_MAX_CONNECTIONS`) into `limits`, adding each bad one
/// to `problems`.
fn read_connections(
    source: &impl ConfigSource,
    limits: &mut ConnectionLimits,
    problems: &mut Vec<String>,
) {
    let non_empty = |key: &str| source.get(key).filter(|v| !v.trim().is_empty());
    let seconds = |key: &str, problems: &mut Vec<String>| {
        let value = non_empty(key)?;
        match value.trim().parse::<u64>() {
            Ok(n) if (1..=3600).contains(&n) => Some(Duration::from_secs(n)),
            _ => {
                problems.push(format!(
                    "{key}={value:?} must be whole seconds from 1 to 3600"
                ));
                None
            }
        }
    };
    if let Some(d) = seconds(HEADER_TIMEOUT, problems) {
        limits.header_read = d;
    }
    if let Some(d) = seconds(BODY_TIMEOUT, problems) {
        limits.body_read = d;
    }
    if let Some(max) = non_empty(MAX_CONNECTIONS) {
        match max.trim().parse::<usize>() {
            Ok(n) if (1..=1_000_000).contains(&n) => limits.max_connections = n,
            _ => problems.push(format!(
                "{MAX_CONNECTIONS}={max:?} must be a count from 1 to 1000000"
            )),
        }
    }
}

/// Reads the telemetry settings (`KLAMBDA_LOG_FORMAT`, `RUST_LOG`, `OTEL_EXPORTER_OTLP_ENDPOINT`,
/// `OTEL_EXPORTER_OTLP_HEADERS`) into `settings`, adding each bad one to `problems`.
fn read_telemetry(source: &impl ConfigSource, settings: &mut Settings, problems: &mut Vec<String>) {
    let non_empty = |key: &str| source.get(key).filter(|v| !v.trim().is_empty());
    match non_empty("KLAMBDA_LOG_FORMAT").as_deref().map(str::trim) {
        None | Some("json") => {}
        Some("text") => settings.log_format = LogFormat::Text,
        Some(other) => problems.push(format!("KLAMBDA_LOG_FORMAT={other:?} must be json or text")),
    }
    if let Some(filter) = non_empty("RUST_LOG") {
        match tracing_subscriber::EnvFilter::try_new(&filter) {
            Ok(_) => settings.log_filter = filter,
            Err(e) => problems.push(format!("RUST_LOG={filter:?} is not a log filter: {e}")),
        }
    }
    if let Some(endpoint) = non_empty("OTEL_EXPORTER_OTLP_ENDPOINT") {
        match Url::parse(endpoint.trim()) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {
                settings.otlp_endpoint = Some(url)
            }
            _ => problems.push(format!(
                "OTEL_EXPORTER_OTLP_ENDPOINT={endpoint:?} must be an http:// or https:// URL"
            )),
        }
    }
    if let Some(headers) = non_empty("OTEL_EXPORTER_OTLP_HEADERS") {
        let well_formed = headers.split(',').all(|pair| {
            pair.split_once('=')
                .is_some_and(|(k, _)| !k.trim().is_empty())
        });
        if well_formed {
            settings.otlp_headers = Some(Secret::new(headers));
        } else {
            // Never echo the value: it usually holds an API key.
            problems.push(
                    "OTEL_EXPORTER_OTLP_HEADERS must be key=value pairs separated by commas (value not shown)"
                        .into(),
                );
        }
    }
}

impl Settings {
    /// `defaults` with the telemetry settings of `source` (log format and filter, OTLP endpoint
    /// and headers) and its connection limits applied, each validated: for binaries that are not
    /// stages (`klambda up`, the webhook gateway) but log, trace and serve the same way.
    pub fn telemetry(source: &impl ConfigSource, defaults: Settings) -> Result<Self, ConfigError> {
        let mut settings = defaults;
        let mut problems = Vec::new();
        read_telemetry(source, &mut settings, &mut problems);
        read_connections(source, &mut settings.connections, &mut problems);
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Reads and validates every setting from `source`.
    pub fn from_source(source: &impl ConfigSource) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let mut settings = Settings::default();
        let non_empty = |key: &str| source.get(key).filter(|v| !v.trim().is_empty());

        if let Some(port) = non_empty("PORT") {
            match port.trim().parse::<u16>() {
                Ok(p) => settings.port = p,
                Err(_) => problems.push(format!("PORT={port:?} is not a port number (0-65535)")),
            }
        }
        if let Some(sink) = non_empty("K_SINK") {
            match Url::parse(sink.trim()) {
                Ok(url) if url.scheme() == "http" && url.host().is_some() => settings.sink = Some(url),
                Ok(url) => problems.push(format!(
                    "K_SINK={url} must be an http:// URL with a host (the in-cluster broker ingress)"
                )),
                Err(e) => problems.push(format!("K_SINK={sink:?} is not a URL: {e}")),
            }
        }
        if let Some(limit) = non_empty("KLAMBDA_BODY_LIMIT_BYTES") {
            match limit.trim().parse::<usize>() {
                Ok(n) if (1024..=64 * 1024 * 1024).contains(&n) => settings.body_limit = n,
                _ => problems.push(format!(
                    "KLAMBDA_BODY_LIMIT_BYTES={limit:?} must be a byte count from 1024 to 67108864"
                )),
            }
        }
        if let Some(grace) = non_empty("KLAMBDA_SHUTDOWN_GRACE_SECONDS") {
            match grace.trim().parse::<u64>() {
                Ok(n) if n <= 3600 => settings.shutdown_grace = Duration::from_secs(n),
                _ => problems.push(format!(
                    "KLAMBDA_SHUTDOWN_GRACE_SECONDS={grace:?} must be whole seconds from 0 to 3600"
                )),
            }
        }
        read_telemetry(source, &mut settings, &mut problems);
        settings.lambda_runtime_api = non_empty("AWS_LAMBDA_RUNTIME_API");
        read_connections(source, &mut settings.connections, &mut problems);
        match read_event_keys(source) {
            Ok(keys) => settings.event_keys = Some(keys),
            Err(problem) => problems.push(problem),
        }

        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigError { problems })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_KEY: &str = "a-test-event-key-of-at-least-32-bytes";

    #[test]
    fn event_keys_are_required_and_never_echoed() {
        let missing = Settings::from_source(&[("UNRELATED", "1")]).unwrap_err();
        assert!(
            missing
                .problems
                .iter()
                .any(|p| p
                    .starts_with("KLAMBDA_EVENT_KEYS (or KLAMBDA_EVENT_KEYS_FILE) is required")),
            "{missing}"
        );
        let short = Settings::from_source(&[(EVENT_KEYS, "hunter2")]).unwrap_err();
        assert!(short.to_string().contains("at least 32"), "{short}");
        assert!(!short.to_string().contains("hunter2"), "{short}");
        let file =
            std::env::temp_dir().join(format!("klambda-keys-setting-{}", std::process::id()));
        std::fs::write(&file, format!("{TEST_KEY}\n")).unwrap();
        let from_file =
            Settings::from_source(&[(EVENT_KEYS_FILE, file.to_str().unwrap())]).unwrap();
        assert_eq!(from_file.event_keys, EventKeys::parse(TEST_KEY).ok());
        let _ = std::fs::remove_file(&file);
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let settings =
            Settings::from_source(&[("UNRELATED", "1"), (EVENT_KEYS, TEST_KEY)]).unwrap();
        assert_eq!(settings.port, 8080);
        assert_eq!(settings.body_limit, 1024 * 1024);
        assert!(settings.sink.is_none());
        assert_eq!(settings.log_format, LogFormat::Json);
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let error = Settings::from_source(&[
            ("PORT", "eighty"),
            ("K_SINK", "ftp://broker"),
            ("KLAMBDA_BODY_LIMIT_BYTES", "12"),
            ("KLAMBDA_LOG_FORMAT", "xml"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "nope"),
            (EVENT_KEYS, TEST_KEY),
        ])
        .unwrap_err();
        assert_eq!(error.problems.len(), 5, "{error}");
        for key in [
            "PORT",
            "K_SINK",
            "KLAMBDA_BODY_LIMIT_BYTES",
            "KLAMBDA_LOG_FORMAT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ] {
            assert!(
                error.to_string().contains(key),
                "{key} missing from {error}"
            );
        }
    }

    #[test]
    fn secrets_never_print() {
        let settings = Settings::from_source(&[
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=hunter2"),
            (EVENT_KEYS, TEST_KEY),
        ])
        .unwrap();
        assert!(!format!("{settings:?}").contains("hunter2"));
        assert_eq!(
            settings.otlp_headers.as_ref().map(Secret::expose),
            Some("api-key=hunter2")
        );

        let error =
            Settings::from_source(&[("OTEL_EXPORTER_OTLP_HEADERS", "hunter2")]).unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    #[test]
    fn flags_override_the_environment() {
        let args = ["--port", "9001", "--sink=http://broker.local/ns/b"].map(String::from);
        let Command::Run(source) =
            WithFlags::parse(args, [("PORT", "8081"), (EVENT_KEYS, TEST_KEY)]).unwrap()
        else {
            panic!("expected Run");
        };
        let settings = Settings::from_source(&source).unwrap();
        assert_eq!(settings.port, 9001);
        assert_eq!(settings.sink.unwrap().as_str(), "http://broker.local/ns/b");
    }

    #[test]
    fn unknown_flags_and_missing_values_are_problems() {
        let args = ["--colour", "red", "--port"].map(String::from);
        let error = WithFlags::parse(args, Env).unwrap_err();
        assert_eq!(error.problems.len(), 3, "{error}");
        assert!(matches!(
            WithFlags::parse(["--help".to_owned()], Env),
            Ok(Command::Help)
        ));
    }
}
