//! Event store benchmark: durable append throughput under concurrency side by side with
//! the disk's own rate and PostgreSQL, open/validate and replay of a large log, peak memory.
//!
//! `cargo bench -p ota-server --bench store [-- OPTIONS]`
//!
//! Options (also as environment variables, e.g. `STORE_BENCH_WRITERS=1,16`):
//! `--writers 1,16,256`     concurrent writers (and PostgreSQL clients) per run (`none`: skip)
//! `--seconds 6`            measuring time per system and writer count, split into rounds
//! `--rounds 3`             interleaved rounds: disk loop, ours at each count, PostgreSQL at
//!                          each count, again (PostgreSQL: at least 5 s per slice, whole
//!                          seconds; its rate leaves out connecting)
//! `--events 1000000`       size of the log replayed (`0`: skip the replay part)
//! `--fill-writers 256`     concurrent writers filling it (fewer: smaller commit groups,
//!                          more log records, slower replay)
//! `--payload 160`          payload bytes per event (with its headers an event is ~208 bytes)
//! `--dir PATH`             where to put the stores (default: a temporary directory)
//! `--reuse yes`            replay the store a previous run left in `--dir`
//! `--cache-mb 256`         sled page cache size (`SledOptions::cache_capacity_bytes`)
//! `--postgres no`          skip the PostgreSQL comparison
//! `--awake no`             do not keep the CPUs awake while measuring (see below)
//! `--backend sled`         the store measured: `sled` (in `--dir`) or `postgres` (the
//!                          PostgreSQL store on the same throwaway cluster pgbench uses, a
//!                          fresh database per slice; PostgreSQL is then required, and the
//!                          replay part, which measures sled's open and validation, is left out)
//!
//! Appends are single-event, each writer on its own stream (`Exact` version checks), each
//! awaiting durability: the store's group commit with the real `fdatasync` of its
//! write-ahead log (see `server/src/store/wal.rs`; sled is checkpointed behind it). In the
//! same run, next to it:
//!
//! * **the disk's own rate**: one thread in a loop of `pwrite` of 4 KiB + `fdatasync` on a
//!   preallocated 64 MiB file in the same directory as the stores. No durable append can be
//!   faster with one writer, unless the disk's flush time drifts: on a virtual disk a guest's
//!   flush becomes a host fsync whose cost depends on everything else written meanwhile, so
//!   the three systems run in interleaved slices (`--rounds`) and each slice is printed.
//!
//! **Awake CPUs.** While measuring, one `nice -n 19` busy loop per CPU runs (a child `sh`; it
//! only takes time nobody else wants). On a virtual machine a halted vCPU may notice an I/O
//! completion only at its next timer tick: on the 2-vCPU VM this was written on, a
//! single-threaded `pwrite` + `fdatasync` loop measured 266/s (p50 3.9 ms, one 250 Hz tick)
//! with idle CPUs and 770/s (p50 80 us) with busy ones. That is the VM's wake-up latency, not
//! the disk's; without the loops every synchronous loop (the disk loop, PostgreSQL with one
//! client) would measure it. `--awake no` measures the machine as it is.
//! * **PostgreSQL** from Debian (`initdb` on the `PATH`, or `/usr/lib/postgresql/<ver>/bin`),
//!   a throwaway cluster in the same directory (`ota_testkit::postgres`), `fsync` and `synchronous_commit` on (the
//!   defaults, set explicitly), unix socket only; `pgbench` at the same client counts
//!   inserts 200-byte rows, one per transaction, into `events(seq bigserial primary key,
//!   stream text, version int, body bytea, unique(stream, version))`, each client on its own
//!   stream with increasing versions. Run as root, the cluster runs as the `postgres` user
//!   (initdb refuses root; the base directory gets o+x so that user can reach it). Without
//!   `initdb` the bench says so and prints the other figures.
//!
//! Replay reopens the store (timing open and validation) and reads every event back with
//! `read_from` pages and, separately, through a subscription. It measures this machine, so
//! compare figures from one machine only.

use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ota_server::store::{
    EventStore, ExpectedVersion, NewEvent, OpenValidation, PostgresEventStore, PostgresOptions,
    SledEventStore, SledOptions, StreamAppend,
};
use ota_testkit::postgres::Cluster;
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
    postgres: bool,
    rounds: usize,
    awake: bool,
    backend: Backend,
}

/// The store measured as "ours".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sled,
    Postgres,
}

fn parse_args() -> Args {
    let mut args = Args {
        writers: vec![1, 16, 256],
        seconds: 6.0,
        events: 1_000_000,
        fill_writers: 256,
        payload: 160,
        dir: None,
        reuse: false,
        postgres: true,
        rounds: 3,
        awake: true,
        backend: Backend::Sled,
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
        "postgres" => args.postgres = value != "no",
        "rounds" => args.rounds = value.parse().expect("--rounds"),
        "awake" => args.awake = value != "no",
        "backend" => {
            args.backend = match value {
                "sled" => Backend::Sled,
                "postgres" => Backend::Postgres,
                other => panic!("--backend {other}: sled or postgres"),
            }
        }
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
        "postgres",
        "rounds",
        "awake",
        "backend",
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
    store: &Arc<dyn EventStore>,
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
            let (store, stop, done) = (
                Arc::clone(store) as Arc<dyn EventStore>,
                Arc::clone(&stop),
                Arc::clone(&done),
            );
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

// === the disk's own rate ===

/// `pwrite` of one 4 KiB block + `fdatasync`, in a loop for `seconds`, on a preallocated
/// file in `dir`: (syncs, time taken), or why it could not run.
fn disk_rate(dir: &Path, seconds: f64) -> Result<(u64, Duration), String> {
    const FILE_BYTES: u64 = 64 * 1024 * 1024;
    const BLOCK: u64 = 4096;
    let path = dir.join("disk-rate");
    let run = || -> std::io::Result<(u64, Duration)> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        // Preallocate by writing (no sparse blocks, no size change while measuring).
        let zeros = vec![0u8; 1024 * 1024];
        for mib in 0..FILE_BYTES / (1024 * 1024) {
            file.write_all_at(&zeros, mib * 1024 * 1024)?;
        }
        file.sync_all()?;
        let block = vec![0x5a_u8; BLOCK as usize];
        let started = Instant::now();
        let (mut n, mut offset) = (0u64, 0u64);
        while started.elapsed().as_secs_f64() < seconds {
            file.write_all_at(&block, offset)?;
            file.sync_data()?;
            n += 1;
            offset = (offset + BLOCK) % FILE_BYTES;
        }
        Ok((n, started.elapsed()))
    };
    let result = run().map_err(|e| format!("disk loop failed: {e}"));
    let _ = std::fs::remove_file(&path);
    result
}

// === awake CPUs ===

/// `nice -n 19` busy loops, one per CPU, stopped on drop.
struct KeepAwake(Vec<Child>);

impl KeepAwake {
    fn start() -> KeepAwake {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let loops: Vec<Child> = (0..cpus)
            .filter_map(|_| {
                Command::new("nice")
                    .args(["-n", "19", "sh", "-c", "while :; do :; done"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok()
            })
            .collect();
        println!(
            "keeping {} of {cpus} CPUs awake with nice-19 busy loops (--awake no: without)",
            loops.len()
        );
        KeepAwake(loops)
    }
}

impl Drop for KeepAwake {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// === PostgreSQL ===

/// Starts the throwaway cluster in `<base>/postgres` and prepares pgbench's table and script.
fn start_postgres(base: &Path) -> Result<Cluster, String> {
    let pg = Cluster::start(base, 300)?;
    pg.psql(
        "postgres",
        "create table events(seq bigserial primary key, stream text, version int, \
         body bytea, unique(stream, version))",
    )?;
    let settings = pg.psql("postgres", "select current_setting('fsync') || ' ' || current_setting('synchronous_commit') || ' ' || current_setting('wal_sync_method') || ' ' || version()")?;
    println!("PostgreSQL (fsync, synchronous_commit, wal_sync_method, version): {settings}");
    // Each client its own stream, versions 1, 2, ... (pgbench keeps `v` per client).
    std::fs::write(
        pg.root().join("insert.sql"),
        "\\set v :v + 1\n\
         insert into events (stream, version, body) values \
         ('w' || :client_id, :v, convert_to(repeat('x', 200), 'UTF8'));\n",
    )
    .map_err(|e| e.to_string())?;
    Ok(pg)
}

/// Inserts per second with `clients` pgbench clients for `seconds`.
fn insert_rate(pg: &Cluster, clients: usize, seconds: f64) -> Result<f64, String> {
    pg.psql("postgres", "truncate events")?;
    let (sock, clients_arg) = (pg.sock(), clients.to_string());
    let threads = clients.min(2).to_string();
    // pgbench's clock includes connecting (256 clients can take seconds); its tps does not.
    let time = (seconds.ceil() as u64).max(5).to_string();
    let out = pg.run(
        "pgbench",
        &[
            "-n",
            "-h",
            &sock,
            "-p",
            ota_testkit::postgres::PORT,
            "-U",
            ota_testkit::postgres::USER,
            "-c",
            &clients_arg,
            "-j",
            &threads,
            "-T",
            &time,
            "-M",
            "prepared",
            "-D",
            "v=0",
            "-f",
            "insert.sql",
            "postgres",
        ],
    )?;
    let failed = out
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("0");
    if failed != "0" {
        return Err(format!("pgbench: {failed} failed transactions:\n{out}"));
    }
    out.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|tps| tps.parse().ok())
        .ok_or_else(|| format!("no tps in pgbench's output:\n{out}"))
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Where "ours" runs in one slice.
enum Target<'a> {
    Sled(PathBuf),
    Postgres(&'a Cluster),
}

impl Target<'_> {
    /// A fresh, empty store, and what removes it afterwards.
    fn open(&self) -> (Arc<dyn EventStore>, Box<dyn FnOnce() + '_>) {
        match self {
            Target::Sled(path) => {
                let _ = std::fs::remove_dir_all(path);
                let store = SledEventStore::open(path, options()).expect("open");
                let cleanup = move || {
                    let _ = std::fs::remove_dir_all(path);
                };
                (Arc::new(store), Box::new(cleanup))
            }
            Target::Postgres(pg) => {
                let db = pg.fresh_database("bench").expect("create database");
                let store = PostgresEventStore::open(&pg.url(&db), PostgresOptions::default())
                    .expect("open the PostgreSQL store");
                let cleanup = move || {
                    if let Err(e) = pg.psql("postgres", &format!("drop database {db}")) {
                        println!("could not drop {db}: {e}");
                    }
                };
                (Arc::new(store), Box::new(cleanup))
            }
        }
    }
}

fn side_by_side(
    backend: Backend,
    ours: &[(usize, Vec<f64>)],
    disk: &[f64],
    postgres: &Result<Vec<(usize, Vec<f64>)>, String>,
) {
    println!(
        "\n== side by side: durable appends per second (mean of the rounds), ours = {backend:?} =="
    );
    let disk = mean(disk);
    if disk.is_none() {
        println!("disk's own rate: not measured");
    }
    if let Err(why) = postgres {
        println!("PostgreSQL: {why}");
    }
    let pg = |w: usize| {
        postgres
            .as_ref()
            .ok()?
            .iter()
            .find(|(c, _)| *c == w)
            .and_then(|(_, r)| mean(r))
    };
    let show = |v: Option<f64>, precision: usize| {
        v.map_or_else(|| "-".to_owned(), |v| format!("{v:.precision$}"))
    };
    println!(
        "{:>8} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "writers", "ours", "disk loop", "PostgreSQL", "ours/PG", "ours/disk"
    );
    let at = |w: usize| {
        ours.iter()
            .find(|(c, _)| *c == w)
            .and_then(|(_, r)| mean(r))
    };
    for &(w, _) in ours {
        let r = at(w);
        println!(
            "{:>8} {:>12} {:>12} {:>12} {:>10} {:>10}",
            w,
            show(r, 0),
            show(disk, 0),
            show(pg(w), 0),
            show(r.zip(pg(w)).map(|(r, p)| r / p), 2),
            show(r.zip(disk).map(|(r, d)| r / d), 2),
        );
    }
    // sled: issue 1's targets; PostgreSQL store: issue 16's (group commit against one
    // transaction per insert on the same cluster).
    let factor = match backend {
        Backend::Sled => 5.0,
        Backend::Postgres => 2.0,
    };
    if let (Some(r), Some(p)) = (at(256), pg(256)) {
        let verdict = if r >= factor * p { "met" } else { "MISSED" };
        println!(
            "target 256 writers >= {factor}x PostgreSQL (pgbench): {verdict} ({:.2}x)",
            r / p
        );
    }
    if backend == Backend::Sled
        && let (Some(r), Some(d)) = (at(1), disk)
    {
        let verdict = if r >= 0.8 * d { "met" } else { "MISSED" };
        println!(
            "target 1 writer >= 0.8x the disk's own rate: {verdict} ({:.2}x)",
            r / d
        );
    }
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

    // Interleaved slices: the machine may be shared, and a disk's flush time drifts with
    // what else is being written, so each system gets a slice of every round.
    let rounds = args.rounds.max(1);
    let slice = args.seconds / rounds as f64;
    let postgres = if args.postgres || args.backend == Backend::Postgres {
        println!("\n== PostgreSQL ==");
        start_postgres(&base).map_err(|e| format!("not measured: {e}"))
    } else {
        Err("skipped (--postgres no)".into())
    };
    if let (Backend::Postgres, Err(why)) = (args.backend, &postgres) {
        panic!("--backend postgres needs PostgreSQL: {why}");
    }
    let mut disk = Vec::new();
    let mut ours: Vec<(usize, Vec<f64>)> = args.writers.iter().map(|&w| (w, Vec::new())).collect();
    let mut theirs: Vec<(usize, Vec<f64>)> =
        args.writers.iter().map(|&w| (w, Vec::new())).collect();
    let mut pg_error = None;
    let awake = args.awake.then(KeepAwake::start);
    println!(
        "\n== {rounds} interleaved rounds of {slice:.1} s per system and writer count ==\n\
         ours ({:?} store): durable single-event appends, one stream per writer; mean latency \
         of the appends and of the commit syncs (sled: fdatasync of the write-ahead log; \
         PostgreSQL: the commit group's statement)\n\
         {:>5} {:>12} {:>8} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>10}",
        args.backend,
        "round",
        "system",
        "writers",
        "ops",
        "ops/s",
        "p50 us",
        "p99 us",
        "mean us",
        "flushes",
        "per flush",
        "flush us"
    );
    for round in 1..=rounds {
        match disk_rate(&base, slice) {
            Ok((n, elapsed)) => {
                println!(
                    "{round:>5} {:>12} {:>8} {n:>10} {:>10.0} {:>8} {:>8} {:>8}",
                    "disk loop",
                    1,
                    rate(n, elapsed),
                    "",
                    "",
                    elapsed.as_micros() as u64 / n.max(1)
                );

                disk.push(rate(n, elapsed));
            }
            Err(e) => println!("{round:>5} disk loop: {e}"),
        }
        for (writers, rates) in &mut ours {
            let writers = *writers;
            let target = match (&postgres, args.backend) {
                (Ok(pg), Backend::Postgres) => Target::Postgres(pg),
                _ => Target::Sled(base.join(format!("append-{writers}"))),
            };
            let (store, cleanup) = target.open();
            let (n, elapsed) = runtime.block_on(append_run(&store, writers, slice, &payload, "w"));
            rates.push(rate(n, elapsed));
            let stats = store.stats();
            println!(
                "{round:>5} {:>12} {writers:>8} {n:>10} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>9.1} {:>10}",
                "ours",
                rate(n, elapsed),
                stats.append_latency.quantile_upper_micros(0.5),
                stats.append_latency.quantile_upper_micros(0.99),
                stats.append_latency.mean_micros(),
                stats.flush_latency.count,
                n as f64 / stats.flush_latency.count.max(1) as f64,
                stats.flush_latency.mean_micros(),
            );
            drop(store);
            cleanup();
        }
        if let Ok(pg) = &postgres {
            for (clients, rates) in &mut theirs {
                match insert_rate(pg, *clients, slice) {
                    Ok(tps) => {
                        println!(
                            "{round:>5} {:>12} {clients:>8} {:>10} {tps:>10.0}",
                            "PostgreSQL", ""
                        );
                        rates.push(tps);
                    }
                    Err(e) => pg_error = Some(e),
                }
            }
        }
    }
    println!("rss after the append runs: {}", rss());
    let postgres = match (postgres, pg_error) {
        (Err(e), _) | (Ok(_), Some(e)) => Err(e),
        (Ok(pg), None) => {
            drop(pg);
            Ok(theirs)
        }
    };
    drop(awake);
    side_by_side(args.backend, &ours, &disk, &postgres);

    if args.events == 0 || args.backend == Backend::Postgres {
        if args.backend == Backend::Postgres {
            println!("\n(replay: measured for the sled store only)");
        }
        return;
    }
    runtime.block_on(async {
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
