//! Tests of ESPHome OTA across modules: golden transcripts, two-party simulation, properties.

mod pair;
