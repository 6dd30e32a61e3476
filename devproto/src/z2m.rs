//! Placeholder module, filled by its protocol work.
