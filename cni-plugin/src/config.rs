//! The network configuration on stdin (ARCHITECTURE.md "The CNI network config"; camelCase
//! keys). Unknown keys are ignored, as the spec requires; a known key with a bad value is
//! refused with code 7 naming the key.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use cellplane_core::validation::{validate_ifname, validate_name};
use cellplane_etcd::EtcdConfig;
use serde_json::{Map, Value};

use crate::error::{code, CniError};
use crate::version::SpecVersion;

pub const DEFAULT_OVSDB: &str = "unix:/var/run/openvswitch/db.sock";
pub const DEFAULT_LOCK_FILE: &str = "/run/cellplane/ipam.lock";

/// `txChecksumOffload`: what ADD does with TX checksum offload on both veth ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxChecksumOffload {
    /// Off when the bridge's `datapath_type` is `netdev` (OVS userspace datapath, which does
    /// not complete offloaded checksums: TCP between pods would fail), else left on.
    #[default]
    Auto,
    /// Left as the kernel made it (on).
    On,
    /// Always turned off.
    Off,
}

impl TxChecksumOffload {
    pub fn as_str(self) -> &'static str {
        match self {
            TxChecksumOffload::Auto => "auto",
            TxChecksumOffload::On => "on",
            TxChecksumOffload::Off => "off",
        }
    }

    /// Whether to turn offload off, given the bridge's `datapath_type`.
    pub fn turn_off(self, datapath_type: &str) -> bool {
        match self {
            TxChecksumOffload::Auto => datapath_type == "netdev",
            TxChecksumOffload::On => false,
            TxChecksumOffload::Off => true,
        }
    }
}

/// A validated plugin configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: SpecVersion,
    pub name: String,
    pub bridge: String,
    pub mtu: u32,
    pub pools: Vec<String>,
    pub node: String,
    pub etcd: EtcdConfig,
    pub ovsdb: String,
    pub ovsdb_timeout: Duration,
    pub gratuitous_arp: bool,
    pub tx_checksum_offload: TxChecksumOffload,
    pub lock_file: PathBuf,
    pub lock_timeout: Duration,
    pub log_file: Option<PathBuf>,
    pub log_level: String,
    /// The previous plugin's result (conflist), as given.
    pub prev_result: Option<Value>,
    /// GC: `cni.dev/valid-attachments` as `(containerID, ifname)`.
    pub valid_attachments: Option<BTreeSet<(String, String)>>,
}

struct Obj<'a> {
    m: &'a Map<String, Value>,
    /// key path prefix for messages (`etcd.` for the nested object)
    at: &'static str,
}

impl<'a> Obj<'a> {
    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.at)
    }
    fn get(&self, k: &str) -> Option<&'a Value> {
        self.m.get(k).filter(|v| !v.is_null())
    }
    fn str(&self, k: &str) -> Result<Option<&'a str>, CniError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(CniError::invalid_config(
                &self.key(k),
                format!("must be a string, got {v}"),
            )),
        }
    }
    fn u64(&self, k: &str) -> Result<Option<u64>, CniError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                CniError::invalid_config(
                    &self.key(k),
                    format!("must be a non-negative integer, got {v}"),
                )
            }),
        }
    }
    fn bool(&self, k: &str) -> Result<Option<bool>, CniError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(CniError::invalid_config(
                &self.key(k),
                format!("must be true or false, got {v}"),
            )),
        }
    }
    fn strings(&self, k: &str) -> Result<Option<Vec<String>>, CniError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        CniError::invalid_config(
                            &self.key(k),
                            format!("must be a list of strings, got {v}"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(CniError::invalid_config(
                &self.key(k),
                format!("must be a list of strings, got {v}"),
            )),
        }
    }
}

/// Parses only `cniVersion` (for VERSION, which needs nothing else).
pub fn requested_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_string)
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase()
}

impl NetConf {
    /// Decodes (code 6), checks the version (code 1) and every known key (code 7).
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let v: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(code::DECODE, format!("decoding the network config: {e}"))
        })?;
        let Value::Object(m) = &v else {
            return Err(CniError::new(
                code::DECODE,
                "the network config is not a JSON object",
            ));
        };
        let o = Obj { m, at: "" };
        let ver = o
            .str("cniVersion")?
            .ok_or_else(|| CniError::new(code::INCOMPATIBLE_VERSION, "cniVersion is missing"))?;
        let cni_version = SpecVersion::parse(ver)?;
        if o.get("ipam").is_some() {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                "unsupported field \"ipam\": cellplane allocates addresses from its own etcd pools (key \"pools\")",
            ));
        }
        let name = o.str("name")?.unwrap_or_default().to_string();
        let bridge = o
            .str("bridge")?
            .ok_or_else(|| CniError::invalid_config("bridge", "is required"))?
            .to_string();
        validate_ifname(&bridge).map_err(|e| CniError::invalid_config("bridge", e))?;
        let mtu = o.u64("mtu")?.unwrap_or(1500);
        if !(68..=65535).contains(&mtu) {
            return Err(CniError::invalid_config(
                "mtu",
                format!("{mtu} is outside 68..65535"),
            ));
        }
        let pools = o.strings("pools")?.unwrap_or_default();
        for p in &pools {
            validate_name("pool name", p).map_err(|e| CniError::invalid_config("pools", e))?;
        }
        let node = match o.str("node")? {
            Some(n) => n.to_string(),
            None => host_name(),
        };
        validate_name("node", &node).map_err(|e| CniError::invalid_config("node", e))?;

        let mut etcd = EtcdConfig::default();
        if let Some(e) = o.get("etcd") {
            let Value::Object(em) = e else {
                return Err(CniError::invalid_config("etcd", "must be an object"));
            };
            let eo = Obj { m: em, at: "etcd." };
            if let Some(eps) = eo.strings("endpoints")? {
                etcd.endpoints = eps;
            }
            if let Some(p) = eo.str("prefix")? {
                etcd.prefix = p.to_string();
            }
            etcd.ca_file = eo.str("caFile")?.map(PathBuf::from);
            etcd.cert_file = eo.str("certFile")?.map(PathBuf::from);
            etcd.key_file = eo.str("keyFile")?.map(PathBuf::from);
            if let Some(t) = eo.u64("timeoutMs")? {
                etcd.timeout_ms = t;
            }
        }
        etcd.validate().map_err(|e| {
            let key = match &e {
                cellplane_etcd::EtcdError::Config { field, .. } => match *field {
                    "timeout_ms" => "etcd.timeoutMs",
                    "cert_file" => "etcd.certFile",
                    "ca_file" => "etcd.caFile",
                    "key_file" => "etcd.keyFile",
                    "prefix" => "etcd.prefix",
                    _ => "etcd.endpoints",
                },
                _ => "etcd",
            };
            CniError::invalid_config(key, e)
        })?;

        let ovsdb = o.str("ovsdb")?.unwrap_or(DEFAULT_OVSDB).to_string();
        cellplane_net::ovsdb::parse_address(&ovsdb)
            .map_err(|e| CniError::invalid_config("ovsdb", e))?;
        let ovsdb_timeout = Duration::from_millis(o.u64("ovsdbTimeoutMs")?.unwrap_or(2000).max(1));
        let gratuitous_arp = o.bool("gratuitousArp")?.unwrap_or(true);
        let tx_checksum_offload = match o.str("txChecksumOffload")? {
            None | Some("auto") => TxChecksumOffload::Auto,
            Some("on") => TxChecksumOffload::On,
            Some("off") => TxChecksumOffload::Off,
            Some(other) => {
                return Err(CniError::invalid_config(
                    "txChecksumOffload",
                    format!("{other:?} is not one of auto, on, off"),
                ))
            }
        };
        let lock_file = PathBuf::from(o.str("lockFile")?.unwrap_or(DEFAULT_LOCK_FILE));
        if !lock_file.is_absolute() {
            return Err(CniError::invalid_config(
                "lockFile",
                "must be an absolute path",
            ));
        }
        let lock_timeout = Duration::from_millis(o.u64("lockTimeoutMs")?.unwrap_or(10_000));
        let log_file = o
            .str("logFile")?
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let log_level = o.str("logLevel")?.unwrap_or("info").to_ascii_lowercase();
        if !["error", "warn", "info", "debug", "trace"].contains(&log_level.as_str()) {
            return Err(CniError::invalid_config(
                "logLevel",
                format!("{log_level:?} is not one of error, warn, info, debug, trace"),
            ));
        }
        let prev_result = o.get("prevResult").cloned();
        let valid_attachments = match o.get("cni.dev/valid-attachments") {
            None => None,
            Some(Value::Array(a)) => {
                let mut set = BTreeSet::new();
                for item in a {
                    let cid = item.get("containerID").and_then(Value::as_str);
                    let ifn = item.get("ifname").and_then(Value::as_str);
                    match (cid, ifn) {
                        (Some(c), Some(i)) => {
                            set.insert((c.to_string(), i.to_string()));
                        }
                        _ => {
                            return Err(CniError::invalid_config(
                                "cni.dev/valid-attachments",
                                format!("entry {item} needs containerID and ifname"),
                            ))
                        }
                    }
                }
                Some(set)
            }
            Some(v) => {
                return Err(CniError::invalid_config(
                    "cni.dev/valid-attachments",
                    format!("must be a list, got {v}"),
                ))
            }
        };
        Ok(NetConf {
            cni_version,
            name,
            bridge,
            mtu: mtu as u32,
            pools,
            node,
            etcd,
            ovsdb,
            ovsdb_timeout,
            gratuitous_arp,
            tx_checksum_offload,
            lock_file,
            lock_timeout,
            log_file,
            log_level,
            prev_result,
            valid_attachments,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConf, CniError> {
        NetConf::parse(s.as_bytes())
    }

    #[test]
    fn table() {
        let ok = r#"{"cniVersion":"1.1.0","name":"n","type":"cellplane","bridge":"br0","pools":["a"],"node":"n1",
            "etcd":{"endpoints":["http://127.0.0.1:2379"],"timeoutMs":500},"someFutureKey":{"x":1}}"#;
        let c = parse(ok).unwrap();
        assert_eq!(c.mtu, 1500);
        assert_eq!(c.etcd.timeout_ms, 500);
        assert!(c.gratuitous_arp);
        assert_eq!(c.tx_checksum_offload, TxChecksumOffload::Auto);
        assert!(c.tx_checksum_offload.turn_off("netdev"));
        assert!(!c.tx_checksum_offload.turn_off("system"));
        assert!(!c.tx_checksum_offload.turn_off(""));
        for (v, want) in [
            ("auto", TxChecksumOffload::Auto),
            ("on", TxChecksumOffload::On),
            ("off", TxChecksumOffload::Off),
        ] {
            let c = parse(&format!(
                r#"{{"cniVersion":"1.0.0","bridge":"b","node":"n","txChecksumOffload":"{v}"}}"#
            ))
            .unwrap();
            assert_eq!(c.tx_checksum_offload, want);
            assert_eq!(want.as_str(), v);
        }
        assert!(!TxChecksumOffload::On.turn_off("netdev"));
        assert!(TxChecksumOffload::Off.turn_off("system"));
        let cases: &[(&str, u32, &str)] = &[
            ("{", 6, "decoding"),
            ("[1]", 6, "object"),
            (r#"{"bridge":"b"}"#, 1, "cniVersion"),
            (r#"{"cniVersion":"9.9.9","bridge":"b"}"#, 1, "9.9.9"),
            (r#"{"cniVersion":"1.0.0"}"#, 7, "\"bridge\""),
            (
                r#"{"cniVersion":"1.0.0","bridge":"b","node":"n","mtu":9999999}"#,
                7,
                "\"mtu\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","bridge":"b","node":"n","mtu":"big"}"#,
                7,
                "\"mtu\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","bridge":"b","node":"n","pools":["Bad/Pool"]}"#,
                7,
                "\"pools\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","bridge":"b","node":"N!"}"#,
                7,
                "\"node\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","bridge":"b","node":"n","etcd":{"timeoutMs":0}}"#,
                7,
                "etcd.timeoutMs",
            ),
            (
                r#"{"cniVersion":"1.0.0","bridge":"b","node":"n","etcd":{"endpoints":["x"]}}"#,
                7,
                "etcd.endpoints",
            ),
            (
                r#"{"cniVersion":"1.0.0","bridge":"b","node":"n","ovsdb":"tcp:1.2.3.4:1"}"#,
                7,
                "\"ovsdb\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","bridge":"b","node":"n","gratuitousArp":"yes"}"#,
                7,
                "gratuitousArp",
            ),
            (
                r#"{"cniVersion":"1.0.0","bridge":"b","node":"n","txChecksumOffload":"maybe"}"#,
                7,
                "\"txChecksumOffload\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","bridge":"b","node":"n","txChecksumOffload":false}"#,
                7,
                "\"txChecksumOffload\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","bridge":"b","node":"n","lockFile":"rel"}"#,
                7,
                "lockFile",
            ),
            (
                r#"{"cniVersion":"1.0.0","bridge":"b","node":"n","logLevel":"loud"}"#,
                7,
                "logLevel",
            ),
            (
                r#"{"cniVersion":"1.0.0","bridge":"b","node":"n","ipam":{"type":"host-local"}}"#,
                2,
                "ipam",
            ),
        ];
        for (input, code, word) in cases {
            let e = parse(input).unwrap_err();
            assert_eq!(e.code, *code, "{input}: {e}");
            assert!(e.to_string().contains(word), "{input}: {e}");
        }
    }
}
