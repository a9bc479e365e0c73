//! Result JSON, in the shape of the version asked for.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

use crate::version::SpecVersion;

/// What ADD set up.
#[derive(Debug, Clone)]
pub struct AddOutcome {
    pub host_name: String,
    pub host_mac: String,
    pub ifname: String,
    pub pod_mac: String,
    pub sandbox: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

/// The ADD result; with a `prev` result (conflist) ours is appended to it.
pub fn add_result(ver: SpecVersion, prev: Option<&Value>, o: &AddOutcome) -> Value {
    let mut host = json!({"name": o.host_name, "mac": o.host_mac});
    let mut pod = json!({"name": o.ifname, "mac": o.pod_mac, "sandbox": o.sandbox});
    if ver >= SpecVersion::V1_1_0 {
        host["mtu"] = json!(o.mtu);
        pod["mtu"] = json!(o.mtu);
    }
    let mut interfaces: Vec<Value> = prev
        .and_then(|p| p.get("interfaces"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let pod_index = interfaces.len() + 1;
    interfaces.push(host);
    interfaces.push(pod);
    let mut ip = json!({
        "address": format!("{}/{}", o.ip, o.prefix_len),
        "gateway": o.gateway.to_string(),
        "interface": pod_index,
    });
    if ver.legacy_result() {
        ip["version"] = json!("4");
    }
    let mut ips: Vec<Value> = prev
        .and_then(|p| p.get("ips"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    ips.push(ip);
    let mut routes: Vec<Value> = prev
        .and_then(|p| p.get("routes"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    routes.push(json!({"dst": "0.0.0.0/0", "gw": o.gateway.to_string()}));
    let dns = prev
        .and_then(|p| p.get("dns"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    json!({
        "cniVersion": ver.as_str(),
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
        "dns": dns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome() -> AddOutcome {
        AddOutcome {
            host_name: "cp0123456789abc".into(),
            host_mac: "02:00:00:00:00:01".into(),
            ifname: "eth0".into(),
            pod_mac: "02:00:00:00:00:02".into(),
            sandbox: "/run/netns/x".into(),
            ip: "10.244.0.5".parse().unwrap(),
            prefix_len: 22,
            gateway: "10.244.0.1".parse().unwrap(),
            mtu: 1500,
        }
    }

    #[test]
    fn shapes_per_version() {
        let v1 = add_result(SpecVersion::V1_0_0, None, &outcome());
        assert_eq!(v1["ips"][0]["address"], "10.244.0.5/22");
        assert_eq!(v1["ips"][0]["interface"], 1);
        assert!(v1["ips"][0].get("version").is_none());
        assert!(v1["interfaces"][1].get("mtu").is_none());
        assert_eq!(v1["interfaces"][1]["sandbox"], "/run/netns/x");
        let v04 = add_result(SpecVersion::V0_4_0, None, &outcome());
        assert_eq!(v04["ips"][0]["version"], "4");
        assert_eq!(v04["cniVersion"], "0.4.0");
        let v11 = add_result(SpecVersion::V1_1_0, None, &outcome());
        assert_eq!(v11["interfaces"][1]["mtu"], 1500);
        // chained: appended after the previous plugin's interfaces
        let prev = json!({"cniVersion":"1.0.0","interfaces":[{"name":"x"}],"ips":[{"address":"10.9.0.2/24","interface":0}],"dns":{"nameservers":["10.9.0.1"]}});
        let c = add_result(SpecVersion::V1_0_0, Some(&prev), &outcome());
        assert_eq!(c["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(c["ips"][1]["interface"], 2);
        assert_eq!(c["ips"][0]["address"], "10.9.0.2/24");
        assert_eq!(c["dns"]["nameservers"][0], "10.9.0.1");
    }
}
