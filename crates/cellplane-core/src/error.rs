use thiserror::Error;

/// Validation errors. Each names the field (or key) at fault and the value that was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CoreError {
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("pool {pool} ({cidr}) overlaps pool {other} ({other_cidr})")]
    Overlap {
        pool: String,
        cidr: String,
        other: String,
        other_cidr: String,
    },
}

impl CoreError {
    pub fn invalid(field: &'static str, value: impl ToString, reason: impl Into<String>) -> Self {
        CoreError::Invalid {
            field,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;
