//! Users' function Triggers on the platform's bus, as the local runner hands them over: one
//! Trigger per filter of `klambda.json` (named `fn-<function>-<index>`, as on Knative), delivering
//! to the function's serving revision with the function's delivery (else the Broker's); replies
//! go back on the bus as the function's own events.
//!
//! - In memory: a route on the running [`Broker`], added and removed as the function serves and
//!   goes.
//! - Over RabbitMQ: a durable queue per Trigger bound to the Broker's exchange with the filter
//!   (as eventing-rabbitmq lays a Trigger out) and a [`Dispatcher`] in this process; the queue is
//!   deleted with the function, so nothing waits where nothing will consume it. Changes are
//!   applied in order by one task, retried while RabbitMQ is unreachable.
//!
//! Each attempt of each delivery is recorded in the deliveries [`Journal`] (`klambda events`).
//!
//! After a restart the local runner hands over every serving function again, so the Triggers
//! come back (RabbitMQ kept what was published to their queues meanwhile).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use klambda_broker::amqp::Dispatcher;
use klambda_broker::journal::Journal;
use klambda_broker::subscriber::{Function, Lease, Locate};
use klambda_broker::{AmqpBroker, Broker, Delivery, trigger::Trigger};
use klambda_events::FunctionName;
use service_deployer::deployer::local::{LocalRunner, Subscribed, Subscriptions};
use tokio::sync::mpsc;

use crate::embedded::Bus;

/// One function Trigger: the route and the type its replies carry.
#[derive(Debug, Clone, PartialEq)]
struct Route {
    trigger: Trigger,
    reply_type: Option<String>,
    /// The function's invocation Trigger (`klambda invoke --async`): replies are dropped.
    invocations: bool,
}

/// What the runner asked for, in order.
enum Change {
    /// The function serves with these Triggers (none: it has no Triggers).
    Serve(FunctionName, Vec<Route>),
    /// The function was deleted.
    Remove(FunctionName),
}

enum Routes {
    Memory {
        broker: Broker,
        routed: Mutex<HashMap<FunctionName, Vec<Route>>>,
    },
    Amqp(mpsc::UnboundedSender<Change>),
}

/// The [`Subscriptions`] of `klambda up`: function Triggers on its bus.
pub struct FunctionTriggers {
    locate: Arc<ServingRevision>,
    /// The Broker's delivery: for functions that set none.
    delivery: Delivery,
    routes: Routes,
    journal: Arc<Journal>,
}

impl FunctionTriggers {
    /// Function Triggers on `bus`, delivering to the revisions `runner` serves. Must run inside
    /// a Tokio runtime (over RabbitMQ it starts the task that applies changes).
    /// Each attempt of each delivery is recorded in `journal`.
    pub fn new(
        bus: &Bus,
        runner: Weak<LocalRunner>,
        delivery: Delivery,
        journal: Arc<Journal>,
    ) -> Self {
        let locate = Arc::new(ServingRevision(runner));
        let routes = match bus {
            Bus::Embedded(broker) => Routes::Memory {
                broker: broker.clone(),
                routed: Mutex::default(),
            },
            Bus::Amqp { broker, .. } => {
                let (changes, receiver) = mpsc::unbounded_channel();
                tokio::spawn(apply_in_rabbitmq(
                    broker.clone(),
                    Arc::clone(&locate),
                    Arc::clone(&journal),
                    receiver,
                ));
                Routes::Amqp(changes)
            }
        };
        Self {
            locate,
            delivery,
            routes,
            journal,
        }
    }

    /// The routes `subscribed` asks for.
    fn routes(&self, function: &FunctionName, subscribed: &Subscribed) -> Vec<Route> {
        // The parser validated it; were it unreadable still, the Broker's applies (and says so).
        let delivery = match subscribed.delivery.as_ref().map(Delivery::from_function) {
            None => self.delivery.clone(),
            Some(Ok(delivery)) => delivery,
            Some(Err(reason)) => {
                tracing::error!(%function, %reason, "the function's delivery is unreadable; its Triggers use the Broker's");
                self.delivery.clone()
            }
        };
        let mut routes: Vec<Route> = subscribed
            .triggers
            .iter()
            .enumerate()
            .map(|(index, filter)| Route {
                trigger: Trigger {
                    name: klambda_events::spec::trigger_name(function, index),
                    filter: filter.attributes.clone(),
                    subscriber: format!("function {function}"),
                    delivery: delivery.clone(),
                    parallelism: filter
                        .parallelism
                        .and_then(|p| usize::try_from(p).ok())
                        .filter(|p| *p >= 1)
                        .unwrap_or(1),
                },
                reply_type: filter.reply_type.clone(),
                invocations: false,
            })
            .collect();
        // Every function takes asynchronous invocations addressed to it, in parallel as Lambda
        // runs them, with its delivery or Lambda's two retries.
        let mut invocation_delivery = delivery;
        if subscribed.delivery.is_none() {
            invocation_delivery.retry = klambda_events::spec::INVOCATION_RETRIES;
        }
        routes.push(Route {
            trigger: Trigger {
                name: klambda_events::spec::invocation_trigger_name(function),
                filter: [
                    (
                        "type".to_owned(),
                        klambda_events::external::INVOKE.to_owned(),
                    ),
                    (
                        klambda_events::external::INVOKE_FUNCTION_EXTENSION.to_owned(),
                        function.to_string(),
                    ),
                ]
                .into(),
                subscriber: format!("function {function}"),
                delivery: invocation_delivery,
                parallelism: klambda_events::spec::INVOCATION_PARALLELISM as usize,
            },
            reply_type: None,
            invocations: true,
        });
        routes
    }
}

/// The subscriber that delivers `route`'s events to `function`, recording in `journal`.
fn subscriber(
    function: &FunctionName,
    route: &Route,
    locate: &Arc<ServingRevision>,
    journal: &Arc<Journal>,
) -> Function {
    let locate = Arc::clone(locate) as Arc<dyn Locate>;
    let subscriber = if route.invocations {
        Function::invocations(function.clone(), locate)
    } else {
        Function::new(function.clone(), route.reply_type.clone(), locate)
    };
    subscriber.with_journal(Arc::clone(journal))
}

impl Subscriptions for FunctionTriggers {
    fn serve(&self, function: &FunctionName, subscribed: &Subscribed) {
        let wanted = self.routes(function, subscribed);
        match &self.routes {
            Routes::Amqp(changes) => {
                let _ = changes.send(Change::Serve(function.clone(), wanted));
            }
            Routes::Memory { broker, routed } => {
                let mut routed = routed.lock().unwrap_or_else(PoisonError::into_inner);
                let before = routed.remove(function).unwrap_or_default();
                for stale in before.iter().filter(|old| {
                    !wanted
                        .iter()
                        .any(|new| new.trigger.name == old.trigger.name)
                }) {
                    broker.unsubscribe(&stale.trigger.name);
                }
                let routing = broker.triggers();
                for route in &wanted {
                    // An unchanged Trigger keeps its queue (and its order); a changed one is
                    // replaced.
                    if before.contains(route) && routing.contains(&route.trigger.name) {
                        continue;
                    }
                    let subscriber = subscriber(function, route, &self.locate, &self.journal);
                    broker.subscribe(route.trigger.clone(), Arc::new(subscriber));
                }
                if !wanted.is_empty() {
                    routed.insert(function.clone(), wanted);
                }
            }
        }
    }

    fn remove(&self, function: &FunctionName) {
        self.journal.forget(function.as_str());
        match &self.routes {
            Routes::Amqp(changes) => {
                let _ = changes.send(Change::Remove(function.clone()));
            }
            Routes::Memory { broker, routed } => {
                let routed = routed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(function)
                    .unwrap_or_default();
                for route in routed {
                    broker.unsubscribe(&route.trigger.name);
                }
            }
        }
    }
}

/// The longest wait between two tries of a RabbitMQ change.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);

/// Applies the runner's changes to RabbitMQ, one at a time and in order; each is retried until
/// RabbitMQ takes it (the platform cannot route anything meanwhile anyway).
async fn apply_in_rabbitmq(
    broker: AmqpBroker,
    locate: Arc<ServingRevision>,
    journal: Arc<Journal>,
    mut changes: mpsc::UnboundedReceiver<Change>,
) {
    let mut routed: HashMap<FunctionName, Vec<(Route, Dispatcher)>> = HashMap::new();
    while let Some(change) = changes.recv().await {
        let (function, wanted) = match change {
            Change::Serve(function, wanted) => (function, wanted),
            Change::Remove(function) => (function, Vec::new()),
        };
        let mut before = routed.remove(&function).unwrap_or_default();
        let mut now = Vec::new();
        for route in wanted {
            let previous = before
                .iter()
                .position(|(old, _)| old.trigger.name == route.trigger.name)
                .map(|index| before.swap_remove(index));
            if let Some((old, dispatcher)) = previous {
                if old == route {
                    now.push((old, dispatcher));
                    continue;
                }
                // Changed: its consumer stops before the queue is rebound.
                drop(dispatcher);
                retried(&route.trigger.name, || {
                    broker.subscribe(&route.trigger, Some(&old.trigger))
                })
                .await;
            } else {
                retried(&route.trigger.name, || {
                    broker.subscribe(&route.trigger, None)
                })
                .await;
            }
            let subscriber = Arc::new(subscriber(&function, &route, &locate, &journal));
            let dispatcher = broker.dispatch(route.trigger.clone(), subscriber);
            now.push((route, dispatcher));
        }
        // What is no longer wanted goes, with its queue.
        for (stale, dispatcher) in before {
            drop(dispatcher);
            let name = &stale.trigger.name;
            let dropped = retried(name, || broker.unsubscribe(name)).await;
            if dropped > 0 {
                tracing::info!(trigger = %name, %function, dropped, "function Trigger removed with the events still queued for it");
            }
        }
        if !now.is_empty() {
            routed.insert(function, now);
        }
    }
}

/// Runs `change` until it succeeds, waiting longer between tries.
async fn retried<T, F, Fut>(trigger: &str, mut change: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, klambda_broker::amqp::AmqpError>>,
{
    let mut wait = Duration::from_millis(100);
    loop {
        match change().await {
            Ok(done) => return done,
            Err(error) => {
                tracing::warn!(%trigger, %error, retry_in = ?wait, "cannot change a function Trigger in RabbitMQ yet");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_RETRY_WAIT);
            }
        }
    }
}

/// Finds a function's serving revision in the local runner, at each delivery.
struct ServingRevision(Weak<LocalRunner>);

impl Locate for ServingRevision {
    fn serving(&self, function: &FunctionName) -> Option<Lease> {
        let (url, hold) = self.0.upgrade()?.serving(function)?;
        Some(Lease {
            url: url.parse().ok()?,
            hold: Box::new(hold),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(value: serde_json::Value) -> klambda_events::spec::TriggerFilter {
        serde_json::from_value(value).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn each_filter_is_a_trigger_with_its_parallelism_and_the_invocations_run_side_by_side() {
        let broker = Broker::start(Vec::new(), &HashMap::new()).unwrap_or_else(|e| panic!("{e}"));
        let triggers = FunctionTriggers::new(
            &Bus::Embedded(broker),
            Weak::new(),
            Delivery::default(),
            Arc::default(),
        );
        let function = FunctionName::new("pricer".to_owned()).unwrap_or_else(|e| panic!("{e}"));
        let subscribed = Subscribed {
            triggers: vec![
                filter(serde_json::json!({"attributes": {"type": "a"}})),
                filter(serde_json::json!({"attributes": {"type": "b"}, "parallelism": 8})),
            ],
            delivery: None,
        };
        let routes: Vec<(String, usize, u32)> = triggers
            .routes(&function, &subscribed)
            .into_iter()
            .map(|r| {
                (
                    r.trigger.name,
                    r.trigger.parallelism,
                    r.trigger.delivery.retry,
                )
            })
            .collect();
        let broker_retry = Delivery::default().retry;
        assert_eq!(
            routes,
            [
                ("fn-pricer-0".to_owned(), 1, broker_retry),
                ("fn-pricer-1".to_owned(), 8, broker_retry),
                ("fn-pricer-async".to_owned(), 10, 2),
            ]
        );
    }
}
