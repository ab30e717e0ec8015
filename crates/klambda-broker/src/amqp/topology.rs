//! The names and shapes eventing-rabbitmq gives a Broker and its Triggers in RabbitMQ, so an
//! operator looking into RabbitMQ finds what they would find on the cluster:
//!
//! | object | RabbitMQ | name |
//! | --- | --- | --- |
//! | Broker | durable headers exchange | `b.<ns>.<broker>.<uid>` |
//! | its dead letters | durable headers exchange + queue | `b.<ns>.<broker>.dlx.<uid>`, `b.<ns>.<broker>.dlq.<uid>` |
//! | dead letters that are not CloudEvents | durable queue | `b.<ns>.<broker>.parked.<uid>` |
//! | Trigger | durable queue bound with its filter + `x-match: all` | `<ns>.<trigger>.<uid>` |
//!
//! On a cluster `<uid>` is the Broker's Kubernetes UID; off the cluster it is the platform's
//! instance name (`local` by default), so two platforms can share one RabbitMQ.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::trigger::Trigger;

/// The queue type of the Trigger queues (`RabbitmqBrokerConfig.spec.queueType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// Replicated, durable: the default, as on the cluster.
    #[default]
    Quorum,
    /// A single-node classic queue.
    Classic,
}

impl QueueType {
    fn argument(self) -> &'static str {
        match self {
            Self::Quorum => "quorum",
            Self::Classic => "classic",
        }
    }
}

impl std::str::FromStr for QueueType {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "quorum" => Ok(Self::Quorum),
            "classic" => Ok(Self::Classic),
            other => Err(format!(
                "queue type {other:?} is not one of \"quorum\", \"classic\""
            )),
        }
    }
}

/// Where a Broker lives in RabbitMQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The namespace (`klambda` off the cluster).
    pub namespace: String,
    /// The Broker's name (`eventing/broker.yaml`).
    pub broker: String,
    /// The Broker's UID, or the platform's instance name off the cluster.
    pub uid: String,
    /// The Trigger queues' type.
    pub queue_type: QueueType,
}

impl Topology {
    /// The layout of `broker` for the platform instance `uid`, in the `klambda` namespace.
    pub fn new(broker: &str, uid: &str) -> Self {
        Self {
            namespace: "klambda".into(),
            broker: broker.into(),
            uid: uid.into(),
            queue_type: QueueType::default(),
        }
    }

    /// The Broker's exchange: every event is published here.
    pub fn exchange(&self) -> String {
        format!("b.{}.{}.{}", self.namespace, self.broker, self.uid)
    }

    /// Where dead letters are published.
    pub fn dead_letter_exchange(&self) -> String {
        format!("b.{}.{}.dlx.{}", self.namespace, self.broker, self.uid)
    }

    /// Where dead letters wait for the dead-letter sink (or an operator).
    pub fn dead_letter_queue(&self) -> String {
        format!("b.{}.{}.dlq.{}", self.namespace, self.broker, self.uid)
    }

    /// Where messages that are not CloudEvents end (rejected from the dead-letter queue), kept
    /// for an operator: nothing else can deliver them.
    pub fn parking_queue(&self) -> String {
        format!("b.{}.{}.parked.{}", self.namespace, self.broker, self.uid)
    }

    /// The queue of one Trigger.
    pub fn trigger_queue(&self, trigger: &str) -> String {
        format!("{}.{}.{}", self.namespace, trigger, self.uid)
    }

    /// Declares the exchanges, the dead-letter queue and every Trigger's queue and binding.
    /// Idempotent: declaring what exists with the same shape changes nothing.
    pub async fn declare(&self, channel: &Channel, triggers: &[Trigger]) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        for exchange in [self.exchange(), self.dead_letter_exchange()] {
            channel
                .exchange_declare(
                    exchange.into(),
                    ExchangeKind::Headers,
                    durable,
                    FieldTable::default(),
                )
                .await?;
        }
        self.declare_queue(channel, &self.parking_queue(), None)
            .await?;
        let parking = self.parking_queue();
        self.declare_queue(channel, &self.dead_letter_queue(), Some(("", &parking)))
            .await?;
        channel
            .queue_bind(
                self.dead_letter_queue().into(),
                self.dead_letter_exchange().into(),
                ShortString::from(""),
                QueueBindOptions::default(),
                binding(&[], "dead-letters"),
            )
            .await?;
        for trigger in triggers {
            self.declare_trigger(channel, trigger).await?;
        }
        Ok(())
    }

    /// Declares one Trigger's queue and binds it with its filter (idempotent). The exchanges
    /// must exist ([`Topology::declare`]).
    pub async fn declare_trigger(&self, channel: &Channel, trigger: &Trigger) -> lapin::Result<()> {
        let queue = self.trigger_queue(&trigger.name);
        let dead_letters = self.dead_letter_exchange();
        self.declare_queue(channel, &queue, Some((&dead_letters, "")))
            .await?;
        channel
            .queue_bind(
                queue.into(),
                self.exchange().into(),
                ShortString::from(""),
                QueueBindOptions::default(),
                trigger_binding(trigger),
            )
            .await
    }

    /// Removes the binding `trigger`'s filter made: events that match only it no longer reach
    /// its queue (a Trigger whose filter changed).
    pub async fn unbind_trigger(&self, channel: &Channel, trigger: &Trigger) -> lapin::Result<()> {
        channel
            .queue_unbind(
                self.trigger_queue(&trigger.name).into(),
                self.exchange().into(),
                ShortString::from(""),
                trigger_binding(trigger),
            )
            .await
    }

    /// Deletes the Trigger named `name`'s queue with what waits in it: a removed Trigger's
    /// events are not kept where nothing will ever consume them.
    pub async fn delete_trigger(&self, channel: &Channel, name: &str) -> lapin::Result<u32> {
        channel
            .queue_delete(
                self.trigger_queue(name).into(),
                QueueDeleteOptions::default(),
            )
            .await
    }

    /// A durable queue of the configured type. What a dispatcher rejects goes to
    /// `dead_letters` (exchange, routing key), so even a message that is not a CloudEvent is kept.
    async fn declare_queue(
        &self,
        channel: &Channel,
        queue: &str,
        dead_letters: Option<(&str, &str)>,
    ) -> lapin::Result<()> {
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(self.queue_type.argument().into()),
        );
        if let Some((exchange, routing_key)) = dead_letters {
            arguments.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(exchange.into()),
            );
            if !routing_key.is_empty() {
                arguments.insert(
                    "x-dead-letter-routing-key".into(),
                    AMQPValue::LongString(routing_key.into()),
                );
            }
        }
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await?;
        Ok(())
    }

    /// Deletes everything [`Topology::declare`] made, messages included (tests, uninstall).
    pub async fn delete(&self, channel: &Channel, triggers: &[Trigger]) -> lapin::Result<()> {
        let mut queues: Vec<String> = triggers
            .iter()
            .map(|t| self.trigger_queue(&t.name))
            .collect();
        queues.push(self.dead_letter_queue());
        queues.push(self.parking_queue());
        for queue in queues {
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
        }
        for exchange in [self.exchange(), self.dead_letter_exchange()] {
            channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }
}

fn trigger_binding(trigger: &Trigger) -> FieldTable {
    let filter: Vec<(&str, &str)> = trigger
        .filter
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    binding(&filter, &trigger.name)
}

/// Binding arguments: the filter's attributes, all of which must match, and the Trigger's name
/// (RabbitMQ ignores `x-` keys when matching).
fn binding(filter: &[(&str, &str)], trigger: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    for (name, value) in filter {
        arguments.insert(
            ShortString::from(*name),
            AMQPValue::LongString(LongString::from(*value)),
        );
    }
    arguments.insert("x-match".into(), AMQPValue::LongString("all".into()));
    arguments.insert(
        "x-knative-trigger".into(),
        AMQPValue::LongString(trigger.into()),
    );
    arguments
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_eventing_rabbitmq() {
        let topology = Topology::new("klambda", "local");
        assert_eq!(topology.exchange(), "b.klambda.klambda.local");
        assert_eq!(
            topology.dead_letter_exchange(),
            "b.klambda.klambda.dlx.local"
        );
        assert_eq!(topology.dead_letter_queue(), "b.klambda.klambda.dlq.local");
        assert_eq!(
            topology.trigger_queue("parser-created"),
            "klambda.parser-created.local"
        );
    }

    #[test]
    fn a_binding_matches_all_filter_attributes() {
        let arguments = binding(&[("type", "a.b")], "t");
        let inner = arguments.inner();
        assert_eq!(
            inner.get("x-match"),
            Some(&AMQPValue::LongString("all".into()))
        );
        assert_eq!(
            inner.get("type"),
            Some(&AMQPValue::LongString("a.b".into()))
        );
        assert_eq!(
            inner.get("x-knative-trigger"),
            Some(&AMQPValue::LongString("t".into()))
        );
    }

    #[test]
    fn queue_types_parse() {
        assert_eq!("classic".parse(), Ok(QueueType::Classic));
        assert!("lazy".parse::<QueueType>().is_err());
    }
}
