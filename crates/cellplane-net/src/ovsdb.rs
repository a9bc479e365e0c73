//! A small OVSDB (RFC 7047) JSON-RPC client over a unix socket, for the `Open_vSwitch`
//! database: just what a CNI plugin needs (add an access port in one transaction, find and
//! delete ports by `external_ids`, read a port back).
//!
//! Replies arrive as concatenated JSON values with no delimiter, so the reader parses a
//! stream; `echo` requests from the server are answered.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tracing::debug;

const DB: &str = "Open_vSwitch";

#[derive(Debug, Error)]
pub enum OvsdbError {
    #[error("invalid OVSDB address {addr:?}: only unix:PATH is supported")]
    Address { addr: String },
    #[error("connecting to OVSDB at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("OVSDB at {path}: {method} timed out after {timeout_ms} ms")]
    Timeout {
        path: PathBuf,
        method: String,
        timeout_ms: u64,
    },
    #[error("OVSDB at {path}: I/O: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("OVSDB at {path}: connection closed")]
    Closed { path: PathBuf },
    #[error("OVSDB at {path}: malformed reply: {detail}")]
    Protocol { path: PathBuf, detail: String },
    #[error("OVSDB transaction failed: {error}: {details}")]
    Transaction { error: String, details: String },
    #[error("bridge {bridge} not found in OVSDB")]
    BridgeNotFound { bridge: String },
}

impl OvsdbError {
    /// True when the database could not be reached (as opposed to refusing a request).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            OvsdbError::Connect { .. }
                | OvsdbError::Timeout { .. }
                | OvsdbError::Io { .. }
                | OvsdbError::Closed { .. }
        )
    }
}

/// A port to add: an access port `name` on `bridge`, with the interface of the same name.
#[derive(Debug, Clone)]
pub struct PortSpec<'a> {
    pub bridge: &'a str,
    pub name: &'a str,
    /// Access VLAN; `None` for a trunk (untagged config) port.
    pub tag: Option<u16>,
    pub external_ids: &'a BTreeMap<String, String>,
}

/// What [`Ovsdb::add_port`] learns about the bridge, in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortAdded {
    /// The bridge's `datapath_type`: `netdev` for OVS's userspace datapath; empty or `system`
    /// for the kernel datapath.
    pub datapath_type: String,
}

impl PortAdded {
    /// True on OVS's userspace datapath, which does not complete checksums a veth left to
    /// offload (TCP between pods fails unless TX checksum offload is off on the veth).
    pub fn userspace_datapath(&self) -> bool {
        self.datapath_type == "netdev"
    }
}

/// A port as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    pub uuid: String,
    pub name: String,
    pub tag: Option<u16>,
    pub external_ids: BTreeMap<String, String>,
    /// The bridge whose `ports` hold it, if any.
    pub bridge: Option<String>,
}

/// One connection to an OVSDB server.
pub struct Ovsdb {
    stream: UnixStream,
    path: PathBuf,
    buf: Vec<u8>,
    next_id: u64,
    timeout: Duration,
}

/// Parses `unix:/path` (or a bare absolute path).
pub fn parse_address(addr: &str) -> Result<PathBuf, OvsdbError> {
    if let Some(p) = addr.strip_prefix("unix:") {
        if !p.is_empty() {
            return Ok(PathBuf::from(p));
        }
    } else if addr.starts_with('/') {
        return Ok(PathBuf::from(addr));
    }
    Err(OvsdbError::Address {
        addr: addr.to_string(),
    })
}

fn map(ids: &BTreeMap<String, String>) -> Value {
    json!([
        "map",
        ids.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()
    ])
}

fn parse_map(v: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(pairs) = v.get(1).and_then(Value::as_array) {
        for p in pairs {
            if let (Some(k), Some(v)) = (
                p.get(0).and_then(Value::as_str),
                p.get(1).and_then(Value::as_str),
            ) {
                out.insert(k.to_string(), v.to_string());
            }
        }
    }
    out
}

/// Elements of an OVSDB set value (a bare atom is a one-element set).
fn set_items(v: &Value) -> Vec<&Value> {
    match v.as_array() {
        Some(a) if a.first().and_then(Value::as_str) == Some("set") => a
            .get(1)
            .and_then(Value::as_array)
            .map(|x| x.iter().collect())
            .unwrap_or_default(),
        _ => vec![v],
    }
}

fn uuid_of(v: &Value) -> Option<String> {
    let a = v.as_array()?;
    (a.first()?.as_str()? == "uuid").then(|| a.get(1)?.as_str().map(str::to_string))?
}

impl Ovsdb {
    /// Connects to `addr` (`unix:PATH`); `timeout` bounds the connect and every request.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Ovsdb, OvsdbError> {
        let path = parse_address(addr)?;
        Self::connect_path(&path, timeout).await
    }

    pub async fn connect_path(path: &Path, timeout: Duration) -> Result<Ovsdb, OvsdbError> {
        let stream = match tokio::time::timeout(timeout, UnixStream::connect(path)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(OvsdbError::Connect {
                    path: path.into(),
                    source,
                })
            }
            Err(_) => {
                return Err(OvsdbError::Timeout {
                    path: path.into(),
                    method: "connect".into(),
                    timeout_ms: timeout.as_millis() as u64,
                })
            }
        };
        Ok(Ovsdb {
            stream,
            path: path.into(),
            buf: Vec::with_capacity(4096),
            next_id: 1,
            timeout,
        })
    }

    /// Sends one request and returns its `result` (answering `echo`s meanwhile).
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, OvsdbError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.call_inner(method, params)).await {
            Ok(r) => r,
            Err(_) => Err(OvsdbError::Timeout {
                path: self.path.clone(),
                method: method.into(),
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }

    async fn call_inner(&mut self, method: &str, params: Value) -> Result<Value, OvsdbError> {
        let id = self.next_id;
        self.next_id += 1;
        let req = json!({"method": method, "params": params, "id": id});
        self.send(&req).await?;
        loop {
            let msg = self.recv().await?;
            if msg.get("method").and_then(Value::as_str) == Some("echo") {
                let reply = json!({"result": msg.get("params").cloned().unwrap_or(json!([])), "error": null, "id": msg.get("id").cloned().unwrap_or(Value::Null)});
                self.send(&reply).await?;
                continue;
            }
            if msg.get("id").and_then(Value::as_u64) != Some(id) {
                debug!(?msg, "ovsdb: ignoring unrelated message");
                continue;
            }
            if let Some(e) = msg.get("error").filter(|e| !e.is_null()) {
                return Err(OvsdbError::Transaction {
                    error: e.to_string(),
                    details: String::new(),
                });
            }
            return Ok(msg.get("result").cloned().unwrap_or(Value::Null));
        }
    }

    async fn send(&mut self, v: &Value) -> Result<(), OvsdbError> {
        let bytes = serde_json::to_vec(v).map_err(|e| OvsdbError::Protocol {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        self.stream
            .write_all(&bytes)
            .await
            .map_err(|source| OvsdbError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// The next complete JSON value from the stream.
    async fn recv(&mut self) -> Result<Value, OvsdbError> {
        loop {
            if !self.buf.is_empty() {
                let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
                match it.next() {
                    Some(Ok(v)) => {
                        let used = it.byte_offset();
                        self.buf.drain(..used);
                        return Ok(v);
                    }
                    Some(Err(e)) if e.is_eof() => {}
                    Some(Err(e)) => {
                        return Err(OvsdbError::Protocol {
                            path: self.path.clone(),
                            detail: e.to_string(),
                        })
                    }
                    None => self.buf.clear(), // only white space
                }
            }
            let mut chunk = [0u8; 8192];
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|source| OvsdbError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(OvsdbError::Closed {
                    path: self.path.clone(),
                });
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Runs `ops` as one transaction; fails with the first operation error.
    pub async fn transact(&mut self, ops: Vec<Value>) -> Result<Vec<Value>, OvsdbError> {
        let n = ops.len();
        let mut params = vec![json!(DB)];
        params.extend(ops);
        let res = self.call("transact", Value::Array(params)).await?;
        let arr = res
            .as_array()
            .cloned()
            .ok_or_else(|| OvsdbError::Protocol {
                path: self.path.clone(),
                detail: format!("transact result is not an array: {res}"),
            })?;
        for r in &arr {
            if let Some(e) = r.get("error").and_then(Value::as_str) {
                return Err(OvsdbError::Transaction {
                    error: e.to_string(),
                    details: r
                        .get("details")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                });
            }
        }
        if arr.len() < n {
            return Err(OvsdbError::Protocol {
                path: self.path.clone(),
                detail: format!("{} results for {n} operations", arr.len()),
            });
        }
        Ok(arr)
    }

    /// Lists the databases: a cheap liveness probe.
    pub async fn ping(&mut self) -> Result<(), OvsdbError> {
        self.call("list_dbs", json!([])).await.map(|_| ())
    }

    /// Adds the port and its interface to the bridge in ONE transaction, which also reads the
    /// bridge's `datapath_type`. Fails with `BridgeNotFound` when the bridge does not exist
    /// (nothing is written then).
    pub async fn add_port(&mut self, p: &PortSpec<'_>) -> Result<PortAdded, OvsdbError> {
        let mut port = json!({
            "name": p.name,
            "interfaces": ["named-uuid", "iface"],
            "external_ids": map(p.external_ids),
        });
        if let Some(tag) = p.tag {
            port["tag"] = json!(tag);
        }
        let ops = vec![
            json!({"op": "wait", "table": "Bridge", "where": [["name", "==", p.bridge]],
                   "columns": ["name"], "until": "==", "rows": [{"name": p.bridge}], "timeout": 0}),
            json!({"op": "select", "table": "Bridge", "where": [["name", "==", p.bridge]],
                   "columns": ["datapath_type"]}),
            json!({"op": "insert", "table": "Interface", "row": {"name": p.name}, "uuid-name": "iface"}),
            json!({"op": "insert", "table": "Port", "row": port, "uuid-name": "port"}),
            json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", p.bridge]],
                   "mutations": [["ports", "insert", ["set", [["named-uuid", "port"]]]]]}),
            json!({"op": "comment", "comment": format!("cellplane: add port {} to {}", p.name, p.bridge)}),
        ];
        match self.transact(ops).await {
            Err(OvsdbError::Transaction { error, .. }) if error == "timed out" => {
                Err(OvsdbError::BridgeNotFound {
                    bridge: p.bridge.to_string(),
                })
            }
            Err(e) => Err(e),
            Ok(res) => Ok(PortAdded {
                datapath_type: res[1]["rows"][0]["datapath_type"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            }),
        }
    }

    /// Ports whose `external_ids` include every pair of `ids`, with their bridge.
    pub async fn find_ports(
        &mut self,
        ids: &BTreeMap<String, String>,
    ) -> Result<Vec<PortInfo>, OvsdbError> {
        let ops = vec![
            json!({"op": "select", "table": "Port", "where": [["external_ids", "includes", map(ids)]],
                   "columns": ["_uuid", "name", "tag", "external_ids"]}),
            json!({"op": "select", "table": "Bridge", "where": [], "columns": ["name", "ports"]}),
        ];
        let res = self.transact(ops).await?;
        Ok(self.ports_from(&res))
    }

    /// The port called `name`, with its bridge.
    pub async fn port(&mut self, name: &str) -> Result<Option<PortInfo>, OvsdbError> {
        let ops = vec![
            json!({"op": "select", "table": "Port", "where": [["name", "==", name]],
                   "columns": ["_uuid", "name", "tag", "external_ids"]}),
            json!({"op": "select", "table": "Bridge", "where": [], "columns": ["name", "ports"]}),
        ];
        let res = self.transact(ops).await?;
        Ok(self.ports_from(&res).into_iter().next())
    }

    fn ports_from(&self, res: &[Value]) -> Vec<PortInfo> {
        let mut owner: BTreeMap<String, String> = BTreeMap::new();
        for b in res[1]["rows"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let bname = b["name"].as_str().unwrap_or_default().to_string();
            for u in set_items(&b["ports"]) {
                if let Some(u) = uuid_of(u) {
                    owner.insert(u, bname.clone());
                }
            }
        }
        let mut out = Vec::new();
        for r in res[0]["rows"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let Some(uuid) = uuid_of(&r["_uuid"]) else {
                continue;
            };
            let tag = set_items(&r["tag"])
                .first()
                .and_then(|v| v.as_u64())
                .and_then(|t| u16::try_from(t).ok());
            out.push(PortInfo {
                bridge: owner.get(&uuid).cloned(),
                uuid,
                name: r["name"].as_str().unwrap_or_default().to_string(),
                tag,
                external_ids: parse_map(&r["external_ids"]),
            });
        }
        out
    }

    /// Removes the given ports (by uuid) from every bridge in one transaction; OVSDB then
    /// garbage-collects their Port and Interface rows. Absent ports are no error.
    pub async fn del_ports(&mut self, uuids: &[String]) -> Result<(), OvsdbError> {
        if uuids.is_empty() {
            return Ok(());
        }
        let set: Vec<Value> = uuids.iter().map(|u| json!(["uuid", u])).collect();
        let ops = vec![
            json!({"op": "mutate", "table": "Bridge", "where": [],
                   "mutations": [["ports", "delete", ["set", set]]]}),
            json!({"op": "comment", "comment": "cellplane: delete ports"}),
        ];
        self.transact(ops).await.map(|_| ())
    }

    /// Finds the ports matching `ids` and removes them; returns how many there were.
    pub async fn del_ports_by_ids(
        &mut self,
        ids: &BTreeMap<String, String>,
    ) -> Result<usize, OvsdbError> {
        let ports = self.find_ports(ids).await?;
        let uuids: Vec<String> = ports.into_iter().map(|p| p.uuid).collect();
        self.del_ports(&uuids).await?;
        Ok(uuids.len())
    }

    /// Whether a bridge called `name` exists.
    pub async fn bridge_exists(&mut self, name: &str) -> Result<bool, OvsdbError> {
        let res = self
            .transact(vec![json!({"op": "select", "table": "Bridge", "where": [["name", "==", name]], "columns": ["name"]})])
            .await?;
        Ok(res[0]["rows"].as_array().is_some_and(|r| !r.is_empty()))
    }
}
