//! RabbitMQ stopped and started again in the middle of a stream: every event is delivered.
//!
//! A file of its own because it stops the RabbitMQ application on this machine
//! (`rabbitmqctl stop_app` / `start_app`); test binaries run one after another, so no other
//! test sees it down.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use common::{Scripted, event, trigger};
use klambda_broker::amqp::Topology;
use klambda_broker::{AmqpBroker, Delivery};

fn rabbitmqctl(args: &[&str]) -> Result<()> {
    rabbitmqctl_output(args).map(drop)
}

fn rabbitmqctl_output(args: &[&str]) -> Result<String> {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .context("running rabbitmqctl (scripts/services.sh installs RabbitMQ)")?;
    if !output.status.success() {
        bail!(
            "rabbitmqctl {args:?} failed: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Where the events are when some never arrived: still in the queue (the consumer stopped) or
/// nowhere (RabbitMQ confirmed what it did not route), as RabbitMQ reports it.
fn whereabouts(queue: &str, exchange: &str) -> String {
    let queues = rabbitmqctl_output(&[
        "list_queues",
        "--no-table-headers",
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
    ])
    .unwrap_or_else(|e| e.to_string());
    let bindings = rabbitmqctl_output(&[
        "list_bindings",
        "--no-table-headers",
        "source_name",
        "destination_name",
    ])
    .unwrap_or_else(|e| e.to_string());
    let queue_line = queues
        .lines()
        .find(|l| l.starts_with(queue))
        .unwrap_or("(queue not listed)");
    let bound = bindings
        .lines()
        .any(|l| l.starts_with(exchange) && l.contains(queue));
    format!("queue (name, ready, unacked, consumers): {queue_line}; bound to {exchange}: {bound}")
}

/// Starts the RabbitMQ application again however the test ends.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        if let Err(error) =
            rabbitmqctl(&["start_app"]).and_then(|()| rabbitmqctl(&["await_startup"]))
        {
            eprintln!("could not start RabbitMQ again: {error}; run scripts/services.sh");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_delivered_across_a_rabbitmq_restart() -> Result<()> {
    let _logs = tracing_subscriber::fmt()
        .with_env_filter("klambda_broker=debug")
        .with_test_writer()
        .try_init();
    let url = klambda_test_support::rabbitmq::url();
    let triggers = vec![trigger("steady", "t.steady", "x", Delivery::default())];
    let topology = Topology::new("klambda", &format!("test-restart-{}", std::process::id()));
    let broker = AmqpBroker::connect(&url, topology, &triggers)
        .await
        .context("RabbitMQ on 127.0.0.1:5672 (run scripts/services.sh)")?;
    let subscriber = Scripted {
        delay: Duration::from_millis(5),
        ..Scripted::default()
    };
    let _dispatcher = broker.dispatch(triggers[0].clone(), Arc::new(subscriber.clone()));
    let total = 300;
    let producer = {
        let broker = broker.clone();
        tokio::spawn(async move {
            for n in 0..total {
                let event = event(&format!("{n:04}"), "t.steady");
                // A producer retries until the broker confirms, as it would without a 202.
                while broker.publish(&event).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    subscriber.wait_for(50, Duration::from_secs(20)).await;
    let restart = Restart;
    tokio::task::spawn_blocking(|| rabbitmqctl(&["stop_app"])).await??;
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::spawn_blocking(move || drop(restart)).await?;
    // Publishes are bounded (a confirm that never comes is an error, and retried), so the
    // producer finishes; if it does not, that is the failure, not a hung test run.
    tokio::time::timeout(Duration::from_secs(120), producer)
        .await
        .context("the producer did not get its events confirmed within 120 s of the restart")??;
    let deadline = Instant::now() + Duration::from_secs(60);
    let expected: BTreeSet<String> = (0..total).map(|n| format!("{n:04}")).collect();
    loop {
        let seen: BTreeSet<String> = subscriber.ids().into_iter().collect();
        if seen == expected {
            break;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = expected.difference(&seen).take(10).collect();
            bail!(
                "{} of {total} never delivered, e.g. {missing:?}; {}",
                total - seen.len(),
                whereabouts(
                    &broker.topology().trigger_queue("steady"),
                    &broker.topology().exchange()
                )
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker.delete(&triggers).await?;
    Ok(())
}
