use anyhow::Context;
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = cellplane_build_agent::Cli::parse();
    cellplane_daemon::init_logging(&cli.log, &cli.log_format).map_err(anyhow::Error::msg)?;
    let config = cli
        .load()
        .context("loading the build-agent configuration")?;
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(async move {
        let shutdown =
            cellplane_daemon::shutdown_signal().context("installing the signal handlers")?;
        cellplane_build_agent::run(config, shutdown)
            .await
            .context("build-agent failed")
    })
}
