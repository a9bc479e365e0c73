use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use cellplane_etcd::Ipam;

use crate::cli::CheckArgs;
use crate::config::Settings;
use crate::leak::{Finding, Kind};
use crate::observe::{observe, write_atomic, Report, State};
use crate::output::{print, Table};

/// `cnictl check`: 0 clean, 1 findings (2, an error, comes from main).
pub async fn run(s: &Settings, ipam: &Ipam, args: &CheckArgs) -> Result<u8> {
    let report = observe(s, ipam, args).await?;
    record(s, args, &report)?;
    emit(s, args, &report)?;
    Ok(if report.findings.is_empty() { 0 } else { 1 })
}

/// Remembers this observation (for `release` and `gc`).
pub fn record(s: &Settings, args: &CheckArgs, report: &Report) -> Result<()> {
    let path = args
        .state_file
        .clone()
        .unwrap_or_else(|| s.state_file.clone());
    let mut state = State::load(&path)?;
    state.record(&report.findings, report.observed_at_ms);
    state.save(&path)
}

/// Prints the report and writes the report / textfile outputs asked for.
pub fn emit(s: &Settings, args: &CheckArgs, report: &Report) -> Result<()> {
    if let Some(p) = &args.report {
        write_atomic(p, &serde_json::to_vec_pretty(report)?)
            .with_context(|| format!("report {}", p.display()))?;
    }
    if let Some(p) = &args.textfile {
        write_textfile(p, report)?;
    }
    print(s.output, report, || render(report))
}

pub fn render(report: &Report) -> String {
    if report.findings.is_empty() {
        return format!(
            "no leaks: {} allocations checked against {}\n",
            report.allocations,
            report.sources.join(", ")
        );
    }
    let mut t = Table::new(&[
        "KIND", "ADDRESS", "POOL", "NODE", "OWNER", "POD", "ACTION", "EVIDENCE",
    ]);
    for f in &report.findings {
        t.row(vec![
            kind(f.kind),
            f.ip.map(|i| i.to_string())
                .or_else(|| f.port.clone())
                .unwrap_or_default(),
            f.pool.clone().unwrap_or_default(),
            f.node.clone().unwrap_or_default(),
            match (&f.container_id, &f.ifname) {
                (Some(c), Some(i)) => format!("{}/{i}", short(c)),
                _ => String::new(),
            },
            f.pod.clone().unwrap_or_default(),
            serde_json::to_value(f.action)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            f.evidence.join("; "),
        ]);
    }
    format!(
        "{}{} findings in {} allocations (sources: {})\n",
        t.render(),
        report.findings.len(),
        report.allocations,
        report.sources.join(", ")
    )
}

fn short(cid: &str) -> &str {
    &cid[..cid.len().min(16)]
}

pub fn kind(k: Kind) -> String {
    serde_json::to_value(k)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

const KINDS: &[Kind] = &[
    Kind::NodeGone,
    Kind::PodGone,
    Kind::PodOnOtherNode,
    Kind::PodTerminated,
    Kind::NetnsGone,
    Kind::DuplicateOwner,
    Kind::AllocationWithoutHandle,
    Kind::HandleWithoutAllocation,
    Kind::PortMissing,
    Kind::OrphanPort,
    Kind::OrphanVeth,
];

fn is_address(f: &Finding) -> bool {
    f.ip.is_some() && f.kind != Kind::HandleWithoutAllocation
}

/// Prometheus text for node_exporter's textfile collector (written atomically).
pub fn write_textfile(path: &Path, report: &Report) -> Result<()> {
    let mut leaked: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut by_kind: BTreeMap<Kind, u64> = KINDS.iter().map(|k| (*k, 0)).collect();
    for f in &report.findings {
        *by_kind.entry(f.kind).or_default() += 1;
        if is_address(f) {
            let key = (
                f.pool.clone().unwrap_or_default(),
                f.node.clone().unwrap_or_default(),
            );
            *leaked.entry(key).or_default() += 1;
        }
    }
    let mut out = String::new();
    out += "# HELP cellplane_ipam_leaked_addresses Addresses allocated in etcd whose owner no longer exists, per pool and node.\n";
    out += "# TYPE cellplane_ipam_leaked_addresses gauge\n";
    for ((pool, node), n) in &leaked {
        let _ = writeln!(
            out,
            "cellplane_ipam_leaked_addresses{{pool=\"{pool}\",node=\"{node}\"}} {n}"
        );
    }
    out += "# HELP cellplane_ipam_check_findings Findings of the last check, per kind.\n";
    out += "# TYPE cellplane_ipam_check_findings gauge\n";
    for (k, n) in &by_kind {
        let _ = writeln!(
            out,
            "cellplane_ipam_check_findings{{kind=\"{}\"}} {n}",
            kind(*k)
        );
    }
    out += "# HELP cellplane_ipam_check_allocations Allocations compared by the last check.\n";
    out += "# TYPE cellplane_ipam_check_allocations gauge\n";
    let _ = writeln!(
        out,
        "cellplane_ipam_check_allocations {}",
        report.allocations
    );
    out += "# HELP cellplane_ipam_check_timestamp_seconds When the last check ran.\n";
    out += "# TYPE cellplane_ipam_check_timestamp_seconds gauge\n";
    let _ = writeln!(
        out,
        "cellplane_ipam_check_timestamp_seconds {:.3}",
        report.observed_at_ms as f64 / 1000.0
    );
    write_atomic(path, out.as_bytes()).with_context(|| format!("textfile {}", path.display()))
}
