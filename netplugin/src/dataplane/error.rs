//! Errors of the datapath seam. Typed so that a caller can tell "OVS is unreachable" (retry
//! later, nothing was wrong with the request) from a refusal by OVS or the kernel, while the
//! messages stay the ones Docker has always shown.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// No OVSDB connection: the message says where we tried and what to check.
    #[error("{0}")]
    Unreachable(String),
    /// OVSDB or OpenFlow answered with an error (or timed out); `context` names the object.
    #[error("{context}: {source}")]
    Ovs {
        context: String,
        #[source]
        source: ovs_ffi::Error,
    },
    /// A netlink or ethtool request on one interface failed.
    #[error("{what} {name}: {source}")]
    Netlink {
        what: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
    /// ovs-vswitchd has not opened our bridge; the message carries OVS's reason as far as
    /// OVSDB and the namespace show it.
    #[error("{0}")]
    BridgeNotOpen(String),
    /// An interface name that is not berth's own: nothing was done to it.
    #[error("{0}")]
    Refused(String),
    /// Blocking work (netlink) did not run to its end (panicked or timed out).
    #[error("{0}")]
    Worker(String),
    /// Every failure of a teardown that carried on past each of them.
    #[error("{0}")]
    Several(DataplaneErrors),
}

impl DataplaneError {
    pub fn ovs(context: impl Into<String>, source: ovs_ffi::Error) -> Self {
        DataplaneError::Ovs {
            context: context.into(),
            source,
        }
    }

    pub fn netlink(what: &'static str, name: &str, source: io::Error) -> Self {
        DataplaneError::Netlink {
            what,
            name: name.to_string(),
            source,
        }
    }

    /// Whether OVS could not be reached at all (as opposed to refusing what was asked).
    pub fn is_unreachable(&self) -> bool {
        match self {
            DataplaneError::Unreachable(_) => true,
            DataplaneError::Several(list) => list.0.iter().any(DataplaneError::is_unreachable),
            _ => false,
        }
    }
}

/// Failures collected while tearing down (netavark's `NetavarkErrorList`): each step is tried
/// even when an earlier one failed, and every failure is reported.
#[derive(Debug, Default)]
pub struct DataplaneErrors(pub Vec<DataplaneError>);

impl DataplaneErrors {
    pub fn push(&mut self, e: DataplaneError) {
        self.0.push(e);
    }

    /// `Ok` when nothing failed, the one error itself when one did, else all of them.
    pub fn into_result(mut self) -> Result<(), DataplaneError> {
        match self.0.len() {
            0 => Ok(()),
            1 => Err(self.0.remove(0)),
            _ => Err(DataplaneError::Several(self)),
        }
    }
}

impl std::fmt::Display for DataplaneErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

pub type DpResult<T> = Result<T, DataplaneError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collected_errors_read_like_one_message() {
        let mut list = DataplaneErrors::default();
        assert!(DataplaneErrors::default().into_result().is_ok());
        list.push(DataplaneError::netlink(
            "deleting veth",
            "vb1",
            io::Error::other("boom"),
        ));
        list.push(DataplaneError::Unreachable("OVS down".into()));
        let e = list.into_result().unwrap_err();
        assert_eq!(e.to_string(), "deleting veth vb1: boom; OVS down");
        assert!(e.is_unreachable());
    }
}
