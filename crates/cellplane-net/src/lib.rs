//! Linux networking for cellplane: a netns guard, netlink link/address/route operations, a
//! gratuitous ARP sender and a small OVSDB (RFC 7047) client over the unix socket.
//!
//! A network namespace is entered only on a dedicated OS thread to open a socket there
//! ([`netns::Netns::open_sockets`]); every later operation works on that socket from the
//! caller's thread, so no async worker ever changes namespace.

pub mod arp;
pub mod error;
pub mod ethtool;
pub mod names;
pub mod netlink_route;
pub mod netns;
pub mod ovsdb;

pub use error::NetError;
pub use names::host_veth_name;
pub use netlink_route::{Netlink, VethOptions};
pub use netns::{Netns, NetnsSockets, PodLinkSetup};
pub use ovsdb::{Ovsdb, OvsdbError, PortAdded, PortInfo, PortSpec};
