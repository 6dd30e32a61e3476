//! What the ROM bootloader of each chip looks like on the serial line.
//!
//! What it does: the chip-detection magic values at `0x40001000`, the chip id in the
//! GET_SECURITY_INFO reply, the status layout of each ROM, which commands each ROM lacks (the
//! ESP8266 ROM has no SPI_ATTACH, SPI_SET_PARAMS, compressed writes, MD5 or baud change), and the
//! registers a flasher reads to learn the flash id (`SPI_CMD`, `SPI_W0`, …) and the crystal
//! (`UART_CLKDIV`), for the chips where they are known. The chip itself is
//! [`ota_firmware::esp::Chip`], the same vocabulary the image parser uses.
//!
//! What it does not do: talk to a chip, or judge silicon revisions and eFuses.

pub use ota_firmware::esp::Chip;

use super::packet::StatusLayout;

/// The ROM address whose value differs per chip model.
pub const CHIP_DETECT_MAGIC_REG: u32 = 0x4000_1000;

/// ESP32: RTC calibration register used by the baud-rate crystal quirk.
pub const ESP32_RTCCALICFG1: u32 = 0x3FF5_F06C;
/// ESP32: first eFuse read register.
pub const ESP32_EFUSE_RD_BASE: u32 = 0x3FF5_A000;

/// Registers of the SPI controller that drives the flash, as the ROM exposes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpiRegs {
    /// `SPI_CMD`: writing `1 << 18` starts a user command; it reads 0 when done.
    pub cmd: u32,
    /// `SPI_USR`: user command flags.
    pub usr: u32,
    /// `SPI_USR1`: lengths on chips without the `*_DLEN` registers.
    pub usr1: u32,
    /// `SPI_USR2`: command length and command byte.
    pub usr2: u32,
    /// `SPI_MOSI_DLEN`, ESP32 and later.
    pub mosi_dlen: Option<u32>,
    /// `SPI_MISO_DLEN`, ESP32 and later.
    pub miso_dlen: Option<u32>,
    /// `SPI_W0`: first data word.
    pub w0: u32,
}

/// `SPI_CMD` bit that starts a user command.
pub const SPI_CMD_USR: u32 = 1 << 18;
/// `SPI_USR` flag: send a command byte.
pub const SPI_USR_COMMAND: u32 = 1 << 31;
/// `SPI_USR` flag: read data back.
pub const SPI_USR_MISO: u32 = 1 << 28;
/// SPI flash command: read JEDEC id.
pub const SPIFLASH_RDID: u8 = 0x9F;

/// The ROM bootloader of one chip, as seen from the serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RomInfo {
    /// The chip.
    pub chip: Chip,
}

impl RomInfo {
    /// The ROM of `chip`.
    pub fn of(chip: Chip) -> Self {
        RomInfo { chip }
    }

    /// Values of [`CHIP_DETECT_MAGIC_REG`] on this chip (several silicon revisions); empty for
    /// chips that are identified by the chip id of GET_SECURITY_INFO instead.
    pub fn magic_values(self) -> &'static [u32] {
        match self.chip {
            Chip::Esp8266 => &[0xFFF0_C101],
            Chip::Esp32 => &[0x00F0_1D83],
            Chip::Esp32S2 => &[0x0000_07C6],
            Chip::Esp32S3 => &[0x0000_0009],
            Chip::Esp32C2 => &[0x6F51_306F, 0x7C41_A06F],
            Chip::Esp32C3 => &[0x6921_506F, 0x1B31_506F, 0x4881_606F, 0x4361_606F],
            Chip::Esp32C6 => &[0x2CE0_806F],
            Chip::Esp32H2 => &[0xD7B7_3E80],
            Chip::Esp32C61 => &[0x33F0_206F, 0x2421_606F],
            _ => &[],
        }
    }

    /// The chip whose ROM has this magic value.
    pub fn chip_from_magic(magic: u32) -> Option<Chip> {
        Chip::ALL
            .into_iter()
            .find(|c| RomInfo::of(*c).magic_values().contains(&magic))
    }

    /// Status bytes at the end of each response: four on ESP32-family ROMs, two on the
    /// ESP8266's.
    pub fn status_layout(self) -> StatusLayout {
        if self.chip == Chip::Esp8266 {
            StatusLayout::Two
        } else {
            StatusLayout::Four
        }
    }

    /// Whether FLASH_BEGIN / FLASH_DEFL_BEGIN carry the fifth `encrypted` word (every ROM but
    /// the ESP32's and the ESP8266's).
    pub fn begin_has_encrypted_word(self) -> bool {
        !matches!(self.chip, Chip::Esp32 | Chip::Esp8266)
    }

    /// Whether the ROM has SPI_ATTACH (the ESP8266 ROM attaches on FLASH_BEGIN instead).
    pub fn has_spi_attach(self) -> bool {
        self.chip != Chip::Esp8266
    }

    /// Whether the ROM has SPI_SET_PARAMS.
    pub fn has_spi_set_params(self) -> bool {
        self.chip != Chip::Esp8266
    }

    /// Whether the ROM takes FLASH_DEFL_* (compressed writes).
    pub fn has_compressed_write(self) -> bool {
        self.chip != Chip::Esp8266
    }

    /// Whether the ROM answers SPI_FLASH_MD5.
    pub fn has_md5(self) -> bool {
        self.chip != Chip::Esp8266
    }

    /// Whether the ROM takes CHANGE_BAUDRATE.
    pub fn has_change_baudrate(self) -> bool {
        self.chip != Chip::Esp8266
    }

    /// Whether the ROM answers GET_SECURITY_INFO (ESP32-S2 and later).
    pub fn has_security_info(self) -> bool {
        !matches!(self.chip, Chip::Esp32 | Chip::Esp8266)
    }

    /// Length of the GET_SECURITY_INFO reply: 12 bytes on the ESP32-S2 (no chip id), 20 on
    /// later chips; `None` where the command does not exist.
    pub fn security_info_len(self) -> Option<usize> {
        match self.chip {
            Chip::Esp32 | Chip::Esp8266 => None,
            Chip::Esp32S2 => Some(12),
            _ => Some(20),
        }
    }

    /// The SPI flash controller registers, for the chips whose layout this crate knows.
    pub fn spi_regs(self) -> Option<SpiRegs> {
        match self.chip {
            Chip::Esp32 => {
                let base = 0x3FF4_2000;
                Some(SpiRegs {
                    cmd: base,
                    usr: base + 0x1C,
                    usr1: base + 0x20,
                    usr2: base + 0x24,
                    mosi_dlen: Some(base + 0x28),
                    miso_dlen: Some(base + 0x2C),
                    w0: base + 0x80,
                })
            }
            Chip::Esp8266 => {
                let base = 0x6000_0200;
                Some(SpiRegs {
                    cmd: base,
                    usr: base + 0x1C,
                    usr1: base + 0x20,
                    usr2: base + 0x24,
                    mosi_dlen: None,
                    miso_dlen: None,
                    w0: base + 0x40,
                })
            }
            _ => None,
        }
    }

    /// The UART clock divider register, for the chips where it is known.
    pub fn uart_clkdiv_reg(self) -> Option<u32> {
        match self.chip {
            Chip::Esp32 => Some(0x3FF4_0014),
            Chip::Esp8266 => Some(0x6000_0014),
            _ => None,
        }
    }

    /// The UART clock divider at 115200 baud: the APB clock (the 40 MHz crystal on the ESP32;
    /// twice the 26 MHz crystal on the ESP8266) over the baud rate.
    pub fn uart_clkdiv_at_115200(self) -> u32 {
        match self.chip {
            Chip::Esp8266 => 52_000_000 / 115_200,
            _ => 40_000_000 / 115_200,
        }
    }
}

/// The ESP32 ROM computes the baud rate from its own estimate of the crystal, so the value sent
/// in CHANGE_BAUDRATE is scaled by `rom_freq / nominal` (esptool's workaround for CK_8M drift).
/// `rtc_cali` is [`ESP32_RTCCALICFG1`], `efuse4` is eFuse word 4. When the registers give no
/// plausible frequency the baud is sent as is.
pub fn esp32_rom_baud(baud: u32, rtc_cali: u32, efuse4: u32) -> u32 {
    let cali = u64::from((rtc_cali >> 7) & 0x01FF_FFFF);
    let ck8m = u64::from(efuse4 & 0xFF);
    let rom_freq = cali * 15_625 * ck8m / 40;
    if rom_freq < 1_000_000 {
        return baud;
    }
    let nominal = if rom_freq > 33_000_000 {
        40_000_000
    } else {
        26_000_000
    };
    (u64::from(baud) * rom_freq / nominal) as u32
}

/// esptool's erase size for the ESP8266 ROM, which erases more than asked (its erase routine
/// counts the first, partial 64 KiB block twice): the value to send so that the sectors covering
/// `size` bytes at `offset` get erased.
pub fn esp8266_erase_size(offset: u32, size: u32) -> u32 {
    const SECTOR: u32 = 0x1000;
    const SECTORS_PER_BLOCK: u32 = 16;
    let sectors = size.div_ceil(SECTOR);
    let start = offset / SECTOR;
    let head = (SECTORS_PER_BLOCK - start % SECTORS_PER_BLOCK).min(sectors);
    if sectors < 2 * head {
        sectors.div_ceil(2) * SECTOR
    } else {
        (sectors - head) * SECTOR
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_values_identify_chips() {
        assert_eq!(RomInfo::chip_from_magic(0x00F0_1D83), Some(Chip::Esp32));
        assert_eq!(RomInfo::chip_from_magic(0xFFF0_C101), Some(Chip::Esp8266));
        assert_eq!(RomInfo::chip_from_magic(0x1B31_506F), Some(Chip::Esp32C3));
        assert_eq!(RomInfo::chip_from_magic(0xDEAD_BEEF), None);
        // Magic values are unique across chips.
        let mut all: Vec<u32> = Chip::ALL
            .iter()
            .flat_map(|c| RomInfo::of(*c).magic_values().iter().copied())
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn rom_differences() {
        let e32 = RomInfo::of(Chip::Esp32);
        let e8266 = RomInfo::of(Chip::Esp8266);
        let s3 = RomInfo::of(Chip::Esp32S3);
        assert_eq!(e32.status_layout(), StatusLayout::Four);
        assert_eq!(e8266.status_layout(), StatusLayout::Two);
        assert!(!e32.begin_has_encrypted_word());
        assert!(s3.begin_has_encrypted_word());
        assert!(!e8266.has_md5() && !e8266.has_compressed_write() && !e8266.has_spi_attach());
        assert!(e32.has_md5() && e32.has_compressed_write());
        assert_eq!(
            e32.spi_regs().map(|r| (r.cmd, r.w0)),
            Some((0x3FF4_2000, 0x3FF4_2080))
        );
        assert_eq!(e32.uart_clkdiv_at_115200(), 347);
    }

    #[test]
    fn esp32_baud_quirk() {
        // Registers read as zero: no estimate, send as is.
        assert_eq!(esp32_rom_baud(921_600, 0, 0), 921_600);
        // A ROM estimate of exactly 40 MHz: unchanged.
        assert_eq!(esp32_rom_baud(921_600, 800 << 7, 128), 921_600);
        // 2% fast: scaled up by 2%.
        assert_eq!(esp32_rom_baud(1_000_000, 816 << 7, 128), 1_020_000);
    }

    #[test]
    fn esp8266_erase_workaround() {
        // One sector at a block boundary: half of it, rounded up.
        assert_eq!(esp8266_erase_size(0, 0x1000), 0x1000);
        // 1 MiB from 0: 256 sectors, head 16 → 240 sectors.
        assert_eq!(esp8266_erase_size(0, 0x10_0000), 240 * 0x1000);
        // 10 sectors starting at sector 12: head 4 → 6 sectors.
        assert_eq!(esp8266_erase_size(12 * 0x1000, 10 * 0x1000), 6 * 0x1000);
        // 3 sectors inside a block (head 16 > 3): (3 + 1) / 2 = 2 sectors.
        assert_eq!(esp8266_erase_size(0, 3 * 0x1000), 2 * 0x1000);
    }
}
