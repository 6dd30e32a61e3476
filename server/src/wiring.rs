//! Wiring: open the data directory, replay the log, start the background loops and serve gRPC
//! on a listener the caller bound. Tests call [`Otad::start`] with `127.0.0.1:0`; `main` adds
//! signals and telemetry.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use ota_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api;
use crate::app::App;
use crate::blobs::BlobStore;
use crate::config::Config;
use crate::core::{Clock, Core, SnapshotSettings};
use crate::metrics::ServerMetrics;
use crate::sessions::Sessions;
use crate::store::{EventStore, PostgresEventStore, PostgresOptions, SledEventStore, SledOptions};
use ota_telemetry::metrics::{Metrics, MetricsConfig};

/// A running otad.
#[derive(Debug)]
pub struct Otad {
    /// Shared state, for tests and embedding.
    pub app: Arc<App>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where the Prometheus endpoint (`/metrics`) listens, when `metrics_listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    metrics_serve: Option<tokio::task::JoinHandle<()>>,
    shutdown: CancellationToken,
    serve: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    dispatcher: tokio::task::JoinHandle<()>,
    rollouts: tokio::task::JoinHandle<()>,
    /// Where the projection snapshot goes at shutdown (none when snapshots are off).
    snapshot_dir: Option<std::path::PathBuf>,
}

/// Opens the event store the configuration names: PostgreSQL when `store` is set (blocking
/// until connected, the schema checked), else sled under `<data_dir>/events`. The data
/// directory is created either way (firmware images and snapshots live there).
pub fn open_store(config: &Config) -> anyhow::Result<Arc<dyn EventStore>> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    if let Some(url) = &config.store {
        // The URL may hold a password: the error does not repeat it.
        let store = PostgresEventStore::open(url, PostgresOptions::default())
            .context("cannot open the event log in PostgreSQL (the `store` setting)")?;
        info!("event log in PostgreSQL; firmware images in the data directory");
        return Ok(Arc::new(store));
    }
    let options = SledOptions {
        truncate_corrupt_tail_after: config.truncate_corrupt_tail_after,
        ..SledOptions::default()
    };
    let store =
        SledEventStore::open(config.data_dir.join("events"), options).with_context(|| {
            format!(
                "cannot open the event log in {}",
                config.data_dir.join("events").display()
            )
        })?;
    Ok(Arc::new(store))
}

/// Opens the firmware blobs and replays the log into the core (from the newest usable
/// snapshot), then checks the blobs against the catalog. Also the snapshot directory, when
/// snapshots are written.
async fn open_data(
    config: &Config,
    store: Arc<dyn EventStore>,
    clock: &Clock,
) -> anyhow::Result<(Arc<Core>, BlobStore, Option<std::path::PathBuf>)> {
    let blobs = BlobStore::open(&config.data_dir).with_context(|| {
        format!(
            "cannot open firmware blobs in {}",
            config.data_dir.display()
        )
    })?;
    let snapshots = SnapshotSettings {
        dir: snapshots_dir(config),
        every_events: config.snapshot_every_events,
    };
    let core = Core::start_with_snapshots(store, clock.clone(), Some(snapshots))
        .await
        .context("cannot replay the event log")?;
    check_blobs(&core, &blobs);
    let snapshot_dir = (config.snapshot_every_events > 0).then(|| snapshots_dir(config));
    Ok((core, blobs, snapshot_dir))
}

fn snapshots_dir(config: &Config) -> std::path::PathBuf {
    crate::snapshot::dir_of(&config.data_dir)
}

/// Removes firmware blobs no firmware refers to, and warns about firmware whose image is
/// missing from the data directory.
fn check_blobs(core: &Core, blobs: &BlobStore) {
    let state = core.read();
    let referenced = state
        .firmware
        .values()
        .map(|f| f.registered.sha256.clone())
        .collect();
    match blobs.remove_unreferenced(&referenced) {
        Ok(0) => {}
        Ok(n) => info!(removed = n, "removed firmware blobs no firmware refers to"),
        Err(e) => warn!(error = %e, "could not clean up firmware blobs"),
    }
    for fw in state.firmware.values() {
        if !blobs.contains(&fw.registered.sha256) {
            warn!(firmware.id = %fw.registered.id, "the image of this firmware is missing from the data directory");
        }
    }
}

/// Command ids stay unique across restarts: start above every id in the log and above a
/// time-based floor (ids issued but never recorded, like cancels, came from below the previous
/// run's floor plus what it issued, far less than 1,000 per millisecond).
fn first_command_id(core: &Core) -> u64 {
    let state = core.read();
    let recorded = state
        .tasks
        .values()
        .filter_map(|t| t.command_id)
        .max()
        .unwrap_or(0);
    recorded.saturating_add(1).max(
        u64::try_from(core.clock().now().as_i64())
            .unwrap_or(0)
            .saturating_mul(1000),
    )
}

/// Serves Prometheus metrics at `at` (path `/metrics`) until `shutdown`; the bound address.
async fn serve_metrics(
    at: SocketAddr,
    metrics: &ServerMetrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(at)
        .await
        .with_context(|| format!("cannot listen for metrics on {at}"))?;
    let bound = listener.local_addr()?;
    info!(addr = %bound, "serving Prometheus metrics at /metrics");
    let serve =
        ota_telemetry::prometheus::serve(listener, metrics.provider().clone(), shutdown.clone());
    Ok((bound, serve))
}

impl Otad {
    /// Replays the log and serves on `listener` until [`Otad::shutdown`].
    pub async fn start(
        config: Config,
        store: Arc<dyn EventStore>,
        clock: Clock,
        listener: TcpListener,
    ) -> anyhow::Result<Otad> {
        let addr = listener.local_addr()?;
        let tls = (config.tls.as_ref())
            .map(|files| crate::tls::load(files, clock.now().as_i64() / 1000))
            .transpose()?;
        let (core, blobs, snapshot_dir) = open_data(&config, store, &clock).await?;
        let metrics = ServerMetrics::new(Metrics::new(&MetricsConfig {
            service_name: config.service_name.clone(),
            otlp_endpoint: config.otlp_endpoint.clone(),
            resource: None,
        })?);
        core.set_observer(metrics.clone());
        let first_command_id = first_command_id(&core);
        let sessions = Arc::new(Sessions::starting_at(first_command_id));
        metrics.observe(&core, &sessions);
        let shutdown = CancellationToken::new();
        // Stops the metrics endpoint again if the start fails below.
        let started = shutdown.clone().drop_guard();
        let (metrics_addr, metrics_serve) = match config.metrics_listen {
            Some(at) => {
                let (bound, serve) = serve_metrics(at, &metrics, &shutdown).await?;
                (Some(bound), Some(serve))
            }
            None => (None, None),
        };
        let app = Arc::new(App {
            shutdown: shutdown.clone(),
            core,
            blobs,
            started_at: clock.now(),
            config,
            sessions,
            metrics: metrics.clone(),
            dispatch_wake: Arc::new(tokio::sync::Notify::new()),
            task_creation: tokio::sync::Mutex::new(()),
        });
        crate::security::prepare(&app, addr, tls.as_ref()).await?;
        let dispatcher = crate::dispatch::spawn(app.clone(), shutdown.clone());
        let rollouts = crate::rollouts::spawn(app.clone(), shutdown.clone());

        let guard = api::guard::Guard::new(app.clone(), tls.is_some());
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &tls {
            builder = builder
                .tls_config(tls.config.clone())
                .context("cannot use the TLS certificate and key (do they belong together?)")?;
        }

        let max = app.config.max_message_bytes;
        let system = api::system::SystemApi::new(app.clone(), tls.is_some(), tls.is_some());
        let router = builder
            .layer(api::rpc_trace::RpcTrace::layer())
            .layer(api::rpc_metrics::RpcMetrics::layer(metrics))
            .layer(api::call_layer::CallLayer::new(guard))
            .add_service(
                pb::firmware_service_server::FirmwareServiceServer::new(
                    api::firmware::FirmwareApi::new(app.clone()),
                )
                .max_decoding_message_size(max),
            )
            .add_service(
                pb::device_service_server::DeviceServiceServer::new(api::devices::DeviceApi::new(
                    app.clone(),
                ))
                .max_decoding_message_size(max),
            )
            .add_service(
                pb::rollout_service_server::RolloutServiceServer::new(
                    api::rollouts::RolloutApi::new(app.clone()),
                )
                .max_decoding_message_size(max),
            )
            .add_service(
                pb::event_service_server::EventServiceServer::new(api::events::EventApi::new(
                    app.clone(),
                ))
                .max_decoding_message_size(max),
            )
            .add_service(
                pb::agent_service_server::AgentServiceServer::new(api::agents::AgentApi::new(
                    app.clone(),
                ))
                .max_decoding_message_size(max),
            )
            .add_service(
                pb::access_service_server::AccessServiceServer::new(api::access::AccessApi::new(
                    app.clone(),
                ))
                .max_decoding_message_size(max),
            )
            .add_service(pb::system_service_server::SystemServiceServer::new(
                system.clone(),
            ))
            .add_service(pb::site_service_server::SiteServiceServer::new(system));
        let stop = shutdown.clone();
        let serve = tokio::spawn(
            router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                stop.cancelled().await
            }),
        );
        info!(%addr, "otad listening");
        started.disarm();
        Ok(Otad {
            app,
            addr,
            metrics_addr,
            metrics_serve,
            shutdown,
            serve,
            dispatcher,
            rollouts,
            snapshot_dir,
        })
    }

    /// Stops serving, stops the background loops, and flushes the event store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let mut serve = self.serve;
        match tokio::time::timeout(std::time::Duration::from_secs(5), &mut serve).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "gRPC server ended with an error"),
            Ok(Err(e)) => warn!(error = %e, "gRPC server task failed"),
            Err(_) => {
                warn!("requests still running 5 s after shutdown began; closing them");
                serve.abort();
            }
        }
        let _ = self.dispatcher.await;
        let _ = self.rollouts.await;
        if let Some(serve) = self.metrics_serve {
            let _ = serve.await;
        }
        let provider = self.app.metrics.provider().clone();
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        self.app
            .core
            .store()
            .flush()
            .await
            .context("final flush of the event log")?;
        if let Some(dir) = &self.snapshot_dir {
            // The next start replays nothing; a failure only makes it slower.
            if let Err(e) = self.app.core.write_snapshot(dir).await {
                warn!(error = %e, "could not write the projection snapshot at shutdown");
            }
        }
        info!("event log flushed; otad stopped");
        Ok(())
    }

    /// Serves until `signal` completes, then shuts down.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        let stop = self.shutdown.clone();
        tokio::select! {
            () = signal => {}
            () = stop.cancelled() => {}
        }
        self.shutdown().await
    }
}
