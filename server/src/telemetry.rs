//! otad's logs and traces: its configuration handed to `ota_telemetry::traces`.
//!
//! Logs go to stderr (text or JSON); when an OTLP endpoint is configured (or given by the
//! standard `OTEL_*` variables), spans are exported over OTLP/gRPC on a background batch
//! processor with a bounded queue: a missing or slow collector costs dropped spans, never a
//! blocked or crashed server. The precedence of configuration and variables is documented in
//! `ota_telemetry::traces`.

pub use ota_telemetry::traces::Telemetry;

use crate::config::{Config, LogFormat};

impl From<LogFormat> for ota_telemetry::traces::LogFormat {
    fn from(f: LogFormat) -> Self {
        match f {
            LogFormat::Text => Self::Text,
            LogFormat::Json => Self::Json,
        }
    }
}

/// The tracing part of otad's configuration.
pub fn tracing_config(config: &Config) -> ota_telemetry::traces::TracingConfig {
    ota_telemetry::traces::TracingConfig {
        log_format: config.log_format.into(),
        service_name: Some(config.service_name.clone()),
        otlp_endpoint: config.otlp_endpoint.clone(),
        sample_ratio: config.trace_sample_ratio,
        resource_attributes: config.resource_attributes.clone(),
    }
}

/// Installs the global subscriber for `config`, completed by the process's `OTEL_*` variables.
pub fn init_config(config: &Config) -> anyhow::Result<Telemetry> {
    let resolved = tracing_config(config)
        .resolve("otad")
        .map_err(|e| anyhow::anyhow!("invalid telemetry configuration:\n{}", e.join("\n")))?;
    ota_telemetry::traces::init(&resolved)
}

/// Installs the global subscriber. `RUST_LOG` overrides the default filter (`info`).
/// (The older entry point; [`init_config`] also takes the sampling ratio and resource.)
pub fn init(
    format: LogFormat,
    service_name: &str,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<Telemetry> {
    let config = Config {
        log_format: format,
        service_name: service_name.to_string(),
        otlp_endpoint: otlp_endpoint.map(str::to_string),
        ..Config::default()
    };
    init_config(&config)
}
