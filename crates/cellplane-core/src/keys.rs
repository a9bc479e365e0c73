//! The etcd key schema (see ARCHITECTURE.md). Every key lives under one configurable root
//! prefix (default `/cellplane`). Block ids are zero-padded dotted addresses so that a range
//! read returns blocks in numeric order.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    root: String,
}

pub const DEFAULT_PREFIX: &str = "/cellplane";

impl Default for Keys {
    fn default() -> Self {
        Keys::new(DEFAULT_PREFIX)
    }
}

impl Keys {
    /// `root` is normalised to have no trailing `/`; with an empty root keys start at `ipam/`.
    pub fn new(root: &str) -> Keys {
        Keys {
            root: root.trim_end_matches('/').to_string(),
        }
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    fn k(&self, rest: std::fmt::Arguments<'_>) -> String {
        if self.root.is_empty() {
            rest.to_string()
        } else {
            format!("{}/{}", self.root, rest)
        }
    }

    /// Everything this installation owns.
    pub fn all(&self) -> String {
        self.k(format_args!(""))
    }

    // ---- IPAM ----
    pub fn pools(&self) -> String {
        self.k(format_args!("ipam/pools/"))
    }
    pub fn pool(&self, pool: &str) -> String {
        self.k(format_args!("ipam/pools/{pool}"))
    }
    pub fn all_blocks(&self) -> String {
        self.k(format_args!("ipam/blocks/"))
    }
    pub fn blocks(&self, pool: &str) -> String {
        self.k(format_args!("ipam/blocks/{pool}/"))
    }
    pub fn block(&self, pool: &str, block_id: &str) -> String {
        self.k(format_args!("ipam/blocks/{pool}/{block_id}"))
    }
    pub fn all_nodes(&self) -> String {
        self.k(format_args!("ipam/nodes/"))
    }
    pub fn node(&self, node: &str) -> String {
        self.k(format_args!("ipam/nodes/{node}/"))
    }
    pub fn affinity(&self, node: &str, pool: &str, block_id: &str) -> String {
        self.k(format_args!("ipam/nodes/{node}/{pool}/{block_id}"))
    }
    pub fn handles(&self) -> String {
        self.k(format_args!("ipam/handles/"))
    }
    pub fn handle(&self, container_id: &str, ifname: &str) -> String {
        self.k(format_args!("ipam/handles/{container_id}/{ifname}"))
    }

    /// `(pool, block_id)` of a key written by [`Keys::block`].
    pub fn parse_block(&self, key: &str) -> Option<(String, String)> {
        let rest = key.strip_prefix(&self.all_blocks())?;
        let (pool, id) = rest.split_once('/')?;
        Some((pool.to_string(), id.to_string()))
    }

    /// `(node, pool, block_id)` of a key written by [`Keys::affinity`].
    pub fn parse_affinity(&self, key: &str) -> Option<(String, String, String)> {
        let rest = key.strip_prefix(&self.all_nodes())?;
        let mut it = rest.splitn(3, '/');
        Some((it.next()?.into(), it.next()?.into(), it.next()?.into()))
    }

    /// `(container_id, ifname)` of a key written by [`Keys::handle`].
    pub fn parse_handle(&self, key: &str) -> Option<(String, String)> {
        let rest = key.strip_prefix(&self.handles())?;
        let (c, i) = rest.split_once('/')?;
        Some((c.to_string(), i.to_string()))
    }

    // ---- SLB ----
    pub fn slb_group(&self, group: &str) -> String {
        self.k(format_args!("slb/{group}/"))
    }
    pub fn slb_domains(&self, group: &str) -> String {
        self.k(format_args!("slb/{group}/domains/"))
    }
    pub fn slb_domain_config(&self, group: &str, domain: &str) -> String {
        self.k(format_args!("slb/{group}/domains/{domain}/config"))
    }
    pub fn slb_domain_upstreams(&self, group: &str, domain: &str) -> String {
        self.k(format_args!("slb/{group}/domains/{domain}/upstreams"))
    }
    pub fn slb_members(&self, group: &str) -> String {
        self.k(format_args!("slb/{group}/members/"))
    }
    pub fn slb_member(&self, group: &str, host: &str) -> String {
        self.k(format_args!("slb/{group}/members/{host}"))
    }

    // ---- builds ----
    pub fn build_agents(&self) -> String {
        self.k(format_args!("builds/agents/"))
    }
    pub fn build_agent(&self, agent: &str) -> String {
        self.k(format_args!("builds/agents/{agent}"))
    }
    pub fn all_build_tasks(&self) -> String {
        self.k(format_args!("builds/tasks/"))
    }
    pub fn build_tasks(&self, agent: &str) -> String {
        self.k(format_args!("builds/tasks/{agent}/"))
    }
    pub fn build_task(&self, agent: &str, build: &str) -> String {
        self.k(format_args!("builds/tasks/{agent}/{build}"))
    }
    pub fn build_status(&self, build: &str) -> String {
        self.k(format_args!("builds/status/{build}"))
    }
    pub fn all_build_status(&self) -> String {
        self.k(format_args!("builds/status/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema() {
        let k = Keys::new("/t1/");
        assert_eq!(k.pool("a"), "/t1/ipam/pools/a");
        assert_eq!(
            k.block("a", "010.000.000.016"),
            "/t1/ipam/blocks/a/010.000.000.016"
        );
        assert_eq!(
            k.parse_block("/t1/ipam/blocks/a/010.000.000.016"),
            Some(("a".into(), "010.000.000.016".into()))
        );
        assert_eq!(
            k.parse_affinity(&k.affinity("n1", "a", "010.000.000.016")),
            Some(("n1".into(), "a".into(), "010.000.000.016".into()))
        );
        assert_eq!(
            k.parse_handle(&k.handle("c1", "eth0")),
            Some(("c1".into(), "eth0".into()))
        );
        assert!(k.blocks("a").starts_with(&k.all_blocks()));
        // pool "a" and "a-b" do not share a block prefix
        assert!(!k.block("a-b", "x").starts_with(&k.blocks("a")));
        assert_eq!(Keys::new("").pool("a"), "ipam/pools/a");
        assert_eq!(
            k.slb_domain_upstreams("g", "d.com"),
            "/t1/slb/g/domains/d.com/upstreams"
        );
        assert_eq!(k.build_task("ag", "b1"), "/t1/builds/tasks/ag/b1");
    }
}
