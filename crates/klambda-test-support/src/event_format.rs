//! The CloudEvents JSON event format, as a conformance table (issue 24): events whose data is
//! JSON, untyped JSON, text in US-ASCII and UTF-8, XML and bytes, each with a non-ASCII subject
//! and extension, posted in binary and in structured mode and read back from the status store.
//! Shared by the tests of `klambda up` (both brokers) and of the standalone status reporter.

use anyhow::{Context as _, Result, ensure};
use serde_json::{Value, json};

use crate::http::{get_with, post};

/// One case: the data's media type (`None`: absent), the body as sent in binary mode, and the
/// member the JSON format carries it in, with its value.
struct Case {
    name: &'static str,
    content_type: Option<&'static str>,
    body: &'static [u8],
    member: &'static str,
    expected: Value,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "json",
            content_type: Some("application/json"),
            body: r#"{"total":21,"note":"café"}"#.as_bytes(),
            member: "data",
            expected: json!({"total": 21, "note": "café"}),
        },
        Case {
            name: "json-untyped",
            content_type: None,
            body: br#"{"id":"o-1"}"#,
            member: "data",
            expected: json!({"id": "o-1"}),
        },
        Case {
            name: "json-suffix",
            content_type: Some("application/vnd.order+json"),
            body: b"[1,2]",
            member: "data",
            expected: json!([1, 2]),
        },
        Case {
            name: "ascii",
            content_type: Some("text/plain; charset=us-ascii"),
            body: b"hello, world",
            member: "data",
            expected: json!("hello, world"),
        },
        Case {
            name: "utf8",
            content_type: Some("text/plain; charset=utf-8"),
            body: "Grüße aus Köln, 世界".as_bytes(),
            member: "data",
            expected: json!("Grüße aus Köln, 世界"),
        },
        Case {
            name: "xml",
            content_type: Some("application/xml; charset=utf-8"),
            body: "<order id=\"é\"/>".as_bytes(),
            member: "data",
            expected: json!("<order id=\"é\"/>"),
        },
        Case {
            name: "bytes",
            content_type: Some("application/octet-stream"),
            body: b"\x00\x01\xfe\xff",
            member: "data_base64",
            expected: json!("AAH+/w=="),
        },
    ]
}

/// The attributes every case carries besides its data: an extension with non-ASCII text,
/// percent-encoded in binary mode as the HTTP binding says.
const NOTE: &str = "crème brûlée";
const NOTE_ENCODED: &str = "cr%C3%A8me%20br%C3%BBl%C3%A9e";

async fn post_binary(endpoint: &str, token: &str, id: &str, case: &Case) -> Result<()> {
    let bearer = format!("Bearer {token}");
    let mut headers = vec![
        ("authorization", bearer.as_str()),
        ("ce-specversion", "1.0"),
        ("ce-id", id),
        ("ce-source", "/conformance"),
        ("ce-type", "com.example.conformance"),
        ("ce-subject", "s%C3%BCbject"),
        ("ce-note", NOTE_ENCODED),
    ];
    if let Some(ct) = case.content_type {
        headers.push(("content-type", ct));
    }
    let answer = post(&format!("{endpoint}/"), &headers, case.body.to_vec()).await?;
    ensure!(answer.status.is_success(), "{}: {answer:?}", case.name);
    Ok(())
}

async fn post_structured(endpoint: &str, token: &str, id: &str, case: &Case) -> Result<()> {
    let mut event = json!({
        "specversion": "1.0", "id": id, "source": "/conformance",
        "type": "com.example.conformance", "subject": "sübject", "note": NOTE,
    });
    if let Some(ct) = case.content_type {
        event["datacontenttype"] = json!(ct);
    }
    event[case.member] = case.expected.clone();
    let bearer = format!("Bearer {token}");
    let answer = post(
        &format!("{endpoint}/"),
        &[
            ("authorization", bearer.as_str()),
            (
                "content-type",
                "application/cloudevents+json; charset=utf-8",
            ),
        ],
        event.to_string(),
    )
    .await?;
    ensure!(answer.status.is_success(), "{}: {answer:?}", case.name);
    Ok(())
}

/// `GET /events/{id}` once the status reporter has it.
async fn recorded(endpoint: &str, token: &str, id: &str) -> Result<Value> {
    let bearer = format!("Bearer {token}");
    let started = std::time::Instant::now();
    loop {
        let answer = get_with(
            &format!("{endpoint}/events/{id}"),
            &[("authorization", bearer.as_str())],
        )
        .await?;
        if answer.status == 200 {
            return answer.json();
        }
        ensure!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{id} was never recorded: {answer:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Posts every case in binary and in structured mode to `endpoint` (a broker ingress or the status
/// reporter itself, with `token` as the bearer), reads each back with `GET /events/{id}` and
/// compares attribute by attribute, `data` / `data_base64` exactly. Ids start with `run`.
pub async fn conformance(endpoint: &str, token: &str, run: &str) -> Result<()> {
    let mut failures = Vec::new();
    for case in cases() {
        for mode in ["binary", "structured"] {
            let id = format!("{run}-{}-{mode}", case.name);
            match mode {
                "binary" => post_binary(endpoint, token, &id, &case).await?,
                _ => post_structured(endpoint, token, &id, &case).await?,
            }
            let got = recorded(endpoint, token, &id)
                .await
                .with_context(|| id.clone())?;
            let mut expected = json!({
                "specversion": "1.0", "id": id, "source": "/conformance",
                "type": "com.example.conformance", "subject": "sübject", "note": NOTE,
            });
            if let Some(ct) = case.content_type {
                expected["datacontenttype"] = json!(ct);
            }
            expected[case.member] = case.expected.clone();
            if got != expected {
                failures.push(format!(
                    "{} in {mode} mode:\n  got      {got}\n  expected {expected}",
                    case.name
                ));
            }
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        2 * cases().len(),
        failures.join("\n")
    );
    Ok(())
}
