//! The parser stage: validates and normalises a function submission.
//!
//! - **Consumes** `io.knative.lambda.function.created` and `io.knative.lambda.function.updated`
//!   (data: `FunctionSubmission`).
//! - **Replies** `io.knative.lambda.parser.completed` with the normalised `FunctionSpec` and its
//!   content digest, or `io.knative.lambda.parser.failed` listing every problem.
//! - **Side events**: `io.knative.lambda.parser.started`.
//! - **Side effects**: none. No network, no storage: the parser is a pure function of its input,
//!   so a replay gives the identical reply (same id, same data).
//!
//! A submission that is not even a JSON object of the right shape still gets `parser.failed`
//! (the user's mistake, reported to the user); an event whose `dataschema` names a version this
//! parser does not read is refused with 400 and dead-lettered, to be redriven after an upgrade.
//!
//! # Layout
//! - [`validate`]: submission → spec, every problem listed.
//! - [`source`]: inline files, `s3://` and git sources.
//! - the content digest is part of the contract: `klambda_events::digest`.
//! - [`limits`]: the bounds a submission must stay within.

pub mod limits;
pub mod source;
pub mod validate;

use std::sync::OnceLock;

use cloudevents::{AttributesReader, Event};
use klambda_events::catalogue::{
    FunctionCreated, FunctionUpdated, ParserCompleted, ParserFailed, ParserStarted, find,
};
use klambda_events::data::{Operation, ParseFailure, ParseStart, ParsedFunction, Problem};
use klambda_events::envelope::DecodeError;
use klambda_events::{EventType, Stage, decode, reply};
use klambda_harness::{Context, Handler, HandlerError, Outcome};

pub use limits::Limits;
pub use validate::parse;

/// The parser stage's handler.
#[derive(Debug, Clone, Default)]
pub struct Parser {
    limits: Limits,
}

impl Parser {
    /// A parser with the default [`Limits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A parser with other limits.
    pub fn with_limits(limits: Limits) -> Self {
        Self { limits }
    }

    /// Decodes and validates the submission in `event`: the submitted name (when readable) and
    /// the spec with its digest, or every problem. Contract mismatches are errors (dead-lettered).
    fn parse_event(
        &self,
        event: &Event,
        operation: Operation,
    ) -> Result<(Option<String>, ParseResult), HandlerError> {
        let submission = match operation {
            Operation::Create => decode::<FunctionCreated>(event),
            Operation::Update => decode::<FunctionUpdated>(event),
        };
        match submission {
            Ok(submission) => Ok((
                Some(submission.name.clone()),
                parse(submission, &self.limits),
            )),
            Err(
                error @ (DecodeError::UnsupportedVersion { .. } | DecodeError::WrongType { .. }),
            ) => Err(error.into()),
            Err(error) => Ok((name_hint(event), Err(structural_problems(event, &error)))),
        }
    }
}

type ParseResult =
    Result<(klambda_events::FunctionSpec, klambda_events::ContentDigest), Vec<Problem>>;

impl Handler for Parser {
    fn stage(&self) -> Stage {
        Stage::Parser
    }

    async fn handle(&self, event: Event, context: &Context) -> Result<Outcome, HandlerError> {
        let operation = if event.ty() == FunctionUpdated::TYPE {
            Operation::Update
        } else {
            Operation::Create
        };
        let (name, result) = self.parse_event(&event, operation)?;
        context
            .progress(
                reply::<ParserStarted>(&event, Stage::Parser),
                &ParseStart {
                    function: name.clone(),
                    operation,
                },
            )
            .await;
        let reply = match result {
            Ok((spec, digest)) => {
                let subject = spec.name.to_string();
                reply::<ParserCompleted>(&event, Stage::Parser)
                    .subject(subject)
                    .data(&ParsedFunction {
                        operation,
                        spec,
                        digest,
                    })
            }
            Err(problems) => {
                let mut failed = reply::<ParserFailed>(&event, Stage::Parser);
                if let Some(name) = &name {
                    failed = failed.subject(name.clone());
                }
                failed.data(&ParseFailure {
                    function: name,
                    operation,
                    problems,
                })
            }
        };
        Ok(Outcome::Reply(reply))
    }
}

/// The submitted name, read leniently, for labelling replies to broken submissions.
fn name_hint(event: &Event) -> Option<String> {
    let value: serde_json::Value = match event.data()? {
        cloudevents::event::Data::Json(value) => value.clone(),
        cloudevents::event::Data::Binary(bytes) => serde_json::from_slice(bytes).ok()?,
        cloudevents::event::Data::String(text) => serde_json::from_str(text).ok()?,
    };
    value
        .get("name")?
        .as_str()
        .map(|s| s.chars().take(253).collect())
}

/// Every structural problem of undecodable data, from the submission's JSON Schema; serde stops
/// at the first, users want them all.
fn structural_problems(event: &Event, error: &DecodeError) -> Vec<Problem> {
    static VALIDATOR: OnceLock<Option<jsonschema::Validator>> = OnceLock::new();
    let fallback = || vec![Problem::new("data", error.to_string())];
    let value: serde_json::Value = match event.data() {
        Some(cloudevents::event::Data::Json(value)) => value.clone(),
        Some(cloudevents::event::Data::Binary(bytes)) => match serde_json::from_slice(bytes) {
            Ok(value) => value,
            Err(_) => return fallback(),
        },
        _ => return fallback(),
    };
    let validator = VALIDATOR.get_or_init(|| {
        let spec = find(FunctionCreated::TYPE)?;
        let schema = serde_json::to_value(spec.schema()).ok()?;
        jsonschema::validator_for(&schema).ok()
    });
    let problems: Vec<Problem> = validator
        .iter()
        .flat_map(|v| v.iter_errors(&value))
        .map(|e| {
            let pointer = e.instance_path().to_string();
            let field = pointer.trim_start_matches('/').replace('/', ".");
            Problem::new(field, e.to_string())
        })
        .collect();
    if problems.is_empty() {
        fallback()
    } else {
        problems
    }
}
