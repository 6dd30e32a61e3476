//! After an upload: deciding from the device's answers whether it came back on the image. Pure:
//! the caller asks the device, passes each answer with the time since the upload ended, and
//! sleeps between questions.
//!
//! The rules:
//! - an answer on an expected version is success, at any time (a device without
//!   `esphome: project:` reports no version; a build time other than before is success then);
//! - another answer once the device was seen away is final: "came back on 1.0.0: the new firmware
//!   was rolled back" when it is the version (and build) it ran before, "runs a new build but
//!   still reports …" when only the build changed, "came back on 3.1.0, not on 2.0.0" otherwise;
//! - the old version without the device ever having gone away is expected for the ~100 ms
//!   before it reboots; after `settle` it means it did not reboot into the image (after an
//!   uncertain end of the upload: it did not take the image, 5010, upload again);
//! - a device without a native API can only be seen going away and answering on its OTA port
//!   again; its version cannot be confirmed;
//! - no answer within the reboot timeout: [`RebootWatch::give_up`] (5018, see the module
//!   documentation of [`super`] for why not 5016).
//!
//! After an agent restart in the middle of an update, [`RecoveryWatch`] decides from the same
//! answers, knowing only the committing note and whether the device had accepted the image:
//! the target is success; the old version, steadily for `settle`, is "not taken" (5010,
//! retryable) when the device had not accepted the image yet, and "rolled back" (5018) when it
//! had; any other version is 5018; no answer within the reboot timeout is 5018 (the device may
//! run the image: a person looks).

use std::time::Duration;

use ota_devproto::esphome_api::DeviceInfoResponse;
use ota_domain::status::{ErrorCode, TaskError};

use super::{RecoveryNote, UpdatePlan};

/// How the transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    /// The device said it committed the image (`0x45`, "Update Successful!").
    Confirmed,
    /// The connection failed once the whole image was out, without the device's verdict; the
    /// error says how.
    Maybe(TaskError),
}

/// One look at the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The native API answered.
    Info(Box<DeviceInfoResponse>),
    /// A device without a native API: its OTA port answers.
    PortAnswers,
    /// Nothing answered.
    Away,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Ask again after the poll interval.
    Wait,
    /// The device runs the image (`None`: it has no API, nothing more can be known).
    Back(Option<Box<DeviceInfoResponse>>),
    /// The update failed.
    Failed(TaskError),
}

/// Watches one device come back.
#[derive(Debug)]
pub struct RebootWatch<'a> {
    device: &'a str,
    plan: &'a UpdatePlan,
    before: Option<&'a DeviceInfoResponse>,
    commit: &'a Commit,
    settle: Duration,
    seen_away: bool,
}

impl<'a> RebootWatch<'a> {
    /// A watch for `device`, which ran `before` and should now run one of `plan.expected`.
    pub fn new(
        device: &'a str,
        plan: &'a UpdatePlan,
        before: Option<&'a DeviceInfoResponse>,
        commit: &'a Commit,
        settle: Duration,
    ) -> Self {
        Self {
            device,
            plan,
            before,
            commit,
            settle,
            seen_away: false,
        }
    }

    /// Whether the device was seen away (rebooting) at least once.
    pub fn seen_away(&self) -> bool {
        self.seen_away
    }

    /// Takes one answer, `elapsed` after the upload ended.
    pub fn observe(&mut self, elapsed: Duration, answer: Answer) -> Verdict {
        match answer {
            Answer::Away => {
                self.seen_away = true;
                Verdict::Wait
            }
            Answer::PortAnswers if self.seen_away || elapsed >= self.settle => match self.commit {
                Commit::Confirmed => Verdict::Back(None),
                Commit::Maybe(err) => Verdict::Failed(TaskError::new(
                    err.code,
                    format!(
                        "{}; without a native API the agent cannot tell whether {} installed it: \
                         check it",
                        err.message, self.device
                    ),
                )),
            },
            Answer::PortAnswers => Verdict::Wait,
            Answer::Info(info) => {
                if self.runs_target(&info) {
                    Verdict::Back(Some(info))
                } else if self.seen_away {
                    Verdict::Failed(self.came_back_wrong(&info))
                } else if elapsed >= self.settle {
                    Verdict::Failed(self.not_rebooted(&info))
                } else {
                    Verdict::Wait
                }
            }
        }
    }

    /// The failure when nothing answered within `within`; `ota_answers` says whether the OTA
    /// port answers at the end (safe mode runs OTA but no API).
    pub fn give_up(&self, within: Duration, ota_answers: bool) -> TaskError {
        let device = self.device;
        let within = humantime::format_duration(within);
        let msg = if ota_answers {
            format!(
                "{device} accepted the image but its native API did not come back within \
                 {within}; its OTA port answers, so it may be in safe mode (the new firmware \
                 failed to boot): check it"
            )
        } else {
            format!(
                "{device}: the device did not come back within {within} after accepting the \
                 image: check it; ESP32 rolls back to the previous firmware if the new one does \
                 not boot"
            )
        };
        TaskError::new(
            ErrorCode::DeviceReportedFailure,
            match self.commit {
                Commit::Confirmed => msg,
                Commit::Maybe(err) => format!("{}; {msg}", err.message),
            },
        )
    }

    fn runs_target(&self, info: &DeviceInfoResponse) -> bool {
        if !info.project_version.is_empty() {
            return self.plan.expected.contains(&info.project_version);
        }
        // A firmware without `esphome: project:`: a new build time means a new firmware.
        match self.before {
            Some(b) if !b.compilation_time.is_empty() => {
                b.compilation_time != info.compilation_time
            }
            _ => self.seen_away,
        }
    }

    fn came_back_wrong(&self, info: &DeviceInfoResponse) -> TaskError {
        let device = self.device;
        let now = if info.project_version.is_empty() {
            "the same build".to_owned()
        } else {
            info.project_version.clone()
        };
        let target = self.plan.target();
        let msg = match self.before {
            Some(b)
                if b.project_version == info.project_version
                    && b.compilation_time != info.compilation_time
                    && !info.compilation_time.is_empty() =>
            {
                format!(
                    "{device} runs a new build (compiled {}) but still reports project version \
                     {now}, not {target}: the firmware's `esphome: project: version:` and the \
                     version registered for it differ",
                    info.compilation_time
                )
            }
            Some(b) if b.project_version == info.project_version => format!(
                "{device} came back on {now}: the new firmware was rolled back (it did not boot, \
                 or crashed until safe mode or the bootloader's rollback restored the previous \
                 one)"
            ),
            _ => format!("{device} came back on {now}, not on {target}"),
        };
        TaskError::new(ErrorCode::DeviceReportedFailure, msg)
    }

    fn not_rebooted(&self, info: &DeviceInfoResponse) -> TaskError {
        let device = self.device;
        let now = if info.project_version.is_empty() {
            "its old build".to_owned()
        } else {
            info.project_version.clone()
        };
        let settle = humantime::format_duration(self.settle);
        match self.commit {
            Commit::Maybe(err) => TaskError::new(
                ErrorCode::SendFailed,
                format!(
                    "{}; {device} did not install the image: it still runs {now} and did not \
                     reboot within {settle}; upload again",
                    err.message
                ),
            ),
            Commit::Confirmed => TaskError::new(
                ErrorCode::DeviceReportedFailure,
                format!(
                    "{device} accepted the image but still runs {now} and did not reboot within \
                     {settle}, instead of {}",
                    self.plan.target()
                ),
            ),
        }
    }
}

/// What [`RecoveryWatch`] concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryVerdict {
    /// Ask again after the poll interval.
    Wait,
    /// The device runs the image (`None`: it has no API and had accepted the image).
    Back(Option<Box<DeviceInfoResponse>>),
    /// The device certainly did not take the image: it can be sent again.
    NotTaken(TaskError),
    /// The update failed, or the agent cannot tell (the device may run the image).
    Failed(TaskError),
}

/// Watches a device after an agent restart interrupted its update past the point of no return.
#[derive(Debug)]
pub struct RecoveryWatch<'a> {
    device: &'a str,
    note: &'a RecoveryNote,
    committed: bool,
    settle: Duration,
    old_since: Option<Duration>,
}

impl<'a> RecoveryWatch<'a> {
    /// A watch for `device` whose update wrote `note`; `committed`: the device had answered
    /// that it accepted the image.
    pub fn new(device: &'a str, note: &'a RecoveryNote, committed: bool, settle: Duration) -> Self {
        Self {
            device,
            note,
            committed,
            settle,
            old_since: None,
        }
    }

    /// Takes one answer, `elapsed` after the watch started.
    pub fn observe(&mut self, elapsed: Duration, answer: Answer) -> RecoveryVerdict {
        let device = self.device;
        match answer {
            Answer::Away => {
                self.old_since = None;
                RecoveryVerdict::Wait
            }
            Answer::PortAnswers if self.committed => RecoveryVerdict::Back(None),
            Answer::PortAnswers => RecoveryVerdict::Failed(TaskError::new(
                ErrorCode::SendFailed,
                format!(
                    "the agent restarted while the last block of the image was going out to \
                     {device}, which has no native API: whether it installed the image cannot be \
                     told; check it"
                ),
            )),
            Answer::Info(info) => {
                let v = &info.project_version;
                let built = &info.compilation_time;
                let target = if v.is_empty() {
                    // No `esphome: project:`: a new build time means a new firmware.
                    self.note
                        .before_build
                        .as_ref()
                        .filter(|_| !built.is_empty())
                        .map(|b| b != built)
                } else {
                    Some(self.note.expected.contains(v))
                };
                let old = if v.is_empty() {
                    self.note.before_build.as_ref() == Some(built)
                } else {
                    self.note.before_version.as_ref() == Some(v)
                };
                match target {
                    Some(true) => return RecoveryVerdict::Back(Some(info)),
                    None => {
                        return RecoveryVerdict::Failed(TaskError::new(
                            ErrorCode::SendFailed,
                            format!(
                                "{device} reports neither a project version nor a build time to \
                                 compare: whether it installed the image cannot be told; check it"
                            ),
                        ));
                    }
                    Some(false) => {}
                }
                if !old {
                    let now = if v.is_empty() { built } else { v };
                    return RecoveryVerdict::Failed(TaskError::new(
                        ErrorCode::DeviceReportedFailure,
                        format!(
                            "{device} runs {now}, neither what it ran before the update nor {}",
                            self.note
                                .expected
                                .first()
                                .map_or("the target", String::as_str)
                        ),
                    ));
                }
                let since = *self.old_since.get_or_insert(elapsed);
                if elapsed.saturating_sub(since) < self.settle {
                    return RecoveryVerdict::Wait;
                }
                let now = if v.is_empty() {
                    "its old build".to_owned()
                } else {
                    v.clone()
                };
                if self.committed {
                    RecoveryVerdict::Failed(TaskError::new(
                        ErrorCode::DeviceReportedFailure,
                        format!(
                            "{device} had accepted the image but runs {now} again: the new \
                             firmware was rolled back (it did not boot, or crashed until the \
                             bootloader restored the previous one)"
                        ),
                    ))
                } else {
                    RecoveryVerdict::NotTaken(TaskError::new(
                        ErrorCode::SendFailed,
                        format!(
                            "the agent restarted before {device} had the whole image; it still \
                             runs {now} and did not take the image: the update can be sent again"
                        ),
                    ))
                }
            }
        }
    }

    /// The failure when the device did not answer within `within`.
    pub fn give_up(&self, within: Duration) -> TaskError {
        TaskError::new(
            ErrorCode::DeviceReportedFailure,
            format!(
                "{}: no answer within {} after the agent restarted during its update; it may run \
                 the new image: check it",
                self.device,
                humantime::format_duration(within)
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_secs(15);

    fn plan() -> UpdatePlan {
        UpdatePlan {
            expected: vec!["2.0.0".into()],
            chip: None,
        }
    }

    fn info(version: &str, built: &str) -> Box<DeviceInfoResponse> {
        Box::new(DeviceInfoResponse {
            project_version: version.into(),
            compilation_time: built.into(),
            ..DeviceInfoResponse::default()
        })
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn maybe() -> Commit {
        Commit::Maybe(TaskError::new(
            ErrorCode::SendFailed,
            "the connection broke after the last chunk",
        ))
    }

    fn failed(v: Verdict) -> TaskError {
        match v {
            Verdict::Failed(e) => e,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn back_on_the_target_at_any_time() {
        let (p, c, old) = (plan(), Commit::Confirmed, info("1.0.0", "a"));
        let mut w = RebootWatch::new("plug", &p, Some(&old), &c, SETTLE);
        assert_eq!(
            w.observe(secs(0), Answer::Info(info("1.0.0", "a"))),
            Verdict::Wait
        );
        assert_eq!(w.observe(secs(1), Answer::Away), Verdict::Wait);
        assert!(w.seen_away());
        assert_eq!(
            w.observe(secs(9), Answer::Info(info("2.0.0", "b"))),
            Verdict::Back(Some(info("2.0.0", "b")))
        );
        // Uncertain end of the upload, device back on the target: success all the same.
        let m = maybe();
        let mut w = RebootWatch::new("plug", &p, Some(&old), &m, SETTLE);
        assert!(matches!(
            w.observe(secs(3), Answer::Info(info("2.0.0", "b"))),
            Verdict::Back(Some(_))
        ));
    }

    #[test]
    fn rolled_back_new_build_and_other_version() {
        let (p, c, old) = (plan(), Commit::Confirmed, info("1.0.0", "a"));
        let back_on = |v: &str, built: &str| {
            let mut w = RebootWatch::new("plug", &p, Some(&old), &c, SETTLE);
            w.observe(secs(1), Answer::Away);
            failed(w.observe(secs(5), Answer::Info(info(v, built))))
        };
        let e = back_on("1.0.0", "a");
        assert_eq!(e.code, ErrorCode::DeviceReportedFailure);
        assert!(
            e.message
                .starts_with("plug came back on 1.0.0: the new firmware was rolled back"),
            "{}",
            e.message
        );
        let e = back_on("1.0.0", "b");
        assert!(
            e.message.contains("runs a new build (compiled b)"),
            "{}",
            e.message
        );
        let e = back_on("3.1.0", "c");
        assert_eq!(e.message, "plug came back on 3.1.0, not on 2.0.0");
    }

    #[test]
    fn no_reboot_within_settle() {
        let (p, old) = (plan(), info("1.0.0", "a"));
        let c = Commit::Confirmed;
        let mut w = RebootWatch::new("plug", &p, Some(&old), &c, SETTLE);
        assert_eq!(
            w.observe(secs(14), Answer::Info(info("1.0.0", "a"))),
            Verdict::Wait
        );
        let e = failed(w.observe(secs(15), Answer::Info(info("1.0.0", "a"))));
        assert_eq!(e.code, ErrorCode::DeviceReportedFailure);
        assert!(
            e.message.contains("did not reboot within 15s"),
            "{}",
            e.message
        );
        let m = maybe();
        let mut w = RebootWatch::new("plug", &p, Some(&old), &m, SETTLE);
        let e = failed(w.observe(secs(20), Answer::Info(info("1.0.0", "a"))));
        assert_eq!(e.code, ErrorCode::SendFailed);
        assert!(
            e.message
                .contains("plug did not install the image: it still runs 1.0.0"),
            "{}",
            e.message
        );
    }

    #[test]
    fn firmware_without_a_project_version_is_confirmed_by_its_build_time() {
        let (p, c, old) = (plan(), Commit::Confirmed, info("", "Jan 1 2026"));
        let mut w = RebootWatch::new("plug", &p, Some(&old), &c, SETTLE);
        assert_eq!(
            w.observe(secs(0), Answer::Info(info("", "Jan 1 2026"))),
            Verdict::Wait
        );
        w.observe(secs(1), Answer::Away);
        assert!(matches!(
            w.observe(secs(4), Answer::Info(info("", "Feb 2 2026"))),
            Verdict::Back(Some(_))
        ));
        let mut w = RebootWatch::new("plug", &p, Some(&old), &c, SETTLE);
        w.observe(secs(1), Answer::Away);
        let e = failed(w.observe(secs(4), Answer::Info(info("", "Jan 1 2026"))));
        assert!(
            e.message.contains("came back on the same build"),
            "{}",
            e.message
        );
        // Without a "before", having seen the reboot is all there is.
        let mut w = RebootWatch::new("plug", &p, None, &c, SETTLE);
        w.observe(secs(1), Answer::Away);
        assert!(matches!(
            w.observe(secs(4), Answer::Info(info("", "x"))),
            Verdict::Back(Some(_))
        ));
    }

    #[test]
    fn devices_without_an_api() {
        let p = plan();
        let c = Commit::Confirmed;
        let mut w = RebootWatch::new("plug", &p, None, &c, SETTLE);
        assert_eq!(w.observe(secs(0), Answer::PortAnswers), Verdict::Wait);
        w.observe(secs(1), Answer::Away);
        assert_eq!(w.observe(secs(3), Answer::PortAnswers), Verdict::Back(None));
        let m = maybe();
        let mut w = RebootWatch::new("plug", &p, None, &m, SETTLE);
        let e = failed(w.observe(secs(16), Answer::PortAnswers));
        assert!(
            e.message.contains("cannot tell whether plug installed it"),
            "{}",
            e.message
        );
    }

    #[test]
    fn giving_up() {
        let p = plan();
        let c = Commit::Confirmed;
        let w = RebootWatch::new("plug", &p, None, &c, SETTLE);
        let e = w.give_up(Duration::from_secs(120), false);
        assert_eq!(e.code, ErrorCode::DeviceReportedFailure);
        assert_eq!(
            e.message,
            "plug: the device did not come back within 2m after accepting the image: check it; \
             ESP32 rolls back to the previous firmware if the new one does not boot"
        );
        let e = w.give_up(Duration::from_secs(120), true);
        assert!(e.message.contains("safe mode"), "{}", e.message);
    }

    fn note() -> RecoveryNote {
        RecoveryNote {
            expected: vec!["2.0.0".into()],
            before_version: Some("1.0.0".into()),
            before_build: Some("Jan  1 2026, 00:00:00".into()),
        }
    }

    #[test]
    fn recovery_of_an_update_that_passed_the_point_of_no_return() {
        let n = note();
        // The target: success, whether or not it was seen away first.
        let mut w = RecoveryWatch::new("plug", &n, false, SETTLE);
        assert_eq!(w.observe(secs(0), Answer::Away), RecoveryVerdict::Wait);
        assert!(matches!(
            w.observe(secs(1), Answer::Info(info("2.0.0", "b"))),
            RecoveryVerdict::Back(Some(_))
        ));
        // The old version, steadily: not taken before the device accepted the image…
        let mut w = RecoveryWatch::new("plug", &n, false, SETTLE);
        assert_eq!(
            w.observe(secs(0), Answer::Info(info("1.0.0", "a"))),
            RecoveryVerdict::Wait
        );
        // (a reboot in between restarts the settling)
        assert_eq!(w.observe(secs(10), Answer::Away), RecoveryVerdict::Wait);
        assert_eq!(
            w.observe(secs(20), Answer::Info(info("1.0.0", "a"))),
            RecoveryVerdict::Wait
        );
        let RecoveryVerdict::NotTaken(e) = w.observe(secs(35), Answer::Info(info("1.0.0", "a")))
        else {
            panic!()
        };
        assert_eq!(e.code, ErrorCode::SendFailed);
        // …rolled back after it.
        let mut w = RecoveryWatch::new("plug", &n, true, SETTLE);
        assert_eq!(
            w.observe(secs(0), Answer::Info(info("1.0.0", "a"))),
            RecoveryVerdict::Wait
        );
        let RecoveryVerdict::Failed(e) = w.observe(secs(15), Answer::Info(info("1.0.0", "a")))
        else {
            panic!()
        };
        assert_eq!(e.code, ErrorCode::DeviceReportedFailure);
        assert!(e.message.contains("rolled back"), "{}", e.message);
        // Another version: 5018 at once.
        let mut w = RecoveryWatch::new("plug", &n, false, SETTLE);
        let RecoveryVerdict::Failed(e) = w.observe(secs(0), Answer::Info(info("3.0.0", "c")))
        else {
            panic!()
        };
        assert_eq!(e.code, ErrorCode::DeviceReportedFailure);
        // No API: success only when the device had accepted the image.
        assert_eq!(
            RecoveryWatch::new("plug", &n, true, SETTLE).observe(secs(0), Answer::PortAnswers),
            RecoveryVerdict::Back(None)
        );
        assert!(matches!(
            RecoveryWatch::new("plug", &n, false, SETTLE).observe(secs(0), Answer::PortAnswers),
            RecoveryVerdict::Failed(_)
        ));
        // Without project versions the build time decides.
        let n = RecoveryNote {
            expected: vec!["2.0.0".into()],
            before_version: None,
            before_build: Some("a".into()),
        };
        let mut w = RecoveryWatch::new("plug", &n, false, SETTLE);
        assert!(matches!(
            w.observe(secs(0), Answer::Info(info("", "b"))),
            RecoveryVerdict::Back(_)
        ));
        assert_eq!(
            w.observe(secs(0), Answer::Info(info("", "a"))),
            RecoveryVerdict::Wait
        );
        assert_eq!(w.give_up(secs(120)).code, ErrorCode::DeviceReportedFailure);
    }
}
