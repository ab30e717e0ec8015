//! `klambda`: run the platform on one machine and talk to it.

use std::net::SocketAddr;
use std::path::Path;

/// Where `klambda up` keeps its API token, in its data directory.
const API_TOKEN_FILE: &str = "api-token";
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};
use klambda_cli::client::{self, Api, Output};
use klambda_cli::{embedded, server};

#[derive(Parser)]
#[command(
    name = "klambda",
    version,
    about = "A serverless function platform on Knative, or on one machine."
)]
struct Cli {
    /// The platform's endpoint (broker ingress and status API).
    #[arg(
        long,
        global = true,
        env = "KLAMBDA_ENDPOINT",
        default_value = "http://127.0.0.1:8080"
    )]
    endpoint: String,
    /// The platform's API token (default: .klambda/api-token when it exists, where `klambda up`
    /// keeps it in its default data directory). For `klambda up`, the token to require instead
    /// of the data directory's.
    #[arg(long, global = true, env = "KLAMBDA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value = "text")]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole platform here: broker, five stages, local storage, builder and runner.
    Up {
        /// Port of the broker ingress and status API.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Where builds, contexts and the status database live.
        #[arg(long, default_value = ".klambda")]
        data_dir: PathBuf,
        /// The Trigger manifests (default: eventing/ here or above).
        #[arg(long)]
        eventing_dir: Option<PathBuf>,
        /// Status store (`sqlite:PATH` or `postgres://…`); SQLite in the data dir by default.
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
        /// RabbitMQ (`amqp://user:password@host:5672/vhost`) instead of the in-memory broker.
        #[arg(long, env = "KLAMBDA_BROKER_URL")]
        broker: Option<String>,
        /// This platform's name in RabbitMQ; processes with the same name share the queues.
        #[arg(long, default_value = "local")]
        instance: String,
        /// Run only these stages (comma-separated Service names; needs --broker), e.g. a second
        /// `--stages parser` process to scale the parser.
        #[arg(long, value_delimiter = ',')]
        stages: Option<Vec<String>>,
        /// The keys internal events are signed and checked with, the signing key first
        /// (default: `<data-dir>/event-keys`, created on first start; processes of one platform
        /// on different machines need the same keys).
        #[arg(long, env = "KLAMBDA_EVENT_KEYS", hide_env_values = true)]
        event_keys: Option<String>,
        /// Warm interpreters kept per runtime (Node.js, Python) so a cold start skips the
        /// interpreter's start, and as many spare shells already in a cgroup for Go and Rust
        /// functions (as root); 0: none (at most 32).
        #[arg(long, env = "KLAMBDA_WARM_POOL", default_value_t = service_deployer::deployer::pool::DEFAULT_SIZE,
              value_parser = |value: &str| service_deployer::deployer::pool::size_of(Some(value)))]
        warm_pool: usize,
        /// Where compiled runtimes' build caches are kept (Go's GOCACHE, GOMODCACHE), one per
        /// runtime id (default: <data-dir>/builds/.cache); platforms sharing one compile the
        /// standard library once.
        #[arg(long, env = "KLAMBDA_BUILD_CACHE_DIR")]
        build_cache_dir: Option<PathBuf>,
        #[command(flatten)]
        store: StoreFlags,
    },
    /// Start a new function in DIR from a runtime's template (handler, test, README).
    Init {
        /// The new function's directory (new or empty).
        #[arg(required_unless_present = "list")]
        dir: Option<PathBuf>,
        /// The runtime, e.g. nodejs22 or python3.12.
        #[arg(long, required_unless_present = "list")]
        runtime: Option<String>,
        /// The function's name; default: the directory's name.
        #[arg(long)]
        name: Option<String>,
        /// List the runtimes init can start.
        #[arg(long, conflicts_with_all = ["dir", "runtime", "name"])]
        list: bool,
    },
    /// Deploy the function in DIR (klambda.json + its files) and follow it until ready.
    Deploy {
        dir: PathBuf,
        /// With --store s3://…, the source is uploaded there and submitted as an s3:// source.
        #[command(flatten)]
        store: StoreFlags,
    },
    /// Send an event to a function and print its reply.
    Invoke {
        name: String,
        /// The event data (JSON).
        #[arg(default_value = "{}")]
        data: String,
        /// The event type.
        #[arg(long = "type", default_value = klambda_events::external::INVOKE)]
        event_type: String,
        /// Send it through the broker instead (retried, then dead-lettered, as the function's
        /// delivery says, else twice as Lambda does); prints the event's id, not a reply.
        #[arg(long = "async", conflicts_with = "event_type")]
        asynchronous: bool,
    },
    /// Publish a CloudEvent to the broker (functions whose Triggers match receive it) and print
    /// its id.
    Publish {
        /// The event type (`com.example.order.created`).
        #[arg(value_name = "TYPE")]
        event_type: String,
        /// The event data (JSON; anything else is sent as text).
        #[arg(default_value = "{}")]
        data: String,
        /// The event source.
        #[arg(long, default_value = "/klambda-cli")]
        source: String,
        /// The event subject.
        #[arg(long)]
        subject: Option<String>,
        /// An extension attribute, `name=value` (repeatable); Triggers can filter on it.
        #[arg(long = "ext", value_name = "NAME=VALUE")]
        extensions: Vec<String>,
    },
    /// Show every function, or one.
    Status { name: Option<String> },
    /// Show a function's events, and the deliveries of events to it.
    Events {
        /// The function (also as `--function NAME`).
        #[arg(required_unless_present = "function", conflicts_with = "function")]
        name: Option<String>,
        /// The function, as a flag.
        #[arg(long)]
        function: Option<String>,
    },
    /// Show a function's latest build log and its serving revision's output.
    Logs { name: String },
    /// Publish a recorded event again.
    Replay { event_id: String },
    /// Delete a function.
    Delete { name: String },
    /// The dead letters: events the broker could not deliver.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// The webhook gateway.
    Webhooks {
        /// The gateway's address.
        #[arg(
            long,
            env = "KLAMBDA_WEBHOOK_GATEWAY",
            default_value = "http://127.0.0.1:8081"
        )]
        gateway: String,
        /// The gateway's admin token (its KLAMBDA_WEBHOOK_ADMIN_TOKEN).
        #[arg(long, env = "KLAMBDA_WEBHOOK_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        #[command(subcommand)]
        command: WebhooksCommand,
    },
    /// Functions' secret env values (set, list, delete); a function names them in
    /// klambda.json's "secrets".
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Serve a function's previous revision again.
    Rollback {
        name: String,
        /// The revision to return to (default: the one before the current).
        #[arg(long)]
        to: Option<String>,
    },
    /// Print a completion script for SHELL, e.g. `klambda completions bash >
    /// ~/.local/share/bash-completion/completions/klambda`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Where contexts and uploaded sources go: S3-compatible storage (credentials from the standard
/// AWS chain: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profile, web identity).
#[derive(clap::Args)]
struct StoreFlags {
    /// `s3://bucket` (default: the data directory).
    #[arg(long = "store", env = "KLAMBDA_STORE")]
    location: Option<String>,
    /// A custom S3 endpoint (MinIO, Garage, s3s), path-style addressing.
    // Its own id: the field name would clash with the global `--endpoint`, and clap would then
    // refuse `--endpoint` after a subcommand that takes these flags.
    #[arg(id = "s3_endpoint", long = "s3-endpoint", env = "KLAMBDA_S3_ENDPOINT")]
    endpoint: Option<String>,
    /// The S3 region.
    #[arg(id = "s3_region", long = "s3-region", env = "KLAMBDA_S3_REGION")]
    region: Option<String>,
}

impl StoreFlags {
    fn s3(&self) -> Result<Option<klambda_storage::S3Settings>> {
        let Some(location) = &self.location else {
            return Ok(None);
        };
        let (bucket, _) = klambda_storage::s3::parse_url(location)
            .filter(|(_, prefix)| prefix.is_empty())
            .with_context(|| format!("--store {location:?}: give an S3 bucket, s3://bucket"))?;
        Ok(Some(klambda_storage::S3Settings {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            ..klambda_storage::S3Settings::new(bucket)
        }))
    }
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Set NAME to VALUE (read from stdin when VALUE is not given).
    Set {
        /// The secret's name (a-z, 0-9, '-').
        name: String,
        /// The value; omit it to read the value from stdin (out of the shell's history).
        value: Option<String>,
    },
    /// The names set (never the values).
    List,
    /// Remove NAME.
    Delete {
        /// The secret's name.
        name: String,
    },
}

#[derive(Subcommand)]
enum WebhooksCommand {
    /// Events the gateway could not publish.
    Dlq {
        #[command(subcommand)]
        command: WebhookDlqCommand,
    },
}

#[derive(Subcommand)]
enum WebhookDlqCommand {
    /// List them, oldest first.
    List,
    /// Publish one (or all) to the broker again.
    Redrive {
        /// The letter to redrive.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Redrive every letter.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List them, oldest first.
    List {
        /// Only the letters a function's Triggers could not deliver to it.
        #[arg(long, value_name = "NAME")]
        function: Option<String>,
    },
    /// Show one, with where and why its delivery failed.
    Show { id: i64 },
    /// Publish one (or all) to the broker again, and forget it once accepted.
    Redrive {
        /// The letter to redrive.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Redrive every letter.
        #[arg(long)]
        all: bool,
        /// With --all: only the letters of this function's Triggers.
        #[arg(long, value_name = "NAME", requires = "all")]
        function: Option<String>,
    },
    /// Forget every dead letter.
    Purge {
        /// Yes, forget them all.
        #[arg(long)]
        yes: bool,
    },
}

/// The command line, with `klambda up --help` listing the settings every server reads from the
/// environment (logs, traces, connection limits) after its flags.
fn parse() -> Cli {
    use clap::FromArgMatches as _;
    // `klambda up` logs text at `warn` unless told otherwise: a terminal, not a log pipeline.
    let serving: Vec<_> = klambda_harness::config::SERVING_SETTINGS
        .iter()
        .map(|setting| match setting.name {
            "KLAMBDA_LOG_FORMAT" => setting.default("text"),
            "RUST_LOG" => setting.default("warn"),
            _ => *setting,
        })
        .collect();
    let also = format!(
        "Also (environment):\n{}",
        klambda_harness::config::describe(&serving)
    );
    let matches = Cli::command()
        .mut_subcommand("up", |up| up.after_help(also))
        .get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
}

fn main() -> ExitCode {
    let cli = parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("klambda: could not start the async runtime: {error}");
            return ExitCode::from(70);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        // The reader of the output went away (`klambda events NAME | head`): it has what it
        // wanted.
        Err(error) if client::is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("klambda: {error:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Result<i32> {
    let output = match cli.output {
        Format::Text => Output::Text,
        Format::Json => Output::Json,
    };
    let token = match &cli.token {
        Some(token) => Some(token.trim().to_owned()),
        // The default data directory's, when `klambda up` runs here.
        None => std::fs::read_to_string(Path::new(".klambda").join(API_TOKEN_FILE))
            .ok()
            .map(|t| t.trim().to_owned()),
    };
    let platform = Api::new(&cli.endpoint).with_token(token);
    match cli.command {
        Command::Up {
            port,
            data_dir,
            eventing_dir,
            database_url,
            broker,
            instance,
            stages,
            event_keys,
            warm_pool,
            build_cache_dir,
            store,
        } => {
            let event_keys = event_keys
                .map(|keys| klambda_harness::signing::EventKeys::parse(&keys))
                .transpose()
                .map_err(|e| anyhow::anyhow!("KLAMBDA_EVENT_KEYS: {e} (value not shown)"))?;
            let api_token = match cli.token {
                Some(token) => token.trim().to_owned(),
                None => {
                    let path = data_dir.join(API_TOKEN_FILE);
                    klambda_harness::config::secret_file(&path)
                        .with_context(|| format!("the API token in {}", path.display()))?
                }
            };
            let settings = embedded::Settings {
                event_keys,
                api_token: Some(api_token),
                database_url,
                broker_url: broker,
                instance,
                stages,
                warm_pool,
                build_cache_dir,
                s3: store.s3()?,
                ..embedded::Settings::new(
                    data_dir,
                    embedded::find_eventing_dir(eventing_dir.as_deref())?,
                )
            };
            up(port, settings).await
        }
        Command::Init { list: true, .. } => client::init_list(output),
        Command::Init {
            dir, runtime, name, ..
        } => client::init(
            &dir.unwrap_or_default(),
            &runtime.unwrap_or_default(),
            name.as_deref(),
            output,
        ),
        Command::Deploy { dir, store } => {
            let store = store.s3()?.map(|s3| klambda_storage::s3(&s3));
            client::deploy(&platform, &dir, output, store.as_deref()).await
        }
        Command::Invoke {
            name,
            data,
            event_type,
            asynchronous: true,
        } => {
            let addressed = [format!(
                "{}={name}",
                klambda_events::external::INVOKE_FUNCTION_EXTENSION
            )];
            let event = client::Publication {
                event_type: &event_type,
                data: &data,
                source: "/klambda-cli",
                subject: Some(&name),
                extensions: &addressed,
            };
            client::publish(&platform, &event, output).await
        }
        Command::Invoke {
            name,
            data,
            event_type,
            asynchronous: false,
        } => client::invoke(&platform, &name, &data, &event_type, output).await,
        Command::Publish {
            event_type,
            data,
            source,
            subject,
            extensions,
        } => {
            let event = client::Publication {
                event_type: &event_type,
                data: &data,
                source: &source,
                subject: subject.as_deref(),
                extensions: &extensions,
            };
            client::publish(&platform, &event, output).await
        }
        Command::Status { name } => client::status(&platform, name.as_deref(), output).await,
        Command::Events { name, function } => {
            let name = name.or(function).unwrap_or_default();
            client::events(&platform, &name, output).await
        }
        Command::Logs { name } => client::logs(&platform, &name, output).await,
        Command::Replay { event_id } => client::replay(&platform, &event_id, output).await,
        Command::Delete { name } => client::delete(&platform, &name, output).await,
        Command::Dlq { command } => {
            let command = match command {
                DlqCommand::List { function } => client::Dlq::List { function },
                DlqCommand::Show { id } => client::Dlq::Show(id),
                DlqCommand::Redrive { id, function, .. } => client::Dlq::Redrive { id, function },
                DlqCommand::Purge { yes: false } => {
                    eprintln!("klambda: purge forgets every dead letter; add --yes to do it");
                    return Ok(64);
                }
                DlqCommand::Purge { yes: true } => client::Dlq::Purge,
            };
            client::dlq(&platform, command, output).await
        }
        Command::Webhooks {
            gateway,
            admin_token,
            command: WebhooksCommand::Dlq { command },
        } => {
            let command = match command {
                WebhookDlqCommand::List => client::WebhookDlq::List,
                WebhookDlqCommand::Redrive { id, .. } => client::WebhookDlq::Redrive(id),
            };
            client::webhook_dlq(&Api::new(&gateway).with_token(admin_token), command, output).await
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "klambda", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)?;
            Ok(0)
        }
        Command::Secrets { command } => {
            let command = match command {
                SecretsCommand::Set { name, value } => client::Secrets::Set(name, value),
                SecretsCommand::List => client::Secrets::List,
                SecretsCommand::Delete { name } => client::Secrets::Delete(name),
            };
            client::secrets(&platform, command, output).await
        }
        Command::Rollback { name, to } => client::rollback(&platform, &name, to, output).await,
    }
}

async fn up(port: u16, settings: embedded::Settings) -> Result<i32> {
    let (telemetry, connections) = match tracing_init() {
        Ok(initialised) => initialised,
        Err(error) => {
            eprintln!("klambda up: {error}");
            return Ok(64);
        }
    };
    let platform = embedded::Platform::start(&settings).await?;
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| {
            format!("cannot listen on {address}; is another klambda up running? Use --port")
        })?;
    let address = listener.local_addr()?;
    println!("klambda is up");
    println!("  broker ingress  http://{address}/          (POST CloudEvents)");
    println!("  status          http://{address}/functions");
    println!("  data            {}", settings.data_dir.display());
    println!("  triggers        {}", settings.eventing_dir.display());
    if let Some(s3) = &settings.s3 {
        println!(
            "  objects         s3://{}{}",
            s3.bucket,
            s3.endpoint
                .as_ref()
                .map(|e| format!(" at {e}"))
                .unwrap_or_default()
        );
    }
    match &platform.bus {
        embedded::Bus::Embedded(_) => println!("  broker          in memory"),
        embedded::Bus::Amqp { broker, .. } => println!(
            "  broker          {} (exchange {})",
            broker.address(),
            broker.topology().exchange()
        ),
    }
    if let Some(stages) = &settings.stages {
        println!("  stages          {}", stages.join(", "));
    }
    println!("deploy a function: klambda deploy examples/hello-python   (Ctrl-C stops)");
    klambda_harness::listen::serve_router(
        listener,
        server::router(platform),
        klambda_harness::serve::shutdown_signal(),
        std::time::Duration::from_secs(30),
        connections,
    )
    .await?;
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    Ok(0)
}

/// Logs and traces for `klambda up`: text on stdout unless `KLAMBDA_LOG_FORMAT` says json,
/// `RUST_LOG` (default `warn`, so the terminal stays readable for the endpoints and the
/// functions' own output), OTLP traces when `OTEL_EXPORTER_OTLP_ENDPOINT` is set: the stages'
/// telemetry settings. A bad one stops `klambda up` (exit 64) naming it.
fn tracing_init() -> Result<
    (
        Option<klambda_harness::telemetry::Telemetry>,
        klambda_harness::listen::ConnectionLimits,
    ),
    klambda_harness::ConfigError,
> {
    let defaults = klambda_harness::Settings {
        log_format: klambda_harness::config::LogFormat::Text,
        log_filter: "warn".to_owned(),
        ..klambda_harness::Settings::default()
    };
    let settings = klambda_harness::Settings::telemetry(&klambda_harness::config::Env, defaults)?;
    let telemetry = match klambda_harness::telemetry::init("klambda", &settings) {
        Ok(telemetry) => Some(telemetry),
        Err(error) => {
            eprintln!("klambda: logging is off: {error}");
            None
        }
    };
    Ok((telemetry, settings.connections))
}
