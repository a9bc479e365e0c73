//! Deciding and carrying out releases. A finding is released only when an earlier
//! observation, at least the grace period before the current one, saw the same leak (same
//! address, same attachment), and then only under the guard of the current observation's
//! revision: if anything changed since, etcd refuses and nothing is released.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use cellplane_etcd::{now_ms, GuardedRelease, Ipam};
use serde::Serialize;
use tracing::{info, warn};

use crate::leak::{Action, Finding};

#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub finding: Finding,
    pub first_seen_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub what: String,
    pub kind: String,
    pub result: String,
    pub released: bool,
}

/// Splits current findings into what may be released now and what may not, with why.
pub fn plan(
    current: &[Finding],
    earlier: impl Fn(&Finding) -> Option<u64>,
    now_ms: u64,
    grace: Duration,
) -> (Vec<Planned>, Vec<Outcome>) {
    let mut ok = Vec::new();
    let mut not = Vec::new();
    for f in current {
        let reason = if f.action == Action::None {
            Some("needs an operator: not released automatically".to_string())
        } else {
            match earlier(f) {
                None => Some(format!(
                    "seen leaked for the first time now; released only if seen again after {}",
                    human(grace)
                )),
                Some(first) if now_ms.saturating_sub(first) < grace.as_millis() as u64 => {
                    Some(format!(
                        "seen leaked first {} ago; waiting for the grace period of {}",
                        human(Duration::from_millis(now_ms - first)),
                        human(grace)
                    ))
                }
                Some(first) => {
                    ok.push(Planned {
                        finding: f.clone(),
                        first_seen_ms: first,
                    });
                    None
                }
            }
        };
        if let Some(r) = reason {
            not.push(Outcome {
                what: describe(f),
                kind: kind_name(f),
                result: r,
                released: false,
            });
        }
    }
    (ok, not)
}

pub fn describe(f: &Finding) -> String {
    match (&f.ip, &f.port) {
        (Some(ip), _) => format!(
            "{ip} ({}/{})",
            f.container_id.as_deref().unwrap_or("?"),
            f.ifname.as_deref().unwrap_or("?")
        ),
        (None, Some(p)) => p.clone(),
        _ => f.key(),
    }
}

fn kind_name(f: &Finding) -> String {
    serde_json::to_value(f.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{} ms", d.as_millis())
    } else {
        format!("{s:.0} s")
    }
}

/// Who runs this, for the audit log.
fn actor() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| format!("uid {}", nix::unistd::getuid()));
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{user}@{host}")
}

pub struct Executor<'a> {
    pub ipam: &'a Ipam,
    pub ovsdb: Option<String>,
    pub audit_log: &'a Path,
    pub command: &'static str,
}

impl Executor<'_> {
    /// Carries out each planned release; every attempt is logged with who, what and why.
    pub async fn run(&self, planned: &[Planned]) -> Vec<Outcome> {
        let mut out = Vec::new();
        for p in planned {
            let f = &p.finding;
            let result = self.one(f).await;
            let (released, text) = match &result {
                Ok(t) => (true, t.clone()),
                Err(e) => (false, format!("{e:#}")),
            };
            if released {
                info!(what = %describe(f), kind = %kind_name(f), actor = %actor(), evidence = ?f.evidence, "released");
            } else {
                warn!(what = %describe(f), kind = %kind_name(f), error = %text, "not released");
            }
            self.audit(p, released, &text);
            out.push(Outcome {
                what: describe(f),
                kind: kind_name(f),
                result: text,
                released,
            });
        }
        out
    }

    async fn one(&self, f: &Finding) -> Result<String> {
        let s = |o: &Option<String>| o.clone().unwrap_or_default();
        match f.action {
            Action::ReleaseAddress => {
                let g = GuardedRelease {
                    pool: s(&f.pool),
                    block: s(&f.block),
                    ip: f
                        .ip
                        .ok_or_else(|| anyhow::anyhow!("finding without address"))?,
                    container_id: s(&f.container_id),
                    ifname: s(&f.ifname),
                    seen_mod_revision: f.block_revision.unwrap_or(0),
                };
                self.ipam.release_guarded(&g).await?;
                Ok(format!("released (block revision {})", g.seen_mod_revision))
            }
            Action::DeleteHandle => {
                let key = self
                    .ipam
                    .etcd()
                    .keys()
                    .handle(&s(&f.container_id), &s(&f.ifname));
                let rev = f.handle_revision.unwrap_or(0);
                if self.ipam.etcd().delete_if(&key, rev).await? {
                    Ok(format!("handle deleted (revision {rev})"))
                } else {
                    anyhow::bail!("not deleted: the handle changed since it was checked")
                }
            }
            Action::RemovePort => {
                let name = s(&f.port);
                let ovsdb = self.ovsdb.clone().unwrap_or_default();
                let mut db =
                    cellplane_net::ovsdb::Ovsdb::connect(&ovsdb, Duration::from_secs(5)).await?;
                match db.port(&name).await? {
                    Some(port) => db.del_ports(&[port.uuid]).await?,
                    None => return Ok(format!("OVS port {name} was already gone")),
                }
                Ok(format!("OVS port {name} removed"))
            }
            Action::RemoveVeth => {
                let name = s(&f.port);
                let st = std::process::Command::new("ip")
                    .args(["link", "del", &name])
                    .output()?;
                if st.status.success()
                    || String::from_utf8_lossy(&st.stderr).contains("Cannot find")
                {
                    Ok(format!("veth {name} deleted"))
                } else {
                    anyhow::bail!(
                        "ip link del {name}: {}",
                        String::from_utf8_lossy(&st.stderr).trim()
                    )
                }
            }
            Action::None => anyhow::bail!("needs an operator"),
        }
    }

    fn audit(&self, p: &Planned, released: bool, result: &str) {
        let line = serde_json::json!({
            "at_ms": now_ms(),
            "actor": actor(),
            "command": self.command,
            "released": released,
            "result": result,
            "first_seen_ms": p.first_seen_ms,
            "finding": p.finding,
        });
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.audit_log.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.audit_log)?;
            writeln!(f, "{line}")
        };
        if let Err(e) = write() {
            warn!(path = %self.audit_log.display(), error = %e, "audit log not written");
        }
    }
}
