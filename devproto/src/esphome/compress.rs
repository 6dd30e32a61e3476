//! Compression as ESPHome's uploader does it: `gzip.compress(img, 9)` and
//! `zlib.compress(img, 9, wbits=-12)` (raw deflate, 4 KiB window), plus gunzip for the device
//! side (an ESP8266 stores the gzip file and its bootloader inflates it at the next boot).
//!
//! The 4 KiB window needs flate2's zlib-rs backend (`Compress::new_with_window_bits`); the
//! default miniz backend always uses 32 KiB, whose far back references the device rejects.
//! What it does not do: stream. Images are a few MiB at most and are compressed whole, once.

use std::io::{Read, Write};

use flate2::{Compress, Compression as Level, FlushCompress, GzBuilder, Status};

use super::wire::DEFLATE_WINDOW_BITS;

/// `gzip -9` of `data`, with mtime 0 so the output is deterministic.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzBuilder::new().write(Vec::with_capacity(data.len() / 2 + 64), Level::best());
    // Writing to a Vec cannot fail.
    enc.write_all(data).expect("writing to a Vec");
    enc.finish().expect("writing to a Vec")
}

/// Raw deflate of `data` at level 9 with a 4 KiB window (no zlib header or trailer).
pub fn deflate_4k(data: &[u8]) -> Vec<u8> {
    deflate_raw(data, DEFLATE_WINDOW_BITS)
}

/// Raw deflate at level 9 with `1 << window_bits` bytes of window (9..=15).
pub(crate) fn deflate_raw(data: &[u8], window_bits: u8) -> Vec<u8> {
    let mut c = Compress::new_with_window_bits(Level::best(), false, window_bits);
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    loop {
        let consumed = c.total_in() as usize;
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(4096));
        }
        let status = c
            .compress_vec(&data[consumed..], &mut out, FlushCompress::Finish)
            .expect("deflate of an in-memory buffer");
        if status == Status::StreamEnd {
            return out;
        }
    }
}

/// The gzip member's content, if `data` is a valid gzip file.
pub fn gunzip(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() * 2);
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

/// Whether `data` starts like a gzip file (`1F 8B`), as the ESP8266 backend checks.
pub fn is_gzip(data: &[u8]) -> bool {
    data.starts_with(&[0x1F, 0x8B])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_round_trips_and_is_deterministic() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let a = gzip(&data);
        assert_eq!(a, gzip(&data));
        assert!(is_gzip(&a));
        assert_eq!(&a[4..8], &[0, 0, 0, 0], "mtime 0");
        assert_eq!(gunzip(&a).unwrap(), data);
        assert_eq!(gunzip(b"\x1f\x8bnot gzip"), None);
    }

    #[test]
    fn raw_deflate_round_trips_through_flate2() {
        let data: Vec<u8> = (0..70_000u32)
            .map(|i| (i * 7 % 13) as u8 ^ (i >> 9) as u8)
            .collect();
        let z = deflate_4k(&data);
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(&z[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
    }
}
