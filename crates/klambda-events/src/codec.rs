//! CloudEvents over HTTP (v1.0.2): request → `Event` listing every problem, `Event` → binary mode.
//!
//! Written here rather than taken from the SDK's axum extractor because that extractor stops at
//! the first problem and answers plain text; a producer fixing a broken event wants every
//! problem at once, as RFC 7807 problem details.

use crate::data::Problem;
use crate::envelope::is_json;
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use cloudevents::event::{Data, ExtensionValue};
use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde_json::{Map, Value};

/// Why a request does not carry one valid CloudEvent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeFailure {
    /// `application/cloudevents-batch`: Knative does not use batches; we refuse them.
    Batch,
    /// Every problem found.
    Invalid(Vec<Problem>),
}

const REQUIRED: [&str; 4] = ["id", "source", "specversion", "type"];

/// Characters percent-encoded in binary-mode header values: controls, space, `"`, `%` and DEL;
/// non-ASCII bytes are always encoded.
const HEADER_VALUE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%').add(0x7f);

/// Whether a content type names the CloudEvents format (structured or batch mode), which is how
/// a receiver tells a structured-mode message from a binary-mode one.
fn is_cloudevents_format(content_type: &str) -> bool {
    content_type
        .trim()
        .to_ascii_lowercase()
        .starts_with("application/cloudevents")
}

/// Decodes the event in a request, in binary or structured mode by its `Content-Type`.
pub fn decode(headers: &HeaderMap, body: Bytes) -> Result<Event, DecodeFailure> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned());
    let essence = content_type.as_deref().map(|ct| {
        ct.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    });
    match essence.as_deref() {
        Some(ct) if ct.starts_with("application/cloudevents-batch") => Err(DecodeFailure::Batch),
        Some(ct) if is_cloudevents_format(ct) => decode_structured(&body),
        _ => decode_binary(headers, content_type, body),
    }
}

/// Attributes gathered from either mode before validation.
#[derive(Default)]
struct Draft {
    attributes: Vec<(String, Value)>,
    datacontenttype: Option<String>,
    data: Option<Data>,
    problems: Vec<Problem>,
}

impl Draft {
    fn problem(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem::new(field, reason));
    }

    fn string(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_str())
    }

    /// Validates the gathered attributes and builds the event, or returns every problem.
    fn finish(self) -> Result<Event, DecodeFailure> {
        let mut problems = self.problems.clone();
        let mut problem = |field: &str, reason: String| problems.push(Problem::new(field, reason));
        for name in REQUIRED {
            match self.attributes.iter().find(|(n, _)| n == name) {
                // Already refused as sent (twice, not UTF-8): one problem, not two.
                None if self.problems.iter().any(|p| p.field == *name) => {}
                None => problem(name, format!("the required attribute {name} is missing")),
                Some((_, Value::String(s))) if s.is_empty() => {
                    problem(name, format!("{name} must not be empty"))
                }
                Some((_, Value::String(_))) => {}
                Some(_) => problem(name, format!("{name} must be a string")),
            }
        }
        if let Some(version) = self.string("specversion")
            && !version.is_empty()
            && version != "1.0"
        {
            let reason = format!("specversion {version:?} is not supported; use \"1.0\"");
            problem("specversion", reason);
        }
        let mut time = None;
        let mut dataschema = None;
        let mut extensions = Vec::new();
        for (name, value) in &self.attributes {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                problem(name, "attribute names use only a-z and 0-9".into());
                continue;
            }
            match (name.as_str(), value) {
                ("id" | "source" | "specversion" | "type", _) => {}
                ("subject", Value::String(s)) if s.is_empty() => {
                    problem("subject", "subject must not be empty when present".into())
                }
                ("subject" | "datacontenttype", Value::String(_)) => {}
                ("time", Value::String(s)) => match DateTime::parse_from_rfc3339(s) {
                    Ok(t) => time = Some(t.with_timezone(&Utc)),
                    Err(e) => problem("time", format!("{s:?} is not an RFC 3339 time: {e}")),
                },
                ("dataschema", Value::String(s)) => match url::Url::parse(s) {
                    Ok(u) => dataschema = Some(u),
                    Err(e) => problem("dataschema", format!("{s:?} is not an absolute URI: {e}")),
                },
                ("subject" | "time" | "dataschema" | "datacontenttype", _) => {
                    problem(name, "must be a string".into())
                }
                (_, Value::String(s)) => extensions.push((name, ExtensionValue::String(s.clone()))),
                (_, Value::Bool(b)) => extensions.push((name, ExtensionValue::Boolean(*b))),
                (_, Value::Number(n)) if n.is_i64() => extensions.push((
                    name,
                    ExtensionValue::Integer(n.as_i64().unwrap_or_default()),
                )),
                (_, _) => problem(
                    name,
                    "extension values are strings, integers or booleans".into(),
                ),
            }
        }
        if !problems.is_empty() {
            return Err(DecodeFailure::Invalid(problems));
        }
        let mut builder = EventBuilderV10::new()
            .id(self.string_owned("id"))
            .source(self.string_owned("source"))
            .ty(self.string_owned("type"));
        if let Some(subject) = self.string("subject") {
            builder = builder.subject(subject.to_owned());
        }
        if let Some(time) = time {
            builder = builder.time(time);
        }
        for (name, value) in extensions {
            builder = builder.extension(name, value);
        }
        let mut event = builder
            .build()
            .map_err(|e| DecodeFailure::Invalid(vec![Problem::new("", e.to_string())]))?;
        cloudevents::AttributesWriter::set_datacontenttype(&mut event, self.datacontenttype);
        cloudevents::AttributesWriter::set_dataschema(&mut event, dataschema);
        if let Some(data) = self.data {
            event.set_data_unchecked(data);
        }
        Ok(event)
    }

    fn string_owned(&self, name: &str) -> String {
        self.string(name).unwrap_or_default().to_owned()
    }
}

fn decode_binary(
    headers: &HeaderMap,
    content_type: Option<String>,
    body: Bytes,
) -> Result<Event, DecodeFailure> {
    let mut draft = Draft::default();
    for (name, value) in headers {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        // An attribute sent twice would be read one way here and another way by a relay:
        // refused, not first-wins.
        if headers.get_all(name).iter().count() > 1 {
            if draft.attributes.iter().all(|(n, _)| n != attribute)
                && draft.problems.iter().all(|p| p.field != attribute)
            {
                draft.problem(
                    attribute,
                    format!("header ce-{attribute} appears more than once; send it once"),
                );
            }
            continue;
        }
        // Header bytes that are not ASCII would be replaced and could make two ids one.
        let Ok(raw) = std::str::from_utf8(value.as_bytes()).map(str::to_owned) else {
            draft.problem(
                attribute,
                format!(
                    "header ce-{attribute} holds bytes that are not UTF-8; percent-encode them"
                ),
            );
            continue;
        };
        match percent_decode_str(&raw).decode_utf8() {
            Ok(text) => draft
                .attributes
                .push((attribute.to_owned(), Value::String(text.into_owned()))),
            Err(_) => draft.problem(
                attribute,
                format!("header ce-{attribute} is not percent-encoded UTF-8"),
            ),
        }
    }
    draft.binary(content_type, body)
}

/// Decodes an event carried in binary mode by another protocol (AMQP): `attributes` are the
/// bare attribute names and their already-decoded values, `content_type` is `datacontenttype`,
/// `body` is the data. Every problem is listed, as for HTTP.
pub fn decode_attributes(
    attributes: impl IntoIterator<Item = (String, String)>,
    content_type: Option<String>,
    body: Bytes,
) -> Result<Event, DecodeFailure> {
    let draft = Draft {
        attributes: attributes
            .into_iter()
            .map(|(name, value)| (name, Value::String(value)))
            .collect(),
        ..Draft::default()
    };
    draft.binary(content_type, body)
}

impl Draft {
    /// Finishes a binary-mode event: the data is the body, `content_type` its type.
    fn binary(mut self, content_type: Option<String>, body: Bytes) -> Result<Event, DecodeFailure> {
        if self.string("datacontenttype").is_some() {
            self.problem(
                "datacontenttype",
                "in binary mode the Content-Type header carries datacontenttype; drop ce-datacontenttype",
            );
        }
        if !body.is_empty() {
            if content_type.as_deref().is_none_or(is_json) {
                if json_depth(&body) > MAX_JSON_DEPTH {
                    self.problem(
                        "data",
                        format!("the data nests deeper than {MAX_JSON_DEPTH} levels"),
                    );
                } else if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
                    self.problem("data", format!("the body is not valid JSON: {e}"));
                }
            }
            // `Vec::from(Bytes)` reuses the buffer when it is not shared: no copy of the body.
            self.data = Some(Data::Binary(Vec::from(body)));
        }
        self.datacontenttype = content_type;
        self.finish()
    }
}

/// How deep JSON data may nest: far beyond any event of the platform, and well inside what a
/// recursive reader (ours, a consumer's) handles without exhausting its stack.
pub const MAX_JSON_DEPTH: usize = 64;

/// The deepest nesting of arrays and objects in `json` (brackets inside strings not counted),
/// read without parsing, so a hostile body is measured before anything recurses into it.
fn json_depth(json: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &byte in json {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn decode_structured(body: &[u8]) -> Result<Event, DecodeFailure> {
    let mut draft = Draft::default();
    // The envelope is one level; its data may nest as deep as a binary-mode body.
    if json_depth(body) > MAX_JSON_DEPTH + 1 {
        draft.problem(
            "data",
            format!("the data nests deeper than {MAX_JSON_DEPTH} levels"),
        );
        return Err(DecodeFailure::Invalid(draft.problems.clone()));
    }
    let object: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            draft.problem("", "a structured-mode body is a JSON object");
            return Err(DecodeFailure::Invalid(draft.problems.clone()));
        }
        Err(e) => {
            draft.problem("", format!("the body is not valid JSON: {e}"));
            return Err(DecodeFailure::Invalid(draft.problems.clone()));
        }
    };
    let mut data = None;
    let mut data_base64 = None;
    for (name, value) in object {
        match name.as_str() {
            "data" => data = Some(value),
            "data_base64" => data_base64 = Some(value),
            "datacontenttype" => match value {
                // It becomes the Content-Type header in binary mode: what a header cannot carry
                // (surrounding whitespace, control characters) would change or vanish on the
                // way (found by fuzzing).
                // Nor may it name the CloudEvents format itself: as a Content-Type it would make
                // the next hop read the binary-mode message as structured mode (found by fuzzing).
                Value::String(ct) if is_cloudevents_format(&ct) => {
                    draft.problem(
                        "datacontenttype",
                        "application/cloudevents… is the format of a whole event, not of data; binary mode could not carry it",
                    );
                }
                Value::String(ct) if HeaderValue::from_str(ct.trim()).is_ok() => {
                    draft.datacontenttype = Some(ct.trim().to_owned());
                }
                Value::String(_) => {
                    draft.problem("datacontenttype", "holds characters a header cannot carry");
                }
                _ => draft.problem("datacontenttype", "must be a string"),
            },
            _ => draft.attributes.push((name, value)),
        }
    }
    let json_data = draft.datacontenttype.as_deref().is_none_or(is_json);
    match (data, data_base64) {
        (Some(_), Some(_)) => draft.problem("data", "data and data_base64 are exclusive; send one"),
        (Some(Value::String(text)), None) if !json_data => draft.data = Some(Data::String(text)),
        (Some(value), None) => draft.data = Some(Data::Json(value)),
        (None, Some(Value::String(encoded))) => {
            match base64::engine::general_purpose::STANDARD.decode(encoded.as_bytes()) {
                Ok(bytes) => draft.data = Some(Data::Binary(bytes)),
                Err(e) => draft.problem("data_base64", format!("not valid base64: {e}")),
            }
        }
        (None, Some(_)) => draft.problem("data_base64", "must be a base64 string"),
        (None, None) => {}
    }
    draft.finish()
}

/// The data of an event as bytes, the way binary mode carries it (copied).
pub fn data_bytes(event: &Event) -> Bytes {
    match event.data() {
        None => Bytes::new(),
        Some(Data::Binary(bytes)) => Bytes::copy_from_slice(bytes),
        Some(Data::String(text)) => Bytes::copy_from_slice(text.as_bytes()),
        Some(Data::Json(value)) => Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
    }
}

/// Binary-mode headers and body for `event`, borrowing it (the body is copied).
pub fn encode_binary(event: &Event) -> (HeaderMap, Bytes) {
    (binary_headers(event), data_bytes(event))
}

/// Binary-mode headers and body for `event`, moving its data into the body without a copy.
pub fn into_binary(mut event: Event) -> (HeaderMap, Bytes) {
    let headers = binary_headers(&event);
    let body = match event.take_data().2 {
        None => Bytes::new(),
        Some(Data::Binary(bytes)) => Bytes::from(bytes),
        Some(Data::String(text)) => Bytes::from(text),
        Some(Data::Json(value)) => Bytes::from(serde_json::to_vec(&value).unwrap_or_default()),
    };
    (headers, body)
}

/// The `ce-*` headers (and `Content-Type`) of `event` in binary mode.
/// The content type `event`'s data travels with in binary mode (HTTP `Content-Type`, AMQP
/// `content_type`): its `datacontenttype`, else `application/octet-stream` for bytes that are not
/// JSON (structured `data_base64` without `datacontenttype`), since data without a type must be
/// JSON and the next hop would refuse them (found by fuzzing), else none.
pub fn wire_content_type(event: &Event) -> Option<&str> {
    match (event.datacontenttype(), event.data()) {
        (Some(declared), _) => Some(declared),
        (None, Some(Data::Binary(bytes)))
            if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_err() =>
        {
            Some("application/octet-stream")
        }
        _ => None,
    }
}

fn binary_headers(event: &Event) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(8);
    visit_attributes(event, |name, value| {
        // Borrows when nothing needs escaping, which is the common case.
        let encoded: std::borrow::Cow<'_, str> = utf8_percent_encode(value, HEADER_VALUE).into();
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(format!("ce-{name}").as_bytes()),
            HeaderValue::from_str(&encoded),
        ) {
            headers.insert(name, value);
        }
    });
    if let Some(ct) = wire_content_type(event)
        && let Ok(value) = HeaderValue::from_str(ct)
    {
        headers.insert(CONTENT_TYPE, value);
    }
    headers
}

/// Calls `visit` with the bare name and text value of every attribute of `event` that binary
/// mode carries as a header: all but `datacontenttype` (which travels as the content type) and
/// the data itself. Shared by HTTP (`ce-` headers) and AMQP (bare header names).
pub fn visit_attributes(event: &Event, mut visit: impl FnMut(&str, &str)) {
    visit("specversion", "1.0");
    visit("id", event.id());
    visit("source", event.source());
    visit("type", event.ty());
    if let Some(subject) = event.subject() {
        visit("subject", subject);
    }
    if let Some(time) = event.time() {
        visit("time", &time.to_rfc3339_opts(SecondsFormat::AutoSi, true));
    }
    if let Some(schema) = event.dataschema() {
        visit("dataschema", schema.as_str());
    }
    for (name, value) in event.iter_extensions() {
        visit(name, &value.to_string());
    }
}

/// The event in the CloudEvents JSON format (what the status reporter stores and serves, and
/// what the dead letters and `klambda events -o json` show): data of a JSON media type (or of
/// none, which the format reads as JSON) as a JSON value in `data`; data of a text media type
/// as a string in `data`, decoded from its declared charset (UTF-8 or US-ASCII; UTF-8 when none
/// is declared); anything else, or text that does not decode, as `data_base64`. Attributes and
/// extensions as the event has them.
pub fn to_structured(event: &Event) -> Value {
    let mut json = serde_json::to_value(event).unwrap_or(Value::Null);
    let (Some(Data::Binary(bytes)), Some(object)) = (event.data(), json.as_object_mut()) else {
        return json;
    };
    let data = match media_class(event.datacontenttype()) {
        MediaClass::Json => serde_json::from_slice::<Value>(bytes).ok(),
        MediaClass::Text { ascii_only } => std::str::from_utf8(bytes)
            .ok()
            .filter(|text| !ascii_only || text.is_ascii())
            .map(|text| Value::String(text.to_owned())),
        MediaClass::Other => None,
    };
    if let Some(data) = data {
        object.remove("data_base64");
        object.insert("data".to_owned(), data);
    }
    json
}

/// How the JSON event format carries data of a media type.
#[derive(Debug, PartialEq, Eq)]
enum MediaClass {
    /// A JSON value (`application/json`, `*/*+json`, or no type at all).
    Json,
    /// A string; its charset is UTF-8, or US-ASCII when `ascii_only`.
    Text { ascii_only: bool },
    /// Bytes, as `data_base64`: other media types, and text in any other charset (decoding it
    /// to a string would not give the same bytes back).
    Other,
}

fn media_class(content_type: Option<&str>) -> MediaClass {
    let Some(content_type) = content_type else {
        return MediaClass::Json;
    };
    if is_json(content_type) {
        return MediaClass::Json;
    }
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let textual =
        essence.starts_with("text/") || essence == "application/xml" || essence.ends_with("+xml");
    if !textual {
        return MediaClass::Other;
    }
    let charset = parts
        .filter_map(|p| p.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("charset"))
        .map(|(_, value)| value.trim().trim_matches('"').to_ascii_lowercase());
    match charset.as_deref() {
        None | Some("utf-8" | "utf8") => MediaClass::Text { ascii_only: false },
        Some("us-ascii" | "ascii") => MediaClass::Text { ascii_only: true },
        Some(_) => MediaClass::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes_that_are_not_utf8_are_refused_not_replaced() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("ce-specversion", &b"1.0"[..]),
            ("ce-id", &b"id-\xff"[..]),
            ("ce-source", &b"/t"[..]),
            ("ce-type", &b"test.echo"[..]),
        ] {
            headers.insert(
                http::HeaderName::from_static(name),
                http::HeaderValue::from_bytes(value).unwrap(),
            );
        }
        let Err(DecodeFailure::Invalid(problems)) = decode(&headers, Bytes::new()) else {
            panic!("a ce-id with a byte that is not UTF-8 must be refused");
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "id");
    }

    /// Found by `fuzz/fuzz_targets/codec_structured.rs`: the structured event decoded, but its
    /// binary form (bytes, no Content-Type) was refused as "not valid JSON" by the next hop.
    #[test]
    fn an_event_with_base64_data_and_no_content_type_can_be_forwarded() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/cloudevents+json"),
        );
        let body = br#"{"specversion":"1.0","id":"e-2","source":"/t","type":"t.x","data_base64":"aGVsbG8="}"#;
        let event = decode(&headers, Bytes::from_static(body)).unwrap();
        let (headers, body) = encode_binary(&event);
        assert_eq!(headers[CONTENT_TYPE], "application/octet-stream");
        let again = decode(&headers, body.clone()).unwrap();
        assert_eq!(encode_binary(&again), (headers, body));
        assert_eq!(data_bytes(&again), Bytes::from_static(b"hello"));
    }

    /// Found by `fuzz/fuzz_targets/codec_structured.rs` in a 10-minute run: a `datacontenttype`
    /// with a trailing space lost it as a header, so forwarding changed the event.
    #[test]
    fn a_structured_content_type_is_what_a_header_can_carry() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/cloudevents+json"),
        );
        let event = |ct: &str| {
            serde_json::json!({"specversion": "1.0", "id": "e", "source": "/t", "type": "t.x",
                               "datacontenttype": ct})
            .to_string()
        };
        let spaced = decode(&headers, Bytes::from(event("text/plain "))).unwrap();
        assert_eq!(spaced.datacontenttype(), Some("text/plain"));
        let (forward, body) = encode_binary(&spaced);
        let again = decode(&forward, body.clone()).unwrap();
        assert_eq!(encode_binary(&again), (forward, body));
        assert!(decode(&headers, Bytes::from(event("text/\u{1}plain"))).is_err());
    }

    /// The CloudEvents JSON format's cases, in binary mode (where data arrives as bytes).
    #[test]
    fn data_is_carried_as_the_json_format_says_for_each_media_type() {
        let binary = |content_type: Option<&str>, body: &[u8]| {
            let mut headers = HeaderMap::new();
            for (name, value) in [
                ("ce-specversion", "1.0"),
                ("ce-id", "e-1"),
                ("ce-source", "/t"),
                ("ce-type", "t.x"),
                ("ce-note", "cr%C3%A8me"),
            ] {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    headers.insert(name, value);
                }
            }
            if let Some(ct) = content_type {
                headers.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            }
            to_structured(&decode(&headers, Bytes::copy_from_slice(body)).unwrap())
        };
        // The media type, the body, and the member of the JSON format carrying it, with its value.
        type Case<'a> = (Option<&'a str>, &'a [u8], (&'a str, Value));
        let cases: [Case<'_>; 9] = [
            (
                Some("application/json"),
                br#"{"a":1}"#,
                ("data", serde_json::json!({"a": 1})),
            ),
            (
                None,
                r#"{"a":[1,"é"]}"#.as_bytes(),
                ("data", serde_json::json!({"a": [1, "é"]})),
            ),
            (
                Some("application/vnd.order+json"),
                b"[true]",
                ("data", serde_json::json!([true])),
            ),
            (
                Some("text/plain; charset=us-ascii"),
                b"plain text",
                ("data", Value::from("plain text")),
            ),
            (
                Some("text/plain; charset=utf-8"),
                "Grüße, 世界".as_bytes(),
                ("data", Value::from("Grüße, 世界")),
            ),
            (
                Some("application/xml; charset=utf-8"),
                b"<a>\xc3\xa9</a>",
                ("data", Value::from("<a>é</a>")),
            ),
            (
                Some("text/plain; charset=us-ascii"),
                "é".as_bytes(),
                ("data_base64", Value::from("w6k=")),
            ),
            (
                Some("text/plain; charset=iso-8859-1"),
                b"\xe9",
                ("data_base64", Value::from("6Q==")),
            ),
            (
                Some("application/octet-stream"),
                b"\x00\xff",
                ("data_base64", Value::from("AP8=")),
            ),
        ];
        for (content_type, body, (key, expected)) in cases {
            let json = binary(content_type, body);
            assert_eq!(json[key], expected, "{content_type:?}: {json}");
            let other = if key == "data" { "data_base64" } else { "data" };
            assert!(json.get(other).is_none(), "{content_type:?}: {json}");
            assert_eq!(json["note"], "crème", "{json}");
            assert_eq!(
                json.get("datacontenttype").and_then(Value::as_str),
                content_type
            );
        }
    }

    /// Found by `fuzz/fuzz_targets/codec_structured.rs`: a `datacontenttype` naming the
    /// CloudEvents format became the binary-mode Content-Type, and the next hop read the message
    /// as structured mode (an empty body: not JSON).
    #[test]
    fn data_cannot_claim_the_cloudevents_format() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/cloudevents+json"),
        );
        let body = br#"{"specversion":"1.0","id":"e","source":"/t","type":"t.x","datacontenttype":"application/cloudevents[["}"#;
        let Err(DecodeFailure::Invalid(problems)) = decode(&headers, Bytes::from_static(body))
        else {
            panic!("a datacontenttype naming the CloudEvents format must be refused");
        };
        assert_eq!(problems[0].field, "datacontenttype", "{problems:?}");
    }

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        assert_eq!(json_depth(br#"{"a": [1, {"b": "[[[[\"]]"}]}"#), 3);
        assert_eq!(json_depth(b"1"), 0);
        assert_eq!(json_depth("[".repeat(100).as_bytes()), 100);
    }
}
