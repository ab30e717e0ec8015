//! Reading webhook payloads with field-level errors: every missing or mistyped field is listed,
//! so a sender (or whoever configures it) fixes them all at once.

use klambda_events::data::Problem;
use serde_json::{Map, Value};

/// A JSON payload being read; problems accumulate instead of stopping at the first.
pub struct Fields<'a> {
    root: &'a Value,
    /// Every problem found so far.
    pub problems: Vec<Problem>,
}

impl<'a> Fields<'a> {
    /// Reads `root`.
    pub fn new(root: &'a Value) -> Self {
        Self {
            root,
            problems: Vec::new(),
        }
    }

    fn at(&self, path: &str) -> Option<&'a Value> {
        let mut at = self.root;
        for key in path.split('.') {
            at = at.get(key)?;
        }
        (!at.is_null()).then_some(at)
    }

    /// A required string.
    pub fn string(&mut self, path: &str) -> String {
        match self.at(path) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_)) => {
                self.problems.push(Problem::new(path, "must not be empty"));
                String::new()
            }
            Some(_) => {
                self.problems.push(Problem::new(path, "must be a string"));
                String::new()
            }
            None => {
                self.problems.push(Problem::new(path, "is required"));
                String::new()
            }
        }
    }

    /// A required non-negative integer.
    pub fn number(&mut self, path: &str) -> u64 {
        match self.at(path) {
            Some(value) => value.as_u64().unwrap_or_else(|| {
                self.problems
                    .push(Problem::new(path, "must be a non-negative integer"));
                0
            }),
            None => {
                self.problems.push(Problem::new(path, "is required"));
                0
            }
        }
    }

    /// An optional string (a present value of another type is a problem).
    pub fn optional(&mut self, path: &str) -> Option<String> {
        match self.at(path) {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.problems.push(Problem::new(path, "must be a string"));
                None
            }
        }
    }
}

/// A JSON object of the present values, for compact event data.
pub fn compact(pairs: Vec<(&str, Value)>) -> Value {
    let object: Map<String, Value> = pairs
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    Value::Object(object)
}

/// Event names are dot-separated lowercase words (`build.finished`, `workflow_run`).
pub fn valid_event_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_')
}
