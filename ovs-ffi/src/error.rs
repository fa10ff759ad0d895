use std::time::Duration;

/// Every failure of this crate. Bad data from the peer is [`Error::Protocol`] (never a panic).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connect to {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("I/O error on {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} timed out after {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("connection to {0} closed")]
    Disconnected(String),
    /// The peer sent something that is not valid protocol (truncated, oversized, wrong ids...).
    #[error("protocol error from {peer}: {reason}")]
    Protocol { peer: String, reason: String },
    /// An OVSDB JSON-RPC call answered with an error.
    #[error("OVSDB {method} failed: {error}")]
    Ovsdb { method: String, error: String },
    /// One operation of an OVSDB transaction failed (the whole transaction was rolled back).
    #[error("OVSDB transaction failed at operation {index} ({op}): {error}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
    Transaction {
        index: usize,
        op: String,
        error: String,
        details: String,
    },
    /// The switch answered an OpenFlow request with an error message.
    #[error("OpenFlow error: {0}")]
    OpenFlow(crate::openflow::OfError),
    /// A caller-supplied value breaks a rule (named field and rule).
    #[error("invalid {field}: {rule}")]
    Invalid { field: String, rule: String },
    #[error("{0} not found")]
    NotFound(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn protocol(peer: &str, reason: impl Into<String>) -> Self {
        Error::Protocol {
            peer: peer.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            rule: rule.into(),
        }
    }

    /// True when retrying on a fresh connection may succeed (the request may not have run).
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. } | Error::Io { .. } | Error::Disconnected(_)
        )
    }
}
