//! The commands about one function or event: deploy, invoke, status, events, logs, replay,
//! delete, rollback.

use std::path::Path;

use super::{Api, Output, detail, event_id, package, package_to_s3};
use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use klambda_events::EventType as _;
use klambda_events::catalogue::{
    FunctionCreated, FunctionDeleted, FunctionRollback, FunctionUpdated, ServiceDeleted,
    ServiceReady,
};
use klambda_events::data::{FunctionDeletion, Phase, RollbackRequest};
use klambda_events::status::{EventRecord, FunctionStatus};
use klambda_events::{Envelope, FunctionName};
use klambda_storage::ObjectStore;
use serde_json::Value;

/// `klambda deploy DIR`: submits the function and follows it until ready or failed.
pub async fn deploy(
    platform: &Api,
    dir: &Path,
    output: Output,
    store: Option<&dyn ObjectStore>,
) -> Result<i32> {
    let submission = match store {
        Some(store) => package_to_s3(dir, store).await?,
        None => package(dir)?,
    };
    let name = submission.name.clone();
    let exists = platform
        .get_json::<FunctionStatus>(&format!("/functions/{name}"))
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
        say!(
            "{} {name} ({})",
            if exists { "updating" } else { "creating" },
            match &submission.source {
                klambda_events::spec::SourceSubmission::Inline { files } => format!(
                    "{} file{}",
                    files.len(),
                    if files.len() == 1 { "" } else { "s" }
                ),
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
pub async fn invoke(
    platform: &Api,
    name: &str,
    data: &str,
    event_type: &str,
    output: Output,
) -> Result<i32> {
    let function = platform
        .get_json::<FunctionStatus>(&format!("/functions/{name}"))
        .await?
        .with_context(|| {
            format!("no function named {name}; deploy it with `klambda deploy DIR`")
        })?;
    let url = function.url.as_deref().with_context(|| {
        format!(
            "{name} is not serving (phase {}); see `klambda events {name}`",
            function.phase.label()
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
    let began = std::time::Instant::now();
    let answer = platform.send(request).await?;
    let took_ms = began.elapsed().as_secs_f64() * 1000.0;
    // The revision's activator says when the call waited for a process to start.
    let cold_start_ms = answer
        .headers
        .get(service_deployer::deployer::activator::COLD_START_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let text = String::from_utf8_lossy(&answer.body);
    let reply_type = answer.headers.get("ce-type").and_then(|v| v.to_str().ok());
    let code = i32::from(answer.status != 200 && answer.status != 202);
    if output == Output::Json {
        // One document whatever the answer: the status, the reply's type and its data (JSON
        // when it is JSON, else the text).
        let reply = serde_json::from_slice::<Value>(&answer.body)
            .unwrap_or_else(|_| Value::String(text.into_owned()));
        say!(
            "{}",
            serde_json::json!({
                "status": answer.status,
                "type": reply_type,
                "reply": reply,
                "durationMs": took_ms.round(),
                "coldStart": cold_start_ms.is_some(),
                "coldStartMs": cold_start_ms,
            })
        );
        return Ok(code);
    }
    match cold_start_ms {
        Some(ms) => eprintln!("cold start: {took_ms:.0} ms ({ms} ms waiting for a process)"),
        None => eprintln!("warm: {took_ms:.0} ms"),
    }
    match answer.status {
        200 => {
            let pretty = serde_json::from_slice::<Value>(&answer.body)
                .and_then(|v| serde_json::to_string_pretty(&v))
                .unwrap_or_else(|_| text.into_owned());
            say!("{pretty}");
        }
        202 => eprintln!("accepted, no reply ({})", reply_type.unwrap_or("no event")),
        status => eprintln!("the function answered {status}: {text}"),
    }
    Ok(code)
}

/// What `klambda publish` sends.
pub struct Publication<'a> {
    /// The CloudEvents type.
    pub event_type: &'a str,
    /// The data: JSON, else text.
    pub data: &'a str,
    /// The source.
    pub source: &'a str,
    /// The subject, if any.
    pub subject: Option<&'a str>,
    /// Extension attributes, `name=value`.
    pub extensions: &'a [String],
}

/// `klambda publish TYPE [DATA]`: posts one CloudEvent to the broker ingress, as any client may
/// (platform types are refused there), and prints its id.
pub async fn publish(platform: &Api, publication: &Publication<'_>, output: Output) -> Result<i32> {
    let id = event_id("publish");
    let mut event = serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "type": publication.event_type,
        "source": publication.source,
    });
    match serde_json::from_str::<Value>(publication.data) {
        Ok(data) => {
            event["datacontenttype"] = "application/json".into();
            event["data"] = data;
        }
        Err(_) => {
            event["datacontenttype"] = "text/plain; charset=utf-8".into();
            event["data"] = publication.data.into();
        }
    }
    if let Some(subject) = publication.subject {
        event["subject"] = subject.into();
    }
    for extension in publication.extensions {
        let Some((name, value)) = extension.split_once('=') else {
            bail!("--ext {extension:?}: expected NAME=VALUE");
        };
        let valid = !name.is_empty()
            && name.len() <= 20
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !valid
            || [
                "specversion",
                "id",
                "type",
                "source",
                "subject",
                "data",
                "data_base64",
                "datacontenttype",
                "dataschema",
                "time",
            ]
            .contains(&name)
        {
            bail!(
                "--ext {name:?}: an extension name is 1–20 characters of a-z and 0-9, and not a core attribute"
            );
        }
        event[name] = value.into();
    }
    platform.publish_structured(&event).await?;
    match output {
        Output::Json => say!("{}", serde_json::json!({ "id": id })),
        Output::Text => say!("{id}"),
    }
    Ok(0)
}

/// `klambda status [NAME]`.
pub async fn status(platform: &Api, name: Option<&str>, output: Output) -> Result<i32> {
    let path = name.map_or_else(|| "/functions".to_owned(), |n| format!("/functions/{n}"));
    let list: Vec<FunctionStatus> = match name {
        None => platform.get_json(&path).await?.unwrap_or_default(),
        Some(name) => match platform.get_json::<FunctionStatus>(&path).await? {
            Some(function) => {
                if output == Output::Json {
                    say!("{}", serde_json::to_string_pretty(&function)?);
                    return Ok(0);
                }
                vec![function]
            }
            None => {
                eprintln!("no function named {name}");
                return Ok(1);
            }
        },
    };
    if output == Output::Json {
        say!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    let rows: Vec<[String; 8]> = list
        .iter()
        .map(|f| {
            let stalled = f.stalled.as_ref().map(|stalled| {
                format!(
                    "stalled: waiting on {} for {} s (its deadline is {} s); `klambda replay` its last input",
                    stalled.stage, stalled.waiting_seconds, stalled.deadline_seconds
                )
            });
            let tail = stalled.unwrap_or_else(|| {
                f.url
                    .as_deref()
                    .or(f.last_error.as_deref())
                    .unwrap_or_default()
                    .to_owned()
            });
            [
                f.name.to_string(),
                f.phase.label().to_owned(),
                f.revision.clone().unwrap_or_else(|| "-".to_owned()),
                f.runtime.clone().unwrap_or_else(|| "-".to_owned()),
                match &f.last_restart {
                    Some(last) => format!("{} ({})", f.restarts, last.reason.label()),
                    None => f.restarts.to_string(),
                },
                f.scale.as_ref().map_or_else(|| "-".to_owned(), replicas_cell),
                f.scale.as_ref().map_or_else(|| "-".to_owned(), cold_starts_cell),
                tail,
            ]
        })
        .collect();
    let header = [
        "NAME",
        "PHASE",
        "REVISION",
        "RUNTIME",
        "RESTARTS",
        "REPLICAS",
        "COLD STARTS",
        "URL / LAST ERROR",
    ];
    print_table(header, rows)?;
    Ok(0)
}

/// The REPLICAS cell: ready processes, those starting, and the requests on them.
fn replicas_cell(scale: &klambda_events::status::Scale) -> String {
    let mut cell = scale.replicas.to_string();
    if scale.starting > 0 {
        cell.push_str(&format!(" (+{} starting)", scale.starting));
    }
    if scale.in_flight > 0 || scale.queued > 0 {
        cell.push_str(&format!(", {} busy", scale.in_flight));
    }
    if scale.queued > 0 {
        cell.push_str(&format!(", {} queued", scale.queued));
    }
    cell
}

/// The COLD STARTS cell: how many, and how long the last took.
fn cold_starts_cell(scale: &klambda_events::status::Scale) -> String {
    match &scale.last_cold_start {
        Some(last) => format!("{} (last {} ms)", scale.cold_starts, last.duration_ms),
        None => scale.cold_starts.to_string(),
    }
}

/// Prints `rows` under `header`, each column but the last as wide as its widest cell.
fn print_table<const N: usize>(header: [&str; N], rows: Vec<[String; N]>) -> Result<()> {
    let widths: Vec<usize> = (0..N)
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .chain([header[column].len()])
                .max()
                .unwrap_or_default()
        })
        .collect();
    for row in std::iter::once(header.map(str::to_owned)).chain(rows) {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            if column + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[column]));
            }
        }
        say!("{}", line.trim_end());
    }
    Ok(())
}

/// `klambda events NAME`: the function's lifecycle events and, in time order between them, each
/// attempt of each delivery to it (from the process that delivers to it; none on a cluster,
/// where Knative's dispatcher delivers).
pub async fn events(platform: &Api, name: &str, output: Output) -> Result<i32> {
    // An unknown function is an error, as for `status` and `logs`, not an empty history.
    if platform.known(name).await?.is_none() {
        eprintln!("no function named {name}");
        return Ok(1);
    }
    let events: Vec<EventRecord> = platform
        .get_json(&format!("/functions/{name}/events?limit=10000"))
        .await?
        .unwrap_or_default();
    let deliveries: Vec<Value> = platform
        .get_json(&format!("/functions/{name}/deliveries?limit=10000"))
        .await?
        .unwrap_or_default();
    let at = |time: &str| chrono::DateTime::parse_from_rfc3339(time).ok();
    let mut lines: Vec<(Option<chrono::DateTime<chrono::FixedOffset>>, String)> = Vec::new();
    for entry in &events {
        let line = match output {
            Output::Json => serde_json::to_string(entry)?,
            Output::Text => {
                let event = &entry.event;
                let ty = event["type"].as_str().unwrap_or_default();
                let short = ty.strip_prefix(klambda_events::TYPE_PREFIX).unwrap_or(ty);
                format!(
                    "{:>5}  {}  {short:<18} {}  {}",
                    entry.seq,
                    entry.received_at,
                    event["id"].as_str().unwrap_or_default(),
                    detail(short, &event["data"])
                )
            }
        };
        lines.push((at(&entry.received_at), line));
    }
    for delivery in &deliveries {
        let time = delivery["time"].as_str().unwrap_or_default();
        let line = match output {
            Output::Json => serde_json::to_string(&serde_json::json!({ "delivery": delivery }))?,
            Output::Text => delivery_line(delivery),
        };
        lines.push((at(time), line));
    }
    // Stable: the store's order among events, the journal's among deliveries.
    lines.sort_by_key(|(time, _)| *time);
    for (_, line) in lines {
        say!("{line}");
    }
    Ok(0)
}

/// One delivery attempt as `klambda events` prints it.
fn delivery_line(delivery: &Value) -> String {
    let text = |key: &str| delivery[key].as_str().unwrap_or_default();
    let outcome = text("outcome").replace('_', "-");
    let status = delivery["status"]
        .as_u64()
        .map(|s| format!(" {s}"))
        .unwrap_or_default();
    let reason = delivery["reason"]
        .as_str()
        .map(|r| format!(": {}", r.lines().next().unwrap_or_default()))
        .unwrap_or_default();
    format!(
        "{:>5}  {}  {:<18} {}  {} via {} attempt {} {outcome}{status} in {:.1} ms{reason}",
        "-",
        text("time"),
        "delivery",
        text("eventId"),
        text("eventType"),
        text("trigger"),
        delivery["attempt"],
        delivery["durationMs"].as_f64().unwrap_or_default(),
    )
}

/// `klambda replay EVENT_ID`: publishes a recorded event again, exactly as recorded (the
/// platform does it: the ingress takes only what clients may send).
pub async fn replay(platform: &Api, id: &str, output: Output) -> Result<i32> {
    let request = Request::post(format!("{}/events/{id}/replay", platform.endpoint))
        .body(Full::new(Bytes::new()))?;
    let answer = platform.send(request).await?;
    match answer.status {
        202 => {}
        404 => bail!("no recorded event with id {id} (`klambda events NAME` lists them)"),
        status => bail!(
            "the platform refused the replay ({status}): {}",
            String::from_utf8_lossy(&answer.body)
        ),
    }
    match output {
        Output::Json => say!("{}", serde_json::json!({ "replayed": id })),
        Output::Text => say!("replayed {id}"),
    }
    Ok(0)
}

/// `klambda delete NAME`.
pub async fn delete(platform: &Api, name: &str, output: Output) -> Result<i32> {
    let function = FunctionName::new(name).map_err(|e| anyhow::anyhow!("{name:?} {e}"))?;
    let event = Envelope::new(event_id("delete"), "/klambda-cli")
        .subject(name)
        .encode::<FunctionDeleted>(&FunctionDeletion {
            name: function,
            extra: Default::default(),
        });
    request(platform, name, event, &[ServiceDeleted::TYPE], output).await
}

/// `klambda rollback NAME [--to REVISION]`.
pub async fn rollback(
    platform: &Api,
    name: &str,
    to: Option<String>,
    output: Output,
) -> Result<i32> {
    let function = FunctionName::new(name).map_err(|e| anyhow::anyhow!("{name:?} {e}"))?;
    let event = Envelope::new(event_id("rollback"), "/klambda-cli")
        .subject(name)
        .encode::<FunctionRollback>(&RollbackRequest {
            name: function,
            to_revision: to,
            extra: Default::default(),
        });
    request(platform, name, event, &[ServiceReady::TYPE], output).await
}

/// Sends `event`, a request about the function `name`, and follows the function until one of
/// `until`. Nothing is sent for a function that does not exist (or no longer does): "no
/// function named …", exit 1, and no phantom entry.
async fn request(
    platform: &Api,
    name: &str,
    event: cloudevents::Event,
    until: &[&str],
    output: Output,
) -> Result<i32> {
    if platform
        .known(name)
        .await?
        .is_none_or(|f| f.phase == Phase::Deleted)
    {
        eprintln!("no function named {name}");
        return Ok(1);
    }
    let since = platform.last_seq(name).await?;
    platform.publish(&event).await?;
    platform.follow(name, since, until, output).await
}

/// `klambda logs NAME`: the latest build's log and the serving revision's output.
pub async fn logs(platform: &Api, name: &str, output: Output) -> Result<i32> {
    let logs: Value = platform
        .get_json(&format!("/functions/{name}/logs"))
        .await?
        .with_context(|| format!("no function named {name}"))?;
    if output == Output::Json {
        say!("{}", serde_json::to_string_pretty(&logs)?);
        return Ok(0);
    }
    let print = |title: String, lines: &Value| -> Result<()> {
        say!("== {title}");
        for line in lines.as_array().into_iter().flatten() {
            say!("{}", line.as_str().unwrap_or_default());
        }
        Ok(())
    };
    print(
        format!("build {}", logs["build"]["id"].as_str().unwrap_or("-")),
        &logs["build"]["lines"],
    )?;
    print(
        format!(
            "runtime {}",
            logs["runtime"]["revision"]
                .as_str()
                .unwrap_or("(not serving)")
        ),
        &logs["runtime"]["lines"],
    )?;
    Ok(0)
}
