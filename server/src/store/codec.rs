//! Byte layout of the sled store: keys, the log record encoding and its checksum.
//!
//! Pure functions over byte slices, no sled and no I/O, so the format can be tested byte
//! for byte. The format itself is documented (and committed to) in the `sled` module.
//! Decoding never panics on bad input: every malformed record is a [`Corruption`].

use super::{Corruption, NewEvent, RecordedEvent, StreamAppend};

/// Version of the on-disk format, stored in the meta tree. 2 added the write-ahead log
/// (`wal/`); a store of version 1 (no log) is upgraded at open. An older otad refuses a
/// version-2 store, so it cannot miss records that only the log holds.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// The format before the write-ahead log.
pub(crate) const FORMAT_VERSION_WITHOUT_WAL: u32 = 1;
/// Version tag of a log record, byte 4 of every record.
pub(crate) const RECORD_FORMAT: u8 = 1;

/// crc32 (4) + record format (1) + event count (4).
const RECORD_HEADER: usize = 9;
/// Fixed bytes per event: stream len (2), stream version (8), schema version (2),
/// recorded at (8), event type len (2), actor len (2), payload len (4).
const EVENT_FIXED: usize = 28;

/// Key of the log record whose first event has `seq`.
pub(crate) fn log_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// The seq of a log key, `None` if the key is not 8 bytes.
pub(crate) fn seq_of_log_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// Prefix of all index keys of `stream`: its length (u16 BE) and its bytes. The length
/// makes the prefix unambiguous: no other stream's keys start with it.
pub(crate) fn index_prefix(stream: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + stream.len() + 8);
    push_index_prefix(&mut key, stream);
    key
}

fn push_index_prefix(key: &mut Vec<u8>, stream: &str) {
    // Stream names are validated to at most MAX_STREAM_NAME_BYTES, far below u16::MAX.
    let len = u16::try_from(stream.len()).unwrap_or(u16::MAX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(stream.as_bytes());
}

/// Index key of (`stream`, `version`) written into `key` (cleared first).
pub(crate) fn index_key_into(key: &mut Vec<u8>, stream: &str, version: u64) {
    key.clear();
    push_index_prefix(key, stream);
    key.extend_from_slice(&version.to_be_bytes());
}

/// Index key of (`stream`, `version`).
pub(crate) fn index_key(stream: &str, version: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + stream.len() + 8);
    index_key_into(&mut key, stream, version);
    key
}

/// Splits an index key into stream name and version.
pub(crate) fn parse_index_key(key: &[u8]) -> Option<(&str, u64)> {
    let len = usize::from(u16::from_be_bytes(key.get(..2)?.try_into().ok()?));
    let stream = std::str::from_utf8(key.get(2..2 + len)?).ok()?;
    let version = u64::from_be_bytes(key.get(2 + len..)?.try_into().ok()?);
    Some((stream, version))
}

/// Index value: the event's seq and its position within its log record.
pub(crate) fn index_value(seq: u64, pos: u32) -> [u8; 12] {
    let mut v = [0u8; 12];
    v[..8].copy_from_slice(&seq.to_be_bytes());
    v[8..].copy_from_slice(&pos.to_be_bytes());
    v
}

/// Parses an index value into (seq, position in record).
pub(crate) fn parse_index_value(value: &[u8]) -> Option<(u64, u32)> {
    if value.len() != 12 {
        return None;
    }
    let seq = u64::from_be_bytes(value[..8].try_into().ok()?);
    let pos = u32::from_be_bytes(value[8..].try_into().ok()?);
    Some((seq, pos))
}

/// Head value: the stream's version and the seq of its last event.
pub(crate) fn head_value(version: u64, seq: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&version.to_be_bytes());
    v[8..].copy_from_slice(&seq.to_be_bytes());
    v
}

/// Parses a head value into (version, seq).
pub(crate) fn parse_head_value(value: &[u8]) -> Option<(u64, u64)> {
    if value.len() != 16 {
        return None;
    }
    Some((
        u64::from_be_bytes(value[..8].try_into().ok()?),
        u64::from_be_bytes(value[8..].try_into().ok()?),
    ))
}

/// Encoded size of the events of one stream append.
pub(crate) fn encoded_len(sa: &StreamAppend) -> usize {
    sa.events
        .iter()
        .map(|ev| {
            EVENT_FIXED + sa.stream.len() + ev.event_type.len() + ev.actor.len() + ev.payload.len()
        })
        .sum()
}

/// Encodes the events of `parts` as one log record into `out` (cleared first). Each
/// part is a stream append and the stream's version before it. `first_seq` is covered
/// by the checksum. Callers validated the appends (lengths fit their fields).
pub(crate) fn encode_record(first_seq: u64, parts: &[(&StreamAppend, u64)], out: &mut Vec<u8>) {
    out.clear();
    let count: usize = parts.iter().map(|(sa, _)| sa.events.len()).sum();
    let size: usize = RECORD_HEADER + parts.iter().map(|(sa, _)| encoded_len(sa)).sum::<usize>();
    out.reserve(size);
    out.extend_from_slice(&[0; 4]);
    out.push(RECORD_FORMAT);
    out.extend_from_slice(&u32::try_from(count).unwrap_or(u32::MAX).to_be_bytes());
    for (sa, before) in parts {
        for (i, ev) in sa.events.iter().enumerate() {
            encode_event(out, &sa.stream, before + 1 + i as u64, ev);
        }
    }
    let crc = checksum(first_seq, &out[4..]);
    out[..4].copy_from_slice(&crc.to_be_bytes());
}

fn encode_event(out: &mut Vec<u8>, stream: &str, version: u64, ev: &NewEvent) {
    put_str16(out, stream);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&ev.schema_version.to_be_bytes());
    out.extend_from_slice(&ev.recorded_at_ms.to_be_bytes());
    put_str16(out, &ev.event_type);
    put_str16(out, &ev.actor);
    out.extend_from_slice(
        &u32::try_from(ev.payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(&ev.payload);
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&u16::try_from(s.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// crc32 (IEEE) over the record's key followed by the record without its crc field.
pub(crate) fn checksum(first_seq: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&first_seq.to_be_bytes());
    h.update(body);
    h.finalize()
}

/// The event count from a record header, without verifying anything else. Used by the
/// cheap key scan on open; `None` if the record is too short to have a header.
pub(crate) fn peek_count(record: &[u8]) -> Option<u32> {
    if record.len() < RECORD_HEADER {
        return None;
    }
    Some(u32::from_be_bytes(record[5..9].try_into().ok()?))
}

/// Verifies the checksum and header of the record stored under `first_seq` and returns
/// a reader over its events.
pub(crate) fn open_record(first_seq: u64, record: &[u8]) -> Result<RecordReader<'_>, Corruption> {
    if record.len() < RECORD_HEADER {
        return Err(Corruption::Undecodable(format!(
            "record of {} bytes is shorter than its {RECORD_HEADER}-byte header",
            record.len()
        )));
    }
    let stored = u32::from_be_bytes([record[0], record[1], record[2], record[3]]);
    let computed = checksum(first_seq, &record[4..]);
    if stored != computed {
        return Err(Corruption::ChecksumMismatch { stored, computed });
    }
    if record[4] != RECORD_FORMAT {
        return Err(Corruption::Undecodable(format!(
            "unknown record format {}",
            record[4]
        )));
    }
    let count = u32::from_be_bytes([record[5], record[6], record[7], record[8]]);
    if count == 0 {
        return Err(Corruption::Undecodable("record holds no event".into()));
    }
    Ok(RecordReader {
        rest: &record[RECORD_HEADER..],
        count,
        read: 0,
    })
}

/// One event of a record, borrowed from the record bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventView<'a> {
    pub(crate) stream: &'a str,
    pub(crate) stream_version: u64,
    pub(crate) schema_version: u16,
    pub(crate) recorded_at_ms: i64,
    pub(crate) event_type: &'a str,
    pub(crate) actor: &'a str,
    pub(crate) payload: &'a [u8],
}

impl EventView<'_> {
    pub(crate) fn to_recorded(self, seq: u64) -> RecordedEvent {
        RecordedEvent {
            seq,
            stream: self.stream.to_owned(),
            stream_version: self.stream_version,
            event_type: self.event_type.to_owned(),
            schema_version: self.schema_version,
            payload: self.payload.to_vec(),
            actor: self.actor.to_owned(),
            recorded_at_ms: self.recorded_at_ms,
        }
    }
}

/// Iterates the events of a checksum-verified record. Yields an error (and then stops)
/// on a malformed event, and an error if the record has bytes left after its last event.
#[derive(Debug)]
pub(crate) struct RecordReader<'a> {
    rest: &'a [u8],
    count: u32,
    read: u32,
}

impl<'a> RecordReader<'a> {
    /// Number of events in the record.
    pub(crate) fn event_count(&self) -> u32 {
        self.count
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Corruption> {
        if self.rest.len() < n {
            return Err(Corruption::Undecodable(format!(
                "event {} of {} ends early",
                self.read + 1,
                self.count
            )));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, Corruption> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u64(&mut self) -> Result<u64, Corruption> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn str16(&mut self, what: &str) -> Result<&'a str, Corruption> {
        let len = usize::from(self.u16()?);
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| {
            Corruption::Undecodable(format!("event {}: {what} is not UTF-8", self.read + 1))
        })
    }

    fn next_event(&mut self) -> Result<EventView<'a>, Corruption> {
        let stream = self.str16("stream")?;
        let stream_version = self.u64()?;
        let schema_version = self.u16()?;
        let recorded_at_ms = self.u64()? as i64;
        let event_type = self.str16("event type")?;
        let actor = self.str16("actor")?;
        let len = self.take(4)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let payload = self.take(len)?;
        if stream.is_empty() || stream_version == 0 {
            return Err(Corruption::Undecodable(format!(
                "event {}: empty stream name or version 0",
                self.read + 1
            )));
        }
        Ok(EventView {
            stream,
            stream_version,
            schema_version,
            recorded_at_ms,
            event_type,
            actor,
            payload,
        })
    }
}

impl<'a> Iterator for RecordReader<'a> {
    type Item = Result<EventView<'a>, Corruption>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.read == self.count {
            if self.rest.is_empty() {
                return None;
            }
            let extra = self.rest.len();
            self.rest = &[];
            return Some(Err(Corruption::Undecodable(format!(
                "{extra} bytes after the last event"
            ))));
        }
        match self.next_event() {
            Ok(ev) => {
                self.read += 1;
                Some(Ok(ev))
            }
            Err(e) => {
                self.read = self.count;
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ExpectedVersion;
    use super::*;

    fn encode(first_seq: u64, batch: &[StreamAppend], before: &[u64], out: &mut Vec<u8>) {
        let parts: Vec<(&StreamAppend, u64)> = batch.iter().zip(before.iter().copied()).collect();
        encode_record(first_seq, &parts, out);
    }

    fn batch() -> Vec<StreamAppend> {
        vec![
            StreamAppend::new(
                "ab",
                ExpectedVersion::Any,
                vec![NewEvent {
                    event_type: "T".into(),
                    schema_version: 2,
                    payload: vec![0xAA, 0xBB],
                    actor: "u".into(),
                    recorded_at_ms: -1,
                }],
            ),
            StreamAppend::new(
                "c",
                ExpectedVersion::Any,
                vec![NewEvent {
                    event_type: "U".into(),
                    schema_version: 1,
                    payload: vec![],
                    actor: String::new(),
                    recorded_at_ms: 5,
                }],
            ),
        ]
    }

    #[test]
    fn golden_record_bytes() {
        let mut out = Vec::new();
        encode(7, &batch(), &[3, 0], &mut out);
        #[rustfmt::skip]
        let body: Vec<u8> = vec![
            1,                                  // record format
            0, 0, 0, 2,                         // event count
            0, 2, b'a', b'b',                   // stream
            0, 0, 0, 0, 0, 0, 0, 4,             // stream version (3 + 1)
            0, 2,                               // schema version
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // recorded at -1
            0, 1, b'T',                         // event type
            0, 1, b'u',                         // actor
            0, 0, 0, 2, 0xAA, 0xBB,             // payload
            0, 1, b'c',
            0, 0, 0, 0, 0, 0, 0, 1,
            0, 1,
            0, 0, 0, 0, 0, 0, 0, 5,
            0, 1, b'U',
            0, 0,
            0, 0, 0, 0,
        ];
        assert_eq!(&out[4..], &body[..]);
        let mut h = crc32fast::Hasher::new();
        h.update(&[0, 0, 0, 0, 0, 0, 0, 7]);
        h.update(&body);
        assert_eq!(&out[..4], &h.finalize().to_be_bytes());
    }

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        encode(7, &batch(), &[3, 0], &mut out);
        assert_eq!(peek_count(&out), Some(2));
        let reader = open_record(7, &out).unwrap();
        assert_eq!(reader.event_count(), 2);
        let events: Vec<RecordedEvent> = reader
            .enumerate()
            .map(|(i, ev)| ev.unwrap().to_recorded(7 + i as u64))
            .collect();
        assert_eq!(events[0].stream, "ab");
        assert_eq!(events[0].stream_version, 4);
        assert_eq!(events[0].recorded_at_ms, -1);
        assert_eq!(events[0].payload, vec![0xAA, 0xBB]);
        assert_eq!(events[1].seq, 8);
        assert_eq!(events[1].stream, "c");
        assert_eq!(events[1].stream_version, 1);
    }

    #[test]
    fn checksum_covers_key_and_every_byte() {
        let mut out = Vec::new();
        encode(7, &batch(), &[3, 0], &mut out);
        assert!(matches!(
            open_record(8, &out),
            Err(Corruption::ChecksumMismatch { .. })
        ));
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x10;
            assert!(
                matches!(
                    open_record(7, &bad),
                    Err(Corruption::ChecksumMismatch { .. })
                ),
                "flip at {i} undetected"
            );
        }
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        let mut out = Vec::new();
        encode(1, &batch(), &[0, 0], &mut out);
        for len in 0..out.len() {
            // Re-checksum the truncated record so the decoder itself is exercised.
            let mut cut = out[..len].to_vec();
            if cut.len() >= 4 {
                let crc = checksum(1, &cut[4..]);
                cut[..4].copy_from_slice(&crc.to_be_bytes());
            }
            let decoded: Result<Vec<_>, _> = open_record(1, &cut).and_then(|r| r.collect());
            assert!(decoded.is_err(), "truncation to {len} bytes accepted");
        }
    }

    #[test]
    fn index_keys_do_not_collide_across_streams() {
        let a = index_key("ab", 1);
        assert!(!a.starts_with(&index_prefix("a")));
        assert!(a.starts_with(&index_prefix("ab")));
        assert_eq!(parse_index_key(&a), Some(("ab", 1)));
        assert!(index_key("s", 2) < index_key("s", 10));
        assert_eq!(parse_index_value(&index_value(9, 3)), Some((9, 3)));
        assert_eq!(parse_head_value(&head_value(4, 9)), Some((4, 9)));
    }
}
