#![cfg(feature = "conformance")]
//! Tier 2: the PostgreSQL event store on a real, throwaway PostgreSQL cluster (Debian's
//! `initdb` and `postgres`, started by `ota_testkit::postgres` in a temporary directory, unix
//! socket only; the test fails — never skips — when PostgreSQL is missing).
//!
//! Every case of the store contract (`ota_testkit::store_contract`, also run against the
//! memory store and sled in tier 1) runs against its own fresh database. Then what only a
//! shared database has: two stores on one database see each other's appends through their
//! subscriptions (LISTEN/NOTIFY); a second writer racing the first never makes a gap or a
//! duplicate seq; the log survives a reopen; a changed row is reported as corrupt; a newer
//! schema is refused.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ota_server::store::StreamAppend;
use ota_server::store::{
    Corruption, EventStore, ExpectedVersion, PostgresEventStore, PostgresOptions, RecordedEvent,
    StoreError,
};
use ota_testkit::postgres::{Cluster, shared_cluster};
use ota_testkit::store_contract::{collect, event, next_event, one};

/// A fresh database on the shared cluster and a store on it. The store is dropped before the
/// cluster (field order).
struct Fixture {
    store: Arc<dyn EventStore>,
    db: String,
    cluster: Arc<Cluster>,
}

impl Fixture {
    fn new() -> Self {
        let cluster = shared_cluster();
        let db = cluster.fresh_database("contract").expect("create database");
        let store = open(&cluster, &db);
        Fixture {
            store: Arc::new(store),
            db,
            cluster,
        }
    }

    /// Another store on the same database.
    fn second(&self) -> PostgresEventStore {
        open(&self.cluster, &self.db)
    }
}

fn open(cluster: &Cluster, db: &str) -> PostgresEventStore {
    PostgresEventStore::open(&cluster.url(db), PostgresOptions::default())
        .unwrap_or_else(|e| panic!("open the PostgreSQL store on {db}: {e}"))
}

mod contract {
    ota_testkit::store_contract_tests!(super::Fixture::new());
}

/// An append in one process reaches a subscription of another store on the same database
/// (through NOTIFY), in order, and each store's reads see the other's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_see_each_others_appends() {
    let f = Fixture::new();
    let a = &f.store;
    let b = f.second();
    let mut from_b = b.subscribe(1);
    let mut from_a = a.subscribe(1);
    for i in 0..20u32 {
        let store: &dyn EventStore = if i % 2 == 0 { a.as_ref() } else { &b };
        // Each store's writer learns the other's seqs only through a collision or the
        // notification; retry like a caller would.
        loop {
            match store
                .append(one(
                    &format!("s{i}"),
                    ExpectedVersion::NoStream,
                    &i.to_be_bytes(),
                ))
                .await
            {
                Ok(_) => break,
                Err(StoreError::ConcurrentWriter(_)) => continue,
                Err(other) => panic!("append {i}: {other}"),
            }
        }
    }
    let seen_by_b = collect(&mut from_b, 20).await;
    let seen_by_a = collect(&mut from_a, 20).await;
    assert_eq!(seen_by_a, seen_by_b);
    let seqs: Vec<u64> = seen_by_a.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    let streams: Vec<String> = seen_by_a.iter().map(|e| e.stream.clone()).collect();
    assert_eq!(
        streams,
        (0..20).map(|i| format!("s{i}")).collect::<Vec<_>>()
    );
    assert_eq!(b.read_from(1, 100).unwrap(), seen_by_a);
    assert_eq!(a.last_seq(), 20);
    assert_eq!(b.last_seq(), 20);
    assert_eq!(b.stream_version("s0").unwrap(), 1);
}

/// Two writers on one database append concurrently: every append either succeeds or fails
/// with `ConcurrentWriter` (nothing written), and the log is exactly the successful appends,
/// seqs 1..=N without a gap or a duplicate, each stream's versions gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_writer_cannot_make_a_gap_or_a_duplicate() {
    const PER_TASK: u64 = 60;
    let f = Fixture::new();
    let stores: [Arc<dyn EventStore>; 2] = [Arc::clone(&f.store), Arc::new(f.second())];
    let tasks: Vec<_> = (0..8usize)
        .map(|t| {
            let store = Arc::clone(&stores[t % 2]);
            tokio::spawn(async move {
                let mut written = Vec::new();
                let mut collisions = 0u32;
                let stream = format!("t{t}");
                for _ in 0..PER_TASK {
                    let batch = vec![StreamAppend::new(
                        &stream,
                        ExpectedVersion::Any,
                        vec![event("E", stream.as_bytes()), event("E", b"second")],
                    )];
                    match store.append(batch).await {
                        Ok(out) => written.push((out.first_seq, out.last_seq)),
                        Err(StoreError::ConcurrentWriter(_)) => collisions += 1,
                        Err(other) => panic!("unexpected error {other}"),
                    }
                }
                (stream, written, collisions)
            })
        })
        .collect();
    let mut claimed = BTreeMap::new();
    let mut collisions = 0;
    for task in tasks {
        let (stream, written, c) = task.await.unwrap();
        collisions += c;
        for (first, last) in written {
            assert_eq!(last, first + 1, "an append of two events got two seqs");
            for seq in first..=last {
                assert!(
                    claimed.insert(seq, stream.clone()).is_none(),
                    "seq {seq} acknowledged twice"
                );
            }
        }
    }
    let n = claimed.len() as u64;
    assert!(n > 0);
    // Let both stores' marks reach the end (the other's commits arrive by notification).
    for store in &stores {
        wait_for_seq(store.as_ref(), n).await;
    }
    for store in &stores {
        let log = store.read_from(1, 100_000).unwrap();
        let seqs: Vec<u64> = log.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=n).collect::<Vec<_>>(),
            "the log has a gap or a duplicate"
        );
        for e in &log {
            assert_eq!(
                claimed.get(&e.seq),
                Some(&e.stream),
                "seq {} is not its append's",
                e.seq
            );
        }
        for t in 0..8 {
            let versions: Vec<u64> = store
                .read_stream(&format!("t{t}"), 1)
                .unwrap()
                .iter()
                .map(|e| e.stream_version)
                .collect();
            assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());
        }
    }
    println!("{n} events written, {collisions} appends refused as concurrent");
}

async fn wait_for_seq(store: &dyn EventStore, seq: u64) {
    let mut sub = store.subscribe(seq);
    let event = tokio::time::timeout(Duration::from_secs(60), sub.next())
        .await
        .expect("the store never learnt of the other's appends")
        .expect("subscription ended")
        .expect("subscription failed");
    assert_eq!(event.seq, seq);
}

/// The log survives a reopen: seqs, versions and every field are read back as written, and
/// appends go on from the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_survives_a_reopen() {
    let f = Fixture::new();
    for i in 0..5u8 {
        f.store
            .append(one("a", ExpectedVersion::Exact(u64::from(i)), &[i; 3]))
            .await
            .unwrap();
    }
    let before = f.store.read_from(1, 10).unwrap();
    let again = f.second();
    assert_eq!(again.last_seq(), 5);
    assert_eq!(again.read_from(1, 10).unwrap(), before);
    let out = again
        .append(one("a", ExpectedVersion::Exact(5), b"six"))
        .await
        .unwrap();
    assert_eq!((out.first_seq, out.streams[0].version), (6, 6));
}

/// A row changed behind the store's back is reported as corrupt by reads, subscriptions and
/// the next open (the tail check).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_row_is_reported_as_corrupt() {
    let f = Fixture::new();
    for i in 0..3u8 {
        f.store
            .append(one("a", ExpectedVersion::Any, &[i]))
            .await
            .unwrap();
    }
    f.cluster
        .psql(
            &f.db,
            "update ota_events set payload = '\\x2a' where seq = 2",
        )
        .unwrap();
    let is_checksum_error = |r: Result<Vec<RecordedEvent>, StoreError>| {
        matches!(
            r,
            Err(StoreError::Corrupt {
                seq: 2,
                reason: Corruption::ChecksumMismatch { .. }
            })
        )
    };
    assert!(is_checksum_error(f.store.read_from(1, 10)));
    assert!(is_checksum_error(f.store.read_stream("a", 1)));
    let mut sub = f.store.subscribe(1);
    assert_eq!(next_event(&mut sub).await.seq, 1);
    assert!(matches!(
        sub.next().await,
        Some(Err(StoreError::Corrupt { seq: 2, .. }))
    ));
    let reopened = PostgresEventStore::open(&f.cluster.url(&f.db), PostgresOptions::default());
    assert!(matches!(reopened, Err(StoreError::Corrupt { seq: 2, .. })));
    // A deleted row is a gap.
    f.cluster
        .psql(&f.db, "delete from ota_events where seq = 2")
        .unwrap();
    assert!(matches!(
        f.store.read_from(1, 10),
        Err(StoreError::Corrupt {
            seq: 2,
            reason: Corruption::Missing { next_present: 3 }
        })
    ));
}

/// A database whose schema is newer than this build is refused at open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused() {
    let f = Fixture::new();
    f.cluster
        .psql(
            &f.db,
            "update ota_store_meta set value = 2 where key = 'schema_version'",
        )
        .unwrap();
    let err = PostgresEventStore::open(&f.cluster.url(&f.db), PostgresOptions::default())
        .expect_err("a newer schema must be refused");
    assert!(
        matches!(
            err,
            StoreError::UnsupportedFormat {
                found: 2,
                supported: 1
            }
        ),
        "{err}"
    );
}

/// Dropping the store ends its subscriptions with `Closed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_end_when_the_store_is_dropped() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("dropped").unwrap();
    let store = open(&cluster, &db);
    store
        .append(one("a", ExpectedVersion::Any, b""))
        .await
        .unwrap();
    let mut sub = store.subscribe(0);
    assert_eq!(next_event(&mut sub).await.seq, 1);
    tokio::task::spawn_blocking(move || drop(store))
        .await
        .unwrap();
    assert!(matches!(sub.next().await, Some(Err(StoreError::Closed))));
    assert!(sub.next().await.is_none());
}

/// An unreachable database fails open with an error that names it, within the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_fails_open() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "host={} port=5432 user=nobody dbname=none",
        dir.path().display()
    );
    let err = PostgresEventStore::open(&url, PostgresOptions::default())
        .expect_err("nothing listens there");
    assert!(err.to_string().contains("connecting the writer"), "{err}");
}
