//! Keeps the checked-in generated code in `src/gen/` identical to what the `.proto` files produce.
//!
//! The code is generated with `protox` (a pure-Rust protobuf compiler, so no system `protoc` is
//! needed) and `tonic-prost-build`. The test fails when the checked-in copy is stale; run
//! `OTA_UPDATE_GENERATED=1 cargo test -p ota-proto --test codegen` to refresh it.

use std::path::{Path, PathBuf};

fn proto_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn proto_files() -> Vec<PathBuf> {
    let dir = proto_root().join("ota/v1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("proto/ota/v1 exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    files.sort();
    files
}

#[test]
fn generated_code_is_fresh() {
    let root = proto_root();
    let files = proto_files();
    assert!(!files.is_empty(), "no .proto files found");
    let fds = protox::compile(&files, [&root]).expect("the .proto files compile");

    let out = tempfile::tempdir().expect("temp dir");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // No `connect` constructors on clients: AgentService has an RPC named Connect, and
        // callers build a Channel themselves anyway (TLS, timeouts).
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("code generation succeeds");

    let generated =
        std::fs::read_to_string(out.path().join("ota.v1.rs")).expect("ota.v1.rs generated");
    let checked_in_path = root.join("src/gen/ota.v1.rs");
    let checked_in = std::fs::read_to_string(&checked_in_path).unwrap_or_default();

    if std::env::var_os("OTA_UPDATE_GENERATED").is_some() {
        std::fs::write(&checked_in_path, &generated).expect("write generated code");
        return;
    }
    assert!(
        generated == checked_in,
        "proto/src/gen/ota.v1.rs is stale: the .proto files changed. \
         Run `OTA_UPDATE_GENERATED=1 cargo test -p ota-proto --test codegen` and commit the result."
    );
}
