//! The ROM bootloader's commands as typed values, in both directions.
//!
//! What it does: builds the [`Request`] of each command the flasher sends (with the data
//! checksum where one is due) and parses a [`Request`] back into a [`Command`] for the ROM side.
//! Payload layouts follow esptool 5.6 (all words little-endian): `FLASH_BEGIN erase_size,
//! num_blocks, block_size, offset [+ encrypted]`, `FLASH_DATA len, seq, 0, 0 + data`, and so on.
//! Also the helpers that go with the commands: the SYNC payload, the ROM MD5 reply format, the
//! security-info reply, and the SPI flash id → size rule.
//!
//! What it does not do: decide which command comes next (see [`super::flasher`]) or act on one
//! (see [`super::rom`]).

use super::packet::{Op, Request, checksum};

/// The SYNC payload: `07 07 12 20` and 32 × `55`.
pub const SYNC_PAYLOAD: [u8; 36] = {
    let mut p = [0x55u8; 36];
    p[0] = 0x07;
    p[1] = 0x07;
    p[2] = 0x12;
    p[3] = 0x20;
    p
};

/// One entry of WRITE_REG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegWrite {
    /// Register address.
    pub addr: u32,
    /// Value.
    pub value: u32,
    /// Bits to change (`0xFFFF_FFFF` for all).
    pub mask: u32,
    /// Delay after the write, in microseconds.
    pub delay_us: u32,
}

impl RegWrite {
    /// A full-word write with no delay.
    pub fn new(addr: u32, value: u32) -> Self {
        RegWrite {
            addr,
            value,
            mask: 0xFFFF_FFFF,
            delay_us: 0,
        }
    }
}

/// The payload of FLASH_BEGIN, FLASH_DEFL_BEGIN and MEM_BEGIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// FLASH_BEGIN: bytes to erase. FLASH_DEFL_BEGIN on the ROM: the uncompressed size rounded
    /// up to the block size. MEM_BEGIN: total size.
    pub size: u32,
    /// Number of data blocks that follow.
    pub num_blocks: u32,
    /// Size of each data block.
    pub block_size: u32,
    /// Flash offset (or RAM address for MEM_BEGIN).
    pub offset: u32,
    /// The fifth `encrypted` word, sent to every ROM but the ESP32's and the ESP8266's.
    pub encrypted: Option<u32>,
}

/// SPI_SET_PARAMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpiParams {
    /// Flash id (0).
    pub id: u32,
    /// Total flash size in bytes.
    pub total_size: u32,
    /// Block size (64 KiB).
    pub block_size: u32,
    /// Sector size (4 KiB).
    pub sector_size: u32,
    /// Page size (256).
    pub page_size: u32,
    /// Status mask (0xFFFF).
    pub status_mask: u32,
}

impl SpiParams {
    /// esptool's parameters for a flash of `total_size` bytes.
    pub fn for_size(total_size: u32) -> Self {
        SpiParams {
            id: 0,
            total_size,
            block_size: 64 * 1024,
            sector_size: 4 * 1024,
            page_size: 256,
            status_mask: 0xFFFF,
        }
    }
}

/// A ROM bootloader command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// SYNC with the standard payload.
    Sync,
    /// READ_REG.
    ReadReg {
        /// Register address.
        addr: u32,
    },
    /// WRITE_REG, one or more writes applied in order.
    WriteReg(Vec<RegWrite>),
    /// SPI_SET_PARAMS.
    SpiSetParams(SpiParams),
    /// SPI_ATTACH. The ROM takes four more bytes (`is_legacy, 0, 0, 0`) than the stub.
    SpiAttach {
        /// `hspi_arg`: 0 for the default SPI pins.
        hspi_arg: u32,
        /// `Some(is_legacy)` for a ROM, `None` for the stub.
        rom_legacy: Option<u8>,
    },
    /// CHANGE_BAUDRATE.
    ChangeBaudrate {
        /// New baud rate (scaled by the crystal quirk on the ESP32 ROM).
        new: u32,
        /// Old baud rate: 0 for a ROM, the current rate for the stub.
        old: u32,
    },
    /// FLASH_BEGIN.
    FlashBegin(Begin),
    /// FLASH_DATA.
    FlashData {
        /// Sequence number from 0.
        seq: u32,
        /// The block (padded to the block size with 0xFF by the sender).
        data: Vec<u8>,
    },
    /// FLASH_END.
    FlashEnd {
        /// `true` resets the chip; `false` runs the application (ROM) or stays (stub). On the
        /// wire the word is `!reboot`.
        reboot: bool,
    },
    /// FLASH_DEFL_BEGIN.
    FlashDeflBegin(Begin),
    /// FLASH_DEFL_DATA: a chunk of the zlib stream.
    FlashDeflData {
        /// Sequence number from 0.
        seq: u32,
        /// The compressed chunk.
        data: Vec<u8>,
    },
    /// FLASH_DEFL_END.
    FlashDeflEnd {
        /// As for [`Command::FlashEnd`].
        reboot: bool,
    },
    /// SPI_FLASH_MD5.
    SpiFlashMd5 {
        /// Flash offset.
        addr: u32,
        /// Bytes.
        size: u32,
    },
    /// GET_SECURITY_INFO.
    GetSecurityInfo,
    /// READ_FLASH_SLOW (ROM only; at most 64 bytes).
    ReadFlashSlow {
        /// Flash offset.
        addr: u32,
        /// Bytes, at most 64.
        len: u32,
    },
    /// MEM_BEGIN.
    MemBegin(Begin),
    /// MEM_DATA.
    MemData {
        /// Sequence number from 0.
        seq: u32,
        /// The block.
        data: Vec<u8>,
    },
    /// MEM_END.
    MemEnd {
        /// Entry point; 0 to stay in the loader.
        entry: u32,
    },
}

/// A request whose payload does not fit its command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The opcode is not one this crate can parse.
    #[error("unsupported opcode 0x{0:02X}")]
    Unsupported(u8),
    /// The payload length is wrong for the command.
    #[error("{op} payload of {len} bytes is malformed")]
    BadPayload {
        /// The command.
        op: Op,
        /// The payload length.
        len: usize,
    },
    /// The data checksum in the header does not match the data.
    #[error("{op} data checksum 0x{got:02X} does not match 0x{want:02X}")]
    BadChecksum {
        /// The command.
        op: Op,
        /// What the header said.
        got: u32,
        /// What the data gives.
        want: u8,
    },
}

fn words(data: &[u8]) -> impl Iterator<Item = u32> + '_ {
    data.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

fn push_words(out: &mut Vec<u8>, ws: &[u32]) {
    for w in ws {
        out.extend_from_slice(&w.to_le_bytes());
    }
}

impl Begin {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20);
        push_words(
            &mut out,
            &[self.size, self.num_blocks, self.block_size, self.offset],
        );
        if let Some(e) = self.encrypted {
            push_words(&mut out, &[e]);
        }
        out
    }

    fn parse(op: Op, data: &[u8]) -> Result<Begin, CommandError> {
        if data.len() != 16 && data.len() != 20 {
            return Err(CommandError::BadPayload {
                op,
                len: data.len(),
            });
        }
        let w: Vec<u32> = words(data).collect();
        Ok(Begin {
            size: w[0],
            num_blocks: w[1],
            block_size: w[2],
            offset: w[3],
            encrypted: w.get(4).copied(),
        })
    }
}

fn data_request(op: Op, seq: u32, data: &[u8]) -> Request {
    let mut out = Vec::with_capacity(16 + data.len());
    push_words(&mut out, &[data.len() as u32, seq, 0, 0]);
    out.extend_from_slice(data);
    Request {
        op: op.code(),
        checksum: checksum(data) as u32,
        data: out,
    }
}

fn parse_data(op: Op, req: &Request) -> Result<(u32, Vec<u8>), CommandError> {
    let bad = || CommandError::BadPayload {
        op,
        len: req.data.len(),
    };
    if req.data.len() < 16 {
        return Err(bad());
    }
    let w: Vec<u32> = words(&req.data[..16]).collect();
    let payload = &req.data[16..];
    if w[0] as usize != payload.len() {
        return Err(bad());
    }
    let want = checksum(payload);
    if req.checksum != want as u32 {
        return Err(CommandError::BadChecksum {
            op,
            got: req.checksum,
            want,
        });
    }
    Ok((w[1], payload.to_vec()))
}

impl Command {
    /// The opcode.
    pub fn op(&self) -> Op {
        match self {
            Command::Sync => Op::Sync,
            Command::ReadReg { .. } => Op::ReadReg,
            Command::WriteReg(_) => Op::WriteReg,
            Command::SpiSetParams(_) => Op::SpiSetParams,
            Command::SpiAttach { .. } => Op::SpiAttach,
            Command::ChangeBaudrate { .. } => Op::ChangeBaudrate,
            Command::FlashBegin(_) => Op::FlashBegin,
            Command::FlashData { .. } => Op::FlashData,
            Command::FlashEnd { .. } => Op::FlashEnd,
            Command::FlashDeflBegin(_) => Op::FlashDeflBegin,
            Command::FlashDeflData { .. } => Op::FlashDeflData,
            Command::FlashDeflEnd { .. } => Op::FlashDeflEnd,
            Command::SpiFlashMd5 { .. } => Op::SpiFlashMd5,
            Command::GetSecurityInfo => Op::GetSecurityInfo,
            Command::ReadFlashSlow { .. } => Op::ReadFlashSlow,
            Command::MemBegin(_) => Op::MemBegin,
            Command::MemData { .. } => Op::MemData,
            Command::MemEnd { .. } => Op::MemEnd,
        }
    }

    /// The request packet.
    pub fn to_request(&self) -> Request {
        let op = self.op();
        let plain = |data: Vec<u8>| Request {
            op: op.code(),
            checksum: 0,
            data,
        };
        let mut out = Vec::new();
        match self {
            Command::Sync => plain(SYNC_PAYLOAD.to_vec()),
            Command::ReadReg { addr } => plain(addr.to_le_bytes().to_vec()),
            Command::WriteReg(writes) => {
                for w in writes {
                    push_words(&mut out, &[w.addr, w.value, w.mask, w.delay_us]);
                }
                plain(out)
            }
            Command::SpiSetParams(p) => {
                push_words(
                    &mut out,
                    &[
                        p.id,
                        p.total_size,
                        p.block_size,
                        p.sector_size,
                        p.page_size,
                        p.status_mask,
                    ],
                );
                plain(out)
            }
            Command::SpiAttach {
                hspi_arg,
                rom_legacy,
            } => {
                push_words(&mut out, &[*hspi_arg]);
                if let Some(legacy) = rom_legacy {
                    out.extend_from_slice(&[*legacy, 0, 0, 0]);
                }
                plain(out)
            }
            Command::ChangeBaudrate { new, old } => {
                push_words(&mut out, &[*new, *old]);
                plain(out)
            }
            Command::FlashBegin(b) | Command::FlashDeflBegin(b) | Command::MemBegin(b) => {
                plain(b.encode())
            }
            Command::FlashData { seq, data }
            | Command::FlashDeflData { seq, data }
            | Command::MemData { seq, data } => data_request(op, *seq, data),
            Command::FlashEnd { reboot } | Command::FlashDeflEnd { reboot } => {
                plain((!*reboot as u32).to_le_bytes().to_vec())
            }
            Command::SpiFlashMd5 { addr, size } => {
                push_words(&mut out, &[*addr, *size, 0, 0]);
                plain(out)
            }
            Command::GetSecurityInfo => plain(Vec::new()),
            Command::ReadFlashSlow { addr, len } => {
                push_words(&mut out, &[*addr, *len]);
                plain(out)
            }
            Command::MemEnd { entry } => {
                push_words(&mut out, &[(*entry == 0) as u32, *entry]);
                plain(out)
            }
        }
    }

    /// The request as a SLIP frame.
    pub fn to_frame(&self) -> Vec<u8> {
        self.to_request().to_frame()
    }

    /// Parses a request (the ROM side). Checks payload lengths and, for the `*_DATA` commands,
    /// the data length word and the checksum.
    pub fn parse(req: &Request) -> Result<Command, CommandError> {
        let op = Op::from_code(req.op).ok_or(CommandError::Unsupported(req.op))?;
        let d = &req.data;
        let bad = || CommandError::BadPayload { op, len: d.len() };
        let w: Vec<u32> = words(d).collect();
        let exact = |n: usize| if d.len() == n { Ok(()) } else { Err(bad()) };
        Ok(match op {
            Op::Sync => {
                if d.as_slice() != SYNC_PAYLOAD {
                    return Err(bad());
                }
                Command::Sync
            }
            Op::ReadReg => {
                exact(4)?;
                Command::ReadReg { addr: w[0] }
            }
            Op::WriteReg => {
                if d.is_empty() || !d.len().is_multiple_of(16) {
                    return Err(bad());
                }
                Command::WriteReg(
                    w.chunks_exact(4)
                        .map(|c| RegWrite {
                            addr: c[0],
                            value: c[1],
                            mask: c[2],
                            delay_us: c[3],
                        })
                        .collect(),
                )
            }
            Op::SpiSetParams => {
                exact(24)?;
                Command::SpiSetParams(SpiParams {
                    id: w[0],
                    total_size: w[1],
                    block_size: w[2],
                    sector_size: w[3],
                    page_size: w[4],
                    status_mask: w[5],
                })
            }
            Op::SpiAttach => match d.len() {
                4 => Command::SpiAttach {
                    hspi_arg: w[0],
                    rom_legacy: None,
                },
                8 => Command::SpiAttach {
                    hspi_arg: w[0],
                    rom_legacy: Some(d[4]),
                },
                _ => return Err(bad()),
            },
            Op::ChangeBaudrate => {
                exact(8)?;
                Command::ChangeBaudrate {
                    new: w[0],
                    old: w[1],
                }
            }
            Op::FlashBegin => Command::FlashBegin(Begin::parse(op, d)?),
            Op::FlashDeflBegin => Command::FlashDeflBegin(Begin::parse(op, d)?),
            Op::MemBegin => Command::MemBegin(Begin::parse(op, d)?),
            Op::FlashData => {
                let (seq, data) = parse_data(op, req)?;
                Command::FlashData { seq, data }
            }
            Op::FlashDeflData => {
                let (seq, data) = parse_data(op, req)?;
                Command::FlashDeflData { seq, data }
            }
            Op::MemData => {
                let (seq, data) = parse_data(op, req)?;
                Command::MemData { seq, data }
            }
            Op::FlashEnd => {
                exact(4)?;
                Command::FlashEnd { reboot: w[0] == 0 }
            }
            Op::FlashDeflEnd => {
                exact(4)?;
                Command::FlashDeflEnd { reboot: w[0] == 0 }
            }
            Op::SpiFlashMd5 => {
                exact(16)?;
                Command::SpiFlashMd5 {
                    addr: w[0],
                    size: w[1],
                }
            }
            Op::GetSecurityInfo => {
                exact(0)?;
                Command::GetSecurityInfo
            }
            Op::ReadFlashSlow => {
                exact(8)?;
                Command::ReadFlashSlow {
                    addr: w[0],
                    len: w[1],
                }
            }
            Op::MemEnd => {
                exact(8)?;
                Command::MemEnd { entry: w[1] }
            }
            Op::EraseFlash | Op::EraseRegion | Op::ReadFlash | Op::RunUserCode => {
                return Err(CommandError::Unsupported(req.op));
            }
        })
    }
}

/// An MD5 as SPI_FLASH_MD5 answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Md5Format {
    /// The ROM: 32 lowercase ASCII hex digits.
    RomHex,
    /// The stub: 16 raw bytes.
    StubRaw,
}

impl Md5Format {
    /// Bytes before the status.
    pub fn len(self) -> usize {
        match self {
            Md5Format::RomHex => 32,
            Md5Format::StubRaw => 16,
        }
    }

    /// Never empty; here for clippy's `len_without_is_empty`.
    pub fn is_empty(self) -> bool {
        false
    }

    /// The reply bytes for `digest`.
    pub fn encode(self, digest: &[u8; 16]) -> Vec<u8> {
        match self {
            Md5Format::RomHex => hex::encode(digest).into_bytes(),
            Md5Format::StubRaw => digest.to_vec(),
        }
    }

    /// The digest from the reply bytes (exactly [`Self::len`] of them).
    pub fn decode(self, bytes: &[u8]) -> Option<[u8; 16]> {
        let mut out = [0u8; 16];
        match self {
            Md5Format::RomHex => hex::decode_to_slice(bytes, &mut out).ok()?,
            Md5Format::StubRaw => out.copy_from_slice(bytes.get(..16)?),
        }
        Some(out)
    }
}

/// The flash size a JEDEC id read through SPI_W0 implies (the capacity byte is `log2(size)`),
/// as esptool's detection table has it for the common 25-series parts.
pub fn flash_size_from_id(flash_id: u32) -> Option<u32> {
    let capacity = (flash_id >> 16) & 0xFF;
    match capacity {
        0x12..=0x1C => Some(1u32 << capacity),
        0x20..=0x21 => Some(1u32 << (capacity - 0x06)),
        0x32..=0x3A => Some(1u32 << (capacity - 0x20)),
        _ => None,
    }
}

/// A JEDEC id for a simulated flash of `size` bytes: Winbond (0xEF), device 0x40, capacity
/// `log2(size)`; 4 MiB gives 0x1640EF.
pub fn winbond_flash_id(size: u32) -> u32 {
    let capacity = size.max(1).next_power_of_two().trailing_zeros();
    (capacity << 16) | (0x40 << 8) | 0xEF
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serial::packet::Request;
    use md5::Digest;

    /// Encodes, checks against the golden packet (before SLIP), parses back.
    fn golden(cmd: Command, packet: &[u8]) {
        let req = cmd.to_request();
        assert_eq!(req.encode(), packet, "{cmd:?}");
        let parsed = Command::parse(&Request::parse(packet).expect("packet")).expect("command");
        assert_eq!(parsed, cmd);
    }

    #[test]
    fn sync_golden() {
        let mut p = vec![0x00, 0x08, 0x24, 0x00, 0, 0, 0, 0, 0x07, 0x07, 0x12, 0x20];
        p.extend([0x55; 32]);
        golden(Command::Sync, &p);
        // On the wire nothing needs escaping.
        assert_eq!(Command::Sync.to_frame().len(), p.len() + 2);
    }

    #[test]
    fn read_reg_golden() {
        golden(
            Command::ReadReg { addr: 0x4000_1000 },
            &[0x00, 0x0A, 0x04, 0x00, 0, 0, 0, 0, 0x00, 0x10, 0x00, 0x40],
        );
    }

    #[test]
    fn write_reg_golden() {
        golden(
            Command::WriteReg(vec![
                RegWrite::new(0x3FF4_2000, 1 << 18),
                RegWrite {
                    addr: 0x6000_0078,
                    value: 0,
                    mask: 0,
                    delay_us: 10,
                },
            ]),
            &[
                0x00, 0x09, 0x20, 0x00, 0, 0, 0, 0, //
                0x00, 0x20, 0xF4, 0x3F, 0x00, 0x00, 0x04, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0,
                0, //
                0x78, 0x00, 0x00, 0x60, 0, 0, 0, 0, 0, 0, 0, 0, 0x0A, 0, 0, 0,
            ],
        );
    }

    #[test]
    fn spi_set_params_golden() {
        golden(
            Command::SpiSetParams(SpiParams::for_size(4 * 1024 * 1024)),
            &[
                0x00, 0x0B, 0x18, 0x00, 0, 0, 0, 0, //
                0, 0, 0, 0, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x10, 0x00, 0x00,
                0x00, 0x01, 0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00,
            ],
        );
    }

    #[test]
    fn spi_attach_golden() {
        golden(
            Command::SpiAttach {
                hspi_arg: 0,
                rom_legacy: Some(0),
            },
            &[0x00, 0x0D, 0x08, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        );
        golden(
            Command::SpiAttach {
                hspi_arg: 1,
                rom_legacy: None,
            },
            &[0x00, 0x0D, 0x04, 0x00, 0, 0, 0, 0, 1, 0, 0, 0],
        );
    }

    #[test]
    fn change_baudrate_golden() {
        golden(
            Command::ChangeBaudrate {
                new: 921_600,
                old: 0,
            },
            &[
                0x00, 0x0F, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0x10, 0x0E, 0x00, 0, 0, 0, 0,
            ],
        );
    }

    #[test]
    fn flash_begin_golden() {
        // 300 KiB at 0x10000 on the ESP32 ROM: no fifth word.
        golden(
            Command::FlashBegin(Begin {
                size: 307_200,
                num_blocks: 300,
                block_size: 0x400,
                offset: 0x10000,
                encrypted: None,
            }),
            &[
                0x00, 0x02, 0x10, 0x00, 0, 0, 0, 0, //
                0x00, 0xB0, 0x04, 0x00, 0x2C, 0x01, 0, 0, 0x00, 0x04, 0, 0, 0x00, 0x00, 0x01, 0x00,
            ],
        );
        // ESP32-S3 ROM: with `encrypted`.
        golden(
            Command::FlashDeflBegin(Begin {
                size: 0x400,
                num_blocks: 1,
                block_size: 0x400,
                offset: 0,
                encrypted: Some(0),
            }),
            &[
                0x00, 0x10, 0x14, 0x00, 0, 0, 0, 0, //
                0x00, 0x04, 0, 0, 1, 0, 0, 0, 0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        );
    }

    #[test]
    fn flash_data_golden_with_checksum() {
        let data = vec![0xE9, 0x03, 0x02, 0x20];
        // 0xEF ^ 0xE9 ^ 0x03 ^ 0x02 ^ 0x20 = 0x27
        golden(
            Command::FlashData { seq: 2, data },
            &[
                0x00, 0x03, 0x14, 0x00, 0x27, 0, 0, 0, //
                4, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, //
                0xE9, 0x03, 0x02, 0x20,
            ],
        );
        golden(
            Command::FlashDeflData {
                seq: 0,
                data: vec![0x78, 0xDA],
            },
            &[
                0x00,
                0x11,
                0x12,
                0x00,
                0xEF ^ 0x78 ^ 0xDA,
                0,
                0,
                0, //
                2,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0x78,
                0xDA,
            ],
        );
    }

    #[test]
    fn flash_end_and_md5_golden() {
        golden(
            Command::FlashEnd { reboot: false },
            &[0x00, 0x04, 0x04, 0x00, 0, 0, 0, 0, 1, 0, 0, 0],
        );
        golden(
            Command::FlashDeflEnd { reboot: true },
            &[0x00, 0x12, 0x04, 0x00, 0, 0, 0, 0, 0, 0, 0, 0],
        );
        golden(
            Command::SpiFlashMd5 {
                addr: 0x10000,
                size: 0x1000,
            },
            &[
                0x00, 0x13, 0x10, 0x00, 0, 0, 0, 0, //
                0x00, 0x00, 0x01, 0x00, 0x00, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        );
        golden(
            Command::GetSecurityInfo,
            &[0x00, 0x14, 0x00, 0x00, 0, 0, 0, 0],
        );
        golden(
            Command::MemEnd { entry: 0x4008_0000 },
            &[
                0x00, 0x06, 0x08, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x00, 0x08, 0x40,
            ],
        );
    }

    #[test]
    fn mem_and_read_flash_slow_golden() {
        golden(
            Command::MemBegin(Begin {
                size: 0x1800,
                num_blocks: 1,
                block_size: 0x1800,
                offset: 0x4008_0000,
                encrypted: None,
            }),
            &[
                0x00, 0x05, 0x10, 0x00, 0, 0, 0, 0, //
                0x00, 0x18, 0, 0, 1, 0, 0, 0, 0x00, 0x18, 0, 0, 0x00, 0x00, 0x08, 0x40,
            ],
        );
        golden(
            Command::MemData {
                seq: 1,
                data: vec![0xC0, 0xDB],
            },
            &[
                0x00,
                0x07,
                0x12,
                0x00,
                0xEF ^ 0xC0 ^ 0xDB,
                0,
                0,
                0, //
                2,
                0,
                0,
                0,
                1,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0xC0,
                0xDB,
            ],
        );
        golden(
            Command::ReadFlashSlow {
                addr: 0x1000,
                len: 64,
            },
            &[
                0x00, 0x0E, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0x10, 0, 0, 64, 0, 0, 0,
            ],
        );
        // On the wire the data bytes C0 and DB are escaped, the header's checksum byte (0xF4)
        // is not special.
        let frame = Command::MemData {
            seq: 1,
            data: vec![0xC0, 0xDB],
        }
        .to_frame();
        assert_eq!(&frame[frame.len() - 5..], [0xDB, 0xDC, 0xDB, 0xDD, 0xC0]);
    }

    #[test]
    fn response_frames_golden() {
        use crate::serial::packet::{Response, Status, StatusLayout};
        // FLASH_DATA acknowledged by an ESP32 ROM.
        let ack = Response::new(0x03, 0, &[], Status::Ok, StatusLayout::Four);
        assert_eq!(
            ack.to_frame(),
            [0xC0, 0x01, 0x03, 0x04, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0xC0]
        );
        // SPI_FLASH_MD5 of nothing, from an ESP32 ROM: 32 hex digits and four status bytes.
        let digest: [u8; 16] = md5::Md5::digest([]).into();
        let md5 = Response::new(
            0x13,
            0,
            &Md5Format::RomHex.encode(&digest),
            Status::Ok,
            StatusLayout::Four,
        );
        let mut want = vec![0xC0, 0x01, 0x13, 0x24, 0x00, 0, 0, 0, 0];
        want.extend_from_slice(b"d41d8cd98f00b204e9800998ecf8427e");
        want.extend_from_slice(&[0, 0, 0, 0, 0xC0]);
        assert_eq!(md5.to_frame(), want);
        // The same from the stub: 16 raw bytes, two status bytes.
        let stub = Response::new(
            0x13,
            0,
            &Md5Format::StubRaw.encode(&digest),
            Status::Ok,
            StatusLayout::Two,
        );
        assert_eq!(stub.outcome(16), Ok(&digest[..]));
        assert_eq!(stub.data.len(), 18);
    }

    #[test]
    fn data_checksum_mismatch_is_reported() {
        let mut req = Command::FlashData {
            seq: 0,
            data: vec![1, 2, 3, 4],
        }
        .to_request();
        req.checksum ^= 0x55;
        assert!(matches!(
            Command::parse(&req),
            Err(CommandError::BadChecksum {
                op: Op::FlashData,
                ..
            })
        ));
    }

    #[test]
    fn unknown_and_malformed_requests() {
        let req = Request {
            op: 0x42,
            checksum: 0,
            data: vec![],
        };
        assert_eq!(Command::parse(&req), Err(CommandError::Unsupported(0x42)));
        let req = Request {
            op: 0x0A,
            checksum: 0,
            data: vec![1, 2],
        };
        assert_eq!(
            Command::parse(&req),
            Err(CommandError::BadPayload {
                op: Op::ReadReg,
                len: 2
            })
        );
    }

    #[test]
    fn md5_formats() {
        let digest = [
            0xD4, 0x1D, 0x8C, 0xD9, 0x8F, 0x00, 0xB2, 0x04, 0xE9, 0x80, 0x09, 0x98, 0xEC, 0xF8,
            0x42, 0x7E,
        ];
        let rom = Md5Format::RomHex.encode(&digest);
        assert_eq!(rom, b"d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(Md5Format::RomHex.decode(&rom), Some(digest));
        assert_eq!(Md5Format::StubRaw.decode(&digest), Some(digest));
        assert_eq!(Md5Format::RomHex.decode(b"zz"), None);
    }

    #[test]
    fn flash_ids() {
        assert_eq!(winbond_flash_id(4 * 1024 * 1024), 0x1640EF);
        assert_eq!(flash_size_from_id(0x1640EF), Some(4 * 1024 * 1024));
        assert_eq!(
            flash_size_from_id(winbond_flash_id(16 << 20)),
            Some(16 << 20)
        );
        assert_eq!(flash_size_from_id(0x3840C8), Some(16 << 20));
        assert_eq!(flash_size_from_id(0xFFFFFF), None);
        assert_eq!(flash_size_from_id(0), None);
    }
}
