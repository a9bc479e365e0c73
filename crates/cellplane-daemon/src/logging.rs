//! Structured logs on stderr (journald takes them from there), as text or JSON.

/// Installs the global subscriber: `filter` is a tracing filter (`info`,
/// `info,cellplane_etcd=debug`, ...), `format` is `text` or `json`.
pub fn init_logging(filter: &str, format: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| format!("invalid log filter {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => return Err(format!("log format {other:?}: must be text or json")),
    }
    Ok(())
}
