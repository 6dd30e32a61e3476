//! `otactl events tail`: the event log as columns or JSON lines, optionally following it.

use ota_proto::v1 as pb;

use super::Ctx;
use crate::cli::{EventsCmd, TailArgs};
use crate::human;
use crate::views::EventView;

/// Resolves `events tail`.
pub fn resolve_tail(a: &TailArgs) -> anyhow::Result<pb::TailEventsRequest> {
    for s in &a.streams {
        if s.trim().is_empty() {
            anyhow::bail!("--stream is empty (give a prefix such as \"rollout/\")");
        }
    }
    for t in &a.types {
        if t.trim().is_empty() {
            anyhow::bail!("--type is empty (give an event type such as \"TaskProgressed\")");
        }
    }
    if a.limit == Some(0) {
        anyhow::bail!("--limit must be at least 1 (leave it out for no limit)");
    }
    Ok(pb::TailEventsRequest {
        from_seq: a.from,
        follow: a.follow,
        stream_prefixes: a.streams.iter().map(|s| s.trim().to_string()).collect(),
        types: a.types.iter().map(|t| t.trim().to_string()).collect(),
        limit: a.limit.unwrap_or(0),
    })
}

/// Runs an `events` command.
pub async fn run(ctx: &Ctx, cmd: EventsCmd) -> anyhow::Result<()> {
    let EventsCmd::Tail(a) = cmd;
    let req = resolve_tail(&a)?;
    let api = ctx.api().await?;
    let mut stream = api.call(api.events().tail(api.streaming(req))).await?;
    if !ctx.out.is_json() {
        ctx.out.text(&human::event_header())?;
    }
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            // Ctrl-C is how a follow ends: not an error.
            _ = &mut interrupted => return Ok(()),
        };
        match msg {
            Ok(Some(e)) => {
                let view = EventView::new(&e);
                if ctx.out.is_json() {
                    ctx.out.json_line(&view)?;
                } else {
                    ctx.out.text(&human::event_line(&view))?;
                }
            }
            Ok(None) => return Ok(()),
            Err(status) => return Err(api.error(&status).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> TailArgs {
        TailArgs {
            from: 1,
            follow: false,
            streams: Vec::new(),
            types: Vec::new(),
            limit: None,
        }
    }

    #[test]
    fn tail_requests() {
        let r = resolve_tail(&TailArgs {
            from: 42,
            follow: true,
            streams: vec![" rollout/".into()],
            types: vec!["TaskProgressed".into()],
            limit: Some(10),
        })
        .unwrap();
        assert_eq!(
            r,
            pb::TailEventsRequest {
                from_seq: 42,
                follow: true,
                stream_prefixes: vec!["rollout/".into()],
                types: vec!["TaskProgressed".into()],
                limit: 10
            }
        );
        assert_eq!(resolve_tail(&args()).unwrap().limit, 0);
        assert!(
            resolve_tail(&TailArgs {
                limit: Some(0),
                ..args()
            })
            .is_err()
        );
        assert!(
            resolve_tail(&TailArgs {
                streams: vec![" ".into()],
                ..args()
            })
            .is_err()
        );
    }
}
