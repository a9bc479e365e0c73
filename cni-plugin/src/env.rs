//! The `CNI_*` environment of one invocation.

use cellplane_core::validation::{validate_container_id, validate_ifname};
use cellplane_core::PodRef;

use crate::error::{code, CniError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    /// The name as in `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    fn parse(s: &str) -> Result<Command, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::invalid_env(
                    "CNI_COMMAND",
                    format!("unknown command {other:?}"),
                ))
            }
        })
    }
}

/// The parsed environment. Fields a command does not need may be empty.
#[derive(Debug, Clone)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: String,
    pub netns: Option<String>,
    pub ifname: String,
    pub pod: PodRef,
}

/// `K=V;K=V` with the Kubernetes keys we know; other keys need `IgnoreUnknown=1`.
fn parse_args(s: &str) -> Result<PodRef, CniError> {
    let mut pod = PodRef::default();
    let mut unknown = Vec::new();
    let mut ignore_unknown = false;
    for kv in s.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(CniError::invalid_env(
                "CNI_ARGS",
                format!("{kv:?} is not KEY=VALUE"),
            ));
        };
        match k {
            "IgnoreUnknown" => {
                ignore_unknown = matches!(v.to_ascii_lowercase().as_str(), "1" | "true")
            }
            "K8S_POD_NAMESPACE" => pod.namespace = Some(v.to_string()).filter(|v| !v.is_empty()),
            "K8S_POD_NAME" => pod.name = Some(v.to_string()).filter(|v| !v.is_empty()),
            "K8S_POD_UID" => pod.uid = Some(v.to_string()).filter(|v| !v.is_empty()),
            "K8S_POD_INFRA_CONTAINER_ID" => {}
            other => unknown.push(other.to_string()),
        }
    }
    if !unknown.is_empty() && !ignore_unknown {
        return Err(CniError::new(
            code::UNSUPPORTED_FIELD,
            format!("unsupported CNI_ARGS key(s): {}", unknown.join(", ")),
        )
        .with_details("set IgnoreUnknown=1 to ignore them"));
    }
    Ok(pod)
}

impl CniEnv {
    /// Parses the variables (`lookup("CNI_COMMAND")` ...), checking what `command` requires.
    pub fn parse(lookup: impl Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
        let get = |k: &str| lookup(k).filter(|v| !v.is_empty());
        let command = Command::parse(
            &get("CNI_COMMAND").ok_or_else(|| CniError::invalid_env("CNI_COMMAND", "not set"))?,
        )?;
        let needs = |k: &str| -> Result<String, CniError> {
            get(k).ok_or_else(|| CniError::invalid_env(k, "required but not set"))
        };
        let (container_id, ifname, netns) = match command {
            Command::Add | Command::Check => (
                needs("CNI_CONTAINERID")?,
                needs("CNI_IFNAME")?,
                Some(needs("CNI_NETNS")?),
            ),
            Command::Del => (
                needs("CNI_CONTAINERID")?,
                needs("CNI_IFNAME")?,
                get("CNI_NETNS"),
            ),
            Command::Status | Command::Gc | Command::Version => {
                (String::new(), String::new(), None)
            }
        };
        if !container_id.is_empty() {
            validate_container_id(&container_id)
                .map_err(|e| CniError::invalid_env("CNI_CONTAINERID", e))?;
        }
        if !ifname.is_empty() {
            validate_ifname(&ifname).map_err(|e| CniError::invalid_env("CNI_IFNAME", e))?;
        }
        if let Some(ns) = &netns {
            if !ns.starts_with('/') {
                return Err(CniError::invalid_env(
                    "CNI_NETNS",
                    format!("{ns:?} is not an absolute path"),
                ));
            }
        }
        let pod = parse_args(&get("CNI_ARGS").unwrap_or_default())?;
        Ok(CniEnv {
            command,
            container_id,
            netns,
            ifname,
            pod,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::parse(|k| m.get(k).cloned())
    }

    #[test]
    fn table() {
        let ok = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/x"),
        ];
        let e = env(&ok).unwrap();
        assert_eq!(e.command, Command::Add);
        type Case<'a> = (&'a [(&'a str, &'a str)], u32, &'a str);
        let cases: &[Case] = &[
            (&[], 4, "CNI_COMMAND"),
            (&[("CNI_COMMAND", "FOO")], 4, "CNI_COMMAND"),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/x"),
                ],
                4,
                "CNI_CONTAINERID",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "c"),
                    ("CNI_NETNS", "/x"),
                ],
                4,
                "CNI_IFNAME",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "c"),
                    ("CNI_IFNAME", "eth0"),
                ],
                4,
                "CNI_NETNS",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "c/1"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/x"),
                ],
                4,
                "CNI_CONTAINERID",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "c"),
                    ("CNI_IFNAME", "0123456789abcdef"),
                    ("CNI_NETNS", "/x"),
                ],
                4,
                "CNI_IFNAME",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "c"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "x"),
                ],
                4,
                "CNI_NETNS",
            ),
            (
                &[
                    ("CNI_COMMAND", "DEL"),
                    ("CNI_CONTAINERID", "c"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_ARGS", "FOO=1"),
                ],
                2,
                "FOO",
            ),
        ];
        for (pairs, code, word) in cases {
            let e = env(pairs).unwrap_err();
            assert_eq!(e.code, *code, "{pairs:?}: {e}");
            assert!(e.to_string().contains(word), "{pairs:?}: {e}");
        }
        let d = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;FOO=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_UID=u1",
            ),
        ])
        .unwrap();
        assert_eq!(d.netns, None);
        assert_eq!(d.pod.namespace.as_deref(), Some("ns"));
        assert_eq!(d.pod.name.as_deref(), Some("p"));
        assert_eq!(d.pod.uid.as_deref(), Some("u1"));
        assert_eq!(
            env(&[("CNI_COMMAND", "VERSION")]).unwrap().command,
            Command::Version
        );
    }
}
