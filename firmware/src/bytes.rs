//! Bounds-checked little-endian reads used by the parsers.
//!
//! Every read returns `None` instead of panicking when the requested range is outside the input
//! or its end overflows `usize`. This module does not interpret any format.

/// `len` bytes at `offset`, or `None` when they are not all present.
pub(crate) fn slice_at(bytes: &[u8], offset: usize, len: usize) -> Option<&[u8]> {
    bytes.get(offset..offset.checked_add(len)?)
}

/// A fixed-size array at `offset`.
pub(crate) fn array_at<const N: usize>(bytes: &[u8], offset: usize) -> Option<[u8; N]> {
    slice_at(bytes, offset, N)?.try_into().ok()
}

/// The byte at `offset`.
pub(crate) fn u8_at(bytes: &[u8], offset: usize) -> Option<u8> {
    bytes.get(offset).copied()
}

/// A little-endian `u16` at `offset`.
pub(crate) fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    array_at(bytes, offset).map(u16::from_le_bytes)
}

/// A little-endian `u32` at `offset`.
pub(crate) fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    array_at(bytes, offset).map(u32::from_le_bytes)
}

/// A little-endian `u64` at `offset`.
pub(crate) fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    array_at(bytes, offset).map(u64::from_le_bytes)
}

/// A `usize` as `u64` (lossless on every supported target; saturates otherwise).
pub(crate) fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// A `u32` as `usize` (lossless on 32- and 64-bit targets; saturates otherwise).
pub(crate) fn to_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// A NUL-terminated C string field: bytes up to the first NUL, lossy UTF-8.
pub(crate) fn c_string(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(field.get(..end).unwrap_or_default()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_little_endian_and_bounded() {
        let b = [0x1E, 0xF1, 0xEE, 0x0B, 0x00, 0x01];
        assert_eq!(u32_at(&b, 0), Some(0x0BEE_F11E));
        assert_eq!(u16_at(&b, 4), Some(0x0100));
        assert_eq!(u16_at(&b, 5), None);
        assert_eq!(u32_at(&b, usize::MAX), None);
        assert_eq!(slice_at(&b, usize::MAX, 2), None);
        assert_eq!(u8_at(&b, 6), None);
    }

    #[test]
    fn c_strings_stop_at_the_first_nul() {
        assert_eq!(c_string(b"2026.1.0\0\0garbage"), "2026.1.0");
        assert_eq!(c_string(b"no-nul"), "no-nul");
        assert_eq!(c_string(b"\0"), "");
    }
}
