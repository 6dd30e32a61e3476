//! Pure domain of the OTA rollout system.
