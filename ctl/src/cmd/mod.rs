//! The command groups, one module each: its clap arguments, the pure `resolve` functions that
//! turn them into typed requests (unit-tested), the calls to otad, its JSON documents and its
//! human rendering, printed through the [`Printer`].
//!
//! A command returns `Ok(())` on success, [`Failed`] when the operation ran but did not
//! succeed (exit code 1), and any other error for usage, connection and server problems
//! (exit code 2).

pub mod device;
pub mod events;
pub mod firmware;
pub mod pki;
pub mod rollout;
pub mod server;
pub mod site;
pub mod token;

use tokio::sync::OnceCell;

use crate::cli::{Cli, Command};
use crate::client::{Api, Settings};
use crate::output::Printer;

/// The operation ran but failed: printed as one line on stderr, exit code 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Failed(pub String);

/// What every command gets: settings, the printer, and a lazily opened connection.
#[derive(Debug)]
pub struct Ctx {
    /// Connection settings.
    pub settings: Settings,
    /// Where results go.
    pub out: Printer,
    api: OnceCell<Api>,
}

impl Ctx {
    /// A context; nothing is dialled yet.
    pub fn new(settings: Settings, out: Printer) -> Self {
        Self {
            settings,
            out,
            api: OnceCell::new(),
        }
    }

    /// The connection, opened on first use (after the arguments were resolved).
    pub async fn api(&self) -> anyhow::Result<&Api> {
        self.api
            .get_or_try_init(|| Api::connect(&self.settings))
            .await
    }
}

/// Runs a parsed command line; `command` names it ("rollout list") for messages.
pub async fn run(cli: Cli, command: String) -> anyhow::Result<()> {
    let mut settings = Settings::resolve(&cli.global)?;
    settings.command = command;
    let ctx = Ctx::new(settings, Printer::new(cli.global.output));
    match cli.command {
        Command::Server(c) => server::run(&ctx, c).await,
        Command::Firmware(c) => firmware::run(&ctx, c).await,
        Command::Device(c) => device::run(&ctx, c).await,
        Command::Rollout(c) => rollout::run(&ctx, c).await,
        Command::Events(c) => events::run(&ctx, c).await,
        Command::Site(c) => site::run(&ctx, c).await,
        Command::Token(c) => token::run(&ctx, c).await,
        Command::Pki(c) => pki::run(&ctx, c),
    }
}

/// Trims an id argument and refuses an empty one.
pub fn id(kind: &str, raw: &str) -> anyhow::Result<String> {
    let t = raw.trim();
    if t.is_empty() {
        anyhow::bail!("the {kind} id is empty");
    }
    Ok(t.to_string())
}

/// Every page of a list: `fetch` is called again, with the page token of the previous answer
/// set by `set_page`, until an answer has none (`next` gives an answer's token). The answers
/// come back in order.
pub(crate) async fn all_pages<Req: Clone, Resp>(
    mut req: Req,
    set_page: impl Fn(&mut Req, Option<ota_proto::v1::PageRequest>),
    mut fetch: impl AsyncFnMut(Req) -> anyhow::Result<Resp>,
    next: impl Fn(&Resp) -> &str,
) -> anyhow::Result<Vec<Resp>> {
    let mut pages = Vec::new();
    loop {
        let r = fetch(req.clone()).await?;
        let token = next(&r).to_string();
        pages.push(r);
        if token.is_empty() {
            return Ok(pages);
        }
        set_page(
            &mut req,
            Some(ota_proto::v1::PageRequest {
                page_size: 0,
                page_token: token,
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_trimmed_and_required() {
        assert_eq!(id("firmware", " fw-1 ").unwrap(), "fw-1");
        assert_eq!(
            id("device", "  ").unwrap_err().to_string(),
            "the device id is empty"
        );
    }
}
