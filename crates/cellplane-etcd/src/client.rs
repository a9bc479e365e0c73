//! A thin client over etcd-client: every request has a deadline, errors say which etcd and
//! which operation, and the helpers speak in terms of revisions (create-if-absent, CAS).

use std::future::Future;
use std::time::Duration;

use cellplane_core::Keys;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, TxnResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::EtcdConfig;
use crate::error::{is_transport, EtcdError};

/// One key as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl From<&KeyValue> for Kv {
    fn from(kv: &KeyValue) -> Self {
        Kv {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
            lease: kv.lease(),
        }
    }
}

impl Kv {
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, EtcdError> {
        serde_json::from_slice(&self.value).map_err(|e| EtcdError::Decode {
            key: self.key.clone(),
            reason: e.to_string(),
        })
    }
}

#[derive(Clone)]
pub struct Etcd {
    client: Client,
    keys: Keys,
    timeout: Duration,
    endpoints: String,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.keys.root())
            .finish()
    }
}

fn read_file(field: &'static str, path: &std::path::Path) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|e| EtcdError::Config {
        field,
        reason: format!("cannot read {}: {e}", path.display()),
    })
}

impl Etcd {
    /// Connects (lazily: the first request opens the connection) with TLS when configured.
    pub async fn connect(cfg: &EtcdConfig) -> Result<Etcd, EtcdError> {
        cfg.validate()?;
        let timeout = cfg.timeout();
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(timeout)
            // our own deadline (in `call`) fires first and names the operation
            .with_timeout(timeout + Duration::from_millis(250))
            // etcd 3.4 cuts clients that ping more often than about every 10 s.
            .with_keep_alive(Duration::from_secs(15), Duration::from_secs(5));
        if cfg.ca_file.is_some() || cfg.cert_file.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &cfg.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read_file("ca_file", ca)?));
            }
            if let (Some(c), Some(k)) = (&cfg.cert_file, &cfg.key_file) {
                tls = tls.identity(Identity::from_pem(
                    read_file("cert_file", c)?,
                    read_file("key_file", k)?,
                ));
            }
            opts = opts.with_tls(tls);
        }
        let endpoints = cfg.endpoints.join(",");
        let client = tokio::time::timeout(timeout, Client::connect(&cfg.endpoints, Some(opts)))
            .await
            .map_err(|_| EtcdError::Timeout {
                endpoints: endpoints.clone(),
                op: "connect",
                timeout_ms: cfg.timeout_ms,
            })?
            .map_err(|source| EtcdError::Unavailable {
                endpoints: endpoints.clone(),
                op: "connect",
                source,
            })?;
        Ok(Etcd {
            client,
            keys: Keys::new(&cfg.prefix),
            timeout,
            endpoints,
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The raw client, for what the helpers here do not cover.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// Runs one request under the deadline and maps its error.
    pub async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, EtcdError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        match tokio::time::timeout(self.timeout, f(self.client.clone())).await {
            Err(_) => Err(EtcdError::Timeout {
                endpoints: self.endpoints.clone(),
                op,
                timeout_ms: self.timeout.as_millis() as u64,
            }),
            Ok(Err(source)) if is_transport(&source) => Err(EtcdError::Unavailable {
                endpoints: self.endpoints.clone(),
                op,
                source,
            }),
            Ok(Err(source)) => Err(EtcdError::Request { op, source }),
            Ok(Ok(v)) => Ok(v),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        let key = key.to_string();
        let resp = self
            .call("get", |mut c| async move { c.get(key, None).await })
            .await?;
        Ok(resp.kvs().first().map(Kv::from))
    }

    pub async fn get_json<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, Kv)>, EtcdError> {
        match self.get(key).await? {
            None => Ok(None),
            Some(kv) => Ok(Some((kv.json()?, kv))),
        }
    }

    /// Every key under `prefix`, in key order, and the store revision of the read. Large ranges
    /// are read in pages, all at the revision of the first page (one consistent snapshot).
    pub async fn list(&self, prefix: &str) -> Result<(Vec<Kv>, i64), EtcdError> {
        self.list_paged(prefix, false, 0).await
    }

    /// Every key under `prefix` as of `revision` (0: now), and that revision.
    pub async fn list_at(&self, prefix: &str, revision: i64) -> Result<(Vec<Kv>, i64), EtcdError> {
        self.list_paged(prefix, false, revision).await
    }

    /// Keys only (values empty) under `prefix`, and the store revision of the read.
    pub async fn list_keys(&self, prefix: &str) -> Result<(Vec<Kv>, i64), EtcdError> {
        self.list_paged(prefix, true, 0).await
    }

    /// The store's current revision.
    pub async fn revision(&self) -> Result<i64, EtcdError> {
        let key = self.keys.all();
        let resp = self
            .call("get", |mut c| async move {
                c.get(key, Some(GetOptions::new().with_count_only())).await
            })
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    async fn list_paged(
        &self,
        prefix: &str,
        keys_only: bool,
        mut revision: i64,
    ) -> Result<(Vec<Kv>, i64), EtcdError> {
        let end = prefix_end(prefix.as_bytes());
        let mut out = Vec::new();
        let mut start = prefix.as_bytes().to_vec();
        let mut limit = LIST_PAGE_MIN;
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(limit);
            if keys_only {
                opts = opts.with_keys_only();
            }
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let key = start.clone();
            let resp = self
                .call("list", |mut c| async move { c.get(key, Some(opts)).await })
                .await?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            let kvs = resp.kvs();
            let bytes: usize = kvs.iter().map(|kv| kv.key().len() + kv.value().len()).sum();
            out.extend(kvs.iter().map(Kv::from));
            match (resp.more(), kvs.last()) {
                (true, Some(last)) => {
                    start = last.key().to_vec();
                    start.push(0);
                    // size pages by bytes: small values, bigger pages (fewer round trips)
                    let per_key = (bytes / kvs.len()).max(1) as i64;
                    limit = (LIST_PAGE_BYTES / per_key).clamp(LIST_PAGE_MIN, LIST_PAGE_MAX);
                }
                _ => return Ok((out, revision)),
            }
        }
    }

    pub async fn put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<i64, EtcdError> {
        self.put_opts(key, value.into(), None).await
    }

    pub async fn put_with_lease(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        lease: i64,
    ) -> Result<i64, EtcdError> {
        self.put_opts(key, value.into(), Some(PutOptions::new().with_lease(lease)))
            .await
    }

    async fn put_opts(
        &self,
        key: &str,
        value: Vec<u8>,
        opts: Option<PutOptions>,
    ) -> Result<i64, EtcdError> {
        let key = key.to_string();
        let resp = self
            .call("put", |mut c| async move { c.put(key, value, opts).await })
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    pub async fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<i64, EtcdError> {
        self.put(key, to_json(value)).await
    }

    /// Deletes `key`; `Ok(false)` when it was already gone.
    pub async fn delete(&self, key: &str) -> Result<bool, EtcdError> {
        let key = key.to_string();
        let resp = self
            .call("delete", |mut c| async move { c.delete(key, None).await })
            .await?;
        Ok(resp.deleted() > 0)
    }

    /// Deletes every key under `prefix`; returns how many.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<i64, EtcdError> {
        let prefix = prefix.to_string();
        let resp = self
            .call("delete", |mut c| async move {
                c.delete(prefix, Some(DeleteOptions::new().with_prefix()))
                    .await
            })
            .await?;
        Ok(resp.deleted())
    }

    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, EtcdError> {
        self.call("txn", |mut c| async move { c.txn(txn).await })
            .await
    }

    /// Writes `value` only if `key` does not exist. `Ok(false)` when it already did.
    pub async fn create_if_absent(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        lease: Option<i64>,
    ) -> Result<bool, EtcdError> {
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        let txn = Txn::new()
            .when([Compare::version(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.into(), opts)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// Writes `value` only if `key`'s mod_revision is `expected` (0: only if it is absent).
    /// `Ok(false)` when someone else changed it first.
    pub async fn cas(
        &self,
        key: &str,
        expected_mod_revision: i64,
        value: impl Into<Vec<u8>>,
    ) -> Result<bool, EtcdError> {
        let txn = Txn::new()
            .when([guard(key, expected_mod_revision)])
            .and_then([TxnOp::put(key, value.into(), None)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// Deletes `key` only if its mod_revision is still `expected`.
    pub async fn delete_if(
        &self,
        key: &str,
        expected_mod_revision: i64,
    ) -> Result<bool, EtcdError> {
        let txn = Txn::new()
            .when([guard(key, expected_mod_revision)])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.txn(txn).await?.succeeded())
    }
}

/// Range reads go in pages: the first of `LIST_PAGE_MIN` keys, the next sized to about
/// `LIST_PAGE_BYTES` from the keys seen so far, far below the gRPC client's 4 MiB message limit.
const LIST_PAGE_MIN: i64 = 500;
const LIST_PAGE_MAX: i64 = 20_000;
const LIST_PAGE_BYTES: i64 = 1 << 20;

/// The smallest key greater than every key starting with `prefix` (etcd's range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

/// A compare that holds while `key` is as it was read: absent when `mod_revision` is 0,
/// unchanged otherwise.
pub fn guard(key: &str, mod_revision: i64) -> Compare {
    if mod_revision == 0 {
        Compare::version(key, CompareOp::Equal, 0)
    } else {
        Compare::mod_revision(key, CompareOp::Equal, mod_revision)
    }
}

pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Our records are plain structs and maps with string or integer keys: serialising them
    // cannot fail.
    serde_json::to_vec(value).expect("records serialise to JSON")
}
