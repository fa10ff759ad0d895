//! JSON-RPC 1.0 framing as OVSDB uses it: concatenated JSON objects with no length prefix.

use serde_json::Value;

/// Splits a byte stream into JSON values, keeping an incomplete tail for the next read.
pub struct JsonFramer {
    buf: Vec<u8>,
    max: usize,
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
        }
    }

    /// Feeds bytes; returns every complete message they finish.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Value>, FrameError> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        let mut consumed = 0;
        {
            let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
            loop {
                match it.next() {
                    None => {
                        consumed = it.byte_offset();
                        break;
                    }
                    Some(Ok(v)) => {
                        if !v.is_object() {
                            return Err(FrameError::Malformed(
                                "top-level value is not an object".into(),
                            ));
                        }
                        out.push(v);
                        consumed = it.byte_offset();
                    }
                    // A message cut by the read boundary: wait for more bytes.
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => return Err(FrameError::Malformed(e.to_string())),
                }
            }
        }
        self.buf.drain(..consumed);
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
