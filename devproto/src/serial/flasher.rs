//! Hand-written: espflash owns its serial port (blocking I/O); the agent needs a sans-I/O machine.
//!
//! The flasher: the client side of the ROM bootloader protocol, as a state machine.
//!
//! What it does: connects (SYNC attempts, each connect attempt preceded by a reset the driver
//! plays), detects the chip (magic register, then GET_SECURITY_INFO for chips without a known
//! magic), attaches the SPI flash, reads its JEDEC id where the chip's SPI registers are known,
//! sets the flash parameters, optionally changes the baud rate, then writes an image (plain
//! FLASH_* in 1 KiB blocks, or a zlib stream through FLASH_DEFL_*), verifies it with
//! SPI_FLASH_MD5 and optionally leaves the loader. It retries a failed data block (three
//! attempts, as esptool), refuses to write an image built for another chip or too large for the
//! flash before anything is erased, and reports progress as bytes written. With
//! [`FlasherConfig::hold_last_block`] it stops before the last data block
//! ([`Event::LastBlock`]) until the driver calls [`Flasher::release_last_block`]: the driver's
//! point of no return. [`Job::Md5`] only reads the MD5 of a flash region (how a restarted agent
//! finds out whether an interrupted write completed).
//!
//! What it does not do: I/O or reading the clock. Feed it received bytes and the time, drain
//! [`Flasher::poll_transmit`] to the port, act on [`Flasher::poll_event`] (play a reset, change
//! the port's baud rate, report progress) and call [`Flasher::handle_timeout`] when
//! [`Flasher::poll_timeout`] expires. `now` is any monotonic time as a [`Duration`] since an
//! origin the driver picks. It does not speak to the flasher stub (ROM only) and does not parse
//! images; the caller names the image's chip in [`FlasherConfig::expect_chip`].
//!
//! ```text
//!  ResetRequested ─reset_done─▶ Syncing ─SYNC reply─▶ Command(ReadMagic) ─▶ … ─▶ Finished
//!        ▲                         │ 5 × 100 ms without a reply
//!        └──── next attempt ◀──────┘ (7 attempts, then NoSync)
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use md5::{Digest, Md5};
use ota_domain::status::{ErrorCode, TaskError};

use super::chip::{
    CHIP_DETECT_MAGIC_REG, Chip, ESP32_EFUSE_RD_BASE, ESP32_RTCCALICFG1, RomInfo, SPI_CMD_USR,
    SPI_USR_COMMAND, SPI_USR_MISO, SPIFLASH_RDID, esp32_rom_baud, esp8266_erase_size,
};
use super::command::{Begin, Command, Md5Format, RegWrite, SpiParams, flash_size_from_id};
use super::packet::{Op, Response, RomError, StatusError};
use super::slip::SlipDecoder;

/// Block size of ROM flash writes.
pub const ROM_BLOCK_SIZE: u32 = 0x400;
/// Flash sector size; write offsets must be aligned to it.
pub const SECTOR_SIZE: u32 = 0x1000;
/// The baud rate the ROM is reached at.
pub const ROM_BAUD: u32 = 115_200;

/// What to do once the image is written and verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum After {
    /// Stay in the ROM bootloader (the driver may then hard-reset through RTS).
    #[default]
    StayInLoader,
    /// FLASH_BEGIN(0) + FLASH_END(run): the ROM jumps to the application without a reset, the
    /// only way to start the new firmware on a port without reset lines.
    RunUserCode,
    /// FLASH_BEGIN(0) + FLASH_END(reboot): the chip resets itself.
    Reboot,
}

/// Settings of one flasher run. [`FlasherConfig::default`] has esptool's timings.
#[derive(Debug, Clone, PartialEq)]
pub struct FlasherConfig {
    /// Connect attempts, each preceded by [`Event::ResetRequested`] (esptool: 7).
    pub connect_attempts: u32,
    /// SYNC tries per connect attempt (esptool: 5).
    pub syncs_per_attempt: u32,
    /// How long to wait for the first SYNC reply (esptool: 100 ms).
    pub sync_timeout: Duration,
    /// Pause between SYNC tries (esptool: 50 ms).
    pub sync_pause: Duration,
    /// Timeout of an ordinary command (esptool: 3 s). Also the floor of the scaled timeouts.
    pub command_timeout: Duration,
    /// Erase timeout per MB for FLASH_BEGIN, which erases up front (esptool: 40 s).
    pub erase_timeout_per_mb: Duration,
    /// Write timeout per MB of uncompressed data in a compressed block (esptool: 40 s).
    pub write_timeout_per_mb: Duration,
    /// SPI_FLASH_MD5 timeout per MB (esptool: 8 s).
    pub md5_timeout_per_mb: Duration,
    /// Attempts per data block (esptool: 3).
    pub block_attempts: u32,
    /// The baud rate the port is opened at.
    pub baud: u32,
    /// Switch to this baud rate after connecting, when the ROM can.
    pub target_baud: Option<u32>,
    /// Input right after a baud change is garbage; it is dropped for this long (esptool: 50 ms).
    pub baud_settle: Duration,
    /// Send the image as a zlib stream when the ROM can inflate.
    pub compress: bool,
    /// Check the written region with SPI_FLASH_MD5 when the ROM has it.
    pub verify: bool,
    /// What to do at the end.
    pub after: After,
    /// The chip the image is built for; a different chip fails before anything is written.
    pub expect_chip: Option<Chip>,
    /// The flash size the device is configured with; the image must fit it (and the detected
    /// flash, when known). Also sent in SPI_SET_PARAMS.
    pub flash_size: Option<u32>,
    /// SPI_ATTACH argument: 0 for the default SPI flash pins.
    pub spi_attach_arg: u32,
    /// Stop before the last data block of a write ([`Event::LastBlock`]) until
    /// [`Flasher::release_last_block`].
    pub hold_last_block: bool,
}

impl Default for FlasherConfig {
    fn default() -> Self {
        FlasherConfig {
            connect_attempts: 7,
            syncs_per_attempt: 5,
            sync_timeout: Duration::from_millis(100),
            sync_pause: Duration::from_millis(50),
            command_timeout: Duration::from_secs(3),
            erase_timeout_per_mb: Duration::from_secs(40),
            write_timeout_per_mb: Duration::from_secs(40),
            md5_timeout_per_mb: Duration::from_secs(8),
            block_attempts: 3,
            baud: ROM_BAUD,
            target_baud: None,
            baud_settle: Duration::from_millis(50),
            compress: true,
            verify: true,
            after: After::StayInLoader,
            expect_chip: None,
            flash_size: None,
            spi_attach_arg: 0,
            hold_last_block: false,
        }
    }
}

impl FlasherConfig {
    /// `per_mb` scaled to `bytes`, never below the command timeout (esptool's `timeout_per_mb`).
    pub fn scaled_timeout(&self, per_mb: Duration, bytes: u64) -> Duration {
        let t = per_mb.mul_f64(bytes as f64 / 1e6);
        t.max(self.command_timeout)
    }
}

/// What to do after connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// Connect, detect the chip and its flash, and stop (stays in the loader).
    Detect,
    /// Write `image` at `offset` (sector aligned).
    Write {
        /// Flash offset.
        offset: u32,
        /// The bytes to write.
        image: Bytes,
    },
    /// Connect, detect the chip, and read the MD5 of `len` bytes of flash at `offset`
    /// ([`Outcome::flash_md5`]; `None` when the ROM has no MD5 command).
    Md5 {
        /// Flash offset.
        offset: u32,
        /// Bytes.
        len: u32,
    },
}

/// Where the flasher is; errors name the stage they happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Resetting and syncing with the ROM.
    Connecting,
    /// Reading the chip's identity.
    Detecting,
    /// SPI attach, flash id, flash parameters.
    Configuring,
    /// Switching the baud rate.
    ChangingBaud,
    /// FLASH_BEGIN: the ROM erases the region.
    Erasing,
    /// Data blocks.
    Writing,
    /// SPI_FLASH_MD5.
    Verifying,
    /// FLASH_END.
    Leaving,
}

impl Stage {
    /// Lowercase words, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Stage::Connecting => "connecting",
            Stage::Detecting => "detecting the chip",
            Stage::Configuring => "configuring the SPI flash",
            Stage::ChangingBaud => "changing the baud rate",
            Stage::Erasing => "erasing the flash",
            Stage::Writing => "writing the flash",
            Stage::Verifying => "verifying the flash",
            Stage::Leaving => "leaving the bootloader",
        }
    }

    /// Whether the flash may already have been changed in this stage.
    pub fn touches_flash(self) -> bool {
        matches!(
            self,
            Stage::Erasing | Stage::Writing | Stage::Verifying | Stage::Leaving
        )
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The chip as detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChipInfo {
    /// The chip.
    pub chip: Chip,
    /// The value of the magic register.
    pub magic: u32,
    /// The SPI flash JEDEC id, when the chip's SPI registers are known.
    pub flash_id: Option<u32>,
    /// The flash size the JEDEC id implies.
    pub flash_size: Option<u32>,
}

/// Progress of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Image bytes the ROM has acknowledged (uncompressed).
    pub written: u64,
    /// Image bytes in total.
    pub total: u64,
    /// Data bytes sent so far (compressed when compressing).
    pub wire_sent: u64,
    /// Data bytes to send in total.
    pub wire_total: u64,
}

/// A finished run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The detected chip.
    pub chip: ChipInfo,
    /// Image bytes written and acknowledged (0 for [`Job::Detect`]).
    pub bytes_written: u64,
    /// Data bytes sent in `*_DATA` commands, retries included.
    pub wire_bytes: u64,
    /// Whether the image went as a zlib stream.
    pub compressed: bool,
    /// The MD5 the ROM computed over the written region and that matched the image's, when
    /// the ROM can compute one.
    pub verified_md5: Option<[u8; 16]>,
    /// Data blocks sent again after a failure or timeout.
    pub block_retries: u32,
    /// For [`Job::Md5`]: the MD5 the ROM computed over the region.
    pub flash_md5: Option<[u8; 16]>,
    /// The baud rate the port ended at.
    pub baud: u32,
}

/// What the driver must do or may report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Play the bootloader reset for connect attempt `attempt` (from 0), then call
    /// [`Flasher::reset_done`].
    ResetRequested {
        /// Connect attempt, from 0.
        attempt: u32,
    },
    /// Set the port to this baud rate, then call [`Flasher::baud_changed`].
    SetBaud(u32),
    /// A new stage began.
    Stage(Stage),
    /// The chip (and its flash, when readable) is known.
    Detected(ChipInfo),
    /// A data block was acknowledged.
    Progress(Progress),
    /// With [`FlasherConfig::hold_last_block`]: the last data block is next; the flasher waits
    /// for [`Flasher::release_last_block`].
    LastBlock,
    /// The run is over.
    Finished(Result<Outcome, FlashError>),
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlashError {
    /// The ROM never answered SYNC.
    #[error("no answer from the ROM bootloader after {attempts} connect attempts")]
    NoSync {
        /// Connect attempts made.
        attempts: u32,
    },
    /// The magic register holds a value of no known chip, and GET_SECURITY_INFO did not help.
    #[error("unknown chip (magic value 0x{magic:08X})")]
    UnknownChip {
        /// The magic register.
        magic: u32,
    },
    /// The image is for another chip.
    #[error("the image is for {expected} but the chip is {detected}")]
    ChipMismatch {
        /// The image's chip.
        expected: Chip,
        /// The detected chip.
        detected: Chip,
    },
    /// The image does not fit the flash.
    #[error("{len} bytes at 0x{offset:X} do not fit {flash_size} bytes of flash")]
    ImageTooLarge {
        /// Write offset.
        offset: u32,
        /// Image length.
        len: u64,
        /// Usable flash size.
        flash_size: u32,
    },
    /// The job cannot be done as asked (offset not sector aligned, empty image).
    #[error("invalid write: {0}")]
    InvalidJob(String),
    /// A command got no answer in time.
    #[error("no answer to {op} within {waited:?} while {stage}")]
    Timeout {
        /// Stage.
        stage: Stage,
        /// The command.
        op: Op,
        /// How long the flasher waited.
        waited: Duration,
    },
    /// The ROM refused a command.
    #[error("{op} failed while {stage}: {error}")]
    Rom {
        /// Stage.
        stage: Stage,
        /// The command.
        op: Op,
        /// The ROM's error bytes.
        error: RomError,
    },
    /// A reply could not be understood.
    #[error("unexpected reply to {op} while {stage}: {detail}")]
    Protocol {
        /// Stage.
        stage: Stage,
        /// The command.
        op: Op,
        /// What was wrong.
        detail: String,
    },
    /// The flash MD5 does not match the image.
    #[error(
        "flash MD5 {} does not match image MD5 {}",
        hex::encode(actual),
        hex::encode(expected)
    )]
    Md5Mismatch {
        /// The image's MD5.
        expected: [u8; 16],
        /// What the ROM computed over the flash.
        actual: [u8; 16],
    },
}

/// What to tell a person when the ROM does not answer SYNC.
pub const NO_SYNC_HINT: &str =
    "no answer from the ROM bootloader: hold BOOT/IO0 while resetting, or check the cable and port";

impl FlashError {
    /// Where it happened.
    pub fn stage(&self) -> Stage {
        match self {
            FlashError::NoSync { .. } => Stage::Connecting,
            FlashError::UnknownChip { .. } | FlashError::ChipMismatch { .. } => Stage::Detecting,
            FlashError::ImageTooLarge { .. } | FlashError::InvalidJob(_) => Stage::Configuring,
            FlashError::Timeout { stage, .. }
            | FlashError::Rom { stage, .. }
            | FlashError::Protocol { stage, .. } => *stage,
            FlashError::Md5Mismatch { .. } => Stage::Verifying,
        }
    }

    /// The product's status model: 5006 when the ROM could not be reached or configured, 5013
    /// when the image does not fit the device, 5010 when writing failed or the device went away
    /// mid-write, 5009 when the written flash does not match the image.
    pub fn to_task_error(&self) -> TaskError {
        match self {
            FlashError::NoSync { .. } => TaskError::new(ErrorCode::ConnectFailed, NO_SYNC_HINT),
            FlashError::UnknownChip { magic } => TaskError::new(
                ErrorCode::PrevalidationFailed,
                format!(
                    "the chip answered but its magic value 0x{magic:08X} is not a known ESP chip, so the image cannot be checked against it"
                ),
            ),
            FlashError::ChipMismatch { expected, detected } => TaskError::new(
                ErrorCode::PrevalidationFailed,
                format!(
                    "the image is built for {expected} but the chip on the port is {detected}; nothing was written"
                ),
            ),
            FlashError::ImageTooLarge {
                offset,
                len,
                flash_size,
            } => TaskError::new(
                ErrorCode::PrevalidationFailed,
                format!(
                    "the image ({len} bytes at 0x{offset:X}) does not fit the {} flash; nothing was written",
                    human_size(u64::from(*flash_size))
                ),
            ),
            FlashError::InvalidJob(why) => TaskError::new(
                ErrorCode::PrevalidationFailed,
                format!("{why}; nothing was written"),
            ),
            FlashError::Timeout { stage, op, waited } if stage.touches_flash() => TaskError::new(
                ErrorCode::SendFailed,
                format!(
                    "the device stopped answering while {stage} (no reply to {} within {:.1} s): it was probably unplugged or reset; the flash is incomplete, reconnect it and flash again",
                    op.name(),
                    waited.as_secs_f32()
                ),
            ),
            FlashError::Timeout { stage, op, waited } => TaskError::new(
                ErrorCode::ConnectFailed,
                format!(
                    "the ROM bootloader stopped answering while {stage} (no reply to {} within {:.1} s); check the cable and port, and that nothing else uses it",
                    op.name(),
                    waited.as_secs_f32()
                ),
            ),
            FlashError::Rom { stage, op, error } if stage.touches_flash() => TaskError::new(
                ErrorCode::SendFailed,
                format!(
                    "the ROM bootloader refused {} while {stage}: {error}; the flash is incomplete, flash again (and check the cable or power if it repeats)",
                    op.name()
                ),
            ),
            FlashError::Rom { stage, op, error } => TaskError::new(
                ErrorCode::ConnectFailed,
                format!(
                    "the ROM bootloader refused {} while {stage}: {error}",
                    op.name()
                ),
            ),
            FlashError::Protocol { stage, op, detail } => TaskError::new(
                if stage.touches_flash() {
                    ErrorCode::SendFailed
                } else {
                    ErrorCode::ConnectFailed
                },
                format!(
                    "garbled reply to {} while {stage}: {detail}; check the cable and that nothing else uses the port",
                    op.name()
                ),
            ),
            FlashError::Md5Mismatch { expected, actual } => TaskError::new(
                ErrorCode::ChecksumMismatch,
                format!(
                    "the flash MD5 {} does not match the image MD5 {}: the written data is corrupt; flash again, and replace the module if it repeats",
                    hex::encode(actual),
                    hex::encode(expected)
                ),
            ),
        }
    }
}

/// `4 MB`, `512 KB`, or bytes.
pub fn human_size(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

/// One data block of the write.
#[derive(Debug, Clone)]
struct Block {
    /// The bytes to send (padded for plain writes).
    data: Vec<u8>,
    /// Image bytes written once this block is acknowledged (cumulative, capped at the image).
    written_after: u64,
    /// Uncompressed bytes in this block (timeout scaling).
    uncompressed: u64,
}

/// The prepared write.
#[derive(Debug, Clone)]
struct Plan {
    offset: u32,
    len: u64,
    md5: [u8; 16],
    compressed: bool,
    blocks: Vec<Block>,
    wire_total: u64,
}

/// The command the flasher is waiting on, and what its answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    ReadMagic,
    SecurityInfo,
    ReadRtcCali,
    ReadEfuse4,
    Attach,
    IdSaveUsr,
    IdSaveUsr2,
    IdStart,
    IdPoll(u32),
    IdRead,
    IdRestore,
    SetParams,
    ChangeBaud,
    Begin,
    Data { index: usize, attempt: u32 },
    Md5,
    RegionMd5,
    EndBegin,
    End,
}

impl Step {
    fn stage(self) -> Stage {
        match self {
            Step::ReadMagic | Step::SecurityInfo => Stage::Detecting,
            Step::ReadRtcCali | Step::ReadEfuse4 | Step::ChangeBaud => Stage::ChangingBaud,
            Step::Attach
            | Step::IdSaveUsr
            | Step::IdSaveUsr2
            | Step::IdStart
            | Step::IdPoll(_)
            | Step::IdRead
            | Step::IdRestore
            | Step::SetParams => Stage::Configuring,
            Step::Begin => Stage::Erasing,
            Step::Data { .. } => Stage::Writing,
            Step::Md5 | Step::RegionMd5 => Stage::Verifying,
            Step::EndBegin | Step::End => Stage::Leaving,
        }
    }
}

#[derive(Debug, Clone)]
enum State {
    /// Waiting for the driver to play the reset of this attempt.
    AwaitReset { attempt: u32 },
    /// SYNC sent; waiting for the first reply.
    Syncing {
        attempt: u32,
        try_no: u32,
        deadline: Duration,
    },
    /// Between SYNC tries.
    SyncPause {
        attempt: u32,
        try_no: u32,
        until: Duration,
    },
    /// A command is in flight.
    Command {
        step: Step,
        op: Op,
        sent_at: Duration,
        deadline: Duration,
    },
    /// Waiting for the driver to change the port's baud rate.
    AwaitBaud,
    /// Dropping input after the baud change.
    Settle { until: Duration },
    /// Holding the last data block until the driver releases it.
    AwaitRelease { index: usize },
    /// Finished (successfully or not).
    Done,
}

/// The client-side state machine. See the module documentation.
#[derive(Debug)]
pub struct Flasher {
    cfg: FlasherConfig,
    job: Job,
    state: State,
    decoder: SlipDecoder,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    queue: VecDeque<Step>,
    rom: Option<RomInfo>,
    magic: u32,
    flash_id: Option<u32>,
    saved_usr: u32,
    saved_usr2: u32,
    rtc_cali: u32,
    baud: u32,
    plan: Option<Plan>,
    bytes_written: u64,
    wire_bytes: u64,
    block_retries: u32,
    verified_md5: Option<[u8; 16]>,
    flash_md5: Option<[u8; 16]>,
    last_released: bool,
    erase_started: bool,
    detected_reported: bool,
    skipped_replies: u64,
}

impl Flasher {
    /// A flasher for `job`. It starts by asking for the first reset ([`Event::ResetRequested`]).
    pub fn new(cfg: FlasherConfig, job: Job) -> Flasher {
        let mut events = VecDeque::new();
        events.push_back(Event::Stage(Stage::Connecting));
        events.push_back(Event::ResetRequested { attempt: 0 });
        let baud = cfg.baud;
        let mut flasher = Flasher {
            cfg,
            job,
            state: State::AwaitReset { attempt: 0 },
            decoder: SlipDecoder::new(),
            transmit: VecDeque::new(),
            events,
            queue: VecDeque::new(),
            rom: None,
            magic: 0,
            flash_id: None,
            saved_usr: 0,
            saved_usr2: 0,
            rtc_cali: 0,
            baud,
            plan: None,
            bytes_written: 0,
            wire_bytes: 0,
            block_retries: 0,
            verified_md5: None,
            flash_md5: None,
            last_released: false,
            erase_started: false,
            detected_reported: false,
            skipped_replies: 0,
        };
        if let Err(e) = flasher.check_job() {
            flasher.events.clear();
            flasher.fail(e);
        }
        flasher
    }

    /// Refuses a write that cannot work whatever the chip: empty, or not sector aligned.
    fn check_job(&self) -> Result<(), FlashError> {
        let Job::Write { offset, image } = &self.job else {
            return Ok(());
        };
        if !offset.is_multiple_of(SECTOR_SIZE) {
            return Err(FlashError::InvalidJob(format!(
                "offset 0x{offset:X} is not aligned to a 4 KiB flash sector"
            )));
        }
        if image.is_empty() {
            return Err(FlashError::InvalidJob("the image is empty".into()));
        }
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &FlasherConfig {
        &self.cfg
    }

    /// Bytes to write to the port, in order.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] must be called next, if the flasher is waiting on time.
    pub fn poll_timeout(&self) -> Option<Duration> {
        match self.state {
            State::Syncing { deadline, .. } | State::Command { deadline, .. } => Some(deadline),
            State::SyncPause { until, .. } | State::Settle { until } => Some(until),
            State::AwaitReset { .. }
            | State::AwaitBaud
            | State::AwaitRelease { .. }
            | State::Done => None,
        }
    }

    /// Whether the run is over.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Whether stopping now leaves the flash untouched (nothing erased yet).
    pub fn can_stop_safely(&self) -> bool {
        !self.erase_started
    }

    /// Image bytes written and acknowledged so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Responses skipped because they did not answer the command in flight (extra SYNC
    /// replies, late answers).
    pub fn skipped_replies(&self) -> u64 {
        self.skipped_replies
    }

    /// The driver played the reset for the current connect attempt (or had none to play).
    pub fn reset_done(&mut self, now: Duration) {
        if let State::AwaitReset { attempt } = self.state {
            self.decoder.clear();
            self.send_sync(attempt, 0, now);
        }
    }

    /// The driver recorded its point of no return: the last data block goes out now.
    pub fn release_last_block(&mut self, now: Duration) {
        if let State::AwaitRelease { index } = self.state {
            self.last_released = true;
            self.send_data(index, 0, now);
        }
    }

    /// The driver set the port to the baud rate of [`Event::SetBaud`].
    pub fn baud_changed(&mut self, now: Duration) {
        if let State::AwaitBaud = self.state {
            self.decoder.clear();
            self.state = State::Settle {
                until: now + self.cfg.baud_settle,
            };
        }
    }

    /// Bytes received from the port.
    pub fn handle_input(&mut self, bytes: &[u8], now: Duration) {
        if matches!(self.state, State::Settle { .. } | State::AwaitBaud) {
            return;
        }
        self.decoder.push(bytes);
        while let Some(frame) = self.decoder.next_frame() {
            if self.is_finished() {
                return;
            }
            let Ok(resp) = Response::parse(&frame) else {
                self.skipped_replies += 1;
                continue;
            };
            self.handle_response(resp, now);
        }
    }

    /// Time passed; call when [`Self::poll_timeout`] is due (calling early is harmless).
    pub fn handle_timeout(&mut self, now: Duration) {
        match self.state.clone() {
            State::Syncing {
                attempt,
                try_no,
                deadline,
            } if now >= deadline => {
                if try_no + 1 < self.cfg.syncs_per_attempt {
                    self.state = State::SyncPause {
                        attempt,
                        try_no: try_no + 1,
                        until: now + self.cfg.sync_pause,
                    };
                } else if attempt + 1 < self.cfg.connect_attempts {
                    self.state = State::AwaitReset {
                        attempt: attempt + 1,
                    };
                    self.events.push_back(Event::ResetRequested {
                        attempt: attempt + 1,
                    });
                } else {
                    self.fail(FlashError::NoSync {
                        attempts: attempt + 1,
                    });
                }
            }
            State::SyncPause {
                attempt,
                try_no,
                until,
            } if now >= until => self.send_sync(attempt, try_no, now),
            State::Settle { until } if now >= until => {
                self.decoder.clear();
                self.next_step(now);
            }
            State::Command {
                step,
                op,
                sent_at,
                deadline,
            } if now >= deadline => match step {
                Step::Data { index, attempt } if attempt + 1 < self.cfg.block_attempts => {
                    self.block_retries += 1;
                    self.send_data(index, attempt + 1, now);
                }
                // Leaving the loader: the ROM may jump to the application before it answers.
                Step::EndBegin | Step::End => self.next_step(now),
                _ => self.fail(FlashError::Timeout {
                    stage: step.stage(),
                    op,
                    waited: now.saturating_sub(sent_at),
                }),
            },
            _ => {}
        }
    }

    fn send_sync(&mut self, attempt: u32, try_no: u32, now: Duration) {
        self.transmit.push_back(Command::Sync.to_frame());
        self.state = State::Syncing {
            attempt,
            try_no,
            deadline: now + self.cfg.sync_timeout,
        };
    }

    fn send(&mut self, step: Step, cmd: Command, timeout: Duration, now: Duration) {
        let op = cmd.op();
        self.transmit.push_back(cmd.to_frame());
        self.state = State::Command {
            step,
            op,
            sent_at: now,
            deadline: now + timeout,
        };
    }

    fn fail(&mut self, err: FlashError) {
        self.state = State::Done;
        self.events.push_back(Event::Finished(Err(err)));
    }

    fn rom(&self) -> RomInfo {
        self.rom.unwrap_or(RomInfo::of(Chip::Esp32))
    }

    fn report_detected(&mut self) {
        if !self.detected_reported {
            self.detected_reported = true;
            self.events.push_back(Event::Detected(self.chip_info()));
        }
    }

    fn chip_info(&self) -> ChipInfo {
        ChipInfo {
            chip: self.rom().chip,
            magic: self.magic,
            flash_id: self.flash_id,
            flash_size: self.flash_id.and_then(flash_size_from_id),
        }
    }

    fn handle_response(&mut self, resp: Response, now: Duration) {
        match self.state {
            State::Syncing { .. } if resp.op == Op::Sync.code() => {
                // The first of the ROM's SYNC replies; the others are skipped below as replies to
                // no command in flight.
                self.events.push_back(Event::Stage(Stage::Detecting));
                self.send(
                    Step::ReadMagic,
                    Command::ReadReg {
                        addr: CHIP_DETECT_MAGIC_REG,
                    },
                    self.cfg.command_timeout,
                    now,
                );
            }
            State::Command { step, op, .. } if resp.op == op.code() => {
                self.handle_reply(step, op, resp, now);
            }
            _ => self.skipped_replies += 1,
        }
    }

    fn handle_reply(&mut self, step: Step, op: Op, resp: Response, now: Duration) {
        let payload_len = reply_payload_len(step, resp.data.len());
        let payload = match resp.outcome(payload_len) {
            Ok(p) => p.to_vec(),
            Err(StatusError::Rom(error)) => {
                return self.on_rom_error(step, op, error, now);
            }
            Err(StatusError::Truncated { expected, actual }) => {
                return self.fail(FlashError::Protocol {
                    stage: step.stage(),
                    op,
                    detail: format!("{actual} data bytes, expected at least {expected}"),
                });
            }
        };
        let value = resp.value;
        match step {
            Step::ReadMagic => {
                self.magic = value;
                match RomInfo::chip_from_magic(value) {
                    Some(chip) => self.on_chip(chip, now),
                    None => self.send(
                        Step::SecurityInfo,
                        Command::GetSecurityInfo,
                        self.cfg.command_timeout,
                        now,
                    ),
                }
            }
            Step::SecurityInfo => self.on_security_info(&payload, now),
            Step::ReadRtcCali => {
                self.rtc_cali = value;
                self.next_step(now);
            }
            Step::ReadEfuse4 => {
                let target = self.cfg.target_baud.unwrap_or(self.baud);
                let rom_baud = esp32_rom_baud(target, self.rtc_cali, value);
                self.send(
                    Step::ChangeBaud,
                    Command::ChangeBaudrate {
                        new: rom_baud,
                        old: 0,
                    },
                    self.cfg.command_timeout,
                    now,
                );
            }
            Step::ChangeBaud => {
                let target = self.cfg.target_baud.unwrap_or(self.baud);
                self.baud = target;
                self.state = State::AwaitBaud;
                self.events.push_back(Event::SetBaud(target));
            }
            Step::IdSaveUsr => {
                self.saved_usr = value;
                self.next_step(now);
            }
            Step::IdSaveUsr2 => {
                self.saved_usr2 = value;
                self.next_step(now);
            }
            Step::IdPoll(n) => {
                if value & SPI_CMD_USR != 0 {
                    if n + 1 >= 10 {
                        return self.fail(FlashError::Protocol {
                            stage: Stage::Configuring,
                            op,
                            detail: "the SPI flash command did not complete".into(),
                        });
                    }
                    self.queue.push_front(Step::IdPoll(n + 1));
                }
                self.next_step(now);
            }
            Step::IdRead => {
                let id = value & 0x00FF_FFFF;
                self.flash_id = (id != 0 && id != 0x00FF_FFFF).then_some(id);
                self.report_detected();
                self.next_step(now);
            }
            Step::Md5 | Step::RegionMd5 => self.on_md5(step, op, &payload, now),
            Step::Data { index, .. } => self.on_block_written(index, now),
            Step::Attach
            | Step::IdStart
            | Step::IdRestore
            | Step::SetParams
            | Step::Begin
            | Step::EndBegin
            | Step::End => self.next_step(now),
        }
    }

    /// `GET_SECURITY_INFO`: the chip, from its id (ESP32-S3 on) or its reply's length (S2).
    fn on_security_info(&mut self, payload: &[u8], now: Duration) {
        // `flags u32, flash_crypt_cnt u8, key_purposes [u8; 7]` then, after the ESP32-S2,
        // `chip_id u32, api_version u32`.
        let chip = if payload.len() == 20 {
            let id = u32::from_le_bytes([payload[12], payload[13], payload[14], payload[15]]);
            u16::try_from(id).ok().and_then(Chip::from_image_chip_id)
        } else {
            Some(Chip::Esp32S2)
        };
        match chip {
            Some(chip) => self.on_chip(chip, now),
            None => self.fail(FlashError::UnknownChip { magic: self.magic }),
        }
    }

    /// `SPI_FLASH_MD5`: of the region asked about (recovery), or of the image just written,
    /// which must match the plan's.
    fn on_md5(&mut self, step: Step, op: Op, payload: &[u8], now: Duration) {
        let format = if payload.len() == Md5Format::RomHex.len() {
            Md5Format::RomHex
        } else {
            Md5Format::StubRaw
        };
        let Some(actual) = format.decode(payload) else {
            return self.fail(FlashError::Protocol {
                stage: Stage::Verifying,
                op,
                detail: format!(
                    "MD5 reply {:?} is not hex",
                    String::from_utf8_lossy(payload)
                ),
            });
        };
        if step == Step::RegionMd5 {
            self.flash_md5 = Some(actual);
            return self.next_step(now);
        }
        let expected = self.plan.as_ref().map(|p| p.md5).unwrap_or_default();
        if actual != expected {
            return self.fail(FlashError::Md5Mismatch { expected, actual });
        }
        self.verified_md5 = Some(actual);
        self.next_step(now);
    }

    /// A `FLASH_DATA`/`FLASH_DEFL_DATA` block was written: progress, then the next block.
    fn on_block_written(&mut self, index: usize, now: Duration) {
        if let Some(plan) = &self.plan {
            let b = &plan.blocks[index];
            self.bytes_written = b.written_after;
            let progress = Progress {
                written: self.bytes_written,
                total: plan.len,
                wire_sent: plan.blocks[..=index]
                    .iter()
                    .map(|b| b.data.len() as u64)
                    .sum(),
                wire_total: plan.wire_total,
            };
            self.events.push_back(Event::Progress(progress));
        }
        if let Some(plan) = &self.plan
            && index + 1 < plan.blocks.len()
        {
            return self.send_data(index + 1, 0, now);
        }
        self.next_step(now);
    }

    fn on_rom_error(&mut self, step: Step, op: Op, error: RomError, now: Duration) {
        match step {
            Step::Data { index, attempt } if attempt + 1 < self.cfg.block_attempts => {
                self.block_retries += 1;
                self.send_data(index, attempt + 1, now);
            }
            Step::SecurityInfo => self.fail(FlashError::UnknownChip { magic: self.magic }),
            Step::EndBegin | Step::End => self.next_step(now),
            _ => self.fail(FlashError::Rom {
                stage: step.stage(),
                op,
                error,
            }),
        }
    }

    /// The chip is known: check it against the image and line up the rest of the run.
    fn on_chip(&mut self, chip: Chip, now: Duration) {
        let rom = RomInfo::of(chip);
        self.rom = Some(rom);
        if let (Some(expected), Job::Write { .. }) = (self.cfg.expect_chip, &self.job)
            && expected != chip
        {
            return self.fail(FlashError::ChipMismatch {
                expected,
                detected: chip,
            });
        }
        self.events.push_back(Event::Stage(Stage::Configuring));
        self.queue.push_back(Step::Attach);
        if rom.spi_regs().is_some() {
            self.queue.extend([
                Step::IdSaveUsr,
                Step::IdSaveUsr2,
                Step::IdStart,
                Step::IdPoll(0),
                Step::IdRead,
                Step::IdRestore,
            ]);
        }
        if rom.has_spi_set_params() {
            self.queue.push_back(Step::SetParams);
        }
        let wants_baud = self.cfg.target_baud.is_some_and(|b| b != self.baud);
        if matches!(self.job, Job::Write { .. }) && wants_baud && rom.has_change_baudrate() {
            if chip == Chip::Esp32 {
                self.queue.extend([Step::ReadRtcCali, Step::ReadEfuse4]);
            } else {
                self.queue.push_back(Step::ChangeBaud);
            }
        }
        if matches!(self.job, Job::Md5 { .. }) && rom.has_md5() {
            self.queue.push_back(Step::RegionMd5);
        }
        if matches!(self.job, Job::Write { .. }) {
            self.queue.push_back(Step::Begin);
            if self.cfg.verify && rom.has_md5() {
                self.queue.push_back(Step::Md5);
            }
            if self.cfg.after != After::StayInLoader {
                self.queue.extend([Step::EndBegin, Step::End]);
            }
        }
        self.next_step(now);
    }

    fn usable_flash_size(&self) -> Option<u32> {
        let detected = self.flash_id.and_then(flash_size_from_id);
        match (self.cfg.flash_size, detected) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn next_step(&mut self, now: Duration) {
        let Some(step) = self.queue.pop_front() else {
            return self.finish();
        };
        let rom = self.rom();
        let t = self.cfg.command_timeout;
        let regs = rom.spi_regs();
        match step {
            Step::Attach => {
                let cmd = if rom.has_spi_attach() {
                    Command::SpiAttach {
                        hspi_arg: self.cfg.spi_attach_arg,
                        rom_legacy: Some(0),
                    }
                } else {
                    // The ESP8266 ROM attaches the flash on FLASH_BEGIN.
                    Command::FlashBegin(self.begin(0, 0, 0))
                };
                self.send(step, cmd, t, now);
            }
            Step::IdSaveUsr | Step::IdSaveUsr2 | Step::IdPoll(_) | Step::IdRead => {
                let Some(r) = regs else {
                    return self.next_step(now);
                };
                let addr = match step {
                    Step::IdSaveUsr => r.usr,
                    Step::IdSaveUsr2 => r.usr2,
                    Step::IdPoll(_) => r.cmd,
                    _ => r.w0,
                };
                self.send(step, Command::ReadReg { addr }, t, now);
            }
            Step::IdStart => {
                let Some(r) = regs else {
                    return self.next_step(now);
                };
                self.send(step, Command::WriteReg(rdid_writes(&r)), t, now);
            }
            Step::IdRestore => {
                let Some(r) = regs else {
                    return self.next_step(now);
                };
                let writes = vec![
                    RegWrite::new(r.usr, self.saved_usr),
                    RegWrite::new(r.usr2, self.saved_usr2),
                ];
                self.send(step, Command::WriteReg(writes), t, now);
            }
            Step::SetParams => {
                self.report_detected();
                match self.usable_flash_size() {
                    Some(size) => self.send(
                        step,
                        Command::SpiSetParams(SpiParams::for_size(size)),
                        t,
                        now,
                    ),
                    None => self.next_step(now),
                }
            }
            Step::ReadRtcCali => {
                self.events.push_back(Event::Stage(Stage::ChangingBaud));
                self.send(
                    step,
                    Command::ReadReg {
                        addr: ESP32_RTCCALICFG1,
                    },
                    t,
                    now,
                );
            }
            Step::ReadEfuse4 => {
                self.send(
                    step,
                    Command::ReadReg {
                        addr: ESP32_EFUSE_RD_BASE + 4 * 4,
                    },
                    t,
                    now,
                );
            }
            Step::ChangeBaud => {
                self.events.push_back(Event::Stage(Stage::ChangingBaud));
                let new = self.cfg.target_baud.unwrap_or(self.baud);
                self.send(step, Command::ChangeBaudrate { new, old: 0 }, t, now);
            }
            Step::Begin => {
                self.report_detected();
                if let Err(e) = self.prepare() {
                    return self.fail(e);
                }
                self.send_begin(rom.chip, now);
            }
            Step::Data { index, attempt } => self.send_data(index, attempt, now),
            Step::Md5 | Step::RegionMd5 => self.send_md5(step, now),
            Step::EndBegin => {
                self.events.push_back(Event::Stage(Stage::Leaving));
                self.send(step, Command::FlashBegin(self.begin(0, 0, 0)), t, now);
            }
            Step::End => {
                let reboot = self.cfg.after == After::Reboot;
                self.send(step, Command::FlashEnd { reboot }, t, now);
            }
            Step::ReadMagic | Step::SecurityInfo => self.next_step(now),
        }
        // After FLASH_BEGIN is acknowledged the data blocks follow.
        if step == Step::Begin {
            self.queue.push_front(Step::Data {
                index: 0,
                attempt: 0,
            });
        }
    }

    /// `FLASH_BEGIN` (or its deflate form) for the prepared plan: the erase starts.
    fn send_begin(&mut self, chip: Chip, now: Duration) {
        let Some(plan) = &self.plan else {
            return self.finish();
        };
        let (cmd, timeout) = if plan.compressed {
            let erase = (plan.len as u32).div_ceil(ROM_BLOCK_SIZE) * ROM_BLOCK_SIZE;
            let b = self.begin(erase, plan.blocks.len() as u32, plan.offset);
            (
                Command::FlashDeflBegin(b),
                self.cfg
                    .scaled_timeout(self.cfg.erase_timeout_per_mb, u64::from(erase)),
            )
        } else {
            let size = plan.len as u32;
            let erase = if chip == Chip::Esp8266 {
                esp8266_erase_size(plan.offset, size)
            } else {
                size
            };
            let b = self.begin(erase, plan.blocks.len() as u32, plan.offset);
            (
                Command::FlashBegin(b),
                self.cfg
                    .scaled_timeout(self.cfg.erase_timeout_per_mb, plan.len),
            )
        };
        self.erase_started = true;
        self.events.push_back(Event::Stage(Stage::Erasing));
        self.send(Step::Begin, cmd, timeout, now);
    }

    /// `SPI_FLASH_MD5` of the image just written (`Md5`) or of the region asked about
    /// (`RegionMd5`).
    fn send_md5(&mut self, step: Step, now: Duration) {
        let (addr, size, bytes) = match (step, &self.job, &self.plan) {
            (Step::RegionMd5, Job::Md5 { offset, len }, _) => (*offset, *len, u64::from(*len)),
            (Step::Md5, _, Some(plan)) => (plan.offset, plan.len as u32, plan.len),
            _ => return self.next_step(now),
        };
        let timeout = self.cfg.scaled_timeout(self.cfg.md5_timeout_per_mb, bytes);
        self.events.push_back(Event::Stage(Stage::Verifying));
        self.send(step, Command::SpiFlashMd5 { addr, size }, timeout, now);
    }

    fn begin(&self, size: u32, num_blocks: u32, offset: u32) -> Begin {
        Begin {
            size,
            num_blocks,
            block_size: ROM_BLOCK_SIZE,
            offset,
            encrypted: self.rom().begin_has_encrypted_word().then_some(0),
        }
    }

    fn send_data(&mut self, index: usize, attempt: u32, now: Duration) {
        let Some(plan) = &self.plan else {
            return self.finish();
        };
        if self.cfg.hold_last_block
            && !self.last_released
            && attempt == 0
            && index + 1 == plan.blocks.len()
        {
            self.state = State::AwaitRelease { index };
            self.events.push_back(Event::LastBlock);
            return;
        }
        let block = &plan.blocks[index];
        let seq = index as u32;
        let (cmd, timeout) = if plan.compressed {
            (
                Command::FlashDeflData {
                    seq,
                    data: block.data.clone(),
                },
                self.cfg
                    .scaled_timeout(self.cfg.write_timeout_per_mb, block.uncompressed),
            )
        } else {
            (
                Command::FlashData {
                    seq,
                    data: block.data.clone(),
                },
                self.cfg.command_timeout,
            )
        };
        if index == 0 && attempt == 0 {
            self.events.push_back(Event::Stage(Stage::Writing));
        }
        self.wire_bytes += block.data.len() as u64;
        self.send(Step::Data { index, attempt }, cmd, timeout, now);
    }

    /// Checks the job against the chip and flash, and cuts the image into blocks.
    fn prepare(&mut self) -> Result<(), FlashError> {
        let Job::Write { offset, image } = &self.job else {
            return Ok(());
        };
        let offset = *offset;
        // esptool pads to a 4-byte multiple; the padding is what erased flash holds anyway.
        let mut data = image.to_vec();
        data.resize(data.len().div_ceil(4) * 4, 0xFF);
        let len = data.len() as u64;
        if let Some(size) = self.usable_flash_size()
            && u64::from(offset) + len > u64::from(size)
        {
            return Err(FlashError::ImageTooLarge {
                offset,
                len,
                flash_size: size,
            });
        }
        let md5: [u8; 16] = Md5::digest(&data).into();
        let compressed = self.cfg.compress && self.rom().has_compressed_write();
        let blocks = if compressed {
            compressed_blocks(&data)
        } else {
            data.chunks(ROM_BLOCK_SIZE as usize)
                .scan(0u64, |written, chunk| {
                    *written += chunk.len() as u64;
                    let mut block = chunk.to_vec();
                    block.resize(ROM_BLOCK_SIZE as usize, 0xFF);
                    Some(Block {
                        data: block,
                        written_after: *written,
                        uncompressed: chunk.len() as u64,
                    })
                })
                .collect()
        };
        let wire_total = blocks.iter().map(|b: &Block| b.data.len() as u64).sum();
        self.plan = Some(Plan {
            offset,
            len,
            md5,
            compressed,
            blocks,
            wire_total,
        });
        Ok(())
    }

    fn finish(&mut self) {
        let compressed = self.plan.as_ref().is_some_and(|p| p.compressed);
        let outcome = Outcome {
            chip: self.chip_info(),
            bytes_written: self.bytes_written,
            wire_bytes: self.wire_bytes,
            compressed,
            verified_md5: self.verified_md5,
            block_retries: self.block_retries,
            flash_md5: self.flash_md5,
            baud: self.baud,
        };
        self.report_detected();
        self.state = State::Done;
        self.events.push_back(Event::Finished(Ok(outcome)));
    }
}

/// Compresses `data` as one zlib stream (level 9, like esptool) and cuts it into ROM blocks,
/// noting how many image bytes each block carries by inflating the blocks in turn.
fn compressed_blocks(data: &[u8]) -> Vec<Block> {
    let mut comp = Compress::new(Compression::best(), true);
    let mut stream = Vec::with_capacity(data.len() / 2 + 64);
    loop {
        if stream.capacity() - stream.len() < 4096 {
            stream.reserve(64 * 1024);
        }
        let consumed = comp.total_in() as usize;
        match comp.compress_vec(&data[consumed..], &mut stream, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let mut inflater = Decompress::new(true);
    let mut scratch = vec![0u8; 64 * 1024];
    let mut blocks = Vec::new();
    for chunk in stream.chunks(ROM_BLOCK_SIZE as usize) {
        let before = inflater.total_out();
        let mut input = chunk;
        loop {
            let in_before = inflater.total_in();
            let out_before = inflater.total_out();
            let status = inflater.decompress(input, &mut scratch, FlushDecompress::None);
            let used = (inflater.total_in() - in_before) as usize;
            input = &input[used..];
            let produced = inflater.total_out() - out_before;
            let output_full = produced == scratch.len() as u64;
            match status {
                Ok(Status::StreamEnd) | Err(_) => break,
                Ok(_) if !output_full && (input.is_empty() || used == 0) => break,
                Ok(_) => {}
            }
        }
        let written = inflater.total_out();
        blocks.push(Block {
            data: chunk.to_vec(),
            written_after: written.min(data.len() as u64),
            uncompressed: written - before,
        });
    }
    if let Some(last) = blocks.last_mut() {
        last.written_after = data.len() as u64;
    }
    blocks
}

/// The register writes that run the SPI flash's RDID (command byte 0x9F, 24 bits back; lengths
/// are in bits minus one).
fn rdid_writes(r: &super::chip::SpiRegs) -> Vec<RegWrite> {
    let mut writes = Vec::new();
    match r.miso_dlen {
        Some(miso) => writes.push(RegWrite::new(miso, 24 - 1)),
        None => writes.push(RegWrite::new(r.usr1, (24 - 1) << 8)),
    }
    writes.push(RegWrite::new(r.usr, SPI_USR_COMMAND | SPI_USR_MISO));
    writes.push(RegWrite::new(r.usr2, (7 << 28) | u32::from(SPIFLASH_RDID)));
    writes.push(RegWrite::new(r.w0, 0));
    writes.push(RegWrite::new(r.cmd, SPI_CMD_USR));
    writes
}

/// How many data bytes a reply to `step` carries before its status bytes.
fn reply_payload_len(step: Step, data_len: usize) -> usize {
    match step {
        // 20 bytes from ESP32-S3 on, 12 from the ESP32-S2.
        Step::SecurityInfo => {
            if data_len >= 22 {
                20
            } else {
                12
            }
        }
        Step::Md5 | Step::RegionMd5 => {
            if data_len >= Md5Format::RomHex.len() + 2 {
                Md5Format::RomHex.len()
            } else {
                Md5Format::StubRaw.len()
            }
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_blocks_cover_the_image() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let blocks = compressed_blocks(&data);
        let stream: Vec<u8> = blocks.iter().flat_map(|b| b.data.clone()).collect();
        let mut out = Vec::new();
        let mut d = flate2::read::ZlibDecoder::new(&stream[..]);
        std::io::Read::read_to_end(&mut d, &mut out).unwrap();
        assert_eq!(out, data);
        assert!(
            blocks
                .iter()
                .all(|b| b.data.len() <= ROM_BLOCK_SIZE as usize)
        );
        let sum: u64 = blocks.iter().map(|b| b.uncompressed).sum();
        assert_eq!(sum, data.len() as u64);
        assert_eq!(blocks.last().unwrap().written_after, data.len() as u64);
        assert!(
            blocks
                .windows(2)
                .all(|w| w[0].written_after <= w[1].written_after)
        );
    }

    #[test]
    fn scaled_timeouts_follow_esptool() {
        let cfg = FlasherConfig::default();
        assert_eq!(
            cfg.scaled_timeout(cfg.erase_timeout_per_mb, 1_000),
            Duration::from_secs(3)
        );
        assert_eq!(
            cfg.scaled_timeout(cfg.erase_timeout_per_mb, 4_000_000),
            Duration::from_secs(160)
        );
        assert_eq!(
            cfg.scaled_timeout(cfg.md5_timeout_per_mb, 1_000_000),
            Duration::from_secs(8)
        );
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(4 << 20), "4 MB");
        assert_eq!(human_size(512 << 10), "512 KB");
        assert_eq!(human_size(1000), "1000 bytes");
    }
}
