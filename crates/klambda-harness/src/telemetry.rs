//! Logs and traces: structured JSON logs on stdout (event id, type, function and build id come
//! from the request span), and OTLP/gRPC traces when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;

use crate::config::{LogFormat, Settings};

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("the OTLP trace exporter could not start: {0}")]
    Exporter(String),
    /// A global subscriber was already installed.
    #[error("logging was already initialised: {0}")]
    AlreadyInitialised(String),
}

/// Keeps the trace pipeline alive; [`Telemetry::shutdown`] flushes pending spans.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops trace export.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "trace exporter did not shut down cleanly");
        }
    }
}

/// Installs the global log subscriber (logs on stdout) and, when configured, the OTLP trace
/// exporter. Must run inside a Tokio runtime when OTLP is configured.
pub fn init(service: &'static str, settings: &Settings) -> Result<Telemetry, TelemetryError> {
    let (subscriber, telemetry) = subscriber(service, settings, std::io::stdout)?;
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|e| TelemetryError::AlreadyInitialised(e.to_string()))?;
    Ok(telemetry)
}

/// The subscriber [`init`] installs, writing logs to `writer` instead of stdout, without
/// installing it: for a scoped default (`tracing::subscriber::set_default`), as the telemetry
/// overhead benchmark uses it. Must run inside a Tokio runtime when OTLP is configured.
pub fn subscriber<W>(
    service: &'static str,
    settings: &Settings,
    writer: W,
) -> Result<(impl tracing::Subscriber + Send + Sync + 'static, Telemetry), TelemetryError>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Clone + Send + Sync + 'static,
{
    let provider = match &settings.otlp_endpoint {
        None => None,
        Some(endpoint) => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.as_str());
            if let Some(headers) = &settings.otlp_headers {
                let mut map = http::HeaderMap::new();
                for pair in headers.expose().split(',') {
                    if let Some((key, value)) = pair.split_once('=')
                        && let (Ok(key), Ok(value)) = (
                            http::HeaderName::from_bytes(
                                key.trim().to_ascii_lowercase().as_bytes(),
                            ),
                            http::HeaderValue::from_str(value.trim()),
                        )
                    {
                        map.insert(key, value);
                    }
                }
                let metadata =
                    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(map);
                builder = builder.with_metadata(metadata);
            }
            let exporter = builder
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(Resource::builder().with_service_name(service).build())
                    .build(),
            )
        }
    };
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    let filter =
        EnvFilter::try_new(&settings.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = (settings.log_format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(writer.clone())
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
    });
    let text = (settings.log_format == LogFormat::Text)
        .then(|| tracing_subscriber::fmt::layer().with_writer(writer));
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(text)
        .with(otel_layer);
    Ok((subscriber, Telemetry { provider }))
}
