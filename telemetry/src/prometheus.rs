//! The `/metrics` HTTP endpoint: the Prometheus text exposition format (version 0.0.4) of a
//! service's [`Metrics`].
//!
//! The text comes from `opentelemetry-prometheus` and the `prometheus` crate's text encoder (see
//! [`crate::metrics`] for how the exporter is configured to keep the catalog's names: no unit
//! suffixes, no `target_info`, no `otel_scope_*` labels; counters get `_total`). Families are
//! sorted by name and series by their label values, so two scrapes of unchanged state are byte
//! for byte the same. Integer values are rendered through `f64`, as Prometheus stores them.
//!
//! [`serve`] answers `GET /metrics` with content type `text/plain; version=0.0.4;
//! charset=utf-8`, and nothing else.

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The content type of the exposition format served.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `GET /metrics` on `listener` until `shutdown` is cancelled. Each scrape collects
/// from `metrics` (running the observable callbacks) and renders the result.
pub fn serve(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                // Callbacks read the services' state under short locks; keep them off the
                // reactor threads anyway.
                let body = tokio::task::spawn_blocking(move || metrics.render_prometheus())
                    .await
                    .unwrap_or_else(|e| Err(format!("collection panicked: {e}")));
                match body {
                    Ok(text) => (
                        axum::http::StatusCode::OK,
                        [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
                        text,
                    ),
                    Err(e) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; charset=utf-8",
                        )],
                        format!("cannot collect metrics: {e}\n"),
                    ),
                }
            }
        }),
    );
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the metrics endpoint stopped with an error");
        }
    })
}
