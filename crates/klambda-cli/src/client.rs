//! The client commands, talking HTTP to a running platform (`klambda up`, or the broker ingress
//! and status reporter of a cluster).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use klambda_events::EventType as _;
use klambda_events::catalogue::{
    BuildCancelled, BuildCompleted, BuildFailed, BuildStarted, BuildTimeout, ContextUploaded,
    FunctionCreated, FunctionDeleted, FunctionRollback, FunctionUpdated, ParserCompleted,
    ParserFailed, ServiceCreated, ServiceDeleted, ServiceFailed, ServiceReady, ServiceUpdated,
    StatusUpdated,
};
use klambda_events::data::{FunctionDeletion, RollbackRequest};
use klambda_events::spec::{ContentEncoding, FunctionSubmission, InlineFile};
use klambda_events::{Envelope, FunctionName};
use klambda_runtimes::context::{Content, write_archive};
use klambda_storage::{ObjectStore as _, S3Store, chunk_channel};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// The files never packaged from a function directory.
const SKIPPED: &[&str] = &[
    "klambda.json",
    "node_modules",
    ".git",
    "__pycache__",
    ".deps",
    ".venv",
];

/// How output is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Lines for people.
    Text,
    /// One JSON document (or one per line while following).
    Json,
}

/// A platform's HTTP endpoint.
#[derive(Debug, Clone)]
pub struct Platform {
    endpoint: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

/// An HTTP answer.
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Platform {
    /// The platform at `endpoint` (e.g. `http://127.0.0.1:8080`).
    pub fn new(endpoint: &str) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Result<Answer> {
        let uri = request.uri().to_string();
        let response = self.client.request(request).await.with_context(|| {
            format!("cannot reach {uri}: is the platform running? Start it with `klambda up`")
        })?;
        let (parts, body) = response.into_parts();
        Ok(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: body.collect().await?.to_bytes(),
        })
    }

    async fn get(&self, path: &str) -> Result<Answer> {
        self.send(Request::get(format!("{}{path}", self.endpoint)).body(Full::new(Bytes::new()))?)
            .await
    }

    async fn delete(&self, path: &str) -> Result<Answer> {
        let answer = self
            .send(
                Request::delete(format!("{}{path}", self.endpoint))
                    .body(Full::new(Bytes::new()))?,
            )
            .await?;
        if !(200..300).contains(&answer.status) {
            bail!(
                "DELETE {path} answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
        }
        Ok(answer)
    }

    async fn get_json(&self, path: &str) -> Result<Option<Value>> {
        let answer = self.get(path).await?;
        match answer.status {
            200 => Ok(Some(serde_json::from_slice(&answer.body)?)),
            404 => Ok(None),
            status => bail!(
                "{path} answered {status}: {}",
                String::from_utf8_lossy(&answer.body)
            ),
        }
    }

    /// Publishes an event to the broker ingress.
    async fn publish(&self, event: &cloudevents::Event) -> Result<()> {
        self.publish_structured(&klambda_harness::codec::to_structured(event))
            .await
    }

    /// Publishes an event in structured mode (a JSON object) to the broker ingress.
    async fn publish_structured(&self, event: &Value) -> Result<()> {
        let body = serde_json::to_vec(event)?;
        let request = Request::post(format!("{}/", self.endpoint))
            .header("content-type", "application/cloudevents+json")
            .body(Full::new(Bytes::from(body)))?;
        let answer = self.send(request).await?;
        if answer.status != 202 {
            bail!(
                "the broker refused the event ({}): {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
        }
        Ok(())
    }

    /// `name`'s events after sequence number `after`, at most 1000.
    async fn events_after(&self, name: &str, after: i64) -> Result<Vec<Value>> {
        let page = self
            .get_json(&format!(
                "/functions/{name}/events?after={after}&limit=1000"
            ))
            .await?;
        Ok(page.and_then(|p| p.as_array().cloned()).unwrap_or_default())
    }

    /// The highest event sequence recorded for `name` so far (0 when none).
    async fn last_seq(&self, name: &str) -> Result<i64> {
        let mut last = 0;
        loop {
            let page = self.events_after(name, last).await?;
            match page.last().and_then(|e| e["seq"].as_i64()) {
                Some(seq) => last = seq,
                None => return Ok(last),
            }
        }
    }

    /// Prints `name`'s events after `since` as they arrive, until one of `ends` (exit code 0)
    /// or a failure type (exit code 1).
    async fn follow(&self, name: &str, since: i64, ends: &[&str], output: Output) -> Result<i32> {
        let started = Instant::now();
        let mut seen = since;
        loop {
            // Only what arrived since the last poll: the log is not reread.
            let events = self.events_after(name, seen).await?;
            for entry in &events {
                let seq = entry["seq"].as_i64().unwrap_or(0);
                if seq <= seen {
                    continue;
                }
                seen = seq;
                let event = &entry["event"];
                let ty = event["type"].as_str().unwrap_or_default();
                if ty == StatusUpdated::TYPE {
                    continue;
                }
                let short = ty.strip_prefix(klambda_events::TYPE_PREFIX).unwrap_or(ty);
                match output {
                    Output::Json => println!("{}", serde_json::to_string(entry)?),
                    Output::Text => println!(
                        "{:>8} ms  {short:<18} {}",
                        started.elapsed().as_millis(),
                        detail(ty, &event["data"])
                    ),
                }
                if ends.contains(&ty) {
                    return Ok(0);
                }
                if JOURNEY_FAILURES.contains(&ty) {
                    return Ok(1);
                }
            }
            if started.elapsed() > Duration::from_secs(600) {
                bail!(
                    "{name} did not finish within 10 minutes; `klambda events {name}` shows where it is"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The types that end a function's journey in failure: `klambda deploy` exits 1 on them.
const JOURNEY_FAILURES: [&str; 5] = [
    ParserFailed::TYPE,
    BuildFailed::TYPE,
    BuildTimeout::TYPE,
    BuildCancelled::TYPE,
    ServiceFailed::TYPE,
];

/// The interesting part of an event's data, for one line.
fn detail(ty: &str, data: &Value) -> String {
    let text = |key: &str| data[key].as_str().unwrap_or_default().to_owned();
    match ty {
        ParserCompleted::TYPE => format!(
            "digest {}",
            data["digest"]
                .as_str()
                .unwrap_or_default()
                .get(..19)
                .unwrap_or_default()
        ),
        ParserFailed::TYPE => data["problems"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "\n              {}: {}",
                    p["field"].as_str().unwrap_or_default(),
                    p["reason"].as_str().unwrap_or_default()
                )
            })
            .collect(),
        ContextUploaded::TYPE => format!("{} bytes", data["context"]["size"]),
        BuildStarted::TYPE => text("buildId"),
        BuildCompleted::TYPE => format!(
            "{}{}",
            text("image"),
            if data["cached"] == true {
                " (cached)"
            } else {
                ""
            }
        ),
        BuildFailed::TYPE => format!(
            "{}: {}\n{}",
            text("cause"),
            text("reason"),
            text("logExcerpt")
        ),
        ServiceCreated::TYPE | ServiceUpdated::TYPE => text("revision"),
        ServiceReady::TYPE => format!("{} at {}", text("revision"), text("url")),
        ServiceFailed::TYPE => format!("{}: {}", text("reason"), text("message")),
        _ => String::new(),
    }
}

/// What `klambda dlq` does with the dead letters (kept by the status reporter, the Broker's
/// dead-letter sink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dlq {
    /// One line per letter.
    List,
    /// One letter, with its error attributes.
    Show(i64),
    /// Publish one letter (or all: `None`) to the broker again, without its error attributes,
    /// and forget it once the broker accepted it.
    Redrive(Option<i64>),
    /// Forget every letter.
    Purge,
}

/// The attributes the broker adds to a dead letter; a redriven event goes without them.
const ERROR_ATTRIBUTES: [&str; 3] = ["knativeerrordest", "knativeerrorcode", "knativeerrordata"];

/// `klambda dlq list | show ID | redrive ID|--all | purge`.
pub async fn dlq(platform: &Platform, command: Dlq, output: Output) -> Result<i32> {
    match command {
        Dlq::List => {
            let letters = platform
                .get_json("/dead-letters?limit=10000")
                .await?
                .unwrap_or_default();
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
                return Ok(0);
            }
            let letters = letters.as_array().cloned().unwrap_or_default();
            if letters.is_empty() {
                println!("no dead letters");
                return Ok(0);
            }
            println!(
                "{:>5}  {:<25}  {:<36}  {:<16}  {:>4}  DESTINATION",
                "ID", "RECEIVED", "TYPE", "SUBJECT", "CODE"
            );
            for letter in &letters {
                let event = &letter["event"];
                let text = |key: &str| event[key].as_str().unwrap_or("-").to_owned();
                println!(
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
                println!("{}", serde_json::to_string_pretty(&letter)?);
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
            println!("dead letter {seq}, received {}", letter["receivedAt"]);
            println!("  failed at   {}", event["knativeerrordest"]);
            println!("  status      {}", event["knativeerrorcode"]);
            println!("  answer      {error_data}");
            println!("event:");
            println!("{}", serde_json::to_string_pretty(event)?);
            Ok(0)
        }
        Dlq::Redrive(only) => {
            let letters = match only {
                Some(seq) => vec![dead_letter(platform, seq).await?],
                None => platform
                    .get_json("/dead-letters?limit=10000")
                    .await?
                    .and_then(|l| l.as_array().cloned())
                    .unwrap_or_default(),
            };
            let mut redriven = 0;
            for letter in &letters {
                let seq = letter["seq"].as_i64().context("a dead letter has a seq")?;
                let mut event = letter["event"].clone();
                if let Some(attributes) = event.as_object_mut() {
                    for name in ERROR_ATTRIBUTES {
                        attributes.remove(name);
                    }
                }
                // Published first, forgotten second: a failure in between redrives it twice
                // (harmless, stages are idempotent) rather than losing it.
                platform.publish_structured(&event).await?;
                platform.delete(&format!("/dead-letters/{seq}")).await?;
                redriven += 1;
                if output == Output::Text {
                    println!("redriven {seq}: {} {}", event["type"], event["id"]);
                }
            }
            if output == Output::Json {
                println!("{}", serde_json::json!({ "redriven": redriven }));
            } else if redriven == 0 {
                println!("no dead letters");
            }
            Ok(0)
        }
        Dlq::Purge => {
            let answer = platform.delete("/dead-letters").await?;
            let removed: Value = serde_json::from_slice(&answer.body)?;
            match output {
                Output::Json => println!("{removed}"),
                Output::Text => println!("purged {} dead letters", removed["removed"]),
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
pub async fn webhook_dlq(gateway: &Platform, command: WebhookDlq, output: Output) -> Result<i32> {
    match command {
        WebhookDlq::List => {
            let letters = gateway.get_json("/dead-letters").await?.unwrap_or_default();
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
                return Ok(0);
            }
            let letters = letters.as_array().cloned().unwrap_or_default();
            if letters.is_empty() {
                println!("no dead letters");
            }
            for letter in &letters {
                println!(
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
                Output::Json => println!("{body}"),
                Output::Text => println!("redriven {}", body["redriven"]),
            }
            Ok(0)
        }
    }
}

async fn dead_letter(platform: &Platform, seq: i64) -> Result<Value> {
    platform
        .get_json(&format!("/dead-letters/{seq}"))
        .await?
        .with_context(|| format!("no dead letter {seq}; `klambda dlq list` shows them"))
}

fn event_id(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{nanos:x}-{}", std::process::id())
}

/// Reads `dir/klambda.json` and the function's files into a submission.
pub fn package(dir: &Path) -> Result<FunctionSubmission> {
    let mut submission = package_manifest(dir)?;
    let mut files = Vec::new();
    for (relative, path) in function_files(dir)? {
        let bytes = std::fs::read(&path)?;
        files.push(match String::from_utf8(bytes) {
            Ok(text) => InlineFile {
                path: relative,
                content: text,
                encoding: ContentEncoding::Utf8,
            },
            Err(e) => InlineFile {
                path: relative,
                content: base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
                encoding: ContentEncoding::Base64,
            },
        });
    }
    submission.source = klambda_events::spec::SourceSubmission::Inline { files };
    Ok(submission)
}

/// The submission `dir/klambda.json` describes, with an empty inline source.
fn package_manifest(dir: &Path) -> Result<FunctionSubmission> {
    let manifest_path = dir.join("klambda.json");
    let manifest = std::fs::read_to_string(&manifest_path).with_context(|| {
        format!(
            "{} is missing: a function directory needs a manifest with name, runtime and handler",
            manifest_path.display()
        )
    })?;
    let mut manifest: Value = serde_json::from_str(&manifest)
        .with_context(|| format!("{} is not valid JSON", manifest_path.display()))?;
    manifest["source"] = serde_json::json!({"kind": "inline", "files": []});
    serde_json::from_value(manifest).with_context(|| {
        format!(
            "{} needs name, runtime and handler",
            manifest_path.display()
        )
    })
}

/// The function's files under `dir` (relative path with `/`, path on disk), in path order,
/// without what `SKIPPED` names.
fn function_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if SKIPPED.contains(&name.as_str()) {
                continue;
            }
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                walk(root, &path, out)?;
            } else if entry.file_type()?.is_file() {
                let relative = path
                    .strip_prefix(root)?
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push((relative, path));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    Ok(files)
}

/// Packs the function in `dir` as a deterministic tar.gz, uploads it to `store` under
/// `sources/<sha256>.tar.gz` (once: the same files give the same key) and returns the
/// submission with that `s3://` source. Streams: the archive goes through a temporary file, not
/// memory.
pub async fn package_to_s3(dir: &Path, store: &S3Store) -> Result<FunctionSubmission> {
    let mut submission = package_manifest(dir)?;
    let files = function_files(dir)?;
    let temp = std::env::temp_dir().join(format!("klambda-deploy-{}.tar.gz", std::process::id()));
    let digest = {
        let temp = temp.clone();
        tokio::task::spawn_blocking(move || -> Result<String> {
            let contents: Vec<(String, Content)> = files
                .into_iter()
                .map(|(path, file)| (path, Content::File(file)))
                .collect();
            let entries: Vec<(String, &Content)> =
                contents.iter().map(|(p, c)| (p.clone(), c)).collect();
            let mut out = Hashing {
                file: std::fs::File::create(&temp)?,
                hash: Sha256::new(),
            };
            write_archive(&entries, &mut out)?;
            Ok(hex::encode(out.hash.finalize()))
        })
        .await??
    };
    let key = format!("sources/{digest}.tar.gz");
    let uploaded = async {
        if store.head(&key).await?.is_none() {
            let (mut writer, chunks) = chunk_channel(16);
            let reader = {
                let temp = temp.clone();
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    std::io::copy(&mut std::fs::File::open(&temp)?, &mut writer)?;
                    writer.finish()
                })
            };
            store.put_stream(&key, chunks).await?;
            reader.await??;
        }
        anyhow::Ok(())
    };
    let result = uploaded.await;
    let _ = std::fs::remove_file(&temp);
    result.with_context(|| format!("uploading the source to {}", store.uri(&key)))?;
    submission.source = klambda_events::spec::SourceSubmission::S3 {
        url: store.uri(&key),
    };
    Ok(submission)
}

/// A writer that hashes what it writes.
struct Hashing {
    file: std::fs::File,
    hash: Sha256,
}

impl std::io::Write for Hashing {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.file.write(bytes)?;
        self.hash.update(&bytes[..written]);
        Ok(written)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// `klambda deploy DIR`: submits the function and follows it until ready or failed.
pub async fn deploy(
    platform: &Platform,
    dir: &Path,
    output: Output,
    store: Option<&S3Store>,
) -> Result<i32> {
    let submission = match store {
        Some(store) => package_to_s3(dir, store).await?,
        None => package(dir)?,
    };
    let name = submission.name.clone();
    let exists = platform
        .get_json(&format!("/functions/{name}"))
        .await?
        .is_some();
    let since = platform.last_seq(&name).await?;
    let envelope = Envelope::new(event_id("deploy"), "/klambda-cli").subject(name.clone());
    let event = if exists {
        envelope.encode::<FunctionUpdated>(&submission)
    } else {
        envelope.encode::<FunctionCreated>(&submission)
    };
    platform.publish(&event).await?;
    if output == Output::Text {
        println!(
            "{} {name} ({})",
            if exists { "updating" } else { "creating" },
            match &submission.source {
                klambda_events::spec::SourceSubmission::Inline { files } =>
                    format!("{} files", files.len()),
                klambda_events::spec::SourceSubmission::S3 { url } => url.clone(),
                klambda_events::spec::SourceSubmission::Git { url, .. }
                | klambda_events::spec::SourceSubmission::Archive { url, .. } => url.clone(),
            }
        );
    }
    platform
        .follow(&name, since, &[ServiceReady::TYPE], output)
        .await
}

/// `klambda invoke NAME [DATA]`: sends one event to the function and prints its reply.
pub async fn invoke(platform: &Platform, name: &str, data: &str, event_type: &str) -> Result<i32> {
    let function = platform
        .get_json(&format!("/functions/{name}"))
        .await?
        .with_context(|| {
            format!("no function named {name}; deploy it with `klambda deploy DIR`")
        })?;
    let url = function["url"].as_str().with_context(|| {
        format!(
            "{name} is not serving (phase {}); see `klambda events {name}`",
            function["phase"]
        )
    })?;
    let _: Value =
        serde_json::from_str(data).context("DATA must be JSON, e.g. '{\"name\":\"world\"}'")?;
    let request = Request::post(format!("{url}/"))
        .header("ce-specversion", "1.0")
        .header("ce-id", event_id("invoke"))
        .header("ce-source", "/klambda-cli")
        .header("ce-type", event_type)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(data.to_owned())))?;
    let answer = platform.send(request).await?;
    let text = String::from_utf8_lossy(&answer.body);
    match answer.status {
        200 => {
            let pretty = serde_json::from_slice::<Value>(&answer.body)
                .and_then(|v| serde_json::to_string_pretty(&v))
                .unwrap_or_else(|_| text.into_owned());
            println!("{pretty}");
            Ok(0)
        }
        202 => {
            eprintln!(
                "accepted, no reply ({})",
                answer
                    .headers
                    .get("ce-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("no event")
            );
            Ok(0)
        }
        status => {
            eprintln!("the function answered {status}: {text}");
            Ok(1)
        }
    }
}

/// `klambda status [NAME]`.
pub async fn status(platform: &Platform, name: Option<&str>, output: Output) -> Result<i32> {
    let path = name.map_or_else(|| "/functions".to_owned(), |n| format!("/functions/{n}"));
    let Some(value) = platform.get_json(&path).await? else {
        eprintln!("no function named {}", name.unwrap_or_default());
        return Ok(1);
    };
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(0);
    }
    let list = if value.is_array() {
        value.as_array().cloned().unwrap_or_default()
    } else {
        vec![value]
    };
    println!(
        "{:<24} {:<10} {:<16} URL / LAST ERROR",
        "NAME", "PHASE", "REVISION"
    );
    for f in list {
        let stalled = f["stalled"].as_object().map(|stalled| {
            format!(
                "stalled: waiting on {} for {} s (its deadline is {} s); `klambda replay` its last input",
                stalled["stage"].as_str().unwrap_or("?"),
                stalled["waitingSeconds"],
                stalled["deadlineSeconds"]
            )
        });
        let tail = stalled.unwrap_or_else(|| {
            f["url"]
                .as_str()
                .or(f["lastError"].as_str())
                .unwrap_or_default()
                .to_owned()
        });
        println!(
            "{:<24} {:<10} {:<16} {tail}",
            f["name"].as_str().unwrap_or_default(),
            f["phase"].as_str().unwrap_or_default(),
            f["revision"].as_str().unwrap_or("-")
        );
    }
    Ok(0)
}

/// `klambda events NAME`.
pub async fn events(platform: &Platform, name: &str, output: Output) -> Result<i32> {
    let events = platform
        .get_json(&format!("/functions/{name}/events?limit=10000"))
        .await?
        .unwrap_or_default();
    for entry in events.as_array().into_iter().flatten() {
        match output {
            Output::Json => println!("{}", serde_json::to_string(entry)?),
            Output::Text => {
                let event = &entry["event"];
                let ty = event["type"].as_str().unwrap_or_default();
                let short = ty.strip_prefix(klambda_events::TYPE_PREFIX).unwrap_or(ty);
                println!(
                    "{:>5}  {}  {short:<18} {}  {}",
                    entry["seq"],
                    entry["receivedAt"].as_str().unwrap_or_default(),
                    event["id"].as_str().unwrap_or_default(),
                    detail(short, &event["data"])
                );
            }
        }
    }
    Ok(0)
}

/// `klambda replay EVENT_ID`: publishes a recorded event again, exactly as recorded.
pub async fn replay(platform: &Platform, id: &str) -> Result<i32> {
    let answer = platform.get(&format!("/events/{id}")).await?;
    if answer.status != 200 {
        bail!("no recorded event with id {id} (`klambda events NAME` lists them)");
    }
    let request = Request::post(format!("{}/", platform.endpoint))
        .header("content-type", "application/cloudevents+json")
        .body(Full::new(answer.body))?;
    let answer = platform.send(request).await?;
    if answer.status != 202 {
        bail!(
            "the broker refused the replay ({}): {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    println!("replayed {id}");
    Ok(0)
}

/// `klambda delete NAME`.
pub async fn delete(platform: &Platform, name: &str, output: Output) -> Result<i32> {
    let function = FunctionName::new(name).map_err(|e| anyhow::anyhow!("{name:?} {e}"))?;
    let since = platform.last_seq(name).await?;
    let event = Envelope::new(event_id("delete"), "/klambda-cli")
        .subject(name)
        .encode::<FunctionDeleted>(&FunctionDeletion {
            name: function,
            extra: Default::default(),
        });
    platform.publish(&event).await?;
    platform
        .follow(name, since, &[ServiceDeleted::TYPE], output)
        .await
}

/// `klambda rollback NAME [--to REVISION]`.
pub async fn rollback(
    platform: &Platform,
    name: &str,
    to: Option<String>,
    output: Output,
) -> Result<i32> {
    let function = FunctionName::new(name).map_err(|e| anyhow::anyhow!("{name:?} {e}"))?;
    let since = platform.last_seq(name).await?;
    let event = Envelope::new(event_id("rollback"), "/klambda-cli")
        .subject(name)
        .encode::<FunctionRollback>(&RollbackRequest {
            name: function,
            to_revision: to,
            extra: Default::default(),
        });
    platform.publish(&event).await?;
    platform
        .follow(name, since, &[ServiceReady::TYPE], output)
        .await
}

/// `klambda logs NAME`: the latest build's log and the serving revision's output.
pub async fn logs(platform: &Platform, name: &str, output: Output) -> Result<i32> {
    let logs = platform
        .get_json(&format!("/functions/{name}/logs"))
        .await?
        .with_context(|| format!("no function named {name}"))?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&logs)?);
        return Ok(0);
    }
    let print = |title: String, lines: &Value| {
        println!("== {title}");
        for line in lines.as_array().into_iter().flatten() {
            println!("{}", line.as_str().unwrap_or_default());
        }
    };
    print(
        format!("build {}", logs["build"]["id"].as_str().unwrap_or("-")),
        &logs["build"]["lines"],
    );
    print(
        format!(
            "runtime {}",
            logs["runtime"]["revision"]
                .as_str()
                .unwrap_or("(not serving)")
        ),
        &logs["runtime"]["lines"],
    );
    Ok(0)
}
