//! Network namespaces: open one by path, and enter it only on a short-lived dedicated OS
//! thread to create sockets there. The thread's original namespace is restored by a guard.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};
use tracing::warn;

use crate::error::NetError;

/// `NSFS_MAGIC` from linux/magic.h: the file system of `/proc/*/ns/*` and their bind mounts.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// An open network namespace (a file descriptor on nsfs).
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

/// Sockets opened inside a namespace, usable from any thread afterwards.
#[derive(Debug)]
pub struct NetnsSockets {
    /// An `AF_NETLINK`/`NETLINK_ROUTE` socket (blocking mode; wrap it with
    /// [`crate::Netlink::from_fd`]).
    pub route: OwnedFd,
    /// An `AF_PACKET` raw socket for gratuitous ARP, when asked for.
    pub packet: Option<OwnedFd>,
}

impl Netns {
    /// Opens `path` (e.g. `/run/netns/x` or `/proc/PID/ns/net`) and checks it is a namespace.
    pub fn open(path: impl AsRef<Path>) -> Result<Netns, NetError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| NetError::NetnsOpen {
            path: path.clone(),
            source,
        })?;
        let st = nix::sys::statfs::fstatfs(&file).map_err(|e| NetError::NetnsOpen {
            path: path.clone(),
            source: e.into(),
        })?;
        #[allow(clippy::unnecessary_cast)]
        if st.filesystem_type().0 as i64 != NSFS_MAGIC {
            return Err(NetError::NotNetns { path });
        }
        Ok(Netns { file, path })
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<Netns, NetError> {
        Netns::open("/proc/thread-self/ns/net")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }

    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// Runs `f` on a new OS thread that has entered this namespace; the thread restores its
    /// original namespace (guard) before it ends. Use it only to obtain handles (sockets).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetError> {
        std::thread::scope(|s| {
            s.spawn(|| -> Result<T, NetError> {
                let _guard = NetnsGuard::enter(self)?;
                Ok(f())
            })
            .join()
            .map_err(|_| NetError::ThreadPanicked)?
        })
    }

    /// Opens a route netlink socket (and an `AF_PACKET` socket when `packet`) inside this
    /// namespace, in one trip to a dedicated thread.
    pub fn open_sockets(&self, packet: bool) -> Result<NetnsSockets, NetError> {
        self.run(|| -> Result<NetnsSockets, NetError> {
            let route = raw_socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE).map_err(
                |source| NetError::Socket {
                    what: "netlink",
                    source,
                },
            )?;
            let packet = if packet {
                // protocol 0: send only, the socket receives nothing
                Some(
                    raw_socket(libc::AF_PACKET, libc::SOCK_RAW, 0).map_err(|source| {
                        NetError::Socket {
                            what: "packet",
                            source,
                        }
                    })?,
                )
            } else {
                None
            };
            Ok(NetnsSockets { route, packet })
        })?
    }
}

/// What [`Netns::setup_pod_link`] does to an interface inside the namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodLinkSetup {
    /// Turn on `net.ipv4.conf.{ifname}.arp_notify`.
    pub arp_notify: bool,
    /// Turn TX checksum offload off (`ETHTOOL_STXCSUM`, as `ethtool -K IF tx off`).
    pub tx_checksum_off: bool,
}

impl Netns {
    /// Turns on `net.ipv4.conf.{ifname}.arp_notify` inside this namespace (one trip to a
    /// dedicated thread): the kernel then sends a gratuitous ARP for the interface's
    /// addresses whenever it comes up or changes its MAC. Cheaper than our own `AF_PACKET`
    /// socket, whose close waits for an RCU grace period (`synchronize_net`, ~12 ms here).
    pub fn enable_arp_notify(&self, ifname: &str) -> Result<(), NetError> {
        self.setup_pod_link(
            ifname,
            PodLinkSetup {
                arp_notify: true,
                tx_checksum_off: false,
            },
        )
    }

    /// Applies `setup` to `ifname` inside this namespace, in one trip to a dedicated thread
    /// (nothing to do: no trip).
    pub fn setup_pod_link(&self, ifname: &str, setup: PodLinkSetup) -> Result<(), NetError> {
        if ifname.is_empty() || ifname.contains('/') || ifname == "." || ifname == ".." {
            return Err(NetError::LinkNotFound {
                name: ifname.to_string(),
                netns: Some(self.path.display().to_string()),
            });
        }
        if setup == PodLinkSetup::default() {
            return Ok(());
        }
        let path = format!("/proc/sys/net/ipv4/conf/{ifname}/arp_notify");
        self.run(|| -> Result<(), NetError> {
            if setup.arp_notify {
                std::fs::write(&path, b"1").map_err(|source| NetError::Sysctl {
                    path: path.clone(),
                    source,
                })?;
            }
            if setup.tx_checksum_off {
                crate::ethtool::set_tx_checksum(ifname, false).map_err(|source| {
                    NetError::Ethtool {
                        op: "turning TX checksum offload off",
                        name: ifname.to_string(),
                        netns: Some(self.path.display().to_string()),
                        source,
                    }
                })?;
            }
            Ok(())
        })?
    }
}

fn raw_socket(domain: i32, ty: i32, proto: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned by the returned OwnedFd.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Puts the current thread into a namespace and back again on drop.
struct NetnsGuard {
    orig: File,
}

impl NetnsGuard {
    fn enter(target: &Netns) -> Result<NetnsGuard, NetError> {
        let orig =
            File::open("/proc/thread-self/ns/net").map_err(|source| NetError::NetnsOpen {
                path: "/proc/thread-self/ns/net".into(),
                source,
            })?;
        setns(target.fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetError::Setns {
            path: target.path.clone(),
            source,
        })?;
        Ok(NetnsGuard { orig })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(self.orig.as_fd(), CloneFlags::CLONE_NEWNET) {
            // The thread is dedicated and ends right after; still say so.
            warn!(error = %NetError::Restore { source: e }, "netns restore failed");
        }
    }
}
