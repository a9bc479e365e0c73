use thiserror::Error;

#[derive(Debug, Error)]
pub enum EtcdError {
    #[error("etcd at {endpoints} did not answer {op} within {timeout_ms} ms")]
    Timeout {
        endpoints: String,
        op: &'static str,
        timeout_ms: u64,
    },
    #[error("etcd at {endpoints} is unreachable ({op}): {source}")]
    Unavailable {
        endpoints: String,
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd {op} failed: {source}")]
    Request {
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("invalid etcd setting {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("record at {key} is not valid: {reason}")]
    Decode { key: String, reason: String },
}

impl EtcdError {
    /// etcd could not be reached or did not answer in time: the caller may try again later.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            EtcdError::Timeout { .. } | EtcdError::Unavailable { .. }
        )
    }
}

/// Is this client error a transport failure (as opposed to etcd refusing the request)?
pub(crate) fn is_transport(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                true
            }
            // a connection that broke mid-request surfaces as Unknown with the transport
            // error as its source
            tonic::Code::Unknown => std::error::Error::source(s).is_some(),
            _ => false,
        },
        _ => false,
    }
}
