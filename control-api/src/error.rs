use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use thiserror::Error;

#[derive(Debug, Error)]
#[error("invalid setting {field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

/// Every failure a request can end in; mapped to a status and `{"error", "field"?}` once, here.
#[derive(Debug, Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("token {principal} lacks scope {scope}")]
    Forbidden {
        principal: String,
        scope: &'static str,
    },
    #[error("invalid {field}: {reason}")]
    BadRequest { field: String, reason: String },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{what} was changed concurrently; retry")]
    Conflict { what: String },
    /// The target exists but is in a state that refuses the request (e.g. a finished build).
    #[error("{what}")]
    WrongState { what: String },
    /// A dependency the request needs is missing (e.g. no build agent registered).
    #[error("{reason}")]
    Unavailable { reason: String },
    /// A build agent behind a proxied request is gone or failed.
    #[error("{reason}")]
    BadGateway { reason: String },
    #[error(transparent)]
    Etcd(#[from] cellplane_etcd::EtcdError),
}

impl From<cellplane_slb::SlbError> for ApiError {
    fn from(e: cellplane_slb::SlbError) -> Self {
        ApiError::BadRequest {
            field: e.field,
            reason: e.reason,
        }
    }
}

impl From<cellplane_build::InvalidInput> for ApiError {
    fn from(e: cellplane_build::InvalidInput) -> Self {
        ApiError::BadRequest {
            field: e.field.into(),
            reason: format!("{:?}: {}", e.value, e.reason),
        }
    }
}

impl From<cellplane_build::DispatchError> for ApiError {
    fn from(e: cellplane_build::DispatchError) -> Self {
        use cellplane_build::DispatchError as D;
        match e {
            D::NoAgents => ApiError::Unavailable {
                reason: "no build agent is registered (builds/agents/ is empty); start a build-agent and submit again".into(),
            },
            D::NotFound(build) => ApiError::NotFound {
                what: format!("build {build}"),
            },
            D::AlreadyExists(build) | D::Conflict { build, .. } => ApiError::Conflict {
                what: format!("build {build}"),
            },
            e @ D::Finished { .. } => ApiError::WrongState { what: e.to_string() },
            D::Etcd(e) => ApiError::Etcd(e),
        }
    }
}

impl From<cellplane_core::CoreError> for ApiError {
    fn from(e: cellplane_core::CoreError) -> Self {
        use cellplane_core::CoreError as C;
        match e {
            C::Invalid {
                field,
                value,
                reason,
            } => ApiError::BadRequest {
                field: field.into(),
                reason: format!("{value:?}: {reason}"),
            },
            // a pool's CIDR meets another pool's: a conflict with existing state, naming it
            e @ C::Overlap { .. } => ApiError::WrongState {
                what: e.to_string(),
            },
        }
    }
}

impl From<cellplane_etcd::IpamError> for ApiError {
    fn from(e: cellplane_etcd::IpamError) -> Self {
        use cellplane_etcd::IpamError as I;
        match e {
            I::Etcd(e) => ApiError::Etcd(e),
            I::Invalid(e) => e.into(),
            I::NotFound { what, name } => ApiError::NotFound {
                what: format!("{what} {name}"),
            },
            I::Contention { what, attempts } => ApiError::Conflict {
                what: format!("{what} (gave up after {attempts} attempts)"),
            },
            // exists already, still has allocations, address taken, no room: the state refuses
            e @ (I::Conflict { .. } | I::AddressInUse { .. } | I::Exhausted { .. }) => {
                ApiError::WrongState {
                    what: e.to_string(),
                }
            }
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } | ApiError::WrongState { .. } => StatusCode::CONFLICT,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            ApiError::Etcd(e) if e.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Etcd(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            ApiError::BadRequest { field, .. } => {
                json!({ "error": self.to_string(), "field": field })
            }
            _ => json!({ "error": self.to_string() }),
        };
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            if let Ok(v) = "Bearer".parse() {
                resp.headers_mut()
                    .insert(axum::http::header::WWW_AUTHENTICATE, v);
            }
        }
        resp
    }
}
