//! systemd readiness and watchdog (`Type=notify`, `WatchdogSec=`). Reads `NOTIFY_SOCKET` and
//! `WATCHDOG_USEC` once at start; without them every call is a no-op. A packaging test can run
//! the binary with its own datagram socket as `NOTIFY_SOCKET` and read `READY=1`/`WATCHDOG=1`.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::debug;

#[derive(Debug, Clone, Default)]
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        // As sd_watchdog_enabled(3): WATCHDOG_USEC, and WATCHDOG_PID (when set) naming us.
        let usec = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|u| *u > 0);
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .is_none_or(|p| p.parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = usec
            .filter(|_| enabled && for_us)
            .map(Duration::from_micros);
        Notifier { enabled, watchdog }
    }

    /// How often the main loop should ping: half the watchdog timeout.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    fn send(&self, state: NotifyState<'_>) {
        if self.enabled {
            if let Err(e) = sd_notify::notify(false, &[state]) {
                debug!(error = %e, "sd_notify failed");
            }
        }
    }

    pub fn ready(&self) {
        self.send(NotifyState::Ready);
    }

    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            self.send(NotifyState::Watchdog);
        }
    }

    pub fn stopping(&self) {
        self.send(NotifyState::Stopping);
    }
}
