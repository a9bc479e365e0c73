use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match cellplane_cnictl::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // one line naming the problem (clap's first line), not a usage page
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("cnictl: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter(&cli.global.log_level))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cnictl: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(cellplane_cnictl::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // one line, naming the problem (the chain, outermost first)
            eprintln!("cnictl: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The log filter: a plain level applies to cnictl; the Kubernetes client's own error lines
/// are off because the error it returns is reported once, here. Full directives
/// (`kube_client=debug,...`) are taken as given.
fn filter(level: &str) -> EnvFilter {
    let spec = if level.contains('=') {
        level.to_string()
    } else {
        format!("{level},kube_client=off")
    };
    EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new("warn"))
}
