//! What a relay does with an event it accepted: forward it in binary mode. The next hop must
//! accept it, and forwarding it again must put the same bytes on the wire.

use klambda_events::codec;

/// Panics when `event` cannot be forwarded unchanged.
pub fn forwarded_unchanged(event: &klambda_events::cloudevents::Event) {
    let (headers, body) = codec::encode_binary(event);
    let again = codec::decode(&headers, body.clone()).expect("an encoded event decodes");
    assert_eq!(
        codec::encode_binary(&again),
        (headers, body),
        "forwarding is stable"
    );
}
