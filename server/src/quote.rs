//! What a client sent, as errors and logs may show it: [`quote`] keeps at most [`MAX_QUOTED`]
//! characters of the input, escaped and in double quotes, with `…` when it cut something off.
//!
//! Every error message and log line that repeats an input (an id, a name, a site, a zone, a
//! task id an agent reported) goes through this one helper, so a 1 MB field never becomes a
//! 1 MB gRPC trailer (which the client would see as a transport error) or a 1 MB log line.
//! Values the server made itself (ids it generated, counts) need no quoting.

use std::fmt;

/// Most characters of an input an error or a log line repeats.
pub const MAX_QUOTED: usize = 100;

/// An input, quoted for a message: see [`quote`].
#[derive(Clone, Copy)]
pub struct Quoted<'a>(&'a str);

/// At most [`MAX_QUOTED`] characters of `s`, escaped like `{:?}` (control characters
/// included), in double quotes, `…` inside the quotes when `s` is longer. Use it with `{}` in
/// `format!` and with `%` in `tracing` fields.
pub fn quote(s: &str) -> Quoted<'_> {
    Quoted(s)
}

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(MAX_QUOTED) {
            None => write!(f, "{:?}", self.0),
            Some((end, _)) => {
                let mut cut = String::with_capacity(end + 3);
                cut.push_str(&self.0[..end]);
                cut.push('…');
                write!(f, "{cut:?}")
            }
        }
    }
}

impl fmt::Debug for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_inputs_are_quoted_whole() {
        assert_eq!(quote("home/lamp").to_string(), "\"home/lamp\"");
        assert_eq!(quote("").to_string(), "\"\"");
        assert_eq!(quote("a\nb").to_string(), "\"a\\nb\"");
        let exactly = "x".repeat(MAX_QUOTED);
        assert_eq!(quote(&exactly).to_string(), format!("\"{exactly}\""));
    }

    #[test]
    fn long_inputs_keep_100_characters() {
        let big = "é".repeat(1024 * 1024);
        let q = quote(&big).to_string();
        assert_eq!(
            q.chars().count(),
            MAX_QUOTED + 3,
            "100 characters, … and the quotes"
        );
        assert!(q.ends_with("…\""));
        // Escapes count as the one character they stand for.
        let ctl = "\u{1}".repeat(500);
        let q = quote(&ctl).to_string();
        assert_eq!(q.matches("\\u{1}").count(), MAX_QUOTED);
    }
}
