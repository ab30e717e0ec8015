//! The broker over RabbitMQ, laid out and behaving as Knative's RabbitMQ Broker
//! (eventing-rabbitmq) does, for platforms that run off the cluster: one machine or a few VMs.
//!
//! - [`topology`]: exchanges, queues and bindings, named as eventing-rabbitmq names them.
//! - [`message`]: CloudEvents in AMQP binary mode.
//! - [`dispatcher`]: per-Trigger consumers that deliver with Knative's rules.
//!
//! Guarantees:
//! - [`AmqpBroker::publish`] returns `Ok` only after RabbitMQ's publisher confirm: an event the
//!   ingress answered `202` for is on disk in every matching Trigger's queue.
//! - A delivery is acked only after its outcome is safe: the subscriber accepted it, or its
//!   reply is confirmed in the exchange, or its dead letter is confirmed in the dead-letter
//!   exchange. A crash or a lost connection before that means RabbitMQ redelivers it
//!   (at-least-once; every stage is idempotent).
//! - Connections that drop (RabbitMQ restarted, network) are re-opened with backoff; a failed
//!   publish re-opens once and then reports the error, so the producer retries.

pub mod dispatcher;
pub mod message;
pub mod topology;

use klambda_harness::metrics::Metrics;
use std::sync::Arc;

use cloudevents::{AttributesReader as _, Event};
use klambda_harness::publisher::{BoxFuture, PublishError, Publisher};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Mutex;

pub use dispatcher::Dispatcher;
pub use topology::{QueueType, Topology};

use crate::delivery::Delivery;
use crate::subscriber::Subscriber;
use crate::trigger::Trigger;

/// What went wrong talking to RabbitMQ.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// The URL is not an AMQP URL.
    #[error("{url:?} is not an AMQP URL (amqp://user:password@host:5672/vhost): {reason}")]
    Url {
        /// The URL, password removed.
        url: String,
        /// Why.
        reason: String,
    },
    /// No connection could be opened.
    #[error(
        "cannot connect to RabbitMQ at {url}: {source}; is it running? (scripts/services.sh starts it)"
    )]
    Connect {
        /// The URL, password removed.
        url: String,
        /// The client's error.
        source: lapin::Error,
    },
    /// RabbitMQ refused an operation or the connection broke during it.
    #[error("RabbitMQ: {operation} failed: {source}")]
    Operation {
        /// What was being done.
        operation: String,
        /// The client's error.
        source: lapin::Error,
    },
    /// RabbitMQ did not answer in time (a connection that died without closing).
    #[error("RabbitMQ: {operation} did not finish within {seconds} s")]
    TimedOut {
        /// What was being done.
        operation: String,
        /// The deadline.
        seconds: u64,
    },
    /// Something ended that should run until stopped.
    #[error("{what} closed")]
    Closed {
        /// What closed.
        what: String,
    },
    /// RabbitMQ did not take responsibility for a published message.
    #[error("RabbitMQ refused (nacked) event {id} published to {exchange}")]
    Nacked {
        /// The event.
        id: String,
        /// The exchange.
        exchange: String,
    },
}

/// How long one protocol operation (connect, open a channel, set up a consumer) may take: a
/// connection that died without closing must not hang the broker.
const OPERATION_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a publish may wait for its confirm.
const CONFIRM_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// `operation` bounded by `limit`; its own errors mapped by `AmqpError::operation`.
pub(crate) async fn within<T>(
    limit: std::time::Duration,
    operation: &str,
    future: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, AmqpError> {
    match tokio::time::timeout(limit, future).await {
        Ok(result) => result.map_err(AmqpError::operation(operation)),
        Err(_) => Err(AmqpError::TimedOut {
            operation: operation.to_owned(),
            seconds: limit.as_secs(),
        }),
    }
}

impl AmqpError {
    fn operation(operation: impl Into<String>) -> impl FnOnce(lapin::Error) -> Self {
        move |source| Self::Operation {
            operation: operation.into(),
            source,
        }
    }
}

struct Shared {
    url: String,
    /// The URL without its password, for messages.
    shown: String,
    topology: Topology,
    connection: Mutex<Option<Connection>>,
    /// The confirm-mode channel publishes share.
    publisher: Mutex<Option<Channel>>,
}

/// A Broker in RabbitMQ: publish into it, and dispatch its Triggers' queues to subscribers.
#[derive(Clone)]
pub struct AmqpBroker {
    shared: Arc<Shared>,
    /// Where this handle's dispatchers count delivery attempts.
    metrics: Arc<Metrics>,
}

impl AmqpBroker {
    /// Connects to `url` and declares `topology` with `triggers` (idempotent).
    pub async fn connect(
        url: &str,
        topology: Topology,
        triggers: &[Trigger],
    ) -> Result<Self, AmqpError> {
        let shown = redact(url)?;
        let broker = Self {
            metrics: Arc::new(Metrics::new("broker")),
            shared: Arc::new(Shared {
                url: url.to_owned(),
                shown,
                topology,
                connection: Mutex::new(None),
                publisher: Mutex::new(None),
            }),
        };
        let channel = broker.channel().await?;
        broker
            .shared
            .topology
            .declare(&channel, triggers)
            .await
            .map_err(AmqpError::operation(
                "declaring the broker's exchanges and queues",
            ))?;
        let _ = channel.close(200, ShortString::from("declared")).await;
        Ok(broker)
    }

    /// Counts the delivery attempts of dispatchers started from here on into `metrics`
    /// (`klambda_broker_delivery_attempts_total`), such as the platform's shared registry.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The layout in RabbitMQ.
    pub fn topology(&self) -> &Topology {
        &self.shared.topology
    }

    /// The RabbitMQ URL, without its password.
    pub fn address(&self) -> &str {
        &self.shared.shown
    }

    /// Publishes `event` into the Broker; `Ok` once RabbitMQ confirmed it.
    pub async fn publish(&self, event: &Event) -> Result<(), AmqpError> {
        self.publish_to(&self.shared.topology.exchange(), event)
            .await
    }

    /// Publishes `event` to `exchange`, re-opening the channel once if it broke.
    pub(crate) async fn publish_to(&self, exchange: &str, event: &Event) -> Result<(), AmqpError> {
        let (properties, body) = message::encode(event);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let channel = self.publisher().await?;
            let published = async {
                channel
                    .basic_publish(
                        ShortString::from(exchange),
                        ShortString::from(""),
                        BasicPublishOptions::default(),
                        &body,
                        properties.clone(),
                    )
                    .await?
                    .await
            };
            let operation = format!("publishing to {exchange}");
            match within(CONFIRM_DEADLINE, &operation, published).await {
                Ok(Confirmation::Ack(_)) => return Ok(()),
                Ok(Confirmation::Nack(_) | Confirmation::NotRequested) => {
                    return Err(AmqpError::Nacked {
                        id: event.id().to_owned(),
                        exchange: exchange.to_owned(),
                    });
                }
                Err(error) => {
                    self.forget_publisher(&channel).await;
                    if attempt >= 2 {
                        return Err(error);
                    }
                    tracing::debug!(%error, "publish failed; re-opening the channel once");
                }
            }
        }
    }

    /// The shared confirm-mode channel, opened (and the connection re-opened) when needed.
    async fn publisher(&self) -> Result<Channel, AmqpError> {
        let mut publisher = self.shared.publisher.lock().await;
        if let Some(channel) = publisher.as_ref()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let channel = self.channel().await?;
        within(
            OPERATION_DEADLINE,
            "enabling publisher confirms",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        *publisher = Some(channel.clone());
        Ok(channel)
    }

    async fn forget_publisher(&self, broken: &Channel) {
        let mut publisher = self.shared.publisher.lock().await;
        if publisher.as_ref().is_some_and(|c| c.id() == broken.id()) {
            *publisher = None;
        }
    }

    /// A new channel, re-opening the connection if it is gone.
    pub(crate) async fn channel(&self) -> Result<Channel, AmqpError> {
        let mut connection = self.shared.connection.lock().await;
        if let Some(open) = connection.as_ref()
            && open.status().connected()
            && let Ok(channel) = within(
                OPERATION_DEADLINE,
                "opening a channel",
                open.create_channel(),
            )
            .await
        {
            return Ok(channel);
        }
        // The connection is gone or no longer answers: a new one replaces it.
        *connection = None;
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("klambda {}", self.shared.topology.exchange()).into());
        let opened = match tokio::time::timeout(
            OPERATION_DEADLINE,
            Connection::connect(&self.shared.url, properties),
        )
        .await
        {
            Ok(Ok(opened)) => opened,
            Ok(Err(source)) => {
                return Err(AmqpError::Connect {
                    url: self.shared.shown.clone(),
                    source,
                });
            }
            Err(_) => {
                return Err(AmqpError::TimedOut {
                    operation: format!("connecting to {}", self.shared.shown),
                    seconds: OPERATION_DEADLINE.as_secs(),
                });
            }
        };
        let channel = within(
            OPERATION_DEADLINE,
            "opening a channel",
            opened.create_channel(),
        )
        .await?;
        *connection = Some(opened);
        Ok(channel)
    }

    /// Adds `trigger` to the Broker in RabbitMQ (its queue and binding), while the broker runs:
    /// a user's function Trigger. `previous` is what the Trigger of that name was, if its filter
    /// changed: its binding goes, its queue (and what waits in it) stays.
    pub async fn subscribe(
        &self,
        trigger: &Trigger,
        previous: Option<&Trigger>,
    ) -> Result<(), AmqpError> {
        let channel = self.channel().await?;
        let topology = &self.shared.topology;
        let operation = format!("declaring the Trigger {}", trigger.name);
        within(
            OPERATION_DEADLINE,
            &operation,
            topology.declare_trigger(&channel, trigger),
        )
        .await?;
        if let Some(previous) = previous.filter(|p| p.filter != trigger.filter) {
            within(
                OPERATION_DEADLINE,
                &format!("unbinding the Trigger {}'s previous filter", trigger.name),
                topology.unbind_trigger(&channel, previous),
            )
            .await?;
        }
        let _ = channel.close(200, ShortString::from("declared")).await;
        Ok(())
    }

    /// Removes the Trigger named `name`: its queue, with the events still in it. Stop its
    /// [`Dispatcher`] first. Returns how many events were dropped with the queue.
    pub async fn unsubscribe(&self, name: &str) -> Result<u32, AmqpError> {
        let channel = self.channel().await?;
        let dropped = within(
            OPERATION_DEADLINE,
            &format!("deleting the Trigger {name}"),
            self.shared.topology.delete_trigger(&channel, name),
        )
        .await?;
        let _ = channel.close(200, ShortString::from("deleted")).await;
        Ok(dropped)
    }

    /// Delivers `trigger`'s queue to `subscriber` until the returned [`Dispatcher`] is dropped.
    /// Must run inside a Tokio runtime.
    pub fn dispatch(&self, trigger: Trigger, subscriber: Arc<dyn Subscriber>) -> Dispatcher {
        Dispatcher::trigger(self.clone(), trigger, subscriber)
    }

    /// Delivers the dead-letter queue to the Broker's dead-letter sink with `delivery`'s
    /// retries; a letter the sink refuses stays in the queue.
    pub fn dispatch_dead_letters(
        &self,
        sink: Arc<dyn Subscriber>,
        delivery: Delivery,
    ) -> Dispatcher {
        Dispatcher::dead_letters(self.clone(), sink, delivery)
    }

    /// Closes the connection: unacked deliveries go back to their queues. Dispatchers still
    /// running re-open it; drop them first to stop.
    pub async fn close(&self) {
        *self.shared.publisher.lock().await = None;
        if let Some(connection) = self.shared.connection.lock().await.take() {
            let _ = connection.close(200, ShortString::from("closing")).await;
        }
    }

    /// Deletes the topology with every message in it (tests, uninstall).
    pub async fn delete(&self, triggers: &[Trigger]) -> Result<(), AmqpError> {
        let channel = self.channel().await?;
        self.shared
            .topology
            .delete(&channel, triggers)
            .await
            .map_err(AmqpError::operation(
                "deleting the broker's exchanges and queues",
            ))
    }
}

impl Publisher for AmqpBroker {
    fn publish(&self, event: Event) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async move {
            AmqpBroker::publish(self, &event)
                .await
                .map_err(|error| PublishError::Unreachable {
                    sink: self.shared.shown.clone(),
                    reason: error.to_string(),
                })
        })
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async move {
            self.publisher()
                .await
                .map(|_| ())
                .map_err(|error| PublishError::Unreachable {
                    sink: self.shared.shown.clone(),
                    reason: error.to_string(),
                })
        })
    }
}

/// `url` without its password, or why it is not an AMQP URL.
fn redact(url: &str) -> Result<String, AmqpError> {
    let invalid = |reason: String| AmqpError::Url {
        url: url.split('@').next_back().unwrap_or_default().to_owned(),
        reason,
    };
    let mut parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    if parsed.scheme() != "amqp" {
        return Err(invalid(format!(
            "scheme {:?}: only amqp:// is supported (amqps:// needs TLS, not built in yet)",
            parsed.scheme()
        )));
    }
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    Ok(parsed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_passwords() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f").ok(),
            Some("amqp://guest:***@127.0.0.1:5672/%2f".to_owned())
        );
        assert!(matches!(
            redact("http://127.0.0.1:5672"),
            Err(AmqpError::Url { .. })
        ));
        assert!(matches!(redact("not a url"), Err(AmqpError::Url { .. })));
    }
}
