//! The webhook gateway's authentication of a delivery: `X-Buildkite-Signature`,
//! `X-Buildkite-Token` and `X-Hub-Signature-256` from arbitrary bytes, with arbitrary bodies;
//! accepted or refused, never a panic (a timestamp of i64::MIN once overflowed).
#![no_main]

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use klambda_harness::config::Secret;
use libfuzzer_sys::fuzz_target;
use webhook_gateway::auth::{self, BuildkiteSecrets};

fuzz_target!(|input: &[u8]| {
    let mut parts = input.splitn(3, |b| *b == 0);
    let (Some(value), Some(now), body) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let now = now
        .iter()
        .take(8)
        .fold(0i64, |n, b| n.wrapping_shl(8) | i64::from(*b));
    let body = body.unwrap_or_default();
    let Ok(value) = HeaderValue::from_bytes(value) else {
        return;
    };
    let secrets = BuildkiteSecrets {
        token: Some(Secret::new("token")),
        signing_key: Some(Secret::new("key")),
        tolerance: Duration::from_secs(300),
    };
    for name in ["x-buildkite-signature", "x-buildkite-token"] {
        let mut headers = HeaderMap::new();
        headers.insert(name, value.clone());
        let _ = auth::buildkite(&headers, body, &secrets, now);
    }
    let mut headers = HeaderMap::new();
    headers.insert("x-hub-signature-256", value);
    let _ = auth::github(&headers, body, Some(&Secret::new("secret")));
});
