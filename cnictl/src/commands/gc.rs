use std::time::Duration;

use anyhow::Result;
use cellplane_etcd::Ipam;
use serde_json::json;

use crate::cli::CheckArgs;
use crate::commands::check;
use crate::config::Settings;
use crate::observe::{observe, State};
use crate::output::print;
use crate::release::{plan, Executor, Outcome};

/// `cnictl gc [--apply]`: observe, and release what an earlier observation at least the grace
/// period ago saw leaked too. Without --apply only reports. Exit 0 unless an error occurs:
/// findings waiting for their second observation are normal for a timer.
pub async fn run(
    s: &Settings,
    ipam: &Ipam,
    args: &CheckArgs,
    apply: bool,
    grace: Option<Duration>,
) -> Result<u8> {
    let grace = grace.unwrap_or(s.grace);
    let state_path = args
        .state_file
        .clone()
        .unwrap_or_else(|| s.state_file.clone());
    let mut state = State::load(&state_path)?;
    let report = observe(s, ipam, args).await?;
    let (planned, mut outcomes) = plan(
        &report.findings,
        |f| state.findings.get(&f.key()).map(|x| x.first_seen_ms),
        report.observed_at_ms,
        grace,
    );
    let mut released_keys = Vec::new();
    if apply {
        let exec = Executor {
            ipam,
            ovsdb: Some(args.ovsdb.clone().unwrap_or_else(|| s.ovsdb.clone())),
            audit_log: &s.audit_log,
            command: "gc",
        };
        let done = exec.run(&planned).await;
        for (p, o) in planned.iter().zip(&done) {
            if o.released {
                released_keys.push(p.finding.key());
            }
        }
        outcomes.extend(done);
    } else {
        outcomes.extend(planned.iter().map(|p| Outcome {
            what: crate::release::describe(&p.finding),
            kind: check::kind(p.finding.kind),
            result: "would release (run with --apply)".into(),
            released: false,
        }));
    }
    // remember this observation, minus what is gone now
    let remaining: Vec<_> = report
        .findings
        .iter()
        .filter(|f| !released_keys.contains(&f.key()))
        .cloned()
        .collect();
    state.record(&remaining, report.observed_at_ms);
    state.save(&state_path)?;
    if let Some(p) = &args.textfile {
        let mut r = report.clone();
        r.findings = remaining;
        check::write_textfile(p, &r)?;
    }
    let v = json!({"observed_at_ms": report.observed_at_ms, "apply": apply, "grace_ms": grace.as_millis() as u64,
                   "findings": report.findings.len(), "released": released_keys.len(), "outcomes": outcomes});
    print(s.output, &v, || {
        format!(
            "{}{} findings, {} released{}\n",
            crate::commands::release::render(&outcomes),
            report.findings.len(),
            released_keys.len(),
            if apply {
                ""
            } else {
                " (report only: --apply releases)"
            }
        )
    })?;
    Ok(0)
}
