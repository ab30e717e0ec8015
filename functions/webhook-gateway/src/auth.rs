//! Who sent a webhook: Buildkite's token (`X-Buildkite-Token`, compared in constant time) or
//! signature (`X-Buildkite-Signature: timestamp=T,signature=HEX`, HMAC-SHA256 of `T.body`, with
//! a tolerance window against replays), and GitHub's `X-Hub-Signature-256: sha256=HEX`
//! (HMAC-SHA256 of the body).

use std::time::Duration;

use hmac::{KeyInit as _, Mac as _};
use http::HeaderMap;
use klambda_harness::config::Secret;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Why a webhook is not accepted as authentic. Every variant answers 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential header at all.
    #[error("no {0} header: the webhook must carry its credential")]
    Missing(&'static str),
    /// The credential header is not in its documented form.
    #[error("the {header} header is malformed: {reason}")]
    Malformed {
        /// Which header.
        header: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The credential does not match.
    #[error("the {0} does not match")]
    Mismatch(&'static str),
    /// The signature's timestamp is outside the tolerance window (a replay, or a skewed clock).
    #[error(
        "the signature's timestamp is {age_seconds} s from now; at most {tolerance_seconds} s are accepted"
    )]
    Stale {
        /// Distance from now.
        age_seconds: i64,
        /// The window.
        tolerance_seconds: u64,
    },
    /// This gateway has no secret configured for the source.
    #[error("webhooks from {0} are not configured on this gateway")]
    NotConfigured(&'static str),
}

/// Buildkite's credentials, as configured.
#[derive(Debug, Clone, Default)]
pub struct BuildkiteSecrets {
    /// The token sent verbatim in `X-Buildkite-Token`.
    pub token: Option<Secret>,
    /// The key of `X-Buildkite-Signature`.
    pub signing_key: Option<Secret>,
    /// How far a signature's timestamp may be from now.
    pub tolerance: Duration,
}

/// Equal, in time that depends only on the lengths (not on where the first difference is).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hmac_matches(key: &Secret, message: &[&[u8]], hex_signature: &str) -> bool {
    let Ok(expected) = hex::decode(hex_signature) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(key.expose().as_bytes()) else {
        return false;
    };
    for part in message {
        mac.update(part);
    }
    // `verify_slice` compares in constant time.
    mac.verify_slice(&expected).is_ok()
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Verifies a Buildkite webhook: the signature when one is sent (preferred), else the token.
/// `now` is the Unix time in seconds.
pub fn buildkite(
    headers: &HeaderMap,
    body: &[u8],
    secrets: &BuildkiteSecrets,
    now: i64,
) -> Result<(), AuthError> {
    if secrets.token.is_none() && secrets.signing_key.is_none() {
        return Err(AuthError::NotConfigured("Buildkite"));
    }
    if let Some(value) = header(headers, "x-buildkite-signature") {
        let key = secrets.signing_key.as_ref().ok_or(AuthError::Mismatch(
            "X-Buildkite-Signature (no signing key configured)",
        ))?;
        let malformed = |reason| AuthError::Malformed {
            header: "X-Buildkite-Signature",
            reason,
        };
        let mut timestamp = None;
        let mut signature = None;
        for part in value.split(',') {
            match part.trim().split_once('=') {
                Some(("timestamp", t)) => timestamp = Some(t),
                Some(("signature", s)) => signature = Some(s),
                _ => return Err(malformed("expected timestamp=…,signature=…")),
            }
        }
        let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
            return Err(malformed("expected timestamp=…,signature=…"));
        };
        let seconds: i64 = timestamp
            .parse()
            .map_err(|_| malformed("the timestamp is not Unix seconds"))?;
        // Saturating: any i64 may arrive, and a timestamp at the end of the range must be
        // refused as stale, not overflow.
        let age = now.saturating_sub(seconds);
        if age.unsigned_abs() > secrets.tolerance.as_secs() {
            return Err(AuthError::Stale {
                age_seconds: age,
                tolerance_seconds: secrets.tolerance.as_secs(),
            });
        }
        return if hmac_matches(key, &[timestamp.as_bytes(), b".", body], signature) {
            Ok(())
        } else {
            Err(AuthError::Mismatch("X-Buildkite-Signature"))
        };
    }
    match (header(headers, "x-buildkite-token"), &secrets.token) {
        (None, _) => Err(AuthError::Missing(
            "X-Buildkite-Signature or X-Buildkite-Token",
        )),
        (Some(_), None) => Err(AuthError::Mismatch(
            "X-Buildkite-Token (this gateway expects signatures)",
        )),
        (Some(sent), Some(token))
            if constant_time_eq(sent.as_bytes(), token.expose().as_bytes()) =>
        {
            Ok(())
        }
        (Some(_), Some(_)) => Err(AuthError::Mismatch("X-Buildkite-Token")),
    }
}

/// Verifies a GitHub webhook's `X-Hub-Signature-256`.
pub fn github(headers: &HeaderMap, body: &[u8], secret: Option<&Secret>) -> Result<(), AuthError> {
    let secret = secret.ok_or(AuthError::NotConfigured("GitHub"))?;
    let value =
        header(headers, "x-hub-signature-256").ok_or(AuthError::Missing("X-Hub-Signature-256"))?;
    let signature = value.strip_prefix("sha256=").ok_or(AuthError::Malformed {
        header: "X-Hub-Signature-256",
        reason: "expected sha256=<hex>",
    })?;
    if hmac_matches(secret, &[body], signature) {
        Ok(())
    } else {
        Err(AuthError::Mismatch("X-Hub-Signature-256"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_at_the_ends_of_the_range_are_stale_not_a_panic() {
        let secrets = BuildkiteSecrets {
            signing_key: Some(Secret::new("key")),
            ..BuildkiteSecrets::default()
        };
        for timestamp in [i64::MIN, i64::MAX] {
            let mut headers = HeaderMap::new();
            let value = format!("timestamp={timestamp},signature=00");
            headers.insert(
                "x-buildkite-signature",
                value
                    .parse()
                    .unwrap_or_else(|_| http::HeaderValue::from_static("")),
            );
            assert!(
                matches!(
                    buildkite(&headers, b"{}", &secrets, 1_700_000_000),
                    Err(AuthError::Stale { .. })
                ),
                "{timestamp}"
            );
        }
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }
}
