//! `deploy/agent.example.toml` (a site with every transport) and `deploy/agent.compose.toml`
//! (the compose stack's agent) are loaded by the agent's own configuration loader, and the
//! example names every top-level key the loader knows.
//!
//! Only reads files of this repository; starts nothing.

use std::path::{Path, PathBuf};

use ota_agent::config::AgentConfig;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn load(rel: &str) -> AgentConfig {
    AgentConfig::load(&repo_file(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn the_example_loads_with_every_transport() {
    let c = load("deploy/agent.example.toml");
    assert_eq!(c.site_id, "home");
    assert!(c.server.starts_with("https://"));
    assert!(c.tls.is_some());
    assert_eq!(c.zigbee2mqtt.len(), 1);
    assert!(c.zigbee2mqtt[0].image_endpoint.is_some());
    assert_eq!(c.esphome.as_ref().map(|e| e.devices.len()), Some(2));
    assert_eq!(c.serial.as_ref().map(|s| s.ports.len()), Some(1));
    // No trusted keys in the example (they are placeholders): unsigned images allowed, and the
    // agent says so loudly at start.
    assert!(!c.trust_policy().unwrap().require_signed());
}

#[test]
fn the_compose_config_loads() {
    let c = load("deploy/agent.compose.toml");
    assert_eq!(c.site_id, "home");
    assert_eq!(c.server, "https://otad:7600");
    assert_eq!(c.zigbee2mqtt.len(), 1);
    assert_eq!(c.zigbee2mqtt[0].host, "mosquitto");
}

/// Public field names of `struct AgentConfig` in agent/src/config.rs (serde-skipped ones aside).
fn top_level_keys() -> Vec<String> {
    let path = repo_file("agent/src/config.rs");
    let src = std::fs::read_to_string(&path).unwrap();
    let start = src
        .find("pub struct AgentConfig {")
        .expect("agent/src/config.rs has no `pub struct AgentConfig`");
    let body = &src[start..];
    let body = &body[..body.find("\n}").expect("end of AgentConfig")];
    let mut keys = Vec::new();
    let mut skipped = false;
    for line in body.lines().skip(1).map(str::trim) {
        if line.starts_with("#[serde(skip") {
            skipped = true;
        } else if let Some(field) = line.strip_prefix("pub ")
            && let Some((name, _)) = field.split_once(':')
            && !std::mem::take(&mut skipped)
        {
            keys.push(name.trim().to_string());
        }
    }
    keys
}

#[test]
fn the_example_names_every_top_level_key() {
    let example = std::fs::read_to_string(repo_file("deploy/agent.example.toml")).unwrap();
    let keys = top_level_keys();
    assert!(keys.len() >= 10, "parsed too few keys: {keys:?}");
    for key in keys {
        let named = example.lines().any(|l| {
            let l = l.trim_start_matches('#').trim();
            l.starts_with(&format!("{key} ="))
                || l.starts_with(&format!("[{key}]"))
                || l.starts_with(&format!("[{key}."))
                || l.starts_with(&format!("[[{key}]]"))
        });
        assert!(
            named,
            "deploy/agent.example.toml does not mention the config key `{key}`: add it with a comment"
        );
    }
}
