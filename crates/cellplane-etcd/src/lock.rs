//! The host lock: one allocation at a time per node (`flock` on a file, e.g.
//! `/run/cellplane/ipam.lock`). Waiting for it has its own deadline; the caller's etcd
//! deadline starts only once the lock is held, so a queue of pods does not eat its budget.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum LockError {
    #[error("host lock {path} is held by another process; gave up after {waited_ms} ms")]
    Timeout { path: PathBuf, waited_ms: u64 },
    #[error("cannot open host lock {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Held while alive; dropping it releases the lock (closing the file does).
#[derive(Debug)]
pub struct HostLock {
    _lock: Flock<File>,
    acquired: Instant,
}

impl HostLock {
    pub fn acquire(path: &Path, wait: Duration) -> Result<HostLock, LockError> {
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let start = Instant::now();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let mut pause = Duration::from_micros(200);
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => {
                    return Ok(HostLock {
                        _lock: lock,
                        acquired: Instant::now(),
                    })
                }
                Err((f, Errno::EWOULDBLOCK)) | Err((f, Errno::EINTR)) => {
                    if start.elapsed() >= wait {
                        return Err(LockError::Timeout {
                            path: path.to_path_buf(),
                            waited_ms: start.elapsed().as_millis() as u64,
                        });
                    }
                    file = f;
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(5));
                }
                Err((_, errno)) => return Err(io(std::io::Error::from(errno))),
            }
        }
    }

    /// When the lock was obtained: deadlines for work under the lock start here.
    pub fn acquired_at(&self) -> Instant {
        self.acquired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_times_out_then_gets_it() {
        let dir = std::env::temp_dir().join(format!("cp-lock-{}", std::process::id()));
        let path = dir.join("ipam.lock");
        let a = HostLock::acquire(&path, Duration::from_millis(100)).unwrap();
        let t = Instant::now();
        let e = HostLock::acquire(&path, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(e, LockError::Timeout { .. }), "{e}");
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert!(t.elapsed() < Duration::from_millis(1000));
        drop(a);
        let _b = HostLock::acquire(&path, Duration::from_millis(100)).unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
