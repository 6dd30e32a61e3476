//! otactl: the operator's command line for otad, the OTA fleet rollout server.
//!
//! Layout: `cli` is the raw clap command line; `cmd/*` resolve it into typed requests and run
//! them; `client` owns the connection, auth and error wording; `views` are the JSON shapes,
//! `human` the tables drawn from them, `output` the printer; `progress` draws bars on stderr;
//! `spec` reads rollout specs; `keys` handles signing keys; `values` and `vocab` parse and
//! name single values.
//!
//! Exit codes: 0 success, 1 the operation ran but failed, 2 usage, connection or server error.

mod cli;
mod client;
mod cmd;
#[cfg(test)]
mod fake;
#[cfg(test)]
mod golden;
mod human;
mod keys;
mod output;
mod progress;
mod spec;
mod values;
mod views;
mod vocab;

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _};

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            report(&err);
            ExitCode::from(2)
        }
    }
}

/// Parses the command line, runs the command, and turns its outcome into an exit code.
fn run() -> anyhow::Result<ExitCode> {
    // clap prints usage errors itself and exits with 2 (0 for --help and --version).
    let matches = cli::Cli::command().get_matches();
    let command = cli::command_path(&matches);
    let cli = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match runtime.block_on(cmd::run(cli, command)) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(err) if is_broken_pipe(&err) => Ok(ExitCode::SUCCESS),
        Err(err) if err.downcast_ref::<cmd::Failed>().is_some() => {
            report(&err);
            Ok(ExitCode::from(1))
        }
        Err(err) => Err(err),
    }
}

/// One line on stderr.
fn report(err: &anyhow::Error) {
    eprintln!("error: {}", client::one_line(&format!("{err:#}")));
}

/// `otactl ... | head` closes stdout early; that is not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
