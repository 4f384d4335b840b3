//! Contract test: every etcd call the cluster crate makes, through etcd-client 0.21 (whose
//! upstream tests run against etcd 3.5+), against the etcd server CI installs (Debian's
//! 3.4.23), with the answers the crate relies on.

use std::time::Duration;

use hearth_cluster::etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, ResignOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use tokio::time::timeout;

use crate::harness::Etcd;

#[tokio::test]
async fn every_call_we_use_behaves_as_we_rely_on() {
    let etcd = Etcd::start().await;
    let mut c = etcd.client().await;

    // The server is the one we mean to test against.
    let status = c.status().await.unwrap();
    assert!(
        status.version().starts_with("3."),
        "etcd {}",
        status.version()
    );
    eprintln!("contract test against etcd {}", status.version());

    // put / get, prefix reads with their header revision.
    let put = c.put("/t/a", "1", None).await.unwrap();
    let r1 = put.header().unwrap().revision();
    c.put("/t/b", "2", None).await.unwrap();
    let got = c
        .get("/t/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(got.kvs().len(), 2);
    assert_eq!(got.kvs()[0].mod_revision(), r1);
    assert_eq!(got.header().unwrap().revision(), r1 + 1);

    // txn: compares on a missing key see 0 (create, mod); `or_else` reads come back.
    let txn = Txn::new()
        .when([
            Compare::mod_revision("/t/map", CompareOp::Equal, 0),
            Compare::create_revision("/t/map", CompareOp::Equal, 0),
        ])
        .and_then([TxnOp::put("/t/map", "v1", None)]);
    let resp = c.txn(txn).await.unwrap();
    assert!(resp.succeeded(), "a missing key compares as revision 0");
    let map_rev = resp.header().unwrap().revision();
    let stale = Txn::new()
        .when([Compare::mod_revision(
            "/t/map",
            CompareOp::Equal,
            map_rev - 1,
        )])
        .and_then([TxnOp::put("/t/map", "v2", None)])
        .or_else([TxnOp::get("/t/map", None), TxnOp::get("/t/none", None)]);
    let resp = c.txn(stale).await.unwrap();
    assert!(!resp.succeeded());
    let gets: Vec<_> = resp
        .op_responses()
        .into_iter()
        .map(|r| match r {
            TxnOpResponse::Get(g) => g,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(gets[0].kvs()[0].mod_revision(), map_rev);
    assert!(gets[1].kvs().is_empty());
    assert_eq!(c.get("/t/map", None).await.unwrap().kvs()[0].value(), b"v1");

    // Leases: grant, put under it, keep-alive answers with the TTL, revoke deletes the key.
    let lease = c.lease_grant(5, None).await.unwrap().id();
    c.put("/t/m", "x", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let (mut keeper, mut stream) = c.lease_keep_alive(lease).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let ka = stream.message().await.unwrap().unwrap();
    assert_eq!(ka.id(), lease);
    assert!(ka.ttl() > 0);
    c.lease_revoke(lease).await.unwrap();
    assert!(c.get("/t/m", None).await.unwrap().kvs().is_empty());
    keeper.keep_alive().await.unwrap();
    let gone = timeout(Duration::from_secs(3), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(gone.ttl(), 0, "a revoked lease renews with TTL 0");
    // A txn that creates a key under a lease only if it is absent.
    let lease2 = c.lease_grant(5, None).await.unwrap().id();
    let create = |l| {
        Txn::new()
            .when([Compare::create_revision("/t/m", CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                "/t/m",
                "y",
                Some(PutOptions::new().with_lease(l)),
            )])
    };
    let created = c.txn(create(lease2)).await.unwrap();
    assert!(created.succeeded());
    assert!(!c.txn(create(lease2)).await.unwrap().succeeded());
    let kv = c.get("/t/m", None).await.unwrap().kvs()[0].clone();
    assert_eq!(kv.lease(), lease2);
    assert_eq!(
        kv.mod_revision(),
        created.header().unwrap().revision(),
        "a txn's header revision is its write's revision"
    );

    // Watch from a past revision, on a prefix, with progress notifications: `created` first,
    // then the events since that revision in order, deletes included.
    let from = c
        .put("/t/w/1", "a", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    c.delete("/t/w/1", None).await.unwrap();
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(from)
        .with_progress_notify();
    let mut w = c.watch("/t/w/", Some(opts)).await.unwrap();
    let created = w.message().await.unwrap().unwrap();
    assert!(created.created());
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let resp = timeout(Duration::from_secs(3), w.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        for ev in resp.events() {
            let kv = ev.kv().unwrap();
            seen.push((ev.event_type(), kv.mod_revision()));
        }
    }
    assert_eq!(
        seen,
        vec![(EventType::Put, from), (EventType::Delete, from + 1)]
    );
    drop(w);

    // A watch from a compacted revision is cancelled with the compaction revision.
    let now = c
        .put("/t/w/2", "b", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    c.compact(now, None).await.unwrap();
    let mut w = c
        .watch(
            "/t/w/",
            Some(WatchOptions::new().with_prefix().with_start_revision(from)),
        )
        .await
        .unwrap();
    let mut cancelled = None;
    for _ in 0..3 {
        let resp = timeout(Duration::from_secs(3), w.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if resp.canceled() {
            cancelled = Some(resp.compact_revision());
            break;
        }
    }
    assert_eq!(cancelled, Some(now), "cancelled for compaction");

    // Election: campaign returns the leader key (its rev is the key's create_revision); a
    // second campaign waits until the first resigns.
    let la = c.lease_grant(10, None).await.unwrap().id();
    let lb = c.lease_grant(10, None).await.unwrap().id();
    let a = c.campaign("/t/ctl", "1", la).await.unwrap();
    let a_key = a.leader().unwrap().clone();
    let kv = c.get(a_key.key(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(kv.create_revision(), a_key.rev());
    assert_eq!(kv.lease(), la);
    assert_eq!(
        c.leader("/t/ctl").await.unwrap().kv().unwrap().value(),
        b"1"
    );
    let mut c2 = c.clone();
    let b = tokio::spawn(async move { c2.campaign("/t/ctl", "2", lb).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.is_finished(), "B waits while A leads");
    c.resign(Some(ResignOptions::new().with_leader(a_key.clone())))
        .await
        .unwrap();
    let b = timeout(Duration::from_secs(5), b).await.unwrap().unwrap();
    let b_key = b.leader().unwrap().clone();
    assert!(b_key.rev() > a_key.rev());
    assert_eq!(
        c.leader("/t/ctl").await.unwrap().kv().unwrap().value(),
        b"2"
    );
    // A's key is gone: a txn guarded by it fails.
    let guarded = Txn::new()
        .when([Compare::create_revision(
            a_key.key(),
            CompareOp::Equal,
            a_key.rev(),
        )])
        .and_then([TxnOp::put("/t/map", "from-a", None)]);
    assert!(!c.txn(guarded).await.unwrap().succeeded());
}
