//! Knative's delivery contract, written once and run over both brokers (`embedded.rs` and
//! `amqp.rs` each instantiate it with [`broker_scenarios!`]): what a Trigger's subscriber sees
//! must not depend on which broker a user runs, so the same scenario checks both.
//!
//! Every scenario observes only what a user can: what the subscribers and the dead-letter sink
//! receive, waited for as conditions (never a fixed sleep before an assertion).

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use cloudevents::{AttributesReader as _, Event, EventBuilder as _, EventBuilderV10};
use klambda_broker::{Answer, Trigger};

use super::{Scripted, event, failed, quick, trigger};

/// A broker under test: started with Triggers, each delivering to its own subscriber, and a
/// dead-letter sink (the Broker's `deadLetterSink`).
#[allow(
    async_fn_in_trait,
    reason = "used only by these tests, on one runtime; no Send bound is needed"
)]
pub trait BrokerUnderTest: Sized {
    /// Starts a broker named after `test` with `routes`, dead letters going to `sink`.
    async fn start(test: &str, routes: &[(Trigger, Scripted)], sink: &Scripted) -> Self;
    /// Accepts `event` at the broker's ingress.
    async fn publish(&self, event: &Event);
    /// Stops delivering and removes what the broker declared.
    async fn stop(self, routes: &[(Trigger, Scripted)]);
}

/// How long a scenario waits for what must arrive.
const WAIT: Duration = Duration::from_secs(10);

fn code(letter: &Event) -> Option<String> {
    letter.extension("knativeerrorcode").map(|v| v.to_string())
}

fn from(id: &str, ty: &str, source: &str) -> Event {
    EventBuilderV10::new()
        .id(id)
        .source(source)
        .ty(ty)
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Exact-match filters on `type`, on `type` and `source` together, and an empty filter (every
/// event): each event reaches exactly the Triggers whose filter it matches, once.
pub async fn routes_each_event_to_exactly_its_triggers<B: BrokerUnderTest>() {
    let mut by_source = trigger("a-from-one", "t.a", "a-from-one", quick(0));
    by_source.filter.insert("source".into(), "/one".into());
    let everything = Trigger {
        filter: BTreeMap::new(),
        ..trigger("everything", "", "everything", quick(0))
    };
    let routes: Vec<(Trigger, Scripted)> = [
        trigger("to-a", "t.a", "to-a", quick(0)),
        trigger("to-b", "t.b", "to-b", quick(0)),
        by_source,
        everything,
    ]
    .into_iter()
    .map(|t| (t, Scripted::default()))
    .collect();
    let sink = Scripted::default();
    let broker = B::start("routing", &routes, &sink).await;
    broker.publish(&from("1", "t.a", "/one")).await;
    broker.publish(&from("2", "t.a", "/two")).await;
    broker.publish(&from("3", "t.b", "/one")).await;
    broker.publish(&from("4", "t.none", "/one")).await;
    let [(_, to_a), (_, to_b), (_, a_from_one), (_, all)] = &routes[..] else {
        unreachable!()
    };
    // The catch-all sees every event; the last one published ("4") is delivered after the
    // others were routed, so anything misrouted has been delivered too by the time it arrives
    // (one queue per Trigger, parallelism 1: in order).
    assert_eq!(all.wait_for(4, WAIT).await, 4);
    assert_eq!(to_a.wait_for(2, WAIT).await, 2);
    assert_eq!(to_b.wait_for(1, WAIT).await, 1);
    assert_eq!(a_from_one.wait_for(1, WAIT).await, 1);
    let mut a = to_a.ids();
    a.sort();
    assert_eq!(a, ["1", "2"]);
    assert_eq!(to_b.ids(), ["3"]);
    assert_eq!(a_from_one.ids(), ["1"]);
    assert!(sink.ids().is_empty(), "nothing was dead-lettered");
    broker.stop(&routes).await;
}

/// A subscriber's reply is published back to the broker and routed like any event.
pub async fn replies_are_published_back_and_routed_on<B: BrokerUnderTest>() {
    let routes = vec![
        (
            trigger("first", "t.first", "first", quick(0)),
            Scripted::answering(vec![Answer::Reply(event("reply-1", "t.second"))]),
        ),
        (
            trigger("second", "t.second", "second", quick(0)),
            Scripted::default(),
        ),
    ];
    let sink = Scripted::default();
    let broker = B::start("replies", &routes, &sink).await;
    broker.publish(&event("1", "t.first")).await;
    let second = &routes[1].1;
    assert_eq!(second.wait_for(1, WAIT).await, 1);
    assert_eq!(second.ids(), ["reply-1"]);
    broker.stop(&routes).await;
}

/// `retry: 3`, linear 40 ms: four attempts spaced 40, 80 and 120 ms, then the dead letter
/// carries Knative's error attributes (`knativeerrordest`, `knativeerrorcode`, and the
/// answer's body base64-encoded in `knativeerrordata`, capped at 1024 characters).
pub async fn retries_with_backoff_then_dead_letters_with_the_error_attributes<
    B: BrokerUnderTest,
>() {
    let body = "x".repeat(2000);
    let routes = vec![(
        trigger("failing", "t.fail", "failing", quick(3)),
        Scripted::answering(vec![failed(503, &body); 10]),
    )];
    let sink = Scripted::default();
    let broker = B::start("retries", &routes, &sink).await;
    broker.publish(&event("1", "t.fail")).await;
    assert_eq!(sink.wait_for(1, WAIT).await, 1);
    let times = routes[0].1.times();
    assert_eq!(times.len(), 4, "retry 3 = 4 attempts");
    for (n, pair) in times.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let expected = Duration::from_millis(40 * (n as u64 + 1));
        assert!(
            gap >= expected,
            "wait before retry {} was {gap:?}, expected ≥ {expected:?}",
            n + 1
        );
    }
    let letter = &sink.events()[0];
    let attribute = |name: &str| letter.extension(name).map(|v| v.to_string());
    assert_eq!(letter.id(), "1");
    assert_eq!(
        attribute("knativeerrordest").as_deref(),
        Some("test://scripted")
    );
    assert_eq!(code(letter).as_deref(), Some("503"));
    let data = attribute("knativeerrordata").unwrap_or_default();
    assert_eq!(data.len(), 1024, "knativeerrordata is capped at 1024");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(&data)
            .unwrap_or_default(),
        body.as_bytes()[..768]
    );
    broker.stop(&routes).await;
}

/// 400, 401, 403 and 413 are not retried (whatever `retry` says) and are dead-lettered at
/// once with their status: never dropped.
pub async fn non_retryable_answers_are_dead_lettered_at_once<B: BrokerUnderTest>() {
    let statuses = [400_u16, 401, 403, 413];
    let routes: Vec<(Trigger, Scripted)> = statuses
        .iter()
        .map(|status| {
            let name = format!("refuses-{status}");
            (
                trigger(&name, &format!("t.{status}"), &name, quick(5)),
                Scripted::answering(vec![failed(*status, "no")]),
            )
        })
        .collect();
    let sink = Scripted::default();
    let broker = B::start("refusing", &routes, &sink).await;
    for status in statuses {
        broker
            .publish(&event(&status.to_string(), &format!("t.{status}")))
            .await;
    }
    assert_eq!(sink.wait_for(4, WAIT).await, 4);
    for letter in sink.events() {
        assert_eq!(code(&letter).as_deref(), Some(letter.id()));
    }
    for ((_, subscriber), status) in routes.iter().zip(statuses) {
        assert_eq!(
            subscriber.ids(),
            [status.to_string()],
            "{status} must not be retried"
        );
    }
    broker.stop(&routes).await;
}

/// A subscriber slower than the Trigger's `timeout` is a retryable failure, dead-lettered as
/// 500 (Knative reports no answer that way).
pub async fn a_timeout_is_a_retryable_failure_reported_as_500<B: BrokerUnderTest>() {
    let mut delivery = quick(1);
    delivery.timeout = Some(Duration::from_millis(100));
    let routes = vec![(
        trigger("slow", "t.slow", "slow", delivery),
        Scripted {
            delay: Duration::from_secs(5),
            ..Scripted::default()
        },
    )];
    let sink = Scripted::default();
    let broker = B::start("timeout", &routes, &sink).await;
    broker.publish(&event("1", "t.slow")).await;
    assert_eq!(sink.wait_for(1, WAIT).await, 1);
    assert_eq!(routes[0].1.ids(), ["1", "1"], "retry 1 = 2 attempts");
    assert_eq!(code(&sink.events()[0]).as_deref(), Some("500"));
    broker.stop(&routes).await;
}

/// At parallelism 1 a Trigger delivers in order, even while its first event is retried.
pub async fn parallelism_one_keeps_order_even_while_retrying<B: BrokerUnderTest>() {
    let routes = vec![(
        trigger("ordered", "t.seq", "ordered", quick(2)),
        Scripted::answering(vec![failed(503, "x"), failed(503, "x")]),
    )];
    let sink = Scripted::default();
    let broker = B::start("ordering", &routes, &sink).await;
    let ids: Vec<String> = (0..50).map(|n| format!("{n:03}")).collect();
    for id in &ids {
        broker.publish(&event(id, "t.seq")).await;
    }
    let ordered = &routes[0].1;
    assert_eq!(ordered.wait_for(52, WAIT).await, 52);
    let mut expected = vec![ids[0].clone(), ids[0].clone()];
    expected.extend(ids.iter().cloned());
    assert_eq!(ordered.ids(), expected);
    broker.stop(&routes).await;
}

/// Above parallelism 1 deliveries overlap: eight 300 ms deliveries at parallelism 8 have all
/// started before the first one ends (one at a time would take 2.4 s).
pub async fn parallelism_above_one_delivers_concurrently<B: BrokerUnderTest>() {
    let mut wide = trigger("wide", "t.wide", "wide", quick(0));
    wide.parallelism = 8;
    let routes = vec![(
        wide,
        Scripted {
            delay: Duration::from_millis(300),
            ..Scripted::default()
        },
    )];
    let sink = Scripted::default();
    let broker = B::start("parallel", &routes, &sink).await;
    for n in 0..8 {
        broker.publish(&event(&n.to_string(), "t.wide")).await;
    }
    let slow = &routes[0].1;
    assert_eq!(slow.wait_for(8, WAIT).await, 8);
    let times = slow.times();
    let (first, last) = (times[0], times[7]);
    assert!(
        last - first < Duration::from_millis(280),
        "the eighth delivery started {:?} after the first",
        last - first
    );
    broker.stop(&routes).await;
}

/// One `#[tokio::test]` per scenario for the broker type `$broker`.
#[macro_export]
macro_rules! broker_scenarios {
    ($broker:ty) => {
        $crate::broker_scenarios!(
            $broker:
            routes_each_event_to_exactly_its_triggers,
            replies_are_published_back_and_routed_on,
            retries_with_backoff_then_dead_letters_with_the_error_attributes,
            non_retryable_answers_are_dead_lettered_at_once,
            a_timeout_is_a_retryable_failure_reported_as_500,
            parallelism_one_keeps_order_even_while_retrying,
            parallelism_above_one_delivers_concurrently,
        );
    };
    ($broker:ty: $($scenario:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $scenario() {
                common::scenarios::$scenario::<$broker>().await;
            }
        )+
    };
}
