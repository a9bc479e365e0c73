use anyhow::Context;
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = cellplane_control_api::Cli::parse();
    cellplane_daemon::init_logging(&cli.log, &cli.log_format).map_err(anyhow::Error::msg)?;
    let config = cli
        .load()
        .context("loading the control-api configuration")?;
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(async move {
        let shutdown =
            cellplane_daemon::shutdown_signal().context("installing the signal handlers")?;
        cellplane_control_api::run(config, shutdown)
            .await
            .context("control-api failed")
    })
}
