//! Where results go: the printer that writes either tables and lines for people or JSON for
//! scripts to stdout, and small formatting helpers shared by the human renderers.
//!
//! JSON output is one pretty-printed document per command, or compact JSON lines for streams;
//! the shapes live with each command group (`cmd/<group>`, the shared pieces in
//! [`crate::views`]), and so do the human renderings built from the same documents. Progress
//! and hints go to stderr (see [`crate::progress`]), never to stdout.

use std::io::{self, IsTerminal as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;

use crate::cli::OutputFormat;

/// Writes results to stdout in the chosen format (or, in tests, into a buffer).
#[derive(Debug, Clone)]
pub struct Printer {
    format: OutputFormat,
    capture: Option<Arc<Mutex<Vec<u8>>>>,
}

impl Printer {
    /// A printer to stdout in this format.
    pub fn new(format: OutputFormat) -> Self {
        Self {
            format,
            capture: None,
        }
    }

    /// A printer that collects its output in the returned buffer instead of stdout.
    #[cfg(test)]
    pub fn capturing(format: OutputFormat) -> (Self, Arc<Mutex<Vec<u8>>>) {
        let buf = Arc::new(Mutex::new(Vec::new()));
        (
            Self {
                format,
                capture: Some(buf.clone()),
            },
            buf,
        )
    }

    /// Whether the output is JSON.
    pub fn is_json(&self) -> bool {
        self.format == OutputFormat::Json
    }

    /// Writes bytes and flushes, so pipes see each result as it comes.
    fn write(&self, bytes: &[u8]) -> io::Result<()> {
        match &self.capture {
            Some(buf) => {
                buf.lock()
                    .map_err(|_| io::Error::other("output buffer poisoned"))?
                    .extend_from_slice(bytes);
                Ok(())
            }
            None => {
                let mut out = io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
        }
    }

    /// One JSON document (pretty-printed, followed by a newline).
    pub fn document<T: Serialize>(&self, value: &T) -> io::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
        bytes.push(b'\n');
        self.write(&bytes)
    }

    /// One JSON line (compact).
    pub fn json_line<T: Serialize>(&self, value: &T) -> io::Result<()> {
        let mut bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
        bytes.push(b'\n');
        self.write(&bytes)
    }

    /// Text for people, followed by a newline unless it already ends with one.
    pub fn text(&self, s: &str) -> io::Result<()> {
        if s.ends_with('\n') {
            self.write(s.as_bytes())
        } else {
            self.write(format!("{s}\n").as_bytes())
        }
    }

    /// Prints `value` as JSON, or `human()` as text.
    pub fn show<T: Serialize>(
        &self,
        value: &T,
        human: impl FnOnce(&T) -> String,
    ) -> io::Result<()> {
        if self.is_json() {
            self.document(value)
        } else {
            self.text(&human(value))
        }
    }
}

/// Writes a note for people to stderr: only in table mode and when stderr is a terminal, so
/// scripts see nothing but the result and, on failure, the one error line.
pub fn note(printer: &Printer, msg: &str) {
    if !printer.is_json() && io::stderr().is_terminal() {
        eprintln!("{msg}");
    }
}

/// Whether stdin is a terminal someone can answer questions on.
pub fn stdin_is_tty() -> bool {
    io::stdin().is_terminal()
}

/// A table for people: no borders, upper-case headers, wrapped to the terminal width.
pub fn table(headers: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(headers.iter().map(|h| h.to_ascii_uppercase()));
    // Unit tests render as into a pipe (no wrapping), whatever terminal runs them.
    #[cfg(test)]
    t.force_no_tty();
    t
}

/// A two-column "field  value" block for detail views.
pub fn fields(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut s = String::new();
    for (k, v) in rows {
        let v = if v.is_empty() { "-" } else { v.as_str() };
        let mut lines = v.lines();
        let first = lines.next().unwrap_or("-");
        s.push_str(&format!("{k:<width$}  {first}\n"));
        for more in lines {
            s.push_str(&format!("{:<width$}  {more}\n", ""));
        }
    }
    s
}

/// Appends a titled, indented block ("\nTitle:\n  line\n  line\n") to a detail view.
pub fn section(out: &mut String, title: &str, body: &str) {
    out.push('\n');
    out.push_str(title);
    out.push_str(":\n");
    for line in body.lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
}

/// Renders a table as a string without a trailing newline; an empty body prints `none`.
pub fn render(t: &Table, empty: &str) -> String {
    if t.row_count() == 0 {
        return empty.to_string();
    }
    // NOTHING draws a leading space in each line; strip the first column's left padding.
    t.to_string()
        .lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Unix milliseconds as "2026-11-24T07:30:00Z" (UTC); `-` for 0.
pub fn fmt_time(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(0) | Err(_) => "-".to_string(),
        Ok(ms) => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
    }
}

/// Unix milliseconds with millisecond precision (event times).
pub fn fmt_time_ms(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(0) | Err(_) => "-".to_string(),
        Ok(ms) => {
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
    }
}

/// How long ago, coarsely ("45s ago", "3m ago", "2h ago", "5d ago"); `never` for 0.
pub fn fmt_ago(ms: i64, now: i64) -> String {
    if ms <= 0 {
        return "never".to_string();
    }
    let secs = (now - ms).max(0) / 1000;
    let (n, unit) = match secs {
        s if s < 60 => (s, "s"),
        s if s < 3600 => (s / 60, "m"),
        s if s < 86_400 => (s / 3600, "h"),
        s => (s / 86_400, "d"),
    };
    format!("{n}{unit} ago")
}

/// A duration in seconds, humanly ("1h 30m"); `-` for 0.
pub fn fmt_secs(secs: u64) -> String {
    if secs == 0 {
        "-".to_string()
    } else {
        crate::values::fmt_secs(secs)
    }
}

/// Bytes in binary units ("1.50 MiB").
pub fn fmt_bytes(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}

/// A number as 0x-prefixed hex, zero-padded to `digits`.
pub fn hex(n: impl Into<u64>, digits: usize) -> String {
    format!("0x{:0digits$X}", n.into())
}

/// "yes" / "no".
pub fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// "2 updating": a Tuya number with its name.
pub fn numbered(code: i32, name: &str) -> String {
    format!("{code} {name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes() {
        assert_eq!(fmt_time(0), "-");
        assert_eq!(fmt_time(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(fmt_time_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(fmt_ago(0, 10), "never");
        assert_eq!(fmt_ago(1_000, 46_000), "45s ago");
        assert_eq!(fmt_ago(1, 3 * 3_600_000 + 1), "3h ago");
        assert_eq!(fmt_secs(0), "-");
        assert_eq!(fmt_secs(600), "10m");
        assert_eq!(fmt_bytes(1536), "1.50 KiB");
        assert_eq!(hex(0x100Bu32, 4), "0x100B");
        assert_eq!(numbered(2, "updating"), "2 updating");
    }

    #[test]
    fn tables_have_no_borders_and_no_leading_space() {
        let mut t = table(&["id", "name"]);
        t.add_row(vec!["fw-1", "hue"]);
        let s = render(&t, "none");
        let first = s.lines().next().unwrap();
        assert!(first.starts_with("ID"), "{s}");
        assert!(s.contains("fw-1"));
        assert_eq!(render(&table(&["id"]), "no firmware"), "no firmware");
    }

    #[test]
    fn field_blocks_align() {
        let s = fields(&[
            ("ID", "fw-1".into()),
            ("Release notes", "a\nb".into()),
            ("X", String::new()),
        ]);
        assert_eq!(
            s,
            "ID             fw-1\nRelease notes  a\n               b\nX              -\n"
        );
    }
}
