//! The real `otad` and `ota-agent` executables for tests that run them as processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// `otad` and `ota-agent`, built by cargo once per test process in the test's profile, so the
/// tests never run stale binaries.
pub fn binaries() -> (PathBuf, PathBuf) {
    static BINARIES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINARIES
        .get_or_init(|| {
            (
                cargo_build("ota-server", "otad"),
                cargo_build("ota-agent", "ota-agent"),
            )
        })
        .clone()
}

/// `cargo build -p <package> --bin <bin>` in this test's profile; the executable cargo reports.
fn cargo_build(package: &str, bin: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile = exe
        .parent() // deps
        .and_then(Path::parent) // <profile>
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .expect("the test runs from target/<profile>/deps");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--message-format=json-render-diagnostics"])
        .args(["-p", package, "--bin", bin])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    // The variables cargo sets to describe this test's package must not reach the build: build
    // scripts that watch them (ring: CARGO_MANIFEST_DIR, CARGO_PKG_*) would rebuild, and with
    // them everything above, here and in every ordinary build after it.
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("CARGO_PKG_")
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
        {
            cmd.env_remove(name);
        }
    }
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        custom => {
            cmd.args(["--profile", custom]);
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
