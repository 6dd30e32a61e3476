//! Golden help: `otactl -h` and `otactl --help` for every command and command group, byte for
//! byte, against `tests/golden/help.txt`.
//!
//! The help texts are part of otactl's interface (people read them, docs quote them), so a
//! change must be deliberate: run with `OTACTL_UPDATE_GOLDEN=1` to rewrite the file, then
//! review the diff. The command tree is discovered from the help output itself (the
//! `Commands:` sections), so a new command is covered without touching this file.

use std::path::PathBuf;
use std::process::Command;

/// Runs `otactl <args>` and returns its stdout; help is printed on stdout with exit code 0.
fn otactl(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_otactl"))
        .args(args)
        // Help shows the current value of these, and wraps to COLUMNS.
        .env_remove("OTACTL_SERVER")
        .env_remove("OTACTL_TOKEN")
        .env_remove("OTACTL_CA_CERT")
        .env_remove("COLUMNS")
        .env_remove("LINES")
        .output()
        .expect("run otactl");
    assert!(
        out.status.success(),
        "otactl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The subcommands a help text lists (without clap's `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim_end() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .map(|name| name.trim_end_matches(',').to_string())
        .filter(|name| name != "help")
        .collect()
}

/// Every command path, depth first, in the order the help lists them.
fn walk(path: &mut Vec<String>, out: &mut String) {
    let args: Vec<&str> = path.iter().map(String::as_str).collect();
    let mut short = args.clone();
    short.push("-h");
    let mut long = args.clone();
    long.push("--help");
    let shown = if args.is_empty() {
        "otactl".to_string()
    } else {
        format!("otactl {}", args.join(" "))
    };
    let short_help = otactl(&short);
    let long_help = otactl(&long);
    out.push_str(&format!("=== {shown} -h\n{short_help}"));
    out.push_str(&format!("=== {shown} --help\n{long_help}"));
    for sub in subcommands(&long_help) {
        path.push(sub);
        walk(path, out);
        path.pop();
    }
}

#[test]
fn help_texts_are_unchanged() {
    let mut all = String::new();
    walk(&mut Vec::new(), &mut all);
    for group in [
        "server", "firmware", "device", "rollout", "events", "site", "token", "pki",
    ] {
        assert!(
            all.contains(&format!("=== otactl {group} --help\n")),
            "the walk missed `{group}`"
        );
    }
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/help.txt");
    if std::env::var_os("OTACTL_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden.parent().expect("golden dir")).expect("golden dir");
        std::fs::write(&golden, &all).expect("write golden help");
        return;
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (OTACTL_UPDATE_GOLDEN=1 writes it)",
            golden.display()
        )
    });
    if expected != all {
        let first = expected
            .lines()
            .zip(all.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(all.lines().count()));
        panic!(
            "otactl help changed (first difference at line {}):\n  golden: {:?}\n  now:    {:?}\n\
             Run with OTACTL_UPDATE_GOLDEN=1 to accept the change, then review the diff of {}.",
            first + 1,
            expected.lines().nth(first).unwrap_or("<end>"),
            all.lines().nth(first).unwrap_or("<end>"),
            golden.display()
        );
    }
}
