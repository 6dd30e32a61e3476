//! Transport driver; filled by its transport work.
