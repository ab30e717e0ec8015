//! A structured-mode CloudEvent body (`application/cloudevents+json`): an event or every
//! problem, never a panic, whatever the nesting; a decoded event is forwarded in
//! binary mode without change.
#![no_main]

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};
use klambda_events::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/cloudevents+json; charset=utf-8"),
    );
    if let Ok(event) = codec::decode(&headers, Bytes::copy_from_slice(body)) {
        // What a relay does: forward it in binary mode. The next hop accepts it, and forwarding
        // it again puts the same bytes on the wire.
        let (headers, body) = codec::encode_binary(&event);
        let again = codec::decode(&headers, body.clone()).expect("an encoded event decodes");
        assert_eq!(
            codec::encode_binary(&again),
            (headers, body),
            "forwarding is stable"
        );
    }
});
