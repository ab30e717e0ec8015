//! Every CloudEvent comes back from the status store as the CloudEvents JSON event format says
//! (issue 24), whatever its data: posted to the real `klambda up`'s broker ingress in binary and
//! in structured mode, then read back with `GET /events/{id}`, in memory and over RabbitMQ
//! (where the status reporter receives it through AMQP binary mode). Compared attribute by
//! attribute, `data` / `data_base64` exactly.

mod common;

use anyhow::{Context as _, Result};
use common::up;
use klambda_test_support::event_format::conformance;
use klambda_test_support::rabbitmq;

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("klambda-format-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_comes_back_in_the_json_format_in_memory() -> Result<()> {
    let data = scratch("memory");
    let platform = tokio::task::block_in_place(|| up(&data, &[]))?;
    conformance(&platform.endpoint, &platform.token, "mem").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_comes_back_in_the_json_format_over_rabbitmq() -> Result<()> {
    let data = scratch("rabbitmq");
    let instance = rabbitmq::Instance::new("format");
    let url = rabbitmq::url();
    let platform = tokio::task::block_in_place(|| {
        up(&data, &["--broker", &url, "--instance", instance.name()])
    })
    .with_context(|| rabbitmq::HOW_TO_START)?;
    conformance(&platform.endpoint, &platform.token, "amqp").await
}
