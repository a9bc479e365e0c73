//! `cellplane`: the CNI plugin binary. Stdout is the protocol: results and error JSON only;
//! logs go to stderr and the optional `logFile`.

use std::io::{Read, Write};
use std::process::ExitCode;

use cellplane_cni::{CniError, Invocation};
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::EnvFilter;

fn print(v: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, v);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

fn fail(e: &CniError, version: &str) -> ExitCode {
    print(&e.to_json(version));
    ExitCode::FAILURE
}

fn init_logging(inv: &Invocation) {
    let Some(conf) = &inv.conf else { return };
    let level = conf.log_level.as_str();
    let filter = || {
        EnvFilter::try_new(format!(
            "warn,cellplane={level},cellplane_cni={level},cellplane_net={level},cellplane_etcd={level}"
        ))
    };
    let file = conf.log_file.as_ref().and_then(|p| {
        if let Some(d) = p.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    let builder = tracing_subscriber::fmt().with_ansi(false);
    let res = match (file, filter()) {
        (Some(f), Ok(flt)) => builder
            .with_env_filter(flt)
            .with_writer(
                std::sync::Mutex::new(f).and(std::io::stderr.with_max_level(tracing::Level::WARN)),
            )
            .try_init(),
        (None, Ok(flt)) => builder
            .with_env_filter(flt)
            .with_writer(std::io::stderr)
            .try_init(),
        (_, Err(_)) => Ok(()),
    };
    let _ = res;
}

fn main() -> ExitCode {
    // For people and package tests: the CNI protocol itself never passes arguments.
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!(
            "cellplane {} (CNI plugin; spec versions {})",
            env!("CARGO_PKG_VERSION"),
            cellplane_cni::version::SUPPORTED.join(", ")
        );
        return ExitCode::SUCCESS;
    }
    let started = std::time::Instant::now();
    let code = run_main();
    tracing::debug!(
        process_ms = started.elapsed().as_secs_f64() * 1e3,
        "exiting"
    );
    code
}

fn run_main() -> ExitCode {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        let e = CniError::new(
            cellplane_cni::code::IO,
            format!("reading the network config from stdin: {e}"),
        );
        return fail(&e, cellplane_cni::version::CURRENT);
    }
    let inv = match Invocation::parse(|k| std::env::var(k).ok(), &stdin) {
        Ok(i) => i,
        Err((e, v)) => return fail(&e, &v),
    };
    init_logging(&inv);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let e = CniError::new(
                cellplane_cni::code::IO,
                format!("starting the runtime: {e}"),
            );
            return fail(&e, &inv.reply_version);
        }
    };
    match rt.block_on(cellplane_cni::run(&inv, &stdin)) {
        Ok(Some(v)) => {
            print(&v);
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(code = e.code, error = %e, "command failed");
            fail(&e, &inv.reply_version)
        }
    }
}
