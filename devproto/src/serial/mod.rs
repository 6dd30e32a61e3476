//! The ESP ROM bootloader serial protocol (what esptool speaks), without I/O.
//!
//! What it does, bottom up:
//! - [`slip`]: SLIP framing; a streaming decoder that ignores bytes outside frames.
//! - [`packet`]: request/response headers, the data checksum, status bytes, ROM error bytes.
//! - [`command`]: the ROM commands as typed values, encoded and parsed byte for byte.
//! - [`chip`]: what each chip's ROM looks like on the line (magic values, status layout,
//!   missing commands, SPI and UART registers).
//! - [`reset`]: DTR/RTS reset sequences as data (classic, USB-Serial-JTAG, hard reset, none).
//! - [`flasher`]: the client state machine: connect, detect, attach, write (plain or
//!   compressed), verify by MD5, leave; with esptool's per-step timeouts and typed errors that
//!   map onto the product's status codes.
//! - [`rom`]: the device side, a simulated ROM bootloader with injectable faults, used by the
//!   simulator in `ota-sim` and by the tests here.
//!
//! What it does not do: open ports, sleep, read the clock or parse firmware images (the agent's
//! `transport::serial` and the simulator's `esprom` are the tokio drivers; `ota-firmware`
//! parses images). The flasher stub (esptool's RAM-loaded helper) is not implemented: the
//! flasher talks to the ROM only.

pub mod chip;
pub mod command;
pub mod flasher;
pub mod packet;
pub mod reset;
pub mod rom;
pub mod slip;

#[cfg(test)]
mod tests;

pub use chip::{Chip, RomInfo};
pub use command::Command;
pub use flasher::{
    After, ChipInfo, Event, FlashError, Flasher, FlasherConfig, Job, Outcome, Progress, Stage,
};
pub use packet::{Op, Request, Response, RomError, RomErrorKind};
pub use reset::{Line, LineChange, ResetMode, ResetStep};
pub use rom::{BlockFault, Faults, RomConfig, RomDevice, RomEvent};
pub use slip::SlipDecoder;
