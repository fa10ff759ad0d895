//! JSON-RPC 1.0 framing as OVSDB uses it: concatenated JSON objects with no length prefix.

use serde_json::Value;

/// Splits a byte stream into JSON values, keeping an incomplete tail for the next read.
///
/// Each byte is scanned once for the end of its top-level object (depth of braces and
/// brackets outside strings), and only a complete object is parsed: re-parsing the tail on
/// every read would make a large reply, which arrives in many reads, cost quadratic time.
pub struct JsonFramer {
    buf: Vec<u8>,
    max: usize,
    /// Bytes of `buf` already scanned, and the scanner's state after them.
    scanned: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// Bytes examined since creation (for tests of the linear cost).
    examined: u64,
}

/// Why a stream cannot be framed; the connection is unusable after any of these.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A single message grew beyond the limit without completing (hostile or broken peer).
    Oversized { limit: usize },
    /// Bytes that are not JSON, or a top-level value that is not an object.
    Malformed(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Oversized { limit } => {
                write!(f, "message larger than {limit} bytes")
            }
            FrameError::Malformed(m) => write!(f, "malformed JSON-RPC frame: {m}"),
        }
    }
}

impl JsonFramer {
    pub fn new(max: usize) -> Self {
        JsonFramer {
            buf: Vec::new(),
            max,
            scanned: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            examined: 0,
        }
    }

    /// Feeds bytes; returns every complete message they finish.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Value>, FrameError> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = self.scanned;
        while i < self.buf.len() {
            let b = self.buf[i];
            self.examined += 1;
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
            } else if self.depth == 0 {
                match b {
                    b' ' | b'\t' | b'\r' | b'\n' => start = i + 1,
                    b'{' => self.depth = 1,
                    _ => {
                        return Err(FrameError::Malformed(
                            "top-level value is not an object".into(),
                        ))
                    }
                }
            } else {
                match b {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            let v: Value = serde_json::from_slice(&self.buf[start..=i])
                                .map_err(|e| FrameError::Malformed(e.to_string()))?;
                            out.push(v);
                            start = i + 1;
                        }
                    }
                    _ => {}
                }
            }
            i += 1;
        }
        self.buf.drain(..start);
        self.scanned = self.buf.len();
        if self.buf.len() > self.max {
            return Err(FrameError::Oversized { limit: self.max });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_keeps_tail() {
        let mut f = JsonFramer::new(1024);
        let v = f.push(br#"{"a":1}{"b":"#).unwrap();
        assert_eq!(v.len(), 1);
        let v = f.push(br#"2} {"c":[1,2]}"#).unwrap();
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn strings_with_braces_and_escapes() {
        let mut f = JsonFramer::new(1024);
        let v = f.push(br#"{"a":"}{\"]"}"#).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0]["a"], "}{\"]");
        let v = f.push(br#"{"b":"x\\"}"#).unwrap();
        assert_eq!(v[0]["b"], "x\\");
    }

    #[test]
    fn a_large_reply_in_many_reads_is_scanned_once() {
        // 4 MiB in 1 KiB reads: re-parsing the tail on every read examined ~8 GiB.
        let big = format!(
            r#"{{"rows":[{}]}}"#,
            vec![r#"{"n":"x"}"#; 450_000].join(",")
        );
        let mut f = JsonFramer::new(16 << 20);
        let mut got = Vec::new();
        for chunk in big.as_bytes().chunks(1024) {
            got.extend(f.push(chunk).unwrap());
        }
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["rows"].as_array().unwrap().len(), 450_000);
        assert!(
            f.examined <= big.len() as u64,
            "{} > {}",
            f.examined,
            big.len()
        );
    }

    #[test]
    fn rejects_garbage_and_oversize() {
        assert!(JsonFramer::new(1024).push(b"}{").is_err());
        assert!(JsonFramer::new(1024).push(b"[1]").is_err());
        let mut f = JsonFramer::new(16);
        assert_eq!(
            f.push(br#"{"a":"0123456789abcdef"#),
            Err(FrameError::Oversized { limit: 16 })
        );
    }
}
