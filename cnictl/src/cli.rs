//! Command line. Every etcd and Kubernetes setting can come from the config file, the
//! environment or a flag; flags win over the environment, which wins over the file.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "cnictl",
    version,
    about = "Operate cellplane IP pools: usage, leaks, safe release, dead nodes"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Config file (TOML with [etcd], [kubernetes], [gc] tables). A missing default file is fine.
    /// [default: /etc/cellplane/cnictl.toml]
    #[arg(long, global = true, env = "CELLPLANE_CNICTL_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub etcd: cellplane_etcd::EtcdArgs,
    /// kubeconfig for the Kubernetes API (default: in-cluster config, then ~/.kube/config).
    #[arg(long, global = true, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Do not ask the Kubernetes API (leak checks then rely on --local evidence only).
    #[arg(long, global = true)]
    pub no_kube: bool,
    /// This node's name (default: the host name).
    #[arg(long, global = true, env = "CELLPLANE_NODE")]
    pub node: Option<String>,
    /// Output of read commands.
    #[arg(short = 'o', long, global = true, value_enum)]
    pub output: Option<Output>,
    /// Log level on stderr (error, warn, info, debug).
    #[arg(long, global = true, env = "CELLPLANE_LOG", default_value = "warn")]
    pub log_level: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add, list, show, drain or remove IP pools.
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Allocated, cooling and free addresses per pool, node and block.
    Usage {
        #[arg(long)]
        pool: Option<String>,
        /// Only this node's blocks.
        #[arg(long = "for-node")]
        for_node: Option<String>,
    },
    /// Block ownership.
    Blocks {
        #[arg(long)]
        pool: Option<String>,
        #[arg(long = "for-node")]
        for_node: Option<String>,
    },
    /// Find leaked addresses. Exit status: 0 clean, 1 findings, 2 error.
    Check(CheckArgs),
    /// Release leaked addresses that were seen leaked twice, a grace period apart.
    Release(ReleaseArgs),
    /// check + release in one, for a timer. Without --apply it only reports.
    Gc {
        #[command(flatten)]
        check: CheckArgs,
        /// Release what was seen leaked in two observations at least the grace period apart.
        #[arg(long)]
        apply: bool,
        #[arg(long, value_parser = parse_duration)]
        grace: Option<std::time::Duration>,
    },
    /// Dead nodes.
    #[command(subcommand)]
    Node(NodeCmd),
}

#[derive(Debug, Args, Clone, Default)]
pub struct CheckArgs {
    /// Also check this node: namespaces, OVS ports and host veths (needs root).
    #[arg(long)]
    pub local: bool,
    /// Write Prometheus metrics for node_exporter's textfile collector to this file.
    #[arg(long)]
    pub textfile: Option<PathBuf>,
    /// Also write the JSON report to this file (for `release --from-report`).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Where observations are remembered between runs.
    #[arg(long, env = "CELLPLANE_CNICTL_STATE")]
    pub state_file: Option<PathBuf>,
    /// OVSDB socket for --local.
    #[arg(long, env = "CELLPLANE_OVSDB")]
    pub ovsdb: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// Addresses to release (each must be a finding now and in the earlier observation).
    pub ips: Vec<Ipv4Addr>,
    /// Release what this report (from `check --report` or `check -o json`) found.
    #[arg(long)]
    pub from_report: Option<PathBuf>,
    /// Show what would be released, release nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, value_parser = parse_duration)]
    pub grace: Option<std::time::Duration>,
    #[command(flatten)]
    pub check: CheckArgs,
}

#[derive(Debug, Subcommand)]
pub enum PoolCmd {
    /// Add a pool online.
    Add {
        name: String,
        #[arg(long, value_parser = parse_net)]
        cidr: ipnetwork::Ipv4Network,
        #[arg(long)]
        vlan: u16,
        #[arg(long)]
        gateway: Ipv4Addr,
        /// An address or CIDR never handed out (repeatable).
        #[arg(long, value_parser = parse_net)]
        exclude: Vec<ipnetwork::Ipv4Network>,
        #[arg(long, default_value_t = 16)]
        block_size: u32,
    },
    List,
    Show {
        name: String,
    },
    /// Stop handing out addresses from a pool (existing ones stay).
    Drain {
        name: String,
    },
    /// Undo drain.
    Activate {
        name: String,
    },
    /// Remove a pool; refused while addresses are allocated.
    Remove {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Release a dead node's addresses and blocks (refused while Kubernetes still lists it,
    /// unless --force).
    Remove {
        name: String,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 300s, 5m, 1h"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    };
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// An address (as a /32) or a CIDR.
pub fn parse_net(s: &str) -> Result<ipnetwork::Ipv4Network, String> {
    let full = if s.contains('/') {
        s.to_string()
    } else {
        format!("{s}/32")
    };
    full.parse()
        .map_err(|e| format!("{s:?} is not an IPv4 address or CIDR: {e}"))
}
