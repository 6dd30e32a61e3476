//! Protocol Buffers wire format, just enough for the API's handful of messages: varints,
//! length-delimited strings, `uint32` and `bool` fields, and skipping whatever else a newer
//! device sends.
//!
//! What it does not do: groups (wire types 3 and 4 are refused), packed repeated fields, or any
//! schema: the messages in [`super::message`] say which field is which.

use bytes::{BufMut, BytesMut};
use thiserror::Error;

/// Wire type of a length-delimited field (strings, bytes, sub-messages).
pub const WIRE_LEN: u8 = 2;
/// Wire type of a varint field.
pub const WIRE_VARINT: u8 = 0;
/// Wire type of a 64-bit fixed field.
pub const WIRE_FIXED64: u8 = 1;
/// Wire type of a 32-bit fixed field.
pub const WIRE_FIXED32: u8 = 5;

/// A protobuf payload that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The payload ends inside a varint.
    #[error("truncated varint")]
    TruncatedVarint,
    /// A varint of more than ten bytes.
    #[error("varint longer than 10 bytes")]
    VarintTooLong,
    /// Field number 0 (never valid).
    #[error("field number 0")]
    FieldZero,
    /// A group or an unknown wire type.
    #[error("field {field} has unsupported wire type {wire_type}")]
    WireType {
        /// The field number.
        field: u64,
        /// The wire type.
        wire_type: u8,
    },
    /// A field whose length runs past the end of the payload.
    #[error("field {field} needs {needed} bytes, {available} are left")]
    Truncated {
        /// The field number.
        field: u64,
        /// Bytes the field announces.
        needed: u64,
        /// Bytes left in the payload.
        available: usize,
    },
}

/// Appends `value` as a varint.
pub fn put_varint(dst: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        dst.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    dst.put_u8(value as u8);
}

/// Reads a varint from the front of `buf`: `Ok(None)` when `buf` ends inside it (more bytes may
/// come), else the value and the bytes it took.
pub fn get_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, DecodeError> {
    let mut value = 0u64;
    for (i, &b) in buf.iter().enumerate() {
        if i == 10 {
            return Err(DecodeError::VarintTooLong);
        }
        let bits = u64::from(b & 0x7F);
        if i == 9 && bits > 1 {
            return Err(DecodeError::VarintTooLong);
        }
        value |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 10 {
        return Err(DecodeError::VarintTooLong);
    }
    Ok(None)
}

fn put_tag(dst: &mut BytesMut, field: u32, wire_type: u8) {
    put_varint(dst, (u64::from(field) << 3) | u64::from(wire_type));
}

/// Appends a string field, also when it is empty (as ESPHome's `encode_string_force`).
pub fn put_string(dst: &mut BytesMut, field: u32, value: &str) {
    put_tag(dst, field, WIRE_LEN);
    put_varint(dst, value.len() as u64);
    dst.put_slice(value.as_bytes());
}

/// Appends a string field unless it is empty (proto3's default).
pub fn put_string_nonempty(dst: &mut BytesMut, field: u32, value: &str) {
    if !value.is_empty() {
        put_string(dst, field, value);
    }
}

/// Appends a `uint32` field unless it is 0 (proto3's default).
pub fn put_uint32(dst: &mut BytesMut, field: u32, value: u32) {
    if value != 0 {
        put_tag(dst, field, WIRE_VARINT);
        put_varint(dst, u64::from(value));
    }
}

/// Appends a `bool` field unless it is false (proto3's default).
pub fn put_bool(dst: &mut BytesMut, field: u32, value: bool) {
    if value {
        put_tag(dst, field, WIRE_VARINT);
        put_varint(dst, 1);
    }
}

/// One field's value as found on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// A varint (`uint32`, `bool`, enums).
    Varint(u64),
    /// Length-delimited bytes (`string`, `bytes`, sub-messages).
    Bytes(&'a [u8]),
    /// A 32-bit fixed value.
    Fixed32(u32),
    /// A 64-bit fixed value.
    Fixed64(u64),
}

impl Value<'_> {
    /// The value as a `uint32` (the low 32 bits of a varint, as protobuf truncates), if it is a
    /// varint.
    pub fn as_u32(&self) -> Option<u32> {
        match self {
            Value::Varint(v) => Some(*v as u32),
            _ => None,
        }
    }

    /// The value as a `bool`, if it is a varint.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Varint(v) => Some(*v != 0),
            _ => None,
        }
    }

    /// The value as a string (invalid UTF-8 replaced), if it is length-delimited.
    pub fn as_string(&self) -> Option<String> {
        match self {
            Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// Walks the fields of one message payload in wire order.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over a whole message payload.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        match get_varint(self.buf)? {
            Some((v, n)) => {
                self.buf = &self.buf[n..];
                Ok(v)
            }
            None => Err(DecodeError::TruncatedVarint),
        }
    }

    fn take(&mut self, field: u64, n: u64) -> Result<&'a [u8], DecodeError> {
        let available = self.buf.len();
        let len = usize::try_from(n)
            .ok()
            .filter(|&len| len <= available)
            .ok_or(DecodeError::Truncated {
                field,
                needed: n,
                available,
            })?;
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }

    /// The next field number and value; `Ok(None)` at the end of the payload.
    pub fn next_field(&mut self) -> Result<Option<(u64, Value<'a>)>, DecodeError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let field = tag >> 3;
        if field == 0 {
            return Err(DecodeError::FieldZero);
        }
        let wire_type = (tag & 7) as u8;
        let value = match wire_type {
            WIRE_VARINT => Value::Varint(self.varint()?),
            WIRE_FIXED64 => {
                let b = self.take(field, 8)?;
                Value::Fixed64(u64::from_le_bytes(b.try_into().expect("8 bytes")))
            }
            WIRE_LEN => {
                let len = self.varint()?;
                Value::Bytes(self.take(field, len)?)
            }
            WIRE_FIXED32 => {
                let b = self.take(field, 4)?;
                Value::Fixed32(u32::from_le_bytes(b.try_into().expect("4 bytes")))
            }
            _ => return Err(DecodeError::WireType { field, wire_type }),
        };
        Ok(Some((field, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_encode_like_protobuf() {
        for (v, bytes) in [
            (0u64, &[0x00][..]),
            (1, &[0x01]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (300, &[0xAC, 0x02]),
            (16_384, &[0x80, 0x80, 0x01]),
            (
                u64::MAX,
                &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            ),
        ] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            assert_eq!(&b[..], bytes, "{v}");
            assert_eq!(get_varint(bytes), Ok(Some((v, bytes.len()))));
            assert_eq!(get_varint(&bytes[..bytes.len() - 1]), Ok(None));
        }
        assert_eq!(get_varint(&[0xFF; 11]), Err(DecodeError::VarintTooLong));
        assert_eq!(get_varint(&[0xFF; 10]), Err(DecodeError::VarintTooLong));
        assert_eq!(
            get_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02]),
            Err(DecodeError::VarintTooLong)
        );
    }

    #[test]
    fn fields_round_trip_and_unknown_ones_are_skipped() {
        let mut b = BytesMut::new();
        put_string(&mut b, 2, "kitchen");
        put_uint32(&mut b, 10, 80);
        put_uint32(&mut b, 11, 0);
        put_bool(&mut b, 7, true);
        put_bool(&mut b, 8, false);
        put_string_nonempty(&mut b, 9, "");
        // A fixed32 and a fixed64 field a newer device might add.
        b.extend_from_slice(&[0x1D, 1, 2, 3, 4, 0x21, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            hex::encode(&b[..13]),
            "12076b69746368656e5050 3801".replace(' ', "")
        );
        let mut r = Reader::new(&b);
        let mut seen = Vec::new();
        while let Some((f, v)) = r.next_field().unwrap() {
            seen.push((f, v));
        }
        assert_eq!(seen.len(), 5);
        assert_eq!(seen[0], (2, Value::Bytes(b"kitchen")));
        assert_eq!(seen[1].1.as_u32(), Some(80));
        assert_eq!(seen[2].1.as_bool(), Some(true));
        assert_eq!(seen[3], (3, Value::Fixed32(0x0403_0201)));
        assert_eq!(seen[4].0, 4);
        assert_eq!(seen[0].1.as_u32(), None);
    }

    #[test]
    fn malformed_payloads_are_errors() {
        assert_eq!(
            Reader::new(&[0x12, 0x05, b'a']).next_field(),
            Err(DecodeError::Truncated {
                field: 2,
                needed: 5,
                available: 1
            })
        );
        assert_eq!(
            Reader::new(&[0x0B]).next_field(),
            Err(DecodeError::WireType {
                field: 1,
                wire_type: 3
            })
        );
        assert_eq!(
            Reader::new(&[0x02, 0x00]).next_field(),
            Err(DecodeError::FieldZero)
        );
        assert_eq!(
            Reader::new(&[0x08]).next_field(),
            Err(DecodeError::TruncatedVarint)
        );
    }
}
