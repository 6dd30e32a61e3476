//! The ROM side: a simulated ESP ROM bootloader, as a pure command handler.
//!
//! What it does: answers the ROM commands the way esptool 5.6 and this crate's flasher expect:
//! eight replies to SYNC (value non-zero, as from a ROM), READ_REG from a register file seeded
//! with the chip's detection magic, `UART_CLKDIV`, eFuses (zero) and an SPI controller that
//! answers RDID with the flash's JEDEC id; WRITE_REG (entries in order; writing `SPI_CMD` runs
//! the SPI command); SPI_ATTACH, SPI_SET_PARAMS, CHANGE_BAUDRATE; FLASH_BEGIN / FLASH_DATA /
//! FLASH_END and their FLASH_DEFL_* twins (erase up front in 4 KiB sectors, NOR semantics:
//! writes clear bits, zlib inflated as it arrives); SPI_FLASH_MD5 as 32 ASCII hex digits;
//! READ_FLASH_SLOW; MEM_* (accepted, nothing runs); GET_SECURITY_INFO on chips that have it. Any
//! other opcode, or one the chip's ROM lacks, gets status 1 / error 0x05. It keeps the flash in
//! memory (erased to 0xFF) and counts what happened, and it can misbehave on purpose
//! ([`Faults`]): stay silent, fail a block's checksum, fail a flash write, corrupt a byte, or
//! vanish mid-write.
//!
//! What it does not do: I/O, time, the flasher stub (`OHAI`, 16 KiB blocks) or secure download
//! mode. The simulator in `ota-sim` puts it on a pseudo-terminal.

use std::collections::{HashMap, VecDeque};

use flate2::{Decompress, FlushDecompress, Status as ZStatus};
use md5::{Digest, Md5};

use super::chip::{
    CHIP_DETECT_MAGIC_REG, Chip, ESP32_EFUSE_RD_BASE, ESP32_RTCCALICFG1, RomInfo, SPI_CMD_USR,
    SPIFLASH_RDID,
};
use super::command::{Begin, Command, CommandError, Md5Format, winbond_flash_id};
use super::packet::{Op, Request, Response, RomError, Status, StatusLayout};
use super::slip::SlipDecoder;

/// Flash sector: the unit the ROM erases.
const SECTOR: u32 = 0x1000;
/// Value of SYNC replies (any non-zero value says "ROM, not stub").
const SYNC_VALUE: u32 = 0x2012_0707;
/// Replies the ROM sends to one SYNC.
const SYNC_REPLIES: usize = 8;

/// A fault that fires on one data block, a number of times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockFault {
    /// Sequence number of the block (in its FLASH_BEGIN session).
    pub seq: u32,
    /// How many times it fires; `u32::MAX` for every time.
    pub times: u32,
}

impl BlockFault {
    /// Fires on every attempt at block `seq`.
    pub fn always(seq: u32) -> Self {
        BlockFault {
            seq,
            times: u32::MAX,
        }
    }

    /// Fires on the first `times` attempts at block `seq`.
    pub fn times(seq: u32, times: u32) -> Self {
        BlockFault { seq, times }
    }
}

/// Ways the simulated ROM misbehaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Never answer anything (the chip is not in download mode, or the cable is wrong).
    pub silent: bool,
    /// Answer this data block with error 0x07 (checksum), as if it was corrupted on the line.
    pub checksum_error: Option<BlockFault>,
    /// Answer this data block with error 0x08 (flash write failed).
    pub flash_write_error: Option<BlockFault>,
    /// Flip a bit of the byte at this flash address whenever it is written, so the MD5 of the
    /// region does not match.
    pub corrupt_flash_byte: Option<u32>,
    /// After acknowledging this many data blocks (over the device's life), stop answering and
    /// report [`RomEvent::Unplugged`].
    pub unplug_after_blocks: Option<u32>,
}

/// What the ROM did that its host (the simulator) should act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RomEvent {
    /// CHANGE_BAUDRATE was acknowledged; the UART now runs at this (ROM-scaled) rate.
    BaudChanged(u32),
    /// FLASH_END asked to run the application: the ROM no longer answers.
    RanUserCode,
    /// FLASH_END asked for a reboot: the chip reset (and, with IO0 held, is back in the ROM).
    Rebooted,
    /// The unplug fault fired: the host should close the line.
    Unplugged,
}

/// What the ROM has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RomCounters {
    /// SYNC requests answered.
    pub syncs: u64,
    /// Requests by opcode byte.
    pub requests: HashMap<u8, u64>,
    /// Requests refused with 0x05 (unknown or unsupported opcode, malformed payload).
    pub invalid: u64,
    /// FLASH_BEGIN / FLASH_DEFL_BEGIN sessions.
    pub begins: u64,
    /// Data blocks acknowledged.
    pub blocks_ok: u64,
    /// Data blocks refused (checksum, write error, sequence).
    pub blocks_failed: u64,
    /// Bytes written to flash (uncompressed).
    pub bytes_written: u64,
    /// Write sessions that reached their end (the last announced block, or the end of the zlib
    /// stream, was written): images received in full.
    pub writes_completed: u64,
    /// Bytes erased.
    pub bytes_erased: u64,
    /// SPI_FLASH_MD5 requests.
    pub md5_requests: u64,
    /// CHANGE_BAUDRATE requests.
    pub baud_changes: u64,
}

/// Settings of a simulated ROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RomConfig {
    /// The chip.
    pub chip: Chip,
    /// Flash size in bytes.
    pub flash_size: u32,
    /// JEDEC id the SPI controller returns; `None` for a Winbond id matching `flash_size`.
    pub flash_id: Option<u32>,
    /// Injected faults.
    pub faults: Faults,
}

impl RomConfig {
    /// An ESP32 with 4 MiB of flash and no faults.
    pub fn esp32() -> Self {
        RomConfig {
            chip: Chip::Esp32,
            flash_size: 4 * 1024 * 1024,
            flash_id: None,
            faults: Faults::default(),
        }
    }

    /// An ESP8266 with 1 MiB of flash and no faults.
    pub fn esp8266() -> Self {
        RomConfig {
            chip: Chip::Esp8266,
            flash_size: 1024 * 1024,
            flash_id: None,
            faults: Faults::default(),
        }
    }
}

#[derive(Debug)]
enum WriteSession {
    None,
    Plain {
        offset: u32,
        size: u32,
        blocks: u32,
        block_size: u32,
        next_seq: u32,
    },
    Deflate {
        offset: u32,
        size: u32,
        next_seq: u32,
        inflater: Box<Decompress>,
        written: u32,
        finished: bool,
    },
}

/// A simulated ROM bootloader. Feed it bytes from the line; send what
/// [`RomDevice::poll_transmit`] gives back.
#[derive(Debug)]
pub struct RomDevice {
    cfg: RomConfig,
    info: RomInfo,
    flash: Vec<u8>,
    regs: HashMap<u32, u32>,
    decoder: SlipDecoder,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<RomEvent>,
    session: WriteSession,
    counters: RomCounters,
    checksum_fault_left: u32,
    write_fault_left: u32,
    gone: bool,
    running_app: bool,
    baud: u32,
}

impl RomDevice {
    /// A ROM in download mode with its flash erased.
    pub fn new(cfg: RomConfig) -> Self {
        let info = RomInfo::of(cfg.chip);
        let flash = vec![0xFF; cfg.flash_size as usize];
        let mut regs = HashMap::new();
        if let Some(magic) = info.magic_values().first() {
            regs.insert(CHIP_DETECT_MAGIC_REG, *magic);
        }
        if let Some(clkdiv) = info.uart_clkdiv_reg() {
            regs.insert(clkdiv, info.uart_clkdiv_at_115200());
        }
        if cfg.chip == Chip::Esp32 {
            // A ROM crystal estimate of exactly 40 MHz (see `esp32_rom_baud`): cali 800, CK8M 128.
            regs.insert(ESP32_RTCCALICFG1, 800 << 7);
            regs.insert(ESP32_EFUSE_RD_BASE + 16, 128);
            // Base MAC 24:0A:C4:12:34:56 in eFuse words 1 and 2 (as esptool reads it).
            regs.insert(ESP32_EFUSE_RD_BASE + 4, 0xC412_3456);
            regs.insert(ESP32_EFUSE_RD_BASE + 8, 0x0000_240A);
        }
        let checksum_fault_left = cfg.faults.checksum_error.map_or(0, |f| f.times);
        let write_fault_left = cfg.faults.flash_write_error.map_or(0, |f| f.times);
        RomDevice {
            info,
            flash,
            regs,
            decoder: SlipDecoder::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            session: WriteSession::None,
            counters: RomCounters::default(),
            checksum_fault_left,
            write_fault_left,
            gone: false,
            running_app: false,
            baud: 115_200,
            cfg,
        }
    }

    /// The flash contents.
    pub fn flash(&self) -> &[u8] {
        &self.flash
    }

    /// Mutable flash, to preload contents in tests.
    pub fn flash_mut(&mut self) -> &mut [u8] {
        &mut self.flash
    }

    /// What happened so far.
    pub fn counters(&self) -> &RomCounters {
        &self.counters
    }

    /// The configuration.
    pub fn config(&self) -> &RomConfig {
        &self.cfg
    }

    /// The baud rate of the last CHANGE_BAUDRATE (115200 until then).
    pub fn baud(&self) -> u32 {
        self.baud
    }

    /// Whether the unplug fault fired.
    pub fn is_unplugged(&self) -> bool {
        self.gone
    }

    /// Whether FLASH_END started the application (the ROM is quiet until reset).
    pub fn is_running_app(&self) -> bool {
        self.running_app
    }

    /// A reset with IO0 held low: back in the ROM, flash kept, write session dropped.
    pub fn reset_into_bootloader(&mut self) {
        self.running_app = false;
        self.session = WriteSession::None;
        self.decoder.clear();
    }

    /// Bytes to send to the client.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// Things the host should act on.
    pub fn poll_event(&mut self) -> Option<RomEvent> {
        self.events.pop_front()
    }

    /// Bytes received from the client.
    pub fn handle_input(&mut self, bytes: &[u8]) {
        if self.cfg.faults.silent || self.gone {
            return;
        }
        self.decoder.push(bytes);
        while let Some(frame) = self.decoder.next_frame() {
            if self.gone || self.running_app {
                continue;
            }
            let Ok(req) = Request::parse(&frame) else {
                continue;
            };
            self.handle_request(req);
        }
    }

    fn layout(&self) -> StatusLayout {
        self.info.status_layout()
    }

    fn reply(&mut self, op: u8, value: u32, payload: &[u8], status: Status) {
        let resp = Response::new(op, value, payload, status, self.layout());
        self.transmit.push_back(resp.to_frame());
    }

    fn ok(&mut self, op: u8) {
        self.reply(op, 0, &[], Status::Ok);
    }

    fn refuse(&mut self, op: u8, err: RomError) {
        self.reply(op, 0, &[], Status::Failed(err));
    }

    fn supported(&self, op: Op) -> bool {
        let i = self.info;
        match op {
            Op::SpiAttach => i.has_spi_attach(),
            Op::SpiSetParams => i.has_spi_set_params(),
            Op::FlashDeflBegin | Op::FlashDeflData | Op::FlashDeflEnd => i.has_compressed_write(),
            Op::SpiFlashMd5 => i.has_md5(),
            Op::ChangeBaudrate => i.has_change_baudrate(),
            Op::GetSecurityInfo => i.has_security_info(),
            Op::ReadFlashSlow => self.cfg.chip == Chip::Esp32,
            Op::EraseFlash | Op::EraseRegion | Op::ReadFlash | Op::RunUserCode => false,
            _ => true,
        }
    }

    fn handle_request(&mut self, req: Request) {
        *self.counters.requests.entry(req.op).or_default() += 1;
        let op_byte = req.op;
        let cmd = match Command::parse(&req) {
            Ok(cmd) if self.supported(cmd.op()) => cmd,
            Ok(_) | Err(CommandError::Unsupported(_)) | Err(CommandError::BadPayload { .. }) => {
                self.counters.invalid += 1;
                return self.refuse(op_byte, RomError::INVALID_MESSAGE);
            }
            Err(CommandError::BadChecksum { .. }) => {
                self.counters.blocks_failed += 1;
                return self.refuse(op_byte, RomError::INVALID_CRC);
            }
        };
        match cmd {
            Command::Sync => {
                self.counters.syncs += 1;
                for _ in 0..SYNC_REPLIES {
                    self.reply(op_byte, SYNC_VALUE, &[], Status::Ok);
                }
            }
            Command::ReadReg { addr } => {
                let value = self.regs.get(&addr).copied().unwrap_or(0);
                self.reply(op_byte, value, &[], Status::Ok);
            }
            Command::WriteReg(writes) => {
                for w in writes {
                    let old = self.regs.get(&w.addr).copied().unwrap_or(0);
                    let value = (old & !w.mask) | (w.value & w.mask);
                    self.regs.insert(w.addr, value);
                    self.on_register_write(w.addr, value);
                }
                self.ok(op_byte);
            }
            Command::SpiAttach { .. } | Command::SpiSetParams(_) | Command::MemBegin(_) => {
                self.ok(op_byte)
            }
            Command::MemData { .. } | Command::MemEnd { .. } => self.ok(op_byte),
            Command::ChangeBaudrate { new, .. } => {
                self.counters.baud_changes += 1;
                // The reply still goes out at the old rate.
                self.ok(op_byte);
                self.baud = new;
                self.events.push_back(RomEvent::BaudChanged(new));
            }
            Command::GetSecurityInfo => {
                let mut p = vec![0u8; 12];
                if self.info.security_info_len() == Some(20) {
                    let id = u32::from(self.cfg.chip.image_chip_id().unwrap_or(0));
                    p.extend_from_slice(&id.to_le_bytes());
                    p.extend_from_slice(&0u32.to_le_bytes());
                }
                self.reply(op_byte, 0, &p, Status::Ok);
            }
            Command::FlashBegin(b) => self.begin(op_byte, b, false),
            Command::FlashDeflBegin(b) => self.begin(op_byte, b, true),
            Command::FlashData { seq, data } => self.data(op_byte, seq, &data, false),
            Command::FlashDeflData { seq, data } => self.data(op_byte, seq, &data, true),
            Command::FlashEnd { reboot } | Command::FlashDeflEnd { reboot } => {
                self.ok(op_byte);
                self.session = WriteSession::None;
                if reboot {
                    self.events.push_back(RomEvent::Rebooted);
                } else {
                    self.running_app = true;
                    self.events.push_back(RomEvent::RanUserCode);
                }
            }
            Command::SpiFlashMd5 { addr, size } => {
                self.counters.md5_requests += 1;
                let end = u64::from(addr) + u64::from(size);
                if end > self.flash.len() as u64 {
                    return self.refuse(op_byte, RomError::FLASH_READ);
                }
                let digest: [u8; 16] = Md5::digest(&self.flash[addr as usize..end as usize]).into();
                let text = Md5Format::RomHex.encode(&digest);
                self.reply(op_byte, 0, &text, Status::Ok);
            }
            Command::ReadFlashSlow { addr, len } => {
                let end = u64::from(addr) + u64::from(len);
                if len > 64 || end > self.flash.len() as u64 {
                    return self.refuse(op_byte, RomError::FLASH_READ_LENGTH);
                }
                let mut block = self.flash[addr as usize..end as usize].to_vec();
                block.resize(64, 0);
                self.reply(op_byte, 0, &block, Status::Ok);
            }
        }
    }

    /// Writing `SPI_CMD` with the user bit runs the user command: RDID puts the JEDEC id in
    /// `SPI_W0`, anything else reads back zero. The command completes at once.
    fn on_register_write(&mut self, addr: u32, value: u32) {
        let Some(spi) = self.info.spi_regs() else {
            return;
        };
        if addr != spi.cmd || value & SPI_CMD_USR == 0 {
            return;
        }
        let command = self.regs.get(&spi.usr2).copied().unwrap_or(0) & 0xFF;
        let result = if command == u32::from(SPIFLASH_RDID) {
            self.cfg
                .flash_id
                .unwrap_or_else(|| winbond_flash_id(self.cfg.flash_size))
        } else {
            0
        };
        self.regs.insert(spi.w0, result);
        self.regs.insert(spi.cmd, 0);
    }

    fn erase(&mut self, offset: u32, size: u32) -> bool {
        let start = offset / SECTOR * SECTOR;
        let end =
            (u64::from(offset) + u64::from(size)).div_ceil(u64::from(SECTOR)) * u64::from(SECTOR);
        if end > self.flash.len() as u64 {
            return false;
        }
        self.flash[start as usize..end as usize].fill(0xFF);
        self.counters.bytes_erased += end - u64::from(start);
        true
    }

    fn begin(&mut self, op: u8, b: Begin, compressed: bool) {
        if b.encrypted.is_some() != self.info.begin_has_encrypted_word() {
            self.counters.invalid += 1;
            return self.refuse(op, RomError::INVALID_MESSAGE);
        }
        // The ESP8266 ROM erases more than asked (the erase-size bug esptool works around), so
        // cover at least the blocks announced.
        let mut erase = b.size;
        if !compressed {
            erase = erase.max(b.num_blocks.saturating_mul(b.block_size));
        }
        if b.size > 0 && !self.erase(b.offset, erase) {
            return self.refuse(op, RomError::FAILED_TO_ACT);
        }
        self.counters.begins += 1;
        self.session = if compressed {
            WriteSession::Deflate {
                offset: b.offset,
                size: b.size,
                next_seq: 0,
                inflater: Box::new(Decompress::new(true)),
                written: 0,
                finished: false,
            }
        } else {
            WriteSession::Plain {
                offset: b.offset,
                size: erase,
                blocks: b.num_blocks,
                block_size: b.block_size,
                next_seq: 0,
            }
        };
        self.ok(op);
    }

    /// Writes `data` at `addr` with NOR semantics (bits can only be cleared).
    fn program(&mut self, addr: u32, data: &[u8]) {
        let start = addr as usize;
        for (dst, src) in self.flash[start..start + data.len()].iter_mut().zip(data) {
            *dst &= *src;
        }
        if let Some(bad) = self.cfg.faults.corrupt_flash_byte
            && (addr..addr + data.len() as u32).contains(&bad)
        {
            self.flash[bad as usize] ^= 0x01;
        }
        self.counters.bytes_written += data.len() as u64;
    }

    fn fault_fires(fault: Option<BlockFault>, left: &mut u32, seq: u32) -> bool {
        match fault {
            Some(f) if f.seq == seq && *left > 0 => {
                if *left != u32::MAX {
                    *left -= 1;
                }
                true
            }
            _ => false,
        }
    }

    fn data(&mut self, op: u8, seq: u32, data: &[u8], compressed: bool) {
        let faults = self.cfg.faults.clone();
        if Self::fault_fires(faults.checksum_error, &mut self.checksum_fault_left, seq) {
            self.counters.blocks_failed += 1;
            return self.refuse(op, RomError::INVALID_CRC);
        }
        if Self::fault_fires(faults.flash_write_error, &mut self.write_fault_left, seq) {
            self.counters.blocks_failed += 1;
            return self.refuse(op, RomError::FLASH_WRITE);
        }
        let result = if compressed {
            self.inflate_block(seq, data)
        } else {
            self.plain_block(seq, data)
        };
        match result {
            Ok(()) => {
                self.counters.blocks_ok += 1;
                if faults
                    .unplug_after_blocks
                    .is_some_and(|n| self.counters.blocks_ok >= u64::from(n))
                {
                    // Gone before the acknowledgement leaves.
                    self.gone = true;
                    self.transmit.clear();
                    self.events.push_back(RomEvent::Unplugged);
                    return;
                }
                self.ok(op);
            }
            Err(e) => {
                self.counters.blocks_failed += 1;
                self.refuse(op, e);
            }
        }
    }

    fn plain_block(&mut self, seq: u32, data: &[u8]) -> Result<(), RomError> {
        let WriteSession::Plain {
            offset,
            size,
            blocks,
            block_size,
            next_seq,
        } = &mut self.session
        else {
            return Err(RomError::FAILED_TO_ACT);
        };
        // A block sent again after a lost acknowledgement is written again (same bits).
        if seq > *next_seq || seq >= *blocks || data.len() as u32 > *block_size {
            return Err(RomError::FAILED_TO_ACT);
        }
        let addr = *offset + seq * *block_size;
        if u64::from(addr) + data.len() as u64 > u64::from(*offset) + u64::from(*size) {
            return Err(RomError::FLASH_WRITE);
        }
        let completes = seq == *next_seq && seq + 1 == *blocks;
        if seq == *next_seq {
            *next_seq += 1;
        }
        self.program(addr, data);
        if completes {
            self.counters.writes_completed += 1;
        }
        Ok(())
    }

    fn inflate_block(&mut self, seq: u32, data: &[u8]) -> Result<(), RomError> {
        let WriteSession::Deflate {
            offset,
            size,
            next_seq,
            inflater,
            written,
            finished,
        } = &mut self.session
        else {
            return Err(RomError::FAILED_TO_ACT);
        };
        if seq + 1 == *next_seq {
            // Sent again after a lost acknowledgement: already inflated.
            return Ok(());
        }
        if seq != *next_seq || *finished {
            return Err(RomError::FAILED_TO_ACT);
        }
        *next_seq += 1;
        let (offset, size) = (*offset, *size);
        let mut out = Vec::with_capacity(data.len() * 4);
        let mut input = data;
        loop {
            if out.capacity() - out.len() < 16 * 1024 {
                out.reserve(64 * 1024);
            }
            let before_in = inflater.total_in();
            let before_out = inflater.total_out();
            let status = inflater
                .decompress_vec(input, &mut out, FlushDecompress::None)
                .map_err(|_| RomError::DEFLATE)?;
            let used = (inflater.total_in() - before_in) as usize;
            input = &input[used..];
            let produced = inflater.total_out() - before_out;
            if status == ZStatus::StreamEnd {
                *finished = true;
                break;
            }
            if input.is_empty() && out.capacity() > out.len() {
                break;
            }
            if used == 0 && produced == 0 {
                return Err(RomError::DEFLATE);
            }
        }
        let at = *written;
        if u64::from(at) + out.len() as u64 > u64::from(size) {
            return Err(RomError::DEFLATE);
        }
        *written += out.len() as u32;
        let completes = *finished;
        self.program(offset + at, &out);
        if completes {
            self.counters.writes_completed += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serial::packet::Response;
    use crate::serial::slip::SlipDecoder;

    fn exchange(rom: &mut RomDevice, cmd: Command) -> Vec<Response> {
        rom.handle_input(&cmd.to_frame());
        let mut d = SlipDecoder::new();
        while let Some(b) = rom.poll_transmit() {
            d.push(&b);
        }
        let mut out = Vec::new();
        while let Some(f) = d.next_frame() {
            out.push(Response::parse(&f).expect("response"));
        }
        out
    }

    #[test]
    fn sync_gets_eight_rom_replies() {
        let mut rom = RomDevice::new(RomConfig::esp32());
        let replies = exchange(&mut rom, Command::Sync);
        assert_eq!(replies.len(), 8);
        assert!(
            replies
                .iter()
                .all(|r| r.op == 0x08 && r.value != 0 && r.data == [0, 0, 0, 0])
        );
    }

    #[test]
    fn golden_read_reg_reply_esp32_and_esp8266() {
        let mut rom = RomDevice::new(RomConfig::esp32());
        rom.handle_input(
            &Command::ReadReg {
                addr: CHIP_DETECT_MAGIC_REG,
            }
            .to_frame(),
        );
        assert_eq!(
            rom.poll_transmit().unwrap(),
            [
                0xC0, 0x01, 0x0A, 0x04, 0x00, 0x83, 0x1D, 0xF0, 0x00, 0, 0, 0, 0, 0xC0
            ]
        );
        let mut rom = RomDevice::new(RomConfig::esp8266());
        rom.handle_input(
            &Command::ReadReg {
                addr: CHIP_DETECT_MAGIC_REG,
            }
            .to_frame(),
        );
        // 0xFFF0C101, and only two status bytes.
        assert_eq!(
            rom.poll_transmit().unwrap(),
            [
                0xC0, 0x01, 0x0A, 0x02, 0x00, 0x01, 0xC1, 0xF0, 0xFF, 0, 0, 0xC0
            ]
        );
    }

    #[test]
    fn unknown_and_unsupported_ops_get_0x05() {
        let mut rom = RomDevice::new(RomConfig::esp32());
        rom.handle_input(
            &Request {
                op: 0x42,
                checksum: 0,
                data: vec![],
            }
            .to_frame(),
        );
        assert_eq!(
            rom.poll_transmit().unwrap(),
            [
                0xC0, 0x01, 0x42, 0x04, 0x00, 0, 0, 0, 0, 0x01, 0x05, 0, 0, 0xC0
            ]
        );
        let r = exchange(&mut rom, Command::GetSecurityInfo);
        assert_eq!(r[0].data, [1, 5, 0, 0]);
        let mut rom8266 = RomDevice::new(RomConfig::esp8266());
        let r = exchange(&mut rom8266, Command::SpiFlashMd5 { addr: 0, size: 16 });
        assert_eq!(r[0].data, [1, 5]);
        assert_eq!(rom8266.counters().invalid, 1);
    }

    #[test]
    fn rdid_through_spi_registers() {
        let mut rom = RomDevice::new(RomConfig::esp32());
        let spi = RomInfo::of(Chip::Esp32).spi_regs().unwrap();
        exchange(
            &mut rom,
            Command::WriteReg(vec![
                crate::serial::command::RegWrite::new(spi.usr2, (7 << 28) | 0x9F),
                crate::serial::command::RegWrite::new(spi.w0, 0),
                crate::serial::command::RegWrite::new(spi.cmd, SPI_CMD_USR),
            ]),
        );
        assert_eq!(
            exchange(&mut rom, Command::ReadReg { addr: spi.cmd })[0].value,
            0
        );
        assert_eq!(
            exchange(&mut rom, Command::ReadReg { addr: spi.w0 })[0].value,
            0x1640EF
        );
    }

    #[test]
    fn md5_reply_is_32_hex_digits_then_status() {
        let mut rom = RomDevice::new(RomConfig::esp32());
        let r = exchange(&mut rom, Command::SpiFlashMd5 { addr: 0, size: 0 });
        assert_eq!(&r[0].data[..32], b"d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(&r[0].data[32..], [0, 0, 0, 0]);
    }

    #[test]
    fn plain_write_erases_then_programs() {
        let mut rom = RomDevice::new(RomConfig::esp32());
        rom.flash_mut()[0x10000..0x10010].fill(0x00);
        let begin = Begin {
            size: 8,
            num_blocks: 1,
            block_size: 0x400,
            offset: 0x10000,
            encrypted: None,
        };
        assert_eq!(
            exchange(&mut rom, Command::FlashBegin(begin))[0].data,
            [0, 0, 0, 0]
        );
        assert!(rom.flash()[0x10000..0x11000].iter().all(|b| *b == 0xFF));
        let mut block = vec![1, 2, 3, 4, 5, 6, 7, 8];
        block.resize(0x400, 0xFF);
        let r = exchange(
            &mut rom,
            Command::FlashData {
                seq: 0,
                data: block,
            },
        );
        assert_eq!(r[0].data, [0, 0, 0, 0]);
        assert_eq!(
            &rom.flash()[0x10000..0x10009],
            [1, 2, 3, 4, 5, 6, 7, 8, 0xFF]
        );
    }
}
