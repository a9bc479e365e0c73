//! Plumbing shared by the daemons (nginx-agent, control-api, discovery): logging, systemd readiness
//! and watchdog, and shutdown on SIGTERM.

mod logging;
mod notify;
mod signal;

pub use logging::init_logging;
pub use notify::Notifier;
pub use signal::shutdown_signal;
