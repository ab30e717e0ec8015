//! Turning a [`FunctionSubmission`] into a [`FunctionSpec`], listing every problem on the way.

use std::collections::BTreeMap;

use klambda_events::data::Problem;
use klambda_events::spec::{
    BuildSettings, BuildSubmission, DeliverySpec, FunctionSubmission, Resources,
    ResourcesSubmission, Scaling, ScalingSubmission, Source, TriggerFilter,
};
use klambda_events::{ContentDigest, FunctionName, FunctionSpec, Language, Runtime};

use crate::limits::Limits;
use crate::source;
use klambda_events::digest::content_digest;

/// The most deliveries at once a function Trigger may ask for (as the RabbitMQ Broker allows).
const MAX_PARALLELISM: i64 = 1000;

/// Characters that mean something to a shell. Handlers reach the runtime shim's start command,
/// so none may appear in one, whatever the runtime.
const SHELL_METACHARACTERS: &str = ";|&$`<>(){}[]!*?~'\"\\#=%,";

/// Validates and normalises `submission`: the spec and its digest, or every problem found.
pub fn parse(
    submission: FunctionSubmission,
    limits: &Limits,
) -> Result<(FunctionSpec, ContentDigest), Vec<Problem>> {
    let mut problems = Vec::new();
    let name = FunctionName::new(submission.name.clone())
        .map_err(|e| problems.push(Problem::new("name", format!("{:?} {e}", submission.name))))
        .ok();
    let runtime = Runtime::find(&submission.runtime);
    match runtime.map(klambda_runtimes::Template::of) {
        None => problems.push(Problem::new(
            "runtime",
            format!(
                "unknown runtime {:?}; known: {}",
                submission.runtime,
                Runtime::known_ids().join(", ")
            ),
        )),
        // Only runtimes the platform can build are accepted.
        Some(Err(unbuildable)) => problems.push(Problem::new("runtime", unbuildable.to_string())),
        Some(Ok(_)) => {}
    }
    let source = source::normalise(submission.source, limits, &mut problems);
    check_handler(
        &submission.handler,
        runtime.map(|r| r.language()),
        source.as_ref(),
        &mut problems,
    );
    check_env(&submission.env, limits, &mut problems);
    check_secrets(&submission.secrets, &submission.env, &mut problems);
    let resources = resources(submission.resources, &mut problems);
    let scaling = scaling(submission.scaling, &mut problems);
    let build = build(submission.build, &mut problems);
    check_triggers(&submission.triggers, limits, &mut problems);
    if let Some(delivery) = &submission.delivery {
        check_delivery(delivery, &mut problems);
    }

    match (name, runtime, source) {
        (Some(name), Some(runtime), Some(source)) if problems.is_empty() => {
            let digest = content_digest(runtime, &submission.handler, &source);
            let spec = FunctionSpec {
                name,
                runtime,
                handler: submission.handler,
                source,
                env: submission.env,
                secrets: submission.secrets,
                resources,
                scaling,
                build,
                triggers: submission.triggers,
                delivery: submission.delivery,
                extra: submission.extra,
            };
            Ok((spec, digest))
        }
        _ => Err(problems),
    }
}

/// The handler's form: metacharacters and length whatever the runtime, then the runtime's own
/// form when the runtime is known.
fn check_handler(
    handler: &str,
    language: Option<Language>,
    source: Option<&Source>,
    problems: &mut Vec<Problem>,
) {
    let mut problem = |reason: String| problems.push(Problem::new("handler", reason));
    if handler.is_empty() {
        return problem("the handler is empty".into());
    }
    if let Some(c) = handler.chars().find(|c| SHELL_METACHARACTERS.contains(*c)) {
        return problem(format!("contains the shell metacharacter {c:?}"));
    }
    if let Some(c) = handler
        .chars()
        .find(|c| c.is_whitespace() || c.is_control())
    {
        return problem(format!(
            "contains the whitespace or control character {c:?}"
        ));
    }
    if handler.len() > 128 {
        return problem("the handler is longer than 128 characters".into());
    }
    let Some(language) = language else {
        return;
    };
    let ident = |s: &str, extra: &[char]| {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || extra.contains(&c))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || extra.contains(&c))
    };
    // For inline sources the file the handler names must be there.
    let files: Option<Vec<&str>> = match source {
        Some(Source::Inline { files }) => Some(files.iter().map(|f| f.path.as_str()).collect()),
        _ => None,
    };
    match language {
        Language::Node => {
            let Some((module, export)) = handler.rsplit_once('.') else {
                return problem(format!(
                    "{handler:?} is not file.export (e.g. index.handler)"
                ));
            };
            let module_ok = !module.is_empty()
                && !module.starts_with('/')
                && module.split('/').all(|p| {
                    !p.is_empty()
                        && p != ".."
                        && p != "."
                        && p.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
                });
            if !module_ok || !ident(export, &['$']) {
                return problem(format!(
                    "{handler:?} is not file.export (e.g. index.handler or src/app.main)"
                ));
            }
            if let Some(files) = files {
                let candidates = ["js", "mjs", "cjs"].map(|ext| format!("{module}.{ext}"));
                if !candidates.iter().any(|c| files.contains(&c.as_str())) {
                    problem(format!(
                        "no {module}.js, {module}.mjs or {module}.cjs in the source for handler {handler:?}"
                    ));
                }
            }
        }
        Language::Python => {
            let parts: Vec<&str> = handler.split('.').collect();
            if parts.len() < 2 || !parts.iter().all(|p| ident(p, &[])) {
                return problem(format!(
                    "{handler:?} is not module.function (e.g. app.handler)"
                ));
            }
            if let Some(files) = files {
                let module = parts[..parts.len() - 1].join("/");
                let file = format!("{module}.py");
                if !files.contains(&file.as_str()) {
                    problem(format!("no {file} in the source for handler {handler:?}"));
                }
            }
        }
        Language::Go => {
            if !handler.starts_with(|c: char| c.is_ascii_uppercase()) || !ident(handler, &[]) {
                return problem(format!(
                    "{handler:?} is not an exported Go function name (e.g. Handler)"
                ));
            }
            // The platform's program imports the function's package by its module path.
            if let Some(Source::Inline { files }) = source {
                let go_mod = inline_text(files, "go.mod");
                let module = go_mod.as_deref().and_then(klambda_runtimes::go_module_path);
                if module.is_none() {
                    problem(format!(
                        "no go.mod naming the module in the source for handler {handler:?}: a Go function is a package in a module (`go mod init example.com/hello`)"
                    ));
                }
            }
        }
        Language::Rust => {
            let keyword = [
                "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else",
                "enum", "extern", "false", "fn", "for", "if", "impl", "in", "let", "loop", "match",
                "mod", "move", "mut", "pub", "ref", "return", "self", "static", "struct", "super",
                "trait", "true", "type", "unsafe", "use", "where", "while",
            ]
            .contains(&handler);
            let ok = handler.len() <= 64
                && handler.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && handler
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok || keyword {
                return problem(format!(
                    "{handler:?} is not a Rust function name (lowercase letters, digits and '_', e.g. handler)"
                ));
            }
            // The platform's program depends on the function's crate by its package name.
            if let Some(Source::Inline { files }) = source {
                let manifest = inline_text(files, "Cargo.toml");
                if manifest
                    .as_deref()
                    .and_then(klambda_runtimes::cargo_package_name)
                    .is_none()
                {
                    problem(format!(
                        "no Cargo.toml naming the package in the source for handler {handler:?}: a Rust function is a library crate (`[package] name = \"hello\"`)"
                    ));
                } else if !files.iter().any(|f| f.path == "src/lib.rs") {
                    problem(format!(
                        "no src/lib.rs in the source for handler {handler:?}"
                    ));
                }
            }
        }
    }
}

/// The text of the inline file at `path`, whatever its encoding.
fn inline_text(files: &[klambda_events::spec::InlineFile], path: &str) -> Option<String> {
    let file = files.iter().find(|f| f.path == path)?;
    Some(match file.encoding {
        klambda_events::spec::ContentEncoding::Utf8 => file.content.clone(),
        klambda_events::spec::ContentEncoding::Base64 => {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(file.content.as_bytes())
                .unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        }
    })
}

fn check_env(env: &BTreeMap<String, String>, limits: &Limits, problems: &mut Vec<Problem>) {
    if env.len() > limits.max_env_vars {
        problems.push(Problem::new(
            "env",
            format!(
                "{} variables; at most {} are allowed",
                env.len(),
                limits.max_env_vars
            ),
        ));
    }
    let mut total = 0usize;
    for (name, value) in env {
        let field = format!("env.{name}");
        total += name.len() + value.len();
        let valid_name = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            problems.push(Problem::new(
                field,
                "names use letters, digits and '_' and do not start with a digit",
            ));
            continue;
        }
        if name.len() > limits.max_env_name_bytes {
            problems.push(Problem::new(
                field.clone(),
                format!(
                    "the name is longer than {} bytes",
                    limits.max_env_name_bytes
                ),
            ));
        }
        if klambda_events::spec::is_reserved_env(name) {
            problems.push(Problem::new(
                field.clone(),
                "is reserved: the platform or the runtime sets it, or it changes how the runtime starts",
            ));
        }
        if value.contains('\0') {
            problems.push(Problem::new(field.clone(), "the value contains a NUL byte"));
        }
        if value.len() > limits.max_env_value_bytes {
            problems.push(Problem::new(
                field,
                format!(
                    "the value is {} bytes; at most {} are allowed",
                    value.len(),
                    limits.max_env_value_bytes
                ),
            ));
        }
    }
    if total > limits.max_env_total_bytes {
        problems.push(Problem::new(
            "env",
            format!(
                "names and values total {total} bytes; at most {} are allowed",
                limits.max_env_total_bytes
            ),
        ));
    }
}

/// Secret references: a variable name as for `env` (not one `env` sets too), a secret name
/// [`klambda_events::spec::is_secret_name`] accepts.
fn check_secrets(
    secrets: &BTreeMap<String, String>,
    env: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) {
    for (variable, secret) in secrets {
        let field = format!("secrets.{variable}");
        let valid_name = variable.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && variable
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            problems.push(Problem::new(
                field.clone(),
                "names use letters, digits and '_' and do not start with a digit",
            ));
        } else if klambda_events::spec::is_reserved_env(variable) {
            problems.push(Problem::new(
                field.clone(),
                "is reserved: the platform or the runtime sets it, or it changes how the runtime starts",
            ));
        }
        if env.contains_key(variable) {
            problems.push(Problem::new(
                field.clone(),
                "is also in env; a variable is plain or secret, not both",
            ));
        }
        if !klambda_events::spec::is_secret_name(secret) {
            problems.push(Problem::new(
                field,
                format!(
                    "{secret:?} is not a secret name: 1 to 63 of a-z, 0-9 and '-', starting and ending with a letter or digit"
                ),
            ));
        }
    }
}

/// `value` (or `default` when absent) if within `range`, else a problem at `field`.
fn bounded(
    value: Option<i64>,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
    field: &str,
    unit: &str,
    problems: &mut Vec<Problem>,
) -> u32 {
    match value {
        None => default,
        Some(v) => match u32::try_from(v) {
            Ok(v) if range.contains(&v) => v,
            _ => {
                problems.push(Problem::new(
                    field,
                    format!(
                        "{v} {unit} is out of range {}–{}",
                        range.start(),
                        range.end()
                    ),
                ));
                default
            }
        },
    }
}

fn resources(given: Option<ResourcesSubmission>, problems: &mut Vec<Problem>) -> Resources {
    let given = given.unwrap_or_default();
    let default = Resources::default();
    Resources {
        memory_mib: bounded(
            given.memory_mib,
            default.memory_mib,
            128..=10240,
            "resources.memoryMib",
            "MiB",
            problems,
        ),
        cpu_millis: bounded(
            given.cpu_millis,
            default.cpu_millis,
            50..=8000,
            "resources.cpuMillis",
            "millicores",
            problems,
        ),
        timeout_seconds: bounded(
            given.timeout_seconds,
            default.timeout_seconds,
            1..=900,
            "resources.timeoutSeconds",
            "seconds",
            problems,
        ),
    }
}

fn scaling(given: Option<ScalingSubmission>, problems: &mut Vec<Problem>) -> Scaling {
    let given = given.unwrap_or_default();
    let default = Scaling::default();
    let scaling = Scaling {
        min_scale: bounded(
            given.min_scale,
            default.min_scale,
            0..=100,
            "scaling.minScale",
            "instances",
            problems,
        ),
        max_scale: bounded(
            given.max_scale,
            default.max_scale,
            1..=1000,
            "scaling.maxScale",
            "instances",
            problems,
        ),
        concurrency: bounded(
            given.concurrency,
            default.concurrency,
            0..=1000,
            "scaling.concurrency",
            "requests",
            problems,
        ),
        scale_to_zero_after_seconds: bounded(
            given.scale_to_zero_after_seconds,
            default.scale_to_zero_after_seconds,
            1..=3600,
            "scaling.scaleToZeroAfterSeconds",
            "seconds",
            problems,
        ),
    };
    if scaling.min_scale > scaling.max_scale {
        problems.push(Problem::new(
            "scaling",
            format!(
                "minScale {} is above maxScale {}",
                scaling.min_scale, scaling.max_scale
            ),
        ));
    }
    scaling
}

fn build(given: Option<BuildSubmission>, problems: &mut Vec<Problem>) -> BuildSettings {
    let given = given.unwrap_or_default();
    BuildSettings {
        timeout_seconds: bounded(
            given.timeout_seconds,
            BuildSettings::default().timeout_seconds,
            60..=3600,
            "build.timeoutSeconds",
            "seconds",
            problems,
        ),
    }
}

/// The most retries a function's delivery may ask for: with parallelism 1 a failing event holds
/// its Trigger's queue for all of them.
const MAX_RETRIES: u32 = 100;
/// The longest base wait between retries.
const MAX_BACKOFF_DELAY: std::time::Duration = std::time::Duration::from_secs(3600);
/// The longest one delivery may take (Lambda's own limit for one invocation).
const MAX_DELIVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(900);

/// `delivery`: Knative's field names, values the broker can apply as they are.
fn check_delivery(delivery: &DeliverySpec, problems: &mut Vec<Problem>) {
    for key in delivery.extra.keys() {
        let reason = if key == "deadLetterSink" || key == "deadLetterSinkCACerts" {
            "a function's dead letters go to the platform's dead letters (`klambda dlq list --function NAME`); a destination of its own is not supported".to_owned()
        } else {
            format!(
                "unknown field {key:?}; delivery has retry, backoffPolicy, backoffDelay and timeout"
            )
        };
        problems.push(Problem::new(format!("delivery.{key}"), reason));
    }
    if let Some(retry) = delivery.retry
        && retry > MAX_RETRIES
    {
        problems.push(Problem::new(
            "delivery.retry",
            format!("{retry} retries; at most {MAX_RETRIES}"),
        ));
    }
    if let Some(policy) = &delivery.backoff_policy
        && policy != "linear"
        && policy != "exponential"
    {
        problems.push(Problem::new(
            "delivery.backoffPolicy",
            format!("{policy:?} is not linear or exponential"),
        ));
    }
    let durations = [
        ("backoffDelay", &delivery.backoff_delay, MAX_BACKOFF_DELAY),
        ("timeout", &delivery.timeout, MAX_DELIVERY_TIMEOUT),
    ];
    for (field, value, max) in durations {
        let Some(text) = value else { continue };
        let problem = match klambda_events::iso8601::duration(text) {
            None => format!("{text:?} is not an ISO 8601 duration such as PT0.2S or PT1M"),
            Some(d) if field == "timeout" && d.is_zero() => "a timeout of zero".to_owned(),
            Some(d) if d > max => format!("{text:?} is longer than {}s", max.as_secs()),
            Some(_) => continue,
        };
        problems.push(Problem::new(format!("delivery.{field}"), problem));
    }
}

fn check_triggers(triggers: &[TriggerFilter], limits: &Limits, problems: &mut Vec<Problem>) {
    if triggers.len() > limits.max_triggers {
        problems.push(Problem::new(
            "triggers",
            format!(
                "{} triggers; at most {} are allowed",
                triggers.len(),
                limits.max_triggers
            ),
        ));
    }
    for (i, trigger) in triggers.iter().enumerate() {
        let field = format!("triggers[{i}]");
        for key in trigger.extra.keys() {
            let reason = if key == "filters" {
                "filters (CESQL/dialect filters) are ignored by the RabbitMQ broker, so the Trigger would receive every event; use attributes (exact match)".to_owned()
            } else {
                format!(
                    "unknown field {key:?}; a trigger has attributes, replyType and parallelism"
                )
            };
            problems.push(Problem::new(format!("{field}.{key}"), reason));
        }
        if trigger.attributes.is_empty() {
            problems.push(Problem::new(
                format!("{field}.attributes"),
                "no attributes: the Trigger would receive every event on the broker; name at least one (usually type)",
            ));
        }
        for (name, value) in &trigger.attributes {
            let at = format!("{field}.attributes.{name}");
            let valid_name = !name.is_empty()
                && name.len() <= 20
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !valid_name {
                problems.push(Problem::new(
                    at.clone(),
                    "CloudEvents attribute names are 1–20 characters of a-z and 0-9",
                ));
            } else if name == "data" {
                problems.push(Problem::new(
                    at.clone(),
                    "data is not an attribute; filters match attributes only",
                ));
            }
            if value.is_empty() {
                problems.push(Problem::new(at, "an empty value does not mean 'any' on the RabbitMQ broker; give the exact value or drop the attribute"));
            } else if value.chars().any(char::is_control) || value.len() > 256 {
                problems.push(Problem::new(
                    at,
                    "values are at most 256 characters with no control characters",
                ));
            }
        }
        if let Some(reply_type) = &trigger.reply_type {
            let at = format!("{field}.replyType");
            if reply_type.is_empty()
                || reply_type.len() > 256
                || reply_type
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace())
            {
                problems.push(Problem::new(
                    at,
                    "a CloudEvents type: 1–256 characters, no spaces or control characters",
                ));
            } else if klambda_events::catalogue::is_platform_type(reply_type) {
                problems.push(Problem::new(
                    at,
                    "is the platform's event type; a function's reply may not carry it",
                ));
            }
        }
        if let Some(parallelism) = trigger.parallelism
            && !(1..=MAX_PARALLELISM).contains(&parallelism)
        {
            problems.push(Problem::new(
                format!("{field}.parallelism"),
                format!("deliveries at once: from 1 (in order) to {MAX_PARALLELISM}"),
            ));
        }
        if triggers[..i].iter().any(|earlier| {
            earlier.attributes == trigger.attributes && !trigger.attributes.is_empty()
        }) {
            problems.push(Problem::new(field, "duplicates an earlier trigger"));
        }
    }
}
