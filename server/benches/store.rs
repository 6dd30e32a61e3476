//! Event store benchmark: durable append throughput under concurrency, open/validate
//! and replay of a large log, peak memory.
//!
//! `cargo bench -p ota-server --bench store [-- OPTIONS]`
//!
//! Options (also as environment variables, e.g. `STORE_BENCH_WRITERS=1,16`):
//! `--writers 1,16,256`     concurrent writers per append run (`none`: skip them)
//! `--seconds 3`            duration of each append run
//! `--events 1000000`       size of the log replayed
//! `--fill-writers 256`     concurrent writers filling it (fewer: smaller commit groups,
//!                          more log records, slower replay)
//! `--payload 160`          payload bytes per event
//! `--dir PATH`             where to put the stores (default: a temporary directory)
//! `--reuse yes`            replay the store a previous run left in `--dir`
//! `--cache-mb 256`         sled page cache size (`SledOptions::cache_capacity_bytes`)
//!
//! Appends are single-event, each writer on its own stream (`Exact` version checks), each
//! awaiting durability. Replay reopens the store (timing open and validation) and reads
//! every event back with `read_from` pages and, separately, through a subscription. It
//! measures this machine, so compare figures from one machine only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ota_server::store::{
    EventStore, ExpectedVersion, NewEvent, OpenValidation, SledEventStore, SledOptions,
    StreamAppend,
};
// tokio's Instant is the std one unless time is paused, which it never is here.
use tokio::time::Instant;

struct Args {
    writers: Vec<usize>,
    seconds: f64,
    events: u64,
    fill_writers: u64,
    payload: usize,
    dir: Option<PathBuf>,
    reuse: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        writers: vec![1, 16, 256],
        seconds: 3.0,
        events: 1_000_000,
        fill_writers: 256,
        payload: 160,
        dir: None,
        reuse: false,
    };
    let mut set = |name: &str, value: &str| match name {
        "writers" if value == "none" => args.writers.clear(),
        "writers" => {
            args.writers = value
                .split(',')
                .map(|w| w.trim().parse().expect("--writers"))
                .collect()
        }
        "seconds" => args.seconds = value.parse().expect("--seconds"),
        "events" => args.events = value.parse().expect("--events"),
        "fill-writers" => args.fill_writers = value.parse().expect("--fill-writers"),
        "payload" => args.payload = value.parse().expect("--payload"),
        "dir" => args.dir = Some(PathBuf::from(value)),
        "reuse" => args.reuse = value == "yes",
        "cache-mb" => {
            let _ = CACHE_MB.set(value.parse().expect("--cache-mb"));
        }
        other => panic!("unknown option --{other}"),
    };
    for name in [
        "writers",
        "seconds",
        "events",
        "fill-writers",
        "payload",
        "dir",
        "reuse",
        "cache-mb",
    ] {
        let var = format!("STORE_BENCH_{}", name.to_uppercase().replace('-', "_"));
        if let Ok(value) = std::env::var(var) {
            set(name, &value);
        }
    }
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        match arg.strip_prefix("--") {
            // `cargo bench` passes `--bench`; a filter argument may follow it.
            Some("bench") | None => {}
            Some(name) => {
                let value = argv
                    .next()
                    .unwrap_or_else(|| panic!("--{name} needs a value"));
                set(name, &value);
            }
        }
    }
    args
}

fn event(payload: &[u8]) -> NewEvent {
    NewEvent {
        event_type: "DeviceSeen".into(),
        schema_version: 1,
        payload: payload.to_vec(),
        actor: "bench".into(),
        recorded_at_ms: 1_700_000_000_000,
    }
}

fn proc_status(field: &str) -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l[field.len()..].trim().to_owned())
        .unwrap_or_else(|| "n/a".into())
}

fn rss() -> String {
    format!(
        "peak RSS (VmHWM) {}, current RSS {}",
        proc_status("VmHWM:"),
        proc_status("VmRSS:")
    )
}

/// sled cache size from `--cache-mb`, if given.
static CACHE_MB: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

fn options() -> SledOptions {
    let mut options = SledOptions::default();
    if let Some(mb) = CACHE_MB.get() {
        options.cache_capacity_bytes = mb * 1024 * 1024;
    }
    options
}

/// `writers` tasks append for `seconds`; returns (appends, elapsed).
async fn append_run(
    store: &Arc<SledEventStore>,
    writers: usize,
    seconds: f64,
    payload: &[u8],
    prefix: &str,
) -> (u64, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (store, stop, done) = (Arc::clone(store), Arc::clone(&stop), Arc::clone(&done));
            let payload = payload.to_vec();
            let stream = format!("{prefix}-{w}");
            tokio::spawn(async move {
                let mut version = 0;
                while !stop.load(Ordering::Relaxed) {
                    let batch = vec![StreamAppend::new(
                        &stream,
                        ExpectedVersion::Exact(version),
                        vec![event(&payload)],
                    )];
                    store.append(batch).await.expect("append");
                    version += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("writer");
    }
    (done.load(Ordering::Relaxed), started.elapsed())
}

/// Appends single events from `writers` writers until the log holds `events`.
async fn fill(store: &Arc<SledEventStore>, events: u64, writers: u64, payload: &[u8]) {
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = Arc::clone(store);
            let payload = payload.to_vec();
            tokio::spawn(async move {
                let stream = format!("fill-{w}");
                let n = events / writers + u64::from(w < events % writers);
                for version in 0..n {
                    let batch = vec![StreamAppend::new(
                        &stream,
                        ExpectedVersion::Exact(version),
                        vec![event(&payload)],
                    )];
                    store.append(batch).await.expect("append");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("filler");
    }
}

fn reopen(path: &Path, validation: OpenValidation) -> (SledEventStore, Duration) {
    let started = Instant::now();
    let store = SledEventStore::open(
        path,
        SledOptions {
            validation,
            ..options()
        },
    )
    .expect("open");
    (store, started.elapsed())
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    let args = parse_args();
    // The store logs its open (with the time spent in sled and in validation) at info.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("ota_server::store=info"))
        .with_target(false)
        .init();
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = args.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    let payload: Vec<u8> = (0..args.payload).map(|i| (i * 31 % 251) as u8).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "event store benchmark: payload {} bytes, {} CPUs, stores under {}",
        args.payload,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        base.display()
    );

    runtime.block_on(async {
        println!("\n== durable appends (single-event, one stream per writer) ==");
        println!(
            "{:>8} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>12}",
            "writers", "appends", "appends/s", "p50 us", "p99 us", "max us", "flushes", "per flush"
        );
        for &writers in &args.writers {
            let path = base.join(format!("append-{writers}"));
            let _ = std::fs::remove_dir_all(&path);
            let store = Arc::new(SledEventStore::open(&path, options()).expect("open"));
            let (n, elapsed) = append_run(&store, writers, args.seconds, &payload, "w").await;
            let stats = store.stats();
            println!(
                "{:>8} {:>12} {:>12.0} {:>10} {:>10} {:>10} {:>10} {:>12.1}",
                writers,
                n,
                rate(n, elapsed),
                stats.append_latency.quantile_upper_micros(0.5),
                stats.append_latency.quantile_upper_micros(0.99),
                stats.append_latency.max_micros,
                stats.flush_latency.count,
                n as f64 / stats.flush_latency.count.max(1) as f64,
            );
            drop(store);
            let _ = std::fs::remove_dir_all(&path);
        }

        println!("rss after the append runs: {}", rss());

        println!("\n== replay of {} events ==", args.events);
        let path = base.join("replay");
        if args.reuse && path.exists() {
            println!("reusing {}", path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&path);
        let store = Arc::new(SledEventStore::open(&path, options()).expect("open"));
        let started = Instant::now();
        fill(&store, args.events, args.fill_writers, &payload).await;
        let filled = started.elapsed();
        let disk = store.stats().disk_bytes;
        println!(
            "filled with {} writers in {:.1} s ({:.0} appends/s), {:.1} MiB on disk",
            args.fill_writers,
            filled.as_secs_f64(),
            rate(args.events, filled),
            disk as f64 / (1024.0 * 1024.0)
        );
        println!("{}", rss());
        Arc::into_inner(store)
            .expect("sole owner")
            .close()
            .await
            .expect("close");
    });

    // Open and replay outside the async context, as a server start does before serving.
    let path = base.join("replay");
    let (store, open_time) = reopen(&path, OpenValidation::default());
    println!(
        "open, default validation (tail of 10,000 events): {:.3} s",
        open_time.as_secs_f64()
    );
    let started = Instant::now();
    let mut next = 1;
    let mut count = 0u64;
    let mut bytes = 0usize;
    loop {
        let page = store.read_from(next, 10_000).expect("read");
        let Some(last) = page.last() else { break };
        next = last.seq + 1;
        count += page.len() as u64;
        bytes += page.iter().map(|e| e.payload.len()).sum::<usize>();
    }
    let replay = started.elapsed();
    assert_eq!(count, args.events);
    assert_eq!(bytes, args.events as usize * args.payload);
    println!(
        "replay with read_from pages of 10,000: {:.3} s, {:.0} events/s",
        replay.as_secs_f64(),
        rate(count, replay)
    );
    let caught_up = runtime.block_on(async {
        let started = Instant::now();
        let mut sub = store.subscribe(0);
        let mut n = 0u64;
        while n < args.events {
            sub.next().await.expect("open subscription").expect("event");
            n += 1;
        }
        started.elapsed()
    });
    println!(
        "replay through a subscription: {:.3} s, {:.0} events/s",
        caught_up.as_secs_f64(),
        rate(args.events, caught_up)
    );
    drop(store);
    let (store, keys_open) = reopen(&path, OpenValidation::TailAndKeys { events: 10_000 });
    println!("open, tail and key scan: {:.3} s", keys_open.as_secs_f64());
    drop(store);
    let (store, full_open) = reopen(&path, OpenValidation::Full);
    println!("open, full validation: {:.3} s", full_open.as_secs_f64());
    drop(store);

    println!("\n{}", rss());
}
