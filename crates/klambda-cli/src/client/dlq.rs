//! Dead letters: the broker's (`klambda dlq`) and the webhook gateway's (`klambda webhook-dlq`).

use super::{Api, Output};
use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;

/// What `klambda dlq` does with the dead letters (kept by the status reporter, the Broker's
/// dead-letter sink).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dlq {
    /// One line per letter (only those a function's Triggers failed to deliver, when one is
    /// named).
    List {
        /// The function whose letters to list.
        function: Option<String>,
    },
    /// One letter, with its error attributes.
    Show(i64),
    /// Publish one letter (or all: `None`, or all of one function's) to the broker again,
    /// without its error attributes, and forget it once the broker accepted it.
    Redrive {
        /// The letter.
        id: Option<i64>,
        /// With no id: only this function's letters.
        function: Option<String>,
    },
    /// Forget every letter.
    Purge,
}

/// `klambda dlq list | show ID | redrive ID|--all | purge`.
pub async fn dlq(platform: &Api, command: Dlq, output: Output) -> Result<i32> {
    match command {
        Dlq::List { function } => {
            let letters = Value::Array(all_dead_letters(platform, function.as_deref()).await?);
            let Some(letters) = to_list(&letters, output)? else {
                return Ok(0);
            };
            say!(
                "{:>5}  {:<25}  {:<36}  {:<16}  {:>4}  DESTINATION",
                "ID",
                "RECEIVED",
                "TYPE",
                "SUBJECT",
                "CODE"
            );
            for letter in &letters {
                let event = &letter["event"];
                let text = |key: &str| event[key].as_str().unwrap_or("-").to_owned();
                say!(
                    "{:>5}  {:<25}  {:<36}  {:<16}  {:>4}  {}",
                    letter["seq"],
                    letter["receivedAt"].as_str().unwrap_or_default(),
                    text("type"),
                    text("subject"),
                    text("knativeerrorcode"),
                    text("knativeerrordest"),
                );
            }
            Ok(0)
        }
        Dlq::Show(seq) => {
            let letter = dead_letter(platform, seq).await?;
            if output == Output::Json {
                say!("{}", serde_json::to_string_pretty(&letter)?);
                return Ok(0);
            }
            let event = &letter["event"];
            let error_data = event["knativeerrordata"]
                .as_str()
                .and_then(|b64| {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD.decode(b64).ok()
                })
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_default();
            say!("dead letter {seq}, received {}", letter["receivedAt"]);
            say!("  failed at   {}", event["knativeerrordest"]);
            say!("  status      {}", event["knativeerrorcode"]);
            say!("  answer      {error_data}");
            say!("event:");
            say!("{}", serde_json::to_string_pretty(event)?);
            Ok(0)
        }
        Dlq::Redrive { id, function } => {
            let letters = match id {
                Some(seq) => vec![dead_letter(platform, seq).await?],
                None => all_dead_letters(platform, function.as_deref()).await?,
            };
            let mut redriven = 0;
            for letter in &letters {
                let seq = letter["seq"].as_i64().context("a dead letter has a seq")?;
                let event = &letter["event"];
                // The platform publishes it without its error attributes, then forgets it.
                let request =
                    Request::post(format!("{}/dead-letters/{seq}/redrive", platform.endpoint))
                        .body(Full::new(Bytes::new()))?;
                let answer = platform.send(request).await?;
                anyhow::ensure!(
                    answer.status == 202,
                    "the platform did not redrive dead letter {seq} ({}): {}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                );
                redriven += 1;
                if output == Output::Text {
                    say!("redriven {seq}: {} {}", event["type"], event["id"]);
                }
            }
            if output == Output::Json {
                say!("{}", serde_json::json!({ "redriven": redriven }));
            } else if redriven == 0 {
                say!("no dead letters");
            }
            Ok(0)
        }
        Dlq::Purge => {
            let answer = platform.delete("/dead-letters").await?;
            let removed: Value = serde_json::from_slice(&answer.body)?;
            match output {
                Output::Json => say!("{removed}"),
                Output::Text => say!("purged {} dead letters", removed["removed"]),
            }
            Ok(0)
        }
    }
}

/// What `klambda webhooks dlq` does with the webhook gateway's dead letters (events it could
/// not publish to the broker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookDlq {
    /// One line per letter.
    List,
    /// Publish one (or all: `None`) again.
    Redrive(Option<String>),
}

/// `klambda webhooks dlq list | redrive ID|--all`, against the gateway at `gateway`.
pub async fn webhook_dlq(gateway: &Api, command: WebhookDlq, output: Output) -> Result<i32> {
    match command {
        WebhookDlq::List => {
            let letters: Value = gateway.get_json("/dead-letters").await?.unwrap_or_default();
            let Some(letters) = to_list(&letters, output)? else {
                return Ok(0);
            };
            for letter in &letters {
                say!(
                    "{}  {}  {} (subject {})  {} attempts: {}",
                    letter["id"].as_str().unwrap_or_default(),
                    letter["receivedAt"].as_str().unwrap_or_default(),
                    letter["event"]["type"].as_str().unwrap_or_default(),
                    letter["event"]["subject"].as_str().unwrap_or("-"),
                    letter["attempts"],
                    letter["reason"].as_str().unwrap_or_default(),
                );
            }
            Ok(0)
        }
        WebhookDlq::Redrive(only) => {
            let path = match &only {
                Some(id) => format!("/dead-letters/redrive?id={id}"),
                None => "/dead-letters/redrive".to_owned(),
            };
            let request = Request::post(format!("{}{path}", gateway.endpoint))
                .body(Full::new(Bytes::new()))?;
            let answer = gateway.send(request).await?;
            let body: Value = serde_json::from_slice(&answer.body).unwrap_or_default();
            if answer.status != 200 {
                eprintln!(
                    "the gateway stopped the redrive ({}): {}",
                    answer.status,
                    body["detail"].as_str().unwrap_or_default()
                );
                return Ok(1);
            }
            match output {
                Output::Json => say!("{body}"),
                Output::Text => say!("redriven {}", body["redriven"]),
            }
            Ok(0)
        }
    }
}

/// Every dead letter, oldest first; with `function`, only those its Triggers failed to
/// deliver (the failed destination is the function).
async fn all_dead_letters(platform: &Api, function: Option<&str>) -> Result<Vec<Value>> {
    let letters = platform
        .get_json::<Value>("/dead-letters?limit=10000")
        .await?
        .and_then(|l| l.as_array().cloned())
        .unwrap_or_default();
    Ok(match function {
        None => letters,
        Some(function) => letters
            .into_iter()
            .filter(|letter| {
                letter["event"]["knativeerrordest"]
                    .as_str()
                    .and_then(klambda_broker::subscriber::function_of_destination)
                    == Some(function)
            })
            .collect(),
    })
}

async fn dead_letter(platform: &Api, seq: i64) -> Result<Value> {
    platform
        .get_json(&format!("/dead-letters/{seq}"))
        .await?
        .with_context(|| format!("no dead letter {seq}; `klambda dlq list` shows them"))
}

/// A list of dead letters to print line by line, or `None` when it was printed whole (JSON) or
/// there are none (said so).
fn to_list(letters: &Value, output: Output) -> Result<Option<Vec<Value>>> {
    if output == Output::Json {
        say!("{}", serde_json::to_string_pretty(letters)?);
        return Ok(None);
    }
    let letters = letters.as_array().cloned().unwrap_or_default();
    if letters.is_empty() {
        say!("no dead letters");
        return Ok(None);
    }
    Ok(Some(letters))
}
