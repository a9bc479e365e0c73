//! control-api in-process against a real etcd.
//! Run: `cargo test -p cellplane-control-api --test api`

use cellplane_control_api::auth::Scope;
use serde_json::json;

const WRITER: &str = "writer-token-0123456789";
const READER: &str = "reader-token-0123456789";

mod common;
use common::{token, Api};

impl Api {
    async fn start() -> Api {
        Api::start_with(
            "api",
            vec![
                token("ci-writer", WRITER, Scope::SlbWrite),
                token("dashboard", READER, Scope::Read),
            ],
            |_| {},
        )
        .await
    }

    /// Every key this test's control-api could have written.
    async fn keys(&self) -> Vec<String> {
        self.keys_under("").await
    }
}

const DOMAIN: &str = "/v1/slb/g1/domains/app.example.com";
const UPSTREAMS: &str = "/v1/slb/g1/domains/app.example.com/upstreams";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_route_refuses_missing_bad_and_wrong_scope_tokens() {
    let api = Api::start().await;
    let writes = [
        ("PUT", DOMAIN, "{}"),
        ("DELETE", DOMAIN, ""),
        ("PUT", UPSTREAMS, r#"{"servers":[{"addr":"10.0.0.1:80"}]}"#),
    ];
    for (method, path, body) in writes {
        for (token, want) in [
            (None, 401),
            (Some("not-a-known-token-000000"), 401),
            (Some("Basic d3JpdGVyOng="), 401),
            (Some(READER), 403),
        ] {
            let (status, v) = api.call(method, path, token, body).await;
            assert_eq!(status, want, "{method} {path} with {token:?}: {v}");
        }
    }
    // reads need a token too; the reader may read
    assert_eq!(api.call("GET", "/v1/slb/g1/domains", None, "").await.0, 401);
    assert_eq!(
        api.call("GET", "/v1/slb/g1/domains", Some(READER), "")
            .await
            .0,
        200
    );
    assert_eq!(
        api.call("GET", "/v1/slb/g1/members", Some(READER), "")
            .await
            .0,
        200
    );
    assert!(
        api.keys().await.is_empty(),
        "nothing written: {:?}",
        api.keys().await
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_400_naming_the_field_and_writes_nothing() {
    let api = Api::start().await;
    let cases: Vec<(&str, String, String, &str)> = vec![
        (
            "PUT",
            "/v1/slb/g1/domains/Bad_Domain.com".into(),
            "{}".into(),
            "domain",
        ),
        (
            "PUT",
            "/v1/slb/g1/domains/localhost".into(),
            "{}".into(),
            "domain",
        ),
        (
            "PUT",
            "/v1/slb/G!1/domains/app.example.com".into(),
            "{}".into(),
            "group",
        ),
        ("PUT", DOMAIN.into(), "{".into(), "body"),
        ("PUT", DOMAIN.into(), "not json".into(), "body"),
        (
            "PUT",
            DOMAIN.into(),
            r#"{"locations":[{"path":"/a; return 200"}]}"#.into(),
            "locations[0].path",
        ),
        (
            "PUT",
            DOMAIN.into(),
            r#"{"locations":[{"path":7}]}"#.into(),
            "locations[0].path",
        ),
        (
            "PUT",
            DOMAIN.into(),
            r#"{"listen":[{"port":99999}]}"#.into(),
            "listen[0].port",
        ),
        (
            "PUT",
            DOMAIN.into(),
            r#"{"aliases":["ok.example.com","bad name"]}"#.into(),
            "aliases[1]",
        ),
        (
            "PUT",
            DOMAIN.into(),
            r#"{"response_headers":[{"name":"X-A","value":"$remote_addr"}]}"#.into(),
            "response_headers[0].value",
        ),
        (
            "PUT",
            DOMAIN.into(),
            r#"{"tls":{"certificate":"../c.pem","key":"/k"}}"#.into(),
            "tls.certificate",
        ),
        (
            "PUT",
            UPSTREAMS.into(),
            r#"{"servers":[{"addr":"backend.local:80"}]}"#.into(),
            "servers[0].addr",
        ),
        (
            "PUT",
            UPSTREAMS.into(),
            r#"{"servers":[{"addr":"10.0.0.1"}]}"#.into(),
            "servers[0].addr",
        ),
        (
            "PUT",
            UPSTREAMS.into(),
            r#"{"servers":[{"addr":"10.0.0.1:80"},{"addr":"10.0.0.300:80"}]}"#.into(),
            "servers[1].addr",
        ),
        (
            "PUT",
            UPSTREAMS.into(),
            r#"{"servers":[{"addr":"10.0.0.1:80","weight":0}]}"#.into(),
            "servers[0].weight",
        ),
        (
            "PUT",
            UPSTREAMS.into(),
            r#"{"servers":[{"addr":"10.0.0.1:80","weight":"x"}]}"#.into(),
            "servers[0].weight",
        ),
        (
            "PUT",
            UPSTREAMS.into(),
            r#"{"servers":"10.0.0.1:80"}"#.into(),
            "servers",
        ),
        (
            "PUT",
            "/v1/slb/g1/domains/-x.com/upstreams".into(),
            r#"{"servers":[]}"#.into(),
            "domain",
        ),
    ];
    for (method, path, body, field) in cases {
        let (status, v) = api.call(method, &path, Some(WRITER), &body).await;
        assert_eq!(status, 400, "{method} {path} {body}: {v}");
        assert_eq!(v["field"], json!(field), "{method} {path} {body}: {v}");
        assert!(
            v["error"].as_str().unwrap_or("").contains(field),
            "message names {field}: {v}"
        );
    }
    // raw nginx text has no place to go
    let (status, v) = api
        .call("PUT", DOMAIN, Some(WRITER), r#"{"nginx":"server { }"}"#)
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        api.keys().await.is_empty(),
        "nothing written: {:?}",
        api.keys().await
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_lifecycle_and_unchanged_upstreams_are_not_rewritten() {
    let api = Api::start().await;
    // upstreams of an unknown domain: 404, nothing written
    let (s, _) = api
        .call("PUT", UPSTREAMS, Some(WRITER), r#"{"servers":[]}"#)
        .await;
    assert_eq!(s, 404);

    let cfg = r#"{"aliases":["www.app.example.com"],"locations":[{"path":"/","proxy":{"read_timeout_ms":5000}}]}"#;
    let (s, v) = api.call("PUT", DOMAIN, Some(WRITER), cfg).await;
    assert_eq!(s, 201, "{v}");
    let rev = v["revision"].as_i64().unwrap();
    let (s, v) = api.call("PUT", DOMAIN, Some(WRITER), cfg).await;
    assert_eq!(
        (s, v["changed"].clone(), v["revision"].as_i64().unwrap()),
        (200, json!(false), rev),
        "{v}"
    );

    let up1 = r#"{"servers":[{"addr":"10.0.0.2:8080","weight":2},{"addr":"10.0.0.1:8080"}]}"#;
    let (s, v) = api.call("PUT", UPSTREAMS, Some(WRITER), up1).await;
    assert_eq!(
        (s, v["changed"].clone(), v["revision"].clone()),
        (200, json!(true), json!(1)),
        "{v}"
    );
    let key = api
        .etcd
        .keys()
        .slb_domain_upstreams("g1", "app.example.com");
    let mod1 = api.etcd.get(&key).await.unwrap().unwrap().mod_revision;
    // the same list in another order: not rewritten
    let up1b =
        r#"{"servers":[{"addr":"10.0.0.1:8080","weight":1},{"addr":"10.0.0.2:8080","weight":2}]}"#;
    let (s, v) = api.call("PUT", UPSTREAMS, Some(WRITER), up1b).await;
    assert_eq!((s, v["changed"].clone()), (200, json!(false)), "{v}");
    assert_eq!(
        api.etcd.get(&key).await.unwrap().unwrap().mod_revision,
        mod1,
        "unchanged list rewritten"
    );
    let (s, v) = api
        .call(
            "PUT",
            UPSTREAMS,
            Some(WRITER),
            r#"{"servers":[{"addr":"[::1]:80"}]}"#,
        )
        .await;
    assert_eq!((s, v["revision"].clone()), (200, json!(2)), "{v}");

    let (s, v) = api.call("GET", DOMAIN, Some(READER), "").await;
    assert_eq!(s, 200);
    assert_eq!(v["config"]["aliases"], json!(["www.app.example.com"]));
    assert_eq!(
        v["config"]["locations"][0]["proxy"]["read_timeout_ms"],
        json!(5000)
    );
    assert_eq!(v["upstreams"]["servers"][0]["addr"], json!("[::1]:80"));
    let (s, v) = api
        .call("GET", "/v1/slb/g1/domains", Some(READER), "")
        .await;
    assert_eq!(
        (s, v["domains"].as_array().map(|a| a.len())),
        (200, Some(1)),
        "{v}"
    );

    // members: whatever the agents wrote
    let member = cellplane_slb::MemberStatus {
        host: "h1".into(),
        revision: 7,
        reload_count: 3,
        ..Default::default()
    };
    api.etcd
        .put(
            &api.etcd.keys().slb_member("g1", "h1"),
            serde_json::to_vec(&member).unwrap(),
        )
        .await
        .unwrap();
    let (s, v) = api
        .call("GET", "/v1/slb/g1/members", Some(READER), "")
        .await;
    assert_eq!(
        (
            s,
            v["members"][0]["host"].clone(),
            v["members"][0]["reload_count"].clone()
        ),
        (200, json!("h1"), json!(3)),
        "{v}"
    );

    // a domain whose name extends this one is not touched by its delete
    let (s, _) = api
        .call(
            "PUT",
            "/v1/slb/g1/domains/app.example.com.cn",
            Some(WRITER),
            "{}",
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(api.call("DELETE", DOMAIN, Some(WRITER), "").await.0, 204);
    assert_eq!(api.call("GET", DOMAIN, Some(READER), "").await.0, 404);
    assert_eq!(api.call("DELETE", DOMAIN, Some(WRITER), "").await.0, 404);
    assert_eq!(
        api.call(
            "GET",
            "/v1/slb/g1/domains/app.example.com.cn",
            Some(READER),
            ""
        )
        .await
        .0,
        200
    );
    assert!(
        api.etcd.get(&key).await.unwrap().is_none(),
        "upstreams deleted with the domain"
    );

    let (s, m) = api.call("GET", "/metrics", None, "").await;
    assert_eq!(s, 200);
    let m = m.as_str().unwrap_or_default().to_string();
    assert!(m.contains(r#"cellplane_api_requests_total{method="PUT",route="/v1/slb/{group}/domains/{domain}",status="201"}"#), "{m}");
    assert!(m.contains(r#"cellplane_api_writes_total{route="/v1/slb/{group}/domains/{domain}/upstreams",outcome="unchanged"} 1"#), "{m}");
    api.stop().await;
}
