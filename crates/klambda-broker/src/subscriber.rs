//! Where a Trigger delivers: a stage in the same process ([`InProcess`], through the harness's
//! own dispatch path), any CloudEvents HTTP endpoint ([`Http`]), or a user's function wherever
//! its serving revision is ([`Function`]).

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
use klambda_events::FunctionName;
use klambda_harness::{Handler, Harness, Outcome};
use klambda_harness::{codec, trace};

use crate::journal::{Attempt, Journal};
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
    /// Told how each attempt of a delivery to it ended (the delivery loop decides retries).
    /// Nothing by default: a function keeps them in its [`Journal`].
    fn attempted(&self, _attempt: &Attempt<'_>) {}
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

fn client() -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

impl Http {
    /// A subscriber at `url`.
    pub fn new(url: Url) -> Self {
        Self {
            url,
            client: client(),
        }
    }
}

/// Posts CloudEvents to any address through one pooled HTTP client (kept-alive connections per
/// address): for what calls many endpoints, such as the Lambda API calling functions.
#[derive(Clone)]
pub struct Poster(Client<HttpConnector, Full<Bytes>>);

impl Default for Poster {
    fn default() -> Self {
        Self(client())
    }
}

impl Poster {
    /// Posts `event` to `url` in binary mode; the answer in Knative's terms.
    pub async fn post(&self, url: &Url, event: Event) -> Answer {
        post(&self.0, url, event).await
    }
}

impl Subscriber for Http {
    fn address(&self) -> String {
        self.url.to_string()
    }

    fn deliver(&self, event: Event) -> BoxFuture<'_, Answer> {
        Box::pin(post(&self.client, &self.url, event))
    }
}

/// Posts `event` to `url` in binary mode; the answer in Knative's terms.
async fn post(client: &Client<HttpConnector, Full<Bytes>>, url: &Url, event: Event) -> Answer {
    let (headers, body) = codec::into_binary(event);
    let mut request = Request::post(url.as_str());
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
    let response = match client.request(request).await {
        Ok(response) => response,
        Err(e) => return failed(format!("no answer from {url}: {e}")),
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
}

/// Where a function serves now: its serving revision's URL, asked at every delivery, so a
/// Trigger follows the function across updates, rollbacks and restarts, and never delivers to
/// a revision that was stopped.
pub trait Locate: Send + Sync + 'static {
    /// The serving revision, held for one delivery; `None` when the function serves nothing
    /// (deleted).
    fn serving(&self, function: &FunctionName) -> Option<Lease>;
}

/// A function's serving revision for one delivery: its URL, and a hold the runner waits for
/// before it stops that revision (a delivery that found it is not cut off by an update).
pub struct Lease {
    /// Where the revision serves.
    pub url: Url,
    /// Dropped when the delivery is over.
    pub hold: Box<dyn Send + Sync>,
}

/// How a function is named as a delivery's destination on one machine (`knativeerrordest`).
const FUNCTION_SCHEME: &str = "function://";

/// The function a failed delivery was for, from its dead letter's `knativeerrordest`:
/// `function://NAME` on one machine, the function's Service address
/// (`http://NAME.NAMESPACE.svc.cluster.local…`) on a cluster. `None` for anything else.
pub fn function_of_destination(destination: &str) -> Option<&str> {
    if let Some(name) = destination.strip_prefix(FUNCTION_SCHEME) {
        return Some(name);
    }
    let rest = destination
        .strip_prefix("http://")
        .or_else(|| destination.strip_prefix("https://"))?;
    let host = rest.split(['/', ':']).next()?;
    let (name, domain) = host.split_once('.')?;
    let cluster_service = domain
        .split_once('.')
        .is_some_and(|(_, tail)| tail == "svc.cluster.local" || tail == "svc");
    cluster_service.then_some(name)
}

/// A user's function, as a function Trigger's subscriber. Its replies go back on the bus as
/// the function's own events: `source` is `/functions/<name>`, the type the Trigger's
/// `replyType` when it names one; a reply typed as a platform event (`io.knative.lambda.*`)
/// is refused (dead-lettered with the reason, never routed to a stage).
pub struct Function {
    function: FunctionName,
    reply_type: Option<String>,
    /// Replies are dropped (asynchronous invocations: as on Lambda, the result goes nowhere).
    discard_replies: bool,
    locate: std::sync::Arc<dyn Locate>,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Where each attempt is recorded, if anywhere.
    journal: Option<std::sync::Arc<Journal>>,
}

impl Function {
    /// Delivers to `function` wherever `locate` says it serves, replies typed `reply_type`
    /// (else as the function typed them).
    pub fn new(
        function: FunctionName,
        reply_type: Option<String>,
        locate: std::sync::Arc<dyn Locate>,
    ) -> Self {
        Self {
            function,
            reply_type,
            discard_replies: false,
            locate,
            client: client(),
            journal: None,
        }
    }

    /// Records each attempt of each delivery in `journal`.
    pub fn with_journal(mut self, journal: std::sync::Arc<Journal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Delivers asynchronous invocations to `function`: its answer ends the delivery (a failure
    /// is retried, then dead-lettered), its reply is not published.
    pub fn invocations(function: FunctionName, locate: std::sync::Arc<dyn Locate>) -> Self {
        Self {
            discard_replies: true,
            ..Self::new(function, None, locate)
        }
    }
}

impl Subscriber for Function {
    fn address(&self) -> String {
        format!("{FUNCTION_SCHEME}{}", self.function)
    }

    /// One span per attempt, in the trace of the event delivered: the function receives the
    /// event with that span as its `traceparent`, and its reply continues the same trace.
    fn deliver(&self, mut event: Event) -> BoxFuture<'_, Answer> {
        let span = tracing::info_span!(
            "delivery",
            function = %self.function,
            event_id = %cloudevents::AttributesReader::id(&event),
            event_type = %cloudevents::AttributesReader::ty(&event),
        );
        let input_trace = trace::TraceParent::of_event(&event, None);
        if let Some(parent) = input_trace {
            parent.adopt_as_parent_of(&span);
        }
        let delivered_trace = trace::for_emitted(
            input_trace,
            &span,
            &format!(
                "{}@{}",
                cloudevents::AttributesReader::id(&event),
                self.function
            ),
        );
        trace::stamp(&mut event, delivered_trace);
        let delivery = async move {
            let Some(lease) = self.locate.serving(&self.function) else {
                // Gone: not retried (nothing will serve it), so the event is dead-lettered
                // with the reason instead of waiting in a queue.
                return Answer::Failed {
                    status: Some(410),
                    body: Bytes::from(format!("the function {} serves no revision", self.function)),
                };
            };
            let answer = post(&self.client, &lease.url, event).await;
            drop(lease);
            match answer {
                Answer::Reply(_) if self.discard_replies => Answer::Accepted,
                Answer::Reply(mut reply) => {
                    if let Some(ty) = &self.reply_type {
                        cloudevents::event::AttributesWriter::set_type(&mut reply, ty.as_str());
                    }
                    let ty = cloudevents::AttributesReader::ty(&reply).to_owned();
                    if klambda_events::catalogue::is_platform_type(&ty) {
                        return Answer::Failed {
                            status: Some(403),
                            body: Bytes::from(format!(
                                "the function {} replied with the platform's event type {ty}; a function may not emit it",
                                self.function
                            )),
                        };
                    }
                    let source = format!("/functions/{}", self.function);
                    cloudevents::event::AttributesWriter::set_source(&mut reply, source);
                    let reply_trace = trace::for_emitted(
                        delivered_trace,
                        &tracing::Span::current(),
                        cloudevents::AttributesReader::id(&reply),
                    );
                    trace::stamp(&mut reply, reply_trace);
                    Answer::Reply(reply)
                }
                other => other,
            }
        };
        Box::pin(tracing::Instrument::instrument(delivery, span))
    }

    fn attempted(&self, attempt: &Attempt<'_>) {
        if let Some(journal) = &self.journal {
            journal.record(self.function.as_str(), attempt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_names_its_function_in_every_mode() {
        let cases = [
            ("function://pricer", Some("pricer")),
            (
                "http://pricer.knative-lambda.svc.cluster.local",
                Some("pricer"),
            ),
            (
                "http://pricer.knative-lambda.svc.cluster.local/",
                Some("pricer"),
            ),
            ("https://pricer.fns.svc:8443/x", Some("pricer")),
            ("http://127.0.0.1:8080/", None),
            ("http://pricer.example.com/", None),
            ("http://pricer/", None),
            ("in-process://parser", None),
        ];
        for (destination, function) in cases {
            assert_eq!(
                function_of_destination(destination),
                function,
                "{destination}"
            );
        }
    }
}
