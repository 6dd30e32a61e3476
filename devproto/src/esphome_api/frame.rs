//! The two framings of the native API.
//!
//! - **Plaintext**: `0x00 ‖ varint(payload length) ‖ varint(message type) ‖ payload`.
//! - **Noise**: `0x01 ‖ u16 BE length ‖ payload`. During the handshake the payload is the client
//!   hello (empty), the server hello, or a handshake message behind a status byte; afterwards it
//!   is ciphertext whose plaintext is `u16 BE type ‖ u16 BE data length ‖ data`.
//!
//! Decoding an incomplete frame is "need more bytes" (`Ok(None)`), never an error; the bytes stay
//! in the buffer. What it does not do: encrypt (see [`super::noise`]) or interpret payloads.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::DecodeError;
use prost::encoding::{decode_varint, encode_varint};
use thiserror::Error;

/// First byte of a plaintext frame.
pub const PLAINTEXT_INDICATOR: u8 = 0x00;

/// First byte of a Noise frame.
pub const NOISE_INDICATOR: u8 = 0x01;

/// Header of a Noise frame: indicator and u16 length.
pub const NOISE_HEADER_LEN: usize = 3;

/// Largest message the machines accept from their peer. ESPHome devices accept at most 32 KiB
/// (8 KiB on ESP8266) and a Noise frame cannot carry more than 65535 bytes.
pub const MAX_MESSAGE_LEN: usize = 0xFFFF;

/// One message as framed: its type and its protobuf payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// Message type id.
    pub msg_type: u16,
    /// Protobuf payload.
    pub payload: Bytes,
}

/// Bytes that are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The first byte is not the expected indicator.
    #[error("bad frame indicator 0x{got:02X} (expected 0x{expected:02X})")]
    Indicator {
        /// The expected indicator.
        expected: u8,
        /// The byte found.
        got: u8,
    },
    /// A frame longer than the limit.
    #[error("frame of {len} bytes is longer than the {max} allowed")]
    TooLong {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A message type beyond 16 bits.
    #[error("message type {0} does not fit 16 bits")]
    MessageType(u64),
    /// A malformed varint in a plaintext header.
    #[error("bad varint in the frame header: {0}")]
    Varint(#[from] DecodeError),
    /// A decrypted Noise data frame shorter than its 4-byte header, or whose data length runs
    /// past its end.
    #[error("bad encrypted message: {0}")]
    NoiseData(&'static str),
}

/// Appends one plaintext frame.
pub fn encode_plaintext(msg_type: u16, payload: &[u8], dst: &mut BytesMut) {
    dst.reserve(1 + 3 + 3 + payload.len());
    dst.put_u8(PLAINTEXT_INDICATOR);
    encode_varint(payload.len() as u64, dst);
    encode_varint(u64::from(msg_type), dst);
    dst.put_slice(payload);
}

/// Takes one plaintext frame off the front of `src`; `Ok(None)` while it is incomplete.
pub fn decode_plaintext(src: &mut BytesMut) -> Result<Option<RawMessage>, FrameError> {
    let Some(&indicator) = src.first() else {
        return Ok(None);
    };
    if indicator != PLAINTEXT_INDICATOR {
        return Err(FrameError::Indicator {
            expected: PLAINTEXT_INDICATOR,
            got: indicator,
        });
    }
    let Some((len, n1)) = get_varint(&src[1..])? else {
        return Ok(None);
    };
    if len > MAX_MESSAGE_LEN as u64 {
        return Err(FrameError::TooLong {
            len,
            max: MAX_MESSAGE_LEN,
        });
    }
    let Some((msg_type, n2)) = get_varint(&src[1 + n1..])? else {
        return Ok(None);
    };
    let msg_type = u16::try_from(msg_type).map_err(|_| FrameError::MessageType(msg_type))?;
    let header = 1 + n1 + n2;
    let len = len as usize;
    if src.len() < header + len {
        return Ok(None);
    }
    src.advance(header);
    Ok(Some(RawMessage {
        msg_type,
        payload: src.split_to(len).freeze(),
    }))
}

/// A varint from the front of `buf` and the bytes it took; `Ok(None)` while `buf` ends inside
/// it (more bytes may come). Longer than 10 bytes, or a 10th byte above 1, is an error.
fn get_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, DecodeError> {
    let complete = buf.iter().take(10).any(|b| b & 0x80 == 0);
    if !complete && buf.len() < 10 {
        return Ok(None);
    }
    let mut rest = buf;
    let value = decode_varint(&mut rest)?;
    Ok(Some((value, buf.len() - rest.len())))
}

/// Appends one Noise frame carrying `payload` (at most 65535 bytes; may be empty).
pub fn encode_noise_frame(payload: &[u8], dst: &mut BytesMut) {
    let len = u16::try_from(payload.len()).expect("a noise frame payload fits in u16");
    dst.reserve(NOISE_HEADER_LEN + payload.len());
    dst.put_u8(NOISE_INDICATOR);
    dst.put_u16(len);
    dst.put_slice(payload);
}

/// Takes one Noise frame's payload off the front of `src`; `Ok(None)` while it is incomplete.
/// Frames longer than `max` are refused as soon as their header is in.
pub fn decode_noise_frame(src: &mut BytesMut, max: usize) -> Result<Option<Bytes>, FrameError> {
    let Some(&indicator) = src.first() else {
        return Ok(None);
    };
    if indicator != NOISE_INDICATOR {
        return Err(FrameError::Indicator {
            expected: NOISE_INDICATOR,
            got: indicator,
        });
    }
    if src.len() < NOISE_HEADER_LEN {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([src[1], src[2]]));
    if len > max {
        return Err(FrameError::TooLong {
            len: len as u64,
            max,
        });
    }
    if src.len() < NOISE_HEADER_LEN + len {
        return Ok(None);
    }
    src.advance(NOISE_HEADER_LEN);
    Ok(Some(src.split_to(len).freeze()))
}

/// The plaintext of one encrypted data frame: `u16 BE type ‖ u16 BE length ‖ payload`.
pub fn noise_data(msg_type: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).expect("an encrypted message fits in u16");
    let mut v = Vec::with_capacity(4 + payload.len());
    v.extend_from_slice(&msg_type.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Splits the plaintext of an encrypted data frame into its message. Bytes after the declared
/// length are ignored, as the device does.
pub fn parse_noise_data(plain: &[u8]) -> Result<RawMessage, FrameError> {
    if plain.len() < 4 {
        return Err(FrameError::NoiseData("shorter than its 4-byte header"));
    }
    let msg_type = u16::from_be_bytes([plain[0], plain[1]]);
    let len = usize::from(u16::from_be_bytes([plain[2], plain[3]]));
    let payload = plain
        .get(4..4 + len)
        .ok_or(FrameError::NoiseData("its data length runs past its end"))?;
    Ok(RawMessage {
        msg_type,
        payload: Bytes::copy_from_slice(payload),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_frames_byte_for_byte() {
        let mut b = BytesMut::new();
        encode_plaintext(9, &[], &mut b);
        assert_eq!(&b[..], &[0x00, 0x00, 0x09], "DeviceInfoRequest");
        encode_plaintext(10, &[0xAA; 200], &mut b);
        assert_eq!(
            &b[3..7],
            &[0x00, 0xC8, 0x01, 0x0A],
            "two-byte length varint"
        );
        let mut partial = BytesMut::from(&b[3..8]);
        assert_eq!(decode_plaintext(&mut partial), Ok(None));
        assert_eq!(partial.len(), 5, "incomplete input is left alone");
        let first = decode_plaintext(&mut b).unwrap().unwrap();
        assert_eq!((first.msg_type, first.payload.len()), (9, 0));
        let mut tail = b.split_to(b.len() - 1);
        assert_eq!(decode_plaintext(&mut tail), Ok(None));
        tail.extend_from_slice(&b);
        let second = decode_plaintext(&mut tail).unwrap().unwrap();
        assert_eq!((second.msg_type, second.payload.len()), (10, 200));
        assert!(tail.is_empty());
    }

    #[test]
    fn plaintext_refusals() {
        assert_eq!(
            decode_plaintext(&mut BytesMut::from(&b"\x01\x00\x13\x01Bad"[..])),
            Err(FrameError::Indicator {
                expected: 0,
                got: 1
            })
        );
        assert!(matches!(
            decode_plaintext(&mut BytesMut::from(&[0x00, 0x80, 0x80, 0x04][..])),
            Err(FrameError::TooLong { len: 65536, .. })
        ));
        assert_eq!(
            decode_plaintext(&mut BytesMut::from(&[0x00, 0x00, 0x80, 0x80, 0x04][..])),
            Err(FrameError::MessageType(65536))
        );
    }

    #[test]
    fn header_varints() {
        for (v, bytes) in [
            (0u64, &[0x00][..]),
            (300, &[0xAC, 0x02]),
            (
                u64::MAX,
                &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            ),
        ] {
            let mut b = BytesMut::new();
            encode_varint(v, &mut b);
            assert_eq!(&b[..], bytes, "{v}");
            let mut longer = b.to_vec();
            longer.push(0x7F);
            assert_eq!(get_varint(&longer), Ok(Some((v, bytes.len()))));
            assert_eq!(get_varint(&bytes[..bytes.len() - 1]), Ok(None));
        }
        assert!(get_varint(&[0xFF; 10]).is_err());
        assert!(get_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02]).is_err());
    }

    #[test]
    fn noise_frames_byte_for_byte() {
        let mut b = BytesMut::new();
        encode_noise_frame(&[], &mut b);
        assert_eq!(
            &b[..],
            &[0x01, 0x00, 0x00],
            "the client hello is an empty frame"
        );
        encode_noise_frame(&[0xAB, 0xCD], &mut b);
        assert_eq!(decode_noise_frame(&mut b, 128).unwrap().unwrap().len(), 0);
        let mut partial = BytesMut::from(&b[..4]);
        assert_eq!(decode_noise_frame(&mut partial, 128), Ok(None));
        assert_eq!(
            &decode_noise_frame(&mut b, 128).unwrap().unwrap()[..],
            &[0xAB, 0xCD]
        );
        assert!(matches!(
            decode_noise_frame(&mut BytesMut::from(&[0x01, 0x01, 0x00][..]), 128),
            Err(FrameError::TooLong { len: 256, .. })
        ));
        assert!(matches!(
            decode_noise_frame(&mut BytesMut::from(&b"\x00Bad indicator byte"[..]), 128),
            Err(FrameError::Indicator { got: 0, .. })
        ));
    }

    #[test]
    fn noise_data_header() {
        assert_eq!(noise_data(10, &[1, 2]), vec![0, 10, 0, 2, 1, 2]);
        let m = parse_noise_data(&[0, 7, 0, 0]).unwrap();
        assert_eq!((m.msg_type, m.payload.len()), (7, 0));
        assert!(parse_noise_data(&[0, 7, 0]).is_err());
        assert!(parse_noise_data(&[0, 7, 0, 3, 1]).is_err());
    }
}
