//! otactl: the operator's command line for otad, the OTA fleet rollout server.
//!
//! Layout, by feature: `cmd/<group>` holds everything of one command group — its clap
//! arguments, the code that resolves them into requests and talks to otad, its JSON documents
//! and its human rendering. Small groups are one file (`server`, `events`, `site`, `token`,
//! `pki`); large ones are a directory with `args.rs`, `view.rs` (JSON), `render.rs` (tables)
//! and the command code in `mod.rs` plus a file per multi-step command (`device/check.rs`,
//! `device/update.rs`, `firmware/transfer.rs`, `rollout/watch.rs`, `rollout/spec.rs`).
//!
//! Shared by all groups: `cli` (the top of the command line, global flags and the arguments
//! several groups share), `views` (the shared JSON pieces: enums, errors, actors, versions,
//! tasks), `output` (the printer and table helpers), `progress` (bars on stderr), `client` (the
//! connection, auth and error wording), `values` and `vocab` (parsing and naming single
//! values) and `keys` (signing keys).
//!
//! Exit codes: 0 success, 1 the operation ran but failed, 2 usage, connection or server error
//! (see [`EXIT_FAILED`] and [`EXIT_ERROR`]).

mod cli;
mod client;
mod cmd;
#[cfg(test)]
mod fake;
#[cfg(test)]
mod golden;
mod keys;
mod output;
mod progress;
mod values;
mod views;
mod vocab;

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _};

/// Exit code when the operation ran but failed ([`cmd::Failed`]): an update or check failed,
/// a rollout aborted, a download did not match.
const EXIT_FAILED: u8 = 1;
/// Exit code for usage errors, an unreachable otad and refused requests; the same code clap
/// uses for the usage errors it reports itself.
const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            report(&err);
            ExitCode::from(EXIT_ERROR)
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
            Ok(ExitCode::from(EXIT_FAILED))
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
