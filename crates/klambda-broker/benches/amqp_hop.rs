//! RabbitMQ broker benchmark (issue 4), against the RabbitMQ on this machine. Prints a table:
//!
//! - hop latency, publish → subscriber, p50 and p99: our broker (confirmed publish into the
//!   Broker's headers exchange, routed to a Trigger's quorum queue, dispatched to an
//!   in-process subscriber) versus a raw lapin round trip measured in the same run (confirm-mode
//!   publish to a quorum queue, consumer with manual ack);
//! - throughput through one Trigger at parallelism 1 and 16: a pre-filled queue drained by the
//!   dispatcher into a subscriber that accepts at once.
//!
//! Run: `cargo bench -p klambda-broker --bench amqp_hop` (`-- --samples N --events M`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cloudevents::{Event, EventBuilder as _, EventBuilderV10};
use klambda_broker::amqp::Topology;
use klambda_broker::subscriber::BoxFuture;
use klambda_broker::{AmqpBroker, Answer, Delivery, Subscriber, Trigger};
use klambda_test_support::bench::{argument, percentile};
use klambda_test_support::rabbitmq::{raw_round_trips, url};
use tokio::sync::mpsc;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn event(n: usize) -> Event {
    EventBuilderV10::new()
        .id(format!("bench-{n}"))
        .source("/bench")
        .ty("bench.hop")
        .data(
            "application/json",
            serde_json::json!({"name": "hello", "n": n}),
        )
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn trigger(name: &str, parallelism: usize) -> Trigger {
    Trigger {
        name: name.into(),
        filter: BTreeMap::from([("type".to_owned(), "bench.hop".to_owned())]),
        subscriber: "bench".into(),
        delivery: Delivery::default(),
        parallelism,
    }
}

/// Sends the arrival time of every delivery to the measuring loop.
struct Arrivals(mpsc::UnboundedSender<Instant>);

impl Subscriber for Arrivals {
    fn address(&self) -> String {
        "bench://arrivals".into()
    }
    fn deliver(&self, _event: Event) -> BoxFuture<'_, Answer> {
        let _ = self.0.send(Instant::now());
        Box::pin(async { Answer::Accepted })
    }
}

/// Counts deliveries.
struct Count(Arc<AtomicUsize>);

impl Subscriber for Count {
    fn address(&self) -> String {
        "bench://count".into()
    }
    fn deliver(&self, _event: Event) -> BoxFuture<'_, Answer> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Answer::Accepted })
    }
}

async fn broker_hop(samples: usize) -> Result<Vec<Duration>> {
    let triggers = vec![trigger("hop", 1)];
    let broker = AmqpBroker::connect(
        &url(),
        Topology::new("bench", &format!("hop-{}", std::process::id())),
        &triggers,
    )
    .await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _dispatcher = broker.dispatch(triggers[0].clone(), Arc::new(Arrivals(tx)));
    let mut latencies = Vec::with_capacity(samples);
    for n in 0..samples + 100 {
        let event = event(n);
        let start = Instant::now();
        broker.publish(&event).await?;
        let arrived = rx.recv().await.ok_or("the dispatcher stopped")?;
        if n >= 100 {
            latencies.push(arrived - start);
        }
    }
    broker.delete(&triggers).await?;
    Ok(latencies)
}

async fn throughput(parallelism: usize, events: usize) -> Result<f64> {
    let triggers = vec![trigger(&format!("drain-{parallelism}"), parallelism)];
    let broker = AmqpBroker::connect(
        &url(),
        Topology::new("bench", &format!("drain-{}", std::process::id())),
        &triggers,
    )
    .await?;
    // Fill the queue first (256 confirmed publishes in flight), then time the drain alone.
    let mut in_flight = tokio::task::JoinSet::new();
    for n in 0..events {
        if in_flight.len() >= 256
            && let Some(done) = in_flight.join_next().await
        {
            done??;
        }
        let broker = broker.clone();
        in_flight.spawn(async move { broker.publish(&event(n)).await });
    }
    while let Some(done) = in_flight.join_next().await {
        done??;
    }
    let count = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let dispatcher = broker.dispatch(triggers[0].clone(), Arc::new(Count(Arc::clone(&count))));
    while count.load(Ordering::Relaxed) < events {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = events as f64 / start.elapsed().as_secs_f64();
    drop(dispatcher);
    broker.delete(&triggers).await?;
    Ok(rate)
}

fn main() -> Result<()> {
    let samples = argument("--samples", 2000);
    let events = argument("--events", 20_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut raw = raw_round_trips(&url(), samples, 100).await?;
        raw.sort();
        let mut ours = broker_hop(samples).await?;
        ours.sort();
        let micros = |sorted: &[Duration], p: f64| percentile(sorted, p).as_secs_f64() * 1e6;
        println!("hop latency, {samples} sequential events (after 100 warm-up)");
        println!("| path | p50 | p99 |");
        println!("| --- | --- | --- |");
        println!(
            "| raw lapin publish → consume (quorum queue, confirms) | {:.0} µs | {:.0} µs |",
            micros(&raw, 0.5),
            micros(&raw, 0.99)
        );
        println!(
            "| klambda AMQP broker publish → subscriber | {:.0} µs | {:.0} µs |",
            micros(&ours, 0.5),
            micros(&ours, 0.99)
        );
        println!(
            "| ratio | {:.2}× | {:.2}× |",
            micros(&ours, 0.5) / micros(&raw, 0.5),
            micros(&ours, 0.99) / micros(&raw, 0.99)
        );
        println!();
        println!("throughput through one Trigger, {events} queued events");
        println!("| parallelism | events/s |");
        println!("| --- | --- |");
        for parallelism in [1, 16] {
            let rate = throughput(parallelism, events).await?;
            println!("| {parallelism} | {rate:.0} |");
        }
        Ok(())
    })
}
