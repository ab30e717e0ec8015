//! Where a Trigger delivers: a stage in the same process ([`InProcess`], through the harness's
//! own dispatch path) or any CloudEvents HTTP endpoint ([`Http`]).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use cloudevents::Event;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use klambda_harness::codec;
use klambda_harness::{Handler, Harness, Outcome};
use url::Url;

/// A boxed future, so subscribers of different kinds share one broker.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a subscriber answered, in Knative's terms.
#[derive(Debug, Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "one Answer per delivery, consumed at once by the broker; boxing buys nothing"
)]
pub enum Answer {
    /// `200` with an event: a reply, to be re-ingested into the broker.
    Reply(Event),
    /// `2xx` without an event: delivered, nothing follows.
    Accepted,
    /// Anything else: the status (`None` when there was no answer) and the body.
    Failed {
        /// The HTTP status, if one came back.
        status: Option<u16>,
        /// The response body, or what went wrong.
        body: Bytes,
    },
}

/// A delivery target.
pub trait Subscriber: Send + Sync + 'static {
    /// The address reported as `knativeerrordest` when deliveries to it are dead-lettered.
    fn address(&self) -> String;
    /// Delivers one event.
    fn deliver(&self, event: Event) -> BoxFuture<'_, Answer>;
}

/// A stage served by a [`Harness`] in this process.
pub struct InProcess<H> {
    name: String,
    harness: Harness<H>,
}

impl<H: Handler> InProcess<H> {
    /// The stage `harness`, addressed as `inprocess://<service name>`.
    pub fn new(harness: Harness<H>, service_name: &str) -> Self {
        Self {
            name: service_name.to_owned(),
            harness,
        }
    }
}

impl<H: Handler> Subscriber for InProcess<H> {
    fn address(&self) -> String {
        format!("inprocess://{}", self.name)
    }

    fn deliver(&self, event: Event) -> BoxFuture<'_, Answer> {
        Box::pin(async move {
            match self.harness.dispatch(event).await {
                Ok(Outcome::Reply(reply)) => Answer::Reply(reply),
                Ok(Outcome::Done) => Answer::Accepted,
                Err(error) => Answer::Failed {
                    status: Some(error.status().as_u16()),
                    body: Bytes::from(serde_json::to_vec(&error.problem()).unwrap_or_default()),
                },
            }
        })
    }
}

/// A CloudEvents endpoint over HTTP (binary mode).
pub struct Http {
    url: Url,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    /// A subscriber at `url`.
    pub fn new(url: Url) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        Self {
            url,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl Subscriber for Http {
    fn address(&self) -> String {
        self.url.to_string()
    }

    fn deliver(&self, event: Event) -> BoxFuture<'_, Answer> {
        Box::pin(async move {
            let (headers, body) = codec::into_binary(event);
            let mut request = Request::post(self.url.as_str());
            if let Some(h) = request.headers_mut() {
                h.extend(headers);
            }
            let failed = |reason: String| Answer::Failed {
                status: None,
                body: Bytes::from(reason),
            };
            let request = match request.body(Full::new(body)) {
                Ok(request) => request,
                Err(e) => return failed(e.to_string()),
            };
            let response = match self.client.request(request).await {
                Ok(response) => response,
                Err(e) => return failed(format!("no answer from {}: {e}", self.url)),
            };
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let status = parts.status.as_u16();
            if !parts.status.is_success() {
                return Answer::Failed {
                    status: Some(status),
                    body,
                };
            }
            let carries_event = parts.headers.contains_key("ce-id")
                || parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .is_some_and(|ct| ct.as_bytes().starts_with(b"application/cloudevents"));
            if !carries_event {
                return Answer::Accepted;
            }
            match codec::decode(&parts.headers, body) {
                Ok(reply) => Answer::Reply(reply),
                // Knative treats a malformed reply as a failed delivery (the event is retried,
                // then dead-lettered) rather than dropping it.
                Err(problem) => Answer::Failed {
                    status: Some(502),
                    body: Bytes::from(format!(
                        "the subscriber replied with an invalid event: {problem:?}"
                    )),
                },
            }
        })
    }
}
