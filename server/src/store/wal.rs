//! The write-ahead log in front of sled: what makes an append durable.
//!
//! An append is acknowledged once its log record is in this file and `fdatasync`ed — one
//! device round trip on a file whose blocks already exist. sled gets the same record (and
//! its index entries and heads) in memory and writes it out on its own time; a
//! *checkpoint* (`sled flush` + the syncs of `disk_sync`) later makes sled durable up to a
//! seq, after which the segments holding nothing newer are reused. At open, the frames sled
//! does not have yet are applied to it again ([`replay`]).
//!
//! Why not sled alone: sled's `flush` is `sync_file_range` over everything it wrote since
//! the last one (index and heads too, in 512 KiB segments), and only an `fdatasync` after it
//! survives a power cut: two device round trips per commit group and sled's segment work
//! (p99 16 ms) in every acknowledgement.
//!
//! # Files (a compatibility commitment)
//!
//! `<store>/wal/wal-<gen>` with `gen` a 16-digit hex number; segments are read in `gen`
//! order. A segment is a sequence of frames from offset 0, then anything (zeros where the
//! file was extended, old frames where a segment is reused):
//!
//! | field       | size | meaning                                                          |
//! |-------------|------|------------------------------------------------------------------|
//! | `magic`     | 4    | `OTAW`                                                           |
//! | `len`       | 4    | bytes of the record                                              |
//! | `first_seq` | 8    | the record's key in sled's `log` tree                            |
//! | `synced`    | 8    | every frame up to this seq was durable when this one was written |
//! | `crc`       | 4    | crc32 (IEEE) of the 24 bytes before it                           |
//! | `record`    | len  | a log record exactly as sled stores it (crc32 over key + body)   |
//!
//! Integers are big-endian. A frame is valid when its magic and both checksums hold and
//! the record fits in the file. The log is the chain of valid frames whose seqs follow
//! each other, across segments; it ends at the first frame that is not the next one (a
//! torn write, the zeros of a grown file, or an older frame of a reused segment — seqs
//! only grow, so those never fit).
//!
//! `synced` makes damage visible: writes reach the disk in any order before a sync, so a
//! valid frame after a torn one is normal for frames nobody acknowledged; but a valid frame
//! that says frames up to `n` were durable, while the chain ends before `n`, means an
//! acknowledged frame was lost, and replay fails with a hole instead of dropping it.
//!
//! # Rules the writer keeps (and why replay can trust the chain)
//!
//! * Frames are written at increasing offsets; the flusher `fdatasync`s the active segment
//!   before any append in it is acknowledged.
//! * A segment grows in zero-filled [`GROW_BYTES`] steps ahead of the writes, so most
//!   syncs write data only and no file size (the disk's fast path).
//! * Before the first frame goes into a new segment, the old segment is `fdatasync`ed and
//!   the directory (with the new name) is fsynced: a frame in segment `k + 1` implies that
//!   all of segment `k` is on disk. So a valid frame *after* the end of the chain means
//!   lost data, and open fails with `Corrupt`.
//! * A closed segment is reused (renamed to the next `gen`) or deleted only once a
//!   checkpoint made sled durable past its last seq. So the frames sled may lack after a
//!   crash are always in the log.
//!
//! This module does not know sled: it writes and reads frames. The store's threads (in
//! `sled.rs`) decide when to sync and checkpoint.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::disk_sync::sync_dir;

/// The frame's magic bytes.
const MAGIC: [u8; 4] = *b"OTAW";
/// Bytes before the record: magic, len, first_seq, synced, crc.
pub(crate) const FRAME_HEADER: usize = 28;
/// Default segment size: a segment is closed once a frame would take it past this size (a
/// larger frame gets a segment of its own).
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Zeros written ahead of the write position at a time.
pub(crate) const GROW_BYTES: u64 = 1024 * 1024;
/// Name prefix of segment files.
const PREFIX: &str = "wal-";

/// A valid frame found in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame<'a> {
    pub(crate) first_seq: u64,
    /// Number of events in the record.
    pub(crate) count: u32,
    /// Every frame up to this seq was durable when this one was written.
    pub(crate) synced: u64,
    pub(crate) record: &'a [u8],
    /// Offset just past the frame.
    pub(crate) end: usize,
}

impl Frame<'_> {
    pub(crate) fn last_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count) - 1
    }
}

/// Appends the frame of `record` (stored under `first_seq`) to `out`; `synced` is the seq
/// up to which the log is durable at the time of writing.
pub(crate) fn encode_frame(first_seq: u64, synced: u64, record: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(
        &u32::try_from(record.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(&first_seq.to_be_bytes());
    out.extend_from_slice(&synced.to_be_bytes());
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(record);
}

/// The valid frame at `offset` of `bytes`, if there is one. Pure: the checksums decide.
pub(crate) fn frame_at(bytes: &[u8], offset: usize) -> Option<Frame<'_>> {
    let header = bytes.get(offset..offset.checked_add(FRAME_HEADER)?)?;
    if header[..4] != MAGIC {
        return None;
    }
    let crc = u32::from_be_bytes(header[24..28].try_into().ok()?);
    if crc32fast::hash(&header[..24]) != crc {
        return None;
    }
    let len = u32::from_be_bytes(header[4..8].try_into().ok()?) as usize;
    let first_seq = u64::from_be_bytes(header[8..16].try_into().ok()?);
    let synced = u64::from_be_bytes(header[16..24].try_into().ok()?);
    let start = offset + FRAME_HEADER;
    let record = bytes.get(start..start.checked_add(len)?)?;
    let count = super::codec::open_record(first_seq, record)
        .ok()?
        .event_count();
    first_seq.checked_add(u64::from(count))?;
    Some(Frame {
        first_seq,
        count,
        synced,
        record,
        end: start + len,
    })
}

/// The valid frames in `bytes` at or after `from`, found by looking for the magic at every
/// offset (frames after a torn one are not in the chain): the highest `synced` claim among
/// them and their first seqs.
pub(crate) fn strays(bytes: &[u8], from: usize) -> (u64, Vec<u64>) {
    let mut highest = 0;
    let mut seqs = Vec::new();
    let mut offset = from;
    while let Some(found) = bytes
        .get(offset..)
        .and_then(|rest| rest.windows(4).position(|w| w == MAGIC))
    {
        let at = offset + found;
        match frame_at(bytes, at) {
            Some(frame) => {
                highest = highest.max(frame.synced);
                seqs.push(frame.first_seq);
                offset = frame.end;
            }
            None => offset = at + 1,
        }
    }
    (highest, seqs)
}

/// The chain of frames at the start of one segment's bytes: each the successor of the one
/// before (`after` is the seq the chain must continue from, `None` for any start).
pub(crate) fn chain(bytes: &[u8], mut after: Option<u64>) -> Vec<Frame<'_>> {
    let mut frames = Vec::new();
    let mut offset = 0;
    while let Some(frame) = frame_at(bytes, offset) {
        if after.is_some_and(|last| frame.first_seq != last + 1) {
            break;
        }
        after = Some(frame.last_seq());
        offset = frame.end;
        frames.push(frame);
    }
    frames
}

/// The segment files of `dir`, in `gen` order. Other files are ignored.
pub(crate) fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(err) => return Err(err),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(gen_hex) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        if let Ok(generation) = u64::from_str_radix(gen_hex, 16) {
            found.push((generation, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

fn segment_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{generation:016x}"))
}

/// What the writer needs to know of the other threads when it writes a frame.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Marks {
    /// The log is durable up to this seq (the flusher's last sync).
    pub(crate) synced: u64,
    /// sled is durable up to this seq (the last checkpoint): closed segments at or below it
    /// may be reused.
    pub(crate) checkpointed: u64,
}

/// A segment that the writer left: reusable once a checkpoint covers `last_seq`.
#[derive(Debug)]
struct Closed {
    generation: u64,
    last_seq: u64,
}

/// The segment being written.
#[derive(Debug)]
struct Active {
    generation: u64,
    file: Arc<File>,
    /// Where the next frame goes.
    position: u64,
    /// Bytes of the file known to exist (zeros or older frames) from offset 0.
    allocated: u64,
    /// Last seq written into it (0: none yet).
    last_seq: u64,
}

/// The writer's side of the log: owned by the store's writer thread.
#[derive(Debug)]
pub(crate) struct WalWriter {
    dir: PathBuf,
    segment_bytes: u64,
    active: Active,
    closed: Vec<Closed>,
    frame: Vec<u8>,
    zeros: Vec<u8>,
    /// The file the flusher syncs; swapped when a segment is closed.
    current: Arc<std::sync::Mutex<Arc<File>>>,
}

impl WalWriter {
    /// Starts a log in `dir` after open has replayed and checkpointed what was there: every
    /// old segment is obsolete. Reuses the largest one (its old frames can never continue
    /// the chain: their seqs are at most `last_seq`), deletes the rest, and makes the
    /// directory durable. `fresh` deletes all of them instead (after an operator's
    /// truncation, old frames could carry seqs that will be written again).
    pub(crate) fn start(dir: &Path, fresh: bool, segment_bytes: u64) -> io::Result<Self> {
        super::disk_sync::create_dir_all_durable(dir)?;
        let old = segments(dir)?;
        let next_gen = old.last().map_or(1, |(g, _)| g + 1);
        let mut reuse = None;
        if !fresh {
            let mut best: Option<(u64, &PathBuf)> = None;
            for (_, path) in &old {
                let len = std::fs::metadata(path)?.len();
                if best.is_none_or(|(l, _)| len > l) {
                    best = Some((len, path));
                }
            }
            reuse = best.map(|(_, p)| p.clone());
        }
        let path = segment_path(dir, next_gen);
        for (_, old_path) in &old {
            if Some(old_path) == reuse.as_ref() {
                std::fs::rename(old_path, &path)?;
            } else {
                std::fs::remove_file(old_path)?;
            }
        }
        let file = open_segment(&path)?;
        let allocated = file.metadata()?.len();
        sync_dir(dir)?;
        let file = Arc::new(file);
        Ok(WalWriter {
            dir: dir.to_owned(),
            segment_bytes: segment_bytes.max(GROW_BYTES),
            active: Active {
                generation: next_gen,
                file: Arc::clone(&file),
                position: 0,
                allocated,
                last_seq: 0,
            },
            closed: Vec::new(),
            frame: Vec::new(),
            zeros: Vec::new(),
            current: Arc::new(std::sync::Mutex::new(file)),
        })
    }

    /// What the flusher syncs: always the segment holding the newest frames.
    pub(crate) fn sync_handle(&self) -> WalSync {
        WalSync {
            current: Arc::clone(&self.current),
        }
    }

    /// Writes the frame of a record (events `first_seq ..= last_seq`) to the page cache.
    /// Durable only after the flusher's next sync. Returns whether it closed a segment
    /// first (a checkpoint then lets the log reuse it).
    pub(crate) fn write(
        &mut self,
        first_seq: u64,
        last_seq: u64,
        record: &[u8],
        marks: Marks,
    ) -> io::Result<bool> {
        self.frame.clear();
        encode_frame(first_seq, marks.synced, record, &mut self.frame);
        let len = self.frame.len() as u64;
        let roll_over = self.active.position > 0 && self.active.position + len > self.segment_bytes;
        if roll_over {
            self.roll_over(marks.checkpointed)?;
        }
        self.grow_to(self.active.position + len)?;
        self.active
            .file
            .write_all_at(&self.frame, self.active.position)?;
        self.active.position += len;
        self.active.last_seq = last_seq;
        Ok(roll_over)
    }

    /// Zero-fills the segment ahead of the write position so that syncs do not change
    /// the file's size (see the module docs).
    fn grow_to(&mut self, end: u64) -> io::Result<()> {
        if end <= self.active.allocated {
            return Ok(());
        }
        let target = end.div_ceil(GROW_BYTES) * GROW_BYTES;
        if self.zeros.is_empty() {
            self.zeros = vec![0; GROW_BYTES as usize];
        }
        while self.active.allocated < target {
            let n = (target - self.active.allocated).min(GROW_BYTES) as usize;
            self.active
                .file
                .write_all_at(&self.zeros[..n], self.active.allocated)?;
            self.active.allocated += n as u64;
        }
        Ok(())
    }

    /// Closes the active segment (synced, so nothing after it can outlive it) and starts
    /// the next: a reused obsolete segment if there is one, else a new file; then fsyncs
    /// the directory, before any frame goes into the new segment.
    fn roll_over(&mut self, checkpointed: u64) -> io::Result<()> {
        self.active.file.sync_data()?;
        self.closed.push(Closed {
            generation: self.active.generation,
            last_seq: self.active.last_seq,
        });
        let generation = self.active.generation + 1;
        let path = segment_path(&self.dir, generation);
        let obsolete: Vec<usize> = (0..self.closed.len())
            .filter(|&i| self.closed[i].last_seq <= checkpointed)
            .collect();
        let mut reused = false;
        for &i in obsolete.iter().rev() {
            let old = self.closed.remove(i);
            let old_path = segment_path(&self.dir, old.generation);
            if reused {
                std::fs::remove_file(old_path)?;
            } else {
                std::fs::rename(old_path, &path)?;
                reused = true;
            }
        }
        let file = open_segment(&path)?;
        let allocated = file.metadata()?.len();
        sync_dir(&self.dir)?;
        let file = Arc::new(file);
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::clone(&file);
        self.active = Active {
            generation,
            file,
            position: 0,
            allocated,
            last_seq: 0,
        };
        Ok(())
    }
}

fn open_segment(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// After a clean close, when a checkpoint made sled durable with everything: deletes the
/// log, so that the next open has nothing to replay.
pub(crate) fn retire(dir: &Path) -> io::Result<()> {
    for (_, path) in segments(dir)? {
        std::fs::remove_file(path)?;
    }
    sync_dir(dir)
}

/// The flusher's side: syncs the segment being written.
#[derive(Debug, Clone)]
pub(crate) struct WalSync {
    current: Arc<std::sync::Mutex<Arc<File>>>,
}

impl WalSync {
    /// `fdatasync`s the active segment. Every frame written before this call is durable
    /// when it returns: frames of earlier segments were synced when those were closed.
    pub(crate) fn sync(&self) -> io::Result<()> {
        let file = Arc::clone(
            &self
                .current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        file.sync_data()
    }
}

/// What replay found in the log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Replayed {
    /// Records handed to `apply` (sled lacked them or may have lacked their index).
    pub(crate) records: u64,
    /// Last seq of the chain that continues sled's log (sled's last seq if none does).
    pub(crate) last_seq: u64,
    /// Segment files read.
    pub(crate) segments: usize,
}

/// Why replay refused the log.
#[derive(Debug)]
pub(crate) enum ReplayError {
    Io(io::Error),
    /// The log continues sled's log up to `after`, but a segment holds the later frame
    /// `found`, or a frame says the log was durable up to `found`: what lay in between
    /// was lost.
    Hole {
        after: u64,
        found: u64,
    },
}

impl From<io::Error> for ReplayError {
    fn from(err: io::Error) -> Self {
        ReplayError::Io(err)
    }
}

/// Reads the log in `dir` and hands every record sled may lack to `apply`, in seq order.
/// `sled_last_record` is the key and last seq of sled's last log record (`None`: sled's log
/// is empty); that record is handed over again when the log still has it (its index
/// entries may be incomplete), so `apply` must be idempotent.
///
/// Each segment contributes the chain at its start; the records are then followed from
/// sled's last record (or the one after it) for as long as they continue. Segments left
/// from before a checkpoint (deleted, but the deletion was not durable) hold only records
/// sled has; a frame beyond the end of what continues is a [`ReplayError::Hole`].
pub(crate) fn replay(
    dir: &Path,
    sled_last_record: Option<(u64, u64)>,
    mut apply: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> Result<Replayed, ReplayError> {
    let files = segments(dir)?;
    let (first_wanted, sled_last) = sled_last_record.unwrap_or((1, 0));
    let contents = files
        .iter()
        .map(|(_, path)| std::fs::read(path))
        .collect::<io::Result<Vec<Vec<u8>>>>()?;
    let mut by_first = std::collections::BTreeMap::new();
    let mut claimed = 0;
    let mut stray_seqs = Vec::new();
    for bytes in &contents {
        let frames = chain(bytes, None);
        let chain_end = frames.last().map_or(0, |f| f.end);
        let (claim, seqs) = strays(bytes, chain_end);
        claimed = claimed.max(claim);
        stray_seqs.extend(seqs);
        for frame in frames {
            claimed = claimed.max(frame.synced);
            if frame.last_seq() >= first_wanted {
                by_first.insert(frame.first_seq, frame);
            }
        }
    }
    let mut out = Replayed {
        segments: files.len(),
        last_seq: sled_last,
        ..Replayed::default()
    };
    let mut next = if by_first.contains_key(&first_wanted) {
        first_wanted
    } else {
        sled_last + 1
    };
    while let Some(frame) = by_first.get(&next) {
        apply(frame.first_seq, frame.record)?;
        out.records += 1;
        out.last_seq = out.last_seq.max(frame.last_seq());
        next = frame.last_seq() + 1;
    }
    if let Some((&found, _)) = by_first.range(next..).next() {
        return Err(ReplayError::Hole {
            after: next - 1,
            found,
        });
    }
    if claimed >= next {
        // Name the next record that is there, if one is.
        let found = stray_seqs
            .into_iter()
            .filter(|&seq| seq > next)
            .min()
            .unwrap_or(claimed);
        return Err(ReplayError::Hole {
            after: next - 1,
            found,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec::encode_record;
    use crate::store::{ExpectedVersion, NewEvent, StreamAppend};

    /// The record of one event at `seq` on stream `s` (version = seq).
    fn record(seq: u64) -> Vec<u8> {
        record_of(seq, 8)
    }

    /// The same, with a payload of `payload_len` bytes.
    fn record_of(seq: u64, payload_len: usize) -> Vec<u8> {
        let append = StreamAppend::new(
            "s",
            ExpectedVersion::Any,
            vec![NewEvent {
                event_type: "E".into(),
                schema_version: 1,
                payload: vec![seq as u8; payload_len],
                actor: String::new(),
                recorded_at_ms: 0,
            }],
        );
        let mut out = Vec::new();
        encode_record(seq, &[(&append, seq - 1)], &mut out);
        out
    }

    /// Frames for `seqs`, each claiming `synced`.
    fn frames(seqs: impl IntoIterator<Item = (u64, u64)>) -> Vec<u8> {
        let mut out = Vec::new();
        for (seq, synced) in seqs {
            encode_frame(seq, synced, &record(seq), &mut out);
        }
        out
    }

    fn segment(dir: &Path, generation: u64, bytes: &[u8]) {
        std::fs::write(segment_path(dir, generation), bytes).unwrap();
    }

    fn replayed(dir: &Path, sled: Option<(u64, u64)>) -> Result<Vec<u64>, ReplayError> {
        let mut applied = Vec::new();
        replay(dir, sled, |first, _| {
            applied.push(first);
            Ok(())
        })?;
        Ok(applied)
    }

    #[test]
    fn a_frame_is_laid_out_as_documented() {
        let rec = record(7);
        let mut out = vec![0xEE];
        encode_frame(7, 5, &rec, &mut out);
        let f = &out[1..];
        assert_eq!(&f[..4], b"OTAW");
        assert_eq!(f[4..8], (rec.len() as u32).to_be_bytes());
        assert_eq!(f[8..16], 7u64.to_be_bytes());
        assert_eq!(f[16..24], 5u64.to_be_bytes());
        assert_eq!(f[24..28], crc32fast::hash(&f[..24]).to_be_bytes());
        assert_eq!(&f[28..], &rec[..]);
        let frame = frame_at(&out, 1).unwrap();
        assert_eq!((frame.first_seq, frame.count, frame.synced), (7, 1, 5));
        assert_eq!(frame.end, out.len());
        // Every single flipped bit makes it invalid.
        for i in 1..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x01;
            assert!(frame_at(&bad, 1).is_none(), "flip at {i} went unnoticed");
        }
        // Cut short anywhere: no frame.
        for len in 1..out.len() {
            assert!(frame_at(&out[..len], 1).is_none());
        }
    }

    #[test]
    fn the_chain_ends_at_a_torn_zeroed_or_older_frame() {
        let mut bytes = frames([(1, 0), (2, 1), (3, 2)]);
        let good = bytes.len();
        bytes.extend(frames([(1, 0)])); // an older frame of a reused segment
        assert_eq!(chain(&bytes, None).len(), 3);
        assert_eq!(chain(&bytes, Some(0)).len(), 3);
        assert!(chain(&bytes, Some(5)).is_empty());
        bytes.truncate(good);
        bytes.extend([0u8; 64]);
        assert_eq!(chain(&bytes, None).len(), 3);
        let second = frame_at(&bytes, 0).unwrap().end;
        bytes[second + FRAME_HEADER + 2] ^= 0xFF;
        assert_eq!(chain(&bytes, None).len(), 1);
    }

    #[test]
    fn replay_hands_over_what_sled_lacks_and_its_last_record_again() {
        let dir = tempfile::tempdir().unwrap();
        segment(
            dir.path(),
            1,
            &frames([(1, 0), (2, 1), (3, 2), (4, 3), (5, 4)]),
        );
        assert_eq!(replayed(dir.path(), None).unwrap(), vec![1, 2, 3, 4, 5]);
        assert_eq!(replayed(dir.path(), Some((3, 3))).unwrap(), vec![3, 4, 5]);
        assert_eq!(replayed(dir.path(), Some((5, 5))).unwrap(), vec![5]);
        // sled is ahead of the log (a checkpoint, then the segment was reused).
        assert!(replayed(dir.path(), Some((9, 9))).unwrap().is_empty());
    }

    #[test]
    fn replay_follows_the_chain_across_segments_and_skips_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        // A segment deleted after a checkpoint that came back (the deletion was not
        // durable), then the live ones; the active one reused an old file.
        segment(dir.path(), 1, &frames([(1, 0), (2, 1)]));
        segment(dir.path(), 3, &frames([(5, 4), (6, 5)]));
        let mut active = frames([(7, 6)]);
        active.extend(frames([(2, 1)]));
        segment(dir.path(), 4, &active);
        assert_eq!(replayed(dir.path(), Some((4, 4))).unwrap(), vec![5, 6, 7]);
        assert_eq!(replayed(dir.path(), Some((6, 6))).unwrap(), vec![6, 7]);
    }

    #[test]
    fn a_lost_acknowledged_frame_is_a_hole() {
        let dir = tempfile::tempdir().unwrap();
        // Frame 2 is torn, frame 3 was written after 2 was synced: 2 had been acknowledged.
        let mut bytes = frames([(1, 0), (2, 1), (3, 2)]);
        let second = frame_at(&bytes, 0).unwrap().end;
        bytes[second + FRAME_HEADER] ^= 0xFF;
        segment(dir.path(), 1, &bytes);
        assert!(matches!(
            replayed(dir.path(), None),
            Err(ReplayError::Hole { after: 1, found: 3 })
        ));
        // The same tear, but frame 3 was written before 2 was synced: nothing after 1 was
        // acknowledged, the log ends at 1.
        let mut bytes = frames([(1, 0), (2, 1), (3, 1)]);
        bytes[second + FRAME_HEADER] ^= 0xFF;
        segment(dir.path(), 1, &bytes);
        assert_eq!(replayed(dir.path(), None).unwrap(), vec![1]);
    }

    #[test]
    fn a_missing_segment_is_a_hole() {
        let dir = tempfile::tempdir().unwrap();
        segment(dir.path(), 1, &frames([(1, 0), (2, 1)]));
        segment(dir.path(), 3, &frames([(5, 4)]));
        assert!(matches!(
            replayed(dir.path(), None),
            Err(ReplayError::Hole { after: 2, found: 5 })
        ));
    }

    #[test]
    fn the_writer_grows_rolls_over_and_reuses_checkpointed_segments() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let mut wal = WalWriter::start(&wal_dir, false, GROW_BYTES).unwrap();
        let big = |seq: u64| record_of(seq, 300 * 1024);
        let mut rolled = Vec::new();
        for seq in 1..=12 {
            let marks = Marks {
                synced: seq - 1,
                // sled is durable up to 6 from the ninth record on.
                checkpointed: if seq > 8 { 6 } else { 0 },
            };
            if wal.write(seq, seq, &big(seq), marks).unwrap() {
                rolled.push(seq);
            }
            // Grown in whole steps, never less than what was written.
            assert_eq!(wal.active.allocated % GROW_BYTES, 0);
            assert!(wal.active.allocated >= wal.active.position);
        }
        // Three records of 300 KiB fit in a 1 MiB segment.
        assert_eq!(rolled, vec![4, 7, 10]);
        // At 10, segments 1 (records 1..=3) and 2 (4..=6) were checkpointed: one was
        // reused as segment 4, the other deleted.
        let names: Vec<u64> = segments(&wal_dir).unwrap().iter().map(|s| s.0).collect();
        assert_eq!(names, vec![3, 4]);
        wal.sync_handle().sync().unwrap();
        drop(wal);
        assert_eq!(
            replayed(&wal_dir, Some((6, 6))).unwrap(),
            vec![7, 8, 9, 10, 11, 12]
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Any damage or cut: never a panic, and what is handed over is a run of consecutive
        /// records from the start — or a hole is reported.
        #[test]
        fn damaged_segments_replay_a_prefix_or_report_a_hole(
            flips in proptest::collection::vec((0usize..10_000, 1u8..=255), 0..6),
            keep in 0usize..10_000,
        ) {
            let mut bytes = frames((1..=8).map(|s| (s, s - 1)));
            let len = bytes.len();
            for (at, x) in flips {
                bytes[at % len] ^= x;
            }
            bytes.truncate(keep % (len + 1));
            let dir = tempfile::tempdir().unwrap();
            segment(dir.path(), 1, &bytes);
            match replayed(dir.path(), None) {
                Ok(applied) => {
                    let expected: Vec<u64> = (1..=applied.len() as u64).collect();
                    proptest::prop_assert_eq!(applied, expected);
                }
                Err(ReplayError::Hole { after, found }) => proptest::prop_assert!(found > after),
                Err(ReplayError::Io(err)) => proptest::prop_assert!(false, "{err}"),
            }
        }
    }
}
