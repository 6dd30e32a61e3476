//! Hand-written: SLIP crates are io/tokio codecs; this skips boot-log bytes, sans-I/O (<200 lines).
//!
//! SLIP framing (RFC 1055 as the ESP ROM bootloader uses it).
//!
//! What it does: wraps a packet in `C0 … C0` with `C0` → `DB DC` and `DB` → `DB DD`
//! ([`encode`]), and cuts a byte stream back into packets ([`SlipDecoder`]). The decoder is
//! streaming: it keeps its state between calls, so a frame or an escape sequence may be split
//! across any number of reads. Bytes outside frames (a boot log, line noise) are ignored and
//! counted; an invalid escape or an over-long frame drops that frame and is counted too. A
//! partial frame is never an error: it is "need more bytes".
//!
//! What it does not do: interpret the packets (see [`super::packet`]) or touch a port.

use std::collections::VecDeque;

/// Frame delimiter.
pub const END: u8 = 0xC0;
/// Escape byte.
pub const ESC: u8 = 0xDB;
/// `DB DC` stands for a `C0` inside a frame.
pub const ESC_END: u8 = 0xDC;
/// `DB DD` stands for a `DB` inside a frame.
pub const ESC_ESC: u8 = 0xDD;

/// Default longest frame the decoder accepts, after unescaping: the largest ROM/stub request
/// (16 KiB stub data block + 16-byte sub-header + 8-byte header) with room to spare.
pub const DEFAULT_MAX_FRAME: usize = 0x4000 + 1024;

/// Appends `payload` as one SLIP frame to `out`.
pub fn encode_into(payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(payload.len() + payload.len() / 16 + 2);
    out.push(END);
    for &b in payload {
        match b {
            END => out.extend_from_slice(&[ESC, ESC_END]),
            ESC => out.extend_from_slice(&[ESC, ESC_ESC]),
            _ => out.push(b),
        }
    }
    out.push(END);
}

/// `payload` as one SLIP frame.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(payload, &mut out);
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames: everything but `C0` is noise.
    Idle,
    /// Inside a frame.
    Frame,
    /// Inside a frame, right after `DB`.
    Escape,
    /// The current frame is broken (bad escape, too long): skip to the next `C0`.
    Discard,
}

/// What the decoder has thrown away so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlipStats {
    /// Bytes seen outside any frame.
    pub noise_bytes: u64,
    /// Frames dropped because of an escape other than `DB DC` / `DB DD`.
    pub bad_escapes: u64,
    /// Frames dropped because they grew past the maximum length.
    pub oversized: u64,
    /// Complete frames delivered.
    pub frames: u64,
}

/// Streaming SLIP decoder: feed it bytes as they arrive, take complete frames out.
#[derive(Debug, Clone)]
pub struct SlipDecoder {
    state: State,
    current: Vec<u8>,
    ready: VecDeque<Vec<u8>>,
    max_frame: usize,
    stats: SlipStats,
}

impl Default for SlipDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl SlipDecoder {
    /// A decoder accepting frames up to [`DEFAULT_MAX_FRAME`] bytes.
    pub fn new() -> Self {
        Self::with_max_frame(DEFAULT_MAX_FRAME)
    }

    /// A decoder accepting frames up to `max_frame` bytes (after unescaping).
    pub fn with_max_frame(max_frame: usize) -> Self {
        Self {
            state: State::Idle,
            current: Vec::new(),
            ready: VecDeque::new(),
            max_frame,
            stats: SlipStats::default(),
        }
    }

    /// Feeds received bytes. Complete frames become available from [`Self::next_frame`].
    pub fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.push_byte(b);
        }
    }

    fn push_byte(&mut self, b: u8) {
        match (self.state, b) {
            (State::Idle, END) => {
                self.current.clear();
                self.state = State::Frame;
            }
            (State::Idle, _) => self.stats.noise_bytes += 1,
            (State::Frame, END) => {
                // `C0 C0` is the end of one frame and the start of the next, or an empty frame
                // used to resynchronise: either way there is nothing to deliver, and the `C0`
                // opens the next frame.
                if !self.current.is_empty() {
                    self.ready.push_back(std::mem::take(&mut self.current));
                    self.stats.frames += 1;
                    self.state = State::Idle;
                }
            }
            (State::Frame, ESC) => self.state = State::Escape,
            (State::Frame, _) => self.store(b),
            (State::Escape, ESC_END) => {
                self.state = State::Frame;
                self.store(END);
            }
            (State::Escape, ESC_ESC) => {
                self.state = State::Frame;
                self.store(ESC);
            }
            (State::Escape, END) => {
                // A frame ended in the middle of an escape: drop it, and treat this `C0` as the
                // start of the next frame.
                self.stats.bad_escapes += 1;
                self.current.clear();
                self.state = State::Frame;
            }
            (State::Escape, _) => {
                self.stats.bad_escapes += 1;
                self.current.clear();
                self.state = State::Discard;
            }
            (State::Discard, END) => {
                self.current.clear();
                self.state = State::Idle;
            }
            (State::Discard, _) => {}
        }
    }

    fn store(&mut self, b: u8) {
        if self.current.len() >= self.max_frame {
            self.stats.oversized += 1;
            self.current.clear();
            self.state = State::Discard;
        } else {
            self.current.push(b);
        }
    }

    /// The next complete frame, if one has arrived.
    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        self.ready.pop_front()
    }

    /// Whether the decoder is in the middle of a frame (some bytes of it have arrived).
    pub fn in_frame(&self) -> bool {
        matches!(self.state, State::Frame | State::Escape) && !self.current.is_empty()
    }

    /// Forgets any partial frame and any frames not yet taken (like flushing the input).
    pub fn clear(&mut self) {
        self.state = State::Idle;
        self.current.clear();
        self.ready.clear();
    }

    /// What has been dropped and delivered so far.
    pub fn stats(&self) -> SlipStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, SlipStats) {
        let mut d = SlipDecoder::new();
        let mut out = Vec::new();
        for c in chunks {
            d.push(c);
            while let Some(f) = d.next_frame() {
                out.push(f);
            }
        }
        (out, d.stats())
    }

    #[test]
    fn encode_golden_bytes() {
        assert_eq!(encode(&[]), [0xC0, 0xC0]);
        assert_eq!(encode(&[0x01, 0x02]), [0xC0, 0x01, 0x02, 0xC0]);
        assert_eq!(
            encode(&[0xC0, 0x00, 0xDB, 0xDC, 0xDD]),
            [0xC0, 0xDB, 0xDC, 0x00, 0xDB, 0xDD, 0xDC, 0xDD, 0xC0]
        );
    }

    #[test]
    fn decode_golden_bytes() {
        let (frames, stats) = decode_all(&[&[0xC0, 0xDB, 0xDC, 0x00, 0xDB, 0xDD, 0xDC, 0xC0]]);
        assert_eq!(frames, vec![vec![0xC0, 0x00, 0xDB, 0xDC]]);
        assert_eq!(stats.frames, 1);
    }

    #[test]
    fn escape_split_across_reads() {
        let (frames, _) = decode_all(&[&[0xC0, 0x11, 0xDB], &[0xDC], &[0x22, 0xDB], &[0xDD, 0xC0]]);
        assert_eq!(frames, vec![vec![0x11, 0xC0, 0x22, 0xDB]]);
    }

    #[test]
    fn one_byte_at_a_time() {
        let payload: Vec<u8> = (0..=255).collect();
        let wire = encode(&payload);
        let chunks: Vec<&[u8]> = wire.chunks(1).collect();
        let (frames, _) = decode_all(&chunks);
        assert_eq!(frames, vec![payload]);
    }

    #[test]
    fn noise_outside_frames_is_ignored() {
        let mut wire = b"ets Jun  8 2016 00:22:57\r\nrst:0x1 (POWERON_RESET)\r\n".to_vec();
        wire.extend(encode(&[1, 2, 3]));
        wire.extend(b"waiting for download\r\n");
        wire.extend(encode(&[4]));
        let (frames, stats) = decode_all(&[&wire]);
        assert_eq!(frames, vec![vec![1, 2, 3], vec![4]]);
        assert_eq!(stats.noise_bytes, 73);
    }

    #[test]
    fn back_to_back_frames_and_empty_frames() {
        let (frames, _) = decode_all(&[&[0xC0, 0xC0, 0xC0, 0x01, 0xC0, 0xC0, 0x02, 0xC0]]);
        assert_eq!(frames, vec![vec![0x01], vec![0x02]]);
    }

    #[test]
    fn bad_escape_drops_only_that_frame() {
        let (frames, stats) =
            decode_all(&[&[0xC0, 0x01, 0xDB, 0x55, 0x02, 0xC0, 0xC0, 0x03, 0xC0]]);
        assert_eq!(frames, vec![vec![0x03]]);
        assert_eq!(stats.bad_escapes, 1);
    }

    #[test]
    fn oversized_frame_is_dropped() {
        let mut d = SlipDecoder::with_max_frame(4);
        d.push(&[0xC0, 1, 2, 3, 4, 5, 0xC0, 0xC0, 9, 0xC0]);
        assert_eq!(d.next_frame(), Some(vec![9]));
        assert_eq!(d.next_frame(), None);
        assert_eq!(d.stats().oversized, 1);
    }

    #[test]
    fn partial_frame_waits_for_more() {
        let mut d = SlipDecoder::new();
        d.push(&[0xC0, 1, 2]);
        assert_eq!(d.next_frame(), None);
        assert!(d.in_frame());
        d.push(&[3, 0xC0]);
        assert_eq!(d.next_frame(), Some(vec![1, 2, 3]));
    }
}
