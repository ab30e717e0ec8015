//! The RabbitMQ broker against the real RabbitMQ on this machine (127.0.0.1:5672, started by
//! `scripts/services.sh`): the delivery scenarios both brokers pass (`common::scenarios`),
//! then what only it does: a dead letter the sink refuses staying queued, a dead letter that
//! cannot be published staying unacked, redelivery after a dispatcher dies mid-delivery,
//! messages that are not CloudEvents being kept, and an unreachable RabbitMQ.
//!
//! Every test declares its own topology (a unique instance name) and deletes it at the end.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use cloudevents::AttributesReader as _;
use common::{Scripted, event, failed, quick, trigger};
use klambda_broker::amqp::Topology;
use klambda_broker::{AmqpBroker, Delivery, Subscriber, Trigger};
use klambda_test_support::rabbitmq::url;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

/// A broker with its own topology for one test, deleted at the test's end.
async fn broker(test: &str, triggers: &[Trigger]) -> AmqpBroker {
    let topology = Topology::new("klambda", &format!("test-{test}-{}", std::process::id()));
    match AmqpBroker::connect(&url(), topology, triggers).await {
        Ok(broker) => broker,
        Err(error) => panic!("{error}\n{}", klambda_test_support::rabbitmq::HOW_TO_START),
    }
}

/// The RabbitMQ broker in the shared scenarios: one dispatcher per Trigger and one for the
/// dead-letter queue, kept for the test's length.
struct Rabbit {
    broker: AmqpBroker,
    _dispatchers: Vec<klambda_broker::amqp::Dispatcher>,
}

impl common::scenarios::BrokerUnderTest for Rabbit {
    async fn start(test: &str, routes: &[(Trigger, Scripted)], sink: &Scripted) -> Self {
        let triggers: Vec<Trigger> = routes.iter().map(|(t, _)| t.clone()).collect();
        let broker = broker(test, &triggers).await;
        let mut dispatchers: Vec<_> = routes
            .iter()
            .map(|(t, s)| broker.dispatch(t.clone(), arc(s)))
            .collect();
        dispatchers.push(broker.dispatch_dead_letters(arc(sink), quick(0)));
        Self {
            broker,
            _dispatchers: dispatchers,
        }
    }
    async fn publish(&self, event: &cloudevents::Event) {
        self.broker
            .publish(event)
            .await
            .unwrap_or_else(|e| panic!("publishing {}: {e}", event.id()));
    }
    async fn stop(self, routes: &[(Trigger, Scripted)]) {
        let triggers: Vec<Trigger> = routes.iter().map(|(t, _)| t.clone()).collect();
        self.broker
            .delete(&triggers)
            .await
            .unwrap_or_else(|e| panic!("deleting the test's topology: {e}"));
    }
}

broker_scenarios!(Rabbit);

fn wait() -> Duration {
    Duration::from_secs(10)
}

fn arc(s: &Scripted) -> Arc<dyn Subscriber> {
    Arc::new(s.clone())
}

#[tokio::test]
async fn a_dead_letter_the_sink_refuses_stays_queued_until_it_accepts() -> Result<()> {
    let triggers = vec![trigger("refused", "t.bad", "x", quick(0))];
    let broker = broker("sink-down", &triggers).await;
    let refusing = Scripted::answering(vec![failed(422, "no")]);
    // The sink is down for three attempts (one delivery with retry 1, then one more).
    let sink = Scripted::answering(vec![failed(503, "down"); 3]);
    let _d = broker.dispatch(triggers[0].clone(), arc(&refusing));
    let _dead = broker.dispatch_dead_letters(arc(&sink), quick(1));
    broker.publish(&event("1", "t.bad")).await?;
    assert_eq!(sink.wait_for(4, wait()).await, 4);
    assert!(sink.ids().iter().all(|id| id == "1"));
    broker.delete(&triggers).await?;
    Ok(())
}

#[tokio::test]
async fn a_delivery_cut_off_by_a_dying_dispatcher_is_redelivered() -> Result<()> {
    let triggers = vec![trigger("slow", "t.slow", "x", Delivery::default())];
    let broker = broker("redelivery", &triggers).await;
    // The first dispatcher takes the event and never answers: the process "dies" mid-delivery.
    let stuck = Scripted {
        delay: Duration::from_secs(3600),
        ..Scripted::default()
    };
    let dispatcher = broker.dispatch(triggers[0].clone(), arc(&stuck));
    broker.publish(&event("1", "t.slow")).await?;
    assert_eq!(stuck.wait_for(1, wait()).await, 1);
    drop(dispatcher);
    broker.close().await;
    // Another instance of the stage picks it up.
    let survivor = Scripted::default();
    let _d = broker.dispatch(triggers[0].clone(), arc(&survivor));
    assert_eq!(survivor.wait_for(1, wait()).await, 1);
    assert_eq!(survivor.ids(), ["1"]);
    broker.delete(&triggers).await?;
    Ok(())
}

#[tokio::test]
async fn a_message_that_is_not_a_cloudevent_is_kept_not_lost() -> Result<()> {
    let triggers = vec![trigger("garbage", "t.garbage", "x", quick(0))];
    let broker = broker("garbage", &triggers).await;
    let subscriber = Scripted::default();
    let sink = Scripted::default();
    let _d = broker.dispatch(triggers[0].clone(), arc(&subscriber));
    let _dead = broker.dispatch_dead_letters(arc(&sink), quick(0));
    // A producer publishing straight to the exchange with a matching header and no id.
    let connection = Connection::connect(&url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let mut headers = FieldTable::default();
    headers.insert("type".into(), AMQPValue::LongString("t.garbage".into()));
    channel
        .basic_publish(
            ShortString::from(broker.topology().exchange()),
            ShortString::from(""),
            BasicPublishOptions::default(),
            b"not json",
            BasicProperties::default().with_headers(headers),
        )
        .await?
        .await?;
    let parked = broker.topology().parking_queue();
    let mut count = 0;
    for _ in 0..200 {
        count = channel
            .queue_declare(
                parked.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .context("the parking queue exists")?
            .message_count();
        if count > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(count, 1, "the message is parked");
    assert!(subscriber.ids().is_empty() && sink.ids().is_empty());
    broker.delete(&triggers).await?;
    Ok(())
}

#[tokio::test]
async fn an_unreachable_rabbitmq_is_a_clear_error() -> Result<()> {
    let topology = Topology::new("klambda", "unreachable");
    let port = klambda_test_support::process::free_port()?;
    let error = AmqpBroker::connect(
        &format!("amqp://guest:secret@127.0.0.1:{port}/%2f"),
        topology,
        &[],
    )
    .await
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(error.contains("cannot connect to RabbitMQ"), "{error}");
    assert!(
        !error.contains("secret"),
        "the password is not shown: {error}"
    );
    Ok(())
}

#[tokio::test]
async fn a_dead_letter_that_cannot_be_published_is_not_acked() -> Result<()> {
    let triggers = vec![trigger("no-dlx", "t.bad", "x", quick(0))];
    let broker = broker("no-dlx", &triggers).await;
    // The dead-letter exchange disappears: publishing a dead letter fails.
    let connection = Connection::connect(&url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .exchange_delete(
            broker.topology().dead_letter_exchange().into(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await?;
    let refusing = Scripted::answering(vec![failed(400, "bad input"); 1000]);
    let _d = broker.dispatch(triggers[0].clone(), arc(&refusing));
    broker.publish(&event("1", "t.bad")).await?;
    // Refused, dead-letter publish failed, handed back, delivered again: never acked and gone.
    assert!(refusing.wait_for(2, wait()).await >= 2);
    // Once the exchange is back (the topology declared again), the letter gets through.
    let sink = Scripted::default();
    let again = AmqpBroker::connect(&url(), broker.topology().clone(), &triggers).await?;
    let _dead = again.dispatch_dead_letters(arc(&sink), quick(0));
    assert!(sink.wait_for(1, wait()).await >= 1);
    assert_eq!(sink.ids()[0], "1");
    broker.delete(&triggers).await?;
    Ok(())
}
