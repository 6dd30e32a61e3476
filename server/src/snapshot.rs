//! Projection snapshots: the fleet state at one sequence number, on disk, so a restart replays
//! only the events after it.
//!
//! A snapshot is an optimisation, never a source of truth. The log stays complete; a snapshot
//! that is missing, unreadable, corrupt, of another shape (`projection::SNAPSHOT_SCHEMA`), ahead
//! of the log, or taken of another log (the event at its sequence number is not the one it
//! names) is ignored with a warning and the state is rebuilt from the log alone, which gives the
//! same state by construction (`FleetState::apply` is a pure fold).
//!
//! File: `<data_dir>/snapshots/fleet-<seq, 20 digits>.snap`:
//!
//! ```text
//! magic "OTASNAP1" | u32 format | u32 SNAPSHOT_SCHEMA | u64 seq | u64 stream version of the
//! event at seq | u32 stream length | stream | u64 body length | body | SHA-256 of all before
//! ```
//!
//! (integers little-endian; body = postcard of the state and the stream versions). It is
//! written to a temporary file, fsynced, renamed into place and the directory fsynced, so a
//! crash leaves either the old set of snapshots or the new one; the newest two are kept.
//!
//! What this module does not do: decide when to write (that is `Core`'s snapshot task) or fold
//! events.

use std::collections::HashMap;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use ota_domain::projection::{FleetState, SNAPSHOT_SCHEMA};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::store::disk_sync::{create_dir_all_durable, sync_dir};

const MAGIC: &[u8; 8] = b"OTASNAP1";
const FORMAT: u32 = 1;
const KEEP: usize = 2;

/// The event a snapshot was taken at: its sequence number and, to recognise the same log,
/// its stream and stream version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPoint {
    /// Last event folded into the snapshot.
    pub seq: u64,
    /// That event's stream.
    pub stream: String,
    /// That event's version in its stream.
    pub stream_version: u64,
}

/// What a snapshot holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Projected {
    /// The fleet state.
    pub state: FleetState,
    /// The version of every stream whose view does not keep it (task and device views keep
    /// theirs), for the optimistic checks of appends.
    pub versions: HashMap<String, u64>,
}

/// Borrowed twin of [`Projected`] for writing without a copy (postcard encodes both alike).
#[derive(Serialize)]
struct ProjectedRef<'a> {
    state: &'a FleetState,
    versions: &'a HashMap<String, u64>,
}

/// Encodes the projection (under the caller's read lock: keep it short).
pub fn encode(state: &FleetState, versions: &HashMap<String, u64>) -> Vec<u8> {
    postcard::to_stdvec(&ProjectedRef { state, versions })
        .unwrap_or_else(|e| unreachable!("postcard cannot fail encoding to a Vec: {e}"))
}

/// The snapshot directory of a data directory.
pub fn dir_of(data_dir: &Path) -> PathBuf {
    data_dir.join("snapshots")
}

fn file_name(seq: u64) -> String {
    format!("fleet-{seq:020}.snap")
}

fn seq_of(name: &str) -> Option<u64> {
    name.strip_prefix("fleet-")?
        .strip_suffix(".snap")?
        .parse()
        .ok()
}

/// The bytes before the body: magic, format, schema, the point, the body's length.
fn header(point: &SnapshotPoint, body_len: usize) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(64 + point.stream.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT.to_le_bytes());
    bytes.extend_from_slice(&SNAPSHOT_SCHEMA.to_le_bytes());
    bytes.extend_from_slice(&point.seq.to_le_bytes());
    bytes.extend_from_slice(&point.stream_version.to_le_bytes());
    let stream_len = u32::try_from(point.stream.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "stream name too long"))?;
    bytes.extend_from_slice(&stream_len.to_le_bytes());
    bytes.extend_from_slice(point.stream.as_bytes());
    bytes.extend_from_slice(&(body_len as u64).to_le_bytes());
    Ok(bytes)
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    sha: Sha256,
}

impl<W: io::Write> io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A snapshot written to its temporary file, not yet durable nor in place.
#[derive(Debug)]
pub struct Pending {
    dir: PathBuf,
    tmp: PathBuf,
    path: PathBuf,
}

impl Pending {
    /// Makes it durable and puts it in place (fsync, rename, directory fsync), then removes
    /// all but the newest two. Blocking: run it off the async threads.
    pub fn commit(self) -> io::Result<PathBuf> {
        std::fs::File::open(&self.tmp)?.sync_all()?;
        std::fs::rename(&self.tmp, &self.path)?;
        sync_dir(&self.dir)?;
        prune(&self.dir)?;
        Ok(self.path)
    }
}

/// Writes header, body and checksum to the temporary file of `point`'s snapshot; `body`
/// writes the body (exactly `body_len` bytes).
fn write_tmp(
    dir: &Path,
    point: &SnapshotPoint,
    body_len: usize,
    body: impl FnOnce(&mut dyn io::Write) -> io::Result<()>,
) -> io::Result<Pending> {
    create_dir_all_durable(dir)?;
    let path = dir.join(file_name(point.seq));
    let tmp = dir.join(format!(".{}.tmp", file_name(point.seq)));
    let file = std::fs::File::create(&tmp)?;
    let mut out = Hashing {
        inner: io::BufWriter::with_capacity(1 << 20, file),
        sha: Sha256::new(),
    };
    out.write_all(&header(point, body_len)?)?;
    body(&mut out)?;
    let checksum = out.sha.finalize();
    out.inner.write_all(&checksum)?;
    out.inner.flush()?;
    Ok(Pending {
        dir: dir.to_owned(),
        tmp,
        path,
    })
}

/// Encodes the projection straight into the temporary file of `point`'s snapshot (under the
/// caller's read lock: no copy of the state's encoding is held in memory, which on a large
/// fleet would be hundreds of MiB); [`Pending::commit`] then makes it durable.
pub fn write_state(
    dir: &Path,
    point: &SnapshotPoint,
    state: &FleetState,
    versions: &HashMap<String, u64>,
) -> io::Result<Pending> {
    let projected = ProjectedRef { state, versions };
    let body_len = postcard::experimental::serialized_size(&projected)
        .map_err(|e| io::Error::other(format!("cannot size the snapshot: {e}")))?;
    write_tmp(dir, point, body_len, |w| {
        postcard::to_io(&projected, w)
            .map(|_| ())
            .map_err(|e| io::Error::other(format!("cannot encode the snapshot: {e}")))
    })
}

/// Writes a snapshot of `body` (from [`encode`]) taken at `point` durably, then removes all
/// but the newest two. Blocking: run it off the async threads.
pub fn write(dir: &Path, point: &SnapshotPoint, body: &[u8]) -> io::Result<PathBuf> {
    write_tmp(dir, point, body.len(), |w| w.write_all(body))?.commit()
}

/// Snapshot files by sequence number, newest first (none when `dir` does not exist).
pub fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if let Some(seq) = entry.file_name().to_str().and_then(seq_of) {
            found.push((seq, entry.path()));
        }
    }
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    Ok(found)
}

fn prune(dir: &Path) -> io::Result<()> {
    for (_, path) in list(dir)?.into_iter().skip(KEEP) {
        std::fs::remove_file(path)?;
    }
    // Temporary files of writes a crash interrupted.
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(".tmp"))
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Why a snapshot file was not used.
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    /// It could not be read.
    #[error("cannot read it: {0}")]
    Io(#[from] io::Error),
    /// Not a snapshot, truncated, or its checksum does not match.
    #[error("corrupt: {0}")]
    Corrupt(&'static str),
    /// Written by a build whose projection has another shape.
    #[error("written for projection schema {found}, this build has {SNAPSHOT_SCHEMA}")]
    OtherSchema {
        /// The file's schema number.
        found: u32,
    },
}

/// A snapshot file, checked and decoded.
#[derive(Debug)]
pub struct Loaded {
    /// Where it was taken.
    pub point: SnapshotPoint,
    /// What it holds.
    pub projected: Projected,
    /// The file.
    pub path: PathBuf,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Unusable> {
        if self.0.len() < n {
            return Err(Unusable::Corrupt("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, Unusable> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, Unusable> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
}

/// Checks and decodes one snapshot file's bytes.
pub fn decode(bytes: &[u8]) -> Result<(SnapshotPoint, Projected), Unusable> {
    if bytes.len() >= 16 && bytes.starts_with(MAGIC) {
        let mut b = [0u8; 4];
        b.copy_from_slice(&bytes[12..16]);
        let found = u32::from_le_bytes(b);
        if found != SNAPSHOT_SCHEMA {
            return Err(Unusable::OtherSchema { found });
        }
    }
    let Some(covered_len) = bytes.len().checked_sub(32) else {
        return Err(Unusable::Corrupt("truncated"));
    };
    let (covered, checksum) = bytes.split_at(covered_len);
    if Sha256::digest(covered).as_slice() != checksum {
        return Err(Unusable::Corrupt(
            "checksum mismatch (truncated or damaged)",
        ));
    }
    let mut r = Reader(covered);
    if r.take(MAGIC.len())? != MAGIC {
        return Err(Unusable::Corrupt("not a snapshot file"));
    }
    if r.u32()? != FORMAT {
        return Err(Unusable::Corrupt("unknown file format"));
    }
    let schema = r.u32()?;
    if schema != SNAPSHOT_SCHEMA {
        return Err(Unusable::OtherSchema { found: schema });
    }
    let seq = r.u64()?;
    let stream_version = r.u64()?;
    let stream_len = r.u32()? as usize;
    let stream = std::str::from_utf8(r.take(stream_len)?)
        .map_err(|_| Unusable::Corrupt("stream name is not UTF-8"))?
        .to_owned();
    let body_len =
        usize::try_from(r.u64()?).map_err(|_| Unusable::Corrupt("body length too large"))?;
    let body = r.take(body_len)?;
    if !r.0.is_empty() {
        return Err(Unusable::Corrupt("bytes after the body"));
    }
    let projected: Projected =
        postcard::from_bytes(body).map_err(|_| Unusable::Corrupt("body does not decode"))?;
    if projected.state.last_seq != seq {
        return Err(Unusable::Corrupt(
            "state and header disagree on the sequence",
        ));
    }
    Ok((
        SnapshotPoint {
            seq,
            stream,
            stream_version,
        },
        projected,
    ))
}

/// The newest usable snapshot in `dir` whose point `matches` the log (the event at its
/// sequence number exists and is the one it names), or none. Every file skipped is reported
/// to `skipped` with the reason.
pub fn load_newest(
    dir: &Path,
    matches: impl Fn(&SnapshotPoint) -> Result<bool, String>,
    mut skipped: impl FnMut(&Path, String),
) -> Option<Loaded> {
    let files = match list(dir) {
        Ok(f) => f,
        Err(e) => {
            skipped(dir, format!("cannot list snapshots: {e}"));
            return None;
        }
    };
    for (_, path) in files {
        let decoded = std::fs::read(&path)
            .map_err(Unusable::from)
            .and_then(|b| decode(&b));
        match decoded {
            Err(e) => skipped(&path, e.to_string()),
            Ok((point, projected)) => match matches(&point) {
                Ok(true) => {
                    return Some(Loaded {
                        point,
                        projected,
                        path,
                    });
                }
                Ok(false) => skipped(
                    &path,
                    format!(
                        "taken of another log (event {} is not {} v{})",
                        point.seq, point.stream, point.stream_version
                    ),
                ),
                Err(e) => skipped(&path, e),
            },
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (SnapshotPoint, Vec<u8>) {
        let state = FleetState {
            last_seq: 7,
            ..Default::default()
        };
        let versions = HashMap::from([("site/home".to_owned(), 3)]);
        let point = SnapshotPoint {
            seq: 7,
            stream: "site/home".into(),
            stream_version: 3,
        };
        (point, encode(&state, &versions))
    }

    #[test]
    fn a_written_snapshot_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let (point, body) = sample();
        let path = write(dir.path(), &point, &body).unwrap();
        let (read_point, projected) = decode(&std::fs::read(path).unwrap()).unwrap();
        assert_eq!(read_point, point);
        assert_eq!(projected.state.last_seq, 7);
        assert_eq!(projected.versions["site/home"], 3);
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (point, body) = sample();
        let bytes = std::fs::read(write(dir.path(), &point, &body).unwrap()).unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(decode(&bad).is_err(), "a flipped byte {i} was accepted");
            assert!(
                decode(&bytes[..i]).is_err(),
                "a truncation to {i} was accepted"
            );
        }
    }

    #[test]
    fn only_the_newest_two_are_kept_and_the_newest_matching_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        for seq in [3u64, 5, 9] {
            let state = FleetState {
                last_seq: seq,
                ..Default::default()
            };
            let point = SnapshotPoint {
                seq,
                stream: "s".into(),
                stream_version: seq,
            };
            write(dir.path(), &point, &encode(&state, &HashMap::new())).unwrap();
        }
        let names: Vec<u64> = list(dir.path()).unwrap().iter().map(|f| f.0).collect();
        assert_eq!(names, vec![9, 5]);
        // A log that ends at 6 cannot use the snapshot at 9.
        let mut skipped = Vec::new();
        let loaded = load_newest(
            dir.path(),
            |p| Ok(p.seq <= 6),
            |p, why| skipped.push((p.to_owned(), why)),
        )
        .unwrap();
        assert_eq!(loaded.point.seq, 5);
        assert_eq!(skipped.len(), 1);
        // Another schema is skipped, not misread.
        let mut other = std::fs::read(&loaded.path).unwrap();
        other[12..16].copy_from_slice(&(SNAPSHOT_SCHEMA + 1).to_le_bytes());
        assert!(matches!(decode(&other), Err(Unusable::OtherSchema { .. })));
    }
}
