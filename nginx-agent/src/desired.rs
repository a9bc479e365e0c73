//! What etcd says this group should look like, from one fresh range read.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use cellplane_etcd::Kv;
use cellplane_slb::{validate_domain_config, validate_upstreams, DomainConfig, UpstreamList};

use crate::admin::{Peer, Pool};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    /// Store revision of the read.
    pub revision: i64,
    pub configs: BTreeMap<String, DomainConfig>,
    /// Per domain; the version is the upstream key's mod_revision (monotonic).
    pub pools: BTreeMap<String, Pool>,
    /// Records skipped because they do not parse or validate (key: reason).
    pub invalid: Vec<String>,
}

impl Desired {
    /// `domains_prefix` is `Keys::slb_domains(group)`.
    pub fn from_kvs(domains_prefix: &str, kvs: &[Kv], revision: i64) -> Desired {
        let mut d = Desired {
            revision,
            ..Desired::default()
        };
        for kv in kvs {
            let Some(rest) = kv.key.strip_prefix(domains_prefix) else {
                continue;
            };
            let Some((domain, what)) = rest.split_once('/') else {
                continue;
            };
            if let Err(e) = cellplane_slb::validate_domain_name("domain", domain) {
                d.invalid.push(format!("{}: {e}", kv.key));
                continue;
            }
            match what {
                "config" => match serde_json::from_slice::<DomainConfig>(&kv.value) {
                    Ok(c) => match validate_domain_config(&c) {
                        Ok(()) => {
                            d.configs.insert(domain.to_string(), c);
                        }
                        Err(e) => d.invalid.push(format!("{}: {e}", kv.key)),
                    },
                    Err(e) => d.invalid.push(format!("{}: {e}", kv.key)),
                },
                "upstreams" => match serde_json::from_slice::<UpstreamList>(&kv.value) {
                    Ok(u) => match validate_upstreams(&u) {
                        Ok(()) => {
                            d.pools
                                .insert(domain.to_string(), to_pool(&u, kv.mod_revision));
                        }
                        Err(e) => d.invalid.push(format!("{}: {e}", kv.key)),
                    },
                    Err(e) => d.invalid.push(format!("{}: {e}", kv.key)),
                },
                _ => {}
            }
        }
        d
    }
}

fn to_pool(u: &UpstreamList, version: i64) -> Pool {
    let servers = u
        .canonical_servers()
        .into_iter()
        .filter_map(|s| {
            let a: SocketAddr = s.addr.parse().ok()?;
            Some(Peer {
                host: a.ip().to_string(),
                port: a.port(),
                weight: s.weight,
            })
        })
        .collect();
    Pool { version, servers }
}
