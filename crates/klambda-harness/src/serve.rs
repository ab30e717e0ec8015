//! Running a stage: [`serve`] on a bound listener until a shutdown future completes (tests bind
//! port 0 and pass their own), and [`run`], the whole `main` of a stage binary.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{
    Command, ConfigError, ConfigSource, Env, Settings, StageSetting, WithFlags, usage,
};
use crate::handler::Handler;
use crate::harness::Harness;
use crate::listen::{ConnectionLimits, serve_router};
use crate::telemetry;

/// Exit code for bad configuration (EX_USAGE), so orchestrators tell it from a crash.
pub const EXIT_CONFIG: u8 = 64;
/// Exit code when the stage could not start or failed while serving (EX_SOFTWARE).
pub const EXIT_FAILURE: u8 = 70;

/// Serves `harness` on `listener` within `limits` until `shutdown` completes, then stops
/// accepting and lets in-flight requests finish for at most `grace`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    harness: Harness<H>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
    limits: ConnectionLimits,
) -> std::io::Result<()> {
    serve_router(listener, harness.router(), shutdown, grace, limits).await
}

/// Completes on SIGTERM (what Knative sends) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// The whole `main` of a stage binary: reads flags and environment, builds the stage with
/// `make` (which reads its own settings from the same source, inside the async runtime, so it
/// may create clients and await their configuration), then serves it over HTTP, or as an AWS
/// Lambda when `AWS_LAMBDA_RUNTIME_API` is set. Bad configuration exits 64 listing every
/// problem. `--help` lists the harness's flags and the stage's own `settings`; `config show`
/// prints each with its value, secrets redacted.
pub fn run<H, F>(service: &'static str, settings: &[&[StageSetting]], make: F) -> ExitCode
where
    H: Handler,
    F: AsyncFnOnce(&dyn ConfigSource) -> Result<H, ConfigError>,
{
    let settings: Vec<StageSetting> = settings
        .iter()
        .flat_map(|group| group.iter().copied())
        .collect();
    let source = match WithFlags::parse(std::env::args().skip(1), Env) {
        Ok(Command::Run(source)) => source,
        Ok(Command::Help) => {
            print!("{}", usage(service, &settings));
            return ExitCode::SUCCESS;
        }
        Ok(Command::ShowConfig(source)) => {
            print!("{}", crate::config::show(&source, &settings));
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("{service}: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // The stage is built inside the runtime: constructors create clients that need a Tokio
    // context (sqlx's lazy pool, kube, the AWS SDK); one that panicked outside it would
    // crash-loop on its cluster (`tests/boot.rs` starts every binary as deployed).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{service}: could not start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let settings = Settings::from_source(&source);
    let handler = runtime.block_on(make(&source));
    let (settings, handler) = match (settings, handler) {
        (Ok(settings), Ok(handler)) => (settings, handler),
        (settings, handler) => {
            let mut problems = Vec::new();
            for error in [settings.err(), handler.err()].into_iter().flatten() {
                problems.extend(error.problems);
            }
            eprintln!("{service}: {}", ConfigError { problems });
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    runtime.block_on(async move {
        let telemetry = match telemetry::init(service, &settings) {
            Ok(telemetry) => telemetry,
            Err(error) => {
                eprintln!("{service}: {error}");
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        let harness = Harness::from_settings(handler, &settings);
        harness.start();
        let result = if settings.lambda_runtime_api.is_some() {
            tracing::info!(service, "serving as an AWS Lambda function");
            crate::lambda::run(harness).await.map_err(|e| e.to_string())
        } else {
            let address = SocketAddr::from(([0, 0, 0, 0], settings.port));
            match TcpListener::bind(address).await {
                Ok(listener) => {
                    tracing::info!(service, %address, sink = ?settings.sink.as_ref().map(|u| u.as_str()), "serving");
                    serve(
                        listener,
                        harness,
                        shutdown_signal(),
                        settings.shutdown_grace,
                        settings.connections,
                    )
                        .await
                        .map_err(|e| e.to_string())
                }
                Err(error) => Err(format!("could not listen on {address}: {error}")),
            }
        };
        telemetry.shutdown();
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "stopped");
                eprintln!("{service}: {error}");
                ExitCode::from(EXIT_FAILURE)
            }
        }
    })
}
