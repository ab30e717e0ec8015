//! The webhook-gateway binary: serves [`webhook_gateway::router`] on `$PORT` (8080), publishing
//! to the broker ingress at `$K_SINK`. Secrets: `KLAMBDA_BUILDKITE_TOKEN`,
//! `KLAMBDA_BUILDKITE_SIGNING_KEY`, `KLAMBDA_GITHUB_SECRET`; `KLAMBDA_BUILDKITE_TOLERANCE_SECONDS`
//! (300) bounds signature replays; `KLAMBDA_WEBHOOK_RULES` names a rules file (see
//! `webhook_gateway::rules`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use klambda_harness::config::Secret;
use klambda_harness::publisher::{HttpSink, Publisher};
use webhook_gateway::Config;

fn main() -> ExitCode {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let mut problems = Vec::new();
    let mut config = Config::default();
    config.buildkite.token = var("KLAMBDA_BUILDKITE_TOKEN").map(Secret::new);
    config.buildkite.signing_key = var("KLAMBDA_BUILDKITE_SIGNING_KEY").map(Secret::new);
    config.github_secret = var("KLAMBDA_GITHUB_SECRET").map(Secret::new);
    if let Some(seconds) = var("KLAMBDA_BUILDKITE_TOLERANCE_SECONDS") {
        match seconds.parse() {
            Ok(seconds) => config.buildkite.tolerance = Duration::from_secs(seconds),
            Err(_) => problems.push(format!(
                "KLAMBDA_BUILDKITE_TOLERANCE_SECONDS={seconds:?} is not a number of seconds"
            )),
        }
    }
    if let Some(path) = var("KLAMBDA_WEBHOOK_RULES") {
        match std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| webhook_gateway::rules::Rules::parse(&text).map_err(|e| e.to_string()))
        {
            Ok(rules) => config.rules = rules,
            Err(error) => problems.push(format!("KLAMBDA_WEBHOOK_RULES={path}: {error}")),
        }
    }
    let port: u16 = match var("PORT").map(|p| p.parse()) {
        None => 8080,
        Some(Ok(port)) => port,
        Some(Err(_)) => {
            problems.push("PORT is not a port number".into());
            0
        }
    };
    let sink = match var("K_SINK").map(|s| url::Url::parse(&s)) {
        Some(Ok(sink)) => Some(sink),
        Some(Err(error)) => {
            problems.push(format!("K_SINK is not a URL: {error}"));
            None
        }
        None => {
            problems.push("K_SINK (the broker ingress) is required".into());
            None
        }
    };
    if config.buildkite.token.is_none()
        && config.buildkite.signing_key.is_none()
        && config.github_secret.is_none()
    {
        problems.push("no webhook secret configured: set KLAMBDA_BUILDKITE_TOKEN, KLAMBDA_BUILDKITE_SIGNING_KEY or KLAMBDA_GITHUB_SECRET".into());
    }
    let Some(sink) = sink.filter(|_| problems.is_empty()) else {
        for problem in problems {
            eprintln!("webhook-gateway: {problem}");
        }
        return ExitCode::from(64);
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("webhook-gateway: {error}");
            return ExitCode::from(70);
        }
    };
    let publisher: Arc<dyn Publisher> = Arc::new(HttpSink::new(sink));
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
        axum::serve(listener, webhook_gateway::router(config, publisher))
            .with_graceful_shutdown(klambda_harness::serve::shutdown_signal())
            .await
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("webhook-gateway: {error}");
            ExitCode::from(1)
        }
    }
}
