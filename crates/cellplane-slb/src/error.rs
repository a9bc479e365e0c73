use thiserror::Error;

/// A refused value. `field` is a JSON path into the request body (`locations[0].path`) or the
/// name of a path parameter (`domain`, `group`).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invalid {field}: {reason}")]
pub struct SlbError {
    pub field: String,
    pub reason: String,
}

impl SlbError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> SlbError {
        SlbError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
