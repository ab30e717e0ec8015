//! The embedded broker against Knative's delivery contract: routing by exact-match filters,
//! reply chaining, retry counts and backoff spacing, dead-letter attributes, non-retryable 4xx,
//! timeouts, HTTP subscribers, ordering at parallelism 1, and the repository's own Triggers.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use base64::Engine as _;
use cloudevents::AttributesReader as _;
use common::{Scripted, event, failed, quick, trigger};
use klambda_broker::delivery::BackoffPolicy;
use klambda_broker::{Answer, Broker, Http, Subscriber, trigger};
use klambda_test_support::repo;

fn subscribers(list: &[(&str, &Scripted)]) -> HashMap<String, Arc<dyn Subscriber>> {
    list.iter()
        .map(|(name, s)| {
            (
                (*name).to_owned(),
                Arc::new((*s).clone()) as Arc<dyn Subscriber>,
            )
        })
        .collect()
}

#[tokio::test]
async fn routes_each_event_to_exactly_its_triggers() -> Result<()> {
    let (a, b) = (Scripted::default(), Scripted::default());
    let broker = Broker::start(
        vec![
            trigger("to-a", "t.a", "a", quick(0)),
            trigger("to-b", "t.b", "b", quick(0)),
        ],
        &subscribers(&[("a", &a), ("b", &b)]),
    )?;
    assert_eq!(broker.publish(event("1", "t.a")), 1);
    assert_eq!(broker.publish(event("2", "t.b")), 1);
    assert_eq!(broker.publish(event("3", "t.none")), 0);
    broker.idle().await;
    assert_eq!(a.ids(), ["1"]);
    assert_eq!(b.ids(), ["2"]);
    Ok(())
}

#[tokio::test]
async fn replies_are_published_back_and_routed_on() -> Result<()> {
    let first = Scripted::answering(vec![Answer::Reply(event("reply-1", "t.second"))]);
    let second = Scripted::default();
    let broker = Broker::start(
        vec![
            trigger("one", "t.first", "first", quick(0)),
            trigger("two", "t.second", "second", quick(0)),
        ],
        &subscribers(&[("first", &first), ("second", &second)]),
    )?;
    broker.publish(event("1", "t.first"));
    broker.idle().await;
    assert_eq!(second.ids(), ["reply-1"]);
    Ok(())
}

#[tokio::test]
async fn retries_with_backoff_then_dead_letters_with_the_error_attributes() -> Result<()> {
    let body = "x".repeat(2000);
    let flaky = Scripted::answering((0..10).map(|_| failed(503, &body)).collect());
    let broker = Broker::start(
        vec![trigger("flaky", "t.f", "f", quick(3))],
        &subscribers(&[("f", &flaky)]),
    )?;
    broker.publish(event("1", "t.f"));
    broker.idle().await;

    let times = flaky.times();
    assert_eq!(times.len(), 4, "retry 3 = 4 attempts");
    for (n, pair) in times.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let expected = Duration::from_millis(40 * (n as u64 + 1));
        assert!(
            gap >= expected,
            "wait before retry {} was {gap:?}, expected ≥ {expected:?}",
            n + 1
        );
        assert!(
            gap < expected + Duration::from_millis(400),
            "wait before retry {} was {gap:?}",
            n + 1
        );
    }
    let letters = broker.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].trigger, "flaky");
    assert_eq!(letters[0].attempts, 4);
    let attr = |name: &str| {
        letters[0]
            .event
            .extension(name)
            .map(|v| v.to_string())
            .unwrap_or_default()
    };
    assert_eq!(attr("knativeerrordest"), "test://scripted");
    assert_eq!(attr("knativeerrorcode"), "503");
    let data = attr("knativeerrordata");
    assert_eq!(
        data.len(),
        1024,
        "knativeerrordata is capped at 1024 characters"
    );
    assert_eq!(
        base64::engine::general_purpose::STANDARD.decode(&data)?,
        body.as_bytes()[..768]
    );
    assert_eq!(letters[0].event.id(), "1");
    Ok(())
}

#[tokio::test]
async fn non_retryable_answers_are_dead_lettered_at_once() -> Result<()> {
    for status in [400, 401, 403, 413] {
        let refusing = Scripted::answering(vec![failed(status, "no")]);
        let broker = Broker::start(
            vec![trigger("r", "t.r", "r", quick(5))],
            &subscribers(&[("r", &refusing)]),
        )?;
        broker.publish(event("1", "t.r"));
        broker.idle().await;
        assert_eq!(refusing.ids().len(), 1, "{status} must not be retried");
        let letters = broker.dead_letters();
        assert_eq!(
            letters.len(),
            1,
            "{status} must be dead-lettered, never dropped"
        );
        assert_eq!(
            letters[0]
                .event
                .extension("knativeerrorcode")
                .map(|v| v.to_string()),
            Some(status.to_string())
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_timeout_is_a_retryable_failure_reported_as_500() -> Result<()> {
    let slow = Scripted {
        delay: Duration::from_secs(5),
        ..Scripted::default()
    };
    let mut delivery = quick(1);
    delivery.timeout = Some(Duration::from_millis(100));
    let broker = Broker::start(
        vec![trigger("slow", "t.s", "s", delivery)],
        &subscribers(&[("s", &slow)]),
    )?;
    broker.publish(event("1", "t.s"));
    broker.idle().await;
    assert_eq!(slow.ids().len(), 2);
    let letters = broker.dead_letters();
    assert_eq!(
        letters[0]
            .event
            .extension("knativeerrorcode")
            .map(|v| v.to_string()),
        Some("500".into())
    );
    Ok(())
}

#[tokio::test]
async fn parallelism_one_keeps_order_even_while_retrying() -> Result<()> {
    // The first event fails twice before it is accepted; the others must wait behind it.
    let ordered = Scripted::answering(vec![failed(500, ""), failed(500, "")]);
    let broker = Broker::start(
        vec![trigger("fifo", "t.o", "o", quick(3))],
        &subscribers(&[("o", &ordered)]),
    )?;
    let ids: Vec<String> = (0..20).map(|i| format!("e{i:02}")).collect();
    for id in &ids {
        broker.publish(event(id, "t.o"));
    }
    broker.idle().await;
    let mut expected = vec![ids[0].clone(), ids[0].clone()];
    expected.extend(ids.iter().cloned());
    assert_eq!(ordered.ids(), expected);
    Ok(())
}

#[tokio::test]
async fn delivers_to_http_subscribers() -> Result<()> {
    // A real HTTP CloudEvents endpoint: replies with an event of type t.next.
    use axum::routing::post;
    let app = axum::Router::new()
        .route(
            "/ok",
            post(|| async {
                (
                    [
                        ("ce-specversion", "1.0"),
                        ("ce-id", "r1"),
                        ("ce-source", "/http"),
                        ("ce-type", "t.next"),
                    ],
                    "",
                )
            }),
        )
        .route(
            "/down",
            post(|| async { (http::StatusCode::SERVICE_UNAVAILABLE, "busy") }),
        );
    let server = klambda_test_support::http::TestServer::start(app).await?;
    let next = Scripted::default();
    let mut subs = subscribers(&[("next", &next)]);
    subs.insert(
        "ok".into(),
        Arc::new(Http::new(url::Url::parse(&server.url("/ok"))?)),
    );
    subs.insert(
        "down".into(),
        Arc::new(Http::new(url::Url::parse(&server.url("/down"))?)),
    );
    let broker = Broker::start(
        vec![
            trigger("ok", "t.in", "ok", quick(0)),
            trigger("down", "t.in", "down", quick(1)),
            trigger("next", "t.next", "next", quick(0)),
        ],
        &subs,
    )?;
    assert_eq!(broker.publish(event("1", "t.in")), 2);
    broker.idle().await;
    assert_eq!(next.ids(), ["r1"]);
    let letters = broker.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0]
            .event
            .extension("knativeerrordest")
            .map(|v| v.to_string()),
        Some(server.url("/down"))
    );
    Ok(())
}

#[test]
fn loads_the_repository_choreography() -> Result<()> {
    let triggers = trigger::load(&repo::root().join("eventing"), "klambda")?;
    // Nine for the catalogue's types, four for the cluster's ApiServerSource events (added and
    // updated Jobs and Services).
    assert_eq!(triggers.len(), 13);
    let jobs = triggers
        .iter()
        .find(|t| t.name == "job-launcher-build-jobs")
        .expect("build Job trigger");
    assert_eq!(jobs.subscriber, "job-launcher");
    assert_eq!(
        jobs.filter.get("klambdakind").map(String::as_str),
        Some("build-job")
    );
    let parser = triggers
        .iter()
        .find(|t| t.name == "parser-function-created")
        .expect("parser trigger");
    assert_eq!(parser.subscriber, "parser");
    assert_eq!(parser.parallelism, 10);
    // The Broker's delivery applies: retry 5, exponential, PT0.5S.
    assert_eq!(parser.delivery.retry, 5);
    assert_eq!(parser.delivery.backoff_policy, BackoffPolicy::Exponential);
    assert_eq!(parser.delivery.backoff_delay, Duration::from_millis(500));
    let all = triggers
        .iter()
        .find(|t| t.name == "status-reporter-all")
        .expect("catch-all");
    assert!(all.filter.is_empty());
    assert!(all.matches(&event("x", "anything.at.all")));
    Ok(())
}

#[test]
fn refuses_triggers_the_rabbitmq_broker_would_misread() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("klambda-broker-{}", std::process::id()));
    let base = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\nspec:\n  broker: b\n  subscriber:\n    ref:\n      name: s\n";
    for (case, extra) in [
        ("filters", "  filters:\n    - exact:\n        type: x\n"),
        (
            "empty value",
            "  filter:\n    attributes:\n      type: \"\"\n",
        ),
        ("bad parallelism", ""),
    ] {
        std::fs::create_dir_all(&dir)?;
        let mut text = format!("{base}{extra}");
        if case == "bad parallelism" {
            text = text.replace(
                "  name: t\n",
                "  name: t\n  annotations:\n    rabbitmq.eventing.knative.dev/parallelism: \"0\"\n",
            );
        }
        std::fs::write(dir.join("t.yaml"), text)?;
        let result = trigger::load(&dir, "b");
        assert!(result.is_err(), "{case} must be refused");
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn refuses_to_start_with_unknown_subscribers() {
    let result = Broker::start(vec![trigger("t", "x", "nobody", quick(0))], &HashMap::new());
    assert!(
        matches!(result, Err(klambda_broker::StartError::UnknownSubscribers(ref names)) if names[0].contains("nobody"))
    );
}

#[tokio::test]
async fn dead_letters_go_to_the_sink_and_stay_listed_when_it_refuses() -> Result<()> {
    for (sink_answer, label) in [
        (Answer::Accepted, "accepting"),
        (failed(503, "down"), "refusing"),
    ] {
        let refusing = Scripted::answering(vec![failed(400, "no")]);
        let sink = Scripted::answering(vec![sink_answer]);
        let broker = Broker::start_with_dead_letter_sink(
            vec![trigger("r", "t.r", "r", quick(0))],
            &subscribers(&[("r", &refusing)]),
            Some(Arc::new(sink.clone())),
        )?;
        broker.publish(event("1", "t.r"));
        broker.idle().await;
        assert_eq!(sink.ids(), ["1"], "{label} sink");
        let received = sink
            .received
            .lock()
            .map(|r| r[0].1.clone())
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        assert_eq!(
            received
                .extension("knativeerrorcode")
                .map(|v| v.to_string()),
            Some("400".into())
        );
        assert_eq!(
            broker.dead_letters().len(),
            1,
            "{label} sink: still listed, never lost"
        );
    }
    Ok(())
}
