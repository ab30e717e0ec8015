//! Side events (such as `parser.started`) go to the broker through a [`Publisher`]. The reply
//! event is the stage's contract; side events are progress reports beside it.
//!
//! Backends: [`HttpSink`] posts to the broker ingress at `K_SINK` (Knative); [`Discard`] when no
//! sink is configured; [`Memory`] keeps them (tests, and the embedded broker later). RabbitMQ
//! comes with the broker issue.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cloudevents::Event;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use url::Url;

use crate::codec::encode_binary;

/// A boxed future, so publishers can be chosen at run time (`Arc<dyn Publisher>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a side event was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The sink could not be reached.
    #[error("the sink {sink} is unreachable: {reason}")]
    Unreachable {
        /// The sink.
        sink: String,
        /// What failed.
        reason: String,
    },
    /// The sink answered with a non-2xx status.
    #[error("the sink {sink} answered {status}: {body}")]
    Refused {
        /// The sink.
        sink: String,
        /// Its status.
        status: u16,
        /// The start of its body.
        body: String,
    },
}

/// Sends events to the broker.
pub trait Publisher: Send + Sync + 'static {
    /// Publishes one event; `Ok` once the broker accepted it.
    fn publish(&self, event: Event) -> BoxFuture<'_, Result<(), PublishError>>;
    /// Whether the broker is reachable.
    fn ready(&self) -> BoxFuture<'_, Result<(), PublishError>>;
}

/// No sink configured: side events are dropped (with a debug log). The pipeline does not
/// depend on them; the replies carry everything.
#[derive(Debug, Default)]
pub struct Discard;

impl Publisher for Discard {
    fn publish(&self, event: Event) -> BoxFuture<'_, Result<(), PublishError>> {
        tracing::debug!(event_type = %cloudevents::AttributesReader::ty(&event), "no K_SINK: side event dropped");
        Box::pin(async { Ok(()) })
    }
    fn ready(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Keeps every published event in memory.
#[derive(Debug, Default, Clone)]
pub struct Memory {
    events: Arc<Mutex<Vec<Event>>>,
}

impl Memory {
    /// The events published so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl Publisher for Memory {
    fn publish(&self, event: Event) -> BoxFuture<'_, Result<(), PublishError>> {
        if let Ok(mut events) = self.events.lock() {
            events.push(event);
        }
        Box::pin(async { Ok(()) })
    }
    fn ready(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Posts events in binary mode to the broker ingress (`K_SINK`), retrying transport errors and
/// retryable statuses (5xx, 404, 408, 409, 429) a few times with exponential backoff.
#[derive(Debug, Clone)]
pub struct HttpSink {
    sink: Url,
    /// Sent as `Authorization: Bearer` (a sink that asks for the platform's API token).
    token: Option<crate::config::Secret>,
    client: Client<HttpConnector, Full<Bytes>>,
    attempts: u32,
    backoff: Duration,
    timeout: Duration,
}

impl HttpSink {
    /// A publisher to `sink` (an `http://` URL: the in-cluster broker ingress).
    pub fn new(sink: Url) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        Self {
            sink,
            token: None,
            client: Client::builder(TokioExecutor::new()).build(connector),
            attempts: 3,
            backoff: Duration::from_millis(100),
            timeout: Duration::from_secs(5),
        }
    }

    /// Sends `token` with every event (`Authorization: Bearer`).
    pub fn with_token(mut self, token: Option<crate::config::Secret>) -> Self {
        self.token = token;
        self
    }

    async fn post_once(&self, event: &Event) -> Result<(), (PublishError, bool)> {
        let (headers, body) = encode_binary(event);
        let mut request = Request::post(self.sink.as_str());
        if let Some(h) = request.headers_mut() {
            h.extend(headers);
            if let Some(token) = &self.token
                && let Ok(value) =
                    http::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            {
                h.insert(http::header::AUTHORIZATION, value);
            }
        }
        let request = request.body(Full::new(body)).map_err(|e| {
            (
                PublishError::Unreachable {
                    sink: self.sink.to_string(),
                    reason: e.to_string(),
                },
                false,
            )
        })?;
        let unreachable = |reason: String| PublishError::Unreachable {
            sink: self.sink.to_string(),
            reason,
        };
        let response = tokio::time::timeout(self.timeout, self.client.request(request))
            .await
            .map_err(|_| {
                (
                    unreachable(format!("no answer within {:?}", self.timeout)),
                    true,
                )
            })?
            .map_err(|e| (unreachable(e.to_string()), true))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| {
                String::from_utf8_lossy(&b.to_bytes())
                    .chars()
                    .take(200)
                    .collect()
            })
            .unwrap_or_default();
        let retry = status.is_server_error() || matches!(status.as_u16(), 404 | 408 | 409 | 429);
        Err((
            PublishError::Refused {
                sink: self.sink.to_string(),
                status: status.as_u16(),
                body,
            },
            retry,
        ))
    }
}

impl Publisher for HttpSink {
    fn publish(&self, event: Event) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async move {
            let mut attempt = 1;
            loop {
                match self.post_once(&event).await {
                    Ok(()) => return Ok(()),
                    Err((error, retry)) if !retry || attempt >= self.attempts => return Err(error),
                    Err(_) => {
                        tokio::time::sleep(self.backoff * 2u32.pow(attempt - 1)).await;
                        attempt += 1;
                    }
                }
            }
        })
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async move {
            let unreachable = |reason: String| PublishError::Unreachable {
                sink: self.sink.to_string(),
                reason,
            };
            let host = self.sink.host_str().unwrap_or_default().to_owned();
            let port = self.sink.port_or_known_default().unwrap_or(80);
            let connect = tokio::net::TcpStream::connect((host.as_str(), port));
            match tokio::time::timeout(Duration::from_secs(2), connect).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(unreachable(e.to_string())),
                Err(_) => Err(unreachable("connect timed out after 2s".into())),
            }
        })
    }
}
