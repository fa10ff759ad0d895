//! Errors of network and IPAM operations. Messages reach the docker user verbatim.

use plugin_transport::PluginError;

use crate::dataplane::DataplaneError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Bad input: the message names the field and the rule.
    #[error("{0}")]
    Invalid(String),
    /// Taken by someone else (VLAN, subnet, address): the message names who.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Open vSwitch or the kernel refused or is unreachable ([`DataplaneError::is_unreachable`]).
    #[error(transparent)]
    Datapath(#[from] DataplaneError),
    #[error("{what} did not finish within {secs} s")]
    Timeout { what: String, secs: u64 },
    /// Another call holds the object longer than this one waits for it.
    #[error(transparent)]
    Busy(#[from] plugin_transport::sync::Busy),
}

impl NetError {
    pub fn invalid(m: impl Into<String>) -> Self {
        NetError::Invalid(m.into())
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        NetError::Conflict(m.into())
    }
}

impl From<NetError> for PluginError {
    fn from(e: NetError) -> Self {
        let message = e.to_string();
        match e {
            NetError::Invalid(_) => PluginError::bad_request(message),
            NetError::Conflict(_) => PluginError::conflict(message),
            NetError::NotFound(_) => PluginError::not_found(message),
            NetError::Store(_) | NetError::Datapath(_) | NetError::Timeout { .. } => {
                PluginError::internal(message)
            }
            NetError::Busy(_) => PluginError::unavailable(message),
        }
    }
}

pub type NetResult<T> = Result<T, NetError>;
