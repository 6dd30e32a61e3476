//! What makes sled's writes durable: the fsyncs sled 0.34.7 does not do itself.
//!
//! Read in sled 0.34.7's source (`pagecache/iobuf.rs`, `blob_io.rs`, `config.rs`,
//! `snapshot.rs`) and confirmed with strace: on Linux `Db::flush` ends with
//! `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` on its data file `db`, which starts
//! and waits for the writeback of the pages but neither flushes the drive's volatile cache
//! nor persists metadata such as a grown file size. A real `fsync` of `db` happens only in
//! sled's background thread (every `flush_every_ms`). What else sled writes in the store
//! directory:
//!
//! * `conf` (its storage parameters), written once when the store is created, never synced;
//! * `blobs/<lsn>`: a page update whose serialized size exceeds a quarter of a segment
//!   (`segment_size / 4 - 20` bytes, 131,052 with the default 512 KiB segments) is written
//!   to a file of its own and only a pointer goes into `db`. The file is never synced and
//!   neither is the directory. A pointer that is durable while its file is torn stops
//!   sled's recovery at that pointer; a missing file makes it skip the update;
//! * `snap.<lsn>` (a cache of the page table): written, `sync_all`ed, then renamed; losing
//!   the rename only means recovery starts from an older snapshot;
//! * no directory is ever fsynced.
//!
//! [`DiskSync`] closes those gaps for the event store: at open it fsyncs `conf`, `db`, the
//! existing blob files, `blobs/`, the store directory and its parent; after every sled
//! flush of a checkpoint (appends are durable earlier, in the write-ahead log, see `wal`),
//! [`DiskSync::sync`] `fdatasync`s `db` through a second descriptor (an fsync acts on the
//! inode, whichever descriptor names it) and fsyncs every blob file that appeared since the
//! last call, then `blobs/`. Until a checkpoint covers a record, the log keeps it.
//!
//! The writer keeps ordinary records small enough that a full sled leaf (at most 17
//! entries, 20 right after a truncation merged two) stays below the blob threshold, so
//! blob files appear only for appends larger than a record (6 KiB of events). A blob file
//! counts as synced only once it was complete when synced: sled writes it in one go before
//! it logs the pointer, but from any thread (its background segment cleaning rewrites pages
//! too), so a file seen while being written is synced again at the next call. Complete
//! means sled's own checksum matches (`crc32 LE | kind | data`, crc over kind and data).
//!
//! What this does not do: it cannot change the order in which sled writes; sled considers
//! data stable after `sync_file_range` and may reuse a segment once its pages moved; see
//! "Durability" in ARCHITECTURE.md for what that leaves.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// sled's data file in the store directory.
const DATA_FILE: &str = "db";
/// sled's storage parameters.
const CONF_FILE: &str = "conf";
/// sled's directory of large page updates.
const BLOBS_DIR: &str = "blobs";
/// Blob files last modified longer ago than this when the store opens were written by an
/// earlier process and are complete (sled removed torn ones above its stable point).
const SETTLED: Duration = Duration::from_secs(2);

/// Counters of the syncs done, for tests and the benchmark.
#[derive(Debug, Default)]
pub(crate) struct SyncCounters {
    /// `fdatasync` calls on sled's data file (at open and at checkpoints).
    pub(crate) data_syncs: AtomicU64,
    /// `fdatasync` calls on the write-ahead log (one per commit group).
    pub(crate) wal_syncs: AtomicU64,
    /// Blob files fsynced.
    pub(crate) blob_syncs: AtomicU64,
}

/// The second descriptor on sled's data file and the blob files known to be durable.
#[derive(Debug)]
pub(crate) struct DiskSync {
    data: File,
    blobs_dir: PathBuf,
    /// Blob files fsynced after they were complete.
    durable_blobs: HashSet<OsString>,
    counters: Arc<SyncCounters>,
}

impl DiskSync {
    /// Call once sled has opened the store in `store_dir`: fsyncs what sled created or may
    /// have left unsynced (`conf`, `db`, existing blob files, `blobs/`, the store directory
    /// and its parent's entry for it).
    pub(crate) fn open(store_dir: &Path, counters: Arc<SyncCounters>) -> io::Result<Self> {
        let data = File::open(store_dir.join(DATA_FILE))?;
        data.sync_all()?;
        match File::open(store_dir.join(CONF_FILE)) {
            Ok(conf) => conf.sync_all()?,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        let mut sync = DiskSync {
            data,
            blobs_dir: store_dir.join(BLOBS_DIR),
            durable_blobs: HashSet::new(),
            counters,
        };
        let settled_before = SystemTime::now()
            .checked_sub(SETTLED)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        sync.sync_new_blobs(Some(settled_before))?;
        sync_dir(&sync.blobs_dir)?;
        sync_dir(store_dir)?;
        if let Some(parent) = store_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Ok(sync)
    }

    /// After a sled flush and before acknowledging what it covered: `fdatasync`s the data
    /// file, then fsyncs blob files that appeared since the last call and `blobs/`.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        self.data.sync_data()?;
        self.counters.data_syncs.fetch_add(1, Ordering::Relaxed);
        if self.sync_new_blobs(None)? > 0 {
            sync_dir(&self.blobs_dir)?;
        }
        Ok(())
    }

    /// Fsyncs every blob file not yet known durable; returns how many it synced. With
    /// `settled_before`, files last modified before then count as complete without reading
    /// them (at open, when no writer of this process runs yet).
    fn sync_new_blobs(&mut self, settled_before: Option<SystemTime>) -> io::Result<usize> {
        let entries = match std::fs::read_dir(&self.blobs_dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(err) => return Err(err),
        };
        let mut present = Vec::new();
        let mut synced = 0;
        for entry in entries {
            let name = entry?.file_name();
            if !self.durable_blobs.contains(&name) {
                match sync_blob(&self.blobs_dir.join(&name), settled_before) {
                    Ok(complete) => {
                        synced += 1;
                        self.counters.blob_syncs.fetch_add(1, Ordering::Relaxed);
                        if complete {
                            self.durable_blobs.insert(name.clone());
                        }
                    }
                    // sled removed it meanwhile: nothing to make durable.
                    Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                    Err(err) => return Err(err),
                }
            }
            present.push(name);
        }
        if self.durable_blobs.len() > present.len() {
            let present: HashSet<OsString> = present.into_iter().collect();
            self.durable_blobs.retain(|name| present.contains(name));
        }
        Ok(synced)
    }
}

/// Fsyncs one blob file; returns whether it was complete when synced.
fn sync_blob(path: &Path, settled_before: Option<SystemTime>) -> io::Result<bool> {
    let mut file = File::open(path)?;
    let settled = match settled_before {
        Some(before) => file.metadata()?.modified()? < before,
        None => false,
    };
    if settled {
        file.sync_all()?;
        return Ok(true);
    }
    // Read first: if the bytes read are complete, everything was written before the sync.
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    file.sync_all()?;
    Ok(sled_blob_complete(&bytes))
}

/// Whether `bytes` are a whole sled blob file: `crc32 (LE) | kind | data`, the crc over
/// kind and data.
fn sled_blob_complete(bytes: &[u8]) -> bool {
    match bytes.split_first_chunk::<4>() {
        Some((crc, rest)) if !rest.is_empty() => crc32fast::hash(rest) == u32::from_le_bytes(*crc),
        _ => false,
    }
}

/// Fsyncs a directory, making the entries created, renamed or removed in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing ancestors, fsyncing the parent of each directory created
/// so that the new entries survive a power cut.
pub(crate) fn create_dir_all_durable(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at {
        if path.as_os_str().is_empty() || path.is_dir() {
            break;
        }
        missing.push(path);
        at = path.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        match created.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => sync_dir(parent)?,
            None => sync_dir(Path::new("."))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob file as sled writes it.
    fn sled_blob(kind: u8, data: &[u8]) -> Vec<u8> {
        let mut rest = vec![kind];
        rest.extend_from_slice(data);
        let mut bytes = crc32fast::hash(&rest).to_le_bytes().to_vec();
        bytes.extend(rest);
        bytes
    }

    fn store_dir() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("events");
        std::fs::create_dir_all(dir.join(BLOBS_DIR)).unwrap();
        std::fs::write(dir.join(DATA_FILE), b"").unwrap();
        (tmp, dir)
    }

    #[test]
    fn complete_blobs_are_synced_once_and_partial_ones_again() {
        let (_tmp, dir) = store_dir();
        let counters = Arc::new(SyncCounters::default());
        let mut sync = DiskSync::open(&dir, Arc::clone(&counters)).unwrap();
        assert_eq!(counters.blob_syncs.load(Ordering::Relaxed), 0);

        let whole = sled_blob(7, &[1; 1000]);
        std::fs::write(dir.join(BLOBS_DIR).join("100"), &whole).unwrap();
        // Still being written: a prefix of the file.
        std::fs::write(dir.join(BLOBS_DIR).join("200"), &whole[..500]).unwrap();
        sync.sync().unwrap();
        assert_eq!(counters.data_syncs.load(Ordering::Relaxed), 1);
        assert_eq!(counters.blob_syncs.load(Ordering::Relaxed), 2);

        // The complete one is known; the partial one is synced again, now complete.
        std::fs::write(dir.join(BLOBS_DIR).join("200"), &whole).unwrap();
        sync.sync().unwrap();
        assert_eq!(counters.blob_syncs.load(Ordering::Relaxed), 3);
        sync.sync().unwrap();
        assert_eq!(counters.blob_syncs.load(Ordering::Relaxed), 3);
        assert_eq!(counters.data_syncs.load(Ordering::Relaxed), 3);

        // Removed files are forgotten.
        std::fs::remove_file(dir.join(BLOBS_DIR).join("100")).unwrap();
        sync.sync().unwrap();
        assert_eq!(sync.durable_blobs.len(), 1);
    }

    #[test]
    fn settled_blobs_count_as_complete_at_open() {
        let (_tmp, dir) = store_dir();
        std::fs::write(dir.join(BLOBS_DIR).join("1"), b"not a whole blob").unwrap();
        let counters = Arc::new(SyncCounters::default());
        // Written "now": read and found incomplete, so it is synced again later.
        let mut sync = DiskSync::open(&dir, Arc::clone(&counters)).unwrap();
        assert_eq!(counters.blob_syncs.load(Ordering::Relaxed), 1);
        assert!(sync.durable_blobs.is_empty());
        // Old enough: complete without reading.
        let old = SystemTime::now() + Duration::from_secs(60);
        assert_eq!(sync.sync_new_blobs(Some(old)).unwrap(), 1);
        assert_eq!(sync.durable_blobs.len(), 1);
    }

    #[test]
    fn blob_completeness_is_sleds_checksum() {
        let blob = sled_blob(3, b"page bytes");
        assert!(sled_blob_complete(&blob));
        assert!(!sled_blob_complete(&blob[..blob.len() - 1]));
        assert!(!sled_blob_complete(&blob[..4]));
        assert!(!sled_blob_complete(&[]));
    }

    #[test]
    fn directories_are_created_with_their_parents_synced() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        create_dir_all_durable(&deep).unwrap();
        assert!(deep.is_dir());
        // Existing: nothing to do.
        create_dir_all_durable(&deep).unwrap();
    }
}
