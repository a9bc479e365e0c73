//! IP pool routes, with control-api running in-process against a real etcd. Addresses are
//! allocated and released by the test itself through `cellplane_etcd::Ipam` (as the CNI plugin
//! does), on the same etcd and prefix.
//! Run: `cargo test -p cellplane-control-api --test pools`

use cellplane_control_api::auth::Scope;
use cellplane_core::PodRef;
use cellplane_etcd::{AllocRequest, Allocated, Ipam, IpamOptions};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-0123456789";
const POOLS: &str = "pools-token-0123456789";
const READER: &str = "reader-token-0123456789";
const SLB: &str = "slb-token-0123456789";
const BUILDER: &str = "builder-token-0123456789";

const VLAN100: &str = r#"{"cidr":"10.20.0.0/22","vlan":100,"gateway":"10.20.0.1","exclude":["10.20.0.2","10.20.3.0/28"]}"#;

mod common;
use common::{token, Api};

impl Api {
    async fn start() -> Api {
        Api::start_with(
            "papi",
            vec![
                token("root", ADMIN, Scope::Admin),
                token("netops", POOLS, Scope::PoolsWrite),
                token("dashboard", READER, Scope::Read),
                token("discovery", SLB, Scope::SlbWrite),
                token("builder", BUILDER, Scope::BuildsWrite),
            ],
            |_| {},
        )
        .await
    }

    fn ipam(&self) -> Ipam {
        Ipam::new(self.etcd.clone(), IpamOptions::default())
    }

    /// Every key under `ipam/`.
    async fn ipam_keys(&self) -> Vec<String> {
        self.keys_under("ipam/").await
    }

    async fn allocate(&self, cid: &str, node: &str, pool: &str) -> Result<Allocated, String> {
        self.ipam()
            .allocate(&AllocRequest {
                container_id: cid.into(),
                ifname: "eth0".into(),
                node: node.into(),
                pools: vec![pool.into()],
                pod: PodRef {
                    namespace: Some("default".into()),
                    name: Some(format!("pod-{cid}")),
                    uid: Some(format!("uid-{cid}")),
                },
                netns: Some(format!("/run/netns/{cid}")),
                ip: None,
            })
            .await
            .map_err(|e| e.to_string())
    }

    async fn release(&self, cid: &str) {
        self.ipam().release(cid, "eth0").await.unwrap();
    }
}

fn counts(v: &Value) -> (u64, u64, u64, u64) {
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    (n("capacity"), n("allocated"), n("cooling"), n("free"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_are_added_listed_and_show_usage() {
    let api = Api::start().await;
    let (s, v) = api
        .call("PUT", "/v1/pools/vlan100", Some(POOLS), VLAN100)
        .await;
    assert_eq!(s, 201, "{v}");
    // 1024 - network, broadcast, gateway - 10.20.0.2 - 16 excluded
    let capacity = 1024 - 3 - 1 - 16;
    assert_eq!(
        (
            v["outcome"].clone(),
            v["changed"].clone(),
            v["state"].clone(),
            v["gateway"].clone(),
            v["blocks_total"].clone(),
            v["blocks_claimed"].clone(),
        ),
        (
            json!("created"),
            json!(true),
            json!("active"),
            json!("10.20.0.1"),
            json!(64),
            json!(0)
        ),
        "{v}"
    );
    assert_eq!(counts(&v), (capacity, 0, 0, capacity), "{v}");
    assert_eq!(v["exclude"], json!(["10.20.0.2/32", "10.20.3.0/28"]), "{v}");
    let pool_key = api.etcd.keys().pool("vlan100");
    let rev = api.etcd.get(&pool_key).await.unwrap().unwrap().mod_revision;

    // the same spec again (exclusions in another order): 200, nothing rewritten
    let again = r#"{"cidr":"10.20.0.0/22","vlan":100,"gateway":"10.20.0.1","exclude":["10.20.3.0/28","10.20.0.2/32"],"block_size":16}"#;
    let (s, v) = api
        .call("PUT", "/v1/pools/vlan100", Some(POOLS), again)
        .await;
    assert_eq!(
        (s, v["outcome"].clone(), v["changed"].clone()),
        (200, json!("unchanged"), json!(false)),
        "{v}"
    );
    assert_eq!(
        api.etcd.get(&pool_key).await.unwrap().unwrap().mod_revision,
        rev
    );
    // another spec under the same name: 409, the pool is untouched
    let other = r#"{"cidr":"10.20.0.0/22","vlan":101,"gateway":"10.20.0.1"}"#;
    let (s, v) = api
        .call("PUT", "/v1/pools/vlan100", Some(POOLS), other)
        .await;
    assert_eq!(s, 409, "{v}");
    let msg = v["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("already exists") && msg.contains("VLAN 100"),
        "{v}"
    );
    assert_eq!(
        api.etcd.get(&pool_key).await.unwrap().unwrap().mod_revision,
        rev
    );

    // addresses handed out directly through IPAM show up in the usage
    for (cid, node) in [("c1", "n1"), ("c2", "n1"), ("c3", "n1"), ("c4", "n2")] {
        let a = api.allocate(cid, node, "vlan100").await.unwrap();
        assert_eq!((a.pool.as_str(), a.vlan), ("vlan100", 100));
    }
    api.release("c2").await;
    let (s, v) = api.call("GET", "/v1/pools", Some(READER), "").await;
    assert_eq!(s, 200, "{v}");
    let pools = v["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 1, "{v}");
    let p = &pools[0];
    assert_eq!(
        (
            p["pool"].clone(),
            p["cidr"].clone(),
            p["vlan"].clone(),
            p["blocks_claimed"].clone()
        ),
        (
            json!("vlan100"),
            json!("10.20.0.0/22"),
            json!(100),
            json!(2)
        ),
        "{v}"
    );
    // c2 was released just now: cooling down, not free
    assert_eq!(counts(p), (capacity, 3, 1, capacity - 4), "{v}");
    let usage = api.ipam().usage().await.unwrap();
    assert_eq!(usage.pools[0].counts.allocated, 3);
    assert_eq!(usage.pools[0].counts.cooling, 1);

    let (s, one) = api.call("GET", "/v1/pools/vlan100", Some(READER), "").await;
    assert_eq!(s, 200, "{one}");
    assert_eq!(&one, p);
    let (s, v) = api.call("GET", "/v1/pools/nope", Some(READER), "").await;
    assert_eq!(s, 404, "{v}");
    assert!(
        v["error"].as_str().unwrap_or_default().contains("nope"),
        "{v}"
    );
    let (s, v) = api.call("GET", "/v1/pools/No_Pe", Some(READER), "").await;
    assert_eq!((s, v["field"].clone()), (400, json!("pool")), "{v}");

    let (s, m) = api.call("GET", "/metrics", None, "").await;
    assert_eq!(s, 200);
    let m = m.as_str().unwrap_or_default().to_string();
    assert!(
        m.contains(r#"cellplane_api_writes_total{route="/v1/pools/{pool}",outcome="created"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"cellplane_api_writes_total{route="/v1/pools/{pool}",outcome="unchanged"} 1"#),
        "{m}"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pool_inputs_are_400_naming_the_field_and_write_nothing() {
    let api = Api::start().await;
    let p = "/v1/pools/p1";
    let cases: Vec<(&str, &str, &str)> = vec![
        (p, "{", "body"),
        (p, "[]", "body"),
        (p, r#"{"vlan":100,"gateway":"10.0.0.1"}"#, "cidr"),
        (
            p,
            r#"{"cidr":"10.0.0.0/33","vlan":100,"gateway":"10.0.0.1"}"#,
            "cidr",
        ),
        (
            p,
            r#"{"cidr":"10.0.0.0","vlan":100,"gateway":"10.0.0.1"}"#,
            "cidr",
        ),
        (
            p,
            r#"{"cidr":"10.0.0.x/24","vlan":100,"gateway":"10.0.0.1"}"#,
            "cidr",
        ),
        // host bits set
        (
            p,
            r#"{"cidr":"10.0.0.1/24","vlan":100,"gateway":"10.0.0.1"}"#,
            "cidr",
        ),
        // bigger than a /12
        (
            p,
            r#"{"cidr":"10.0.0.0/8","vlan":100,"gateway":"10.0.0.1"}"#,
            "cidr",
        ),
        (p, r#"{"cidr":7,"vlan":100,"gateway":"10.0.0.1"}"#, "cidr"),
        (
            p,
            r#"{"cidr":"10.0.0.0/24","vlan":0,"gateway":"10.0.0.1"}"#,
            "vlan",
        ),
        (
            p,
            r#"{"cidr":"10.0.0.0/24","vlan":4095,"gateway":"10.0.0.1"}"#,
            "vlan",
        ),
        (
            p,
            r#"{"cidr":"10.0.0.0/24","vlan":70000,"gateway":"10.0.0.1"}"#,
            "vlan",
        ),
        (
            p,
            r#"{"cidr":"10.0.0.0/24","vlan":-1,"gateway":"10.0.0.1"}"#,
            "vlan",
        ),
        (
            p,
            r#"{"cidr":"10.0.0.0/24","vlan":"100","gateway":"10.0.0.1"}"#,
            "vlan",
        ),
        (p, r#"{"cidr":"10.0.0.0/24","gateway":"10.0.0.1"}"#, "vlan"),
        (
            p,
            r#"{"cidr":"10.0.0.0/24","vlan":100,"gateway":"10.0.1.1"}"#,
            "gateway",
        ),
        (
            p,
            r#"{"cidr":"10.0.0.0/24","vlan":100,"gateway":"10.0.0.0"}"#,
            "gateway",
        ),
        (
            p,
            r#"{"cidr":"10.0.0.0/24","vlan":100,"gateway":"10.0.0.255"}"#,
            "gateway",
        ),
        (
            p,
            r#"{"cidr":"10.0.0.0/24","vlan":100,"gateway":"gw"}"#,
            "gateway",
        ),
        (p, r#"{"cidr":"10.0.0.0/24","vlan":100}"#, "gateway"),
        (
            p,
            r#"{"cidr":"10.0.0.0/24","vlan":100,"gateway":"10.0.0.1","exclude":["10.0.0.5","10.0.1.0/28"]}"#,
            "exclude[1]",
        ),
        (
            p,
            r#"{"cidr":"10.0.0.0/24","vlan":100,"gateway":"10.0.0.1","exclude":["ten"]}"#,
            "exclude[0]",
        ),
        (
            p,
            r#"{"cidr":"10.0.0.0/24","vlan":100,"gateway":"10.0.0.1","exclude":["10.0.0.5","10.0.0.17/28"]}"#,
            "exclude[1]",
        ),
        (
            p,
            r#"{"cidr":"10.0.0.0/24","vlan":100,"gateway":"10.0.0.1","exclude":"10.0.0.5"}"#,
            "exclude",
        ),
        (
            p,
            r#"{"cidr":"10.0.0.0/24","vlan":100,"gateway":"10.0.0.1","block_size":24}"#,
            "block_size",
        ),
        (
            p,
            r#"{"cidr":"10.0.0.0/24","vlan":100,"gateway":"10.0.0.1","block_size":-16}"#,
            "block_size",
        ),
        // a /24 cannot hold a block of 512
        (
            p,
            r#"{"cidr":"10.0.0.0/24","vlan":100,"gateway":"10.0.0.1","block_size":512}"#,
            "block_size",
        ),
        (
            p,
            r#"{"cidr":"10.0.0.0/24","vlan":100,"gateway":"10.0.0.1","state":"draining"}"#,
            "state",
        ),
        (
            p,
            r#"{"cidr":"10.0.0.0/24","vlan":100,"gateway":"10.0.0.1","gatway":"10.0.0.1"}"#,
            "gatway",
        ),
        (
            "/v1/pools/Bad_Pool",
            r#"{"cidr":"10.0.0.0/24","vlan":100,"gateway":"10.0.0.1"}"#,
            "pool",
        ),
        (
            "/v1/pools/-p",
            r#"{"cidr":"10.0.0.0/24","vlan":100,"gateway":"10.0.0.1"}"#,
            "pool",
        ),
    ];
    for (path, body, field) in cases {
        let (status, v) = api.call("PUT", path, Some(POOLS), body).await;
        assert_eq!(status, 400, "PUT {path} {body}: {v}");
        assert_eq!(v["field"], json!(field), "PUT {path} {body}: {v}");
        assert!(
            v["error"].as_str().unwrap_or("").contains(field),
            "message names {field}: {v}"
        );
    }
    for (method, path) in [
        ("POST", "/v1/pools/Bad_Pool/drain"),
        ("POST", "/v1/pools/Bad_Pool/activate"),
        ("DELETE", "/v1/pools/Bad_Pool"),
    ] {
        let (status, v) = api.call(method, path, Some(POOLS), "").await;
        assert_eq!(
            (status, v["field"].clone()),
            (400, json!("pool")),
            "{method} {path}: {v}"
        );
    }
    for (method, path) in [
        ("POST", "/v1/pools/nope/drain"),
        ("POST", "/v1/pools/nope/activate"),
        ("DELETE", "/v1/pools/nope"),
        ("GET", "/v1/pools/nope/blocks"),
    ] {
        let (status, v) = api.call(method, path, Some(POOLS), "").await;
        assert_eq!(status, 404, "{method} {path}: {v}");
    }
    assert!(
        api.ipam_keys().await.is_empty(),
        "nothing written: {:?}",
        api.ipam_keys().await
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlapping_pool_is_409_naming_the_other_pool() {
    let api = Api::start().await;
    let (s, v) = api
        .call("PUT", "/v1/pools/vlan100", Some(POOLS), VLAN100)
        .await;
    assert_eq!(s, 201, "{v}");
    let before = api.ipam_keys().await;
    for body in [
        r#"{"cidr":"10.20.2.0/24","vlan":200,"gateway":"10.20.2.1"}"#,
        r#"{"cidr":"10.16.0.0/12","vlan":200,"gateway":"10.16.0.1"}"#,
    ] {
        let (s, v) = api
            .call("PUT", "/v1/pools/vlan200", Some(ADMIN), body)
            .await;
        assert_eq!(s, 409, "{body}: {v}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(
            msg.contains("overlaps pool vlan100") && msg.contains("10.20.0.0/22"),
            "{v}"
        );
    }
    assert_eq!(api.ipam_keys().await, before);
    // next to it is fine
    let (s, v) = api
        .call(
            "PUT",
            "/v1/pools/vlan200",
            Some(ADMIN),
            r#"{"cidr":"10.20.4.0/24","vlan":200,"gateway":"10.20.4.254","block_size":32}"#,
        )
        .await;
    assert_eq!(
        (s, v["blocks_total"].clone(), v["capacity"].clone()),
        (201, json!(8), json!(253)),
        "{v}"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_stops_allocation_and_delete_waits_for_release() {
    let api = Api::start().await;
    let (s, v) = api.call("PUT", "/v1/pools/p", Some(POOLS), VLAN100).await;
    assert_eq!(s, 201, "{v}");
    api.allocate("c1", "n1", "p").await.unwrap();

    let (s, v) = api.call("POST", "/v1/pools/p/drain", Some(POOLS), "").await;
    assert_eq!(
        (
            s,
            v["state"].clone(),
            v["outcome"].clone(),
            v["allocated"].clone()
        ),
        (200, json!("draining"), json!("drained"), json!(1)),
        "{v}"
    );
    let (s, v) = api.call("POST", "/v1/pools/p/drain", Some(POOLS), "").await;
    assert_eq!(
        (s, v["changed"].clone()),
        (200, json!(false)),
        "drain is idempotent: {v}"
    );
    let e = api.allocate("c2", "n1", "p").await.unwrap_err();
    assert!(e.contains("draining"), "{e}");
    // the existing allocation stays, and a repeated ADD still gets it
    api.allocate("c1", "n1", "p").await.unwrap();

    let (s, v) = api
        .call("POST", "/v1/pools/p/activate", Some(ADMIN), "")
        .await;
    assert_eq!(
        (s, v["state"].clone(), v["outcome"].clone()),
        (200, json!("active"), json!("activated")),
        "{v}"
    );
    api.allocate("c2", "n2", "p").await.unwrap();

    // refused while addresses are allocated; the pool is left draining, nothing else changes
    let (s, v) = api.call("DELETE", "/v1/pools/p", Some(POOLS), "").await;
    assert_eq!(s, 409, "{v}");
    let msg = v["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("2 addresses are still allocated") && msg.contains("draining"),
        "{v}"
    );
    let (s, v) = api.call("GET", "/v1/pools/p", Some(READER), "").await;
    assert_eq!(
        (s, v["state"].clone(), v["allocated"].clone()),
        (200, json!("draining"), json!(2)),
        "{v}"
    );
    api.release("c1").await;
    let (s, v) = api.call("DELETE", "/v1/pools/p", Some(POOLS), "").await;
    assert_eq!(s, 409, "one is left: {v}");
    api.release("c2").await;
    let (s, v) = api.call("DELETE", "/v1/pools/p", Some(POOLS), "").await;
    assert_eq!(s, 204, "{v}");
    let (s, _) = api.call("GET", "/v1/pools/p", Some(READER), "").await;
    assert_eq!(s, 404);
    let (s, _) = api.call("DELETE", "/v1/pools/p", Some(POOLS), "").await;
    assert_eq!(s, 404);
    // pool, blocks and affinity index are gone
    assert!(
        api.ipam_keys().await.is_empty(),
        "{:?}",
        api.ipam_keys().await
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_per_pool_and_per_node() {
    let api = Api::start().await;
    let p2 = r#"{"cidr":"10.30.0.0/24","vlan":300,"gateway":"10.30.0.1"}"#;
    assert_eq!(
        api.call("PUT", "/v1/pools/p1", Some(POOLS), VLAN100)
            .await
            .0,
        201
    );
    assert_eq!(
        api.call("PUT", "/v1/pools/p2", Some(POOLS), p2).await.0,
        201
    );
    for (cid, node, pool) in [
        ("a1", "n1", "p1"),
        ("a2", "n1", "p1"),
        ("a3", "n1", "p2"),
        ("b1", "n2", "p1"),
    ] {
        api.allocate(cid, node, pool).await.unwrap();
    }

    let (s, v) = api
        .call("GET", "/v1/nodes/n1/blocks", Some(READER), "")
        .await;
    assert_eq!(s, 200, "{v}");
    let blocks = v["blocks"].as_array().unwrap();
    let got: Vec<_> = blocks
        .iter()
        .map(|b| {
            (
                b["pool"].as_str().unwrap().to_string(),
                b["block"].as_str().unwrap().to_string(),
                b["cidr"].as_str().unwrap().to_string(),
                b["node"].as_str().unwrap().to_string(),
                b["allocated"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "p1".into(),
                "010.020.000.000".into(),
                "10.20.0.0/28".into(),
                "n1".into(),
                2
            ),
            (
                "p2".into(),
                "010.030.000.000".into(),
                "10.30.0.0/28".into(),
                "n1".into(),
                1
            ),
        ],
        "{v}"
    );
    // network, gateway and 10.20.0.2 (excluded) are out of the first block of p1
    assert_eq!(counts(&blocks[0]), (13, 2, 0, 11), "{v}");
    assert_eq!(v["pools"].as_array().map(|a| a.len()), Some(2), "{v}");

    let (s, v) = api
        .call("GET", "/v1/nodes/n3/blocks", Some(READER), "")
        .await;
    assert_eq!((s, v["blocks"].clone()), (200, json!([])), "{v}");
    let (s, v) = api
        .call("GET", "/v1/nodes/N_3/blocks", Some(READER), "")
        .await;
    assert_eq!((s, v["field"].clone()), (400, json!("node")), "{v}");

    let (s, v) = api
        .call("GET", "/v1/pools/p1/blocks", Some(READER), "")
        .await;
    assert_eq!(s, 200, "{v}");
    let owners: Vec<_> = v["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["node"].clone(), b["allocated"].clone()))
        .collect();
    assert_eq!(
        owners,
        vec![(json!("n1"), json!(2)), (json!("n2"), json!(1))],
        "{v}"
    );
    let (s, v) = api
        .call("GET", "/v1/pools/p2/blocks", Some(READER), "")
        .await;
    assert_eq!(
        (s, v["blocks"].as_array().map(|a| a.len())),
        (200, Some(1)),
        "{v}"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_routes_enforce_scopes() {
    let api = Api::start().await;
    let writes = [
        ("PUT", "/v1/pools/p", VLAN100),
        ("POST", "/v1/pools/p/drain", ""),
        ("POST", "/v1/pools/p/activate", ""),
        ("DELETE", "/v1/pools/p", ""),
    ];
    for (method, path, body) in writes {
        for (token, want) in [
            (None, 401),
            (Some("not-a-known-token-000000"), 401),
            (Some(READER), 403),
            (Some(SLB), 403),
            (Some(BUILDER), 403),
        ] {
            let (status, v) = api.call(method, path, token, body).await;
            assert_eq!(status, want, "{method} {path} with {token:?}: {v}");
            if want == 403 {
                assert!(
                    v["error"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("pools:write"),
                    "{v}"
                );
            }
        }
    }
    for path in [
        "/v1/pools",
        "/v1/pools/p",
        "/v1/pools/p/blocks",
        "/v1/nodes/n1/blocks",
    ] {
        let (status, _) = api.call("GET", path, None, "").await;
        assert_eq!(status, 401, "GET {path}");
    }
    assert!(api.ipam_keys().await.is_empty());
    assert_eq!(api.call("GET", "/v1/pools", Some(READER), "").await.0, 200);
    assert_eq!(api.call("GET", "/v1/pools", Some(SLB), "").await.0, 200);

    // pools:write and admin may write; pools:write also reads
    assert_eq!(
        api.call("PUT", "/v1/pools/p", Some(POOLS), VLAN100).await.0,
        201
    );
    assert_eq!(api.call("GET", "/v1/pools/p", Some(POOLS), "").await.0, 200);
    assert_eq!(
        api.call("POST", "/v1/pools/p/drain", Some(ADMIN), "")
            .await
            .0,
        200
    );
    assert_eq!(
        api.call("POST", "/v1/pools/p/activate", Some(POOLS), "")
            .await
            .0,
        200
    );
    assert_eq!(
        api.call("DELETE", "/v1/pools/p", Some(ADMIN), "").await.0,
        204
    );
    // a pools:write token cannot write SLB domains
    assert_eq!(
        api.call(
            "PUT",
            "/v1/slb/g1/domains/app.example.com",
            Some(POOLS),
            "{}"
        )
        .await
        .0,
        403
    );
    api.stop().await;
}
