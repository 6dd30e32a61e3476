//! Tier-2 conformance tests live in `tests/`; they compile only with `--features conformance`.
//!
//! # Benchmarks
//!
//! Two programs in `benches/` (no harness, also only with `--features conformance`) print
//! figures rather than pass or fail:
//!
//! - `esphome_upload`: upload time of a 1.5 MB ESP32 image to the simulated ESPHome device on
//!   loopback, our uploader against ESPHome's `espota2` in the same run (median, minimum and the
//!   ratio), with deflate and without compression.
//!   `OTA_CONFORMANCE_PYTHON=target/conformance-venv/bin/python cargo bench -p ota-conformance
//!   --features conformance --bench esphome_upload` (the virtualenv comes from
//!   `scripts/conformance.sh`).
//! - `agent_rss`: resident memory of the real `ota-agent` binary with 1,000 configured ESPHome
//!   devices (simulated in the bench process, otad in-process), once the inventory is at otad
//!   and after a batch check. `cargo bench -p ota-conformance --features conformance --bench
//!   agent_rss`.
//!
//! What each figure includes is in each program's documentation.
