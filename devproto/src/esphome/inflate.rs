//! Hand-written: flate2's backends accept 32 KiB back references; the device fails beyond 4 KiB.
//!
//! A raw deflate (RFC 1951) decoder with the device's limits: back references may reach at
//! most 4096 bytes (the ring window of ESPHome's on-the-fly inflate), anything further is an
//! error, exactly where the device fails with `0xFF`. Fed incrementally; running out of input
//! in the middle of a symbol is "need more bytes", never an error.
//!
//! How it resumes: every decoding step (a block header with its code tables, one literal or
//! match, a run of stored bytes) either completes on the input at hand or is rolled back to the
//! checkpoint before it, and runs again when more input arrives. What it does not do: zlib or
//! gzip framing, or preset dictionaries.

use thiserror::Error;

/// Why a deflate stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum InflateError {
    /// Block type 3.
    #[error("invalid block type")]
    BlockType,
    /// A stored block whose length check failed.
    #[error("stored block length mismatch")]
    StoredLength,
    /// Code lengths that do not form a prefix code, or an invalid symbol.
    #[error("invalid Huffman code")]
    Code,
    /// A back reference further than the window or than the output so far.
    #[error("distance {0} too far back")]
    Distance(usize),
    /// Input after the final block was decoded.
    #[error("data after the end of the stream")]
    TrailingData,
}

/// Progress of [`Inflater::inflate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inflated {
    /// All available input is consumed up to an incomplete step: feed more.
    NeedMore,
    /// The final block ended.
    Done,
}

const MAX_BITS: usize = 15;

struct Huffman {
    count: [u16; MAX_BITS + 1],
    symbol: Vec<u16>,
}

impl Huffman {
    /// Canonical code from code lengths; over-subscribed codes are refused, incomplete ones
    /// are allowed (an unused code then fails when it is met).
    fn new(lengths: &[u8]) -> Result<Self, InflateError> {
        let mut count = [0u16; MAX_BITS + 1];
        for &l in lengths {
            count[l as usize] += 1;
        }
        let mut left: i32 = 1;
        for &c in &count[1..] {
            left = (left << 1) - c as i32;
            if left < 0 {
                return Err(InflateError::Code);
            }
        }
        let mut offs = [0u16; MAX_BITS + 2];
        for len in 1..=MAX_BITS {
            offs[len + 1] = offs[len] + count[len];
        }
        let mut symbol = vec![0u16; lengths.len()];
        for (sym, &l) in lengths.iter().enumerate() {
            if l != 0 {
                symbol[offs[l as usize] as usize] = sym as u16;
                offs[l as usize] += 1;
            }
        }
        Ok(Self { count, symbol })
    }
}

/// Bits over a byte slice, least significant bit first; `None` when the slice runs out.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Option<u32> {
        let byte = *self.data.get(self.pos / 8)?;
        let b = (byte >> (self.pos % 8)) & 1;
        self.pos += 1;
        Some(b as u32)
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        let mut v = 0;
        for i in 0..n {
            v |= self.bit()? << i;
        }
        Some(v)
    }

    fn decode(&mut self, h: &Huffman) -> Option<Result<u16, InflateError>> {
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..=MAX_BITS {
            code |= self.bit()? as i32;
            let count = h.count[len] as i32;
            if code - count < first {
                return Some(Ok(h.symbol[(index + code - first) as usize]));
            }
            index += count;
            first = (first + count) << 1;
            code <<= 1;
        }
        Some(Err(InflateError::Code))
    }
}

enum Block {
    Header,
    Stored(usize),
    Codes { lit: Huffman, dist: Huffman },
}

const LEN_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LEN_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];
const CL_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// Incremental raw-deflate decoder with a bounded window.
pub struct Inflater {
    input: Vec<u8>,
    bit: usize,
    block: Block,
    last: bool,
    done: bool,
    window: usize,
    history: Vec<u8>,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("buffered", &self.input.len())
            .field("done", &self.done)
            .field("window", &self.window)
            .finish()
    }
}

impl Inflater {
    /// A decoder whose back references may reach `window` bytes.
    pub fn new(window: usize) -> Self {
        Self {
            input: Vec::new(),
            bit: 0,
            block: Block::Header,
            last: false,
            done: false,
            window,
            history: Vec::with_capacity(window * 2),
        }
    }

    /// Whether the final block has ended.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Decodes `input` (appended to what is buffered), pushing output to `out`.
    pub fn inflate(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Inflated, InflateError> {
        if self.done {
            return if input.is_empty() {
                Ok(Inflated::Done)
            } else {
                Err(InflateError::TrailingData)
            };
        }
        self.input.extend_from_slice(input);
        let result = self.run(out);
        // Drop the bytes behind the checkpoint.
        let consumed = self.bit / 8;
        self.input.drain(..consumed);
        self.bit -= consumed * 8;
        if self.done && self.input.len() > self.bit.div_ceil(8) {
            return Err(InflateError::TrailingData);
        }
        result
    }

    fn emit(&mut self, byte: u8, out: &mut Vec<u8>) {
        out.push(byte);
        self.history.push(byte);
        if self.history.len() >= self.window * 2 {
            self.history.drain(..self.history.len() - self.window);
        }
    }

    fn run(&mut self, out: &mut Vec<u8>) -> Result<Inflated, InflateError> {
        loop {
            match &mut self.block {
                Block::Header => {
                    if self.last {
                        self.done = true;
                        return Ok(Inflated::Done);
                    }
                    let mut b = Bits {
                        data: &self.input,
                        pos: self.bit,
                    };
                    let Some(next) = Self::header(&mut b)? else {
                        return Ok(Inflated::NeedMore);
                    };
                    self.bit = b.pos;
                    self.last = next.0;
                    self.block = next.1;
                }
                Block::Stored(remaining) => {
                    let at = self.bit / 8;
                    let n = (*remaining).min(self.input.len() - at);
                    *remaining -= n;
                    let finished = *remaining == 0;
                    for i in at..at + n {
                        let byte = self.input[i];
                        self.emit(byte, out);
                    }
                    self.bit += n * 8;
                    if finished {
                        self.block = Block::Header;
                    } else {
                        return Ok(Inflated::NeedMore);
                    }
                }
                Block::Codes { lit, dist } => {
                    let mut b = Bits {
                        data: &self.input,
                        pos: self.bit,
                    };
                    let Some(step) = Self::symbol(&mut b, lit, dist)? else {
                        return Ok(Inflated::NeedMore);
                    };
                    self.bit = b.pos;
                    match step {
                        Step::Literal(byte) => self.emit(byte, out),
                        Step::End => self.block = Block::Header,
                        Step::Copy { len, dist } => {
                            if dist > self.window || dist > self.history.len() {
                                return Err(InflateError::Distance(dist));
                            }
                            for _ in 0..len {
                                let byte = self.history[self.history.len() - dist];
                                self.emit(byte, out);
                            }
                        }
                    }
                }
            }
        }
    }

    /// One block header, with its code tables. `None`: not enough input yet.
    fn header(b: &mut Bits<'_>) -> Result<Option<(bool, Block)>, InflateError> {
        let Some(last) = b.bit() else { return Ok(None) };
        let Some(kind) = b.bits(2) else {
            return Ok(None);
        };
        match kind {
            0 => {
                b.pos = b.pos.div_ceil(8) * 8;
                let (Some(len), Some(nlen)) = (b.bits(16), b.bits(16)) else {
                    return Ok(None);
                };
                if len != !nlen & 0xFFFF {
                    return Err(InflateError::StoredLength);
                }
                Ok(Some((last == 1, Block::Stored(len as usize))))
            }
            1 => {
                let mut lengths = [0u8; 288];
                lengths[..144].fill(8);
                lengths[144..256].fill(9);
                lengths[256..280].fill(7);
                lengths[280..].fill(8);
                let lit = Huffman::new(&lengths)?;
                let dist = Huffman::new(&[5; 30])?;
                Ok(Some((last == 1, Block::Codes { lit, dist })))
            }
            2 => {
                let Some(block) = Self::dynamic(b)? else {
                    return Ok(None);
                };
                Ok(Some((last == 1, block)))
            }
            _ => Err(InflateError::BlockType),
        }
    }

    fn dynamic(b: &mut Bits<'_>) -> Result<Option<Block>, InflateError> {
        let (Some(hlit), Some(hdist), Some(hclen)) = (b.bits(5), b.bits(5), b.bits(4)) else {
            return Ok(None);
        };
        let (nlen, ndist, ncode) = (hlit as usize + 257, hdist as usize + 1, hclen as usize + 4);
        if nlen > 286 || ndist > 30 {
            return Err(InflateError::Code);
        }
        let mut cl = [0u8; 19];
        for &i in &CL_ORDER[..ncode] {
            let Some(v) = b.bits(3) else { return Ok(None) };
            cl[i] = v as u8;
        }
        let clh = Huffman::new(&cl)?;
        let mut lengths = vec![0u8; nlen + ndist];
        let mut i = 0;
        while i < nlen + ndist {
            let Some(sym) = b.decode(&clh) else {
                return Ok(None);
            };
            let sym = sym?;
            let (value, repeat) = match sym {
                0..=15 => (sym as u8, 1),
                16 => {
                    if i == 0 {
                        return Err(InflateError::Code);
                    }
                    let Some(r) = b.bits(2) else { return Ok(None) };
                    (lengths[i - 1], 3 + r as usize)
                }
                17 => {
                    let Some(r) = b.bits(3) else { return Ok(None) };
                    (0, 3 + r as usize)
                }
                _ => {
                    let Some(r) = b.bits(7) else { return Ok(None) };
                    (0, 11 + r as usize)
                }
            };
            if i + repeat > nlen + ndist {
                return Err(InflateError::Code);
            }
            lengths[i..i + repeat].fill(value);
            i += repeat;
        }
        if lengths[256] == 0 {
            return Err(InflateError::Code);
        }
        let lit = Huffman::new(&lengths[..nlen])?;
        let dist = Huffman::new(&lengths[nlen..])?;
        Ok(Some(Block::Codes { lit, dist }))
    }

    fn symbol(
        b: &mut Bits<'_>,
        lit: &Huffman,
        dist: &Huffman,
    ) -> Result<Option<Step>, InflateError> {
        let Some(sym) = b.decode(lit) else {
            return Ok(None);
        };
        let sym = sym? as usize;
        if sym < 256 {
            return Ok(Some(Step::Literal(sym as u8)));
        }
        if sym == 256 {
            return Ok(Some(Step::End));
        }
        let li = sym - 257;
        if li >= LEN_BASE.len() {
            return Err(InflateError::Code);
        }
        let Some(extra) = b.bits(LEN_EXTRA[li] as u32) else {
            return Ok(None);
        };
        let len = LEN_BASE[li] as usize + extra as usize;
        let Some(ds) = b.decode(dist) else {
            return Ok(None);
        };
        let ds = ds? as usize;
        if ds >= DIST_BASE.len() {
            return Err(InflateError::Code);
        }
        let Some(extra) = b.bits(DIST_EXTRA[ds] as u32) else {
            return Ok(None);
        };
        let d = DIST_BASE[ds] as usize + extra as usize;
        Ok(Some(Step::Copy { len, dist: d }))
    }
}

enum Step {
    Literal(u8),
    End,
    Copy { len: usize, dist: usize },
}

#[cfg(test)]
mod tests {
    use super::super::compress::{deflate_4k, deflate_raw};
    use super::*;
    use proptest::prelude::*;

    fn sample(n: usize, seed: u32) -> Vec<u8> {
        // Compressible with repeats at many distances, plus noise.
        let mut x = seed | 1;
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            match x % 4 {
                0 => v.extend_from_slice(b"esphome ota block "),
                1 if v.len() > 100 => {
                    let from = (x as usize >> 3) % v.len().min(9000);
                    let start = v.len() - from.max(1);
                    let run: Vec<u8> =
                        v[start..start + from.clamp(1, 40).min(v.len() - start)].to_vec();
                    v.extend_from_slice(&run);
                }
                _ => v.push((x >> 8) as u8),
            }
        }
        v.truncate(n);
        v
    }

    fn inflate_in_pieces(z: &[u8], piece: usize) -> Result<Vec<u8>, InflateError> {
        let mut inf = Inflater::new(4096);
        let mut out = Vec::new();
        let mut last = Inflated::NeedMore;
        for chunk in z.chunks(piece.max(1)) {
            last = inf.inflate(chunk, &mut out)?;
        }
        assert_eq!(last, Inflated::Done);
        Ok(out)
    }

    #[test]
    fn decodes_4k_window_streams_in_any_split() {
        let data = sample(100_000, 7);
        let z = deflate_4k(&data);
        for piece in [1, 2, 3, 7, 1000, 1040, 8192, z.len()] {
            assert_eq!(inflate_in_pieces(&z, piece).unwrap(), data, "piece {piece}");
        }
    }

    #[test]
    fn decodes_stored_fixed_and_empty_streams() {
        // Stored block with "abc", final.
        let stored = [0x01, 0x03, 0x00, 0xFC, 0xFF, b'a', b'b', b'c'];
        assert_eq!(inflate_in_pieces(&stored, 1).unwrap(), b"abc");
        // Fixed-Huffman empty final block.
        assert_eq!(inflate_in_pieces(&[0x03, 0x00], 1).unwrap(), b"");
        // Level 0 deflate (stored blocks) of a larger buffer.
        let data = sample(70_000, 3);
        let mut c = flate2::Compress::new_with_window_bits(flate2::Compression::none(), false, 12);
        let mut z = Vec::with_capacity(80_000);
        c.compress_vec(&data, &mut z, flate2::FlushCompress::Finish)
            .unwrap();
        assert_eq!(inflate_in_pieces(&z, 999).unwrap(), data);
    }

    #[test]
    fn refuses_references_beyond_the_4k_window() {
        // Repeats 10 KiB apart: a 32 KiB window encoder references them, a 4 KiB one cannot.
        let mut data = sample(10_240, 11);
        data.extend_from_within(..10_240);
        data.extend_from_within(..10_240);
        let far = deflate_raw(&data, 15);
        let mut inf = Inflater::new(4096);
        let err = inf.inflate(&far, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(err, InflateError::Distance(d) if d > 4096),
            "{err:?}"
        );
        assert_eq!(inflate_in_pieces(&deflate_4k(&data), 512).unwrap(), data);
    }

    #[test]
    fn refuses_bad_streams() {
        let mut out = Vec::new();
        assert_eq!(
            Inflater::new(4096).inflate(&[0x07], &mut out),
            Err(InflateError::BlockType)
        );
        assert_eq!(
            Inflater::new(4096).inflate(&[0x01, 0x03, 0x00, 0xFC, 0xFE], &mut out),
            Err(InflateError::StoredLength)
        );
        let mut inf = Inflater::new(4096);
        assert_eq!(inf.inflate(&[0x03, 0x00], &mut out), Ok(Inflated::Done));
        assert_eq!(
            inf.inflate(&[0x00], &mut out),
            Err(InflateError::TrailingData)
        );
        assert_eq!(
            Inflater::new(4096).inflate(&[0x03, 0x00, 0x00], &mut out),
            Err(InflateError::TrailingData)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000), piece in 1usize..64) {
            let mut inf = Inflater::new(4096);
            let mut out = Vec::new();
            for chunk in data.chunks(piece) {
                if inf.inflate(chunk, &mut out).is_err() {
                    break;
                }
            }
        }

        #[test]
        fn round_trips(seed in any::<u32>(), n in 0usize..20_000, piece in 1usize..3000) {
            let data = sample(n, seed);
            prop_assert_eq!(inflate_in_pieces(&deflate_4k(&data), piece).unwrap(), data);
        }
    }
}
