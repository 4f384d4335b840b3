//! Membership and the map watcher against a real etcd: registration, lease expiry, fencing of
//! a node cut off from etcd, and watches resumed (not re-read) after the connection drops or
//! etcd restarts.

use std::collections::BTreeMap;

use hearth_cluster::etcd_client::Client;
use hearth_cluster::{
    ClusterConfig, ClusterNode, Controller, LeaseState, Member, PlacedNode, Residency, Serving,
};

use crate::harness::{eventually, Etcd, Proxy};

fn member(cfg: &ClusterConfig) -> Member {
    Member {
        id: cfg.node_id,
        client_addr: cfg.advertise_client.clone(),
        link_addr: cfg.advertise_link.clone(),
        region: cfg.region.clone(),
        failure_zone: String::new(),
        version: "test".into(),
    }
}

/// Create the cluster map with nodes 1..=n through an elected controller, then resign.
async fn create_map(etcd: &Etcd, cfg: &ClusterConfig, n: u32) {
    let mut ctl = Controller::campaign(etcd.client().await, cfg)
        .await
        .unwrap();
    let nodes: BTreeMap<u32, PlacedNode> = (1..=n)
        .map(|id| {
            let p = PlacedNode {
                region: "local".into(),
                failure_zone: String::new(),
                state: Default::default(),
            };
            (id, p)
        })
        .collect();
    let (created, _) = ctl
        .create_map(cfg, Residency::default(), &nodes)
        .await
        .unwrap();
    assert!(created);
    ctl.resign().await.unwrap();
}

async fn client_via(addr: std::net::SocketAddr) -> Client {
    let cfg = ClusterConfig {
        etcd_endpoints: vec![format!("http://{addr}")],
        ..Default::default()
    };
    hearth_cluster::connect(&cfg).await.unwrap()
}

#[tokio::test]
async fn nodes_register_and_a_node_whose_lease_lapses_disappears() {
    let etcd = Etcd::start().await;
    let (c1, c2, c3) = (
        etcd.config("m", 1),
        etcd.config("m", 2),
        etcd.config("m", 3),
    );
    create_map(&etcd, &c1, 3).await;
    let n1 = ClusterNode::with_client(etcd.client().await, &c1, member(&c1));
    let n2 = ClusterNode::with_client(etcd.client().await, &c2, member(&c2));
    let n3 = ClusterNode::with_client(etcd.client().await, &c3, member(&c3));
    let epoch = n1.wait_serving().await;
    n2.wait_serving().await;
    n3.wait_serving().await;
    eventually(5, "three members seen", || n1.view().members.len() == 3).await;
    let snap = n1.snapshot().unwrap();
    assert_eq!(snap.epoch, epoch);
    let owner = snap.owner(0).unwrap();
    assert_eq!(
        owner.client_addr.as_deref(),
        Some(format!("127.0.0.1:{}", 14000 + owner.node).as_str())
    );
    assert_eq!(snap.owners().len(), 16384);

    // Node 2 dies (no revoke): its key goes when its lease expires.
    drop(n2);
    eventually(10, "node 2 expired", || !n1.view().members.contains_key(&2)).await;
    assert!(n1.view().members.contains_key(&3));
    assert_eq!(n1.snapshot().unwrap().owner(0).unwrap().node, owner.node);
    // Node 3 leaves: gone at once (revoked), well before a TTL.
    n3.leave().await.unwrap();
    let mut c = etcd.client().await;
    let members = c
        .get(
            "/hearth/m/members/",
            Some(hearth_cluster::etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(members.kvs().len(), 1, "only node 1 is left");
    // The same id cannot register twice while its lease lives.
    let dup = ClusterNode::with_client(etcd.client().await, &c1, member(&c1));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(*dup.lease_state().borrow(), LeaseState::Registering);
    assert!(!dup.ready());
    assert!(n1.ready());
}

#[tokio::test]
async fn a_node_cut_off_from_etcd_is_fenced_until_it_registered_again() {
    let etcd = Etcd::start().await;
    let cfg = etcd.config("f", 1);
    create_map(&etcd, &cfg, 1).await;
    let proxy = Proxy::start(etcd.addr()).await;
    let node = ClusterNode::with_client(client_via(proxy.addr).await, &cfg, member(&cfg));
    node.wait_serving().await;
    let LeaseState::Live { lease: old, .. } = *node.lease_state().borrow() else {
        panic!("not live");
    };

    proxy.cut();
    eventually(10, "fenced after its TTL", || {
        node.serving() == Serving::Fenced
    })
    .await;
    let mut c = etcd.client().await;
    let key = "/hearth/f/members/0000000001";
    for _ in 0..100 {
        if c.get(key, None).await.unwrap().kvs().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(c.get(key, None).await.unwrap().kvs().is_empty());
    assert_eq!(
        node.serving(),
        Serving::Fenced,
        "still fenced while cut off"
    );

    proxy.restore();
    node.wait_serving().await;
    let LeaseState::Live { lease: new, .. } = *node.lease_state().borrow() else {
        panic!("not live");
    };
    assert_ne!(new, old, "registered again under a new lease");
    assert_eq!(c.get(key, None).await.unwrap().kvs()[0].lease(), new);
}

#[tokio::test]
async fn the_watch_resumes_from_its_revision_after_the_connection_drops() {
    let etcd = Etcd::start().await;
    let cfg = etcd.config("w", 1);
    create_map(&etcd, &cfg, 1).await;
    let proxy = Proxy::start(etcd.addr()).await;
    let node = ClusterNode::with_client(client_via(proxy.addr).await, &cfg, member(&cfg));
    let epoch = node.wait_serving().await;
    assert_eq!(node.view().reloads, 1);

    // While the watcher is cut off: a member comes and goes, another comes, and the map
    // changes (the controller adds node 2).
    proxy.cut();
    eventually(10, "watch broken", || !node.view().connected).await;
    let mut c = etcd.client().await;
    let m = |id: u32| {
        serde_json::to_vec(&Member {
            id,
            client_addr: format!("h{id}:1"),
            link_addr: format!("h{id}:2"),
            region: "local".into(),
            failure_zone: String::new(),
            version: String::new(),
        })
        .unwrap()
    };
    c.put("/hearth/w/members/0000000007", m(7), None)
        .await
        .unwrap();
    c.delete("/hearth/w/members/0000000007", None)
        .await
        .unwrap();
    c.put("/hearth/w/members/0000000008", m(8), None)
        .await
        .unwrap();
    let mut ctl = Controller::campaign(etcd.client().await, &cfg)
        .await
        .unwrap();
    let (_, new_epoch) = ctl
        .add_node(
            2,
            PlacedNode {
                region: "local".into(),
                failure_zone: String::new(),
                state: Default::default(),
            },
        )
        .await
        .unwrap();
    assert!(new_epoch > epoch);

    proxy.restore();
    eventually(15, "caught up", || {
        node.snapshot().is_some_and(|s| s.epoch == new_epoch)
    })
    .await;
    let view = node.view();
    assert!(view.members.contains_key(&8) && !view.members.contains_key(&7));
    assert_eq!(view.reloads, 1, "resumed from the revision, not read again");
    assert!(view.resumes >= 1);
    assert!(view.snapshot.as_ref().unwrap().map.nodes.contains_key(&2));
}

#[tokio::test]
async fn the_watch_resumes_after_etcd_restarts() {
    let mut etcd = Etcd::start().await;
    let cfg = etcd.config("r", 1);
    create_map(&etcd, &cfg, 1).await;
    let node = ClusterNode::with_client(etcd.client().await, &cfg, member(&cfg));
    node.wait_serving().await;

    etcd.restart().await;
    let mut c = etcd.client().await;
    c.put(
        "/hearth/r/members/0000000009",
        serde_json::to_vec(&Member {
            id: 9,
            client_addr: "h:1".into(),
            link_addr: "h:2".into(),
            region: "local".into(),
            failure_zone: String::new(),
            version: String::new(),
        })
        .unwrap(),
        None,
    )
    .await
    .unwrap();
    eventually(20, "change after restart seen", || {
        node.view().members.contains_key(&9)
    })
    .await;
    let view = node.view();
    assert_eq!(view.reloads, 1, "resumed from the revision, not read again");
    assert!(view.resumes >= 1);
    eventually(20, "serving again", || node.ready()).await;
}
