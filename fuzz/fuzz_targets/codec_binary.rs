//! A binary-mode CloudEvent request: `name: value` header lines, a blank line, the body. The
//! decoder answers an event or every problem, never panics; a decoded event is forwarded
//! (encoded, decoded, encoded) without change.
#![no_main]

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use klambda_events::codec;
use libfuzzer_sys::fuzz_target;

#[path = "common/forward.rs"]
mod forward;

fuzz_target!(|input: &[u8]| {
    let split = input
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(input.len());
    let (head, body) = input.split_at(split);
    let body = body.get(2..).unwrap_or_default();
    let mut headers = HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    if let Ok(event) = codec::decode(&headers, Bytes::copy_from_slice(body)) {
        forward::forwarded_unchanged(&event);
    }
});
