//! The embedded broker: routes every published event to the queue of each matching Trigger;
//! per-Trigger workers deliver with Knative's retry, backoff and timeout rules; replies are
//! published back in; failures end in the dead-letter store.
//!
//! **Invariant:** an event accepted by [`Broker::publish`] ends in exactly one of: delivered
//! (accepted, or replied and the reply published), or dead-lettered, for every Trigger it
//! matched, unless the process exits first. This broker is in memory; durability across
//! restarts is what the RabbitMQ broker adds.
//!
//! Besides the Triggers it starts with (the platform's own, from `eventing/`), Triggers come and
//! go while it runs ([`Broker::subscribe`], [`Broker::unsubscribe`]): users' function Triggers.
//! A removed or replaced Trigger's workers still deliver what was queued for it before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};

use cloudevents::{AttributesReader as _, Event};
use klambda_harness::metrics::Metrics;
use tokio::sync::{Mutex, Notify, mpsc};

use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::delivery::{Delivered, deliver};
use crate::subscriber::{Answer, Subscriber};
use crate::trigger::Trigger;

/// Why a broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Triggers name subscribers that were not registered.
    #[error("no subscriber registered for: {}", .0.join(", "))]
    UnknownSubscribers(Vec<String>),
}

/// How a [`Broker`] is wired besides its Triggers.
#[derive(Default)]
pub struct Options {
    /// Where dead letters are delivered too (the Broker's `deadLetterSink`).
    pub dead_letter_sink: Option<Arc<dyn Subscriber>>,
    /// Where delivery attempts are counted (`klambda_broker_delivery_attempts_total`); a
    /// registry of its own when `None`.
    pub metrics: Option<Arc<Metrics>>,
}

struct Route {
    trigger: Trigger,
    queue: mpsc::UnboundedSender<Event>,
}

struct Inner {
    routes: RwLock<Vec<Route>>,
    metrics: Arc<Metrics>,
    dead_letters: DeadLetters,
    /// Where dead letters are delivered too (the Broker's `deadLetterSink`), if anywhere.
    dead_letter_sink: Option<Arc<dyn Subscriber>>,
    /// Events enqueued and not yet finished (delivered or dead-lettered).
    pending: AtomicUsize,
    idle: Notify,
}

/// An in-process broker wired from Triggers.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl Broker {
    /// Starts one queue and `parallelism` workers per Trigger. Must run inside a Tokio runtime.
    /// Every Trigger's subscriber must be in `subscribers` (by Service name).
    pub fn start(
        triggers: Vec<Trigger>,
        subscribers: &HashMap<String, Arc<dyn Subscriber>>,
    ) -> Result<Self, StartError> {
        Self::start_with_dead_letter_sink(triggers, subscribers, None)
    }

    /// Like [`Broker::start`], and every dead letter is also delivered to `sink`, as Knative
    /// delivers them to the Broker's `deadLetterSink`. A sink that refuses one leaves it in
    /// [`Broker::dead_letters`]: never lost.
    pub fn start_with_dead_letter_sink(
        triggers: Vec<Trigger>,
        subscribers: &HashMap<String, Arc<dyn Subscriber>>,
        sink: Option<Arc<dyn Subscriber>>,
    ) -> Result<Self, StartError> {
        Self::start_with(
            triggers,
            subscribers,
            Options {
                dead_letter_sink: sink,
                metrics: None,
            },
        )
    }

    /// Like [`Broker::start`], with `options`.
    pub fn start_with(
        triggers: Vec<Trigger>,
        subscribers: &HashMap<String, Arc<dyn Subscriber>>,
        options: Options,
    ) -> Result<Self, StartError> {
        let sink = options.dead_letter_sink;
        let metrics = options
            .metrics
            .unwrap_or_else(|| Arc::new(Metrics::new("broker")));
        let mut missing: Vec<String> = triggers
            .iter()
            .filter(|t| !subscribers.contains_key(&t.subscriber))
            .map(|t| format!("{} (Trigger {})", t.subscriber, t.name))
            .collect();
        if !missing.is_empty() {
            missing.sort();
            return Err(StartError::UnknownSubscribers(missing));
        }
        let broker = Self {
            inner: Arc::new(Inner {
                routes: RwLock::new(Vec::new()),
                metrics,
                dead_letters: DeadLetters::default(),
                dead_letter_sink: sink,
                pending: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        };
        for trigger in triggers {
            let subscriber = Arc::clone(&subscribers[&trigger.subscriber]);
            broker.subscribe(trigger, subscriber);
        }
        Ok(broker)
    }

    /// Adds `trigger`, delivering to `subscriber`, with its own queue and `parallelism`
    /// workers; a Trigger of the same name is replaced (its workers deliver what was queued for
    /// it, then stop). Must run inside a Tokio runtime.
    pub fn subscribe(&self, trigger: Trigger, subscriber: Arc<dyn Subscriber>) {
        let (queue, receiver) = mpsc::unbounded_channel();
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..trigger.parallelism {
            tokio::spawn(worker(
                Arc::downgrade(&self.inner),
                trigger.clone(),
                Arc::clone(&subscriber),
                Arc::clone(&receiver),
                Arc::clone(&self.inner.metrics),
            ));
        }
        let mut routes = self.routes_mut();
        routes.retain(|route| route.trigger.name != trigger.name);
        routes.push(Route { trigger, queue });
    }

    /// Removes the Trigger named `name`: no event published from now on is queued for it
    /// (what was queued is still delivered). False when there was none.
    pub fn unsubscribe(&self, name: &str) -> bool {
        let mut routes = self.routes_mut();
        let before = routes.len();
        routes.retain(|route| route.trigger.name != name);
        routes.len() != before
    }

    /// The names of the Triggers routing now.
    pub fn triggers(&self) -> Vec<String> {
        self.inner
            .routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|route| route.trigger.name.clone())
            .collect()
    }

    fn routes_mut(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Route>> {
        self.inner
            .routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Accepts `event` and queues it for every matching Trigger; returns how many matched.
    pub fn publish(&self, event: Event) -> usize {
        publish(&self.inner, event)
    }

    /// The dead letters so far.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.inner.dead_letters.list()
    }

    /// Completes when nothing is queued or in flight (replies included).
    pub async fn idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.inner.pending.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl klambda_harness::publisher::Publisher for Broker {
    fn publish(
        &self,
        event: Event,
    ) -> klambda_harness::publisher::BoxFuture<
        '_,
        Result<(), klambda_harness::publisher::PublishError>,
    > {
        Broker::publish(self, event);
        Box::pin(async { Ok(()) })
    }

    fn ready(
        &self,
    ) -> klambda_harness::publisher::BoxFuture<
        '_,
        Result<(), klambda_harness::publisher::PublishError>,
    > {
        Box::pin(async { Ok(()) })
    }
}

fn publish(inner: &Inner, event: Event) -> usize {
    let mut matched = 0;
    let routes = inner
        .routes
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for route in routes.iter().filter(|r| r.trigger.matches(&event)) {
        inner.pending.fetch_add(1, Ordering::SeqCst);
        if route.queue.send(event.clone()).is_ok() {
            matched += 1;
        } else {
            finish(inner);
        }
    }
    tracing::debug!(event_id = %event.id(), event_type = %event.ty(), matched, "published");
    matched
}

fn finish(inner: &Inner) {
    if inner.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
        inner.idle.notify_waiters();
    }
}

async fn worker(
    inner: Weak<Inner>,
    trigger: Trigger,
    subscriber: Arc<dyn Subscriber>,
    receiver: Arc<Mutex<mpsc::UnboundedReceiver<Event>>>,
    metrics: Arc<Metrics>,
) {
    loop {
        // With parallelism 1 one worker holds the queue: FIFO, head-of-line blocking while a
        // delivery is retried, as on the RabbitMQ broker.
        let next = receiver.lock().await.recv().await;
        let Some(event) = next else { return };
        let outcome = deliver(
            &trigger.name,
            &trigger.delivery,
            subscriber.as_ref(),
            event,
            &metrics,
        )
        .await;
        let Some(inner) = inner.upgrade() else { return };
        match outcome {
            Delivered::Reply(reply) => {
                // The reply is published before the original counts as done, so `idle` never
                // sees a gap between them.
                publish(&inner, reply);
            }
            Delivered::Accepted => {}
            Delivered::DeadLetter(letter) => {
                tracing::warn!(trigger = %letter.trigger, attempts = letter.attempts, event_id = %letter.event.id(), "dead-lettered");
                if let Some(sink) = &inner.dead_letter_sink {
                    match sink.deliver(letter.event.clone()).await {
                        Answer::Reply(_) | Answer::Accepted => {}
                        Answer::Failed { status, .. } => {
                            tracing::error!(?status, sink = %sink.address(), "the dead-letter sink refused a dead letter; it stays in the broker's list");
                        }
                    }
                }
                inner.dead_letters.push(letter);
            }
        }
        finish(&inner);
    }
}
