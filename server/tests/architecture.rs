//! ARCHITECTURE.md's layering invariants for otad, checked on the source: protobuf and
//! `tonic::Status` only at the API edge, sled and PostgreSQL only in the store. A new use elsewhere fails here
//! with the file and line; a module that stops needing an exception must leave the list below.

use std::path::{Path, PathBuf};

/// Modules outside `api/` allowed to name protobuf types, each with its reason.
const PROTOBUF_EDGE: &[(&str, &str)] = &[(
    "wiring.rs",
    "mounts the api services on the tonic server (the gRPC edge)",
)];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Code lines (comments dropped) of every source file, with its path relative to `src/`.
fn code_lines() -> Vec<(String, usize, String)> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let rel = path
            .strip_prefix(src())
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(&path).expect("read source");
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            if !code.trim().is_empty() {
                out.push((rel.clone(), i + 1, code.to_string()));
            }
        }
    }
    out
}

/// Whether `code` names `needle` as a path of its own (`Status::` but not `UpgradeStatus::`).
fn names(code: &str, needle: &str) -> bool {
    code.match_indices(needle).any(|(i, _)| {
        !code[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

fn offenders(allowed: impl Fn(&str) -> bool, needles: &[&str]) -> Vec<String> {
    code_lines()
        .into_iter()
        .filter(|(file, _, _)| !allowed(file))
        .filter(|(_, _, code)| needles.iter().any(|n| names(code, n)))
        .map(|(file, line, code)| format!("server/src/{file}:{line}: {}", code.trim()))
        .collect()
}

#[test]
fn only_the_api_edge_knows_protobuf_and_tonic_status() {
    let bad = offenders(
        |f| f.starts_with("api/") || PROTOBUF_EDGE.iter().any(|(e, _)| *e == f),
        &["ota_proto", "pb::", "tonic::Status", "Status::"],
    );
    assert!(
        bad.is_empty(),
        "protobuf or tonic::Status outside server/src/api (ARCHITECTURE.md, Invariants):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_protobuf_exceptions_are_still_needed() {
    let lines = code_lines();
    for (file, why) in PROTOBUF_EDGE {
        assert!(
            lines
                .iter()
                .any(|(f, _, code)| f == file && (names(code, "pb::") || names(code, "ota_proto"))),
            "{file} no longer uses protobuf ({why}): remove it from PROTOBUF_EDGE and from ARCHITECTURE.md"
        );
    }
}

#[test]
fn only_the_store_knows_sled() {
    let bad = offenders(|f| f.starts_with("store/"), &["sled::", "use sled"]);
    assert!(
        bad.is_empty(),
        "sled outside server/src/store (ARCHITECTURE.md, Invariants):\n{}",
        bad.join("\n")
    );
}

#[test]
fn only_the_store_knows_postgres() {
    let bad = offenders(
        |f| f.starts_with("store/"),
        &["tokio_postgres", "postgres_types"],
    );
    assert!(
        bad.is_empty(),
        "the PostgreSQL driver outside server/src/store (ARCHITECTURE.md, Invariants):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_loops_do_not_reach_into_the_api() {
    // Layering runs api -> loops -> core, never back: the loops (and what they send to agents)
    // use no api module.
    let loops = [
        "dispatch.rs",
        "rollouts.rs",
        "reconcile_loop.rs",
        "core.rs",
        "checks.rs",
        "sessions.rs",
        "to_agent.rs",
    ];
    let bad = offenders(|f| !loops.contains(&f), &["api::"]);
    assert!(
        bad.is_empty(),
        "a loop uses the api layer:\n{}",
        bad.join("\n")
    );
}

/// Product crates whose `src/` the function-length rule covers (generated code is not).
const PRODUCT_CRATES: &[&str] = &[
    "agent",
    "ctl",
    "devproto",
    "domain",
    "firmware",
    "quickstart",
    "server",
    "sim",
    "telemetry",
];

/// Longest product function without a written reason (ARCHITECTURE.md, Conventions).
const MAX_FN_LINES: usize = 120;

/// Brace depth change of a line, ignoring comments, string and char literals.
fn brace_delta(line: &str) -> (i64, bool) {
    let code = line.split("//").next().unwrap_or_default();
    let (mut delta, mut opened, mut in_str) = (0i64, false, false);
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_str => {
                chars.next();
            }
            '"' => in_str = !in_str,
            '\'' if !in_str => {
                // A char literal ('{', '\'') is skipped; a lifetime ('a) is not a literal.
                let rest: String = chars.clone().take(3).collect();
                if rest.starts_with('\\') || rest.chars().nth(1) == Some('\'') {
                    while let Some(n) = chars.next() {
                        if n == '\\' {
                            chars.next();
                        } else if n == '\'' {
                            break;
                        }
                    }
                }
            }
            '{' if !in_str => {
                delta += 1;
                opened = true;
            }
            '}' if !in_str => delta -= 1,
            _ => {}
        }
    }
    (delta, opened)
}

/// Index of the line that ends the item starting at `start` (its braces balanced, or its `;`).
fn item_end(lines: &[&str], start: usize) -> usize {
    let (mut depth, mut started) = (0i64, false);
    for (i, line) in lines.iter().enumerate().skip(start) {
        let (delta, opened) = brace_delta(line);
        depth += delta;
        started |= opened;
        if (started && depth <= 0) || (!started && line.trim_end().ends_with(';')) {
            return i;
        }
    }
    lines.len().saturating_sub(1)
}

fn is_fn_start(line: &str) -> bool {
    let mut words = line.split_whitespace().peekable();
    while let Some(w) = words.peek() {
        if w.starts_with("pub") || ["const", "async", "unsafe", "extern"].contains(w) {
            words.next();
        } else {
            break;
        }
    }
    words.next() == Some("fn")
}

#[test]
fn no_long_product_function_without_a_reason() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut long = Vec::new();
    for krate in PRODUCT_CRATES {
        let mut files = Vec::new();
        rust_files(&root.join(krate).join("src"), &mut files);
        for path in files {
            let shown = path
                .strip_prefix(&root)
                .unwrap_or(&path)
                .display()
                .to_string();
            if shown.contains("/gen/") || shown.ends_with("tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read source");
            let lines: Vec<&str> = text.lines().collect();
            let mut i = 0;
            while i < lines.len() {
                if lines[i].contains("#[cfg(test)]") {
                    i = item_end(&lines, i + 1) + 1;
                    continue;
                }
                if is_fn_start(lines[i]) {
                    let end = item_end(&lines, i);
                    let length = end - i + 1;
                    let above = lines[..i]
                        .iter()
                        .rev()
                        .skip_while(|l| l.trim_start().starts_with("#["))
                        .take(6)
                        .any(|l| l.contains("long-fn:"));
                    if length > MAX_FN_LINES && !above {
                        long.push(format!("{shown}:{} ({length} lines)", i + 1));
                    }
                }
                i += 1;
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines: split them along their steps, or write \
         `// long-fn: <why>` above one that is honestly one table:\n{}",
        long.join("\n")
    );
}
