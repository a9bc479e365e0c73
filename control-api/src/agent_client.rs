//! HTTP client for build agents' own servers (the build log), used by the log proxy.

use std::time::Duration;

use axum::body::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum AgentClientError {
    #[error("invalid agent URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("{url}: {}", chain(source))]
    Request {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("{url}: no response within {ms} ms")]
    Timeout { url: String, ms: u128 },
}

/// `error: cause: cause` (hyper's own message alone is only "client error (Connect)").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

/// A pooled HTTP/1.1 client; `timeout` bounds connecting and waiting for the response headers,
/// never the body (a followed log streams for as long as the build runs).
#[derive(Clone, Debug)]
pub struct AgentClient {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl AgentClient {
    pub fn new(timeout: Duration) -> AgentClient {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(timeout));
        http.set_nodelay(true);
        AgentClient {
            client: Client::builder(TokioExecutor::new()).build(http),
            timeout,
        }
    }

    /// `GET url`; the response's body is streamed by the caller.
    pub async fn get(&self, url: &str) -> Result<Response<Incoming>, AgentClientError> {
        let bad = |reason: &str| AgentClientError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// agent endpoints are supported"));
        }
        let req = Request::get(uri)
            .header(hyper::header::ACCEPT, "text/plain")
            .body(Empty::new())
            .map_err(|e| bad(&e.to_string()))?;
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(source)) => Err(AgentClientError::Request {
                url: url.to_string(),
                source,
            }),
            Err(_) => Err(AgentClientError::Timeout {
                url: url.to_string(),
                ms: self.timeout.as_millis(),
            }),
        }
    }
}
