#![cfg(feature = "conformance")]
//! "Acknowledged means durable", seen from outside: the real `otad` and `ota-agent` binaries
//! under `strace`, and the order of their syscalls.
//!
//! A process crash cannot show whether an acknowledgement waited for the disk (the page cache
//! survives it); the syscalls can. Each test runs a binary under `strace -f -qq -yy -xx` (every
//! thread, file paths and sockets of descriptors, all strings in hex so the bytes can be
//! decoded) with a
//! trace of the reads, writes and syncs that matter, drives it through its public interface,
//! stops it and checks the order in the trace file. Lines are in the order strace saw the
//! events; a syscall that another thread's output interrupted is split into `<unfinished ...>`
//! and `<... resumed>`, and both ends are kept, so "A completed before B started" is exact.
//!
//! - **otad** (`--insecure-plaintext`, so the gRPC bytes are readable): five firmware uploads
//!   through `FirmwareService.Upload`, one after the other, each named with a unique marker.
//!   For each, between the socket read that brings its marker and the socket write of the
//!   answer that carries it back: the upload's temporary file is fsynced, renamed into
//!   `blobs/sha256/<xx>/`, that directory (and, when new, `blobs/sha256/`) is fsynced, then
//!   the event store writes the `FirmwareRegistered` event (found by the marker in its bytes)
//!   to its write-ahead log `events/wal/wal-<gen>`, and an `fdatasync`/`fsync` of that segment
//!   starts after the write and completes before the answer is written.
//! - **ota-agent** (otad in-process, a simulated ESPHome node, one real update): every report
//!   the agent journals (a `write` of a `report` record to `journal.log`, decoded from the
//!   trace) reaches the socket only after an `fdatasync`/`fsync` of `journal.log` that started
//!   after the journal write; the agent's bytes on the socket are found by the report's exact
//!   protobuf encoding, which the journal record holds in base64. Also: the new `journal.log`
//!   and the renamed `agent-id` are made durable by an fsync of the data directory before the
//!   first report is sent.
//!
//! The peer is `strace` on `PATH` (scripts/conformance.sh installs it); without it the tests
//! fail. `otad` and `ota-agent` are built by cargo first, once per run, in the test's profile
//! (`ota_testkit::bins`).

use std::collections::HashSet;

use ota_testkit::upload::{app_meta, upload_firmware};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ota_firmware::Chip;
use ota_firmware::builders::EspAppBuilder;
use ota_proto::v1 as pb;
use ota_server::config::Config;
use ota_server::core::Clock;
use ota_server::wiring::{Otad, open_store};
use ota_sim::esphome::Platform;
use ota_sim::esphome_node::{EsphomeNode, NodeConfig};
use std::io::{BufRead as _, BufReader};
use tonic::transport::Endpoint;

const SITE: &str = "lab";
const DEVICE: &str = "lab/plug";

// === the binaries and strace ===

fn strace() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("strace"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "strace not found on PATH: scripts/conformance.sh installs it (apt-get install strace)"
        )
    })
}

/// A program running under strace; both are stopped on drop.
struct Traced {
    strace: Child,
    trace: PathBuf,
    log: PathBuf,
}

impl Traced {
    /// Starts `program args` under strace, tracing `syscalls` into `<dir>/<name>.strace`.
    /// The program's stdout is piped when `stdout` is set.
    fn start(
        dir: &Path,
        name: &str,
        syscalls: &str,
        program: &Path,
        args: &[&str],
        stdout: bool,
    ) -> Traced {
        let trace = dir.join(format!("{name}.strace"));
        let log = dir.join(format!("{name}.log"));
        let mut c = Command::new(strace());
        c.args(["-f", "-qq", "-yy", "-xx", "-s", "1048576", "-e"])
            .arg(format!("trace={syscalls}"))
            .arg("-o")
            .arg(&trace)
            .arg("--")
            .arg(program)
            .args(args)
            .env("RUST_LOG", "info")
            .env("OTEL_SDK_DISABLED", "true")
            .env_remove("OTAD_CONFIG")
            .env_remove("OTA_AGENT_CONFIG")
            .stdin(Stdio::null())
            .stdout(if stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(std::fs::File::create(&log).expect("log file"));
        let strace = c.spawn().expect("spawn strace");
        Traced { strace, trace, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The traced program: strace's child.
    fn tracee(&self) -> Option<u32> {
        let parent = self.strace.id();
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
    }

    /// Stops the program with SIGTERM (as a service manager does), waits for strace to end
    /// and parses the trace.
    fn stop(mut self) -> Trace {
        if let Some(pid) = self.tracee() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while matches!(self.strace.try_wait(), Ok(None)) {
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "the traced program did not stop within 20 s of SIGTERM\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = std::fs::read_to_string(&self.trace).expect("read the strace output");
        // Kept for a look after a failure: target/<profile>/<name>.strace.
        let kept = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join(self.trace.file_name()?)));
        if let Some(kept) = kept {
            let _ = std::fs::write(&kept, &text);
            eprintln!("strace output kept at {}", kept.display());
        }
        Trace::parse(&text)
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if let Some(pid) = self.tracee() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.strace.kill();
        let _ = self.strace.wait();
    }
}

// === the trace ===

/// One syscall from the trace. `entry` and `exit` are line numbers (equal unless another
/// thread's output split the call).
#[derive(Debug, Clone)]
struct Call {
    name: String,
    /// The path strace printed for the first argument's descriptor (`-y`).
    fd_path: Option<String>,
    /// Every string argument, decoded, in order (for writev: the iovecs).
    strings: Vec<Vec<u8>>,
    ret: Option<i64>,
    entry: usize,
    exit: usize,
}

impl Call {
    fn ok(&self) -> bool {
        self.ret.is_some_and(|r| r >= 0)
    }

    /// A socket (`-yy` names TCP sockets `TCP:[a->b]`; an undecoded one is `socket:[inode]`).
    fn on_tcp(&self) -> bool {
        self.fd_path.as_deref().is_some_and(|p| {
            p.starts_with("TCP:") || p.starts_with("TCPv6:") || p.starts_with("socket:[")
        })
    }

    fn data(&self) -> Vec<u8> {
        self.strings.concat()
    }

    fn carries(&self, needle: &[u8]) -> bool {
        contains(&self.data(), needle)
    }

    fn is_sync(&self) -> bool {
        matches!(self.name.as_str(), "fsync" | "fdatasync") && self.ok()
    }

    fn is_socket_read(&self) -> bool {
        matches!(
            self.name.as_str(),
            "read" | "readv" | "recvfrom" | "recvmsg"
        ) && self.on_tcp()
            && self.ok()
    }

    fn is_socket_write(&self) -> bool {
        matches!(
            self.name.as_str(),
            "write" | "writev" | "sendto" | "sendmsg"
        ) && self.on_tcp()
            && self.ok()
    }

    fn describe(&self) -> String {
        format!(
            "{}({}) lines {}..{}",
            self.name,
            self.fd_path.as_deref().unwrap_or(""),
            self.entry,
            self.exit
        )
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[derive(Debug, Default)]
struct Trace {
    calls: Vec<Call>,
}

/// Decodes strace's quoted string body (with `-xx`: `\xNN` for every byte; other escapes
/// for robustness).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len() / 4);
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'x' if i + 3 < b.len() => {
                    let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap_or("");
                    out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                    i += 4;
                    continue;
                }
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'r' => out.push(b'\r'),
                other => out.push(other),
            }
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Every `"..."` in `s`, decoded.
fn quoted_strings(s: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find('"') {
        let after = &rest[start + 1..];
        let mut end = None;
        let bytes = after.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'"' => {
                    end = Some(i);
                    break;
                }
                _ => i += 1,
            }
        }
        let Some(end) = end else { break };
        out.push(unescape(&after[..end]));
        rest = &after[end + 1..];
    }
    out
}

/// The return value at the end of a finished call: `... ) = 42`, `= 5<path>` (`-y`) or
/// `= -1 EAGAIN (...)`; strace pads short lines, so `)` and `=` may be apart.
fn return_value(s: &str) -> Option<i64> {
    let (before, ret) = s.rsplit_once(" = ")?;
    if !before.trim_end().ends_with(')') {
        return None;
    }
    let ret = ret.trim_start();
    let end = ret
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && c == '-')))
        .map_or(ret.len(), |(i, _)| i);
    ret[..end].parse().ok()
}

impl Trace {
    fn parse(text: &str) -> Trace {
        let mut calls = Vec::new();
        // Unfinished calls by pid: (index in `calls`).
        let mut pending: std::collections::HashMap<String, usize> = Default::default();
        for (line_no, line) in text.lines().enumerate() {
            let Some((pid, rest)) = line.split_once(' ') else {
                continue;
            };
            let rest = rest.trim_start();
            if rest.starts_with("+++") || rest.starts_with("---") {
                continue;
            }
            if let Some(resumed) = rest.strip_prefix("<... ") {
                let Some(i) = pending.remove(pid) else {
                    continue;
                };
                let body = resumed.split_once("resumed>").map_or("", |(_, b)| b);
                let call: &mut Call = &mut calls[i];
                call.strings.extend(quoted_strings(body));
                call.ret = return_value(body);
                call.exit = line_no;
                continue;
            }
            let Some((name, args)) = rest.split_once('(') else {
                continue;
            };
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            // `7<path>` as the first argument: the descriptor's path, hex-escaped, or a socket
            // as `TCP:[a->b]` (its `>` is not the end: the end is followed by `,` or `)`).
            let mut fd_path = None;
            let mut tail = args;
            let digits = args.bytes().take_while(u8::is_ascii_digit).count();
            let close = args.get(digits + 1..).and_then(|rest| {
                rest.match_indices('>').map(|(i, _)| i).find(|&i| {
                    matches!(rest.as_bytes().get(i + 1), None | Some(b',' | b')' | b' '))
                })
            });
            if digits > 0
                && args[digits..].starts_with('<')
                && let Some(close) = close
            {
                fd_path = Some(
                    String::from_utf8_lossy(&unescape(&args[digits + 1..digits + 1 + close]))
                        .into_owned(),
                );
                tail = &args[digits + 2 + close..];
            }
            let unfinished = tail.trim_end().ends_with("<unfinished ...>");
            let call = Call {
                name: name.to_owned(),
                fd_path,
                strings: quoted_strings(tail),
                ret: if unfinished { None } else { return_value(tail) },
                entry: line_no,
                exit: line_no,
            };
            if unfinished {
                pending.insert(pid.to_owned(), calls.len());
            }
            calls.push(call);
        }
        Trace { calls }
    }

    fn find(&self, pred: impl Fn(&Call) -> bool) -> Option<&Call> {
        self.calls.iter().find(|c| pred(c))
    }
}

// === otad ===

/// Returns `Err(why)` from the enclosing function unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            return Err(format!($($why)+));
        }
    };
}

/// The order for each upload (`(marker, sha256)`, in upload order); see the module docs.
fn check_otad(trace: &Trace, uploads: &[(String, String)], blob_root: &str) -> Result<(), String> {
    let mut prefixes_seen = HashSet::new();
    for (marker, sha) in uploads {
        let m = marker.as_bytes();
        let request = trace
            .find(|c| c.is_socket_read() && c.carries(m))
            .ok_or_else(|| format!("no socket read carries {marker}"))?;
        let after_request = request.exit;
        let answer = trace
            .find(|c| c.is_socket_write() && c.entry > after_request && c.carries(m))
            .ok_or_else(|| format!("no socket write answers {marker}"))?;
        let between = |c: &Call| c.entry > after_request && c.exit < answer.entry;

        // The blob: file synced, renamed into place, its directory synced.
        let file_sync = trace
            .find(|c| {
                c.is_sync()
                    && between(c)
                    && c.fd_path
                        .as_deref()
                        .is_some_and(|p| p.contains("/blobs/tmp/upload-"))
            })
            .ok_or_else(|| format!("{marker}: the uploaded file was not fsynced"))?;
        let target = format!("{blob_root}/{}/{sha}", &sha[..2]);
        let rename = trace
            .find(|c| {
                c.name.starts_with("rename")
                    && c.ok()
                    && between(c)
                    && c.strings.iter().any(|s| s == target.as_bytes())
            })
            .ok_or_else(|| format!("{marker}: no rename to {target}"))?;
        ensure!(
            file_sync.exit < rename.entry,
            "{marker}: the file was renamed before its fsync completed: {} / {}",
            file_sync.describe(),
            rename.describe()
        );
        let prefix_dir = format!("{blob_root}/{}", &sha[..2]);
        if prefixes_seen.insert(prefix_dir.clone()) {
            let parent_sync = trace.find(|c| {
                c.is_sync()
                    && between(c)
                    && c.exit < rename.entry
                    && c.fd_path.as_deref() == Some(blob_root)
            });
            ensure!(
                parent_sync.is_some(),
                "{marker}: the new directory {prefix_dir} was not made durable (no fsync of \
                 {blob_root} before the rename)"
            );
        }
        let dir_sync = trace
            .find(|c| {
                c.is_sync()
                    && c.entry > rename.exit
                    && c.exit < answer.entry
                    && c.fd_path.as_deref() == Some(prefix_dir.as_str())
            })
            .ok_or_else(|| {
                format!(
                    "{marker}: {prefix_dir} was not fsynced after the rename, before the answer"
                )
            })?;

        // The event: written to the store's write-ahead log, then synced, then answered.
        let in_wal = |c: &Call| {
            c.fd_path
                .as_deref()
                .is_some_and(|p| p.contains("/events/wal/wal-"))
        };
        let event_write = trace
            .find(|c| {
                matches!(c.name.as_str(), "pwrite64" | "pwritev")
                    && c.ok()
                    && in_wal(c)
                    && between(c)
                    && c.carries(m)
            })
            .ok_or_else(|| format!("{marker}: the event was not written to the write-ahead log"))?;
        trace
            .find(|c| {
                c.is_sync()
                    && c.fd_path == event_write.fd_path
                    && c.entry > event_write.exit
                    && c.exit < answer.entry
            })
            .ok_or_else(|| {
                format!(
                    "{marker}: the write-ahead log was not synced between the event's write \
                     and the answer"
                )
            })?;
        ensure!(
            event_write.entry > dir_sync.exit,
            "{marker}: the event was written ({}) before the blob was durable ({})",
            event_write.describe(),
            dir_sync.describe()
        );
    }
    Ok(())
}

/// An ESP32 application whose bytes (and so sha256) differ per `version`.
fn app(version: &str) -> Vec<u8> {
    EspAppBuilder::new(Chip::Esp32)
        .version(version)
        .project_name("acme.plug")
        .payload_size(4 * 1024)
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otad_makes_blob_and_event_durable_before_it_answers() {
    let otad = ota_testkit::bins::otad();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("otad-data");
    let data_arg = data.display().to_string();
    let mut traced = Traced::start(
        dir.path(),
        "otad",
        "read,readv,recvfrom,recvmsg,write,writev,sendto,sendmsg,pwrite64,pwritev,\
         fsync,fdatasync,sync_file_range,rename,renameat,renameat2",
        &otad,
        &[
            "--insecure-plaintext",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data_arg,
        ],
        true,
    );
    // otad prints its address on stdout; the rest of stdout is drained.
    let stdout = traced.strace.stdout.take().expect("otad stdout");
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.trim().strip_prefix("otad listening on ") {
                let _ = addr_tx.send(addr.to_owned());
            }
        }
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("otad did not listen within 60 s:\n{}", traced.log()));
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to otad");

    const UPLOADS: usize = 5;
    let markers: Vec<String> = (0..UPLOADS).map(|i| format!("durprobe-{i:02}")).collect();
    let mut shas = Vec::new();
    for (i, marker) in markers.iter().enumerate() {
        let version = format!("1.0.{i}");
        let fw = upload_firmware(&channel, app_meta(marker, &version, None), &app(&version)).await;
        assert_eq!(fw.name, *marker);
        shas.push(fw.sha256);
    }
    drop(channel);
    let trace = traced.stop();

    let blob_root = data.join("blobs").join("sha256").display().to_string();
    let uploads: Vec<(String, String)> = markers.into_iter().zip(shas).collect();
    match check_otad(&trace, &uploads, &blob_root) {
        Ok(()) => eprintln!("{UPLOADS} uploads: blob and event durable before each answer"),
        Err(why) => panic!(
            "{why}\n--- otad log\n{}",
            std::fs::read_to_string(dir.path().join("otad.log")).unwrap_or_default()
        ),
    }
}

// === the agent ===

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// The reports in a journal write: `u32 len | u32 crc | JSON` records, `{"t":"report",
/// "seq":N,"msg":"<base64 of the AgentMessage>"}`; returns (seq, message bytes).
fn journaled_reports(bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let Some(body) = bytes.get(pos + 8..pos + 8 + len) else {
            break;
        };
        if let Ok(record) = serde_json::from_slice::<serde_json::Value>(body)
            && record["t"] == "report"
            && let (Some(seq), Some(msg)) = (record["seq"].as_u64(), record["msg"].as_str())
        {
            out.push((seq, base64_decode(msg).expect("base64 report")));
        }
        pos += 8 + len;
    }
    out
}

/// Every journaled report found on the socket was synced before it was sent, and the names
/// (`journal.log`, `agent-id`) were made durable before the first report left. Returns how
/// many reports were checked.
fn check_agent(trace: &Trace, data_dir: &str) -> Result<usize, String> {
    let journal = format!("{data_dir}/journal.log");
    let mut sent = 0;
    let mut first_send = usize::MAX;
    let journal_writes = trace
        .calls
        .iter()
        .filter(|c| c.name == "write" && c.ok() && c.fd_path.as_deref() == Some(journal.as_str()));
    for write in journal_writes {
        for (seq, message) in journaled_reports(&write.data()) {
            let Some(send) =
                trace.find(|c| c.is_socket_write() && c.entry > write.exit && c.carries(&message))
            else {
                // Journaled but not sent before the agent stopped: nothing to check.
                continue;
            };
            let sync = trace.find(|c| {
                c.is_sync()
                    && c.fd_path.as_deref() == Some(journal.as_str())
                    && c.entry > write.exit
                    && c.exit < send.entry
            });
            ensure!(
                sync.is_some(),
                "report {seq} was sent ({}) without an fsync of journal.log after it was \
                 journaled ({})",
                send.describe(),
                write.describe()
            );
            sent += 1;
            first_send = first_send.min(send.entry);
        }
    }
    let dir_sync_after = |line: usize| {
        trace.find(|c| {
            c.is_sync()
                && c.fd_path.as_deref() == Some(data_dir)
                && c.entry > line
                && c.exit < first_send
        })
    };
    let created = trace
        .find(|c| c.name == "openat" && c.ok() && c.strings.iter().any(|s| s == journal.as_bytes()))
        .ok_or("journal.log was never opened")?;
    ensure!(
        dir_sync_after(created.exit).is_some(),
        "the data directory was not fsynced after journal.log was created, before the first report"
    );
    let agent_id = format!("{data_dir}/agent-id");
    let renamed = trace
        .find(|c| {
            c.name.starts_with("rename")
                && c.ok()
                && c.strings.iter().any(|s| s == agent_id.as_bytes())
        })
        .ok_or("agent-id was never renamed into place")?;
    ensure!(
        dir_sync_after(renamed.exit).is_some(),
        "the data directory was not fsynced after agent-id was renamed, before the first report"
    );
    Ok(sent)
}

fn agent_config(url: &str, data_dir: &Path, node: &EsphomeNode) -> String {
    format!(
        "site_id = {SITE:?}\nserver = {url:?}\ndata_dir = {:?}\ntimezone = \"UTC\"\n\
         utc_offset_minutes = 0\n\n[reconnect]\nmin = \"100ms\"\nmax = \"1s\"\n\n\
         [esphome]\nreboot_poll = \"100ms\"\nreboot_settle = \"1s\"\n\n\
         [[esphome.device]]\nname = \"plug\"\nhost = \"127.0.0.1\"\nplatform = \"esp32\"\n\
         port = {}\napi_port = {}\n",
        data_dir.display().to_string(),
        node.ota_addr().port(),
        node.api_addr().port(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_syncs_each_report_before_sending_it() {
    let agent_bin = ota_testkit::bins::agent();
    let dir = tempfile::tempdir().unwrap();

    let mut node_config = NodeConfig::new("plug", Platform::Esp32);
    node_config.ota.version = "1.0.0".into();
    node_config.ota.project_name = "acme.plug".into();
    node_config.ota.reboot_time = Duration::from_millis(300);
    let node = EsphomeNode::start(node_config).expect("bind loopback ports");

    let cfg = Config {
        data_dir: dir.path().join("otad"),
        insecure_plaintext: true,
        ..Config::default()
    };
    let store = open_store(&cfg).expect("open the event store");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Otad::start(cfg, store, Clock::new(), listener)
        .await
        .expect("start otad");
    let url = format!("http://{}", server.addr);

    let agent_data = dir.path().join("agent-data");
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, agent_config(&url, &agent_data, &node)).unwrap();
    let config_arg = config.display().to_string();
    let traced = Traced::start(
        dir.path(),
        "agent",
        "write,writev,sendto,sendmsg,pwrite64,fsync,fdatasync,openat,rename,renameat,renameat2",
        &agent_bin,
        &["--config", &config_arg],
        false,
    );

    let channel = Endpoint::from_shared(url).unwrap().connect_lazy();
    let mut devices = pb::device_service_client::DeviceServiceClient::new(channel.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let found = devices
            .get(pb::GetDeviceRequest { id: DEVICE.into() })
            .await
            .is_ok_and(|d| d.into_inner().reachable);
        if found {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent did not report {DEVICE} within 60 s\n{}",
            traced.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fw = upload_firmware(
        &channel,
        app_meta("acme-plug", "2.0.0", None),
        &app("2.0.0"),
    )
    .await;
    let task = tokio::time::timeout(
        Duration::from_secs(120),
        devices.update(pb::UpdateDeviceRequest {
            device_id: DEVICE.into(),
            firmware_id: fw.id.clone(),
            wait: true,
            ..Default::default()
        }),
    )
    .await
    .expect("the update ended within 120 s")
    .expect("DeviceService.Update")
    .into_inner()
    .task
    .expect("task");
    assert_eq!(
        task.status,
        pb::UpgradeStatus::Success as i32,
        "{task:?}\n{}",
        traced.log()
    );
    // The inventory after the reboot (journaled, sent, applied) shows the new version.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let version = devices
            .get(pb::GetDeviceRequest { id: DEVICE.into() })
            .await
            .ok()
            .and_then(|d| d.into_inner().current)
            .map(|v| v.version)
            .unwrap_or_default();
        if version == "2.0.0" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "otad did not learn the new version within 60 s\n{}",
            traced.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let trace = traced.stop();
    server.shutdown().await.expect("stop otad");

    let data_dir = agent_data.display().to_string();
    match check_agent(&trace, &data_dir) {
        // The inventory, progress, the result and the inventory after the update at least.
        Ok(sent) if sent >= 4 => eprintln!("{sent} reports: each synced before it was sent"),
        Ok(sent) => panic!("only {sent} journaled reports were found on the socket"),
        Err(why) => panic!("{why}"),
    }
}

#[test]
fn the_trace_parser_reads_split_calls_and_hex() {
    let text = r#"100 fdatasync(7<\x2f\x64\x62> <unfinished ...>
101 writev(9<TCP:[127.0.0.1:1->127.0.0.1:2]>, [{iov_base="\x61\x62", iov_len=2}, {iov_base="\x63", iov_len=1}], 2) = 3
100 <... fdatasync resumed>)             = 0
101 +++ exited with 0 +++
102 read(9<\x54\x43\x50\x3a\x5b\x31\x5d>, "\x7a", 10) = 1
102 read(9<\x54\x43\x50\x3a\x5b\x31\x5d>, 0x7f00, 10) = -1 EAGAIN (Resource temporarily unavailable)
103 openat(AT_FDCWD, "\x2f\x6a", O_WRONLY|O_CREAT, 0666) = 5<\x2f\x6a>
"#;
    let t = Trace::parse(text);
    assert_eq!(t.calls.len(), 5);
    let sync = &t.calls[0];
    assert_eq!(
        (sync.name.as_str(), sync.entry, sync.exit),
        ("fdatasync", 0, 2)
    );
    assert_eq!(sync.fd_path.as_deref(), Some("/db"));
    assert!(sync.is_sync());
    let w = &t.calls[1];
    assert_eq!(w.fd_path.as_deref(), Some("TCP:[127.0.0.1:1->127.0.0.1:2]"));
    assert!(w.is_socket_write());
    assert_eq!(w.data(), b"abc");
    assert!(t.calls[2].is_socket_read() && t.calls[2].carries(b"z"));
    assert!(!t.calls[3].is_socket_read());
    assert_eq!(t.calls[4].ret, Some(5));
    assert_eq!(t.calls[4].strings, vec![b"/j".to_vec()]);
    assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
    assert_eq!(base64_decode("aGk").unwrap(), b"hi");
}

/// Hex as strace `-xx` prints strings.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\x{b:02x}")).collect()
}

/// A trace of one upload as otad must do it; `swap` moves the sync of the log after the
/// answer, `skip_dir_sync` leaves out the prefix directory's fsync.
fn otad_trace(swap: bool, skip_dir_sync: bool) -> String {
    let root = "/d/blobs/sha256";
    let sha = "ab".repeat(32);
    let tcp = "7<TCP:[127.0.0.1:1->127.0.0.1:2]>";
    let marker = hex(b"..durprobe-00..");
    let path = |p: &str| hex(p.as_bytes());
    let mut lines = vec![
        format!("1 recvfrom({tcp}, \"{marker}\", 8192, 0, NULL, NULL) = 15"),
        format!("2 fsync(9<{}>) = 0", path("/d/blobs/tmp/upload-1")),
        format!("2 fsync(10<{}>) = 0", path(root)),
        format!(
            "2 rename(\"{}\", \"{}\") = 0",
            path("/d/blobs/tmp/upload-1"),
            path(&format!("{root}/ab/{sha}"))
        ),
    ];
    if !skip_dir_sync {
        lines.push(format!("2 fsync(10<{}>) = 0", path(&format!("{root}/ab"))));
    }
    let wal = path("/d/events/wal/wal-0000000000000001");
    lines.push(format!("3 pwrite64(11<{wal}>, \"{marker}\", 15, 0) = 15"));
    let sync = format!("3 fdatasync(12<{wal}>) = 0");
    let answer = format!("1 writev({tcp}, [{{iov_base=\"{marker}\", iov_len=15}}], 1) = 15");
    if swap {
        lines.extend([answer, sync]);
    } else {
        lines.extend([sync, answer]);
    }
    lines.join("\n")
}

#[test]
fn the_otad_check_fails_when_an_answer_comes_before_the_syncs() {
    let uploads = vec![("durprobe-00".to_owned(), "ab".repeat(32))];
    let check = |text: String| check_otad(&Trace::parse(&text), &uploads, "/d/blobs/sha256");
    assert_eq!(check(otad_trace(false, false)), Ok(()));
    let late = check(otad_trace(true, false)).unwrap_err();
    assert!(late.contains("write-ahead log was not synced"), "{late}");
    let no_dir = check(otad_trace(false, true)).unwrap_err();
    assert!(no_dir.contains("not fsynced after the rename"), "{no_dir}");
}

/// A trace of an agent start and one report; `sync_after_send` puts the journal's sync
/// after the socket write.
fn agent_trace(sync_after_send: bool) -> String {
    let dir = "/a";
    let path = |p: &str| hex(p.as_bytes());
    let message = b"\x08\x01\x12\x03inv";
    let b64 = "CAESA2ludg=="; // base64 of `message`
    let json = format!(r#"{{"t":"report","seq":1,"msg":"{b64}"}}"#);
    let mut record = (json.len() as u32).to_le_bytes().to_vec();
    record.extend_from_slice(&[0; 4]);
    record.extend_from_slice(json.as_bytes());
    let tcp = "7<TCP:[127.0.0.1:1->127.0.0.1:2]>";
    let mut framed = vec![0, 0, 0, 0, message.len() as u8];
    framed.extend_from_slice(message);
    let mut lines = vec![
        format!(
            "1 rename(\"{}\", \"{}\") = 0",
            path("/a/agent-id.tmp"),
            path("/a/agent-id")
        ),
        format!("1 fsync(3<{}>) = 0", path(dir)),
        format!(
            "1 openat(AT_FDCWD, \"{}\", O_WRONLY|O_CREAT|O_APPEND|O_CLOEXEC, 0666) = 5<{}>",
            path("/a/journal.log"),
            path("/a/journal.log")
        ),
        format!("1 fsync(3<{}>) = 0", path(dir)),
        format!(
            "2 write(5<{}>, \"{}\", {}) = {}",
            path("/a/journal.log"),
            hex(&record),
            record.len(),
            record.len()
        ),
    ];
    let sync = format!("2 fdatasync(5<{}>) = 0", path("/a/journal.log"));
    let send = format!(
        "3 sendto({tcp}, \"{}\", 10, MSG_NOSIGNAL, NULL, 0) = 10",
        hex(&framed)
    );
    if sync_after_send {
        lines.extend([send, sync]);
    } else {
        lines.extend([sync, send]);
    }
    lines.join("\n")
}

#[test]
fn the_agent_check_fails_when_a_report_leaves_before_its_sync() {
    assert_eq!(
        base64_decode("CAESA2ludg==").unwrap(),
        b"\x08\x01\x12\x03inv"
    );
    assert_eq!(check_agent(&Trace::parse(&agent_trace(false)), "/a"), Ok(1));
    let err = check_agent(&Trace::parse(&agent_trace(true)), "/a").unwrap_err();
    assert!(err.contains("without an fsync of journal.log"), "{err}");
}
