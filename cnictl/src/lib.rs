//! cnictl: the operators' CLI for cellplane's IP pools on hosts. Pools, usage, block
//! ownership, leak detection (etcd against the Kubernetes API and the node itself), safe
//! release (two observations a grace period apart, guarded by the block revision), and
//! removal of dead nodes.

pub mod cli;
pub mod commands;
pub mod config;
pub mod leak;
pub mod observe;
pub mod output;
pub mod release;
pub mod sources;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::config::Settings;

/// Runs one command; returns the exit status (errors are exit 2, printed by main).
pub async fn run(cli: Cli) -> Result<u8> {
    let s = Settings::resolve(&cli.global)?;
    let ipam = sources::connect(&s).await?;
    match cli.command {
        Command::Pool(cmd) => commands::pool::run(&s, &ipam, cmd).await,
        Command::Usage { pool, for_node } => commands::usage::run(&s, &ipam, pool, for_node).await,
        Command::Blocks { pool, for_node } => {
            commands::blocks::run(&s, &ipam, pool, for_node).await
        }
        Command::Check(args) => commands::check::run(&s, &ipam, &args).await,
        Command::Release(args) => commands::release::run(&s, &ipam, &args).await,
        Command::Gc {
            check,
            apply,
            grace,
        } => commands::gc::run(&s, &ipam, &check, apply, grace).await,
        Command::Node(cmd) => commands::node::run(&s, &ipam, cmd).await,
    }
}
