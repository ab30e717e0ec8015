//! Rules: "when a build of pipeline P on branch B finishes as passed, update function F from
//! that commit". A rule matches a forwarded event by its type and exact values of its data
//! fields, and emits `io.knative.lambda.function.updated` with the function's git source pinned
//! to the event's `commit`.
//!
//! The rules file (JSON):
//!
//! ```json
//! {"rules": [{
//!   "name": "deploy-app",
//!   "type": "com.buildkite.build.finished",
//!   "match": {"pipeline": "app", "branch": "main", "state": "passed"},
//!   "function": {"name": "app", "runtime": "nodejs22", "handler": "index.handler",
//!                "source": {"kind": "git", "url": "https://github.com/acme/app.git"}}
//! }]}
//! ```
//!
//! The emitted event's id is derived from the webhook event's id and the rule's name, so a
//! redelivered webhook emits the same update (and it dedupes).

use std::collections::BTreeMap;

use cloudevents::{AttributesReader as _, Event};
use klambda_events::catalogue::FunctionUpdated;
use klambda_events::spec::FunctionSubmission;
use klambda_events::{Envelope, EventType as _};
use serde_json::Value;

/// Why a rules file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// Not JSON of the documented shape.
    #[error("the rules file is not valid: {0}")]
    Invalid(String),
    /// A rule's function is not a valid submission.
    #[error("rule {rule:?}: {reason}")]
    Rule {
        /// The rule.
        rule: String,
        /// What is wrong.
        reason: String,
    },
}

/// One rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Its name (unique).
    pub name: String,
    /// The event type it reacts to.
    pub event_type: String,
    /// Data fields and the exact values they must have.
    pub matches: BTreeMap<String, String>,
    /// The function to update, its `source.ref` filled from the event.
    pub function: Value,
}

/// The rules of a gateway.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    /// Parses a rules file, checking every rule's function as a submission.
    pub fn parse(text: &str) -> Result<Self, RulesError> {
        let document: Value =
            serde_json::from_str(text).map_err(|e| RulesError::Invalid(e.to_string()))?;
        let list = document["rules"]
            .as_array()
            .ok_or_else(|| RulesError::Invalid("expected {\"rules\": [...]}".into()))?;
        let mut rules = Vec::new();
        for (index, rule) in list.iter().enumerate() {
            let name = rule["name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| RulesError::Invalid(format!("rules[{index}].name is required")))?
                .to_owned();
            let invalid = |reason: String| RulesError::Rule {
                rule: name.clone(),
                reason,
            };
            if rules.iter().any(|r: &Rule| r.name == name) {
                return Err(invalid("the name is used twice".into()));
            }
            let event_type = rule["type"]
                .as_str()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| invalid("type (the event type to react to) is required".into()))?
                .to_owned();
            let mut matches = BTreeMap::new();
            for (field, value) in rule["match"].as_object().into_iter().flatten() {
                let value = value
                    .as_str()
                    .ok_or_else(|| invalid(format!("match.{field} must be a string")))?;
                matches.insert(field.clone(), value.to_owned());
            }
            let function = rule["function"].clone();
            if function["source"]["kind"] != "git" {
                return Err(invalid(
                    "function.source must be a git source (its ref is set to the built commit)"
                        .into(),
                ));
            }
            // The function must be a valid submission once its ref is set.
            submission(&function, "0000000").map_err(invalid)?;
            rules.push(Rule {
                name,
                event_type,
                matches,
                function,
            });
        }
        Ok(Self { rules })
    }

    /// The rules.
    pub fn list(&self) -> &[Rule] {
        &self.rules
    }

    /// The `function.updated` events `event` fires (none when no rule matches).
    pub fn fire(&self, event: &Event) -> Vec<Event> {
        let data: Value = match event.data() {
            Some(cloudevents::Data::Json(value)) => value.clone(),
            Some(cloudevents::Data::Binary(bytes)) => {
                serde_json::from_slice(bytes).unwrap_or(Value::Null)
            }
            _ => Value::Null,
        };
        let Some(commit) = data["commit"].as_str() else {
            return Vec::new();
        };
        self.rules
            .iter()
            .filter(|rule| rule.event_type == event.ty())
            .filter(|rule| {
                rule.matches
                    .iter()
                    .all(|(field, value)| data[field].as_str() == Some(value.as_str()))
            })
            .filter_map(|rule| {
                let submission = submission(&rule.function, commit).ok()?;
                let id = format!("{}-{}", event.id(), rule.name);
                Some(
                    Envelope::new(id, "/knative-lambda/webhook-gateway")
                        .subject(submission.name.clone())
                        .encode::<FunctionUpdated>(&submission),
                )
            })
            .collect()
    }
}

/// The rule's function with its git source pinned to `commit`.
fn submission(function: &Value, commit: &str) -> Result<FunctionSubmission, String> {
    let mut function = function.clone();
    function["source"]["ref"] = Value::String(commit.to_owned());
    serde_json::from_value(function).map_err(|e| {
        format!(
            "function is not a valid {} submission: {e}",
            FunctionUpdated::TYPE
        )
    })
}
