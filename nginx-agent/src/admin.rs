//! Client of the loopback-only admin server rendered into nginx: pushes upstream lists into
//! the shared dict and reads which generation is serving.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;

use crate::error::AdminError;

/// One pool as the Lua side stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pool {
    pub version: i64,
    pub servers: Vec<Peer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peer {
    pub host: String,
    pub port: u16,
    pub weight: u32,
}

/// Body of a push and of the snapshot file.
#[derive(Debug, Clone, Serialize)]
pub struct PushBody<'a> {
    pub pools: &'a BTreeMap<String, Pool>,
    /// Drop every pool not listed.
    pub replace: bool,
}

#[derive(Debug, Clone)]
pub struct Admin {
    addr: SocketAddr,
    timeout: Duration,
}

impl Admin {
    pub fn new(addr: SocketAddr, timeout: Duration) -> Admin {
        Admin { addr, timeout }
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, String), AdminError> {
        let unreachable = |reason: String| AdminError::Unreachable {
            addr: self.addr.to_string(),
            reason,
        };
        let fut = async {
            let stream = TcpStream::connect(self.addr)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            tokio::spawn(conn);
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header("host", self.addr.to_string())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| unreachable(e.to_string()))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&bytes).trim().to_string()))
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", self.timeout)))?
    }

    /// Sets the given pools (all others untouched unless `replace`).
    pub async fn push(
        &self,
        pools: &BTreeMap<String, Pool>,
        replace: bool,
    ) -> Result<(), AdminError> {
        let body = serde_json::to_vec(&PushBody { pools, replace }).unwrap_or_default();
        let path = "/cellplane/upstreams";
        let (status, text) = self.request("POST", path, body).await?;
        if status != 200 {
            return Err(AdminError::Status {
                addr: self.addr.to_string(),
                path: path.into(),
                status,
                body: text,
            });
        }
        Ok(())
    }

    /// The generation name the answering worker was loaded with.
    pub async fn generation(&self) -> Result<String, AdminError> {
        let path = "/cellplane/generation";
        let (status, text) = self.request("GET", path, Vec::new()).await?;
        if status != 200 {
            return Err(AdminError::Status {
                addr: self.addr.to_string(),
                path: path.into(),
                status,
                body: text,
            });
        }
        Ok(text)
    }
}
