//! The watch helper (resume after disconnect, resync after compaction) and the lease keeper,
//! against a real etcd that the tests stop, restart and compact.

use std::time::Duration;

use cellplane_etcd::{watch_prefix, Etcd, EtcdConfig, EventKind, LeaseKeeper, WatchUpdate};
use cellplane_testkit::etcd::EtcdServer;
use tokio::time::timeout;

async fn connect(server: &EtcdServer) -> Etcd {
    Etcd::connect(&EtcdConfig {
        endpoints: vec![server.endpoint()],
        prefix: format!("/{}", cellplane_testkit::unique("t")),
        timeout_ms: 1000,
        ..EtcdConfig::default()
    })
    .await
    .unwrap()
}

async fn next(w: &mut cellplane_etcd::WatchStream) -> WatchUpdate {
    timeout(Duration::from_secs(20), w.next())
        .await
        .expect("a watch update within 20 s")
        .expect("watch stream open")
}

/// Collects Put keys from updates until `want` is seen; a Resync counts its keys.
async fn until_key(w: &mut cellplane_etcd::WatchStream, want: &str) -> Vec<WatchUpdate> {
    let mut got = Vec::new();
    loop {
        let u = next(w).await;
        let hit = match &u {
            WatchUpdate::Events { events, .. } => events.iter().any(|e| e.kv.key.ends_with(want)),
            WatchUpdate::Resync { kvs, .. } => kvs.iter().any(|kv| kv.key.ends_with(want)),
        };
        got.push(u);
        if hit {
            return got;
        }
    }
}

#[tokio::test]
async fn watch_lists_then_streams_then_resumes_after_restart() {
    let mut server = EtcdServer::start();
    let etcd = connect(&server).await;
    let prefix = format!("{}/w/", etcd.keys().root());
    etcd.put(&format!("{prefix}a"), "1").await.unwrap();
    let mut w = watch_prefix(etcd.clone(), prefix.clone(), None);
    match next(&mut w).await {
        WatchUpdate::Resync { kvs, .. } => assert_eq!(kvs.len(), 1),
        u => panic!("expected a resync first, got {u:?}"),
    }
    etcd.put(&format!("{prefix}b"), "2").await.unwrap();
    etcd.delete(&format!("{prefix}a")).await.unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        if let WatchUpdate::Events { events, .. } = next(&mut w).await {
            kinds.extend(events.iter().map(|e| (e.kind, e.kv.key.clone())));
        }
    }
    assert_eq!(kinds[0], (EventKind::Put, format!("{prefix}b")));
    assert_eq!(kinds[1], (EventKind::Delete, format!("{prefix}a")));
    // etcd goes away and comes back: the watch resumes from where it was, losing nothing
    server.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();
    let etcd2 = connect(&server).await;
    etcd2.put(&format!("{prefix}c"), "3").await.unwrap();
    let ups = until_key(&mut w, "/w/c").await;
    assert!(
        ups.iter().all(|u| matches!(u, WatchUpdate::Events { .. })),
        "{ups:?}"
    );
}

#[tokio::test]
async fn watch_resyncs_when_its_revision_is_compacted() {
    let server = EtcdServer::start();
    let etcd = connect(&server).await;
    let prefix = format!("{}/w/", etcd.keys().root());
    let rev = etcd.put(&format!("{prefix}a"), "1").await.unwrap();
    for i in 0..5 {
        etcd.put(&format!("{prefix}k{i}"), "x").await.unwrap();
    }
    server.compact();
    // a watcher that last saw `rev`, now compacted away: it must re-list
    let mut w = watch_prefix(etcd.clone(), prefix.clone(), Some(rev));
    match next(&mut w).await {
        WatchUpdate::Resync { kvs, revision } => {
            assert_eq!(kvs.len(), 6);
            assert!(revision > rev);
        }
        u => panic!("expected a resync, got {u:?}"),
    }
    etcd.put(&format!("{prefix}after"), "y").await.unwrap();
    until_key(&mut w, "/w/after").await;
}

#[tokio::test]
async fn lease_is_kept_alive_and_loss_is_reported() {
    let mut server = EtcdServer::start();
    let etcd = connect(&server).await;
    let key = format!("{}/leased", etcd.keys().root());
    let mut lease = LeaseKeeper::grant(&etcd, 2).await.unwrap();
    etcd.put_with_lease(&key, "x", lease.id()).await.unwrap();
    // well past the TTL, the key is still there: keep-alives work
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(etcd.get(&key).await.unwrap().is_some());
    assert!(!lease.is_lost());
    // etcd away for longer than the TTL: the keeper reports the loss
    server.stop();
    let reason = timeout(Duration::from_secs(10), lease.lost())
        .await
        .expect("loss reported");
    assert!(reason.contains("expired"), "{reason}");
    server.restart();
    let etcd = connect(&server).await;
    // after a restart etcd counts the lease's TTL again; then the key goes
    let gone = async {
        while etcd.get(&key).await.ok().flatten().is_some() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    timeout(Duration::from_secs(15), gone)
        .await
        .expect("leased key removed");
    // revoke deletes the keys at once
    let lease = LeaseKeeper::grant(&etcd, 30).await.unwrap();
    etcd.put_with_lease(&key, "y", lease.id()).await.unwrap();
    lease.revoke().await.unwrap();
    assert!(etcd.get(&key).await.unwrap().is_none());
}

#[tokio::test]
async fn cas_and_create_if_absent() {
    let server = EtcdServer::start();
    let etcd = connect(&server).await;
    let key = format!("{}/k", etcd.keys().root());
    assert!(etcd.create_if_absent(&key, "a", None).await.unwrap());
    assert!(!etcd.create_if_absent(&key, "b", None).await.unwrap());
    let kv = etcd.get(&key).await.unwrap().unwrap();
    assert_eq!(kv.value, b"a");
    assert!(etcd.cas(&key, kv.mod_revision, "c").await.unwrap());
    assert!(
        !etcd.cas(&key, kv.mod_revision, "d").await.unwrap(),
        "stale revision refused"
    );
    assert_eq!(etcd.get(&key).await.unwrap().unwrap().value, b"c");
    assert!(!etcd.delete_if(&key, kv.mod_revision).await.unwrap());
    assert!(etcd.delete(&key).await.unwrap());
    assert!(!etcd.delete(&key).await.unwrap());
    assert!(
        etcd.cas(&key, 0, "e").await.unwrap(),
        "0 means: only if absent"
    );
}

#[tokio::test]
async fn list_pages_through_large_ranges_at_one_revision() {
    let server = EtcdServer::start();
    let etcd = connect(&server).await;
    let prefix = format!("{}/many/", etcd.keys().root());
    // 1203 keys of 8 KiB: ~10 MB, more than one gRPC message may carry
    let value = vec![b'x'; 8192];
    for chunk in (0..1203).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<_> = chunk
            .iter()
            .map(|i| etcd_client::TxnOp::put(format!("{prefix}{i:05}"), value.clone(), None))
            .collect();
        etcd.txn(etcd_client::Txn::new().and_then(ops))
            .await
            .unwrap();
    }
    etcd.put(
        &format!("{}/many0", etcd.keys().root()),
        "not under the prefix",
    )
    .await
    .unwrap();
    let (kvs, rev) = etcd.list(&prefix).await.unwrap();
    assert_eq!(kvs.len(), 1203);
    assert!(kvs.windows(2).all(|w| w[0].key < w[1].key));
    assert!(kvs.iter().all(|kv| kv.mod_revision <= rev));
    let (keys, _) = etcd.list_keys(&prefix).await.unwrap();
    assert_eq!(keys.len(), 1203);
    assert!(keys.iter().all(|kv| kv.value.is_empty()));
}
