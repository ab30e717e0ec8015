//! CloudEvents in AMQP binary mode, as eventing-rabbitmq carries them: every attribute a header
//! under its bare name (`specversion`, `id`, `type`, …, extensions, `traceparent`), header
//! `content-type` and property `content_type` = `datacontenttype`, property `message_id` = id,
//! persistent delivery, body = the data bytes.

use bytes::Bytes;
use cloudevents::event::Data;
use cloudevents::{AttributesReader as _, Event};
use klambda_harness::codec::{self, DecodeFailure};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// The header that carries `datacontenttype`, as eventing-rabbitmq names it.
const CONTENT_TYPE_HEADER: &str = "content-type";

/// AMQP `delivery_mode` 2: the message is written to disk by a durable queue.
const PERSISTENT: u8 = 2;

/// The properties (headers included) and body that carry `event`.
pub fn encode(event: &Event) -> (BasicProperties, Vec<u8>) {
    let mut headers = FieldTable::default();
    codec::visit_attributes(event, |name, value| {
        headers.insert(
            ShortString::from(name),
            AMQPValue::LongString(LongString::from(value)),
        );
    });
    let mut properties = BasicProperties::default()
        .with_message_id(ShortString::from(event.id()))
        .with_delivery_mode(PERSISTENT);
    if let Some(content_type) = codec::wire_content_type(event) {
        headers.insert(
            ShortString::from(CONTENT_TYPE_HEADER),
            AMQPValue::LongString(LongString::from(content_type)),
        );
        properties = properties.with_content_type(ShortString::from(content_type));
    }
    let body = match event.data() {
        None => Vec::new(),
        Some(Data::Binary(bytes)) => bytes.clone(),
        Some(Data::String(text)) => text.as_bytes().to_vec(),
        Some(Data::Json(value)) => serde_json::to_vec(value).unwrap_or_default(),
    };
    (properties.with_headers(headers), body)
}

/// The event carried by a message; every problem is listed (as for HTTP) when it is not a
/// valid CloudEvent. Headers starting with `x-` are RabbitMQ's (dead-lettering, retries) and
/// are not attributes.
pub fn decode(properties: &BasicProperties, body: Vec<u8>) -> Result<Event, DecodeFailure> {
    let mut content_type = properties
        .content_type()
        .as_ref()
        .map(|ct| ct.as_str().to_owned());
    let mut attributes = Vec::new();
    if let Some(headers) = properties.headers() {
        for (name, value) in headers {
            let name = name.as_str();
            if name.starts_with("x-") {
                continue;
            }
            let Some(text) = text(value) else { continue };
            if name == CONTENT_TYPE_HEADER {
                content_type.get_or_insert(text);
            } else {
                attributes.push((name.to_owned(), text));
            }
        }
    }
    codec::decode_attributes(attributes, content_type, Bytes::from(body))
}

/// A header value as text: strings as they are, numbers and booleans written out; other
/// AMQP types (tables, arrays, timestamps) are not CloudEvents attribute values.
fn text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use cloudevents::{EventBuilder as _, EventBuilderV10};

    use super::*;

    #[test]
    fn an_event_survives_the_round_trip_with_every_attribute() {
        let event = EventBuilderV10::new()
            .id("e-1")
            .source("urn:test")
            .ty("com.example.order.created")
            .subject("hello")
            .extension(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .extension("knativeerrorcode", "503")
            .data("application/json", serde_json::json!({"name": "hello"}))
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let (properties, body) = encode(&event);
        assert_eq!(
            properties.message_id().as_ref().map(|m| m.as_str()),
            Some("e-1")
        );
        assert_eq!(properties.delivery_mode(), &Some(PERSISTENT));
        let headers = properties.headers().clone().unwrap_or_default();
        for name in [
            "specversion",
            "id",
            "source",
            "type",
            "subject",
            "traceparent",
        ] {
            assert!(
                headers.inner().contains_key(name),
                "header {name} is missing: {headers:?}"
            );
        }
        let back = decode(&properties, body).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(back.id(), "e-1");
        assert_eq!(back.subject(), Some("hello"));
        assert_eq!(back.datacontenttype(), Some("application/json"));
        assert_eq!(
            back.extension("knativeerrorcode").map(|v| v.to_string()),
            Some("503".into())
        );
        assert_eq!(codec::data_bytes(&back), codec::data_bytes(&event));
    }

    #[test]
    fn a_message_that_is_not_an_event_lists_its_problems() {
        let mut headers = FieldTable::default();
        headers.insert("x-death".into(), AMQPValue::LongString("ignored".into()));
        headers.insert("id".into(), AMQPValue::LongString("".into()));
        let properties = BasicProperties::default().with_headers(headers);
        match decode(&properties, b"{".to_vec()) {
            Err(DecodeFailure::Invalid(problems)) => {
                let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
                for field in ["id", "source", "specversion", "type", "data"] {
                    assert!(fields.contains(&field), "{field} not in {fields:?}");
                }
            }
            other => panic!("expected problems, got {other:?}"),
        }
    }
}
