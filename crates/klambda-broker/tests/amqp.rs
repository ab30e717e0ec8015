//! The RabbitMQ broker against the real RabbitMQ on this machine (127.0.0.1:5672, started by
//! `scripts/services.sh`): routing by filter, reply chaining, retries and backoff, dead-letter
//! attributes, non-retryable 4xx, a dead letter that cannot be published staying unacked,
//! redelivery after a dispatcher dies mid-delivery, ordering at
//! parallelism 1, concurrency above it, and messages that are not CloudEvents being kept.
//!
//! Every test declares its own topology (a unique instance name) and deletes it at the end.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use base64::Engine as _;
use cloudevents::{AttributesReader as _, EventBuilder as _, EventBuilderV10};
use common::{Scripted, event, failed, quick, trigger};
use klambda_broker::amqp::Topology;
use klambda_broker::{AmqpBroker, Answer, Delivery, Subscriber, Trigger};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

/// The RabbitMQ the tests use: `$KLAMBDA_TEST_AMQP_URL`, else the local one.
fn url() -> String {
    std::env::var("KLAMBDA_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A broker with its own topology for one test.
async fn broker(test: &str, triggers: &[Trigger]) -> AmqpBroker {
    let topology = Topology::new("klambda", &format!("test-{test}-{}", std::process::id()));
    match AmqpBroker::connect(&url(), topology, triggers).await {
        Ok(broker) => broker,
        Err(error) => panic!(
            "{error}\nThese tests need RabbitMQ on 127.0.0.1:5672 (guest/guest): run scripts/services.sh, or set KLAMBDA_TEST_AMQP_URL"
        ),
    }
}

fn wait() -> Duration {
    Duration::from_secs(10)
}

fn arc(s: &Scripted) -> Arc<dyn Subscriber> {
    Arc::new(s.clone())
}

#[tokio::test]
async fn routes_each_event_to_exactly_its_triggers() -> Result<()> {
    let mut by_source = trigger("a-from-one", "t.a", "x", quick(0));
    by_source.filter.insert("source".into(), "/one".into());
    let everything = Trigger {
        filter: BTreeMap::new(),
        ..trigger("everything", "", "x", quick(0))
    };
    let triggers = vec![
        trigger("to-a", "t.a", "x", quick(0)),
        trigger("to-b", "t.b", "x", quick(0)),
        by_source,
        everything,
    ];
    let broker = broker("routing", &triggers).await;
    let subscribers: Vec<Scripted> = triggers.iter().map(|_| Scripted::default()).collect();
    let _dispatchers: Vec<_> = triggers
        .iter()
        .zip(&subscribers)
        .map(|(t, s)| broker.dispatch(t.clone(), arc(s)))
        .collect();
    let from = |id: &str, ty: &str, source: &str| {
        EventBuilderV10::new()
            .id(id)
            .source(source)
            .ty(ty)
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    broker.publish(&from("1", "t.a", "/one")).await?;
    broker.publish(&from("2", "t.a", "/two")).await?;
    broker.publish(&from("3", "t.b", "/one")).await?;
    broker.publish(&from("4", "t.none", "/one")).await?;
    let [to_a, to_b, a_from_one, all] = &subscribers[..] else {
        unreachable!()
    };
    assert_eq!(all.wait_for(4, wait()).await, 4);
    to_a.wait_for(2, wait()).await;
    // Anything misrouted would have arrived by now, right behind what was routed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut a = to_a.ids();
    a.sort();
    assert_eq!(a, ["1", "2"]);
    assert_eq!(to_b.ids(), ["3"]);
    assert_eq!(a_from_one.ids(), ["1"]);
    broker.delete(&triggers).await?;
    Ok(())
}

#[tokio::test]
async fn replies_are_published_back_and_routed_on() -> Result<()> {
    let triggers = vec![
        trigger("first", "t.first", "x", quick(0)),
        trigger("second", "t.second", "x", quick(0)),
    ];
    let broker = broker("replies", &triggers).await;
    let first = Scripted::answering(vec![Answer::Reply(event("reply-1", "t.second"))]);
    let second = Scripted::default();
    let _d1 = broker.dispatch(triggers[0].clone(), arc(&first));
    let _d2 = broker.dispatch(triggers[1].clone(), arc(&second));
    broker.publish(&event("1", "t.first")).await?;
    assert_eq!(second.wait_for(1, wait()).await, 1);
    assert_eq!(second.ids(), ["reply-1"]);
    broker.delete(&triggers).await?;
    Ok(())
}

#[tokio::test]
async fn retries_with_backoff_then_dead_letters_with_the_error_attributes() -> Result<()> {
    let triggers = vec![trigger("failing", "t.fail", "x", quick(3))];
    let broker = broker("retries", &triggers).await;
    let failing = Scripted::answering(vec![failed(503, "busy"); 10]);
    let sink = Scripted::default();
    let _d = broker.dispatch(triggers[0].clone(), arc(&failing));
    let _dead = broker.dispatch_dead_letters(arc(&sink), quick(0));
    broker.publish(&event("1", "t.fail")).await?;
    assert_eq!(sink.wait_for(1, wait()).await, 1);
    // retry 3 → 4 attempts, linear 40 ms: waits of 40, 80 and 120 ms.
    let times = failing.times();
    assert_eq!(times.len(), 4);
    for (n, pair) in times.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let expected = Duration::from_millis(40 * (n as u64 + 1));
        assert!(
            gap >= expected,
            "retry {}: waited {gap:?}, expected ≥ {expected:?}",
            n + 1
        );
    }
    let letter = &sink.events()[0];
    let attribute = |name: &str| letter.extension(name).map(|v| v.to_string());
    assert_eq!(attribute("knativeerrorcode").as_deref(), Some("503"));
    assert_eq!(
        attribute("knativeerrordest").as_deref(),
        Some("test://scripted")
    );
    assert_eq!(
        attribute("knativeerrordata"),
        Some(base64::engine::general_purpose::STANDARD.encode("busy"))
    );
    assert_eq!(letter.id(), "1");
    broker.delete(&triggers).await?;
    Ok(())
}

#[tokio::test]
async fn non_retryable_answers_are_dead_lettered_at_once() -> Result<()> {
    let triggers = vec![trigger("refusing", "t.bad", "x", quick(5))];
    let broker = broker("refusing", &triggers).await;
    let refusing = Scripted::answering(vec![failed(400, "bad input")]);
    let sink = Scripted::default();
    let _d = broker.dispatch(triggers[0].clone(), arc(&refusing));
    let _dead = broker.dispatch_dead_letters(arc(&sink), quick(0));
    broker.publish(&event("1", "t.bad")).await?;
    assert_eq!(sink.wait_for(1, wait()).await, 1);
    assert_eq!(refusing.ids(), ["1"], "a 400 is not retried");
    assert_eq!(
        sink.events()[0]
            .extension("knativeerrorcode")
            .map(|v| v.to_string())
            .as_deref(),
        Some("400")
    );
    broker.delete(&triggers).await?;
    Ok(())
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
async fn parallelism_one_keeps_order_even_while_retrying() -> Result<()> {
    let triggers = vec![trigger("ordered", "t.seq", "x", quick(2))];
    let broker = broker("ordering", &triggers).await;
    // The first delivery fails twice: later events wait behind it.
    let ordered = Scripted::answering(vec![failed(503, "x"), failed(503, "x")]);
    let _d = broker.dispatch(triggers[0].clone(), arc(&ordered));
    let ids: Vec<String> = (0..100).map(|n| format!("{n:03}")).collect();
    for id in &ids {
        broker.publish(&event(id, "t.seq")).await?;
    }
    assert_eq!(ordered.wait_for(102, wait()).await, 102);
    let mut seen = ordered.ids();
    seen.dedup();
    assert_eq!(seen, ids);
    broker.delete(&triggers).await?;
    Ok(())
}

#[tokio::test]
async fn parallelism_above_one_delivers_concurrently() -> Result<()> {
    let mut wide = trigger("wide", "t.wide", "x", quick(0));
    wide.parallelism = 8;
    let triggers = vec![wide];
    let broker = broker("parallel", &triggers).await;
    let slow = Scripted {
        delay: Duration::from_millis(300),
        ..Scripted::default()
    };
    let _d = broker.dispatch(triggers[0].clone(), arc(&slow));
    for n in 0..8 {
        broker.publish(&event(&n.to_string(), "t.wide")).await?;
    }
    // Eight deliveries of 300 ms each, at most one at a time, would take 2.4 s; at parallelism
    // 8 all eight have started within the first delivery's 300 ms.
    assert_eq!(slow.wait_for(8, Duration::from_millis(280)).await, 8);
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
