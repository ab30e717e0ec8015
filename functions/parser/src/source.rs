//! Validating and normalising a function's source: inline files, `s3://` objects, git URLs.

use std::collections::BTreeSet;

use base64::Engine as _;
use klambda_events::data::Problem;
use klambda_events::spec::{ContentEncoding, InlineFile, Source, SourceSubmission};
use url::Url;

use crate::limits::Limits;
use klambda_events::ssrf::refused_host;

/// Validates `source`, pushing every problem; returns the normalised source when it is valid.
pub fn normalise(
    source: SourceSubmission,
    limits: &Limits,
    problems: &mut Vec<Problem>,
) -> Option<Source> {
    let before = problems.len();
    let source = match source {
        SourceSubmission::Inline { files } => inline(files, limits, problems),
        SourceSubmission::S3 { url } => s3(&url, problems),
        SourceSubmission::Git { url, reference } => git(&url, &reference, problems),
        SourceSubmission::Archive { url, sha256 } => archive(&url, &sha256, problems),
    };
    (problems.len() == before).then_some(source).flatten()
}

/// Decodes standard base64.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    base64::engine::general_purpose::STANDARD.decode(text.as_bytes())
}

fn inline(files: Vec<InlineFile>, limits: &Limits, problems: &mut Vec<Problem>) -> Option<Source> {
    if files.is_empty() {
        problems.push(Problem::new(
            "source.files",
            "an inline source needs at least one file",
        ));
        return None;
    }
    if files.len() > limits.max_inline_files {
        problems.push(Problem::new(
            "source.files",
            format!(
                "{} files; at most {} are allowed inline (use an s3 or git source)",
                files.len(),
                limits.max_inline_files
            ),
        ));
        return None;
    }
    let mut seen = BTreeSet::new();
    let mut total = 0usize;
    let mut normalised = Vec::with_capacity(files.len());
    for (i, file) in files.into_iter().enumerate() {
        let field = |what: &str| format!("source.files[{i}].{what}");
        let path = match normalise_path(&file.path, limits) {
            Ok(path) => path,
            Err(reason) => {
                problems.push(Problem::new(field("path"), reason));
                continue;
            }
        };
        if !seen.insert(path.clone()) {
            problems.push(Problem::new(
                field("path"),
                format!("{path:?} appears more than once"),
            ));
            continue;
        }
        // Text stays text, whatever encoding it arrived in, so the digest and the event size do
        // not depend on how the client chose to encode it.
        let (content, encoding, size) = match file.encoding {
            ContentEncoding::Utf8 => {
                let size = file.content.len();
                (file.content, ContentEncoding::Utf8, size)
            }
            ContentEncoding::Base64 => match decode_base64(&file.content) {
                Ok(bytes) => {
                    let size = bytes.len();
                    match String::from_utf8(bytes) {
                        Ok(text) => (text, ContentEncoding::Utf8, size),
                        Err(_) => (file.content, ContentEncoding::Base64, size),
                    }
                }
                Err(e) => {
                    problems.push(Problem::new(
                        field("content"),
                        format!("not valid base64: {e}"),
                    ));
                    continue;
                }
            },
        };
        total = total.saturating_add(size);
        let file = InlineFile {
            path,
            content,
            encoding,
        };
        normalised.push(file);
    }
    if total > limits.max_inline_bytes {
        problems.push(Problem::new(
            "source.files",
            format!(
                "inline files total {total} bytes; at most {} are allowed inline (use an s3 or git source)",
                limits.max_inline_bytes
            ),
        ));
    }
    normalised.sort_by(|a, b| a.path.cmp(&b.path));
    Some(Source::Inline { files: normalised })
}

/// A safe relative path in canonical form (`./a//b` → `a/b`), or why it is refused.
pub fn normalise_path(path: &str, limits: &Limits) -> Result<String, String> {
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    if let Some(c) = path.chars().find(|c| c.is_control()) {
        return Err(format!("the path contains the control character {c:?}"));
    }
    if path.contains('\\') {
        return Err("the path contains '\\'; separate directories with '/'".into());
    }
    if path.starts_with('/') {
        return Err("the path is absolute; give it relative to the function's directory".into());
    }
    let bytes = path.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return Err(
            "the path starts with a drive letter; give it relative to the function's directory"
                .into(),
        );
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(
                    "the path contains '..', which would leave the function's directory".into(),
                );
            }
            _ => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err("the path names no file".into());
    }
    if parts.len() > limits.max_path_depth {
        return Err(format!(
            "the path is {} levels deep; at most {} are allowed",
            parts.len(),
            limits.max_path_depth
        ));
    }
    let normalised = parts.join("/");
    if normalised.len() > limits.max_path_bytes {
        return Err(format!(
            "the path is {} bytes long; at most {} are allowed",
            normalised.len(),
            limits.max_path_bytes
        ));
    }
    Ok(normalised)
}

fn s3(url: &str, problems: &mut Vec<Problem>) -> Option<Source> {
    let mut problem = |reason: String| problems.push(Problem::new("source.url", reason));
    let Some(rest) = url.strip_prefix("s3://") else {
        problem(format!("{url:?} is not an s3://bucket/key URL"));
        return None;
    };
    let Some((bucket, key)) = rest.split_once('/') else {
        problem("the URL names a bucket but no key: use s3://bucket/key".into());
        return None;
    };
    let mut ok = true;
    if let Err(reason) = check_bucket(bucket) {
        problem(format!("bucket {bucket:?}: {reason}"));
        ok = false;
    }
    if let Err(reason) = check_key(key) {
        problem(format!("key {key:?}: {reason}"));
        ok = false;
    }
    ok.then(|| Source::S3 {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
    })
}

/// S3 bucket naming rules (general purpose buckets).
fn check_bucket(bucket: &str) -> Result<(), String> {
    if !(3..=63).contains(&bucket.len()) {
        return Err("bucket names are 3 to 63 characters".into());
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err("bucket names use lowercase letters, digits, '.' and '-'".into());
    }
    let edge_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !edge_ok(bucket.as_bytes()[0]) || !edge_ok(bucket.as_bytes()[bucket.len() - 1]) {
        return Err("bucket names start and end with a letter or digit".into());
    }
    if bucket.contains("..") {
        return Err("bucket names have no two adjacent periods".into());
    }
    if bucket.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err("bucket names are not IP addresses".into());
    }
    Ok(())
}

/// Object keys: S3 allows almost anything, but S3-compatible servers backed by a filesystem do
/// not, so keys that would traverse directories are refused too.
fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the key is empty".into());
    }
    if key.len() > 1024 {
        return Err("keys are at most 1024 bytes".into());
    }
    if key.chars().any(char::is_control) {
        return Err("the key contains a control character".into());
    }
    if key.starts_with('/') {
        return Err("the key starts with '/'".into());
    }
    if key.split('/').any(|part| part == ".." || part == ".") {
        return Err("the key contains a '.' or '..' segment".into());
    }
    Ok(())
}

fn archive(url: &str, sha256: &str, problems: &mut Vec<Problem>) -> Option<Source> {
    let before = problems.len();
    let normalised = https_url(
        url,
        "archive sources are downloaded over https only",
        problems,
    );
    let sha256 = sha256.trim().to_ascii_lowercase();
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        problems.push(Problem::new(
            "source.sha256",
            "the sha256 of the archive is 64 hex digits (sha256sum prints it)",
        ));
    }
    if problems.len() != before {
        return None;
    }
    normalised.map(|url| Source::Archive { url, sha256 })
}

/// Checks an `https://` URL a stage will fetch (no credentials, no fragment, a host the SSRF
/// rules allow) and returns it normalised; `why_https` explains the scheme rule.
fn https_url(url: &str, why_https: &str, problems: &mut Vec<Problem>) -> Option<String> {
    match Url::parse(url) {
        Err(e) => {
            problems.push(Problem::new(
                "source.url",
                format!("{url:?} is not a URL: {e}"),
            ));
            None
        }
        Ok(parsed) => {
            let mut problem = |reason: String| problems.push(Problem::new("source.url", reason));
            if parsed.scheme() != "https" {
                problem(format!(
                    "scheme {:?} is not allowed; {why_https}",
                    parsed.scheme()
                ));
            }
            if !parsed.username().is_empty() || parsed.password().is_some() {
                problem("the URL carries credentials; they would be stored in events and logs. Use a public repository or a source in S3".into());
            }
            if parsed.fragment().is_some() {
                problem("the URL has a #fragment; give the ref in the ref field".into());
            }
            match parsed.host() {
                None => problem("the URL has no host".into()),
                Some(host) => {
                    if let Some(reason) = refused_host(&host) {
                        problem(format!("host refused: {reason}"));
                    }
                }
            }
            Some(parsed.to_string())
        }
    }
}

fn git(url: &str, reference: &str, problems: &mut Vec<Problem>) -> Option<Source> {
    let before = problems.len();
    let normalised = https_url(url, "git sources are fetched over https only", problems);
    if let Err(reason) = check_ref(reference) {
        problems.push(Problem::new("source.ref", reason));
    }
    if problems.len() != before {
        return None;
    }
    normalised.map(|url| Source::Git {
        url,
        reference: reference.to_owned(),
    })
}

/// Git ref names as `git check-ref-format` allows them, and never starting with '-' (it would
/// be read as an option by the git command line).
fn check_ref(reference: &str) -> Result<(), String> {
    if reference.is_empty() {
        return Err("the ref is empty; give a branch, tag or commit".into());
    }
    if reference.len() > 255 {
        return Err("the ref is longer than 255 bytes".into());
    }
    if reference.starts_with('-') {
        return Err("the ref starts with '-', which git would read as an option".into());
    }
    if let Some(c) = reference
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(*c))
    {
        return Err(format!(
            "the ref contains {c:?}, which git does not allow in ref names"
        ));
    }
    if reference.contains("..") || reference.contains("@{") || reference.contains("//") {
        return Err("the ref contains '..', '@{' or '//', which git does not allow".into());
    }
    if reference.ends_with('/')
        || reference.ends_with('.')
        || reference.ends_with(".lock")
        || reference.starts_with('/')
    {
        return Err(
            "the ref starts or ends in a way git does not allow ('/', '.', '.lock')".into(),
        );
    }
    Ok(())
}
