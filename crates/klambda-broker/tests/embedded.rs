//! The embedded broker: the delivery scenarios both brokers pass (`common::scenarios`), then
//! what only it does: HTTP subscribers, the repository's own Triggers loaded from `eventing/`,
//! and dead letters kept in its list when the sink refuses them.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use common::{Scripted, event, failed, quick, trigger};
use klambda_broker::delivery::BackoffPolicy;
use klambda_broker::{Answer, Broker, Http, Subscriber, trigger};
use klambda_test_support::repo;

/// The embedded broker in the shared scenarios: each Trigger's subscriber registered under
/// the Trigger's subscriber name.
struct Embedded(Broker);

impl common::scenarios::BrokerUnderTest for Embedded {
    async fn start(
        _test: &str,
        routes: &[(klambda_broker::Trigger, Scripted)],
        sink: &Scripted,
    ) -> Self {
        let named: Vec<(&str, &Scripted)> = routes
            .iter()
            .map(|(t, s)| (t.subscriber.as_str(), s))
            .collect();
        let triggers = routes.iter().map(|(t, _)| t.clone()).collect();
        let broker = Broker::start_with_dead_letter_sink(
            triggers,
            &subscribers(&named),
            Some(Arc::new(sink.clone())),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Self(broker)
    }
    async fn publish(&self, event: &cloudevents::Event) {
        self.0.publish(event.clone());
    }
    async fn stop(self, _routes: &[(klambda_broker::Trigger, Scripted)]) {
        self.0.idle().await;
    }
}

broker_scenarios!(Embedded);

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
