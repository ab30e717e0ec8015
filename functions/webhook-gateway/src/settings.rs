//! The gateway's settings: a JSON file (`--config F` or `KLAMBDA_WEBHOOK_CONFIG`) and the
//! environment on top of it (what Knative injects, and secrets from Kubernetes Secrets).
//! Every problem is listed at once; `show` prints them with secrets redacted.
//!
//! ```json
//! {"sink": "http://broker-ingress.knative-eventing.svc/ns/klambda", "port": 8080,
//!  "buildkite": {"token": "…", "signingKey": "…", "toleranceSeconds": 300},
//!  "github": {"secret": "…"},
//!  "bodyLimitBytes": 1048576, "rateLimit": {"perSecond": 2000, "burst": 4000},
//!  "retry": {"attempts": 3, "backoffMs": 100, "failureThreshold": 5, "openForSeconds": 30},
//!  "deadLetterDir": "/var/lib/webhook-gateway/dead-letters",
//!  "rules": [ … see `rules` … ]}
//! ```
//!
//! Environment: `K_SINK`, `KLAMBDA_TOKEN` (the platform's API token, sent to the sink),
//! `KLAMBDA_WEBHOOK_ADMIN_TOKEN` (the admin routes' token; without it they are not served), `PORT`, `KLAMBDA_BUILDKITE_TOKEN`, `KLAMBDA_BUILDKITE_SIGNING_KEY`,
//! `KLAMBDA_BUILDKITE_TOLERANCE_SECONDS`, `KLAMBDA_GITHUB_SECRET`, `KLAMBDA_WEBHOOK_RULES` (a
//! rules file), `KLAMBDA_WEBHOOK_DEAD_LETTER_DIR`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use klambda_harness::config::{Secret, StageSetting};
use serde_json::{Value, json};
use url::Url;

use crate::Config;
use crate::limit::RateLimit;
use crate::rules::Rules;

/// Every environment variable the gateway reads besides the serving settings every binary
/// reads (`klambda_harness::config::SERVING_SETTINGS`): listed by `--help`, in docs/INSTALL.md,
/// and checked against the code by `tests/settings.rs`. Each one overrides its key in the file.
pub const SETTINGS: &[StageSetting] = &[
    StageSetting::new(
        "KLAMBDA_WEBHOOK_CONFIG",
        "the settings file (JSON); --config",
    ),
    StageSetting::new(
        "K_SINK",
        "the broker ingress events are published to (required; sink)",
    ),
    StageSetting::new("PORT", "the port to listen on (port)").default("8080"),
    StageSetting::new(
        "KLAMBDA_TOKEN",
        "the platform's API token, sent to the sink as a bearer token (sinkToken)",
    )
    .secret(),
    StageSetting::new(
        "KLAMBDA_WEBHOOK_ADMIN_TOKEN",
        "the admin routes' token; without it they are not served (adminToken)",
    )
    .secret(),
    StageSetting::new(
        "KLAMBDA_BUILDKITE_TOKEN",
        "Buildkite's webhook token (buildkite.token)",
    )
    .secret(),
    StageSetting::new(
        "KLAMBDA_BUILDKITE_SIGNING_KEY",
        "Buildkite's signature key (buildkite.signingKey)",
    )
    .secret(),
    StageSetting::new(
        "KLAMBDA_BUILDKITE_TOLERANCE_SECONDS",
        "how old a signed Buildkite delivery may be (buildkite.toleranceSeconds)",
    )
    .default("300"),
    StageSetting::new(
        "KLAMBDA_GITHUB_SECRET",
        "GitHub's webhook secret (github.secret)",
    )
    .secret(),
    StageSetting::new(
        "KLAMBDA_WEBHOOK_BODY_LIMIT_BYTES",
        "the largest webhook body (bodyLimitBytes)",
    )
    .default("1048576"),
    StageSetting::new(
        "KLAMBDA_WEBHOOK_RATE_PER_SECOND",
        "authenticated deliveries per second (rateLimit.perSecond)",
    )
    .default("2000"),
    StageSetting::new(
        "KLAMBDA_WEBHOOK_RATE_BURST",
        "authenticated deliveries in a burst (rateLimit.burst)",
    )
    .default("4000"),
    StageSetting::new(
        "KLAMBDA_WEBHOOK_PUBLISH_ATTEMPTS",
        "publish attempts per event (retry.attempts)",
    )
    .default("3"),
    StageSetting::new(
        "KLAMBDA_WEBHOOK_BACKOFF_MS",
        "the first wait between publish attempts (retry.backoffMs)",
    )
    .default("100"),
    StageSetting::new(
        "KLAMBDA_WEBHOOK_FAILURE_THRESHOLD",
        "failed publishes in a row that open the circuit breaker (retry.failureThreshold)",
    )
    .default("5"),
    StageSetting::new(
        "KLAMBDA_WEBHOOK_OPEN_FOR_SECONDS",
        "how long the open breaker refuses (retry.openForSeconds)",
    )
    .default("30"),
    StageSetting::new(
        "KLAMBDA_WEBHOOK_DEAD_LETTER_DIR",
        "where events the broker refused are kept (deadLetterDir)",
    )
    .default("klambda-webhook-dead-letters"),
    StageSetting::new(
        "KLAMBDA_WEBHOOK_RULES",
        "a rules file, instead of the settings file's rules (rules)",
    ),
];

/// Everything the binary needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The gateway's behaviour.
    pub config: Config,
    /// The broker ingress.
    pub sink: Url,
    /// The platform's API token, sent to the sink as `Authorization: Bearer` (`klambda up`'s
    /// ingress asks for it; a cluster's broker ingress does not).
    pub sink_token: Option<Secret>,
    /// The port to listen on.
    pub port: u16,
}

/// Reads `file` (if any) and then the environment through `env`; lists every problem.
pub fn load(
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, Vec<String>> {
    let mut problems = Vec::new();
    let document = match file {
        None => json!({}),
        Some(path) => match std::fs::read_to_string(path) {
            Err(error) => return Err(vec![format!("{}: {error}", path.display())]),
            Ok(text) => match serde_json::from_str::<Value>(&text) {
                Ok(value) if value.is_object() => value,
                Ok(_) => return Err(vec![format!("{}: expected a JSON object", path.display())]),
                Err(error) => return Err(vec![format!("{}: not JSON: {error}", path.display())]),
            },
        },
    };
    let env = |key: &str| {
        env(key)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let text = |pointer: &str, key: &str| {
        env(key).or_else(|| {
            document
                .pointer(pointer)
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
    };
    let number = |pointer: &str, key: &str, problems: &mut Vec<String>| -> Option<f64> {
        if let Some(value) = env(key) {
            return value
                .parse()
                .map_err(|_| problems.push(format!("{key}={value:?} is not a number")))
                .ok();
        }
        match document.pointer(pointer) {
            None | Some(Value::Null) => None,
            Some(value) => value.as_f64().or_else(|| {
                problems.push(format!("{pointer} must be a number"));
                None
            }),
        }
    };
    let mut config = Config::default();
    config.buildkite.token = text("/buildkite/token", "KLAMBDA_BUILDKITE_TOKEN").map(Secret::new);
    config.buildkite.signing_key =
        text("/buildkite/signingKey", "KLAMBDA_BUILDKITE_SIGNING_KEY").map(Secret::new);
    config.github_secret = text("/github/secret", "KLAMBDA_GITHUB_SECRET").map(Secret::new);
    config.admin_token = text("/adminToken", "KLAMBDA_WEBHOOK_ADMIN_TOKEN").map(Secret::new);
    if config.buildkite.token.is_none()
        && config.buildkite.signing_key.is_none()
        && config.github_secret.is_none()
    {
        problems.push("no webhook secret: set buildkite.token, buildkite.signingKey or github.secret (or KLAMBDA_BUILDKITE_TOKEN, KLAMBDA_BUILDKITE_SIGNING_KEY, KLAMBDA_GITHUB_SECRET)".into());
    }
    if let Some(seconds) = number(
        "/buildkite/toleranceSeconds",
        "KLAMBDA_BUILDKITE_TOLERANCE_SECONDS",
        &mut problems,
    ) {
        config.buildkite.tolerance = Duration::from_secs_f64(seconds.max(0.0));
    }
    if let Some(bytes) = number(
        "/bodyLimitBytes",
        "KLAMBDA_WEBHOOK_BODY_LIMIT_BYTES",
        &mut problems,
    ) {
        config.body_limit = bytes.max(1.0) as usize;
    }
    if let Some(per_second) = number(
        "/rateLimit/perSecond",
        "KLAMBDA_WEBHOOK_RATE_PER_SECOND",
        &mut problems,
    ) {
        config.rate_limit.per_second = per_second;
    }
    if let Some(burst) = number(
        "/rateLimit/burst",
        "KLAMBDA_WEBHOOK_RATE_BURST",
        &mut problems,
    ) {
        config.rate_limit.burst = burst.max(1.0) as u32;
    }
    if config.rate_limit.per_second <= 0.0 {
        problems.push("rateLimit.perSecond must be above 0".into());
    }
    if let Some(attempts) = number(
        "/retry/attempts",
        "KLAMBDA_WEBHOOK_PUBLISH_ATTEMPTS",
        &mut problems,
    ) {
        config.policy.attempts = attempts.max(1.0) as u32;
    }
    if let Some(ms) = number(
        "/retry/backoffMs",
        "KLAMBDA_WEBHOOK_BACKOFF_MS",
        &mut problems,
    ) {
        config.policy.backoff = Duration::from_millis(ms.max(0.0) as u64);
    }
    if let Some(threshold) = number(
        "/retry/failureThreshold",
        "KLAMBDA_WEBHOOK_FAILURE_THRESHOLD",
        &mut problems,
    ) {
        config.policy.failure_threshold = threshold.max(1.0) as u32;
    }
    if let Some(seconds) = number(
        "/retry/openForSeconds",
        "KLAMBDA_WEBHOOK_OPEN_FOR_SECONDS",
        &mut problems,
    ) {
        config.policy.open_for = Duration::from_secs_f64(seconds.max(0.0));
    }
    if let Some(dir) = text("/deadLetterDir", "KLAMBDA_WEBHOOK_DEAD_LETTER_DIR") {
        config.dead_letter_dir = PathBuf::from(dir);
    }
    let rules = match env("KLAMBDA_WEBHOOK_RULES") {
        Some(path) => std::fs::read_to_string(&path)
            .map_err(|e| format!("KLAMBDA_WEBHOOK_RULES={path}: {e}"))
            .and_then(|text| Rules::parse(&text).map_err(|e| format!("{path}: {e}"))),
        None => match document.get("rules") {
            None | Some(Value::Null) => Ok(Rules::default()),
            Some(rules) => {
                Rules::parse(&json!({"rules": rules}).to_string()).map_err(|e| e.to_string())
            }
        },
    };
    match rules {
        Ok(rules) => config.rules = rules,
        Err(problem) => problems.push(problem),
    }
    let sink = match text("/sink", "K_SINK") {
        None => {
            problems.push("sink (K_SINK), the broker ingress, is required".into());
            None
        }
        Some(sink) => Url::parse(&sink)
            .map_err(|e| problems.push(format!("sink {sink:?} is not a URL: {e}")))
            .ok(),
    };
    let port = match number("/port", "PORT", &mut problems) {
        None => 8080,
        Some(port) if (1.0..=65535.0).contains(&port) && port.fract() == 0.0 => port as u16,
        Some(port) => {
            problems.push(format!("port {port} is not a port number"));
            0
        }
    };
    match sink {
        Some(sink) if problems.is_empty() => Ok(Settings {
            config,
            sink,
            sink_token: text("/sinkToken", "KLAMBDA_TOKEN").map(Secret::new),
            port,
        }),
        _ => Err(problems),
    }
}

/// The settings as JSON with every secret redacted.
pub fn show(settings: &Settings) -> Value {
    let redacted = |secret: &Option<Secret>| secret.as_ref().map(|_| "<redacted>");
    let config = &settings.config;
    let RateLimit { per_second, burst } = config.rate_limit;
    json!({
        "sink": settings.sink.as_str(),
        "sinkToken": redacted(&settings.sink_token),
        "port": settings.port,
        "buildkite": {
            "token": redacted(&config.buildkite.token),
            "signingKey": redacted(&config.buildkite.signing_key),
            "toleranceSeconds": config.buildkite.tolerance.as_secs(),
        },
        "github": {"secret": redacted(&config.github_secret)},
        "adminToken": redacted(&config.admin_token),
        "bodyLimitBytes": config.body_limit,
        "rateLimit": {"perSecond": per_second, "burst": burst},
        "retry": {
            "attempts": config.policy.attempts,
            "backoffMs": config.policy.backoff.as_millis() as u64,
            "failureThreshold": config.policy.failure_threshold,
            "openForSeconds": config.policy.open_for.as_secs(),
        },
        "deadLetterDir": config.dead_letter_dir.display().to_string(),
        "rules": config.rules.list().iter().map(|r| json!({"name": r.name, "type": r.event_type, "match": r.matches, "function": r.function["name"]})).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults `--help` states are the ones the gateway applies.
    #[test]
    fn the_stated_defaults_are_the_applied_ones() {
        let env = |key: &str| match key {
            "K_SINK" => Some("http://broker.example/".to_owned()),
            "KLAMBDA_GITHUB_SECRET" => Some("s".to_owned()),
            _ => None,
        };
        let shown = show(&load(None, &env).unwrap_or_else(|p| panic!("{p:?}")));
        let pointers = [
            ("PORT", "/port"),
            (
                "KLAMBDA_BUILDKITE_TOLERANCE_SECONDS",
                "/buildkite/toleranceSeconds",
            ),
            ("KLAMBDA_WEBHOOK_BODY_LIMIT_BYTES", "/bodyLimitBytes"),
            ("KLAMBDA_WEBHOOK_RATE_PER_SECOND", "/rateLimit/perSecond"),
            ("KLAMBDA_WEBHOOK_RATE_BURST", "/rateLimit/burst"),
            ("KLAMBDA_WEBHOOK_PUBLISH_ATTEMPTS", "/retry/attempts"),
            ("KLAMBDA_WEBHOOK_BACKOFF_MS", "/retry/backoffMs"),
            (
                "KLAMBDA_WEBHOOK_FAILURE_THRESHOLD",
                "/retry/failureThreshold",
            ),
            ("KLAMBDA_WEBHOOK_OPEN_FOR_SECONDS", "/retry/openForSeconds"),
            ("KLAMBDA_WEBHOOK_DEAD_LETTER_DIR", "/deadLetterDir"),
        ];
        let with_default: Vec<_> = SETTINGS.iter().filter(|s| s.default.is_some()).collect();
        assert_eq!(with_default.len(), pointers.len());
        for setting in with_default {
            let (_, pointer) = pointers
                .iter()
                .find(|(name, _)| *name == setting.name)
                .unwrap_or_else(|| panic!("no pointer for {}", setting.name));
            let applied = shown
                .pointer(pointer)
                .cloned()
                .unwrap_or_else(|| panic!("{pointer} not shown"));
            let applied = match applied {
                Value::String(text) => text,
                Value::Number(n) => n
                    .as_f64()
                    .map(|f| {
                        if f.fract() == 0.0 {
                            format!("{f:.0}")
                        } else {
                            f.to_string()
                        }
                    })
                    .unwrap_or_default(),
                other => other.to_string(),
            };
            assert_eq!(Some(applied.as_str()), setting.default, "{}", setting.name);
        }
    }
}
