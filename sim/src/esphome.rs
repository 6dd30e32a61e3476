//! Simulator module; filled by its simulator work.
