use plugin_transport::PluginError;

use crate::spec::human_size;

/// Everything a volume operation can fail with. Messages reach the docker user verbatim.
#[derive(Debug, thiserror::Error)]
pub enum VolError {
    #[error("invalid volume name {name:?}: {why}")]
    InvalidName { name: String, why: String },
    #[error("invalid option {option}: {why}")]
    InvalidOption { option: String, why: String },
    #[error("no such volume: {0}")]
    NotFound(String),
    #[error("volume {name} is in use: mounted {mounts} time(s) (mount IDs: {ids}); stop the containers using it first")]
    InUse {
        name: String,
        mounts: u32,
        ids: String,
    },
    #[error("volume {name} exists with different settings ({existing}); remove it first or use another name")]
    Conflict { name: String, existing: String },
    #[error(
        "mount ID is empty (a retried request from Docker can lose its body); nothing was done"
    )]
    EmptyMountId,
    #[error("{operation} {name}: {message}")]
    Backend {
        operation: &'static str,
        name: String,
        message: String,
    },
    #[error("metadata store: {0}")]
    Store(String),
    #[error("{operation} {name} did not finish within {secs} s; it goes on in the background and is reconciled")]
    Timeout {
        operation: &'static str,
        name: String,
        secs: u64,
    },
    /// Another call holds the volume longer than this one waits for it; nothing was done.
    #[error("{0}; nothing was done")]
    Busy(#[from] plugin_transport::sync::Busy),
}

impl VolError {
    pub fn backend(operation: &'static str, name: &str, message: impl std::fmt::Display) -> Self {
        VolError::Backend {
            operation,
            name: name.to_string(),
            message: message.to_string(),
        }
    }
}

impl From<VolError> for PluginError {
    fn from(e: VolError) -> Self {
        let message = e.to_string();
        match e {
            VolError::InvalidName { .. }
            | VolError::InvalidOption { .. }
            | VolError::EmptyMountId => PluginError::bad_request(message),
            VolError::NotFound(_) => PluginError::not_found(message),
            VolError::InUse { .. } | VolError::Conflict { .. } => PluginError::conflict(message),
            VolError::Backend { .. } | VolError::Store(_) | VolError::Timeout { .. } => {
                PluginError::internal(message)
            }
            VolError::Busy(_) => PluginError::unavailable(message),
        }
    }
}

impl From<redb::Error> for VolError {
    fn from(e: redb::Error) -> Self {
        VolError::Store(e.to_string())
    }
}

pub(crate) fn describe_spec(spec: &crate::spec::VolumeSpec) -> String {
    format!(
        "size={} fs={}",
        human_size(spec.size_bytes),
        spec.fs.as_str()
    )
}
