//! Per-Trigger consumers: each takes deliveries from its queue (manual ack, prefetch 100 or
//! the parallelism if larger), runs up to `parallelism` deliveries at once (1 keeps the queue's
//! order, with head-of-line blocking while one is retried, as on the cluster) and settles each
//! message only once its outcome is safe in RabbitMQ.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cloudevents::AttributesReader as _;
use futures_core::Stream as _;
use lapin::message::Delivery as Message;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Acker, Channel};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::{AmqpBroker, AmqpError, OPERATION_DEADLINE, message, within};
use crate::delivery::{Delivered, Delivery, deliver};
use crate::subscriber::Subscriber;
use crate::trigger::Trigger;

/// eventing-rabbitmq's prefetch: messages held by one consumer before it acks.
const PREFETCH: u16 = 100;
/// The first wait before re-opening a broken connection; doubled up to [`MAX_RECONNECT`].
const FIRST_RECONNECT: Duration = Duration::from_millis(100);
const MAX_RECONNECT: Duration = Duration::from_secs(5);
/// How often a quiet consumer checks that its channel is still open and that RabbitMQ is
/// feeding it (no messages ready in its queue while it waits).
const LIVENESS_CHECK: Duration = Duration::from_secs(5);
/// The wait before a message whose outcome could not be made safe is handed back.
const SETTLE_RETRY: Duration = Duration::from_millis(500);

/// What a dispatcher does with an outcome.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A Trigger queue: replies to the exchange, failures to the dead-letter exchange.
    Trigger,
    /// The dead-letter queue: delivered to the sink; refused letters stay queued.
    DeadLetters,
}

struct Work {
    broker: AmqpBroker,
    queue: String,
    trigger: Trigger,
    subscriber: Arc<dyn Subscriber>,
    role: Role,
}

/// A running consumer; stops when dropped (its unacked messages return to the queue).
pub struct Dispatcher {
    task: JoinHandle<()>,
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Dispatcher {
    pub(super) fn trigger(
        broker: AmqpBroker,
        trigger: Trigger,
        subscriber: Arc<dyn Subscriber>,
    ) -> Self {
        let queue = broker.topology().trigger_queue(&trigger.name);
        Self::start(Work {
            broker,
            queue,
            trigger,
            subscriber,
            role: Role::Trigger,
        })
    }

    pub(super) fn dead_letters(
        broker: AmqpBroker,
        sink: Arc<dyn Subscriber>,
        delivery: Delivery,
    ) -> Self {
        let queue = broker.topology().dead_letter_queue();
        let trigger = Trigger {
            name: "dead-letter-sink".into(),
            filter: Default::default(),
            subscriber: sink.address(),
            delivery,
            parallelism: 1,
        };
        Self::start(Work {
            broker,
            queue,
            trigger,
            subscriber: sink,
            role: Role::DeadLetters,
        })
    }

    fn start(work: Work) -> Self {
        Self {
            task: tokio::spawn(run(Arc::new(work))),
        }
    }
}

/// Consumes until aborted, re-opening the connection with backoff whenever it breaks.
async fn run(work: Arc<Work>) {
    let mut wait = FIRST_RECONNECT;
    loop {
        let error = consume(&work, &mut wait).await;
        tracing::warn!(queue = %work.queue, %error, retry_in = ?wait, "consumer stopped; reconnecting");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_RECONNECT);
    }
}

async fn consume(work: &Arc<Work>, wait: &mut Duration) -> AmqpError {
    let channel = match open(work).await {
        Ok(channel) => channel,
        Err(error) => return error,
    };
    let consume = channel.basic_consume(
        ShortString::from(work.queue.as_str()),
        ShortString::from(""),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    );
    let mut consumer = match within(
        OPERATION_DEADLINE,
        &format!("consuming {}", work.queue),
        consume,
    )
    .await
    {
        Ok(consumer) => consumer,
        Err(error) => return error,
    };
    *wait = FIRST_RECONNECT;
    tracing::debug!(queue = %work.queue, "consuming");
    let slots = Arc::new(Semaphore::new(work.trigger.parallelism.max(1)));
    loop {
        // While the queue is quiet, look at the channel now and then: a connection that died
        // without closing must not leave the dispatcher waiting forever.
        let next = match tokio::time::timeout(
            LIVENESS_CHECK,
            poll_fn(|cx| Pin::new(&mut consumer).poll_next(cx)),
        )
        .await
        {
            Ok(next) => next,
            Err(_) if !channel.status().connected() => {
                return AmqpError::Closed {
                    what: format!("the channel consuming {}", work.queue),
                };
            }
            Err(_) => {
                let idle = slots.available_permits() == work.trigger.parallelism.max(1);
                match waiting(&channel, &work.queue).await {
                    // Nothing in hand, nothing arriving, yet messages wait: RabbitMQ is not
                    // feeding this consumer (seen when it subscribed while a quorum queue was
                    // still electing its leader after a restart). A new subscription fixes it.
                    Ok(ready) if idle && ready > 0 => {
                        return AmqpError::Closed {
                            what: format!(
                                "the consumer of {} ({ready} messages ready, none delivered for {} s)",
                                work.queue,
                                LIVENESS_CHECK.as_secs()
                            ),
                        };
                    }
                    Ok(_) => continue,
                    Err(error) => return error,
                }
            }
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                return AmqpError::operation(format!("consuming {}", work.queue))(error);
            }
            None => {
                return AmqpError::Closed {
                    what: format!("the consumer of {}", work.queue),
                };
            }
        };
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return AmqpError::Closed {
                what: "the dispatcher's delivery slots".into(),
            };
        };
        if work.trigger.parallelism <= 1 {
            // In order: the next message waits for this one's outcome.
            settle(work, message).await;
            drop(slot);
        } else {
            let work = Arc::clone(work);
            tokio::spawn(async move {
                settle(&work, message).await;
                drop(slot);
            });
        }
    }
}

async fn open(work: &Work) -> Result<Channel, AmqpError> {
    let channel = work.broker.channel().await?;
    let prefetch = PREFETCH.max(u16::try_from(work.trigger.parallelism).unwrap_or(u16::MAX));
    within(
        OPERATION_DEADLINE,
        "setting the prefetch",
        channel.basic_qos(prefetch, BasicQosOptions::default()),
    )
    .await?;
    Ok(channel)
}

/// How many messages wait in `queue`, ready for a consumer (a passive declare).
async fn waiting(channel: &Channel, queue: &str) -> Result<u32, AmqpError> {
    let declared = within(
        OPERATION_DEADLINE,
        &format!("checking {queue}"),
        channel.queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    Ok(declared.message_count())
}

/// Delivers one message and settles it: ack once the outcome is safe, hand it back otherwise.
async fn settle(work: &Work, message: Message) {
    let Message {
        properties,
        data,
        acker,
        redelivered,
        ..
    } = message;
    let event = match message::decode(&properties, data) {
        Ok(event) => event,
        Err(problems) => {
            // Not a CloudEvent: nothing can deliver it. The queue dead-letters what is rejected,
            // so it is kept (in the dead-letter queue, or parked from there) for an operator.
            tracing::error!(queue = %work.queue, ?problems, "a message in the queue is not a CloudEvent; rejecting it to the dead letters");
            let rejected = acker.reject(BasicRejectOptions { requeue: false });
            let _ = within(OPERATION_DEADLINE, "rejecting a message", rejected).await;
            return;
        }
    };
    tracing::debug!(queue = %work.queue, event_id = %event.id(), redelivered, "delivering");
    let outcome = deliver(
        &work.trigger.name,
        &work.trigger.delivery,
        work.subscriber.as_ref(),
        event,
        work.broker.metrics(),
    )
    .await;
    let safe = match (work.role, outcome) {
        (_, Delivered::Accepted) | (Role::DeadLetters, Delivered::Reply(_)) => Ok(()),
        (Role::Trigger, Delivered::Reply(reply)) => work.broker.publish(&reply).await,
        (Role::Trigger, Delivered::DeadLetter(letter)) => {
            tracing::warn!(trigger = %letter.trigger, attempts = letter.attempts, event_id = %letter.event.id(), "dead-lettered");
            work.broker
                .publish_to(
                    &work.broker.topology().dead_letter_exchange(),
                    &letter.event,
                )
                .await
        }
        (Role::DeadLetters, Delivered::DeadLetter(letter)) => {
            tracing::error!(sink = %work.subscriber.address(), event_id = %letter.event.id(), "the dead-letter sink refused a dead letter; it stays in the dead-letter queue");
            Err(AmqpError::Nacked {
                id: letter.event.id().to_owned(),
                exchange: work.subscriber.address(),
            })
        }
    };
    match safe {
        Ok(()) => ack(work, &acker).await,
        Err(error) => {
            tracing::warn!(queue = %work.queue, %error, "outcome not safe yet; the message goes back to the queue");
            tokio::time::sleep(SETTLE_RETRY).await;
            let handed_back = acker.nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            });
            // Bounded like every operation: on a connection that died unnoticed, an answer
            // never comes, and the consumer must get back to noticing it.
            let _ = within(OPERATION_DEADLINE, "handing a message back", handed_back).await;
        }
    }
}

async fn ack(work: &Work, acker: &Acker) {
    // Bounded: an ack on a connection that died unnoticed (RabbitMQ restarting) would otherwise
    // wait forever, and with it the consumer that should reconnect.
    let acked = acker.ack(BasicAckOptions::default());
    if let Err(error) = within(OPERATION_DEADLINE, "acknowledging a message", acked).await {
        // The channel broke after the outcome was made safe: RabbitMQ redelivers the message,
        // and the stage's idempotence makes the second delivery harmless.
        tracing::warn!(queue = %work.queue, %error, "ack failed; the message will be redelivered");
    }
}
