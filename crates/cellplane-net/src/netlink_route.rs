//! Link, address and route operations over one route-netlink socket (which belongs to the
//! namespace it was opened in).

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{IntoRawFd, OwnedFd};

use futures::{StreamExt, TryStreamExt};
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use rtnetlink::sys::TokioSocket;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::os::fd::FromRawFd;

use crate::error::{nl_errno, NetError};
use crate::netns::Netns;

/// A route-netlink connection. Its operations act in the namespace the socket was opened in.
pub struct Netlink {
    handle: Handle,
    /// For error messages: the namespace path, `None` for the caller's own namespace.
    netns: Option<String>,
}

/// What [`Netlink::create_veth`] creates: `host_name` here, `peer_name` directly inside
/// `peer_netns` (no move, no rename).
pub struct VethOptions<'a> {
    pub host_name: &'a str,
    pub host_mac: [u8; 6],
    pub peer_name: &'a str,
    pub peer_mac: [u8; 6],
    pub peer_netns: &'a Netns,
    pub mtu: u32,
}

/// What a link looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub up: bool,
    /// `IFLA_IFALIAS` (`ip link set DEV alias ...`), if set.
    pub alias: Option<String>,
    /// `IFLA_LINK`: for a veth, its peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the id this namespace gives the peer's namespace, when that is
    /// another one (compare with [`Netlink::nsid_of`]).
    pub peer_netnsid: Option<i32>,
}

impl Netlink {
    /// A connection in the caller's namespace. Needs a tokio runtime context.
    pub fn connect() -> Result<Netlink, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| NetError::Socket {
            what: "netlink",
            source,
        })?;
        tokio::spawn(conn);
        Ok(Netlink {
            handle,
            netns: None,
        })
    }

    /// A connection over a socket opened elsewhere (see [`Netns::open_sockets`]). Needs a
    /// tokio runtime context.
    pub fn from_fd(fd: OwnedFd, netns: &Netns) -> Result<Netlink, NetError> {
        // SAFETY: fd is a valid netlink socket we own; TokioSocket takes ownership.
        let sock = unsafe { TokioSocket::from_raw_fd(fd.into_raw_fd()) };
        let (conn, handle, _) = rtnetlink::from_socket(sock);
        tokio::spawn(conn);
        Ok(Netlink {
            handle,
            netns: Some(netns.path().display().to_string()),
        })
    }

    fn err(&self, op: &'static str, target: impl ToString, source: rtnetlink::Error) -> NetError {
        let target = match &self.netns {
            Some(ns) => format!("{} (netns {ns})", target.to_string()),
            None => target.to_string(),
        };
        NetError::Netlink { op, target, source }
    }

    /// The link called `name`, or `None`.
    pub async fn link(&self, name: &str) -> Result<Option<LinkInfo>, NetError> {
        let req = self.handle.link().get().match_name(name.to_string());
        self.get_link(req, name).await
    }

    /// The link with this index, or `None`.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>, NetError> {
        let req = self.handle.link().get().match_index(index);
        self.get_link(req, index).await
    }

    async fn get_link(
        &self,
        req: rtnetlink::LinkGetRequest,
        target: impl ToString,
    ) -> Result<Option<LinkInfo>, NetError> {
        let mut s = req.execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(link_info(m))),
            Ok(None) => Ok(None),
            Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(self.err("get link", target, e)),
        }
    }

    /// Every link of the namespace.
    pub async fn links(&self) -> Result<Vec<LinkInfo>, NetError> {
        let mut s = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| self.err("list links", "all", e))?
        {
            out.push(link_info(m));
        }
        Ok(out)
    }

    /// Creates the veth pair with the given MACs and MTU; the host end up, the peer down
    /// (the kernel refuses to open a veth end before its peer is linked: set it up from the
    /// peer's namespace).
    /// `NetError::Exists` when either name is taken (nothing is created then).
    pub async fn create_veth(&self, o: &VethOptions<'_>) -> Result<(), NetError> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(o.peer_name.to_string())
            .mtu(o.mtu)
            .address(o.peer_mac.to_vec())
            .setns_by_fd(o.peer_netns.raw_fd())
            .build();
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(o.host_name.to_string())
            .mtu(o.mtu)
            .address(o.host_mac.to_vec())
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        match self.handle.link().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if nl_errno(&e) == Some(libc::EEXIST) => Err(NetError::Exists {
                name: format!("{} or {}", o.host_name, o.peer_name),
                netns: None,
            }),
            Err(e) => Err(self.err("create veth", o.host_name, e)),
        }
    }

    /// Sets a link up.
    pub async fn set_up(&self, index: u32) -> Result<(), NetError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| self.err("set up", index, e))
    }

    /// The id this connection's namespace gives `netns` (`RTM_GETNSID`); `None` when it gives
    /// it none (the kernel assigns one when a link of this namespace has its peer there).
    pub async fn nsid_of(&self, netns: &Netns) -> Result<Option<i32>, NetError> {
        let mut msg = NsidMessage::default();
        msg.attributes
            .push(NsidAttribute::Fd(netns.raw_fd() as u32));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
        req.header.flags = NLM_F_REQUEST;
        let target = || netns.path().display().to_string();
        let mut resp = self
            .handle
            .clone()
            .request(req)
            .map_err(|e| self.err("get nsid", target(), e))?;
        while let Some(m) = resp.next().await {
            match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                    let id = m.attributes.iter().find_map(|a| match a {
                        NsidAttribute::Id(id) => Some(*id),
                        _ => None,
                    });
                    return Ok(id.filter(|id| *id >= 0));
                }
                NetlinkPayload::Error(e) => {
                    return Err(self.err("get nsid", target(), rtnetlink::Error::NetlinkError(e)))
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// Sets the link's alias (`IFLA_IFALIAS`, at most 255 bytes).
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<(), NetError> {
        let msg = LinkUnspec::new_with_index(index).alias(alias).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| self.err("set alias", index, e))
    }

    /// Deletes the link with this index. `Ok(false)` when there was none.
    pub async fn del_link_index(&self, index: u32) -> Result<bool, NetError> {
        let msg = LinkUnspec::new_with_index(index).build();
        match self.handle.link().del_with_message(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(self.err("delete link", index, e)),
        }
    }

    /// Deletes the link called `name`. `Ok(false)` when there was none.
    pub async fn del_link(&self, name: &str) -> Result<bool, NetError> {
        let msg = LinkUnspec::new_with_name(name).build();
        match self.handle.link().del_with_message(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(self.err("delete link", name, e)),
        }
    }

    /// Adds `ip/prefix` to the link.
    pub async fn add_addr(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
        self.handle
            .address()
            .add(index, IpAddr::V4(ip), prefix)
            .execute()
            .await
            .map_err(|e| {
                self.err(
                    "add address",
                    format!("{ip}/{prefix} on ifindex {index}"),
                    e,
                )
            })
    }

    /// The IPv4 addresses on a link.
    pub async fn addrs(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetError> {
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| self.err("get addresses", index, e))?
        {
            if m.header.index != index {
                continue;
            }
            for a in &m.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                    out.push((*ip, m.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// Adds the default route via `gw` out of the link.
    pub async fn add_default_route(&self, index: u32, gw: Ipv4Addr) -> Result<(), NetError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gw)
            .output_interface(index)
            .build();
        self.handle
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(|e| self.err("add default route", format!("via {gw} ifindex {index}"), e))
    }

    /// IPv4 default routes of the main table as `(gateway, oif)`.
    pub async fn default_routes(&self) -> Result<Vec<(Option<Ipv4Addr>, Option<u32>)>, NetError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut s = self.handle.route().get(msg).execute();
        let mut out = Vec::new();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| self.err("get routes", "main", e))?
        {
            if m.header.destination_prefix_length != 0 || m.header.table != 254 {
                continue;
            }
            let mut gw = None;
            let mut oif = None;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            out.push((gw, oif));
        }
        Ok(out)
    }
}

fn link_info(m: netlink_packet_route::link::LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: m.header.index,
        name: String::new(),
        mac: None,
        mtu: None,
        up: m.header.flags.contains(LinkFlags::Up),
        alias: None,
        peer_index: None,
        peer_netnsid: None,
    };
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => info.name = n,
            LinkAttribute::Address(mac) if mac.len() == 6 => {
                let mut b = [0u8; 6];
                b.copy_from_slice(&mac);
                info.mac = Some(b);
            }
            LinkAttribute::Mtu(m) => info.mtu = Some(m),
            LinkAttribute::IfAlias(a) if !a.is_empty() => info.alias = Some(a),
            LinkAttribute::Link(i) => info.peer_index = Some(i),
            LinkAttribute::LinkNetNsId(n) => info.peer_netnsid = Some(n),
            _ => {}
        }
    }
    info
}

/// Deletes the link with index `index` (of the caller's namespace) from a detached child
/// process, so that the caller does not wait for the kernel: unregistering a veth waits for
/// RCU grace periods (`rcu_barrier` in `netdev_run_todo`, ~17 ms here) in the task that asked.
///
/// The child starts its own session, puts `/dev/null` on stdin/stdout/stderr and closes every
/// other inherited descriptor (so pipes the caller's parent reads from reach EOF when the
/// caller exits), sends one `RTM_DELLINK` by index (an index is not reused before the
/// namespace's counter wraps, unlike a name, which a later ADD may take again), waits for the
/// kernel's answer and exits. It makes only async-signal-safe system calls (the message is
/// built before the fork), so it is safe from a multi-threaded process. Returns the child's
/// pid; the caller should exit soon (the child is then reparented and reaped) or reap it.
pub fn delete_link_detached(index: u32) -> std::io::Result<libc::pid_t> {
    let msg = dellink_message(index);
    let devnull = c"/dev/null";
    // SAFETY: after fork the child only calls async-signal-safe functions (setsid, open,
    // dup2, close_range, socket, send, recv, _exit) on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(std::io::Error::last_os_error()),
        0 => unsafe {
            libc::setsid();
            let null = libc::open(devnull.as_ptr(), libc::O_RDWR);
            for fd in 0..3 {
                if null >= 0 {
                    libc::dup2(null, fd);
                } else {
                    libc::close(fd);
                }
            }
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            let s = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            );
            if s >= 0 && libc::send(s, msg.as_ptr().cast(), msg.len(), 0) == msg.len() as isize {
                let mut ack = [0u8; 512];
                libc::recv(s, ack.as_mut_ptr().cast(), ack.len(), 0);
            }
            libc::_exit(0)
        },
        child => Ok(child),
    }
}

/// `nlmsghdr` + `ifinfomsg` of an `RTM_DELLINK` for `index`, asking for an ACK.
fn dellink_message(index: u32) -> [u8; 32] {
    let mut m = [0u8; 32];
    m[0..4].copy_from_slice(&32u32.to_ne_bytes()); // nlmsg_len
    m[4..6].copy_from_slice(&libc::RTM_DELLINK.to_ne_bytes()); // nlmsg_type
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    m[6..8].copy_from_slice(&flags.to_ne_bytes()); // nlmsg_flags
    m[8..12].copy_from_slice(&1u32.to_ne_bytes()); // nlmsg_seq
                                                   // nlmsg_pid 0; ifi_family AF_UNSPEC, pad, ifi_type 0
    m[20..24].copy_from_slice(&index.to_ne_bytes()); // ifi_index
    m
}

/// A random locally-administered unicast MAC.
pub fn random_mac() -> [u8; 6] {
    let mut b = [0u8; 6];
    // SAFETY: getrandom(2) writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 6 {
        // Fallback: time and pid; uniqueness on one segment is what matters.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let v = t as u64 ^ (u64::from(std::process::id()) << 32);
        b.copy_from_slice(&v.to_le_bytes()[..6]);
    }
    b[0] = (b[0] & 0xfe) | 0x02;
    b
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
