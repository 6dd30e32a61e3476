//! `otad`: parse the configuration, set up logs and traces, bind the listener, run until
//! SIGTERM or SIGINT, flush the event log, exit. otad allocates with mimalloc.

use std::process::ExitCode;

use clap::Parser;
use ota_server::config::{Config, Flags};
use ota_server::core::Clock;
use ota_server::wiring::{Otad, open_store};

/// otad's allocator. A fleet's projection is millions of small strings and views: mimalloc
/// keeps them without glibc's per-chunk header and minimum chunk size, fragments less under
/// many threads, and allocates faster (`cargo bench -p ota-server --bench fleet` shows the
/// memory and CPU per device).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status when the configuration or the command line cannot be used (`EX_USAGE` of
/// sysexits.h): nothing was started.
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let flags = Flags::parse();
    let config = match Config::load_with_env(&flags, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("otad: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    ota_telemetry::runtime::run_main("otad", async move {
        match flags.create_admin_token {
            Some(path) => create_admin_token(config, path).await,
            None => run(config).await,
        }
    })
}

async fn run(config: Config) -> anyhow::Result<()> {
    let _telemetry = ota_server::telemetry::init_config(&config)?;
    let store = open_store(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let server = Otad::start(config, store, Clock::new(), listener).await?;
    // Scripts and tests wait for this line.
    println!("otad listening on {}", server.addr);
    server.run_until(shutdown_signal()).await
}

/// `--create-admin-token FILE`: records a new admin token while otad is stopped.
async fn create_admin_token(config: Config, path: std::path::PathBuf) -> anyhow::Result<()> {
    let store = open_store(&config)?;
    let core = ota_server::core::Core::start(store.clone(), Clock::new()).await?;
    let id = ota_server::tokens::create_admin_token(&core, &path, "recovery-admin").await?;
    store.flush().await?;
    println!(
        "wrote admin token {id} to {} (mode 0600); use it as OTACTL_TOKEN, then delete the file",
        path.display()
    );
    Ok(())
}

async fn shutdown_signal() {
    ota_telemetry::signal::shutdown_signal().await;
    tracing::info!("shutdown requested");
}
