//! The runtime every service binary runs in: `main` builds a multi-threaded tokio runtime,
//! runs the binary's future on it and turns the outcome into the exit status.
//!
//! Not telemetry: it lives here, like [`crate::signal`], because otad, the agent and the
//! quickstart all depend on this crate already. It does not parse arguments or read
//! configuration; a usage error (exit 64) is each binary's business before it calls [`run_main`].

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

/// Runs `main` on a new multi-threaded runtime: success is exit 0; a runtime that cannot start
/// or an error from `main` is written to stderr as `<name>: <error>` (the error's alternate form,
/// so an `anyhow` error shows its causes) and is exit 1.
pub fn run_main<E: Display>(name: &str, main: impl Future<Output = Result<(), E>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
