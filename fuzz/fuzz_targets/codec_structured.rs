//! A structured-mode CloudEvent body (`application/cloudevents+json`): an event or every
//! problem, never a panic, whatever the nesting; a decoded event is forwarded in
//! binary mode without change.
#![no_main]

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};
use klambda_events::codec;
use libfuzzer_sys::fuzz_target;

#[path = "common/forward.rs"]
mod forward;

fuzz_target!(|body: &[u8]| {
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/cloudevents+json; charset=utf-8"),
    );
    if let Ok(event) = codec::decode(&headers, Bytes::copy_from_slice(body)) {
        forward::forwarded_unchanged(&event);
    }
});
