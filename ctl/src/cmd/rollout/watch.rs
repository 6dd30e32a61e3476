//! `otactl rollout watch`: one bar per stage and one line per device being updated, drawn from
//! `RolloutService.Watch` with tasks; JSON lines with `-o json`, one text line per change
//! when stderr is not a terminal.

use std::collections::BTreeMap;

use indicatif::{MultiProgress, ProgressBar};
use ota_proto::v1 as pb;

use super::args::WatchArgs;
use super::render;
use super::view::{ProgressJson, RolloutJson};
use crate::cmd::{Ctx, Failed, id};
use crate::{progress, vocab};

fn is_final(state: i32) -> bool {
    state == pb::RolloutState::Completed as i32 || state == pb::RolloutState::Aborted as i32
}

/// The live view: a header, a bar per stage, a line per updating device.
struct Board {
    multi: MultiProgress,
    header: ProgressBar,
    stages: Vec<ProgressBar>,
    devices: BTreeMap<String, ProgressBar>,
    show_devices: bool,
}

impl Board {
    fn new(enabled: bool, show_devices: bool) -> Self {
        let multi = progress::multi(enabled);
        let header = multi.add(progress::header());
        header.enable_steady_tick(std::time::Duration::from_millis(120));
        Self {
            multi,
            header,
            stages: Vec::new(),
            devices: BTreeMap::new(),
            show_devices,
        }
    }

    fn rollout(&mut self, r: &RolloutJson, remaining_s: Option<u32>) {
        let name = r.spec.as_ref().map_or("", |s| s.name.as_str());
        let mut head = format!("rollout {} {name}: {}", r.id, r.state.name);
        if !r.state_reason.is_empty() {
            head.push_str(&format!(" ({})", r.state_reason));
        }
        head.push_str(&render::remaining(remaining_s));
        self.header.set_message(head);
        for st in &r.stages {
            let i = st.index as usize;
            while self.stages.len() <= i {
                let bar = progress::stage(0);
                let bar = match self.stages.last() {
                    Some(prev) => self.multi.insert_after(prev, bar),
                    None => self.multi.insert_after(&self.header, bar),
                };
                self.stages.push(bar);
            }
            let bar = &self.stages[i];
            let total = st.counts.total.max(st.device_count);
            bar.set_length(u64::from(total));
            bar.set_position(u64::from(st.counts.done()));
            bar.set_prefix(format!("{} {}", st.index + 1, st.name));
            let mut msg = format!(
                "{} · ✓{} ✗{}",
                st.state.name,
                st.counts.succeeded,
                st.counts.failed + st.counts.timed_out
            );
            let active: Vec<String> = st
                .counts
                .nonzero()
                .into_iter()
                .filter(|(n, _)| !matches!(*n, "succeeded" | "failed" | "timed-out"))
                .map(|(n, v)| format!("{n} {v}"))
                .collect();
            if !active.is_empty() {
                msg.push_str(&format!(" · {}", active.join(", ")));
            }
            bar.set_message(msg);
        }
    }

    fn task(&mut self, t: &pb::Task) {
        if !self.show_devices {
            return;
        }
        if vocab::is_terminal(t.status) {
            if let Some(bar) = self.devices.remove(&t.device_id) {
                bar.finish_and_clear();
                self.multi.remove(&bar);
            }
            return;
        }
        let bar = self.devices.entry(t.device_id.clone()).or_insert_with(|| {
            let b = self.multi.add(progress::device_line());
            b.set_prefix(t.device_id.clone());
            b
        });
        bar.set_position(progress::percent(t.progress));
        bar.set_message(progress::task_message(t));
    }

    fn clear(self) {
        for bar in self.devices.values() {
            bar.finish_and_clear();
        }
        for bar in &self.stages {
            bar.finish_and_clear();
        }
        self.header.finish_and_clear();
        self.multi.clear().ok();
    }
}

pub async fn watch(ctx: &Ctx, a: &WatchArgs) -> anyhow::Result<()> {
    let rollout_id = id("rollout", &a.id)?;
    let api = ctx.api().await?;
    let mut stream = api
        .call(api.rollout().watch(api.streaming(pb::WatchRolloutRequest {
            id: rollout_id.clone(),
            include_tasks: !a.no_devices,
        })))
        .await?;
    let bars = progress::enabled(&ctx.out);
    let mut board = Board::new(bars, !a.no_devices);
    let mut last: Option<RolloutJson> = None;
    let mut last_line = String::new();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = &mut interrupted => {
                board.clear();
                anyhow::bail!(
                    "interrupted: stopped watching; rollout {rollout_id} goes on at the server"
                );
            }
        };
        let p = match msg {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(status) => {
                board.clear();
                return Err(api.error(&status).into());
            }
        };
        let view = ProgressJson::new(&p);
        if ctx.out.is_json() {
            ctx.out.json_line(&view)?;
        }
        if let Some(r) = &view.rollout {
            board.rollout(r, view.remaining_s);
            if !bars && !ctx.out.is_json() {
                // No terminal: one line per change, for logs.
                let line = format!(
                    "{}{}",
                    render::progress_line(r),
                    render::remaining(view.remaining_s)
                );
                if line != last_line {
                    ctx.out.text(&line)?;
                    last_line = line;
                }
            }
        }
        for t in &p.tasks {
            board.task(t);
        }
        let done = view
            .rollout
            .as_ref()
            .is_some_and(|r| is_final(r.state.code));
        if view.rollout.is_some() {
            last = view.rollout;
        }
        if done {
            break;
        }
    }
    board.clear();
    let Some(r) = last else {
        anyhow::bail!("otad ended the watch of {rollout_id} without sending its state");
    };
    if !ctx.out.is_json() {
        ctx.out.text(&render::rollout(&r))?;
    }
    match pb::RolloutState::try_from(r.state.code) {
        Ok(pb::RolloutState::Completed) => Ok(()),
        Ok(pb::RolloutState::Aborted) => Err(Failed(format!(
            "rollout {} aborted{}",
            r.id,
            if r.state_reason.is_empty() {
                String::new()
            } else {
                format!(": {}", r.state_reason)
            }
        ))
        .into()),
        _ => anyhow::bail!(
            "otad ended the watch of {} while it was {}; run `otactl rollout watch {}` again",
            r.id,
            r.state.name,
            r.id
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_board_tracks_stages_and_devices() {
        let mut b = Board::new(false, true);
        let r = pb::Rollout {
            id: "ro-1".into(),
            state: 2,
            stages: vec![
                pb::StageStatus {
                    index: 0,
                    name: "canary".into(),
                    state: 2,
                    counts: Some(pb::TaskCounts {
                        total: 5,
                        succeeded: 2,
                        failed: 1,
                        updating: 2,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                pb::StageStatus {
                    index: 1,
                    name: "wave-1".into(),
                    state: 1,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        b.rollout(&RolloutJson::new(&r), Some(150));
        assert_eq!(
            b.header.message(),
            "rollout ro-1 : running · about 2m 30s left"
        );
        assert_eq!(b.stages.len(), 2);
        assert_eq!(b.stages[0].position(), 3);
        assert_eq!(b.stages[0].length(), Some(5));
        assert_eq!(b.stages[0].message(), "running · ✓2 ✗1 · updating 2");
        let mut t = pb::Task {
            device_id: "home/a".into(),
            status: 2,
            progress: 40.0,
            ..Default::default()
        };
        b.task(&t);
        assert_eq!(b.devices["home/a"].position(), 40);
        t.status = 3;
        b.task(&t);
        assert!(b.devices.is_empty());
        b.clear();
        assert!(is_final(4) && is_final(5) && !is_final(3));
    }
}
