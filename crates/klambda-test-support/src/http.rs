//! Real HTTP for tests: serve a router on 127.0.0.1:0 and send requests to it.

use std::net::SocketAddr;

use anyhow::Result;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A router served on an ephemeral port until dropped or [`TestServer::shutdown`].
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Serves `router` on 127.0.0.1:0.
    pub async fn start(router: Router) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops accepting and waits for in-flight requests to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A response read to the end.
#[derive(Debug)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Reply {
    /// A header's value as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_slice(&self.body)?)
    }
}

/// Sends `request` over a fresh HTTP/1.1 connection and reads the whole answer.
pub async fn send(request: Request<Full<Bytes>>) -> Result<Reply> {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// POSTs `body` to `url` with `headers`.
pub async fn post(url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Result<Reply> {
    let mut builder = Request::post(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(builder.body(Full::new(body.into()))?).await
}

/// GETs `url`.
pub async fn get(url: &str) -> Result<Reply> {
    get_with(url, &[]).await
}

/// GETs `url` with `headers` (such as `Authorization`).
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Result<Reply> {
    let mut builder = Request::get(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(builder.body(Full::new(Bytes::new()))?).await
}

/// DELETEs `url`.
pub async fn delete(url: &str) -> Result<Reply> {
    send(Request::delete(url).body(Full::new(Bytes::new()))?).await
}
