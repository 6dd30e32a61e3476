//! Request and response packets of the ESP ROM bootloader, and the ROM's error bytes.
//!
//! What it does: the 8-byte headers (`00 op len chk` for requests, `01 op len value` for
//! responses, little-endian), the data checksum (XOR seeded `0xEF`), the status bytes at the end
//! of a response (`status error`, plus two reserved bytes on ESP32-family ROMs), and the ROM and
//! stub error bytes as a typed [`RomError`] with their meaning.
//!
//! What it does not do: SLIP framing (see [`super::slip`]) or the meaning of each command's
//! payload (see [`super::command`]).

use std::fmt;

/// Request direction byte.
pub const DIR_REQUEST: u8 = 0x00;
/// Response direction byte.
pub const DIR_RESPONSE: u8 = 0x01;
/// Header length of both directions.
pub const HEADER_LEN: usize = 8;
/// Seed of the data checksum.
pub const CHECKSUM_SEED: u8 = 0xEF;

/// The ROM's data checksum: XOR of `data`, seeded with `0xEF`. Sent in the request header of the
/// `*_DATA` commands, over the payload after their 16-byte sub-header.
pub fn checksum(data: &[u8]) -> u8 {
    data.iter().fold(CHECKSUM_SEED, |acc, b| acc ^ b)
}

/// Opcodes of the ROM bootloader and the flasher stub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    /// 0x02: erase a region and start a flash write.
    FlashBegin = 0x02,
    /// 0x03: one block of a flash write.
    FlashData = 0x03,
    /// 0x04: leave flash mode (reboot or run the application).
    FlashEnd = 0x04,
    /// 0x05: start a RAM download.
    MemBegin = 0x05,
    /// 0x06: end a RAM download, optionally jumping to an entry point.
    MemEnd = 0x06,
    /// 0x07: one block of a RAM download.
    MemData = 0x07,
    /// 0x08: synchronise (auto-baud).
    Sync = 0x08,
    /// 0x09: write registers.
    WriteReg = 0x09,
    /// 0x0A: read a register.
    ReadReg = 0x0A,
    /// 0x0B: SPI flash parameters.
    SpiSetParams = 0x0B,
    /// 0x0D: attach the SPI flash.
    SpiAttach = 0x0D,
    /// 0x0E: read 64 bytes of flash (ROM only).
    ReadFlashSlow = 0x0E,
    /// 0x0F: change the baud rate.
    ChangeBaudrate = 0x0F,
    /// 0x10: erase and start a compressed flash write.
    FlashDeflBegin = 0x10,
    /// 0x11: one block of a zlib stream.
    FlashDeflData = 0x11,
    /// 0x12: leave compressed flash mode.
    FlashDeflEnd = 0x12,
    /// 0x13: MD5 of a flash region.
    SpiFlashMd5 = 0x13,
    /// 0x14: security info (ESP32-S2 and later ROMs).
    GetSecurityInfo = 0x14,
    /// 0xD0: erase the whole flash (stub only).
    EraseFlash = 0xD0,
    /// 0xD1: erase a region (stub only).
    EraseRegion = 0xD1,
    /// 0xD2: read flash (stub only).
    ReadFlash = 0xD2,
    /// 0xD3: run the application (stub only).
    RunUserCode = 0xD3,
}

impl Op {
    /// Every opcode this crate knows.
    pub const ALL: [Op; 22] = [
        Op::FlashBegin,
        Op::FlashData,
        Op::FlashEnd,
        Op::MemBegin,
        Op::MemEnd,
        Op::MemData,
        Op::Sync,
        Op::WriteReg,
        Op::ReadReg,
        Op::SpiSetParams,
        Op::SpiAttach,
        Op::ReadFlashSlow,
        Op::ChangeBaudrate,
        Op::FlashDeflBegin,
        Op::FlashDeflData,
        Op::FlashDeflEnd,
        Op::SpiFlashMd5,
        Op::GetSecurityInfo,
        Op::EraseFlash,
        Op::EraseRegion,
        Op::ReadFlash,
        Op::RunUserCode,
    ];

    /// The opcode byte.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The opcode with this byte.
    pub fn from_code(code: u8) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.code() == code)
    }

    /// esptool's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Op::FlashBegin => "FLASH_BEGIN",
            Op::FlashData => "FLASH_DATA",
            Op::FlashEnd => "FLASH_END",
            Op::MemBegin => "MEM_BEGIN",
            Op::MemEnd => "MEM_END",
            Op::MemData => "MEM_DATA",
            Op::Sync => "SYNC",
            Op::WriteReg => "WRITE_REG",
            Op::ReadReg => "READ_REG",
            Op::SpiSetParams => "SPI_SET_PARAMS",
            Op::SpiAttach => "SPI_ATTACH",
            Op::ReadFlashSlow => "READ_FLASH_SLOW",
            Op::ChangeBaudrate => "CHANGE_BAUDRATE",
            Op::FlashDeflBegin => "FLASH_DEFL_BEGIN",
            Op::FlashDeflData => "FLASH_DEFL_DATA",
            Op::FlashDeflEnd => "FLASH_DEFL_END",
            Op::SpiFlashMd5 => "SPI_FLASH_MD5",
            Op::GetSecurityInfo => "GET_SECURITY_INFO",
            Op::EraseFlash => "ERASE_FLASH",
            Op::EraseRegion => "ERASE_REGION",
            Op::ReadFlash => "READ_FLASH",
            Op::RunUserCode => "RUN_USER_CODE",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:02X})", self.name(), self.code())
    }
}

/// A frame that is not a well-formed packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Fewer than 8 bytes.
    #[error("packet of {0} bytes is shorter than the 8-byte header")]
    TooShort(usize),
    /// The direction byte is not the one expected.
    #[error("direction byte 0x{found:02X}, expected 0x{expected:02X}")]
    WrongDirection {
        /// What the packet said.
        found: u8,
        /// What this parser expects.
        expected: u8,
    },
    /// The length field disagrees with the bytes that follow the header.
    #[error("length field says {declared} bytes but {actual} follow the header")]
    LengthMismatch {
        /// The length field.
        declared: usize,
        /// The bytes after the header.
        actual: usize,
    },
}

/// A request, client to ROM: `00 op len(u16) chk(u32) data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Opcode byte (kept raw: the ROM must answer unknown opcodes too).
    pub op: u8,
    /// Checksum field: the data checksum for the `*_DATA` commands, otherwise 0.
    pub checksum: u32,
    /// The payload.
    pub data: Vec<u8>,
}

impl Request {
    /// The packet bytes, before SLIP framing.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.data.len());
        out.push(DIR_REQUEST);
        out.push(self.op);
        out.extend_from_slice(&(self.data.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.checksum.to_le_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    /// The packet as a SLIP frame, ready for the wire.
    pub fn to_frame(&self) -> Vec<u8> {
        super::slip::encode(&self.encode())
    }

    /// Parses an unframed packet.
    pub fn parse(packet: &[u8]) -> Result<Request, PacketError> {
        let (op, len, word, data) = split(packet, DIR_REQUEST)?;
        if len != data.len() {
            return Err(PacketError::LengthMismatch {
                declared: len,
                actual: data.len(),
            });
        }
        Ok(Request {
            op,
            checksum: word,
            data: data.to_vec(),
        })
    }
}

/// A response, ROM to client: `01 op len(u16) value(u32) data`, where `data` ends with the status
/// bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Opcode byte of the request this answers.
    pub op: u8,
    /// The value word: the register for READ_REG, non-zero from the ROM for SYNC.
    pub value: u32,
    /// Command-specific bytes followed by the status bytes.
    pub data: Vec<u8>,
}

impl Response {
    /// The packet bytes, before SLIP framing.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.data.len());
        out.push(DIR_RESPONSE);
        out.push(self.op);
        out.extend_from_slice(&(self.data.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.value.to_le_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    /// The packet as a SLIP frame, ready for the wire.
    pub fn to_frame(&self) -> Vec<u8> {
        super::slip::encode(&self.encode())
    }

    /// Parses an unframed packet. Like esptool, it takes the data to be everything after the
    /// header and does not hold the length field against it (ROMs differ in what they count);
    /// the SLIP frame delimits the packet.
    pub fn parse(packet: &[u8]) -> Result<Response, PacketError> {
        let (op, _len, value, data) = split(packet, DIR_RESPONSE)?;
        Ok(Response {
            op,
            value,
            data: data.to_vec(),
        })
    }

    /// A response with `payload` followed by the status bytes of `status`.
    pub fn new(op: u8, value: u32, payload: &[u8], status: Status, layout: StatusLayout) -> Self {
        let mut data = payload.to_vec();
        data.extend_from_slice(&status.bytes(layout));
        Response { op, value, data }
    }

    /// Checks the status bytes, which follow `payload_len` command-specific bytes, and returns
    /// those bytes. Works for both status layouts: the two reserved bytes of ESP32-family ROMs
    /// are simply not looked at. When the response is too short for `payload_len`, a non-zero
    /// first byte is still read as a failure (that is how a ROM refuses a command it does not
    /// know).
    pub fn outcome(&self, payload_len: usize) -> Result<&[u8], StatusError> {
        let d = &self.data;
        if d.len() < payload_len + 2 {
            if d.len() >= 2 && d[0] != 0 {
                return Err(StatusError::Rom(RomError::new(d[0], d[1])));
            }
            return Err(StatusError::Truncated {
                expected: payload_len + 2,
                actual: d.len(),
            });
        }
        let (status, code) = (d[payload_len], d[payload_len + 1]);
        if status != 0 {
            return Err(StatusError::Rom(RomError::new(status, code)));
        }
        Ok(&d[..payload_len])
    }
}

fn split(packet: &[u8], dir: u8) -> Result<(u8, usize, u32, &[u8]), PacketError> {
    if packet.len() < HEADER_LEN {
        return Err(PacketError::TooShort(packet.len()));
    }
    if packet[0] != dir {
        return Err(PacketError::WrongDirection {
            found: packet[0],
            expected: dir,
        });
    }
    let op = packet[1];
    let len = u16::from_le_bytes([packet[2], packet[3]]) as usize;
    let word = u32::from_le_bytes([packet[4], packet[5], packet[6], packet[7]]);
    Ok((op, len, word, &packet[HEADER_LEN..]))
}

/// How many status bytes end a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusLayout {
    /// `status error` then two reserved bytes: ESP32-family ROMs.
    Four,
    /// `status error`: the ESP8266 ROM and the flasher stub.
    Two,
}

impl StatusLayout {
    /// Number of status bytes.
    pub fn len(self) -> usize {
        match self {
            StatusLayout::Four => 4,
            StatusLayout::Two => 2,
        }
    }

    /// Never empty; here for clippy's `len_without_is_empty`.
    pub fn is_empty(self) -> bool {
        false
    }
}

/// The status a ROM answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Status 0.
    Ok,
    /// Status 1 with this error byte.
    Failed(RomError),
}

impl Status {
    fn bytes(self, layout: StatusLayout) -> Vec<u8> {
        let mut b = match self {
            Status::Ok => vec![0, 0],
            Status::Failed(e) => vec![e.status.max(1), e.code],
        };
        b.resize(layout.len(), 0);
        b
    }
}

/// A response whose status says the command failed, or that is too short to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    /// The ROM (or stub) reported a failure.
    #[error("{0}")]
    Rom(RomError),
    /// The response is too short to carry the expected bytes and status.
    #[error("response of {actual} data bytes, expected at least {expected}")]
    Truncated {
        /// Expected minimum.
        expected: usize,
        /// What arrived.
        actual: usize,
    },
}

/// The failure a ROM or stub reports: the status byte (non-zero) and the error byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RomError {
    /// The status byte (1 from the ROM).
    pub status: u8,
    /// The error byte.
    pub code: u8,
}

/// The error bytes with a known meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RomErrorKind {
    /// 0x05: the received message is invalid; also the answer to an unsupported command.
    InvalidMessage,
    /// 0x06: the command ran but its result is wrong.
    FailedToAct,
    /// 0x07: the data checksum does not match.
    InvalidCrc,
    /// 0x08: writing the flash failed.
    FlashWriteError,
    /// 0x09: reading the flash failed.
    FlashReadError,
    /// 0x0A: the flash read length is invalid.
    FlashReadLengthError,
    /// 0x0B: inflating the compressed data failed.
    DeflateError,
    /// 0x0C: the Adler-32 of the compressed stream does not match.
    DeflateAdler32Error,
    /// 0x0D: a deflate parameter is wrong.
    DeflateParamError,
    /// 0x0E: the RAM binary size is wrong.
    InvalidRamBinarySize,
    /// 0x0F: the RAM binary address is wrong.
    InvalidRamBinaryAddress,
    /// 0xC0 (stub): bad data length.
    StubBadDataLen,
    /// 0xC1 (stub): bad data checksum.
    StubBadDataChecksum,
    /// 0xC2 (stub): bad block size.
    StubBadBlocksize,
    /// 0xC3 (stub): invalid command.
    StubInvalidCommand,
    /// 0xC4 (stub): a SPI operation failed.
    StubFailedSpiOp,
    /// 0xC5 (stub): unlocking the SPI flash failed.
    StubFailedSpiUnlock,
    /// 0xC6 (stub): not in flash mode.
    StubNotInFlashMode,
    /// 0xC7 (stub): inflate error.
    StubInflateError,
    /// 0xC8 (stub): not enough data.
    StubNotEnoughData,
    /// 0xC9 (stub): too much data.
    StubTooMuchData,
    /// 0xFF (stub): command not implemented.
    StubNotImplemented,
    /// Anything else.
    Unknown,
}

impl RomError {
    /// Status byte and error byte.
    pub const fn new(status: u8, code: u8) -> Self {
        RomError { status, code }
    }

    /// The ROM's failure with this error byte (status 1).
    pub const fn rom(kind_code: u8) -> Self {
        RomError::new(1, kind_code)
    }

    /// Invalid message / unsupported command (0x05).
    pub const INVALID_MESSAGE: RomError = RomError::rom(0x05);
    /// Wrong result (0x06).
    pub const FAILED_TO_ACT: RomError = RomError::rom(0x06);
    /// Checksum mismatch (0x07).
    pub const INVALID_CRC: RomError = RomError::rom(0x07);
    /// Flash write error (0x08).
    pub const FLASH_WRITE: RomError = RomError::rom(0x08);
    /// Flash read error (0x09).
    pub const FLASH_READ: RomError = RomError::rom(0x09);
    /// Flash read length error (0x0A).
    pub const FLASH_READ_LENGTH: RomError = RomError::rom(0x0A);
    /// Deflate error (0x0B).
    pub const DEFLATE: RomError = RomError::rom(0x0B);

    /// The known meaning of the error byte.
    pub fn kind(self) -> RomErrorKind {
        use RomErrorKind::*;
        match self.code {
            0x05 => InvalidMessage,
            0x06 => FailedToAct,
            0x07 => InvalidCrc,
            0x08 => FlashWriteError,
            0x09 => FlashReadError,
            0x0A => FlashReadLengthError,
            0x0B => DeflateError,
            0x0C => DeflateAdler32Error,
            0x0D => DeflateParamError,
            0x0E => InvalidRamBinarySize,
            0x0F => InvalidRamBinaryAddress,
            0xC0 => StubBadDataLen,
            0xC1 => StubBadDataChecksum,
            0xC2 => StubBadBlocksize,
            0xC3 => StubInvalidCommand,
            0xC4 => StubFailedSpiOp,
            0xC5 => StubFailedSpiUnlock,
            0xC6 => StubNotInFlashMode,
            0xC7 => StubInflateError,
            0xC8 => StubNotEnoughData,
            0xC9 => StubTooMuchData,
            0xFF => StubNotImplemented,
            _ => Unknown,
        }
    }

    /// What the error byte means, in words.
    pub fn meaning(self) -> &'static str {
        use RomErrorKind::*;
        match self.kind() {
            InvalidMessage => "the received message is invalid, or the command is not supported",
            FailedToAct => "the command's result is wrong",
            InvalidCrc => "the data checksum does not match (corrupted on the line)",
            FlashWriteError => "writing the flash failed",
            FlashReadError => "reading the flash failed",
            FlashReadLengthError => "the flash read length is invalid",
            DeflateError => "the compressed data could not be inflated",
            DeflateAdler32Error => "the Adler-32 of the compressed data does not match",
            DeflateParamError => "a compression parameter is wrong",
            InvalidRamBinarySize => "the RAM binary size is wrong",
            InvalidRamBinaryAddress => "the RAM binary address is wrong",
            StubBadDataLen => "bad data length",
            StubBadDataChecksum => "bad data checksum",
            StubBadBlocksize => "bad block size",
            StubInvalidCommand => "invalid command",
            StubFailedSpiOp => "a SPI flash operation failed",
            StubFailedSpiUnlock => "unlocking the SPI flash failed",
            StubNotInFlashMode => "not in flash mode",
            StubInflateError => "the compressed data could not be inflated",
            StubNotEnoughData => "not enough data",
            StubTooMuchData => "too much data",
            StubNotImplemented => "command not implemented",
            Unknown => "unknown error",
        }
    }

    /// esptool's number for it: `status << 8 | error`.
    pub fn esptool_code(self) -> u16 {
        (self.status as u16) << 8 | self.code as u16
    }
}

impl fmt::Display for RomError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:04X} ({})", self.esptool_code(), self.meaning())
    }
}

impl std::error::Error for RomError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_xor_seeded_0xef() {
        assert_eq!(checksum(&[]), 0xEF);
        assert_eq!(checksum(&[0xEF]), 0x00);
        assert_eq!(checksum(&[0x01, 0x02, 0x04]), 0xEF ^ 0x07);
        assert_eq!(checksum(&[0xFF; 1024]), 0xEF);
        assert_eq!(checksum(&[0xFF; 1023]), 0x10);
    }

    #[test]
    fn request_golden_bytes() {
        let r = Request {
            op: 0x0A,
            checksum: 0,
            data: vec![0x00, 0x10, 0x00, 0x40],
        };
        let bytes = r.encode();
        assert_eq!(
            bytes,
            [0x00, 0x0A, 0x04, 0x00, 0, 0, 0, 0, 0x00, 0x10, 0x00, 0x40]
        );
        assert_eq!(Request::parse(&bytes), Ok(r));
    }

    #[test]
    fn response_golden_bytes_both_layouts() {
        let r = Response::new(0x0A, 0x00F0_1D83, &[], Status::Ok, StatusLayout::Four);
        assert_eq!(
            r.encode(),
            [0x01, 0x0A, 0x04, 0x00, 0x83, 0x1D, 0xF0, 0x00, 0, 0, 0, 0]
        );
        let r = Response::new(
            0x03,
            0,
            &[],
            Status::Failed(RomError::INVALID_CRC),
            StatusLayout::Two,
        );
        assert_eq!(r.encode(), [0x01, 0x03, 0x02, 0x00, 0, 0, 0, 0, 0x01, 0x07]);
        assert_eq!(Response::parse(&r.encode()), Ok(r));
    }

    #[test]
    fn outcome_reads_status_after_payload() {
        let ok = Response::new(0x13, 0, &[b'a'; 32], Status::Ok, StatusLayout::Four);
        assert_eq!(ok.outcome(32), Ok(&[b'a'; 32][..]));
        let failed = Response::new(
            0x03,
            0,
            &[],
            Status::Failed(RomError::FLASH_WRITE),
            StatusLayout::Four,
        );
        assert_eq!(
            failed.outcome(0),
            Err(StatusError::Rom(RomError::FLASH_WRITE))
        );
        // A ROM refusing an unknown command sends only the status, even where data is expected.
        let refused = Response::new(
            0x14,
            0,
            &[],
            Status::Failed(RomError::INVALID_MESSAGE),
            StatusLayout::Four,
        );
        assert_eq!(
            refused.outcome(20),
            Err(StatusError::Rom(RomError::INVALID_MESSAGE))
        );
        let short = Response {
            op: 0x13,
            value: 0,
            data: vec![0, 0],
        };
        assert_eq!(
            short.outcome(32),
            Err(StatusError::Truncated {
                expected: 34,
                actual: 2
            })
        );
    }

    #[test]
    fn malformed_packets() {
        assert_eq!(Response::parse(&[1, 2, 3]), Err(PacketError::TooShort(3)));
        assert_eq!(
            Response::parse(&[0, 8, 0, 0, 0, 0, 0, 0]),
            Err(PacketError::WrongDirection {
                found: 0,
                expected: 1
            })
        );
        assert_eq!(
            Request::parse(&[0, 8, 5, 0, 0, 0, 0, 0, 1]),
            Err(PacketError::LengthMismatch {
                declared: 5,
                actual: 1
            })
        );
        // Responses: the frame decides, as in esptool.
        let r = Response::parse(&[1, 0x0A, 9, 0, 1, 0, 0, 0, 0, 0]).expect("lenient");
        assert_eq!(r.data, [0, 0]);
    }

    #[test]
    fn error_bytes_have_meanings() {
        assert_eq!(RomError::rom(0x05).kind(), RomErrorKind::InvalidMessage);
        assert_eq!(RomError::rom(0x07).kind(), RomErrorKind::InvalidCrc);
        assert_eq!(RomError::rom(0x0B).kind(), RomErrorKind::DeflateError);
        assert_eq!(
            RomError::rom(0xC1).kind(),
            RomErrorKind::StubBadDataChecksum
        );
        assert_eq!(RomError::rom(0x42).kind(), RomErrorKind::Unknown);
        assert_eq!(
            RomError::FLASH_WRITE.to_string(),
            "0x0108 (writing the flash failed)"
        );
    }

    #[test]
    fn opcodes_round_trip() {
        for op in Op::ALL {
            assert_eq!(Op::from_code(op.code()), Some(op));
        }
        assert_eq!(Op::from_code(0x01), None);
        assert_eq!(Op::SpiFlashMd5.to_string(), "SPI_FLASH_MD5 (0x13)");
    }
}
