//! OpenTelemetry metrics: one meter provider per service instance, OTLP push and a Prometheus
//! scrape endpoint.
//!
//! [`Metrics`] owns an `SdkMeterProvider` of its own (never the global one: tests run several
//! otads and agents in one process) with two readers:
//! - the `opentelemetry-prometheus` exporter with a `prometheus::Registry` of its own, which
//!   [`Metrics::render_prometheus`] gathers on every scrape and encodes in the Prometheus text
//!   format; [`crate::prometheus::serve`] serves it at `GET /metrics`. The exporter is
//!   configured to keep the catalog's names: no unit suffix (the names carry their units), no
//!   `target_info` family and no `otel_scope_*` labels; monotonic sums get `_total`;
//! - when an OTLP endpoint is configured (the service's config, or `OTEL_EXPORTER_OTLP_ENDPOINT`
//!   / `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`) and `OTEL_METRICS_EXPORTER` is not `none`, a
//!   `PeriodicReader` pushing over OTLP/gRPC every `OTEL_METRIC_EXPORT_INTERVAL` ms (60 s by
//!   default).
//!
//! Both readers use cumulative temporality. The services create their instruments from
//! [`Metrics::meter`] with the bucket boundaries below; this module defines no OTA instrument.
//!
//! # The metric catalog
//!
//! Prometheus names; the OpenTelemetry instrument names are the same without the `_total` of
//! counters. Units are in the names (seconds, bytes). This list is a contract with the
//! dashboards in `deploy/`: renaming a metric or a label breaks them.
//!
//! otad (`metrics_listen` / `--metrics-listen`):
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `ota_rpc_requests_total` | counter | rpc, code | gRPC requests by method (`ota.v1.DeviceService/List`; `other` for unknown paths) and gRPC code name (`Ok`, `InvalidArgument`, ...) |
//! | `ota_rpc_duration_seconds` | histogram | rpc | until the response headers (for streams: until the stream opened) |
//! | `ota_tasks` | gauge | site, transport, status | unfinished tasks by phase: queued, preparing, held, agent_preparing, waiting_for_wakeup, updating, downloaded |
//! | `ota_tasks_finished_total` | counter | site, transport, result, code | tasks that ended while this otad ran; result success, failure, timeout or cancelled (skipped tasks count as cancelled with their code); code the decimal error code, `0` for success and for cancellations without one |
//! | `ota_update_duration_seconds` | histogram | transport, result | first dispatch to the final result (tasks never dispatched are not observed) |
//! | `ota_rollouts` | gauge | state | rollouts by state: draft, running, paused, completed, aborted |
//! | `ota_rollout_stage_devices` | gauge | rollout, stage, state | devices of each stage by state pending, running, succeeded, failed, skipped; rollouts that ended more than an hour ago are left out |
//! | `ota_rollout_progress_ratio` | gauge | rollout | finished devices / all devices (same rollouts) |
//! | `ota_agents_connected` | gauge | | open agent sessions |
//! | `ota_agent_up` | gauge | site | 1 while the site's agent is connected, 0 otherwise, for every known site |
//! | `ota_devices` | gauge | site, transport, reachable | devices not removed; reachable `true`/`false` |
//! | `ota_devices_by_version` | gauge | transport, model, version | devices not removed by current version |
//! | `ota_firmware_download_bytes_total` | counter | site | firmware bytes served to agents |
//! | `ota_reports_refused_total` | counter | site, kind | journaled agent reports refused and never recorded (unknown or ended task, status out of range, oversized inventory, ...); kind inventory, progress, result, check_result or unknown |
//! | `ota_store_append_duration_seconds` | histogram | | one append, until durable |
//! | `ota_store_appended_events_total` | counter | | events appended by this process |
//! | `ota_store_log_events` | gauge | | highest durable sequence number |
//! | `ota_store_log_bytes` | gauge | | size of the event store on disk |
//! | `ota_dispatch_queue_depth` | gauge | site | queued tasks their rollout releases now, waiting to be sent |
//! | `ota_projection_lag_events` | gauge | | log head minus the projected sequence number |
//!
//! ota-agent (`metrics_listen`; every series has `site`):
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `ota_agent_server_connected` | gauge | site | 1 while the session with otad is open |
//! | `ota_agent_reconnects_total` | counter | site | sessions dialled again after one ended or failed |
//! | `ota_agent_updates_total` | counter | site, transport, result, code | updates that ended at this site (same result/code vocabulary) |
//! | `ota_agent_transfer_bytes_total` | counter | site, transport | image bytes sent to devices, from the transports' progress |
//! | `ota_agent_transfer_duration_seconds` | histogram | site, transport, result | command received to result |
//! | `ota_agent_active_transfers` | gauge | site, transport | updates running now |
//! | `ota_agent_journal_pending` | gauge | site | journaled reports otad has not acknowledged |
//! | `ota_agent_reports_refused_total` | counter | site, kind | journaled reports otad refused; each is dropped from the journal (same kind vocabulary) |
//! | `ota_agent_devices` | gauge | site, transport, reachable | devices the transports report |
//! | `ota_agent_download_bytes_total` | counter | site | firmware bytes downloaded from otad |
//!
//! What this module does not do: define OTA instruments (the services do), install a global
//! provider, or serve anything but `/metrics`.

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;

/// Bucket boundaries (seconds) for gRPC latencies: 1 ms to 10 s.
pub const RPC_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket boundaries (seconds) for whole device updates: 5 s to 6 h (sleepy Zigbee devices
/// take hours).
pub const UPDATE_SECONDS: &[f64] = &[
    5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0, 21600.0,
];

/// Bucket boundaries (seconds) for event-store appends: 50 µs to 5 s.
pub const APPEND_SECONDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    5.0,
];

/// How a service's metrics are set up.
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    /// `service.name` of the OTLP resource.
    pub service_name: String,
    /// OTLP/gRPC endpoint from the service's configuration; `None` falls back to the
    /// `OTEL_EXPORTER_OTLP_(METRICS_)ENDPOINT` variables, and without them nothing is pushed.
    pub otlp_endpoint: Option<String>,
    /// The OTLP resource (e.g. `traces::resource`, with the configured attributes); `None`:
    /// just `service.name`.
    pub resource: Option<opentelemetry_sdk::Resource>,
}

/// Decides whether to push over OTLP, from the configured endpoint and the `OTEL_*` variables
/// (passed in, so tests need no process environment). `Some(None)`: push to the endpoint the
/// exporter reads from the environment; `Some(Some(e))`: push to `e`; `None`: do not push.
pub fn otlp_target(
    configured: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Option<Option<String>> {
    let set = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    if set("OTEL_METRICS_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none")) {
        return None;
    }
    match configured.filter(|e| !e.trim().is_empty()) {
        Some(e) => Some(Some(e.to_string())),
        None if set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").is_some()
            || set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() =>
        {
            Some(None)
        }
        None => None,
    }
}

fn service(name: &str) -> opentelemetry_sdk::Resource {
    opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(name.to_string())
        .build()
}

/// One service instance's meter provider and its Prometheus registry. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    provider: SdkMeterProvider,
    registry: ::prometheus::Registry,
    otlp: bool,
}

impl Metrics {
    /// A provider with the Prometheus reader and, if [`otlp_target`] says so (reading the
    /// process environment), the OTLP push reader. Must run inside a tokio runtime when OTLP is
    /// on.
    pub fn new(config: &MetricsConfig) -> anyhow::Result<Metrics> {
        let target = otlp_target(config.otlp_endpoint.as_deref(), |k| std::env::var(k).ok());
        let resource = config
            .resource
            .clone()
            .unwrap_or_else(|| service(&config.service_name));
        Self::build(resource, target)
    }

    /// A provider with only the Prometheus reader (tests, embedders without a collector).
    pub fn prometheus_only(service_name: &str) -> Metrics {
        Self::build(service(service_name), None)
            .unwrap_or_else(|e| unreachable!("no exporter to build: {e}"))
    }

    fn build(
        resource: opentelemetry_sdk::Resource,
        otlp: Option<Option<String>>,
    ) -> anyhow::Result<Metrics> {
        let registry = ::prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_units()
            .without_target_info()
            .scope_info_enabled(false)
            .build()?;
        let mut builder = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(exporter);
        let pushing = otlp.is_some();
        if let Some(endpoint) = otlp {
            use opentelemetry_otlp::WithExportConfig as _;
            let mut exporter = opentelemetry_otlp::MetricExporter::builder().with_tonic();
            if let Some(endpoint) = endpoint {
                exporter = exporter.with_endpoint(endpoint);
            }
            let exporter = exporter.build()?;
            // The interval comes from OTEL_METRIC_EXPORT_INTERVAL (default 60 s).
            builder = builder.with_periodic_exporter(exporter);
        }
        Ok(Metrics {
            provider: builder.build(),
            registry,
            otlp: pushing,
        })
    }

    /// A meter of this provider.
    pub fn meter(&self, name: &'static str) -> Meter {
        self.provider.meter(name)
    }

    /// Whether metrics are pushed over OTLP.
    pub fn pushes_otlp(&self) -> bool {
        self.otlp
    }

    /// Collects now (running every observable callback) and renders the Prometheus text. A
    /// collection that fails (a provider already shut down) renders nothing; the exporter logs
    /// why.
    pub fn render_prometheus(&self) -> Result<String, String> {
        use ::prometheus::Encoder as _;
        let mut text = Vec::new();
        ::prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut text)
            .map_err(|e| e.to_string())?;
        String::from_utf8(text).map_err(|e| e.to_string())
    }

    /// Pushes what is pending and stops the readers. Blocks while the OTLP exporter sends; call
    /// it from `spawn_blocking` in async code.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "metrics provider shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::KeyValue;

    #[test]
    fn otlp_is_on_with_an_endpoint_unless_disabled() {
        let none = |_: &str| None;
        assert_eq!(otlp_target(None, none), None);
        assert_eq!(
            otlp_target(Some("http://c:4317"), none),
            Some(Some("http://c:4317".into()))
        );
        let env = |k: &str| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://c:4317".into());
        assert_eq!(otlp_target(None, env), Some(None));
        let off = |k: &str| (k == "OTEL_METRICS_EXPORTER").then(|| "none".into());
        assert_eq!(otlp_target(Some("http://c:4317"), off), None);
    }

    #[test]
    fn instruments_render_through_the_exporter() {
        let m = Metrics::prometheus_only("test");
        let meter = m.meter("test");
        let c = meter
            .u64_counter("jobs_done")
            .with_description("Jobs done.")
            .build();
        c.add(2, &[KeyValue::new("site", "a")]);
        c.add(1, &[KeyValue::new("site", "b")]);
        let h = meter
            .f64_histogram("job_duration_seconds")
            .with_description("Job durations.")
            .with_boundaries(vec![1.0, 10.0])
            .build();
        h.record(0.5, &[]);
        h.record(5.0, &[]);
        h.record(50.0, &[]);
        let u = meter.i64_up_down_counter("jobs_running").build();
        u.add(3, &[]);
        u.add(-1, &[]);
        let _g = meter
            .u64_observable_gauge("queue_depth")
            .with_callback(|o| o.observe(7, &[KeyValue::new("site", "a")]))
            .build();
        let expected = "\
# HELP job_duration_seconds Job durations.
# TYPE job_duration_seconds histogram
job_duration_seconds_bucket{le=\"1\"} 1
job_duration_seconds_bucket{le=\"10\"} 2
job_duration_seconds_bucket{le=\"+Inf\"} 3
job_duration_seconds_sum 55.5
job_duration_seconds_count 3
# HELP jobs_done_total Jobs done.
# TYPE jobs_done_total counter
jobs_done_total{site=\"a\"} 2
jobs_done_total{site=\"b\"} 1
# TYPE jobs_running gauge
jobs_running 2
# TYPE queue_depth gauge
queue_depth{site=\"a\"} 7
";
        assert_eq!(m.render_prometheus().unwrap(), expected);
        // A second scrape of unchanged state is identical (cumulative, stable order).
        assert_eq!(m.render_prometheus().unwrap(), expected);
        m.shutdown();
    }

    #[test]
    fn catalog_names_survive_the_exporter() {
        // Units in the names and in the instruments, as the services declare them: no unit
        // suffix is appended, no target_info family or otel_scope_* label is added, and
        // counters get exactly one `_total`.
        let m = Metrics::prometheus_only("otad");
        let meter = m.meter("otad");
        let h = meter
            .f64_histogram("ota_rpc_duration_seconds")
            .with_unit("s")
            .with_boundaries(vec![1.0])
            .build();
        h.record(0.5, &[KeyValue::new("rpc", "r")]);
        let b = meter
            .u64_counter("ota_firmware_download_bytes")
            .with_unit("By")
            .build();
        b.add(3, &[KeyValue::new("site", "a")]);
        let expected = "\
# TYPE ota_firmware_download_bytes_total counter
ota_firmware_download_bytes_total{site=\"a\"} 3
# TYPE ota_rpc_duration_seconds histogram
ota_rpc_duration_seconds_bucket{rpc=\"r\",le=\"1\"} 1
ota_rpc_duration_seconds_bucket{rpc=\"r\",le=\"+Inf\"} 1
ota_rpc_duration_seconds_sum{rpc=\"r\"} 0.5
ota_rpc_duration_seconds_count{rpc=\"r\"} 1
";
        assert_eq!(m.render_prometheus().unwrap(), expected);
        m.shutdown();
    }

    #[test]
    fn providers_are_independent() {
        let a = Metrics::prometheus_only("a");
        let b = Metrics::prometheus_only("b");
        a.meter("t").u64_counter("only_in_a").build().add(1, &[]);
        assert!(a.render_prometheus().unwrap().contains("only_in_a_total 1"));
        assert!(!b.render_prometheus().unwrap().contains("only_in_a"));
    }
}
