use http::StatusCode;

/// An error a handler returns to its caller. Docker shows `message` to the user, so it must say
/// what was wrong and, for bad input, name the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PluginError {
    pub status: StatusCode,
    pub message: String,
}

/// Longest message sent to Docker or logged; a longer one is cut (each field that echoes input
/// is bounded where it is quoted; this is the backstop for the whole message).
pub const MESSAGE_MAX: usize = 2048;

impl PluginError {
    /// An error with `status`; a message over [`MESSAGE_MAX`] bytes is cut on a character
    /// boundary and says how long it was.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        if message.len() > MESSAGE_MAX {
            let total = message.len();
            let mut cut = MESSAGE_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(&format!("… (message cut, {total} bytes)"));
        }
        Self { status, message }
    }

    /// Bad input from the caller.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message.into())
    }

    /// Something that exists already or is in use.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message.into())
    }

    /// A failure on our side (backend, store, timeout).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message.into())
    }

    /// The object is busy with another call for longer than this one waits
    /// ([`crate::sync::Busy`]); the same call later can succeed.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message.into())
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {limit} bytes"),
        )
    }

    /// Docker's error body. Both keys are set: the volume and network clients read `Err`, the
    /// IPAM client reads `Error` (docs/protocols.md §1); each ignores the other.
    pub fn to_body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "Err": self.message, "Error": self.message }))
            .expect("a JSON object of two strings always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_message_is_cut_on_a_character_boundary() {
        let e = PluginError::bad_request("é".repeat(1 << 20));
        assert!(e.message.len() < MESSAGE_MAX + 64, "{}", e.message.len());
        assert!(e.message.ends_with("(message cut, 2097152 bytes)"));
        // Both keys of the body together stay bounded.
        assert!(e.to_body().len() < 2 * MESSAGE_MAX + 200);
        assert_eq!(PluginError::conflict("short").message, "short");
    }
}
