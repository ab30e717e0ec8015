//! Triggers as the embedded broker reads them from `eventing/`: the same files that go to the
//! cluster, so what routes on a laptop is what routes on Knative.
//!
//! Only what the RabbitMQ broker implements is accepted: exact-match `spec.filter.attributes`.
//! A Trigger with `spec.filters` or an empty filter value is refused at load, because on the
//! cluster it would silently receive every event.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cloudevents::Event;
use serde::Deserialize as _;
use serde_json::Value;

use crate::delivery::Delivery;

/// Why the choreography could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A Trigger or Broker is not one the RabbitMQ broker would run the same way.
    #[error("{path}: {kind} {name}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// `Trigger` or `Broker`.
        kind: &'static str,
        /// The object's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// One Trigger: which events, to whom, with which delivery rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    /// `metadata.name`.
    pub name: String,
    /// Attribute → exact value; every one must match. Empty: every event.
    pub filter: BTreeMap<String, String>,
    /// The subscriber's Service name (`spec.subscriber.ref.name`).
    pub subscriber: String,
    /// The delivery rules: the Trigger's own if it sets any field, else the Broker's.
    pub delivery: Delivery,
    /// Concurrent deliveries (`rabbitmq.eventing.knative.dev/parallelism`); 1 keeps order.
    pub parallelism: usize,
}

impl Trigger {
    /// Whether `event` passes this Trigger's filter (exact match on every listed attribute;
    /// extensions are compared as strings).
    pub fn matches(&self, event: &Event) -> bool {
        use cloudevents::AttributesReader as _;
        self.filter.iter().all(|(name, expected)| {
            let actual = match name.as_str() {
                "id" => Some(event.id().to_owned()),
                "source" => Some(event.source().to_string()),
                "type" => Some(event.ty().to_owned()),
                "specversion" => Some(event.specversion().to_string()),
                "subject" => event.subject().map(str::to_owned),
                "datacontenttype" => event.datacontenttype().map(str::to_owned),
                "dataschema" => event.dataschema().map(|u| u.to_string()),
                "time" => event.time().map(|t| t.to_rfc3339()),
                extension => event.extension(extension).map(|v| v.to_string()),
            };
            actual.as_deref() == Some(expected.as_str())
        })
    }
}

/// The delivery of the Broker named `broker` under `dir`: what a Trigger that sets none (a
/// user's function Trigger) gets. Knative's defaults when the Broker sets none.
pub fn broker_delivery(dir: &Path, broker: &str) -> Result<Delivery, LoadError> {
    let mut documents = Vec::new();
    collect(dir, &mut documents)?;
    delivery_of(&documents, broker)
}

fn delivery_of(documents: &[(PathBuf, Value)], broker: &str) -> Result<Delivery, LoadError> {
    Ok(documents
        .iter()
        .find(|(_, doc)| doc["kind"] == "Broker" && doc["metadata"]["name"] == broker)
        .map(|(path, doc)| {
            Delivery::from_spec(&doc["spec"]["delivery"]).map_err(|reason| LoadError::Invalid {
                path: path.clone(),
                kind: "Broker",
                name: broker.to_owned(),
                reason,
            })
        })
        .transpose()?
        .unwrap_or_default())
}

/// Loads every Trigger under `dir` (recursively), with the delivery of the Broker named
/// `broker` as the default.
pub fn load(dir: &Path, broker: &str) -> Result<Vec<Trigger>, LoadError> {
    let mut documents = Vec::new();
    collect(dir, &mut documents)?;
    let broker_delivery = delivery_of(&documents, broker)?;
    let mut triggers = Vec::new();
    for (path, doc) in &documents {
        if doc["kind"] != "Trigger" || doc["spec"]["broker"] != broker {
            continue;
        }
        triggers.push(trigger(path, doc, &broker_delivery)?);
    }
    triggers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(triggers)
}

fn trigger(path: &Path, doc: &Value, broker_delivery: &Delivery) -> Result<Trigger, LoadError> {
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let invalid = |reason: String| LoadError::Invalid {
        path: path.to_owned(),
        kind: "Trigger",
        name: name.clone(),
        reason,
    };
    if !doc["spec"]["filters"].is_null() {
        return Err(invalid(
            "spec.filters is ignored by the RabbitMQ broker; use spec.filter.attributes".into(),
        ));
    }
    let mut filter = BTreeMap::new();
    for (key, value) in doc["spec"]["filter"]["attributes"]
        .as_object()
        .into_iter()
        .flatten()
    {
        match value.as_str() {
            Some(v) if !v.is_empty() => {
                filter.insert(key.clone(), v.to_owned());
            }
            _ => {
                return Err(invalid(format!(
                    "filter attribute {key} must be a non-empty string"
                )));
            }
        }
    }
    let subscriber = doc["spec"]["subscriber"]["ref"]["name"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("spec.subscriber.ref.name is required".into()))?
        .to_owned();
    let delivery = match doc["spec"]["delivery"].as_object() {
        Some(spec) if !spec.is_empty() => {
            Delivery::from_spec(&doc["spec"]["delivery"]).map_err(invalid)?
        }
        _ => broker_delivery.clone(),
    };
    let parallelism = match &doc["metadata"]["annotations"]["rabbitmq.eventing.knative.dev/parallelism"]
    {
        Value::Null => 1,
        value => value
            .as_str()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                invalid(format!(
                    "parallelism {value} must be an integer from 1 to 1000"
                ))
            })?,
    };
    Ok(Trigger {
        name,
        filter,
        subscriber,
        delivery,
        parallelism,
    })
}

fn collect(dir: &Path, out: &mut Vec<(PathBuf, Value)>) -> Result<(), LoadError> {
    let file_error = |path: &Path, reason: String| LoadError::File {
        path: path.to_owned(),
        reason,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| file_error(dir, e.to_string()))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            collect(&path, out)?;
            continue;
        }
        if path.extension().is_none_or(|e| e != "yaml" && e != "yml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| file_error(&path, e.to_string()))?;
        for document in serde_norway::Deserializer::from_str(&text) {
            let value =
                Value::deserialize(document).map_err(|e| file_error(&path, e.to_string()))?;
            if !value.is_null() {
                out.push((path.clone(), value));
            }
        }
    }
    Ok(())
}
