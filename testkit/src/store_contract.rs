//! The `EventStore` contract as test cases any store runs: seqs and versions, optimistic
//! concurrency, atomic multi-stream appends, guards, paging, and subscriptions (catch-up, live,
//! racing writers, slow readers). `server/tests/store_contract.rs` runs every case against the
//! memory and sled stores, the conformance tier (`conformance/tests/postgres_store.rs`) against
//! PostgreSQL; [`store_contract_tests!`](crate::store_contract_tests) writes one test per case
//! so no store can miss one.
//!
//! Each case takes a fresh, empty store and panics on the first broken promise. What it does
//! not cover: durability, recovery and corruption (store-specific tests).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ota_server::store::{
    EventStore, ExpectedVersion, NewEvent, RecordedEvent, StoreError, StreamAppend, Subscription,
};
use tokio::time::timeout;

/// Safety net for waits on real conditions; never reached when the code is correct.
const PATIENCE: Duration = Duration::from_secs(60);

/// An event of type `event_type` with `payload`, by `tester`, at a fixed time.
pub fn event(event_type: &str, payload: &[u8]) -> NewEvent {
    NewEvent {
        event_type: event_type.into(),
        schema_version: 1,
        payload: payload.to_vec(),
        actor: "tester".into(),
        recorded_at_ms: 1_700_000_000_000,
    }
}

/// A batch of one event on one stream.
pub fn one(stream: &str, expected: ExpectedVersion, payload: &[u8]) -> Vec<StreamAppend> {
    vec![StreamAppend::new(
        stream,
        expected,
        vec![event("Happened", payload)],
    )]
}

/// The next event of a subscription; panics if it stalls, ends or fails.
pub async fn next_event(sub: &mut Subscription) -> RecordedEvent {
    timeout(PATIENCE, sub.next())
        .await
        .expect("subscription stalled")
        .expect("subscription ended")
        .expect("subscription failed")
}

/// Asserts that `result` is a conflict on `stream`, which is at version `actual`.
pub fn assert_conflict(
    result: Result<impl std::fmt::Debug, StoreError>,
    stream: &str,
    actual: u64,
) {
    match result {
        Err(StoreError::Conflict {
            stream: s,
            actual: a,
            ..
        }) => {
            assert_eq!((s.as_str(), a), (stream, actual));
        }
        other => panic!("expected a conflict on {stream} at {actual}, got {other:?}"),
    }
}

pub async fn append_and_read_back(s: &Arc<dyn EventStore>) {
    assert_eq!(s.last_seq(), 0);
    assert_eq!(s.stream_version("a").unwrap(), 0);
    assert!(s.read_from(0, 10).unwrap().is_empty());

    let out = s
        .append(one("a", ExpectedVersion::NoStream, b"a1"))
        .await
        .unwrap();
    assert_eq!((out.first_seq, out.last_seq), (1, 1));
    assert_eq!(out.streams[0].version, 1);
    let out = s
        .append(vec![StreamAppend::new(
            "b",
            ExpectedVersion::Any,
            vec![event("X", b"b1"), event("Y", b"b2")],
        )])
        .await
        .unwrap();
    assert_eq!((out.first_seq, out.last_seq), (2, 3));
    assert_eq!(out.streams[0].version, 2);
    s.append(one("a", ExpectedVersion::Exact(1), b"a2"))
        .await
        .unwrap();

    assert_eq!(s.last_seq(), 4);
    assert_eq!(s.stream_version("a").unwrap(), 2);
    assert_eq!(s.stream_version("b").unwrap(), 2);

    let all = s.read_from(0, 100).unwrap();
    let summary: Vec<(u64, &str, u64, &[u8])> = all
        .iter()
        .map(|e| {
            (
                e.seq,
                e.stream.as_str(),
                e.stream_version,
                e.payload.as_slice(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, "a", 1, &b"a1"[..]),
            (2, "b", 1, &b"b1"[..]),
            (3, "b", 2, &b"b2"[..]),
            (4, "a", 2, &b"a2"[..]),
        ]
    );
    assert_eq!(all[1].event_type, "X");
    assert_eq!(all[1].actor, "tester");
    assert_eq!(all[1].schema_version, 1);
    assert_eq!(all[1].recorded_at_ms, 1_700_000_000_000);

    // Paging, also starting inside a multi-event append.
    assert_eq!(s.read_from(1, 1).unwrap()[0].seq, 1);
    let page: Vec<u64> = s.read_from(3, 2).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(page, vec![3, 4]);
    assert!(s.read_from(5, 10).unwrap().is_empty());
    assert!(s.read_from(1, 0).unwrap().is_empty());

    let a: Vec<u64> = s
        .read_stream("a", 0)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(a, vec![1, 4]);
    let b2 = s.read_stream("b", 2).unwrap();
    assert_eq!(b2.len(), 1);
    assert_eq!(
        (b2[0].seq, b2[0].stream_version, b2[0].payload.as_slice()),
        (3, 2, &b"b2"[..])
    );
    assert!(s.read_stream("b", 3).unwrap().is_empty());
    assert!(s.read_stream("nope", 0).unwrap().is_empty());

    let stats = s.stats();
    assert_eq!(stats.events, 4);
    assert_eq!(stats.pending_events, 0);
    assert_eq!(stats.append_latency.count, 3);
}

pub async fn expected_version_conflicts(s: &Arc<dyn EventStore>) {
    assert_conflict(
        s.append(one("a", ExpectedVersion::Exact(1), b"")).await,
        "a",
        0,
    );
    s.append(one("a", ExpectedVersion::Exact(0), b""))
        .await
        .unwrap();
    assert_conflict(
        s.append(one("a", ExpectedVersion::NoStream, b"")).await,
        "a",
        1,
    );
    assert_conflict(
        s.append(one("a", ExpectedVersion::Exact(0), b"")).await,
        "a",
        1,
    );
    assert_conflict(
        s.append(one("a", ExpectedVersion::Exact(2), b"")).await,
        "a",
        1,
    );
    s.append(one("a", ExpectedVersion::Exact(1), b""))
        .await
        .unwrap();
    s.append(one("a", ExpectedVersion::Any, b"")).await.unwrap();
    s.append(one("fresh", ExpectedVersion::Any, b""))
        .await
        .unwrap();
    // Failed appends consumed no seq.
    assert_eq!(s.last_seq(), 4);
    assert_eq!(s.stream_version("a").unwrap(), 3);
    let seqs: Vec<u64> = s.read_from(0, 10).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    let err = s
        .append(one("a", ExpectedVersion::Exact(1), b""))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "conflict on stream `a`: expected version 1, but it is at version 3"
    );
}

pub async fn racing_writers_on_one_stream(s: &Arc<dyn EventStore>) {
    for round in 0..20u64 {
        let tasks: Vec<_> = (0..2)
            .map(|w| {
                let store = Arc::clone(s);
                tokio::spawn(async move {
                    let payload = format!("round {round} writer {w}");
                    store
                        .append(one(
                            "contested",
                            ExpectedVersion::Exact(round),
                            payload.as_bytes(),
                        ))
                        .await
                })
            })
            .collect();
        let mut wins = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(out) => {
                    wins += 1;
                    assert_eq!(out.streams[0].version, round + 1);
                }
                Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, round + 1),
                Err(other) => panic!("unexpected error {other}"),
            }
        }
        assert_eq!(wins, 1, "round {round}: exactly one writer must win");
    }
    assert_eq!(s.stream_version("contested").unwrap(), 20);
    let versions: Vec<u64> = s
        .read_stream("contested", 1)
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, (1..=20).collect::<Vec<_>>());
}

pub async fn multi_stream_appends_are_atomic(s: &Arc<dyn EventStore>) {
    s.append(one("x", ExpectedVersion::NoStream, b"x1"))
        .await
        .unwrap();
    let batch = |y_expected| {
        vec![
            StreamAppend::new(
                "x",
                ExpectedVersion::Exact(1),
                vec![event("E", b"x2"), event("E", b"x3")],
            ),
            StreamAppend::new("y", y_expected, vec![event("E", b"y1")]),
            StreamAppend::new("z", ExpectedVersion::Any, vec![event("E", b"z1")]),
        ]
    };
    // The second stream's check fails: nothing of the batch is written.
    assert_conflict(s.append(batch(ExpectedVersion::Exact(4))).await, "y", 0);
    assert_eq!(s.last_seq(), 1);
    assert_eq!(s.stream_version("x").unwrap(), 1);
    assert_eq!(s.stream_version("z").unwrap(), 0);
    assert_eq!(s.read_from(0, 10).unwrap().len(), 1);

    let out = s.append(batch(ExpectedVersion::NoStream)).await.unwrap();
    assert_eq!((out.first_seq, out.last_seq), (2, 5));
    let versions: Vec<(&str, u64)> = out
        .streams
        .iter()
        .map(|v| (v.stream.as_str(), v.version))
        .collect();
    assert_eq!(versions, vec![("x", 3), ("y", 1), ("z", 1)]);
    let events: Vec<(u64, String, u64)> = s
        .read_from(2, 10)
        .unwrap()
        .into_iter()
        .map(|e| (e.seq, e.stream, e.stream_version))
        .collect();
    assert_eq!(
        events,
        vec![
            (2, "x".into(), 2),
            (3, "x".into(), 3),
            (4, "y".into(), 1),
            (5, "z".into(), 1)
        ]
    );
    assert_eq!(s.read_stream("x", 2).unwrap().len(), 2);
}

pub async fn malformed_appends_are_rejected(s: &Arc<dyn EventStore>) {
    let invalid = |r: Result<_, StoreError>| matches!(r, Err(StoreError::Invalid(_)));
    assert!(invalid(s.append(vec![]).await));
    assert!(invalid(
        s.append(vec![StreamAppend::new("a", ExpectedVersion::Any, vec![])])
            .await
    ));
    assert!(invalid(s.append(one("", ExpectedVersion::Any, b"")).await));
    let mut twice = one("a", ExpectedVersion::Any, b"");
    twice.extend(one("a", ExpectedVersion::Any, b""));
    assert!(invalid(s.append(twice).await));
    let mut untyped = one("a", ExpectedVersion::Any, b"");
    untyped[0].events[0].event_type.clear();
    assert!(invalid(s.append(untyped).await));
    assert_eq!(s.last_seq(), 0);
}

/// A stream with no events and an expected version is a guard: it writes nothing, and the
/// append goes through only while the guarded stream is at the expected version.
pub async fn guards_check_without_writing(s: &Arc<dyn EventStore>) {
    s.append(one("rollout", ExpectedVersion::Any, b"r1"))
        .await
        .unwrap();
    let guarded = |expected| {
        let mut batch = vec![StreamAppend::new("rollout", expected, vec![])];
        batch.extend(one("task", ExpectedVersion::Any, b"t"));
        batch
    };
    let ok = s.append(guarded(ExpectedVersion::Exact(1))).await.unwrap();
    assert_eq!((ok.first_seq, ok.last_seq), (2, 2));
    assert_eq!(
        s.stream_version("rollout").unwrap(),
        1,
        "a guard writes nothing"
    );
    assert_eq!(s.read_stream("rollout", 1).unwrap().len(), 1);
    // The guarded stream moved on: the whole append is refused, nothing of it is written.
    s.append(one("rollout", ExpectedVersion::Any, b"r2"))
        .await
        .unwrap();
    assert_conflict(
        s.append(guarded(ExpectedVersion::Exact(1))).await,
        "rollout",
        2,
    );
    assert_eq!(s.stream_version("task").unwrap(), 1);
    assert_eq!(s.last_seq(), 3);
    // A batch of guards only, or a guard without an expected version, is malformed.
    let invalid = |r: Result<_, StoreError>| matches!(r, Err(StoreError::Invalid(_)));
    assert!(invalid(
        s.append(vec![StreamAppend::new(
            "rollout",
            ExpectedVersion::Exact(2),
            vec![]
        )])
        .await
    ));
    let mut unchecked = vec![StreamAppend::new("rollout", ExpectedVersion::Any, vec![])];
    unchecked.extend(one("task", ExpectedVersion::Any, b"t"));
    assert!(invalid(s.append(unchecked).await));
    // A guard on a stream that must not exist yet.
    let mut fresh = vec![StreamAppend::new(
        "never",
        ExpectedVersion::NoStream,
        vec![],
    )];
    fresh.extend(one("task", ExpectedVersion::Any, b"t"));
    s.append(fresh).await.unwrap();
    assert_eq!(s.stream_version("never").unwrap(), 0);
    // Subscribers see only the written events.
    let seen: Vec<u64> = s.read_from(1, 100).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seen, [1, 2, 3, 4]);
}

/// The next `n` events of a subscription.
pub async fn collect(sub: &mut Subscription, n: usize) -> Vec<RecordedEvent> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(next_event(sub).await);
    }
    out
}

pub async fn subscribe_from_start_middle_and_end(s: &Arc<dyn EventStore>) {
    for i in 0..10u32 {
        s.append(one(
            &format!("s{}", i % 3),
            ExpectedVersion::Any,
            &i.to_be_bytes(),
        ))
        .await
        .unwrap();
    }
    let mut from_zero = s.subscribe(0);
    let mut from_one = s.subscribe(1);
    let mut from_middle = s.subscribe(6);
    let mut from_end = s.subscribe(s.last_seq() + 1);
    let mut beyond = s.subscribe(13);

    for i in 10..15u32 {
        s.append(one("live", ExpectedVersion::Any, &i.to_be_bytes()))
            .await
            .unwrap();
    }
    let expected = s.read_from(0, 100).unwrap();
    assert_eq!(expected.len(), 15);
    assert_eq!(collect(&mut from_zero, 15).await, expected);
    assert_eq!(collect(&mut from_one, 15).await, expected);
    assert_eq!(collect(&mut from_middle, 10).await, expected[5..]);
    assert_eq!(collect(&mut from_end, 5).await, expected[10..]);
    assert_eq!(collect(&mut beyond, 3).await, expected[12..]);

    // Nothing more is delivered until something is appended.
    {
        let next = std::pin::pin!(from_zero.next());
        assert!(futures::poll!(next).is_pending());
    }
    s.append(one("late", ExpectedVersion::Any, b""))
        .await
        .unwrap();
    assert_eq!(next_event(&mut from_zero).await.seq, 16);
    assert_eq!(next_event(&mut from_end).await.seq, 16);
}

/// 8 writers race; subscribers started before, during and after the writes each see
/// exactly seqs 1..=N, in order, identical to the log.
pub async fn subscribers_see_every_event_while_writers_race(s: &Arc<dyn EventStore>) {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 250;
    // Every tenth append of a writer also writes one event to a side stream.
    const TOTAL: usize = WRITERS * (PER_WRITER + PER_WRITER / 10);

    let spawn_subscriber = |sub: Subscription, from: u64| {
        tokio::spawn(async move {
            let mut sub = sub;
            let mut seen = Vec::new();
            while seen.len() < TOTAL + 1 - from as usize {
                let ev = timeout(PATIENCE, sub.next())
                    .await
                    .expect("stalled")
                    .unwrap()
                    .unwrap();
                seen.push(ev);
            }
            seen
        })
    };
    let early = spawn_subscriber(s.subscribe(0), 1);

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(s);
            tokio::spawn(async move {
                let stream = format!("writer-{w}");
                for i in 0..PER_WRITER as u64 {
                    let payload = format!("{w}:{i}");
                    // Mix in two-stream appends so records of several events race too.
                    let batch = if i % 10 == 9 {
                        vec![
                            StreamAppend::new(
                                &stream,
                                ExpectedVersion::Exact(i),
                                vec![event("E", payload.as_bytes())],
                            ),
                            StreamAppend::new(
                                format!("{stream}-side"),
                                ExpectedVersion::Any,
                                vec![event("Side", payload.as_bytes())],
                            ),
                        ]
                    } else {
                        one(&stream, ExpectedVersion::Exact(i), payload.as_bytes())
                    };
                    store.append(batch).await.unwrap();
                }
            })
        })
        .collect();

    // Subscribe mid-way: wait for real progress, then start from the middle.
    let middle = {
        let mut probe = s.subscribe(0);
        collect(&mut probe, TOTAL / 3).await.last().unwrap().seq
    };
    let mid = spawn_subscriber(s.subscribe(middle), middle);
    for w in writers {
        w.await.unwrap();
    }
    let late = spawn_subscriber(s.subscribe(1), 1);

    let log = s.read_from(0, TOTAL + 10).unwrap();
    assert_eq!(log.len(), TOTAL);
    assert!(log.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1));
    let early = early.await.unwrap();
    let mid = mid.await.unwrap();
    let late = late.await.unwrap();
    assert_eq!(early, log);
    assert_eq!(late, log);
    assert_eq!(mid, log[(middle - 1) as usize..]);
    // Every writer's stream is complete and in order.
    for w in 0..WRITERS {
        let versions: Vec<u64> = s
            .read_stream(&format!("writer-{w}"), 0)
            .unwrap()
            .iter()
            .map(|e| e.stream_version)
            .collect();
        assert_eq!(versions, (1..=PER_WRITER as u64).collect::<Vec<_>>());
    }
}

/// A subscriber that stops reading does not hold appenders back, and still gets every
/// event, in order, when it resumes.
pub async fn slow_subscriber_neither_blocks_nor_loses(s: &Arc<dyn EventStore>) {
    const N: u64 = 3000;
    let mut slow = s.subscribe(0);
    s.append(one("s", ExpectedVersion::Any, b"first"))
        .await
        .unwrap();
    assert_eq!(next_event(&mut slow).await.seq, 1);

    // The subscriber is not polled while many appends complete.
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let store = Arc::clone(s);
            tokio::spawn(async move {
                for i in 0..(N - 1) / 4 + 1 {
                    store
                        .append(one(
                            &format!("w{w}"),
                            ExpectedVersion::Any,
                            &i.to_be_bytes(),
                        ))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        timeout(PATIENCE, w)
            .await
            .expect("appenders blocked by an idle subscriber")
            .unwrap();
    }
    let last = s.last_seq();
    assert!(last > N);

    // It now reads slowly, yielding between events, while more events arrive.
    let writer = {
        let store = Arc::clone(s);
        tokio::spawn(async move {
            for i in 0..200u32 {
                store
                    .append(one("tail", ExpectedVersion::Any, &i.to_be_bytes()))
                    .await
                    .unwrap();
            }
        })
    };
    let mut seqs = Vec::new();
    let target = last + 200;
    while seqs.len() < (target - 1) as usize {
        let ev = next_event(&mut slow).await;
        seqs.push(ev.seq);
        if ev.seq % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    writer.await.unwrap();
    assert_eq!(seqs, (2..=target).collect::<Vec<_>>());
}

pub async fn subscription_as_stream(s: &Arc<dyn EventStore>) {
    for i in 0..5u8 {
        s.append(one("a", ExpectedVersion::Any, &[i]))
            .await
            .unwrap();
    }
    let seqs: Vec<u64> = s
        .subscribe(2)
        .take(4)
        .map(|e| e.unwrap().seq)
        .collect()
        .await;
    assert_eq!(seqs, vec![2, 3, 4, 5]);
}

pub async fn concurrent_distinct_streams_get_distinct_seqs(s: &Arc<dyn EventStore>) {
    let tasks: Vec<_> = (0..64)
        .map(|w| {
            let store = Arc::clone(s);
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for _ in 0..10 {
                    seqs.push(
                        store
                            .append(one(&format!("d{w}"), ExpectedVersion::Any, b""))
                            .await
                            .unwrap()
                            .first_seq,
                    );
                }
                seqs
            })
        })
        .collect();
    let mut all = HashSet::new();
    for t in tasks {
        for seq in t.await.unwrap() {
            assert!(all.insert(seq), "seq {seq} handed out twice");
        }
    }
    assert_eq!(all.len(), 640);
    assert_eq!(s.last_seq(), 640);
    s.flush().await.unwrap();
    assert_eq!(s.stats().pending_events, 0);
}

/// One `#[tokio::test]` per contract case in the calling module, each on a fresh store from
/// `$fixture` (an expression giving a value with a `store: Arc<dyn EventStore>` field, kept
/// alive for the whole case; it is dropped after the store's last use).
#[macro_export]
macro_rules! store_contract_tests {
    ($fixture:expr) => {
        $crate::store_contract_tests!(@cases $fixture; append_and_read_back, expected_version_conflicts, racing_writers_on_one_stream, multi_stream_appends_are_atomic, malformed_appends_are_rejected, guards_check_without_writing, subscribe_from_start_middle_and_end, subscribers_see_every_event_while_writers_race, slow_subscriber_neither_blocks_nor_loses, subscription_as_stream, concurrent_distinct_streams_get_distinct_seqs);
    };
    (@cases $fixture:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let fixture = $fixture;
                $crate::store_contract::$name(&fixture.store).await;
            }
        )*
    };
}
