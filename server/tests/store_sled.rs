//! `SledEventStore` only: durability across reopen, recovery checks on open (checksums,
//! gaps, truncated tails, index and heads), the operator's truncation override,
//! completion of an append interrupted by a crash, and a real crash: a child process
//! appending at full speed is SIGKILLed and every acknowledged event must survive.
//!
//! Damage is injected through raw sled access following the documented on-disk format
//! (see `ota_server::store::sled`), which these tests therefore also pin down.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ota_server::store::{
    Corruption, EventStore, ExpectedVersion, NewEvent, OpenValidation, SledEventStore, SledOptions,
    StoreError, StreamAppend,
};
use tempfile::TempDir;

fn event(payload: &[u8]) -> NewEvent {
    NewEvent {
        event_type: "Happened".into(),
        schema_version: 3,
        payload: payload.to_vec(),
        actor: "tester".into(),
        recorded_at_ms: 42,
    }
}

fn one(stream: &str, payload: &[u8]) -> Vec<StreamAppend> {
    vec![StreamAppend::new(
        stream,
        ExpectedVersion::Any,
        vec![event(payload)],
    )]
}

fn open(path: &Path) -> Result<SledEventStore, StoreError> {
    SledEventStore::open(path, SledOptions::default())
}

fn open_with(path: &Path, f: impl FnOnce(&mut SledOptions)) -> Result<SledEventStore, StoreError> {
    let mut options = SledOptions::default();
    f(&mut options);
    SledEventStore::open(path, options)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A store at `dir/events` with `n` single-event appends over 5 streams, plus one
/// three-event append (two streams) in the middle at seqs 11..=13. Returns its events.
fn populated(n: u64) -> (TempDir, PathBuf, Vec<ota_server::store::RecordedEvent>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events");
    let events = rt().block_on(async {
        let store = open(&path).unwrap();
        for i in 1..=n {
            if i == 11 {
                let batch = vec![
                    StreamAppend::new(
                        "multi-a",
                        ExpectedVersion::NoStream,
                        vec![event(b"m1"), event(b"m2")],
                    ),
                    StreamAppend::new("multi-b", ExpectedVersion::NoStream, vec![event(b"m3")]),
                ];
                store.append(batch).await.unwrap();
            } else {
                store
                    .append(one(
                        &format!("s{}", i % 5),
                        format!("payload {i}").as_bytes(),
                    ))
                    .await
                    .unwrap();
            }
        }
        let events = store.read_from(1, usize::MAX).unwrap();
        store.close().await.unwrap();
        events
    });
    (dir, path, events)
}

/// Raw access to the store's sled trees, following the documented format.
struct Raw {
    db: sled::Db,
}

impl Raw {
    /// Opens the database once the closed store's sled has let go of its file lock: sled's own
    /// background flusher may hold it for a moment after `close` (the store's open waits the same
    /// way, `SledOptions::lock_wait`).
    fn open(path: &Path) -> Self {
        let mut tries = 0;
        loop {
            match sled::open(path) {
                Ok(db) => return Raw { db },
                Err(e) if tries < 200 && e.to_string().contains("could not acquire lock") => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("open the closed store's sled database: {e}"),
            }
        }
    }
    fn tree(&self, name: &str) -> sled::Tree {
        self.db.open_tree(name).unwrap()
    }
    fn index_key(stream: &str, version: u64) -> Vec<u8> {
        let mut k = (stream.len() as u16).to_be_bytes().to_vec();
        k.extend_from_slice(stream.as_bytes());
        k.extend_from_slice(&version.to_be_bytes());
        k
    }
    fn flip_byte(&self, record_seq: u64, offset_from_end: usize) {
        let log = self.tree("log");
        let key = record_seq.to_be_bytes();
        let mut value = log.get(key).unwrap().expect("record exists").to_vec();
        let at = value.len() - 1 - offset_from_end;
        value[at] ^= 0x5A;
        log.insert(key, value).unwrap();
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.db.flush().unwrap();
    }
}

fn expect_corrupt(result: Result<SledEventStore, StoreError>) -> (u64, Corruption) {
    match result {
        Err(StoreError::Corrupt { seq, reason }) => (seq, reason),
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("expected Corrupt, the store opened"),
    }
}

#[test]
fn events_survive_close_and_reopen() {
    let (_dir, path, before) = populated(40);
    assert_eq!(before.len(), 42);
    rt().block_on(async {
        let store = open(&path).unwrap();
        assert_eq!(store.last_seq(), 42);
        assert_eq!(store.read_from(0, usize::MAX).unwrap(), before);
        assert_eq!(store.stream_version("multi-a").unwrap(), 2);
        assert_eq!(store.stream_version("s1").unwrap(), 7);
        let multi: Vec<u64> = store
            .read_stream("multi-a", 0)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(multi, vec![11, 12]);

        // Appends continue the seqs and versions.
        assert!(matches!(
            store
                .append(vec![StreamAppend::new(
                    "s1",
                    ExpectedVersion::Exact(6),
                    vec![event(b"")]
                )])
                .await,
            Err(StoreError::Conflict { actual: 7, .. })
        ));
        let out = store
            .append(vec![StreamAppend::new(
                "s1",
                ExpectedVersion::Exact(7),
                vec![event(b"after")],
            )])
            .await
            .unwrap();
        assert_eq!((out.first_seq, out.streams[0].version), (43, 8));
        let stats = store.stats();
        assert_eq!(stats.events, 43);
        assert!(stats.disk_bytes > 0);
        assert!(stats.flush_latency.count >= 1);
        drop(store);

        // Dropping without close() is a clean shutdown too.
        let store = open(&path).unwrap();
        assert_eq!(store.read_from(43, 1).unwrap()[0].payload, b"after");
    });
}

#[test]
fn second_open_of_the_same_store_fails_with_io() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path()).unwrap();
    let no_wait = |o: &mut SledOptions| o.lock_wait = Duration::ZERO;
    let err = open_with(dir.path(), no_wait).unwrap_err();
    assert!(matches!(err, StoreError::Io(_)), "{err}");
    assert!(err.to_string().contains("could not acquire lock"), "{err}");
    drop(first);
    open(dir.path()).unwrap();
}

#[test]
fn subscriptions_end_with_closed_when_the_store_closes() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = open(dir.path()).unwrap();
        store.append(one("a", b"")).await.unwrap();
        let mut sub = store.subscribe(0);
        assert_eq!(sub.next().await.unwrap().unwrap().seq, 1);
        let waiting = tokio::spawn(async move { sub.next().await });
        store.close().await.unwrap();
        assert!(matches!(
            waiting.await.unwrap(),
            Some(Err(StoreError::Closed))
        ));
        // The database is closed: it can be opened again.
        assert_eq!(open(dir.path()).unwrap().last_seq(), 1);
    });
}

#[test]
fn flipped_byte_in_the_tail_fails_open_naming_the_seq() {
    let (_dir, path, _) = populated(40);
    Raw::open(&path).flip_byte(38, 3);
    let (seq, reason) = expect_corrupt(open(&path));
    assert_eq!(seq, 38);
    assert!(
        matches!(reason, Corruption::ChecksumMismatch { .. }),
        "{reason}"
    );
    let err = open(&path).err().unwrap().to_string();
    assert!(
        err.starts_with("event log corrupt at seq 38: checksum mismatch"),
        "{err}"
    );
}

#[test]
fn flipped_byte_in_a_multi_event_record_names_its_first_seq() {
    let (_dir, path, _) = populated(20);
    Raw::open(&path).flip_byte(11, 0);
    assert_eq!(expect_corrupt(open(&path)).0, 11);
}

#[test]
fn damage_before_the_tail_window_is_found_by_reads_or_full_validation() {
    let (_dir, path, _) = populated(40);
    Raw::open(&path).flip_byte(5, 10);
    let tail_of_ten = |o: &mut SledOptions| o.validation = OpenValidation::Tail { events: 10 };
    rt().block_on(async {
        // Documented trade-off: open verifies the tail fully, the rest by keys only.
        let store = open_with(&path, tail_of_ten).unwrap();
        assert_eq!(store.read_from(1, 4).unwrap().len(), 4);
        match store.read_from(1, 100) {
            Err(StoreError::Corrupt {
                seq: 5,
                reason: Corruption::ChecksumMismatch { .. },
            }) => {}
            other => panic!("expected Corrupt at 5, got {other:?}"),
        }
        // Reading past the damaged record works; a stream read through it fails.
        assert_eq!(store.read_from(6, 100).unwrap().len(), 37);
        assert!(matches!(
            store.read_stream("s0", 0),
            Err(StoreError::Corrupt { seq: 5, .. })
        ));
        let mut sub = store.subscribe(0);
        for seq in 1..=4 {
            assert_eq!(sub.next().await.unwrap().unwrap().seq, seq);
        }
        assert!(matches!(
            sub.next().await,
            Some(Err(StoreError::Corrupt { seq: 5, .. }))
        ));
        assert!(sub.next().await.is_none());
    });
    let (seq, _) = expect_corrupt(open_with(&path, |o| o.validation = OpenValidation::Full));
    assert_eq!(seq, 5);
}

#[test]
fn missing_middle_record_is_found_by_the_key_scan_or_by_reads() {
    let (_dir, path, _) = populated(40);
    Raw::open(&path)
        .tree("log")
        .remove(20u64.to_be_bytes())
        .unwrap();
    // Inside the tail window, or with the key scan: open fails naming the gap.
    let (seq, reason) = expect_corrupt(open(&path));
    assert_eq!(seq, 20);
    assert_eq!(reason, Corruption::Missing { next_present: 21 });
    let keys = |o: &mut SledOptions| o.validation = OpenValidation::TailAndKeys { events: 10 };
    assert_eq!(
        expect_corrupt(open_with(&path, keys)),
        (20, Corruption::Missing { next_present: 21 })
    );
    // Before the tail window, without the key scan: open succeeds (the documented
    // trade-off) and the first read across the gap fails naming it.
    let tail = |o: &mut SledOptions| o.validation = OpenValidation::Tail { events: 10 };
    rt().block_on(async {
        let store = open_with(&path, tail).unwrap();
        assert_eq!(store.last_seq(), 42);
        match store.read_from(1, usize::MAX) {
            Err(StoreError::Corrupt {
                seq: 20,
                reason: Corruption::Missing { next_present: 21 },
            }) => {}
            other => panic!("expected the gap at 20, got {other:?}"),
        }
        let mut replay = store.subscribe(0);
        for seq in 1..=19 {
            assert_eq!(replay.next().await.unwrap().unwrap().seq, seq);
        }
        assert!(matches!(
            replay.next().await,
            Some(Err(StoreError::Corrupt { seq: 20, .. }))
        ));
    });
    // A missing first record is found by every mode.
    let (_dir, path, _) = populated(5);
    Raw::open(&path)
        .tree("log")
        .remove(1u64.to_be_bytes())
        .unwrap();
    assert_eq!(
        expect_corrupt(open_with(&path, tail)),
        (1, Corruption::Missing { next_present: 2 })
    );
}

#[test]
fn missing_tail_records_fail_open_as_truncated() {
    let (_dir, path, _) = populated(40);
    {
        let raw = Raw::open(&path);
        let log = raw.tree("log");
        log.remove(42u64.to_be_bytes()).unwrap();
        log.remove(41u64.to_be_bytes()).unwrap();
    }
    let (seq, reason) = expect_corrupt(open(&path));
    assert_eq!(seq, 41);
    assert_eq!(
        reason,
        Corruption::TruncatedTail {
            last_present: 40,
            acknowledged: 42
        }
    );
}

#[test]
fn index_and_head_damage_fail_open() {
    let (_dir, path, _) = populated(40);
    // An index entry of a record that is not the last one.
    Raw::open(&path)
        .tree("stream_index")
        .remove(Raw::index_key("s0", 7))
        .unwrap();
    let (seq, reason) = expect_corrupt(open(&path));
    assert_eq!(seq, 37);
    assert!(
        matches!(reason, Corruption::IndexMismatch(ref m) if m.contains("missing")),
        "{reason}"
    );

    let (_dir, path, _) = populated(40);
    let mut head = 3u64.to_be_bytes().to_vec();
    head.extend_from_slice(&33u64.to_be_bytes());
    Raw::open(&path)
        .tree("stream_heads")
        .insert("s3", head)
        .unwrap();
    let (seq, reason) = expect_corrupt(open(&path));
    assert_eq!(seq, 40);
    assert!(matches!(reason, Corruption::HeadMismatch(_)), "{reason}");
}

#[test]
fn unknown_format_version_is_refused() {
    let (_dir, path, _) = populated(3);
    Raw::open(&path)
        .tree("meta")
        .insert("format_version", &3u32.to_be_bytes()[..])
        .unwrap();
    assert!(matches!(
        open(&path),
        Err(StoreError::UnsupportedFormat {
            found: 3,
            supported: 2
        })
    ));
}

#[test]
fn a_store_from_before_the_write_ahead_log_is_upgraded() {
    let (_dir, path, _) = populated(3);
    Raw::open(&path)
        .tree("meta")
        .insert("format_version", &1u32.to_be_bytes()[..])
        .unwrap();
    let store = open(&path).unwrap();
    assert_eq!(store.read_from(1, 10).unwrap().len(), 3);
    drop(store);
    let format = Raw::open(&path).tree("meta").get("format_version").unwrap();
    assert_eq!(format.as_deref(), Some(&2u32.to_be_bytes()[..]));
}

#[test]
fn interrupted_last_append_is_completed_on_open() {
    // The state a crash between the record insert and its index inserts leaves behind:
    // the last record without index entries, its streams' heads at the old version.
    let (_dir, path, _) = populated(12);
    {
        let raw = Raw::open(&path);
        let index = raw.tree("stream_index");
        let heads = raw.tree("stream_heads");
        let log = raw.tree("log");
        // Rewind to just after the three-event record 11..=13, then re-add it "torn".
        let record = log.get(11u64.to_be_bytes()).unwrap().unwrap();
        log.remove(14u64.to_be_bytes()).unwrap(); // last append (seq 14, stream s2 v3)
        index.remove(Raw::index_key("s2", 3)).unwrap();
        let mut head = 2u64.to_be_bytes().to_vec();
        head.extend_from_slice(&7u64.to_be_bytes());
        heads.insert("s2", head).unwrap();
        raw.tree("meta")
            .insert("acked_seq", &10u64.to_be_bytes()[..])
            .unwrap();
        index.remove(Raw::index_key("multi-a", 2)).unwrap();
        index.remove(Raw::index_key("multi-b", 1)).unwrap();
        heads.remove("multi-b").unwrap();
        assert_eq!(log.last().unwrap().unwrap().1, record);
    }
    rt().block_on(async {
        let store = open(&path).unwrap();
        assert_eq!(store.last_seq(), 13);
        assert_eq!(store.stream_version("multi-a").unwrap(), 2);
        assert_eq!(store.stream_version("multi-b").unwrap(), 1);
        assert_eq!(store.stream_version("s2").unwrap(), 2);
        assert_eq!(store.read_stream("multi-a", 0).unwrap().len(), 2);
        assert_eq!(store.read_stream("multi-b", 0).unwrap()[0].seq, 13);
        let out = store
            .append(vec![StreamAppend::new(
                "multi-b",
                ExpectedVersion::Exact(1),
                vec![event(b"")],
            )])
            .await
            .unwrap();
        assert_eq!((out.first_seq, out.streams[0].version), (14, 2));
    });
    // The completion was persisted: a full validation agrees.
    open_with(&path, |o| o.validation = OpenValidation::Full).unwrap();
}

/// `populated(n)`, plus a copy of the store's write-ahead log taken while it was open (a
/// clean close deletes the log), in `dir/saved-wal`.
fn populated_with_log(n: u64) -> (TempDir, PathBuf, Vec<ota_server::store::RecordedEvent>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events");
    let saved = dir.path().join("saved-wal");
    let events = rt().block_on(async {
        let store = open(&path).unwrap();
        for i in 1..=n {
            let stream = format!("s{}", i % 5);
            store
                .append(one(&stream, format!("payload {i}").as_bytes()))
                .await
                .unwrap();
        }
        copy_dir(&path.join("wal"), &saved);
        let events = store.read_from(1, usize::MAX).unwrap();
        store.close().await.unwrap();
        events
    });
    assert_eq!(wal_segments(&path), 0, "a clean close deletes the log");
    (dir, path, events)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn wal_segments(store: &Path) -> usize {
    std::fs::read_dir(store.join("wal"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Leaves sled as a crash before a checkpoint can: everything after `keep` is gone from the
/// log, the index and the heads (sled recovers a prefix of its writes), while `acked_seq`
/// still says what was acknowledged.
fn rewind_sled(path: &Path, events: &[ota_server::store::RecordedEvent], keep: u64) {
    let raw = Raw::open(path);
    let (log, index, heads) = (
        raw.tree("log"),
        raw.tree("stream_index"),
        raw.tree("stream_heads"),
    );
    for e in events.iter().filter(|e| e.seq > keep) {
        log.remove(e.seq.to_be_bytes()).unwrap();
        index
            .remove(Raw::index_key(&e.stream, e.stream_version))
            .unwrap();
        match events
            .iter()
            .rfind(|k| k.stream == e.stream && k.seq <= keep)
        {
            Some(k) => {
                let mut head = k.stream_version.to_be_bytes().to_vec();
                head.extend_from_slice(&k.seq.to_be_bytes());
                heads.insert(e.stream.as_bytes(), head).unwrap();
            }
            None => {
                heads.remove(e.stream.as_bytes()).unwrap();
            }
        }
    }
}

#[test]
fn a_tail_that_sled_lost_comes_back_from_the_write_ahead_log() {
    let (dir, path, events) = populated_with_log(20);
    rewind_sled(&path, &events, 15);
    // Without the log, the acknowledged tail is missing.
    let (seq, reason) = expect_corrupt(open(&path));
    assert_eq!(seq, 16);
    assert!(
        matches!(reason, Corruption::TruncatedTail { .. }),
        "{reason}"
    );

    copy_dir(&dir.path().join("saved-wal"), &path.join("wal"));
    rt().block_on(async {
        let store = open(&path).unwrap();
        assert_eq!(store.read_from(1, usize::MAX).unwrap(), events);
        // Heads and index are back too: version checks and stream reads agree.
        assert_eq!(store.stream_version("s0").unwrap(), 4);
        assert_eq!(store.read_stream("s0", 0).unwrap().len(), 4);
        let out = store
            .append(vec![StreamAppend::new(
                "s0",
                ExpectedVersion::Exact(4),
                vec![event(b"after")],
            )])
            .await
            .unwrap();
        assert_eq!((out.first_seq, out.streams[0].version), (21, 5));
        store.close().await.unwrap();
    });
    // What was replayed was checkpointed into sled: a full validation agrees.
    let store = open_with(&path, |o| o.validation = OpenValidation::Full).unwrap();
    assert_eq!(store.last_seq(), 21);
}

#[test]
fn an_acknowledged_record_lost_from_the_write_ahead_log_fails_open() {
    let (dir, path, events) = populated_with_log(20);
    rewind_sled(&path, &events, 15);
    let saved = dir.path().join("saved-wal");
    let segment = std::fs::read_dir(&saved)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&segment).unwrap();
    // The frame of seq 17: magic, len, first_seq (big-endian), ...; damage its record.
    let at = bytes
        .windows(16)
        .position(|w| &w[..4] == b"OTAW" && w[8..16] == 17u64.to_be_bytes())
        .expect("the frame of seq 17");
    bytes[at + 28 + 10] ^= 0x5A;
    std::fs::write(&segment, bytes).unwrap();
    copy_dir(&saved, &path.join("wal"));
    // Frame 18 says 17 was synced: 17 was acknowledged and is gone.
    let (seq, reason) = expect_corrupt(open(&path));
    assert_eq!(seq, 17);
    assert_eq!(reason, Corruption::Missing { next_present: 18 });
}

#[test]
fn the_write_ahead_log_reuses_its_segments_after_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events");
    let small = |o: &mut SledOptions| o.wal_segment_bytes = 1024 * 1024;
    rt().block_on(async {
        let store = Arc::new(open_with(&path, small).unwrap());
        // 600 appends of 8 KiB, about 5 MiB of log: five segments and more without reuse.
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    for i in 0..75 {
                        let payload = vec![(t * 75 + i) as u8; 8 * 1024];
                        store.append(one(&format!("w{t}"), &payload)).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let segments = wal_segments(&path);
        assert!((1..5).contains(&segments), "{segments} log segments");
        Arc::into_inner(store).unwrap().close().await.unwrap();
    });
    assert_eq!(wal_segments(&path), 0);
    let store = open_with(&path, small).unwrap();
    assert_eq!(store.read_from(1, usize::MAX).unwrap().len(), 600);
}

#[test]
fn operator_truncation_of_a_corrupt_tail() {
    let (_dir, path, events) = populated(40);
    Raw::open(&path).flip_byte(36, 2);
    assert_eq!(expect_corrupt(open(&path)).0, 36);

    // A truncation point at or after the damage does not help: still refused.
    let (seq, _) = expect_corrupt(open_with(&path, |o| {
        o.truncate_corrupt_tail_after = Some(36)
    }));
    assert_eq!(seq, 36);
    // A point inside a multi-event append is refused.
    let err = open_with(&path, |o| o.truncate_corrupt_tail_after = Some(11)).unwrap_err();
    assert!(
        matches!(err, StoreError::Invalid(ref m) if m.contains("11..=13")),
        "{err}"
    );

    // Accepting the loss of everything after 35 opens the store.
    rt().block_on(async {
        let store = open_with(&path, |o| o.truncate_corrupt_tail_after = Some(35)).unwrap();
        assert_eq!(store.last_seq(), 35);
        assert_eq!(store.read_from(0, usize::MAX).unwrap(), events[..35]);
        // Heads went back: s1 had versions at seqs 1, 6, 18, ..., 38; now it ends at 33.
        assert_eq!(store.stream_version("s1").unwrap(), 6);
        assert_eq!(store.read_stream("s1", 0).unwrap().last().unwrap().seq, 33);
        let out = store
            .append(vec![StreamAppend::new(
                "s1",
                ExpectedVersion::Exact(6),
                vec![event(b"new")],
            )])
            .await
            .unwrap();
        assert_eq!(out.first_seq, 36);
        store.close().await.unwrap();
    });
    // The repaired store passes full validation, and the option on an intact log is a no-op.
    open_with(&path, |o| o.validation = OpenValidation::Full).unwrap();
    let store = open_with(&path, |o| o.truncate_corrupt_tail_after = Some(3)).unwrap();
    assert_eq!(store.last_seq(), 36);
}

#[test]
fn operator_truncation_of_a_truncated_tail() {
    let (_dir, path, _) = populated(30);
    Raw::open(&path)
        .tree("log")
        .remove(32u64.to_be_bytes())
        .unwrap();
    assert_eq!(expect_corrupt(open(&path)).0, 32);
    let store = open_with(&path, |o| o.truncate_corrupt_tail_after = Some(31)).unwrap();
    assert_eq!(store.last_seq(), 31);
    drop(store);
    open_with(&path, |o| o.validation = OpenValidation::Full).unwrap();
}

// ---- crash test -------------------------------------------------------------------------

const CHILD_ENV: &str = "OTA_STORE_CRASH_CHILD_DIR";
const CHILD_TEST: &str = "crash_child";
const WRITERS: usize = 6;

fn crash_payload(stream: &str, version: u64) -> Vec<u8> {
    format!("{stream}@{version} ").repeat(6).into_bytes()
}

/// The child role of `acknowledged_appends_survive_sigkill`. It does nothing unless the
/// parent re-executes this binary with `CHILD_ENV` set. Then it appends from several
/// tasks as fast as it can and prints `ACK <seq> <stream> <version>` for every event of
/// every acknowledged append, until it is killed.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    rt().block_on(async move {
        let store = Arc::new(open(Path::new(&dir)).expect("child opens the store"));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    // Odd writers append two streams in one batch, 2 + 1 events.
                    let streams: Vec<String> = if w % 2 == 0 {
                        vec![format!("crash-{w}")]
                    } else {
                        vec![format!("crash-{w}-a"), format!("crash-{w}-b")]
                    };
                    let per_stream = |i: usize| if w % 2 == 1 && i == 0 { 2 } else { 1 };
                    let mut versions: Vec<u64> = streams
                        .iter()
                        .map(|s| store.stream_version(s).unwrap())
                        .collect();
                    // Until the parent kills this process, in practice.
                    for _ in 0..u32::MAX {
                        let batch = streams
                            .iter()
                            .enumerate()
                            .map(|(i, s)| {
                                let events = (1..=per_stream(i) as u64)
                                    .map(|k| event(&crash_payload(s, versions[i] + k)))
                                    .collect();
                                StreamAppend::new(s, ExpectedVersion::Exact(versions[i]), events)
                            })
                            .collect();
                        let out = store.append(batch).await.expect("child append");
                        let mut lines = String::new();
                        let mut seq = out.first_seq;
                        for (i, s) in streams.iter().enumerate() {
                            for _ in 0..per_stream(i) {
                                versions[i] += 1;
                                lines.push_str(&format!("ACK {seq} {s} {}\n", versions[i]));
                                seq += 1;
                            }
                        }
                        assert_eq!(seq - 1, out.last_seq);
                        // Straight to fd 1, bypassing the test harness's capture.
                        let mut stdout = std::io::stdout().lock();
                        stdout.write_all(lines.as_bytes()).unwrap();
                        stdout.flush().unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events");
    let mut acked: HashMap<u64, (String, u64)> = HashMap::new();
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            // Only complete lines count: the kill may cut the last one short.
            while stdout.read_line(&mut line).is_ok_and(|n| n > 0) {
                if line.starts_with("ACK ")
                    && line.ends_with('\n')
                    && tx.send(line.clone()).is_err()
                {
                    break;
                }
                line.clear();
            }
        });
        let mut parse = |line: String| {
            let mut parts = line.split_whitespace().skip(1);
            let seq: u64 = parts.next().unwrap().parse().unwrap();
            let stream = parts.next().unwrap().to_owned();
            let version: u64 = parts.next().unwrap().parse().unwrap();
            assert!(
                acked.insert(seq, (stream, version)).is_none(),
                "seq {seq} acknowledged twice"
            );
        };
        for _ in 0..300 {
            // Safety net only: the child acknowledges thousands of appends per second.
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("child stopped acknowledging");
            parse(line);
        }
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        child.wait().unwrap();
        // Acknowledgements printed before the kill are promises too.
        reader.join().unwrap();
        for line in rx.try_iter() {
            parse(line);
        }

        let store = open(&path).unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        let last = store.last_seq();
        let max_acked = *acked.keys().max().unwrap();
        eprintln!(
            "round {round}: {} acknowledged so far, highest {max_acked}, log ends at {last}",
            acked.len()
        );
        assert!(
            last >= max_acked,
            "round {round}: log ends at {last}, acknowledged {max_acked}"
        );
        let log = store.read_from(1, usize::MAX).unwrap();
        assert_eq!(log.len() as u64, last, "round {round}: gapless");
        for (i, e) in log.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1);
            assert_eq!(
                e.payload,
                crash_payload(&e.stream, e.stream_version),
                "seq {}",
                e.seq
            );
        }
        for (seq, (stream, version)) in &acked {
            let e = &log[(*seq - 1) as usize];
            assert_eq!(
                (&e.stream, e.stream_version),
                (stream, *version),
                "acknowledged seq {seq}"
            );
        }
        // Every stream is gapless, and the two streams of an odd writer's batches moved
        // together (2 + 1 events per append): appends are all or nothing across a crash.
        for w in 0..WRITERS {
            if w % 2 == 0 {
                let s = format!("crash-{w}");
                let versions: Vec<u64> = store
                    .read_stream(&s, 0)
                    .unwrap()
                    .iter()
                    .map(|e| e.stream_version)
                    .collect();
                assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());
            } else {
                let a = store.stream_version(&format!("crash-{w}-a")).unwrap();
                let b = store.stream_version(&format!("crash-{w}-b")).unwrap();
                assert_eq!(a, 2 * b, "round {round}: writer {w} torn across streams");
                assert_eq!(
                    store.read_stream(&format!("crash-{w}-a"), 0).unwrap().len() as u64,
                    a
                );
            }
        }
        drop(store);
    }
    assert!(acked.len() >= 900);
}
