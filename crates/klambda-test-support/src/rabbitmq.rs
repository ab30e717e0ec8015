//! The RabbitMQ the tests use, and a guard that removes what a test's platform instance declared.
//!
//! Every `klambda up --broker … --instance <name>` (and every test topology) declares durable
//! quorum queues named `….<name>`. Left behind, they pile up run after run: a few hundred quorum
//! queues were enough to make the RabbitMQ on a 2-core machine stop answering handshakes, which
//! failed every later AMQP test. So each test that declares a topology holds an [`Instance`],
//! and its queues and exchanges go when the test ends, passed or failed.

use anyhow::{Context, Result, ensure};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::types::ShortString;
use lapin::{Connection, ConnectionProperties};

/// The RabbitMQ the tests use: `$KLAMBDA_TEST_AMQP_URL`, else the local one that
/// scripts/services.sh starts.
pub fn url() -> String {
    std::env::var("KLAMBDA_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// What to do when RabbitMQ cannot be reached, for a test's failure message.
pub const HOW_TO_START: &str = "these tests need RabbitMQ on 127.0.0.1:5672 (guest/guest): run scripts/services.sh, or set KLAMBDA_TEST_AMQP_URL";

/// A platform instance name of one test, whose RabbitMQ topology is deleted on drop.
#[derive(Debug)]
pub struct Instance {
    name: String,
}

impl Instance {
    /// `<prefix>-<pid>`: unique to this test process, the same for every restart within it.
    pub fn new(prefix: &str) -> Self {
        Self {
            name: format!("{prefix}-{}", std::process::id()),
        }
    }

    /// The name to pass as `--instance` (or as a broker topology's uid).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // On its own thread and runtime: a guard may be dropped inside a test's runtime, which
        // cannot be blocked on from within.
        let name = self.name.clone();
        let outcome = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("a runtime to delete the topology")?
                .block_on(delete(&url(), &name))
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!(
                "could not delete RabbitMQ topology of instance {}: {error:#}",
                self.name
            ),
            Err(_) => eprintln!("deleting the topology of instance {} panicked", self.name),
        }
    }
}

/// Every queue of instance `instance`, with how many messages it holds (ready and unacknowledged).
pub fn queues(instance: &str) -> Result<Vec<(String, u64)>> {
    Ok(listed("list_queues", &["name", "messages"], instance)?
        .into_iter()
        .map(|columns| {
            let count = columns.get(1).and_then(|c| c.parse().ok());
            (columns[0].clone(), count.unwrap_or(u64::MAX))
        })
        .collect())
}

/// Deletes every queue and exchange of instance `instance` at `url`, messages included.
pub async fn delete(url: &str, instance: &str) -> Result<()> {
    let queues = queues(instance)?;
    let exchanges = listed("list_exchanges", &["name"], instance)?;
    if queues.is_empty() && exchanges.is_empty() {
        return Ok(());
    }
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let channel = connection.create_channel().await?;
    for (queue, _) in queues {
        channel
            .queue_delete(queue.clone().into(), QueueDeleteOptions::default())
            .await
            .with_context(|| format!("deleting queue {queue}"))?;
    }
    for exchange in exchanges {
        channel
            .exchange_delete(exchange[0].clone().into(), ExchangeDeleteOptions::default())
            .await
            .with_context(|| format!("deleting exchange {}", exchange[0]))?;
    }
    let _ = connection
        .close(200, ShortString::from("topology deleted"))
        .await;
    Ok(())
}

/// `rabbitmqctl <command> <columns>`, the rows whose name (first column) is the instance's:
/// every name the platform declares ends in `.<instance>`.
fn listed(command: &str, columns: &[&str], instance: &str) -> Result<Vec<Vec<String>>> {
    let output = std::process::Command::new("rabbitmqctl")
        .args([command, "--no-table-headers", "--quiet"])
        .args(columns)
        .output()
        .context("running rabbitmqctl (scripts/services.sh installs RabbitMQ)")?;
    ensure!(
        output.status.success(),
        "rabbitmqctl {command} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let suffix = format!(".{instance}");
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.split('\t').map(|c| c.trim().to_owned()).collect())
        .filter(|columns: &Vec<String>| columns[0].ends_with(&suffix))
        .collect())
}

/// The raw AMQP round trip the broker benches compare with, `samples` times after `warmup`:
/// a confirm-mode publish of a persistent message to a quorum queue of its own until a consumer
/// (manual ack) has it, with lapin alone.
pub async fn raw_round_trips(
    url: &str,
    samples: usize,
    warmup: usize,
) -> Result<Vec<std::time::Duration>> {
    use lapin::BasicProperties;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
        QueueDeclareOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};

    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting to {url}: {HOW_TO_START}"))?;
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let consumer_channel = connection.create_channel().await?;
    let queue = format!("bench.raw.{}", std::process::id());
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    publisher
        .queue_declare(queue.clone().into(), durable, arguments)
        .await?;
    let mut consumer = consumer_channel
        .basic_consume(
            queue.clone().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let body = br#"{"name":"hello","n":0}"#;
    let mut latencies = Vec::with_capacity(samples);
    for n in 0..samples + warmup {
        let start = std::time::Instant::now();
        let confirm = publisher
            .basic_publish(
                ShortString::from(""),
                queue.clone().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        let delivery = std::future::poll_fn(|cx| {
            futures_core::Stream::poll_next(std::pin::Pin::new(&mut consumer), cx)
        })
        .await
        .context("the consumer stopped")??;
        let arrived = std::time::Instant::now();
        delivery.acker.ack(BasicAckOptions::default()).await?;
        confirm.await?;
        if n >= warmup {
            latencies.push(arrived - start);
        }
    }
    publisher
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await?;
    let _ = connection.close(200, ShortString::from("measured")).await;
    Ok(latencies)
}
