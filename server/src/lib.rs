//! otad: the central OTA rollout server.
