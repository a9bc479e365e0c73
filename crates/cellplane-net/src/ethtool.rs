//! Offload settings through the `SIOCETHTOOL` ioctl, without exec'ing `ethtool`.
//!
//! `ethtool -K DEV tx off` and `ETHTOOL_STXCSUM` with 0 do the same thing here (compared with
//! `ethtool -k` on a veth, kernel 6.18): the kernel clears every TX checksum feature
//! (`tx-checksum-ip-generic`, `tx-checksum-sctp`, ...) and then drops the features that depend
//! on them (`tx-tcp-segmentation`, `tx-tcp6-segmentation`, `tx-udp-segmentation`, ... show
//! "off [requested on]").
//!
//! The ioctl acts in the namespace of the socket it is issued on: the caller's own namespace
//! for [`set_tx_checksum`], or a socket opened inside a pod's namespace (see
//! [`crate::Netns::setup_pod_link`]).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` member of its union (40 bytes on 64-bit).
#[repr(C)]
struct IfreqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 24 - std::mem::size_of::<*mut libc::c_void>()],
}

fn ifname_bytes(ifname: &str) -> io::Result<[u8; libc::IFNAMSIZ]> {
    let b = ifname.as_bytes();
    if b.is_empty() || b.len() >= libc::IFNAMSIZ || b.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {ifname:?}"),
        ));
    }
    let mut name = [0u8; libc::IFNAMSIZ];
    name[..b.len()].copy_from_slice(b);
    Ok(name)
}

fn ethtool_value(sock: BorrowedFd<'_>, ifname: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let mut v = EthtoolValue { cmd, data };
    let mut ifr = IfreqData {
        name: ifname_bytes(ifname)?,
        data: (&mut v as *mut EthtoolValue).cast(),
        _pad: [0; 24 - std::mem::size_of::<*mut libc::c_void>()],
    };
    // SAFETY: SIOCETHTOOL reads the ifreq and reads/writes the ethtool_value it points to;
    // both live on this stack frame for the duration of the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut ifr) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v.data)
}

/// A socket to issue the ioctl on, in the calling thread's namespace (`AF_UNIX` datagram: the
/// cheapest to open and to close).
pub fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned by the returned OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Turns TX checksum offload of `ifname` on or off (`ETHTOOL_STXCSUM`, as `ethtool -K IF tx
/// on|off`), in the namespace of `sock`.
pub fn set_tx_checksum_on(sock: BorrowedFd<'_>, ifname: &str, on: bool) -> io::Result<()> {
    ethtool_value(sock, ifname, ETHTOOL_STXCSUM, u32::from(on)).map(|_| ())
}

/// Whether TX checksum offload of `ifname` is on (`ETHTOOL_GTXCSUM`), in the namespace of
/// `sock`.
pub fn tx_checksum_on(sock: BorrowedFd<'_>, ifname: &str) -> io::Result<bool> {
    ethtool_value(sock, ifname, ETHTOOL_GTXCSUM, 0).map(|d| d != 0)
}

/// [`set_tx_checksum_on`] in the calling thread's namespace.
pub fn set_tx_checksum(ifname: &str, on: bool) -> io::Result<()> {
    let s = control_socket()?;
    set_tx_checksum_on(std::os::fd::AsFd::as_fd(&s), ifname, on)
}

/// [`tx_checksum_on`] in the calling thread's namespace.
pub fn tx_checksum(ifname: &str) -> io::Result<bool> {
    let s = control_socket()?;
    tx_checksum_on(std::os::fd::AsFd::as_fd(&s), ifname)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_names() {
        assert_eq!(std::mem::size_of::<IfreqData>(), 40);
        assert!(ifname_bytes("").is_err());
        assert!(ifname_bytes("0123456789abcdef").is_err());
        assert!(ifname_bytes("a\0b").is_err());
        assert_eq!(&ifname_bytes("eth0").unwrap()[..5], b"eth0\0");
    }

    #[test]
    fn loopback_reads_and_unknown_interface_fails() {
        // lo exists in every namespace; reading needs no privilege
        let s = control_socket().unwrap();
        assert!(tx_checksum_on(std::os::fd::AsFd::as_fd(&s), "lo").is_ok());
        let e = tx_checksum("cp-no-such-if0").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV), "{e}");
    }
}
