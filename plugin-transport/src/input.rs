//! Helpers for echoing what a caller sent: an error must name the offending value, but a
//! 1 MiB name must not make a 2 MiB answer (Docker gets `Err` and `Error`) and megabytes of log.

use std::fmt;

/// Characters of a caller's value an error or log line quotes; the rest is counted, not shown.
pub const QUOTE_CHARS: usize = 64;

/// A caller's value quoted for an error or a log line: `"abc"`, or for a long one its first
/// [`QUOTE_CHARS`] characters and its length, `"abcd…" (1048576 bytes)`. Control characters
/// are escaped, so a value cannot forge log lines.
pub fn quoted(value: &str) -> Quoted<'_> {
    Quoted(value)
}

pub struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(QUOTE_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => {
                let head = format!("{:?}", &self.0[..cut]);
                // `head` ends with the closing quote; the ellipsis goes inside it.
                let open = &head[..head.len() - 1];
                write!(f, "{open}…\" ({} bytes)", self.0.len())
            }
        }
    }
}

impl fmt::Debug for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The first `n` characters of `s` (never splits a character, unlike byte slicing).
pub fn prefix_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((cut, _)) => &s[..cut],
        None => s,
    }
}

/// Short form of a Docker id, as `docker network ls` shows it: its first 12 characters.
pub fn short_id(id: &str) -> &str {
    prefix_chars(id, 12)
}

/// Longest id a plugin accepts: Docker's are 64 hex digits; names used as ids stay under this.
pub const ID_MAX: usize = 128;

/// Checks an id Docker sends (NetworkID, EndpointID, PoolID, volume ID): Docker's alphabet
/// only (ASCII letters, digits, `_`, `.`, `-`), not empty, at most [`ID_MAX`] characters. Ids
/// become keys, port names and log fields, so nothing else may pass. The error names `field`.
pub fn check_id(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!(
            "{field} is empty (a retried request from Docker can lose its body); nothing was done"
        ));
    }
    if value.len() > ID_MAX {
        return Err(format!(
            "{field} {}: longer than {ID_MAX} characters",
            quoted(value)
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "{field} {}: {c:?} is not allowed (only letters, digits, '_', '.', '-')",
            quoted(value)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_is_bounded_and_escaped() {
        assert_eq!(quoted("abc").to_string(), "\"abc\"");
        assert_eq!(quoted("a\nb").to_string(), "\"a\\nb\"");
        let big = "x".repeat(1 << 20);
        let q = quoted(&big).to_string();
        assert!(q.len() < 120, "{q}");
        assert!(q.ends_with("…\" (1048576 bytes)"), "{q}");
        // Multi-byte characters are cut on a character boundary.
        let wide = "é".repeat(100);
        assert!(quoted(&wide).to_string().starts_with("\"éé"));
    }

    #[test]
    fn short_id_never_splits_a_character() {
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
        // 11 ASCII bytes then a 2-byte character across byte 12: byte slicing panics here.
        let id = "01234567890é123";
        assert_eq!(short_id(id), "01234567890é");
    }

    #[test]
    fn ids_use_dockers_alphabet() {
        assert!(check_id("NetworkID", &"a1".repeat(32)).is_ok());
        assert!(check_id("NetworkID", "net_1.x-y").is_ok());
        for bad in ["", "a/b", "..\u{0}", "é", "a b", &"x".repeat(129)] {
            let e = check_id("NetworkID", bad).unwrap_err();
            assert!(e.starts_with("NetworkID"), "{e}");
        }
        let e = check_id("EndpointID", &"é".repeat(1 << 19)).unwrap_err();
        assert!(e.len() < 200, "{}", e.len());
    }
}
