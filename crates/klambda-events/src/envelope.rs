//! Typed data in and out of `cloudevents::Event`.
//!
//! Replies get ids derived from the input event (sha256 of its source, id and the reply type),
//! and no `time`: replaying an input produces the identical reply, so every receiver's
//! `source` + `id` dedupe works across replays.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::OnceLock;

use cloudevents::event::Data;
use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use sha2::{Digest as _, Sha256};

use crate::catalogue::{EventType, Stage, dataschema_uri};

/// The content type of every platform event's data.
pub const JSON: &str = "application/json";

/// Why an event's data could not be read as the expected type.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The event is of another type.
    #[error("expected an event of type {expected}, got {actual}")]
    WrongType {
        /// The type the caller wanted.
        expected: &'static str,
        /// The type the event has.
        actual: String,
    },
    /// The `dataschema` names a version this build does not read.
    #[error("dataschema {actual} is not supported; this stage reads {expected}")]
    UnsupportedVersion {
        /// The `dataschema` this build reads.
        expected: String,
        /// The event's `dataschema`.
        actual: String,
    },
    /// The event has no data.
    #[error("the event has no data; {0} needs a JSON object")]
    NoData(&'static str),
    /// The content type is not JSON.
    #[error("datacontenttype {0:?} is not JSON; platform events carry application/json")]
    NotJson(String),
    /// The data does not match the type's schema.
    #[error("data does not match {type_name} v{version}: {source}")]
    Invalid {
        /// The event type.
        type_name: &'static str,
        /// Its data version.
        version: u32,
        /// What serde found.
        source: serde_json::Error,
    },
}

/// Reads the data of `event` as `T`'s data, checking type, version and content type.
pub fn decode<T: EventType>(event: &Event) -> Result<T::Data, DecodeError> {
    if event.ty() != T::TYPE {
        return Err(DecodeError::WrongType {
            expected: T::TYPE,
            actual: event.ty().to_owned(),
        });
    }
    if let Some(schema) = event.dataschema() {
        let expected = dataschema_uri(T::TYPE, T::VERSION);
        if schema.as_str() != expected {
            return Err(DecodeError::UnsupportedVersion {
                expected,
                actual: schema.to_string(),
            });
        }
    }
    if let Some(ct) = event.datacontenttype()
        && !is_json(ct)
    {
        return Err(DecodeError::NotJson(ct.to_owned()));
    }
    let invalid = |source| DecodeError::Invalid {
        type_name: T::TYPE,
        version: T::VERSION,
        source,
    };
    match event.data() {
        None => Err(DecodeError::NoData(T::TYPE)),
        Some(Data::Json(value)) => T::Data::deserialize(value).map_err(invalid),
        Some(Data::Binary(bytes)) => serde_json::from_slice(bytes).map_err(invalid),
        Some(Data::String(text)) => serde_json::from_str(text).map_err(invalid),
    }
}

use serde::Deserialize as _;

/// Whether a content type is JSON (`application/json`, `text/json`, `…+json`, with parameters).
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// The attributes of an event about to be emitted: everything but its type and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    id: String,
    source: String,
    subject: Option<String>,
}

impl Envelope {
    /// An envelope with an explicit id and source (clients: the CLI, tests).
    pub fn new(id: impl Into<String>, source: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            source: source.into(),
            subject: None,
        }
    }

    /// The envelope of an event `stage` emits in answer to `input`: source from the stage, id
    /// derived from the input and `reply_type`, subject carried over. Stages use [`reply`],
    /// which takes the type from the event type itself.
    fn answering(input: &Event, stage: Stage, reply_type: &str) -> Self {
        let mut hash = Sha256::new();
        for part in [input.source().as_str(), input.id(), reply_type] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        let digest = hash.finalize();
        Self {
            id: hex::encode(&digest[..16]),
            source: stage.event_source().to_owned(),
            subject: input.subject().map(str::to_owned),
        }
    }

    /// Sets the subject (the function name, for platform events).
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// The event id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Builds the event of type `T` carrying `data`.
    pub fn encode<T: EventType>(&self, data: &T::Data) -> Event {
        // Serialising our own data types cannot fail: they hold no maps with non-string keys
        // and no types with fallible Serialize impls.
        let body = serde_json::to_vec(data).unwrap_or_default();
        let mut builder = EventBuilderV10::new()
            .id(self.id.clone())
            .source(self.source.clone())
            .ty(T::TYPE)
            .data(JSON, body);
        if let Some(subject) = &self.subject {
            builder = builder.subject(subject.clone());
        }
        // `build` fails only on an empty source or type; both are set above. Falling back to an
        // empty event (which every receiver refuses) beats a panic taking the stage down.
        let mut event: Event = builder.build().unwrap_or_default();
        cloudevents::AttributesWriter::set_dataschema(&mut event, dataschema_url::<T>());
        event
    }
}

/// An event of type `T` that `stage` emits in answer to an input, before its data: the type is
/// named once, so the id (derived from the input and `T::TYPE`) and the type cannot disagree.
#[derive(Debug, Clone)]
pub struct Reply<T> {
    envelope: Envelope,
    event_type: PhantomData<fn() -> T>,
}

/// The reply of type `T` that `stage` emits in answer to `input`: source from the stage, id
/// derived from the input and the type (a replayed input gets the identical reply), subject
/// carried over from the input.
pub fn reply<T: EventType>(input: &Event, stage: Stage) -> Reply<T> {
    Reply {
        envelope: Envelope::answering(input, stage, T::TYPE),
        event_type: PhantomData,
    }
}

impl<T: EventType> Reply<T> {
    /// Sets the subject (the function name).
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.envelope = self.envelope.subject(subject);
        self
    }

    /// The event id.
    pub fn id(&self) -> &str {
        self.envelope.id()
    }

    /// The event, carrying `data`.
    pub fn data(&self, data: &T::Data) -> Event {
        self.envelope.encode::<T>(data)
    }
}

/// The parsed `dataschema` URL of `T`, parsed once per type: encoding is on every stage's hot
/// path and URL parsing is a measurable part of it (docs/BENCHMARKS.md).
fn dataschema_url<T: EventType>() -> Option<url::Url> {
    static URLS: OnceLock<HashMap<&'static str, url::Url>> = OnceLock::new();
    let urls = URLS.get_or_init(|| {
        crate::CATALOGUE
            .iter()
            .filter_map(|spec| Some((spec.type_name, url::Url::parse(&spec.dataschema()).ok()?)))
            .collect()
    });
    match urls.get(T::TYPE) {
        Some(url) if T::VERSION == crate::catalogue::find(T::TYPE).map_or(0, |s| s.version) => {
            Some(url.clone())
        }
        _ => url::Url::parse(&dataschema_uri(T::TYPE, T::VERSION)).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FunctionName;
    use crate::catalogue::{FunctionDeleted, ParserCompleted};
    use crate::data::FunctionDeletion;

    fn deletion() -> FunctionDeletion {
        FunctionDeletion {
            name: FunctionName::new("hello").unwrap(),
            extra: Default::default(),
        }
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let event = Envelope::new("1", "/test")
            .subject("hello")
            .encode::<FunctionDeleted>(&deletion());
        assert_eq!(event.ty(), "io.knative.lambda.function.deleted");
        assert_eq!(event.subject(), Some("hello"));
        assert_eq!(
            event.dataschema().map(|u| u.as_str()),
            Some("urn:knative-lambda:schema:io.knative.lambda.function.deleted:v1")
        );
        assert_eq!(decode::<FunctionDeleted>(&event).unwrap(), deletion());
    }

    #[test]
    fn decode_refuses_the_wrong_type_version_and_content_type() {
        let event = Envelope::new("1", "/t").encode::<FunctionDeleted>(&deletion());
        assert!(matches!(
            decode::<ParserCompleted>(&event),
            Err(DecodeError::WrongType { .. })
        ));

        let mut newer = event.clone();
        cloudevents::AttributesWriter::set_dataschema(
            &mut newer,
            Some(
                url::Url::parse("urn:knative-lambda:schema:io.knative.lambda.function.deleted:v2")
                    .unwrap(),
            ),
        );
        assert!(matches!(
            decode::<FunctionDeleted>(&newer),
            Err(DecodeError::UnsupportedVersion { .. })
        ));

        let mut text = event.clone();
        text.set_data("text/plain", "hi".to_owned());
        assert!(matches!(
            decode::<FunctionDeleted>(&text),
            Err(DecodeError::NotJson(_))
        ));
    }

    #[test]
    fn replies_to_the_same_input_are_identical_and_distinct_per_type() {
        let input = Envelope::new("abc", "/cli")
            .subject("hello")
            .encode::<FunctionDeleted>(&deletion());
        let a = Envelope::answering(&input, Stage::Parser, "x");
        assert_eq!(a, Envelope::answering(&input, Stage::Parser, "x"));
        assert_ne!(a.id(), Envelope::answering(&input, Stage::Parser, "y").id());
        assert_eq!(a.subject.as_deref(), Some("hello"));

        let event = reply::<FunctionDeleted>(&input, Stage::Parser).data(&deletion());
        assert_eq!(event.ty(), FunctionDeleted::TYPE);
        let expected = Envelope::answering(&input, Stage::Parser, FunctionDeleted::TYPE);
        assert_eq!(event.id(), expected.id());
        assert_eq!(event.subject(), Some("hello"));
    }

    #[test]
    fn json_content_types() {
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            "application/cloudevents+json",
            "TEXT/JSON",
        ] {
            assert!(is_json(ct), "{ct}");
        }
        for ct in [
            "text/plain",
            "application/octet-stream",
            "application/jsonx",
        ] {
            assert!(!is_json(ct), "{ct}");
        }
    }
}
