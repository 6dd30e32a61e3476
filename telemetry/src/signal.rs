//! The shutdown signal every service binary waits for: Ctrl-C, or SIGTERM on Unix.
//!
//! Not telemetry: it lives here because otad, the agent and the quickstart all depend on this
//! crate already. It only waits; what stopping means is each binary's business.

/// Resolves on Ctrl-C or, on Unix, SIGTERM (when SIGTERM cannot be watched, on Ctrl-C only).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
