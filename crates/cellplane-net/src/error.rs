use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Errors from namespaces, netlink and raw sockets.
#[derive(Debug, Error)]
pub enum NetError {
    #[error("network namespace {path} cannot be opened: {source}")]
    NetnsOpen { path: PathBuf, source: io::Error },
    #[error("{path} is not a network namespace")]
    NotNetns { path: PathBuf },
    #[error("entering network namespace {path}: {source}")]
    Setns { path: PathBuf, source: nix::Error },
    #[error("restoring the thread's network namespace: {source}")]
    Restore { source: nix::Error },
    #[error("opening {what} socket: {source}")]
    Socket {
        what: &'static str,
        source: io::Error,
    },
    #[error("the namespace thread panicked")]
    ThreadPanicked,
    #[error("interface {name} already exists{}", in_netns(.netns))]
    Exists { name: String, netns: Option<String> },
    #[error("interface {name} not found{}", in_netns(.netns))]
    LinkNotFound { name: String, netns: Option<String> },
    #[error("netlink {op} on {target}: {source}")]
    Netlink {
        op: &'static str,
        target: String,
        source: rtnetlink::Error,
    },
    #[error("ethtool: {op} on {name}{}: {source}", in_netns(.netns))]
    Ethtool {
        op: &'static str,
        name: String,
        netns: Option<String>,
        source: io::Error,
    },
    #[error("writing sysctl {path}: {source}")]
    Sysctl { path: String, source: io::Error },
    #[error("sending gratuitous ARP for {ip} on ifindex {ifindex}: {source}")]
    Arp {
        ip: std::net::Ipv4Addr,
        ifindex: u32,
        source: io::Error,
    },
}

fn in_netns(ns: &Option<String>) -> String {
    ns.as_deref()
        .map(|n| format!(" in netns {n}"))
        .unwrap_or_default()
}

impl NetError {
    /// The errno of a netlink NACK, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetError::Netlink {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => Some(-m.raw_code()),
            _ => None,
        }
    }
}

/// The positive errno of an rtnetlink NACK.
pub(crate) fn nl_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}
