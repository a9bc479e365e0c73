use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use cellplane_etcd::Ipam;

use crate::cli::ReleaseArgs;
use crate::config::Settings;
use crate::leak::Finding;
use crate::observe::{observe, Report, State};
use crate::output::{print, Table};
use crate::release::{describe, plan, Executor, Outcome};

/// `cnictl release IP... | --from-report FILE`: a fresh observation now is the second one;
/// the first is the report (or the last `check`, from the state file).
pub async fn run(s: &Settings, ipam: &Ipam, a: &ReleaseArgs) -> Result<u8> {
    if a.ips.is_empty() && a.from_report.is_none() {
        bail!("nothing to release: give addresses, or --from-report FILE");
    }
    let grace = a.grace.unwrap_or(s.grace);
    let state_path = a
        .check
        .state_file
        .clone()
        .unwrap_or_else(|| s.state_file.clone());
    let earlier: HashMap<String, u64> = match &a.from_report {
        Some(p) => {
            let text = std::fs::read(p).with_context(|| format!("report {}", p.display()))?;
            let r: Report = serde_json::from_slice(&text)
                .with_context(|| format!("report {}: not a cnictl check report", p.display()))?;
            r.findings
                .iter()
                .map(|f| (f.key(), r.observed_at_ms))
                .collect()
        }
        None => State::load(&state_path)?
            .findings
            .into_iter()
            .map(|(k, v)| (k, v.first_seen_ms))
            .collect(),
    };
    let now = observe(s, ipam, &a.check).await?;
    // what was asked for: the given addresses, or everything in the report
    let mut refused: Vec<Outcome> = Vec::new();
    let wanted: Vec<Finding> = if a.ips.is_empty() {
        now.findings
            .iter()
            .filter(|f| earlier.contains_key(&f.key()))
            .cloned()
            .collect()
    } else {
        let mut v = Vec::new();
        for ip in &a.ips {
            let here: Vec<&Finding> = now.findings.iter().filter(|f| f.ip == Some(*ip)).collect();
            if here.is_empty() {
                refused.push(Outcome {
                    what: ip.to_string(),
                    kind: String::new(),
                    result: "not released: not leaked now (no finding for this address)".into(),
                    released: false,
                });
            }
            v.extend(here.into_iter().cloned());
        }
        v
    };
    if a.from_report.is_some() {
        // report findings that are not leaked any more, or are held by someone else now
        for key in earlier.keys() {
            if !now.findings.iter().any(|f| &f.key() == key) {
                let ip = key.split('/').nth(1).unwrap_or_default();
                let holder = now
                    .findings
                    .iter()
                    .find(|f| f.ip.map(|i| i.to_string()).as_deref() == Some(ip));
                let why = match holder {
                    Some(f) => format!("not released: it now belongs to {}", describe(f)),
                    None => {
                        "not released: no longer leaked (its owner came back or it was released)"
                            .into()
                    }
                };
                refused.push(Outcome {
                    what: key.clone(),
                    kind: String::new(),
                    result: why,
                    released: false,
                });
            }
        }
    }
    let (planned, waiting) = plan(
        &wanted,
        |f| earlier.get(&f.key()).copied(),
        now.observed_at_ms,
        grace,
    );
    refused.extend(waiting);
    let mut outcomes = Vec::new();
    if a.dry_run {
        outcomes.extend(planned.iter().map(|p| Outcome {
            what: describe(&p.finding),
            kind: crate::commands::check::kind(p.finding.kind),
            result: format!(
                "would release (guard: block revision {})",
                p.finding.block_revision.unwrap_or(0)
            ),
            released: false,
        }));
    } else {
        let exec = Executor {
            ipam,
            ovsdb: Some(a.check.ovsdb.clone().unwrap_or_else(|| s.ovsdb.clone())),
            audit_log: &s.audit_log,
            command: "release",
        };
        outcomes.extend(exec.run(&planned).await);
    }
    let all_ok = refused.is_empty() && outcomes.iter().all(|o| o.released || a.dry_run);
    outcomes.extend(refused);
    print(s.output, &outcomes, || render(&outcomes))?;
    Ok(if all_ok { 0 } else { 1 })
}

pub fn render(outcomes: &[Outcome]) -> String {
    if outcomes.is_empty() {
        return "nothing to release\n".into();
    }
    let mut t = Table::new(&["WHAT", "KIND", "RESULT"]);
    for o in outcomes {
        t.row(vec![o.what.clone(), o.kind.clone(), o.result.clone()]);
    }
    t.render()
}
