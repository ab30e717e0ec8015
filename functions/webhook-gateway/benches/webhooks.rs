//! Webhook gateway benchmark (issue 7): verified `build.finished` webhooks (HMAC signature,
//! validation, transformation) over HTTP/1.1 keep-alive from 32 concurrent clients on the same
//! two cores, publishing to a sink that discards (publish excluded, as the goal states). Prints
//! requests/s and latency percentiles.
//!
//! Run: `cargo bench -p webhook-gateway --bench webhooks` (`-- --seconds N --clients N`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{KeyInit as _, Mac as _};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use klambda_harness::config::Secret;
use klambda_harness::publisher::Discard;
use klambda_test_support::bench::argument;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> Result<()> {
    let seconds = argument("--seconds", 10);
    let clients = argument("--clients", 32);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut config = webhook_gateway::Config::default();
        config.buildkite.signing_key = Some(Secret::new("bench-signing-key"));
        // Capacity, not policy, is measured: the per-source limit is lifted.
        config.rate_limit.per_second = 1e9;
        config.rate_limit.burst = u32::MAX;
        let router = webhook_gateway::router(config, Arc::new(Discard));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, router).await });

        let body = serde_json::json!({
            "event": "build.finished",
            "build": {"id": "01890b6a-1111-2222-3333-444455556666", "number": 42, "state": "passed",
                      "branch": "main", "commit": "3f2a9c1e0b7d5a6c4e8f9a0b1c2d3e4f5a6b7c8d",
                      "message": "Fix the thing", "web_url": "https://buildkite.com/acme/app/builds/42",
                      "author": {"name": "Ada"}, "created_at": "2026-11-23T10:00:00Z",
                      "started_at": "2026-11-23T10:00:05Z", "finished_at": "2026-11-23T10:03:00Z"},
            "pipeline": {"slug": "app", "web_url": "https://buildkite.com/acme/app"},
            "sender": {"name": "Ada"}
        })
        .to_string();
        let timestamp = chrono::Utc::now().timestamp().to_string();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"bench-signing-key")?;
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        let signature = format!(
            "timestamp={timestamp},signature={}",
            hex::encode(mac.finalize().into_bytes())
        );
        let body = Bytes::from(body);
        let url = format!("http://{address}/buildkite");
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (body, signature, url) = (body.clone(), signature.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let client: Client<_, Full<Bytes>> =
                    Client::builder(TokioExecutor::new()).build_http();
                let mut latencies = Vec::new();
                let mut failures = 0u64;
                while Instant::now() < deadline {
                    let request = http::Request::post(&url)
                        .header("content-type", "application/json")
                        .header("x-buildkite-event", "build.finished")
                        .header("x-buildkite-signature", &signature)
                        .body(Full::new(body.clone()))?;
                    let started = Instant::now();
                    let response = client.request(request).await?;
                    let status = response.status();
                    let _ = response.into_body().collect().await?;
                    latencies.push(started.elapsed());
                    if status != http::StatusCode::ACCEPTED {
                        failures += 1;
                    }
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((latencies, failures))
            }));
        }
        let mut latencies = Vec::new();
        let mut failures = 0;
        for task in tasks {
            let (mut some, failed) = task.await??;
            latencies.append(&mut some);
            failures += failed;
        }
        latencies.sort();
        let at = |p: f64| {
            let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
            latencies[index].as_secs_f64() * 1e3
        };
        println!("verified build.finished webhooks, {clients} keep-alive clients, {seconds} s, client and gateway on the same 2 cores");
        println!("| requests | not 202 | requests/s | p50 | p99 | p99.9 |");
        println!("| --- | --- | --- | --- | --- | --- |");
        println!(
            "| {} | {failures} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms |",
            latencies.len(),
            latencies.len() as f64 / seconds as f64,
            at(0.5),
            at(0.99),
            at(0.999)
        );
        Ok(())
    })
}
