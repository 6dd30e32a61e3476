//! Reset sequences on the DTR and RTS lines, as data.
//!
//! What it does: describes how to put a chip into its ROM bootloader and how to reset it out
//! again, as a list of [`ResetStep`]s (line changes applied in order, then a wait) that a driver
//! plays. On the usual auto-reset circuit DTR drives IO0 (BOOT) and RTS drives EN (reset), both
//! active-low: "asserted" (pyserial's `True`) pulls the chip's pin low. The timings are esptool's:
//! classic 100 ms in reset then 50 ms (or 550 ms on alternate attempts) with IO0 low; the
//! USB-Serial-JTAG sequence of three 100 ms steps; hard reset 100 ms of EN low.
//!
//! What it does not do: touch a port. A pseudo-terminal has no modem lines; drivers warn and go
//! on, as esptool does.

use std::time::Duration;

/// A modem-control line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Line {
    /// Data Terminal Ready: IO0 / BOOT on the auto-reset circuit.
    Dtr,
    /// Request To Send: EN / reset on the auto-reset circuit.
    Rts,
}

/// Set one line. `asserted` is pyserial's `True`: the chip's pin goes low.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LineChange {
    /// The line.
    pub line: Line,
    /// Asserted (chip pin low) or released (chip pin high).
    pub asserted: bool,
}

/// Line changes applied in order, then a wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetStep {
    /// Changes, in order.
    pub changes: Vec<LineChange>,
    /// How long to wait after the changes.
    pub wait: Duration,
}

/// How the chip on a port is reset into and out of its bootloader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ResetMode {
    /// A USB-UART bridge with the DTR/RTS auto-reset transistors (most dev boards).
    #[default]
    Classic,
    /// The chip's own USB-Serial-JTAG peripheral (ESP32-C3/S3/C6/H2 on their USB pins).
    UsbJtag,
    /// No automatic reset: someone holds BOOT/IO0 while resetting, or the chip is already in
    /// its bootloader.
    NoReset,
}

/// Default time IO0 is held low after EN is released.
pub const DEFAULT_RESET_DELAY: Duration = Duration::from_millis(50);
/// The longer variant esptool alternates with, for boards with a slow EN capacitor.
pub const EXTRA_RESET_DELAY: Duration = Duration::from_millis(550);

fn set(changes: &[(Line, bool)], wait_ms: u64) -> ResetStep {
    ResetStep {
        changes: changes
            .iter()
            .map(|&(line, asserted)| LineChange { line, asserted })
            .collect(),
        wait: Duration::from_millis(wait_ms),
    }
}

impl ResetMode {
    /// Steps that put the chip into its ROM bootloader, for connect attempt `attempt` (from 0).
    /// Classic alternates the 50 ms and 550 ms IO0 hold, as esptool does. Empty for
    /// [`ResetMode::NoReset`].
    pub fn enter_bootloader(self, attempt: u32) -> Vec<ResetStep> {
        use Line::{Dtr, Rts};
        match self {
            ResetMode::Classic => {
                let delay = if attempt.is_multiple_of(2) {
                    DEFAULT_RESET_DELAY
                } else {
                    EXTRA_RESET_DELAY
                };
                vec![
                    // IO0 high, EN low: chip in reset.
                    set(&[(Dtr, false), (Rts, true)], 100),
                    // IO0 low, EN high: chip boots and samples IO0.
                    ResetStep {
                        wait: delay,
                        ..set(&[(Dtr, true), (Rts, false)], 0)
                    },
                    // IO0 high again.
                    set(&[(Dtr, false)], 0),
                ]
            }
            ResetMode::UsbJtag => vec![
                // Idle.
                set(&[(Rts, false), (Dtr, false)], 100),
                // IO0 low.
                set(&[(Dtr, true), (Rts, false)], 100),
                // Reset, going through (1,1) rather than (0,0).
                set(&[(Rts, true), (Dtr, false), (Rts, true)], 100),
                // Out of reset.
                set(&[(Dtr, false), (Rts, false)], 0),
            ],
            ResetMode::NoReset => Vec::new(),
        }
    }

    /// Steps that reset the chip so it runs its application. Empty for
    /// [`ResetMode::NoReset`].
    pub fn hard_reset(self) -> Vec<ResetStep> {
        use Line::Rts;
        match self {
            ResetMode::Classic => vec![set(&[(Rts, true)], 100), set(&[(Rts, false)], 0)],
            ResetMode::UsbJtag => vec![set(&[(Rts, true)], 200), set(&[(Rts, false)], 200)],
            ResetMode::NoReset => Vec::new(),
        }
    }

    /// The name used in configuration: `classic`, `usb-jtag`, `no-reset`.
    pub fn name(self) -> &'static str {
        match self {
            ResetMode::Classic => "classic",
            ResetMode::UsbJtag => "usb-jtag",
            ResetMode::NoReset => "no-reset",
        }
    }
}

/// Total time a sequence takes.
pub fn duration(steps: &[ResetStep]) -> Duration {
    steps.iter().map(|s| s.wait).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(steps: &[ResetStep]) -> String {
        // esptool's custom-reset notation: D/R for a line, W for a wait in seconds.
        let mut out = Vec::new();
        for s in steps {
            for c in &s.changes {
                let l = match c.line {
                    Line::Dtr => 'D',
                    Line::Rts => 'R',
                };
                out.push(format!("{l}{}", c.asserted as u8));
            }
            if !s.wait.is_zero() {
                out.push(format!("W{}", s.wait.as_secs_f64()));
            }
        }
        out.join("|")
    }

    #[test]
    fn classic_matches_esptool() {
        assert_eq!(
            script(&ResetMode::Classic.enter_bootloader(0)),
            "D0|R1|W0.1|D1|R0|W0.05|D0"
        );
        assert_eq!(
            script(&ResetMode::Classic.enter_bootloader(1)),
            "D0|R1|W0.1|D1|R0|W0.55|D0"
        );
    }

    #[test]
    fn usb_jtag_matches_esptool() {
        assert_eq!(
            script(&ResetMode::UsbJtag.enter_bootloader(0)),
            "R0|D0|W0.1|D1|R0|W0.1|R1|D0|R1|W0.1|D0|R0"
        );
    }

    #[test]
    fn hard_reset_and_no_reset() {
        assert_eq!(script(&ResetMode::Classic.hard_reset()), "R1|W0.1|R0");
        assert_eq!(script(&ResetMode::UsbJtag.hard_reset()), "R1|W0.2|R0|W0.2");
        assert!(ResetMode::NoReset.enter_bootloader(0).is_empty());
        assert!(ResetMode::NoReset.hard_reset().is_empty());
        assert_eq!(
            duration(&ResetMode::Classic.enter_bootloader(0)),
            Duration::from_millis(150)
        );
    }
}
