//! Buildkite and GitHub payloads into compact CloudEvents: type `com.buildkite.<event>` /
//! `com.github.<event>`, source the pipeline or repository URL, subject the build number or ref,
//! id from the delivery (so a redelivered webhook is the same event and dedupes downstream), data
//! the fields users filter and route on.
//!
//! Events this gateway does not know are **accepted and forwarded as they are** (the payload as
//! data), so a new Buildkite or GitHub event reaches the broker without a gateway release; their
//! name must still be a well-formed event name and the body a JSON object.

use cloudevents::{Event, EventBuilder as _, EventBuilderV10};
use klambda_events::data::Problem;
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::payload::{Fields, compact, valid_event_name};

/// Where a webhook came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Buildkite Pipelines.
    Buildkite,
    /// GitHub.
    GitHub,
}

impl Origin {
    /// The CloudEvents type prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Buildkite => "com.buildkite",
            Self::GitHub => "com.github",
        }
    }

    /// The name used in paths, metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Buildkite => "buildkite",
            Self::GitHub => "github",
        }
    }
}

/// Builds the CloudEvent for a verified webhook, or lists every problem with it.
///
/// `delivery` is the sender's delivery id when it sends one (GitHub's `X-GitHub-Delivery`);
/// Buildkite sends none, so the id is derived from the event name and the body: a redelivery
/// carries the same body and gets the same id.
pub fn to_event(
    origin: Origin,
    event: &str,
    body: &[u8],
    delivery: Option<&str>,
) -> Result<Event, Vec<Problem>> {
    if !valid_event_name(event) {
        return Err(vec![Problem::new(
            "event",
            format!("{event:?} is not an event name (lowercase words joined by '.' or '_')"),
        )]);
    }
    let payload: Value = serde_json::from_slice(body)
        .map_err(|e| vec![Problem::new("", format!("the body is not valid JSON: {e}"))])?;
    if !payload.is_object() {
        return Err(vec![Problem::new("", "the body must be a JSON object")]);
    }
    let mut fields = Fields::new(&payload);
    let shaped = match origin {
        Origin::Buildkite => buildkite(event, &payload, &mut fields),
        Origin::GitHub => github(event, &payload, &mut fields),
    };
    if !fields.problems.is_empty() {
        return Err(fields.problems);
    }
    let id = match delivery {
        Some(id) => id.to_owned(),
        None => {
            let mut hash = sha2::Sha256::new();
            hash.update(event.as_bytes());
            hash.update(b"\n");
            hash.update(body);
            format!("{}-{}", origin.name(), &hex::encode(hash.finalize())[..32])
        }
    };
    let mut builder = EventBuilderV10::new()
        .id(id)
        .ty(format!("{}.{event}", origin.prefix()))
        .source(shaped.source)
        .data("application/json", shaped.data);
    if let Some(subject) = shaped.subject {
        builder = builder.subject(subject);
    }
    builder
        .build()
        .map_err(|e| vec![Problem::new("", e.to_string())])
}

/// What an origin's reader makes of a payload.
struct Shaped {
    source: String,
    subject: Option<String>,
    data: Value,
}

/// A build or job event: from its pipeline, about its build (the subject is the build number),
/// with the pipeline, build and number first and `specific` fields after.
fn of_build(
    fields: &mut Fields<'_>,
    specific: impl FnOnce(&mut Fields<'_>) -> Vec<(&'static str, Value)>,
) -> Shaped {
    let slug = fields.string("pipeline.slug");
    let source = fields
        .optional("pipeline.web_url")
        .unwrap_or_else(|| format!("urn:buildkite:pipeline:{slug}"));
    let number = fields.number("build.number");
    let mut data = vec![
        ("pipeline", json!(slug)),
        ("build", json!(fields.string("build.id"))),
        ("number", json!(number)),
    ];
    data.extend(specific(fields));
    Shaped {
        source,
        subject: Some(number.to_string()),
        data: compact(data),
    }
}

fn buildkite(event: &str, payload: &Value, fields: &mut Fields<'_>) -> Shaped {
    if event.starts_with("build.") {
        return of_build(fields, |fields| {
            vec![
                ("state", json!(fields.string("build.state"))),
                ("branch", json!(fields.string("build.branch"))),
                ("commit", json!(fields.string("build.commit"))),
                ("message", json!(fields.optional("build.message"))),
                (
                    "author",
                    json!(
                        fields
                            .optional("build.author.name")
                            .or_else(|| fields.optional("build.creator.name"))
                    ),
                ),
                ("url", json!(fields.optional("build.web_url"))),
                ("createdAt", json!(fields.optional("build.created_at"))),
                ("startedAt", json!(fields.optional("build.started_at"))),
                ("finishedAt", json!(fields.optional("build.finished_at"))),
            ]
        });
    }
    if event.starts_with("job.") {
        return of_build(fields, |fields| {
            vec![
                ("job", json!(fields.string("job.id"))),
                ("state", json!(fields.string("job.state"))),
                ("name", json!(fields.optional("job.name"))),
                ("exitStatus", payload["job"]["exit_status"].clone()),
                ("url", json!(fields.optional("job.web_url"))),
            ]
        });
    }
    if event.starts_with("agent.") {
        let id = fields.string("agent.id");
        let data = compact(vec![
            ("agent", json!(id)),
            ("name", json!(fields.optional("agent.name"))),
            ("state", json!(fields.optional("agent.connection_state"))),
        ]);
        return Shaped {
            source: "urn:buildkite:agents".into(),
            subject: Some(id),
            data,
        };
    }
    // `ping` and events this gateway does not know: forwarded as they are.
    Shaped {
        source: "urn:buildkite".into(),
        subject: None,
        data: payload.clone(),
    }
}

fn github(event: &str, payload: &Value, fields: &mut Fields<'_>) -> Shaped {
    let repository = |fields: &mut Fields<'_>| fields.string("repository.html_url");
    match event {
        "push" => {
            let source = repository(fields);
            let reference = fields.string("ref");
            let data = compact(vec![
                ("repository", json!(fields.string("repository.full_name"))),
                ("ref", json!(reference)),
                ("branch", json!(reference.strip_prefix("refs/heads/"))),
                ("commit", json!(fields.string("after"))),
                ("author", json!(fields.optional("pusher.name"))),
                ("message", json!(fields.optional("head_commit.message"))),
                ("url", json!(fields.optional("compare"))),
                ("timestamp", json!(fields.optional("head_commit.timestamp"))),
            ]);
            Shaped {
                source,
                subject: Some(reference),
                data,
            }
        }
        "workflow_run" => {
            let source = repository(fields);
            let number = fields.number("workflow_run.run_number");
            let data = compact(vec![
                ("repository", json!(fields.string("repository.full_name"))),
                ("action", json!(fields.string("action"))),
                ("workflow", json!(fields.optional("workflow_run.name"))),
                ("number", json!(number)),
                ("branch", json!(fields.string("workflow_run.head_branch"))),
                ("commit", json!(fields.string("workflow_run.head_sha"))),
                ("state", json!(fields.string("workflow_run.status"))),
                (
                    "conclusion",
                    json!(fields.optional("workflow_run.conclusion")),
                ),
                ("url", json!(fields.optional("workflow_run.html_url"))),
                (
                    "startedAt",
                    json!(fields.optional("workflow_run.run_started_at")),
                ),
                (
                    "updatedAt",
                    json!(fields.optional("workflow_run.updated_at")),
                ),
            ]);
            Shaped {
                source,
                subject: Some(number.to_string()),
                data,
            }
        }
        // `ping` and everything else: forwarded as it is, from the repository when named.
        _ => Shaped {
            source: payload["repository"]["html_url"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| "urn:github".into()),
            subject: None,
            data: payload.clone(),
        },
    }
}
