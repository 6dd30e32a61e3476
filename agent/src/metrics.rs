//! The agent's metrics (the `ota_agent_*` part of the catalog in `ota_telemetry::metrics`):
//! instruments recorded by the core ([`crate::agent`]) and gauges observed from the agent at
//! collection time. Every series carries `site`.
//!
//! Bytes sent to devices are counted in one place, from the progress the transports already
//! report (`TransferProgress::bytes_sent`), so the transports know nothing of metrics. Bytes
//! downloaded from otad are counted once the image is verified.
//!
//! Metrics are off until [`Agent::enable_metrics`] (or [`start`], which also creates the
//! provider and the `/metrics` endpoint); an agent without them records nothing.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, UpDownCounter};
use ota_domain::status::{ErrorCode, TaskError};
use ota_telemetry::metrics::{Metrics, MetricsConfig, UPDATE_SECONDS};
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::transport::{TransferProgress, TransportKind};

/// The transport label (as otad names transports).
pub fn transport_label(kind: TransportKind) -> &'static str {
    match kind {
        TransportKind::Zigbee2Mqtt => "zigbee2mqtt",
        TransportKind::Esphome => "esphome",
        TransportKind::Serial => "serial",
    }
}

/// The recorded instruments of one agent.
#[derive(Debug)]
pub struct AgentInstruments {
    site: KeyValue,
    reconnects: Counter<u64>,
    updates: Counter<u64>,
    transfer_bytes: Counter<u64>,
    transfer_duration: Histogram<f64>,
    active: UpDownCounter<i64>,
    download_bytes: Counter<u64>,
    reports_refused: Counter<u64>,
}

impl AgentInstruments {
    fn new(metrics: &Metrics, site_id: &str, kinds: &[TransportKind]) -> AgentInstruments {
        let meter = metrics.meter("ota-agent");
        let i = AgentInstruments {
            site: KeyValue::new("site", site_id.to_string()),
            reconnects: meter
                .u64_counter("ota_agent_reconnects")
                .with_description("Sessions with otad dialled again after one ended or failed.")
                .build(),
            updates: meter
                .u64_counter("ota_agent_updates")
                .with_description(
                    "Updates that ended at this site, by result and error code (0: none).",
                )
                .build(),
            transfer_bytes: meter
                .u64_counter("ota_agent_transfer_bytes")
                .with_description("Image bytes sent to devices.")
                .with_unit("By")
                .build(),
            transfer_duration: meter
                .f64_histogram("ota_agent_transfer_duration_seconds")
                .with_description("Updates from the command to the result.")
                .with_unit("s")
                .with_boundaries(UPDATE_SECONDS.to_vec())
                .build(),
            active: meter
                .i64_up_down_counter("ota_agent_active_transfers")
                .with_description("Updates running now.")
                .build(),
            download_bytes: meter
                .u64_counter("ota_agent_download_bytes")
                .with_description("Firmware bytes downloaded from otad.")
                .with_unit("By")
                .build(),
            reports_refused: meter
                .u64_counter("ota_agent_reports_refused")
                .with_description(
                    "Journaled reports otad refused, by kind; each is dropped from the journal.",
                )
                .build(),
        };
        // Series exist from the start (0 reconnects, 0 bytes, 0 active transfers per transport),
        // so dashboards and rate() see a fresh agent instead of "no data".
        i.reconnects.add(0, std::slice::from_ref(&i.site));
        i.download_bytes.add(0, std::slice::from_ref(&i.site));
        for kind in kinds {
            i.active.add(0, &i.labels(*kind));
            i.transfer_bytes.add(0, &i.labels(*kind));
        }
        i
    }

    fn labels(&self, kind: TransportKind) -> [KeyValue; 2] {
        [
            self.site.clone(),
            KeyValue::new("transport", transport_label(kind)),
        ]
    }

    /// The session is dialled again.
    pub(crate) fn reconnecting(&self) {
        self.reconnects.add(1, std::slice::from_ref(&self.site));
    }

    /// otad refused a journaled report of this kind.
    pub(crate) fn report_refused(&self, kind: &'static str) {
        self.reports_refused
            .add(1, &[self.site.clone(), KeyValue::new("kind", kind)]);
    }

    /// A verified image of `bytes` came from otad.
    pub(crate) fn downloaded(&self, bytes: u64) {
        self.download_bytes
            .add(bytes, std::slice::from_ref(&self.site));
    }

    /// An update starts: counts it active until [`Transfer::finish`].
    pub(crate) fn transfer(self: &Arc<Self>, kind: TransportKind) -> Transfer {
        self.active.add(1, &self.labels(kind));
        Transfer {
            instruments: self.clone(),
            kind,
            started: tokio::time::Instant::now(),
            finished: false,
        }
    }

    /// Counts the bytes one transfer sends to a device.
    pub(crate) fn bytes(&self, kind: TransportKind) -> BytesMeter {
        BytesMeter {
            counter: self.transfer_bytes.clone(),
            labels: self.labels(kind),
            counted: 0,
        }
    }
}

/// One running update, for the transfer metrics. Dropping it unfinished ends it as cancelled.
#[derive(Debug)]
pub(crate) struct Transfer {
    instruments: Arc<AgentInstruments>,
    kind: TransportKind,
    started: tokio::time::Instant,
    finished: bool,
}

/// The `result` and `code` labels of an outcome.
pub fn result_labels(error: Option<&TaskError>, cancelled: bool) -> (&'static str, String) {
    match error {
        None => ("success", "0".into()),
        Some(e) if cancelled => ("cancelled", e.code.code().to_string()),
        Some(e) if e.code == ErrorCode::Timeout => ("timeout", e.code.code().to_string()),
        Some(e) => ("failure", e.code.code().to_string()),
    }
}

/// Counts the image bytes of one transfer from its progress reports.
#[derive(Debug)]
pub(crate) struct BytesMeter {
    counter: Counter<u64>,
    labels: [KeyValue; 2],
    counted: u64,
}

impl BytesMeter {
    /// Counts the bytes a progress report adds to what was counted before.
    pub(crate) fn progress(&mut self, p: &TransferProgress) {
        if p.bytes_sent > self.counted {
            self.counter.add(p.bytes_sent - self.counted, &self.labels);
            self.counted = p.bytes_sent;
        }
    }
}

impl Transfer {
    /// The update ended (`error` is `None` on success).
    pub(crate) fn finish(mut self, error: Option<&TaskError>, cancelled: bool) {
        self.end(error, cancelled);
    }

    fn end(&mut self, error: Option<&TaskError>, cancelled: bool) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let i = &self.instruments;
        let [site, transport] = i.labels(self.kind);
        let (result, code) = result_labels(error, cancelled);
        i.active.add(-1, &[site.clone(), transport.clone()]);
        i.transfer_duration.record(
            self.started.elapsed().as_secs_f64(),
            &[
                site.clone(),
                transport.clone(),
                KeyValue::new("result", result),
            ],
        );
        i.updates.add(
            1,
            &[
                site,
                transport,
                KeyValue::new("result", result),
                KeyValue::new("code", code),
            ],
        );
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        if !self.finished {
            let e = TaskError::new(ErrorCode::Other, "the update task ended early");
            self.end(Some(&e), true);
        }
    }
}

impl Agent {
    /// Records this agent's metrics on `metrics` from now on: the instruments, and gauges
    /// observed at each collection (holding the agent weakly). Only the first call counts.
    pub fn enable_metrics(self: &Arc<Self>, metrics: &Metrics) {
        let kinds: Vec<TransportKind> = self.transports().iter().map(|t| t.kind()).collect();
        let instruments = Arc::new(AgentInstruments::new(metrics, self.site_id(), &kinds));
        if !self.set_instruments(instruments) {
            return;
        }
        register_gauges(metrics, Arc::downgrade(self), self.site_id());
    }
}

fn register_gauges(metrics: &Metrics, agent: Weak<Agent>, site_id: &str) {
    let meter = metrics.meter("ota-agent");
    let site = KeyValue::new("site", site_id.to_string());
    {
        let (agent, site) = (agent.clone(), site.clone());
        meter
            .u64_observable_gauge("ota_agent_server_connected")
            .with_description("1 while the session with otad is open.")
            .with_callback(move |o| {
                if let Some(a) = agent.upgrade() {
                    o.observe(u64::from(a.is_connected()), std::slice::from_ref(&site));
                }
            })
            .build();
    }
    {
        let (agent, site) = (agent.clone(), site.clone());
        meter
            .u64_observable_gauge("ota_agent_journal_pending")
            .with_description("Journaled reports otad has not acknowledged yet.")
            .with_callback(move |o| {
                if let Some(a) = agent.upgrade() {
                    o.observe(a.unacked_count() as u64, std::slice::from_ref(&site));
                }
            })
            .build();
    }
    meter
        .u64_observable_gauge("ota_agent_devices")
        .with_description("Devices the site's transports report, by reachability.")
        .with_callback(move |o| {
            let Some(a) = agent.upgrade() else {
                return;
            };
            let mut counts: std::collections::BTreeMap<(&'static str, bool), u64> =
                Default::default();
            for t in a.transports() {
                let kind = transport_label(t.kind());
                for d in t.inventory().borrow().iter() {
                    *counts.entry((kind, d.reachable)).or_default() += 1;
                }
            }
            for ((transport, reachable), n) in counts {
                o.observe(
                    n,
                    &[
                        site.clone(),
                        KeyValue::new("transport", transport),
                        KeyValue::new("reachable", if reachable { "true" } else { "false" }),
                    ],
                );
            }
        })
        .build();
}

/// An agent's metrics provider and, when asked for, its `/metrics` endpoint.
#[derive(Debug)]
pub struct AgentMetrics {
    /// Where `/metrics` listens, if it does.
    pub addr: Option<SocketAddr>,
    /// The provider (also pushing over OTLP when configured).
    pub metrics: Metrics,
    serve: Option<tokio::task::JoinHandle<()>>,
}

impl AgentMetrics {
    /// Waits until the endpoint stopped (after its shutdown token was cancelled), then pushes
    /// what is pending and stops the provider.
    pub async fn join(self) {
        if let Some(serve) = self.serve {
            let _ = serve.await;
        }
        let metrics = self.metrics;
        let _ = tokio::task::spawn_blocking(move || metrics.shutdown()).await;
    }
}

/// Enables the agent's metrics on a new provider (pushed over OTLP when `otlp_endpoint` or the
/// `OTEL_EXPORTER_OTLP_*` variables name a collector, unless `OTEL_METRICS_EXPORTER=none`) and
/// serves `GET /metrics` on `listen`, if given, until `shutdown`. For `main` and for embedders
/// (the quickstart passes `127.0.0.1:0` and reads [`AgentMetrics::addr`]).
pub async fn start(
    agent: &Arc<Agent>,
    listen: Option<SocketAddr>,
    otlp_endpoint: Option<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<AgentMetrics> {
    let metrics = Metrics::new(&MetricsConfig {
        service_name: "ota-agent".into(),
        otlp_endpoint,
        resource: None,
    })?;
    agent.enable_metrics(&metrics);
    let (addr, serve) = match listen {
        Some(listen) => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen for metrics on {listen}"))?;
            let addr = listener.local_addr()?;
            tracing::info!(%addr, "serving Prometheus metrics at /metrics");
            let serve = ota_telemetry::prometheus::serve(listener, metrics.clone(), shutdown);
            (Some(addr), Some(serve))
        }
        None => (None, None),
    };
    Ok(AgentMetrics {
        addr,
        metrics,
        serve,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_map_to_catalog_labels() {
        assert_eq!(result_labels(None, false), ("success", "0".into()));
        let t = TaskError::new(ErrorCode::Timeout, "slow");
        assert_eq!(result_labels(Some(&t), false), ("timeout", "5016".into()));
        let f = TaskError::new(ErrorCode::Offline, "gone");
        assert_eq!(result_labels(Some(&f), false), ("failure", "5012".into()));
        assert_eq!(result_labels(Some(&f), true), ("cancelled", "5012".into()));
    }
}
