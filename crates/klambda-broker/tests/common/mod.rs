//! Helpers shared by the broker tests (embedded and RabbitMQ): events, Triggers, a scripted
//! subscriber that records what it receives, and the delivery scenarios both brokers pass
//! ([`scenarios`]).

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test file uses part of the helpers"
)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudevents::{AttributesReader as _, Event, EventBuilder as _, EventBuilderV10};
use klambda_broker::delivery::BackoffPolicy;
use klambda_broker::subscriber::BoxFuture;
use klambda_broker::{Answer, Delivery, Subscriber, Trigger};

pub mod scenarios;

pub fn event(id: &str, ty: &str) -> Event {
    EventBuilderV10::new()
        .id(id)
        .source("/tests")
        .ty(ty)
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

pub fn trigger(name: &str, ty: &str, subscriber: &str, delivery: Delivery) -> Trigger {
    Trigger {
        name: name.into(),
        filter: BTreeMap::from([("type".to_owned(), ty.to_owned())]),
        subscriber: subscriber.into(),
        delivery,
        parallelism: 1,
    }
}

pub fn quick(retry: u32) -> Delivery {
    Delivery {
        retry,
        backoff_policy: BackoffPolicy::Linear,
        backoff_delay: Duration::from_millis(40),
        timeout: Some(Duration::from_millis(300)),
    }
}

/// Records what it receives; answers from a script (then `Accepted` forever).
#[derive(Clone, Default)]
pub struct Scripted {
    pub received: Arc<Mutex<Vec<(Instant, Event)>>>,
    pub script: Arc<Mutex<Vec<Answer>>>,
    pub delay: Duration,
}

impl Scripted {
    pub fn answering(answers: Vec<Answer>) -> Self {
        Self {
            script: Arc::new(Mutex::new(answers)),
            ..Self::default()
        }
    }
    pub fn ids(&self) -> Vec<String> {
        self.received
            .lock()
            .map(|r| r.iter().map(|(_, e)| e.id().to_owned()).collect())
            .unwrap_or_default()
    }
    pub fn times(&self) -> Vec<Instant> {
        self.received
            .lock()
            .map(|r| r.iter().map(|(t, _)| *t).collect())
            .unwrap_or_default()
    }
}

impl Subscriber for Scripted {
    fn address(&self) -> String {
        "test://scripted".into()
    }
    fn deliver(&self, event: Event) -> BoxFuture<'_, Answer> {
        Box::pin(async move {
            if let Ok(mut received) = self.received.lock() {
                received.push((Instant::now(), event));
            }
            tokio::time::sleep(self.delay).await;
            let next = self
                .script
                .lock()
                .ok()
                .and_then(|mut s| (!s.is_empty()).then(|| s.remove(0)));
            next.unwrap_or(Answer::Accepted)
        })
    }
}

pub fn failed(status: u16, body: &str) -> Answer {
    Answer::Failed {
        status: Some(status),
        body: Bytes::from(body.to_owned()),
    }
}

impl Scripted {
    /// Waits until `count` events arrived (or `limit` passed); returns how many did.
    pub async fn wait_for(&self, count: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            let seen = self.received.lock().map(|r| r.len()).unwrap_or_default();
            if seen >= count || Instant::now() >= deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The events received so far.
    pub fn events(&self) -> Vec<Event> {
        self.received
            .lock()
            .map(|r| r.iter().map(|(_, e)| e.clone()).collect())
            .unwrap_or_default()
    }
}
