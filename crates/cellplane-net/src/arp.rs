//! Gratuitous ARP over an `AF_PACKET` socket opened inside the pod's namespace.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::error::NetError;

const ETH_P_ARP: u16 = 0x0806;

/// The 42-byte frame: broadcast Ethernet header + ARP request with sender = target = `ip`.
pub fn garp_frame(mac: &[u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // htype ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // ptype ipv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(mac);
    f[28..32].copy_from_slice(&ip.octets());
    // target hardware address stays zero
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// Sends one gratuitous ARP for `ip` out of `ifindex` through `sock` (an `AF_PACKET` raw
/// socket of the interface's namespace).
pub fn send_garp(
    sock: BorrowedFd<'_>,
    ifindex: u32,
    mac: &[u8; 6],
    ip: Ipv4Addr,
) -> Result<(), NetError> {
    let frame = garp_frame(mac, ip);
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid starting value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = ETH_P_ARP.to_be();
    sa.sll_ifindex = ifindex as i32;
    sa.sll_halen = 6;
    sa.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: frame and sa outlive the call; lengths are theirs.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sa as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if n < 0 {
        return Err(NetError::Arp {
            ip,
            ifindex,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout() {
        let mac = [2, 0, 0, 0, 0, 1];
        let f = garp_frame(&mac, Ipv4Addr::new(10, 244, 0, 5));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[28..32], &[10, 244, 0, 5]);
        assert_eq!(&f[38..42], &[10, 244, 0, 5]);
        assert_eq!(&f[22..28], &mac);
    }
}
