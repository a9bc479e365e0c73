//! Names of kernel objects derived from CNI identifiers.

/// FNV-1a, 64 bit: stable across Rust versions and platforms (unlike `DefaultHasher`).
fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            // separator that cannot appear in a container id or ifname
            h ^= 0xff;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The host end of an attachment's veth: `cp` + 13 hex digits of a hash of
/// `(container_id, ifname)`, 15 bytes, so DEL finds it without a cache.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let h = fnv1a64(&[container_id.as_bytes(), ifname.as_bytes()]);
    format!("cp{:013x}", h & 0x000f_ffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("cp"));
        assert_eq!(a, host_veth_name("abc", "eth0"), "deterministic");
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(host_veth_name("ab", "ceth0"), host_veth_name("abc", "eth0"));
        // pinned: the name must never change between releases (DEL after upgrade)
        assert_eq!(host_veth_name("c1", "eth0"), "cp778a1816a5823");
        let long = "x".repeat(256);
        assert_eq!(host_veth_name(&long, "eth0").len(), 15);
    }
}
