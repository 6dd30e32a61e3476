//! Tier-2 conformance tests live in `tests/`; they compile only with `--features conformance`.
