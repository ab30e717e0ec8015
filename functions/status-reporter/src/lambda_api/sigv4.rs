//! AWS Signature Version 4, checked the way AWS checks it, so the AWS CLI and SDKs authenticate
//! to the Lambda API as they do to AWS: access key id `klambda`, the platform's API token as
//! the secret access key, any region.
//!
//! From the SigV4 specification: the canonical request (method, URI-encoded path, sorted query,
//! the signed headers, the payload's SHA-256), the string to sign over its hash, and the
//! signing key derived from the secret through the date, region, service and `aws4_request`.

use hmac::{KeyInit as _, Mac as _};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, percent_encode};
use sha2::{Digest as _, Sha256};

type HmacSha256 = hmac::Hmac<Sha256>;

/// The access key id the AWS tools are configured with.
pub const ACCESS_KEY_ID: &str = "klambda";

/// How far a request's `X-Amz-Date` may be from now, as AWS allows.
const CLOCK_SKEW_SECONDS: i64 = 15 * 60;

/// Why a request's signature is refused; the message is what the caller is told.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// No `Authorization` header.
    #[error(
        "the request is not signed: sign it with AWS Signature Version 4 (access key id `klambda`, the platform's API token as the secret access key)"
    )]
    Missing,
    /// The header is not a SigV4 one.
    #[error("the Authorization header is not AWS4-HMAC-SHA256: {0}")]
    Malformed(String),
    /// Another access key id.
    #[error("the access key id {0:?} is not known; use `klambda`")]
    UnknownKey(String),
    /// `X-Amz-Date` missing, unreadable or too far from now.
    #[error("X-Amz-Date {0}")]
    Date(String),
    /// The signature does not match.
    #[error(
        "the request signature does not match: check the secret access key (the platform's API token)"
    )]
    Mismatch,
}

/// What of a request the signature covers.
pub struct SignedRequest<'a> {
    /// `GET`, `POST`…
    pub method: &'a str,
    /// The path as sent (still percent-encoded).
    pub path: &'a str,
    /// The query string as sent, without `?`.
    pub query: &'a str,
    /// Every header, names in any case.
    pub headers: &'a [(String, String)],
    /// The body.
    pub body: &'a [u8],
}

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
struct Authorization<'a> {
    access_key: &'a str,
    scope: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, SignatureError> {
    let malformed = || SignatureError::Malformed(value.chars().take(80).collect());
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256")
        .ok_or_else(malformed)?
        .trim_start();
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed_headers = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => return Err(malformed()),
        }
    }
    let (credential, signed_headers, signature) = (
        credential.ok_or_else(malformed)?,
        signed_headers.ok_or_else(malformed)?,
        signature.ok_or_else(malformed)?,
    );
    let (access_key, scope) = credential.split_once('/').ok_or_else(malformed)?;
    if scope.split('/').count() != 4 || !scope.ends_with("/aws4_request") {
        return Err(malformed());
    }
    Ok(Authorization {
        access_key,
        scope,
        signed_headers: signed_headers.split(';').collect(),
        signature,
    })
}

/// Checks `request`'s SigV4 signature against `secret`, at `now` (Unix seconds).
pub fn verify(request: &SignedRequest<'_>, secret: &str, now: i64) -> Result<(), SignatureError> {
    let header = |name: &str| {
        request
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    let authorization = header("authorization")
        .first()
        .copied()
        .ok_or(SignatureError::Missing)?;
    let authorization = parse_authorization(authorization)?;
    if authorization.access_key != ACCESS_KEY_ID {
        return Err(SignatureError::UnknownKey(
            authorization.access_key.to_owned(),
        ));
    }
    let amz_date = header("x-amz-date")
        .first()
        .copied()
        .ok_or_else(|| SignatureError::Date("is missing".to_owned()))?;
    let signed_at = chrono::NaiveDateTime::parse_from_str(amz_date, "%Y%m%dT%H%M%SZ")
        .map_err(|_| SignatureError::Date(format!("{amz_date:?} is not YYYYMMDD'T'HHMMSS'Z'")))?
        .and_utc()
        .timestamp();
    if (now - signed_at).abs() > CLOCK_SKEW_SECONDS {
        return Err(SignatureError::Date(format!(
            "{amz_date} is more than 15 minutes from the platform's clock"
        )));
    }
    if !authorization.scope.starts_with(&amz_date[..8]) {
        return Err(SignatureError::Date(
            "does not fall on the credential scope's date".to_owned(),
        ));
    }
    let mut canonical_headers = String::new();
    for name in &authorization.signed_headers {
        let values = header(name);
        if values.is_empty() {
            return Err(SignatureError::Mismatch);
        }
        let joined: Vec<String> = values.iter().map(|v| collapse_spaces(v)).collect();
        canonical_headers.push_str(&format!("{name}:{}\n", joined.join(",")));
    }
    // The body's own hash, always: a claimed `X-Amz-Content-Sha256` (or `UNSIGNED-PAYLOAD`)
    // that is not the body's would let a captured signature carry another body.
    let payload_hash = hex::encode(Sha256::digest(request.body));
    if header("x-amz-content-sha256")
        .first()
        .is_some_and(|claimed| *claimed != payload_hash)
    {
        return Err(SignatureError::Mismatch);
    }
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        request.method,
        canonical_path(request.path),
        canonical_query(request.query),
        canonical_headers,
        authorization.signed_headers.join(";"),
        payload_hash
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{}\n{}",
        authorization.scope,
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in authorization.scope.split('/') {
        key = hmac(&key, part.as_bytes());
    }
    let claimed = hex::decode(authorization.signature).map_err(|_| SignatureError::Mismatch)?;
    // HMAC takes a key of any length; `verify_slice` compares in constant time, so a mismatch
    // says nothing about how much matched.
    let mut mac = HmacSha256::new_from_slice(&key).map_err(|_| SignatureError::Mismatch)?;
    mac.update(string_to_sign.as_bytes());
    mac.verify_slice(&claimed)
        .map_err(|_| SignatureError::Mismatch)
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Trimmed, with runs of spaces collapsed to one, as the canonical headers want.
fn collapse_spaces(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// SigV4 encodes every byte but the unreserved characters, with uppercase hex.
const ENCODED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn encode(text: &[u8]) -> String {
    percent_encode(text, ENCODED).to_string()
}

fn decode(text: &str) -> Vec<u8> {
    percent_decode_str(text).collect()
}

/// Every service but S3 signs each path segment encoded twice: the path as sent, encoded
/// once more.
fn canonical_path(path: &str) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    path.split('/')
        .map(|segment| encode(segment.as_bytes()))
        .collect::<Vec<_>>()
        .join("/")
}

/// Parameters sorted by name then value, each name and value encoded once.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (encode(&decode(name)), encode(&decode(value)))
        })
        .collect();
    pairs.sort();
    pairs
        .into_iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Signs as a client would, with this module's canonical form (checked against the AWS CLI
    /// in tests/lambda_api.rs).
    fn sign(
        method: &str,
        path: &str,
        query: &str,
        body: &[u8],
        secret: &str,
        date: &str,
    ) -> Vec<(String, String)> {
        let mut headers = vec![
            ("host".to_owned(), "127.0.0.1:8080".to_owned()),
            ("x-amz-date".to_owned(), date.to_owned()),
        ];
        let scope = format!("{}/us-east-1/lambda/aws4_request", &date[..8]);
        let canonical = format!(
            "{method}\n{}\n{}\nhost:127.0.0.1:8080\nx-amz-date:{date}\n\nhost;x-amz-date\n{}",
            canonical_path(path),
            canonical_query(query),
            hex::encode(Sha256::digest(body))
        );
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let mut key = format!("AWS4{secret}").into_bytes();
        for part in scope.split('/') {
            key = hmac(&key, part.as_bytes());
        }
        let signature = hex::encode(hmac(&key, to_sign.as_bytes()));
        headers.push((
            "Authorization".to_owned(),
            format!("AWS4-HMAC-SHA256 Credential=klambda/{scope}, SignedHeaders=host;x-amz-date, Signature={signature}"),
        ));
        headers
    }

    const NOW: i64 = 1_764_920_000; // 2025-12-05T07:33:20Z
    const DATE: &str = "20251205T073320Z";

    fn request<'a>(headers: &'a [(String, String)], body: &'a [u8]) -> SignedRequest<'a> {
        SignedRequest {
            method: "POST",
            path: "/2015-03-31/functions/hello/invocations",
            query: "Qualifier=%24LATEST",
            headers,
            body,
        }
    }

    #[test]
    fn a_request_signed_with_the_token_passes_and_any_change_fails() {
        let body = br#"{"name":"x"}"#;
        let headers = sign(
            "POST",
            "/2015-03-31/functions/hello/invocations",
            "Qualifier=%24LATEST",
            body,
            "token",
            DATE,
        );
        assert_eq!(verify(&request(&headers, body), "token", NOW), Ok(()));
        assert_eq!(
            verify(&request(&headers, body), "other", NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&request(&headers, b"{}"), "token", NOW),
            Err(SignatureError::Mismatch)
        );
        let mut moved = request(&headers, body);
        moved.path = "/2015-03-31/functions/victim/invocations";
        assert_eq!(verify(&moved, "token", NOW), Err(SignatureError::Mismatch));
        assert!(matches!(
            verify(&request(&headers, body), "token", NOW + 3600),
            Err(SignatureError::Date(_))
        ));
        assert_eq!(
            verify(&request(&[], body), "token", NOW),
            Err(SignatureError::Missing)
        );
        // A claim of the payload's hash must be the body's: a captured request cannot carry
        // another body under the same signature, nor skip the payload.
        let other_body = br#"{"name":"mallory"}"#;
        for claimed in [
            hex::encode(Sha256::digest(body)),
            "UNSIGNED-PAYLOAD".to_owned(),
        ] {
            let mut claiming = headers.clone();
            claiming.push(("x-amz-content-sha256".to_owned(), claimed.clone()));
            assert_eq!(
                verify(&request(&claiming, other_body), "token", NOW),
                Err(SignatureError::Mismatch),
                "{claimed}"
            );
        }
        let other_key: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| {
                (
                    n.clone(),
                    v.replace("Credential=klambda/", "Credential=AKIA/"),
                )
            })
            .collect();
        assert!(matches!(
            verify(&request(&other_key, body), "token", NOW),
            Err(SignatureError::UnknownKey(_))
        ));
    }

    #[test]
    fn canonical_forms_follow_the_specification() {
        assert_eq!(
            canonical_path("/2015-03-31/functions/a%3Ab/invocations"),
            "/2015-03-31/functions/a%253Ab/invocations"
        );
        assert_eq!(canonical_path(""), "/");
        assert_eq!(canonical_query("b=2&a=1&a=0&c"), "a=0&a=1&b=2&c=");
        assert_eq!(
            canonical_query("Marker=x%2Fy&MaxItems=5"),
            "Marker=x%2Fy&MaxItems=5"
        );
        assert_eq!(collapse_spaces("  a   b  "), "a b");
    }
}
