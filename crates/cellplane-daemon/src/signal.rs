//! Shutdown on SIGTERM or SIGINT.

use std::future::Future;

use tokio::signal::unix::{signal, SignalKind};

/// Registers the SIGTERM and SIGINT handlers now — so a signal that arrives at any moment after
/// this call is caught, even before the returned future is first polled — and returns a future
/// that resolves on the first of them. Call it inside the runtime, before the daemon reports
/// ready.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received; shutting down");
    })
}
