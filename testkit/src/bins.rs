//! The workspace's executables for tests that run them as processes, built by cargo first
//! (once per test process) so a test never runs a stale binary left in `target/` by an older
//! build.
//!
//! The build is `cargo build -p <package> --bin <bin>` with the profile the test was built with
//! (read from the test's own path, `target/<profile>/deps/`), run by `$CARGO` (which cargo sets
//! for tests) or else the cargo that compiled this crate. The environment passes through, so
//! `CARGO_TARGET_DIR`, `CARGO_BUILD_TARGET`, `CARGO_INCREMENTAL`, `RUSTFLAGS` and the other
//! cargo settings apply as they did to the test build, except the variables that describe the
//! test's own package (see [`describes_the_test_package`]); the path is the one cargo reports.
//! When the binary is up to date this takes about a second.
//!
//! [`OtadProcess`] runs an otad binary as a child process in development mode.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// `otad`, fresh.
pub fn otad() -> PathBuf {
    cargo_bin("ota-server", "otad")
}

/// `ota-agent`, fresh.
pub fn agent() -> PathBuf {
    cargo_bin("ota-agent", "ota-agent")
}

/// `bin` of workspace package `package`, built once per test process; its path.
pub fn cargo_bin(package: &str, bin: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<(String, String), PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    built
        .entry((package.to_string(), bin.to_string()))
        .or_insert_with(|| build(package, bin))
        .clone()
}

fn build(package: &str, bin: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--message-format=json-render-diagnostics"])
        .args(["-p", package, "--bin", bin])
        .args(profile_args())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(describes_the_test_package) {
            cmd.env_remove(name);
        }
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed (see its errors above)"
    );
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == bin)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("{cmd:?} reported no executable for {bin}"));
    assert!(path.exists(), "{bin} not found at {}", path.display());
    path
}

/// The cargo flags that select the profile the running test was built with.
fn profile_args() -> Vec<String> {
    let exe = std::env::current_exe().expect("test executable path");
    let profile = exe
        .parent() // deps
        .and_then(Path::parent) // <profile>
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .expect("the test runs from target/<profile>/deps");
    match profile {
        "debug" => Vec::new(),
        "release" => vec!["--release".to_string()],
        custom => vec!["--profile".to_string(), custom.to_string()],
    }
}

/// Whether `name` is one of the variables cargo sets for a running test to describe the test's
/// own package. A build started from the test must not see them: build scripts that watch
/// them (ring watches `CARGO_MANIFEST_DIR` and `CARGO_PKG_*`) would rebuild, and with them
/// everything above, in this build and again in every ordinary build after it.
pub fn describes_the_test_package(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
                | "OUT_DIR"
        )
}

/// An otad process in development mode (`otad --insecure-plaintext --listen 127.0.0.1:0
/// --data-dir <tmp>/data`, stderr to `<tmp>/otad.log`), started once it printed its
/// `otad listening on <addr>` line; killed on drop.
#[derive(Debug)]
pub struct OtadProcess {
    child: Child,
    addr: String,
    bin: PathBuf,
    dir: tempfile::TempDir,
}

/// Starts `bin` on `<dir>/data`, its stderr appended to `<dir>/otad.log`, and waits for its
/// listening line: the child and the address it listens on.
fn spawn_otad(bin: &Path, dir: &Path) -> Result<(Child, String), String> {
    let log_path = dir.join("otad.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("otad.log: {e}"))?;
    let mut child = Command::new(bin)
        .arg("--insecure-plaintext")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().ok_or("otad has no stdout")?;
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    let addr = loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| format!("reading otad's stdout: {e}"))?;
        if n == 0 {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("otad exited before listening:\n{log}"));
        }
        if let Some(addr) = line.trim().strip_prefix("otad listening on ") {
            break addr.to_string();
        }
    };
    // Keep draining stdout so otad never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader.lines() {});
    Ok((child, addr))
}

impl OtadProcess {
    /// Starts `bin` (for example [`otad`]) and waits for its listening line; panics with its
    /// log when it exits first.
    pub fn start(bin: &Path) -> OtadProcess {
        Self::try_start(bin).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`OtadProcess::start`], with what went wrong as an error instead of a panic.
    pub fn try_start(bin: &Path) -> Result<OtadProcess, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let (child, addr) = spawn_otad(bin, dir.path())?;
        Ok(OtadProcess {
            child,
            addr,
            bin: bin.to_owned(),
            dir,
        })
    }

    /// Stops otad as an operator does (SIGTERM: it finishes, writes its shutdown snapshot and
    /// exits) and waits for it to exit.
    pub fn stop(&mut self) -> Result<(), String> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .map_err(|e| format!("kill -TERM: {e}"))?;
        if !status.success() {
            return Err(format!("kill -TERM {} failed", self.child.id()));
        }
        self.child
            .wait()
            .map_err(|e| format!("waiting for otad to exit: {e}"))?;
        Ok(())
    }

    /// Starts the same binary again on the same data directory after [`OtadProcess::stop`];
    /// returns once the new process listens (its log is appended to `otad.log`).
    pub fn start_again(&mut self) -> Result<(), String> {
        let (child, addr) = spawn_otad(&self.bin, self.dir.path())?;
        self.child = child;
        self.addr = addr;
        Ok(())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The temporary directory that holds `data/` and `otad.log` (and whatever the test puts
    /// there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// otad's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// What otad wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("otad.log")).unwrap_or_default()
    }
}

impl Drop for OtadProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
