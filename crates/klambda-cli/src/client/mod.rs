//! The client commands, talking HTTP to a running platform (`klambda up`, or the broker ingress
//! and status reporter of a cluster).
//!
//! # Layout
//! - this module: [`Api`], the platform's HTTP endpoint, and following a journey.
//! - [`commands`]: deploy, invoke, status, events, logs, replay, delete, rollback.
//! - [`dlq`]: the broker's and the webhook gateway's dead letters.
//! - [`secrets`]: functions' secret env values.
//! - [`package`]: a function directory as a submission (inline, or uploaded to S3).

/// `println!` that hands a failed write back (`?`) instead of panicking: when the reader goes
/// away (`klambda events NAME | head`) the command stops, and `main` ends quietly on the broken
/// pipe, as any Unix filter does.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?
    }};
}

/// Whether `error` is a write to a closed pipe.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

mod commands;
mod dlq;
mod init;
mod package;
mod secrets;

pub use commands::{
    Publication, delete, deploy, events, invoke, logs, publish, replay, rollback, status,
};
pub use dlq::{Dlq, WebhookDlq, dlq, webhook_dlq};
pub use init::{init, list as init_list};
pub use package::{package, package_to_s3};
pub use secrets::{Secrets, secrets};

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use klambda_events::EventType as _;
use klambda_events::catalogue::{
    BuildCancelled, BuildCompleted, BuildFailed, BuildStarted, BuildTimeout, ContextUploaded,
    ParserCompleted, ParserFailed, ServiceCreated, ServiceFailed, ServiceReady, ServiceUpdated,
    StatusUpdated,
};
use klambda_events::status::EventRecord;
use serde_json::Value;

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
pub struct Api {
    endpoint: String,
    /// Sent to the endpoint only (never to a function's URL) as `Authorization: Bearer`.
    token: Option<String>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

/// An HTTP answer.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) headers: http::HeaderMap,
    pub(super) body: Bytes,
}

impl Api {
    /// The platform at `endpoint` (e.g. `http://127.0.0.1:8080`).
    pub fn new(endpoint: &str) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            token: None,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends `token` with every request to the platform.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    pub(super) async fn send(&self, mut request: Request<Full<Bytes>>) -> Result<Answer> {
        let uri = request.uri().to_string();
        let to_platform = self.endpoint.parse::<http::Uri>().is_ok_and(|endpoint| {
            endpoint.scheme() == request.uri().scheme()
                && endpoint.authority() == request.uri().authority()
        });
        if let Some(token) = self.token.as_deref().filter(|_| to_platform) {
            request.headers_mut().insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(&format!("Bearer {token}"))
                    .context("the API token is not a valid header value")?,
            );
        }
        let response = self.client.request(request).await.with_context(|| {
            format!("cannot reach {uri}: is the platform running? Start it with `klambda up`")
        })?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        if to_platform && parts.status == http::StatusCode::UNAUTHORIZED {
            // The problem document says which token and where it is.
            let detail = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|p| p["detail"].as_str().map(str::to_owned))
                .unwrap_or_default();
            bail!("{uri} needs a token: {detail}");
        }
        Ok(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    pub(super) async fn get(&self, path: &str) -> Result<Answer> {
        self.send(Request::get(format!("{}{path}", self.endpoint)).body(Full::new(Bytes::new()))?)
            .await
    }

    pub(super) async fn delete(&self, path: &str) -> Result<Answer> {
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

    pub(super) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>> {
        let answer = self.get(path).await?;
        match answer.status {
            200 => Ok(Some(serde_json::from_slice(&answer.body).with_context(
                || format!("{path} answered what this klambda does not read"),
            )?)),
            404 => Ok(None),
            status => bail!(
                "{path} answered {status}: {}",
                String::from_utf8_lossy(&answer.body)
            ),
        }
    }

    /// The function `name`'s status, or `None` when the platform has never heard of it.
    pub(super) async fn known(
        &self,
        name: &str,
    ) -> Result<Option<klambda_events::status::FunctionStatus>> {
        self.get_json(&format!("/functions/{name}")).await
    }

    /// Publishes an event to the broker ingress.
    pub(super) async fn publish(&self, event: &cloudevents::Event) -> Result<()> {
        self.publish_structured(&klambda_harness::codec::to_structured(event))
            .await
    }

    /// Publishes an event in structured mode (a JSON object) to the broker ingress.
    pub(super) async fn publish_structured(&self, event: &Value) -> Result<()> {
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
    pub(super) async fn events_after(&self, name: &str, after: i64) -> Result<Vec<EventRecord>> {
        let page = self
            .get_json(&format!(
                "/functions/{name}/events?after={after}&limit=1000"
            ))
            .await?;
        Ok(page.unwrap_or_default())
    }

    /// The highest event sequence recorded for `name` so far (0 when none).
    pub(super) async fn last_seq(&self, name: &str) -> Result<i64> {
        let mut last = 0;
        loop {
            let page = self.events_after(name, last).await?;
            match page.last().map(|e| e.seq) {
                Some(seq) => last = seq,
                None => return Ok(last),
            }
        }
    }

    /// Prints `name`'s events after `since` as they arrive, until one of `ends` (exit code 0)
    /// or a failure type (exit code 1).
    pub(super) async fn follow(
        &self,
        name: &str,
        since: i64,
        ends: &[&str],
        output: Output,
    ) -> Result<i32> {
        let started = Instant::now();
        let mut seen = since;
        loop {
            // Only what arrived since the last poll: the log is not reread.
            let events = self.events_after(name, seen).await?;
            for entry in &events {
                let seq = entry.seq;
                if seq <= seen {
                    continue;
                }
                seen = seq;
                let event = &entry.event;
                let ty = event["type"].as_str().unwrap_or_default();
                if ty == StatusUpdated::TYPE {
                    continue;
                }
                let short = ty.strip_prefix(klambda_events::TYPE_PREFIX).unwrap_or(ty);
                match output {
                    Output::Json => say!("{}", serde_json::to_string(entry)?),
                    Output::Text => say!(
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

pub(crate) fn event_id(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{nanos:x}-{}", std::process::id())
}
