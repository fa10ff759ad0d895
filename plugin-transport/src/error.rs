use http::StatusCode;

/// An error a handler returns to its caller. Docker shows `message` to the user, so it must say
/// what was wrong and, for bad input, name the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PluginError {
    pub status: StatusCode,
    pub message: String,
}

impl PluginError {
    /// Bad input from the caller.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// Something that exists already or is in use.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::CONFLICT,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    /// A failure on our side (backend, store, timeout).
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("request body is larger than the limit of {limit} bytes"),
        }
    }

    /// Docker's error body. Both keys are set: the volume and network clients read `Err`, the
    /// IPAM client reads `Error` (docs/protocols.md §1); each ignores the other.
    pub fn to_body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "Err": self.message, "Error": self.message }))
            .expect("a JSON object of two strings always serializes")
    }
}
