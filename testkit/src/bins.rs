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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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
