//! `deploy/otad.example.toml` is loaded by otad's own configuration loader, names every key the
//! loader knows, and the `OTAD_*` variables of the compose file and the systemd unit exist.
//!
//! Only reads files of this repository; starts nothing.

use std::path::{Path, PathBuf};

use ota_server::config::{Config, Flags};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_file(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

#[test]
fn the_example_loads_with_tls_and_metrics() {
    let flags = Flags {
        config: Some(repo_file("deploy/otad.example.toml")),
        ..Flags::default()
    };
    let c = Config::load(&flags, None).unwrap_or_else(|e| panic!("deploy/otad.example.toml: {e}"));
    assert_eq!(c.listen, "0.0.0.0:7600".parse().unwrap());
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/otad"));
    assert!(!c.insecure_plaintext, "the example must be a TLS setup");
    let tls = c.tls.expect("TLS files");
    assert_eq!(tls.cert, PathBuf::from("/etc/otad/server.pem"));
    assert_eq!(tls.client_ca, Some(PathBuf::from("/etc/otad/ca.pem")));
    assert_eq!(c.metrics_listen, Some("127.0.0.1:9600".parse().unwrap()));
}

/// Field names of `struct FileConfig` in server/src/config.rs: the keys the loader accepts.
fn file_config_keys() -> Vec<String> {
    let src = read("server/src/config.rs");
    let start = src
        .find("struct FileConfig {")
        .expect("server/src/config.rs has no `struct FileConfig`");
    let body = &src[start..];
    let body = &body[..body.find("\n}").expect("end of FileConfig")];
    body.lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.starts_with("//") && !l.starts_with("#["))
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim_start_matches("pub ").trim().to_string())
        .filter(|n| !n.is_empty())
        .collect()
}

#[test]
fn the_example_names_every_key_with_a_comment() {
    let example = read("deploy/otad.example.toml");
    let keys = file_config_keys();
    assert!(keys.len() >= 10, "parsed too few keys: {keys:?}");
    for key in keys {
        // `key = ...` or `# key = ...` (a commented default) or the `[key]` table.
        let named = example.lines().any(|l| {
            let l = l.trim_start_matches('#').trim();
            l.starts_with(&format!("{key} =")) || l == format!("[{key}]")
        });
        assert!(
            named,
            "deploy/otad.example.toml does not mention the config key `{key}`: add it with a comment"
        );
    }
    // Every setting carries a comment or follows one.
    let lines: Vec<&str> = example.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with('[') {
            continue;
        }
        // A trailing comment, or a comment right above its group of settings.
        let above = lines[..i]
            .iter()
            .rev()
            .map(|l| l.trim())
            .find(|l| l.is_empty() || l.starts_with('#') || l.starts_with('['));
        let commented = l.contains(" #") || above.is_some_and(|a| a.starts_with('#'));
        assert!(
            commented,
            "deploy/otad.example.toml line {}: `{l}` has no comment",
            i + 1
        );
    }
}

#[test]
fn compose_and_systemd_use_only_existing_otad_variables() {
    let config_src = read("server/src/config.rs");
    for file in ["deploy/compose.yaml", "deploy/systemd/otad.service"] {
        let text = read(file);
        let mut rest = text.as_str();
        while let Some(i) = rest.find("OTAD_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if name == "OTAD_" {
                // `OTAD_*` in a comment.
                rest = &rest[i + name.len()..];
                continue;
            }
            assert!(
                config_src.contains(&format!("\"{name}\"")),
                "{file} sets {name}, which otad does not read (server/src/config.rs)"
            );
            rest = &rest[i + name.len()..];
        }
    }
}
