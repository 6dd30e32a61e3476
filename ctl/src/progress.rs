//! Progress bars on stderr (indicatif): byte transfers, a device task, a rollout's stages.
//!
//! Bars are drawn only when the output is a table and stderr is a terminal; otherwise they are
//! hidden and cost nothing, so `-o json` and pipes stay clean.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::Printer;
use crate::vocab;

/// Whether bars should be drawn for this printer.
pub fn enabled(printer: &Printer) -> bool {
    !printer.is_json() && std::io::stderr().is_terminal()
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn target(enabled: bool) -> ProgressDrawTarget {
    if enabled {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

/// A byte transfer: message, bar, bytes done/total, rate, ETA.
pub fn bytes(enabled: bool, total: u64, msg: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total), target(enabled));
    pb.set_style(style(
        "{msg:>10} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    ));
    pb.set_message(msg.to_string());
    pb
}

/// A device task: spinner, status, percent bar, remaining time.
pub fn task(enabled: bool, device: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(100), target(enabled));
    pb.set_style(style("{spinner} {prefix} [{bar:30}] {pos:>3}% {msg}"));
    pb.set_prefix(device.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// The message of a task bar: "updating · 1m 20s left", "waiting-for-wakeup", plus the error.
pub fn task_message(t: &ota_proto::v1::Task) -> String {
    let mut s = vocab::status_name(t.status);
    if let Some(r) = t.remaining_s.filter(|r| *r > 0) {
        s.push_str(&format!(
            " · {} left",
            crate::values::fmt_secs(u64::from(r))
        ));
    }
    if t.awaiting_confirmation {
        s.push_str(&format!(
            " · weak signal (5005): answer with `otactl device confirm {} --continue|--cancel`",
            t.device_id
        ));
    } else if let Some(e) = t.error.as_ref().filter(|e| e.code != 0) {
        s.push_str(" · ");
        s.push_str(&vocab::describe_error(e));
    } else if !t.remind.is_empty() {
        s.push_str(" · ");
        s.push_str(&t.remind);
    } else if t.verifying_until_ms > 0 {
        s.push_str(" · on the target version; watching its health until the window ends");
    } else if t.status == ota_proto::v1::UpgradeStatus::WaitingForWakeup as i32 {
        s.push_str(" · the device sleeps; the update starts when it next wakes up");
    } else if t.status == ota_proto::v1::UpgradeStatus::Queued as i32 && t.started_at_ms > 0 {
        s.push_str(" · queued at the site for its network's update slot");
    }
    if t.attempt > 1 {
        s.push_str(&format!(" (attempt {}/{})", t.attempt, t.max_attempts));
    }
    s
}

/// Percent as a bar position (0-100).
pub fn percent(p: f32) -> u64 {
    if p.is_nan() {
        0
    } else {
        // Clamped to 0..=100 first, so the cast cannot truncate.
        p.clamp(0.0, 100.0).round() as u64
    }
}

/// The multi-bar view of a rollout.
pub fn multi(enabled: bool) -> MultiProgress {
    MultiProgress::with_draw_target(target(enabled))
}

/// A stage bar: name, bar, done/total, counts.
pub fn stage(total: u64) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(style("{prefix:<14} [{bar:30}] {pos}/{len} {msg}"));
    pb
}

/// A device line inside the rollout view.
pub fn device_line() -> ProgressBar {
    let pb = ProgressBar::new(100);
    pb.set_style(style("  {prefix:<28} [{bar:20}] {pos:>3}% {msg}"));
    pb
}

/// A header line (text only); the caller starts its ticking once it is placed.
pub fn header() -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb
}

/// A spinner with a message, for a wait without measurable progress.
pub fn spinner(enabled: bool, msg: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(None, target(enabled));
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

#[cfg(test)]
mod tests {
    use super::*;
    use ota_proto::v1 as pb;

    #[test]
    fn task_messages() {
        let t = pb::Task {
            device_id: "home/a".into(),
            status: 2,
            remaining_s: Some(80),
            attempt: 2,
            max_attempts: 3,
            ..Default::default()
        };
        assert_eq!(task_message(&t), "updating · 1m 20s left (attempt 2/3)");
        let t = pb::Task {
            device_id: "home/a".into(),
            status: 13,
            awaiting_confirmation: true,
            error: Some(pb::TaskError {
                code: 5005,
                message: "linkquality 12 < 30".into(),
            }),
            ..Default::default()
        };
        assert!(task_message(&t).contains("otactl device confirm home/a --continue|--cancel"));
        assert_eq!(percent(45.6), 46);
        assert_eq!(percent(250.0), 100);
        assert_eq!(percent(f32::NAN), 0);
    }

    #[test]
    fn hidden_bars_are_harmless() {
        let pb = bytes(false, 10, "upload");
        pb.inc(5);
        assert_eq!(pb.position(), 5);
        pb.finish_and_clear();
    }
}
