//! The control API client: `PUT /v1/slb/{group}/domains/{domain}/upstreams` with the full list.

use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::annotations::DomainKey;
use crate::error::PushError;

#[derive(Clone)]
pub struct ControlApi {
    base: String,
    token_file: PathBuf,
    timeout: Duration,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl ControlApi {
    pub fn new(base: &str, token_file: PathBuf, timeout: Duration) -> ControlApi {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        ControlApi {
            base: base.trim_end_matches('/').to_string(),
            token_file,
            timeout,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Writes `servers` (each `IP:port`, weight 1) as the full list of `key`.
    pub async fn put_upstreams(
        &self,
        key: &DomainKey,
        servers: &[String],
    ) -> Result<(), PushError> {
        let url = format!(
            "{}/v1/slb/{}/domains/{}/upstreams",
            self.base, key.group, key.domain
        );
        let token =
            std::fs::read_to_string(&self.token_file).map_err(|source| PushError::Token {
                path: self.token_file.clone(),
                source,
            })?;
        let body = serde_json::json!({
            "servers": servers.iter().map(|a| serde_json::json!({"addr": a, "weight": 1})).collect::<Vec<_>>()
        });
        let req = hyper::Request::put(&url)
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            )
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| PushError::Request {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let unreachable = |reason: String| PushError::Unreachable {
            url: url.clone(),
            reason,
        };
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| unreachable(format!("{e:#}")))?;
        let status = resp.status().as_u16();
        let body = tokio::time::timeout(self.timeout, resp.into_body().collect())
            .await
            .map_err(|_| unreachable("body not read in time".into()))?
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        match status {
            200..=299 => Ok(()),
            404 => Err(PushError::NotFound { url }),
            _ => Err(PushError::Status {
                url,
                status,
                body: String::from_utf8_lossy(&body).chars().take(300).collect(),
            }),
        }
    }
}
