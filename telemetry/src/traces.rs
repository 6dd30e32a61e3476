//! Logs and OpenTelemetry traces over OTLP, and W3C trace-context propagation.
//!
//! [`init`] installs the process's `tracing` subscriber: logs to stderr (text or JSON lines,
//! filtered by `RUST_LOG`, default `info`), and, when an OTLP endpoint is configured, every
//! span exported over OTLP/gRPC through `tracing-opentelemetry`. It returns a [`Telemetry`]
//! guard that flushes queued spans when dropped.
//!
//! # Configuration and the standard variables
//! A service fills a [`TracingConfig`] from its own configuration and calls
//! [`TracingConfig::resolve`], which completes it with the standard OpenTelemetry variables.
//! **What the service's configuration sets explicitly wins over the environment**; the
//! variables fill what it leaves unset:
//!
//! | setting | config | variables, in order |
//! |---|---|---|
//! | endpoint | `otlp_endpoint` | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT` |
//! | service name | `service_name` | `OTEL_SERVICE_NAME`, then the service's default |
//! | resource | `resource_attributes` (per key) | `OTEL_RESOURCE_ATTRIBUTES` |
//! | sampling | `sample_ratio` (parent-based ratio) | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` |
//!
//! Two variables are switches that turn export off whatever the configuration says, so an
//! operator can silence a service without editing its file: `OTEL_SDK_DISABLED=true` and
//! `OTEL_TRACES_EXPORTER=none`. Batch tuning comes from the SDK's own `OTEL_BSP_*` variables
//! (for example `OTEL_BSP_SCHEDULE_DELAY`, default 5000 ms). Malformed variables are ignored
//! with a warning in the log, as the specification asks; malformed configuration is an error.
//!
//! # Sampling
//! The default sampler is parent-based: a span with a sampled (or unsampled) remote parent
//! follows that decision, and only root spans are sampled by the ratio (always, by default). So
//! when otad decides to trace a command, the agent traces the work it does for it.
//!
//! # Never blocking the service
//! Spans go to a batch processor with a bounded queue (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2048)
//! running on its own thread: a missing or slow collector costs dropped spans, never a blocked
//! request. The final flush on drop is bounded too ([`SHUTDOWN_TIMEOUT`]).
//!
//! # Propagation
//! [`inject`] and [`extract`] turn a span's context into W3C `traceparent`/`tracestate` pairs
//! and back, for gRPC metadata ([`inject_metadata`], [`extract_metadata`], [`extract_headers`])
//! and for messages that carry a map (otad's commands to agents). [`set_parent`] makes a span
//! continue a received trace. These work only while the OpenTelemetry layer is installed (an
//! endpoint is configured); otherwise they carry nothing, and spans start their own traces.
//!
//! This module knows nothing about OTA: the services define their spans and attributes.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::Deserialize;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// `OTEL_EXPORTER_OTLP_ENDPOINT`: the collector for every signal.
pub const ENV_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the collector for traces (wins over the general one).
pub const ENV_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// `OTEL_SERVICE_NAME`.
pub const ENV_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// `OTEL_RESOURCE_ATTRIBUTES`: `key=value,key=value`, values percent-encoded.
pub const ENV_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
/// `OTEL_TRACES_SAMPLER`.
pub const ENV_TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
/// `OTEL_TRACES_SAMPLER_ARG`: the ratio of the `*traceidratio` samplers.
pub const ENV_TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
/// `OTEL_SDK_DISABLED`: `true` turns export off.
pub const ENV_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
/// `OTEL_TRACES_EXPORTER`: `none` turns export off; `otlp` (the default) is the only exporter.
pub const ENV_TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";

/// The W3C header that carries the trace id, parent span id and sampling flag.
pub const TRACEPARENT: &str = "traceparent";

/// Longest the final flush may take when the guard is dropped.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// JSON lines.
    Json,
}

/// What a service's own configuration says about logs and traces; unset fields are filled from
/// the standard variables by [`TracingConfig::resolve`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TracingConfig {
    /// Log output format.
    pub log_format: LogFormat,
    /// `service.name` of the resource.
    pub service_name: Option<String>,
    /// OTLP/gRPC endpoint, e.g. `http://127.0.0.1:4317`.
    pub otlp_endpoint: Option<String>,
    /// Share of new traces (root spans) to sample, 0.0 to 1.0; spans with a parent follow it.
    pub sample_ratio: Option<f64>,
    /// Extra resource attributes (`deployment.environment`, `ota.site.id`, ...); each key wins
    /// over the same key in `OTEL_RESOURCE_ATTRIBUTES`.
    pub resource_attributes: BTreeMap<String, String>,
}

/// The same configuration under the name the services' `[telemetry]` sections use.
pub type TelemetryConfig = TracingConfig;

/// The sampler of root spans.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RootSampler {
    /// Every trace.
    AlwaysOn,
    /// No trace.
    AlwaysOff,
    /// This share of traces, by trace id.
    Ratio(f64),
}

/// The sampler: root decision, and whether spans with a parent follow the parent instead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerChoice {
    /// Spans with a parent (local or remote) follow its sampling decision.
    pub parent_based: bool,
    /// How spans without a parent are sampled.
    pub root: RootSampler,
}

impl Default for SamplerChoice {
    fn default() -> Self {
        Self {
            parent_based: true,
            root: RootSampler::AlwaysOn,
        }
    }
}

impl SamplerChoice {
    fn sdk(self) -> Sampler {
        let root = match self.root {
            RootSampler::AlwaysOn => Sampler::AlwaysOn,
            RootSampler::AlwaysOff => Sampler::AlwaysOff,
            RootSampler::Ratio(r) => Sampler::TraceIdRatioBased(r),
        };
        if self.parent_based {
            Sampler::ParentBased(Box::new(root))
        } else {
            root
        }
    }
}

/// Configuration and environment combined: what [`init`] sets up.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedTracing {
    /// Log output format.
    pub log_format: LogFormat,
    /// `service.name`.
    pub service_name: String,
    /// Where spans go; `None`: no export (and no trace context to propagate).
    pub endpoint: Option<String>,
    /// The sampler.
    pub sampler: SamplerChoice,
    /// Resource attributes besides `service.name`.
    pub resource_attributes: BTreeMap<String, String>,
    /// Ignored variables, to be logged once logging runs.
    pub warnings: Vec<String>,
}

impl TracingConfig {
    /// Completes the configuration from the process environment; see [`Self::resolve_with`].
    pub fn resolve(&self, default_service_name: &str) -> Result<ResolvedTracing, Vec<String>> {
        self.resolve_with(default_service_name, |k| std::env::var(k).ok())
    }

    /// Completes the configuration from `env` (a variable lookup, so tests need not touch the
    /// process environment). Explicit settings win; see the module documentation. Errors: every
    /// problem of the explicit configuration, one per line.
    pub fn resolve_with(
        &self,
        default_service_name: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ResolvedTracing, Vec<String>> {
        let env = |k: &str| {
            env(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut errors = Vec::new();
        let mut warnings = Vec::new();

        let service_name = self
            .service_name
            .clone()
            .filter(|s| !s.trim().is_empty())
            .or_else(|| env(ENV_SERVICE_NAME))
            .unwrap_or_else(|| default_service_name.to_string());

        let mut endpoint = self
            .otlp_endpoint
            .clone()
            .filter(|s| !s.trim().is_empty())
            .or_else(|| env_otlp_endpoint(env));
        if let Some(e) = &endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            errors.push(format!(
                "otlp_endpoint {e:?} must be a URL like http://127.0.0.1:4317"
            ));
        }
        if env(ENV_SDK_DISABLED).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            endpoint = None;
        }
        match env(ENV_TRACES_EXPORTER).map(|v| v.to_ascii_lowercase()) {
            None => {}
            Some(v) if v == "otlp" => {}
            Some(v) if v == "none" => endpoint = None,
            Some(v) => warnings.push(format!(
                "{ENV_TRACES_EXPORTER}={v} is not supported here; traces go over OTLP/gRPC"
            )),
        }

        let sampler = match self.sample_ratio {
            Some(r) if (0.0..=1.0).contains(&r) => SamplerChoice {
                parent_based: true,
                root: RootSampler::Ratio(r),
            },
            Some(r) => {
                errors.push(format!("trace sample ratio {r} is not between 0.0 and 1.0"));
                SamplerChoice::default()
            }
            None => env_sampler(env, &mut warnings),
        };

        let mut resource_attributes = match env(ENV_RESOURCE_ATTRIBUTES) {
            Some(v) => parse_resource_attributes(&v, &mut warnings),
            None => BTreeMap::new(),
        };
        for (k, v) in &self.resource_attributes {
            if k.trim().is_empty() {
                errors.push("resource attribute with an empty key".into());
                continue;
            }
            resource_attributes.insert(k.clone(), v.clone());
        }
        // `service.name` has its own setting; an attribute of that name would fight it.
        if resource_attributes.remove("service.name").is_some() {
            warnings.push(
                "the resource attribute service.name is ignored: use the service name setting"
                    .into(),
            );
        }

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ResolvedTracing {
            log_format: self.log_format,
            service_name,
            endpoint,
            sampler,
            resource_attributes,
            warnings,
        })
    }
}

/// The OTLP endpoint for traces from the standard variables: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
/// else `OTEL_EXPORTER_OTLP_ENDPOINT` (for gRPC both are used as they are).
pub fn env_otlp_endpoint(env: impl Fn(&str) -> Option<String>) -> Option<String> {
    let get = |k: &str| {
        env(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    get(ENV_OTLP_TRACES_ENDPOINT).or_else(|| get(ENV_OTLP_ENDPOINT))
}

/// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`; unknown or malformed values fall back to
/// the default (parent-based, always on) with a warning.
fn env_sampler(env: impl Fn(&str) -> Option<String>, warnings: &mut Vec<String>) -> SamplerChoice {
    let Some(name) = env(ENV_TRACES_SAMPLER) else {
        return SamplerChoice::default();
    };
    let mut ratio = || match env(ENV_TRACES_SAMPLER_ARG) {
        None => 1.0,
        Some(arg) => match arg.parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => r,
            _ => {
                warnings.push(format!(
                    "{ENV_TRACES_SAMPLER_ARG}={arg:?} is not a ratio between 0 and 1; using 1.0"
                ));
                1.0
            }
        },
    };
    let (parent_based, root) = match name.to_ascii_lowercase().as_str() {
        "always_on" => (false, RootSampler::AlwaysOn),
        "always_off" => (false, RootSampler::AlwaysOff),
        "traceidratio" => (false, RootSampler::Ratio(ratio())),
        "parentbased_always_on" => (true, RootSampler::AlwaysOn),
        "parentbased_always_off" => (true, RootSampler::AlwaysOff),
        "parentbased_traceidratio" => (true, RootSampler::Ratio(ratio())),
        other => {
            warnings.push(format!(
                "{ENV_TRACES_SAMPLER}={other:?} is not supported; using parentbased_always_on"
            ));
            return SamplerChoice::default();
        }
    };
    SamplerChoice { parent_based, root }
}

/// `key=value,key=value` with percent-encoded values (W3C Baggage octets); malformed entries
/// are skipped with a warning.
fn parse_resource_attributes(s: &str, warnings: &mut Vec<String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match entry.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => match percent_decode(v.trim()) {
                Some(v) => {
                    out.insert(k.trim().to_string(), v);
                }
                None => warnings.push(format!(
                    "{ENV_RESOURCE_ATTRIBUTES}: the value of {:?} is not valid percent-encoding; skipped",
                    k.trim()
                )),
            },
            _ => warnings.push(format!(
                "{ENV_RESOURCE_ATTRIBUTES}: {entry:?} is not key=value; skipped"
            )),
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Keeps the exporter alive; dropping it flushes what is queued (within [`SHUTDOWN_TIMEOUT`]).
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
        }
    }
}

fn default_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,h2=warn,hyper=warn,tower=warn,sled=warn,rumqttc=warn")
    })
}

/// Installs the global subscriber: logs to stderr, and the OpenTelemetry layer when
/// `resolved.endpoint` is set. Call it inside the Tokio runtime (the OTLP/gRPC client lives on
/// it). `RUST_LOG` overrides the default log filter (`info`); spans are filtered the same way.
/// Fails if a subscriber is already installed.
pub fn init(resolved: &ResolvedTracing) -> anyhow::Result<Telemetry> {
    let fmt_layer = match resolved.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(default_filter())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(default_filter())
            .boxed(),
    };
    let mut telemetry = Telemetry::default();
    let otel_layer = match &resolved.endpoint {
        Some(endpoint) => {
            let provider = tracer_provider(resolved, endpoint)?;
            let tracer = provider.tracer(resolved.service_name.clone());
            telemetry.provider = Some(provider);
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(default_filter()),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|e| anyhow::anyhow!("tracing already initialised: {e}"))?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    for w in &resolved.warnings {
        tracing::warn!("{w}");
    }
    if let Some(endpoint) = &resolved.endpoint {
        tracing::info!(%endpoint, service.name = %resolved.service_name, sampler = ?resolved.sampler, "exporting traces over OTLP/gRPC");
    }
    Ok(telemetry)
}

/// The OpenTelemetry resource of a resolved configuration.
pub fn resource(resolved: &ResolvedTracing) -> opentelemetry_sdk::Resource {
    // Empty builder: the SDK's own environment detectors would apply OTEL_SERVICE_NAME and
    // OTEL_RESOURCE_ATTRIBUTES over the configuration, which `resolve` already merged.
    opentelemetry_sdk::Resource::builder_empty()
        .with_detector(Box::new(
            opentelemetry_sdk::resource::TelemetryResourceDetector,
        ))
        .with_attributes(
            resolved
                .resource_attributes
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .with_service_name(resolved.service_name.clone())
        .build()
}

fn tracer_provider(
    resolved: &ResolvedTracing,
    endpoint: &str,
) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(resolved.sampler.sdk())
        .with_resource(resource(resolved))
        .build())
}

// === propagation ===

/// The W3C trace context of `span` (`traceparent`, and `tracestate` when there is one); empty
/// when the span is not recorded by OpenTelemetry (no exporter, or the span is disabled).
pub fn inject(span: &tracing::Span) -> HashMap<String, String> {
    inject_context(&span.context())
}

/// The W3C trace context of an OpenTelemetry context.
pub fn inject_context(cx: &Context) -> HashMap<String, String> {
    let mut map = HashMap::new();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(cx, &mut map);
    }
    map
}

/// The remote context in a carrier such as `ServerMessage.trace_context`; a context without a
/// span when the carrier holds no valid `traceparent`.
pub fn extract(carrier: &HashMap<String, String>) -> Context {
    TraceContextPropagator::new().extract_with_context(&Context::new(), carrier)
}

/// Makes `span` continue the trace of `cx` (call before the span is first entered). Does
/// nothing when `cx` has no valid span or no OpenTelemetry layer is installed.
pub fn set_parent(span: &tracing::Span, cx: Context) {
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// [`set_parent`] from a carrier.
pub fn set_parent_from(span: &tracing::Span, carrier: &HashMap<String, String>) {
    set_parent(span, extract(carrier));
}

/// The trace id of `span` as 32 hex digits, when it has one.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Adds `span`'s W3C trace context to outgoing gRPC metadata (a request the callee can join).
pub fn inject_metadata(span: &tracing::Span, metadata: &mut tonic::metadata::MetadataMap) {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(metadata));
    }
}

/// The caller's trace context in incoming gRPC metadata.
pub fn extract_metadata(metadata: &tonic::metadata::MetadataMap) -> Context {
    extract_headers(metadata.as_ref())
}

/// The caller's trace context in HTTP/2 request headers (for a tower layer in front of tonic).
pub fn extract_headers(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract_with_context(&Context::new(), &HeaderExtractor(headers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceId;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    /// A subscriber with the OpenTelemetry layer and no exporter, for this thread only.
    fn with_otel<R>(f: impl FnOnce() -> R) -> R {
        let provider = SdkTracerProvider::builder()
            .with_sampler(SamplerChoice::default().sdk())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f)
    }

    #[test]
    fn defaults_without_environment() {
        let r = TracingConfig::default()
            .resolve_with("otad", env_of(&[]))
            .unwrap();
        assert_eq!(r.service_name, "otad");
        assert_eq!(r.endpoint, None);
        assert_eq!(r.sampler, SamplerChoice::default());
        assert!(r.sampler.parent_based);
        assert!(r.resource_attributes.is_empty());
        assert!(r.warnings.is_empty());
    }

    #[test]
    fn environment_fills_what_the_config_leaves_unset() {
        let env = env_of(&[
            (ENV_OTLP_ENDPOINT, "http://collector:4317"),
            (ENV_SERVICE_NAME, "otad-eu"),
            (
                ENV_RESOURCE_ATTRIBUTES,
                "deployment.environment=prod,team=fleet%20ops",
            ),
            (ENV_TRACES_SAMPLER, "parentbased_traceidratio"),
            (ENV_TRACES_SAMPLER_ARG, "0.25"),
        ]);
        let r = TracingConfig::default().resolve_with("otad", &env).unwrap();
        assert_eq!(r.endpoint.as_deref(), Some("http://collector:4317"));
        assert_eq!(r.service_name, "otad-eu");
        assert_eq!(r.resource_attributes["deployment.environment"], "prod");
        assert_eq!(r.resource_attributes["team"], "fleet ops");
        assert_eq!(
            r.sampler,
            SamplerChoice {
                parent_based: true,
                root: RootSampler::Ratio(0.25)
            }
        );

        // The traces endpoint wins over the general one.
        let traces = env_of(&[
            (ENV_OTLP_ENDPOINT, "http://general:4317"),
            (ENV_OTLP_TRACES_ENDPOINT, "http://traces:4317"),
        ]);
        let r = TracingConfig::default()
            .resolve_with("otad", traces)
            .unwrap();
        assert_eq!(r.endpoint.as_deref(), Some("http://traces:4317"));
    }

    #[test]
    fn explicit_config_wins_over_environment() {
        let env = env_of(&[
            (ENV_OTLP_ENDPOINT, "http://env:4317"),
            (ENV_SERVICE_NAME, "from-env"),
            (ENV_RESOURCE_ATTRIBUTES, "ota.site.id=env-site,region=eu"),
            (ENV_TRACES_SAMPLER, "always_off"),
        ]);
        let config = TracingConfig {
            log_format: LogFormat::Json,
            service_name: Some("ota-agent".into()),
            otlp_endpoint: Some("http://config:4317".into()),
            sample_ratio: Some(0.5),
            resource_attributes: [("ota.site.id".to_string(), "home".to_string())].into(),
        };
        let r = config.resolve_with("x", env).unwrap();
        assert_eq!(r.log_format, LogFormat::Json);
        assert_eq!(r.service_name, "ota-agent");
        assert_eq!(r.endpoint.as_deref(), Some("http://config:4317"));
        assert_eq!(r.resource_attributes["ota.site.id"], "home");
        assert_eq!(r.resource_attributes["region"], "eu");
        assert_eq!(
            r.sampler,
            SamplerChoice {
                parent_based: true,
                root: RootSampler::Ratio(0.5)
            }
        );
    }

    #[test]
    fn switches_turn_export_off_even_with_a_configured_endpoint() {
        let config = TracingConfig {
            otlp_endpoint: Some("http://config:4317".into()),
            ..TracingConfig::default()
        };
        for env in [
            env_of(&[(ENV_SDK_DISABLED, "true")]),
            env_of(&[(ENV_TRACES_EXPORTER, "none")]),
        ] {
            assert_eq!(config.resolve_with("otad", env).unwrap().endpoint, None);
        }
        let kept = config
            .resolve_with("otad", env_of(&[(ENV_SDK_DISABLED, "false")]))
            .unwrap();
        assert!(kept.endpoint.is_some());
    }

    #[test]
    fn bad_variables_warn_and_bad_config_fails() {
        let env = env_of(&[
            (ENV_TRACES_SAMPLER, "sometimes"),
            (ENV_RESOURCE_ATTRIBUTES, "novalue,k=%zz,ok=1,service.name=x"),
            (ENV_TRACES_EXPORTER, "zipkin"),
        ]);
        let r = TracingConfig::default().resolve_with("otad", env).unwrap();
        assert_eq!(r.sampler, SamplerChoice::default());
        assert_eq!(
            r.resource_attributes.len(),
            1,
            "{:?}",
            r.resource_attributes
        );
        assert_eq!(r.warnings.len(), 5, "{:?}", r.warnings);

        let bad = TracingConfig {
            sample_ratio: Some(1.5),
            otlp_endpoint: Some("collector:4317".into()),
            ..TracingConfig::default()
        };
        let errors = bad.resolve_with("otad", env_of(&[])).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
    }

    #[test]
    fn inject_then_extract_keeps_the_trace() {
        with_otel(|| {
            let parent = tracing::info_span!("otad.dispatch");
            let carrier = inject(&parent);
            let tp = &carrier[TRACEPARENT];
            let trace = trace_id(&parent).unwrap();
            assert!(tp.starts_with(&format!("00-{trace}-")), "{tp}");
            assert!(tp.ends_with("-01"), "sampled: {tp}");

            // The receiving side: a new root span continues the remote trace.
            let child = tracing::info_span!(parent: None, "agent.task");
            set_parent_from(&child, &carrier);
            assert_eq!(trace_id(&child).as_deref(), Some(trace.as_str()));

            let cx = extract(&carrier);
            assert_eq!(
                cx.span().span_context().trace_id(),
                TraceId::from_hex(&trace).unwrap()
            );
            assert!(cx.span().span_context().is_remote());
        });
    }

    #[test]
    fn metadata_roundtrip_and_empty_carriers() {
        with_otel(|| {
            let span = tracing::info_span!("download");
            let mut md = tonic::metadata::MetadataMap::new();
            inject_metadata(&span, &mut md);
            assert!(md.get(TRACEPARENT).is_some());
            let cx = extract_metadata(&md);
            assert_eq!(
                cx.span().span_context().trace_id().to_string(),
                trace_id(&span).unwrap()
            );

            // Nothing to continue: the span keeps its own new trace.
            let lone = tracing::info_span!(parent: None, "lone");
            set_parent_from(&lone, &HashMap::new());
            assert!(trace_id(&lone).is_some());
            assert_ne!(trace_id(&lone), trace_id(&span));
        });
        // Without the OpenTelemetry layer there is nothing to inject.
        let span = tracing::info_span!("plain");
        assert!(inject(&span).is_empty());
    }
}
