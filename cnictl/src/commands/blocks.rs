use anyhow::Result;
use cellplane_etcd::Ipam;
use serde::Serialize;

use crate::config::Settings;
use crate::output::{print, Table};

#[derive(Serialize)]
struct Row {
    pool: String,
    block: String,
    cidr: String,
    node: String,
    allocated: usize,
    borrowed_by_others: usize,
    mod_revision: i64,
}

pub async fn run(
    s: &Settings,
    ipam: &Ipam,
    pool: Option<String>,
    node: Option<String>,
) -> Result<u8> {
    if let Some(p) = &pool {
        ipam.get_pool(p).await?;
    }
    let rows: Vec<Row> = ipam
        .blocks(pool.as_deref())
        .await?
        .into_iter()
        .filter(|b| node.as_ref().is_none_or(|n| &b.record.node == n))
        .map(|b| Row {
            borrowed_by_others: b
                .record
                .allocations
                .values()
                .filter(|a| a.node != b.record.node)
                .count(),
            allocated: b.record.allocations.len(),
            pool: b.pool,
            block: b.id,
            cidr: b.record.cidr.to_string(),
            node: b.record.node,
            mod_revision: b.mod_revision,
        })
        .collect();
    print(s.output, &rows, || {
        let mut t = Table::new(&["BLOCK", "POOL", "NODE", "ALLOCATED", "BORROWED", "REVISION"]);
        for r in &rows {
            t.row(vec![
                r.cidr.clone(),
                r.pool.clone(),
                r.node.clone(),
                r.allocated.to_string(),
                r.borrowed_by_others.to_string(),
                r.mod_revision.to_string(),
            ]);
        }
        t.render()
    })?;
    Ok(0)
}
