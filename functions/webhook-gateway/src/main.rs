//! The `webhook-gateway` binary: `serve` (the default), `validate --config F`, `config show`
//! (secrets redacted), `version`. Settings come from the `--config` file
//! (or `KLAMBDA_WEBHOOK_CONFIG`) and the environment; see `webhook_gateway::settings`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use klambda_harness::publisher::{HttpSink, Publisher};
use webhook_gateway::settings::{self, Settings};

#[derive(Parser)]
#[command(
    name = "webhook-gateway",
    about = "Buildkite and GitHub webhooks in, CloudEvents onto the broker."
)]
struct Cli {
    /// The settings file (JSON).
    #[arg(long, global = true, env = "KLAMBDA_WEBHOOK_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve webhooks (the default).
    Serve,
    /// Check the settings and exit: 0 when they are usable, 64 listing every problem.
    Validate,
    /// The settings.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The version.
    Version,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective settings as JSON, secrets redacted.
    Show,
}

fn settings(cli: &Cli) -> Result<Settings, ExitCode> {
    settings::load(cli.config.as_deref(), &|key| std::env::var(key).ok()).map_err(|problems| {
        for problem in problems {
            eprintln!("webhook-gateway: {problem}");
        }
        ExitCode::from(64)
    })
}

/// The settings `--help` lists after the flags: the gateway's own, then every server's.
fn settings_help() -> String {
    format!(
        "Settings (environment; each overrides its key in the settings file):\n{}\nAlso (environment):\n{}",
        klambda_harness::config::describe(settings::SETTINGS),
        klambda_harness::config::describe(klambda_harness::config::SERVING_SETTINGS)
    )
}

fn main() -> ExitCode {
    let matches = Cli::command().after_help(settings_help()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    match cli.command {
        Some(Command::Version) => {
            println!("webhook-gateway {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some(Command::Validate) => match settings(&cli) {
            Ok(settings) => {
                println!(
                    "the settings are valid: {} rule(s), publishing to {}",
                    settings.config.rules.list().len(),
                    settings.sink
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Some(Command::Config {
            command: ConfigCommand::Show,
        }) => match settings(&cli) {
            Ok(settings) => {
                let shown =
                    serde_json::to_string_pretty(&settings::show(&settings)).unwrap_or_default();
                println!("{shown}");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Some(Command::Serve) | None => match settings(&cli) {
            Ok(settings) => serve(settings),
            Err(code) => code,
        },
    }
}

fn serve(settings: Settings) -> ExitCode {
    // Logs and traces as every stage's: KLAMBDA_LOG_FORMAT, RUST_LOG, OTEL_EXPORTER_OTLP_*.
    let log = match klambda_harness::Settings::telemetry(
        &klambda_harness::config::Env,
        klambda_harness::Settings::default(),
    ) {
        Ok(log) => log,
        Err(error) => {
            eprintln!("webhook-gateway: {error}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("webhook-gateway: {error}");
            return ExitCode::from(70);
        }
    };
    // The OTLP exporter needs the runtime.
    let telemetry =
        runtime.block_on(async { klambda_harness::telemetry::init("webhook-gateway", &log) });
    let publisher: Arc<dyn Publisher> =
        Arc::new(HttpSink::new(settings.sink.clone()).with_token(settings.sink_token.clone()));
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", settings.port)).await?;
        tracing::info!(port = settings.port, sink = %settings.sink, "serving webhooks");
        klambda_harness::listen::serve_router(
            listener,
            webhook_gateway::router(settings.config, publisher),
            klambda_harness::serve::shutdown_signal(),
            std::time::Duration::from_secs(30),
            log.connections,
        )
        .await
    });
    match telemetry {
        Ok(telemetry) => telemetry.shutdown(),
        Err(error) => eprintln!("webhook-gateway: logging was off: {error}"),
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("webhook-gateway: {error}");
            ExitCode::from(1)
        }
    }
}
