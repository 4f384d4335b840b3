//! The controller against a real etcd: the map created once by one of several concurrent
//! controllers, a deposed controller's write refused, a stale-epoch write refused, and moves
//! left by a killed controller finished or rolled back by the next one.

use std::collections::BTreeMap;
use std::time::Duration;

use hearth_cluster::{
    run_controller, ClusterConfig, ClusterNode, Controller, Error, Member, MoveProgress,
    PlacedNode, PlannedMove, Residency, SlotState,
};
use tokio::sync::watch;

use crate::harness::{eventually, Etcd};

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

fn placed() -> PlacedNode {
    PlacedNode {
        region: "local".into(),
        failure_zone: String::new(),
        state: Default::default(),
    }
}

#[tokio::test]
async fn three_nodes_started_together_create_the_map_exactly_once() {
    let etcd = Etcd::start().await;
    let (stop_tx, stop) = watch::channel(false);
    let mut nodes = Vec::new();
    let mut ctls = Vec::new();
    for id in 1..=3 {
        let cfg = ClusterConfig {
            initial_nodes: 3,
            ..etcd.config("c", id)
        };
        nodes.push(ClusterNode::with_client(
            etcd.client().await,
            &cfg,
            member(&cfg),
        ));
        let client = etcd.client().await;
        ctls.push(tokio::spawn(run_controller(
            client,
            cfg,
            Residency::default(),
            stop.clone(),
        )));
    }
    for n in &nodes {
        tokio::time::timeout(Duration::from_secs(20), n.wait_serving())
            .await
            .expect("every node serves");
    }
    let mut c = etcd.client().await;
    let kv = c.get("/hearth/c/map", None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        kv.version(),
        1,
        "written once: by one controller, at creation"
    );
    let snap = nodes[0].snapshot().unwrap();
    assert_eq!(snap.epoch, kv.mod_revision() as u64);
    assert_eq!(snap.map.nodes.len(), 3);
    assert_eq!(snap.map.shards.len(), 24);
    let per_node = |n| snap.owners().iter().filter(|&&o| o == n).count();
    assert!(
        (1..=3).all(|n| (5450..=5470).contains(&per_node(n))),
        "slots spread"
    );
    stop_tx.send(true).unwrap();
    for c in ctls {
        tokio::time::timeout(Duration::from_secs(10), c)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn a_deposed_controller_cannot_write_and_a_stale_epoch_is_refused() {
    let etcd = Etcd::start().await;
    let (ca, cb) = (etcd.config("d", 1), etcd.config("d", 2));
    let mut a = Controller::campaign(etcd.client().await, &ca)
        .await
        .unwrap();
    let nodes: BTreeMap<u32, PlacedNode> = [(1, placed()), (2, placed())].into();
    let (created, epoch) = a
        .create_map(&ca, Residency::default(), &nodes)
        .await
        .unwrap();
    assert!(created);
    let (map, read_epoch) = a.read().await.unwrap().unwrap();
    assert_eq!(read_epoch, epoch);

    // B campaigns and waits while A leads.
    let b_client = etcd.client().await;
    let b = tokio::spawn(async move { Controller::campaign(b_client, &cb).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.is_finished(), "one controller at a time");
    // A's lease expires (revoked here: what etcd does when A stops renewing it); B leads.
    etcd.client().await.lease_revoke(a.lease()).await.unwrap();
    let mut b = tokio::time::timeout(Duration::from_secs(10), b)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(b.election_revision() > a.election_revision());

    // A still believes it leads; its write at the current epoch is refused.
    let mut changed = map.clone();
    changed.add_node(3, placed()).unwrap();
    assert!(matches!(
        a.write(epoch, &changed).await,
        Err(Error::Deposed)
    ));
    assert!(matches!(
        a.change(|m, _| m.set_leaving(2)).await,
        Err(Error::Deposed)
    ));
    let mut c = etcd.client().await;
    assert_eq!(
        c.get("/hearth/d/map", None).await.unwrap().kvs()[0].mod_revision() as u64,
        epoch,
        "nothing written by A"
    );

    // B writes at the current epoch; a write based on the old epoch is then stale.
    let new_epoch = b.write(epoch, &changed).await.unwrap();
    assert!(new_epoch > epoch);
    match b.write(epoch, &map).await {
        Err(Error::StaleEpoch { expected, current }) => {
            assert_eq!((expected, current), (epoch, new_epoch));
        }
        other => panic!("stale write not refused: {other:?}"),
    }
    let (now, e) = b.read().await.unwrap().unwrap();
    assert_eq!((e, now.nodes.len()), (new_epoch, 3));
}

#[tokio::test]
async fn a_new_controller_finishes_or_rolls_back_the_moves_of_a_killed_one() {
    let etcd = Etcd::start().await;
    let cfgs: Vec<ClusterConfig> = (1..=3).map(|i| etcd.config("k", i)).collect();
    // Nodes 1 and 2 run; node 3 is placed but down.
    let n1 = ClusterNode::with_client(etcd.client().await, &cfgs[0], member(&cfgs[0]));
    let n2 = ClusterNode::with_client(etcd.client().await, &cfgs[1], member(&cfgs[1]));
    let mut a = Controller::campaign(etcd.client().await, &cfgs[0])
        .await
        .unwrap();
    let nodes: BTreeMap<u32, PlacedNode> = (1..=3).map(|i| (i, placed())).collect();
    a.create_map(&cfgs[0], Residency::default(), &nodes)
        .await
        .unwrap();
    n1.wait_serving().await;
    n2.wait_serving().await;

    // A starts two moves off node 1: slot X to a shard of node 2, slot Y to one of node 3.
    let (map, _) = a.read().await.unwrap().unwrap();
    let shard_of = |n: u32| {
        *map.shards
            .iter()
            .find(|(_, s)| s.owner() == Some(n))
            .unwrap()
            .0
    };
    let on1: Vec<u16> = (0..16384u16)
        .filter(|&s| map.owner_of_slot(s) == Some(1))
        .take(2)
        .collect();
    let (x, y) = (on1[0], on1[1]);
    let moves = [
        PlannedMove {
            slot: x,
            from: map.slot(x).shard,
            to: shard_of(2),
        },
        PlannedMove {
            slot: y,
            from: map.slot(y).shard,
            to: shard_of(3),
        },
    ];
    a.start_moves(&moves).await.unwrap();
    eventually(5, "moves seen", || {
        n2.snapshot().unwrap().map.moves.len() == 2
    })
    .await;
    let snap = n2.snapshot().unwrap();
    let SlotState::Moving(mx) = snap.slot_state(x) else {
        panic!("x not moving")
    };
    // Sealed at the source: node 1 must bounce writes to X with MOVED naming node 2.
    assert_eq!(
        snap.fence(x, snap.epoch, 1),
        hearth_cluster::Fence::Moved {
            owner: Some(2),
            epoch: snap.epoch
        }
    );

    // A is killed mid-move (no resign: its lease runs out). Node 2 finishes the import of X.
    drop(a);
    n2.report_progress(
        x,
        &MoveProgress {
            since: mx.since,
            copied: true,
            bytes: 1234,
        },
    )
    .await
    .unwrap();
    eventually(5, "progress seen", || n1.view().progress.contains_key(&x)).await;

    let mut b = tokio::time::timeout(
        Duration::from_secs(15),
        Controller::campaign(etcd.client().await, &cfgs[1]),
    )
    .await
    .expect("B elected once A's lease expired")
    .unwrap();
    let done = b
        .reconcile(&cfgs[1], &Residency::default(), &n1.view())
        .await
        .unwrap();
    assert_eq!(done.activated, vec![x], "import reported done: activated");
    assert_eq!(done.rolled_back, vec![y], "target node down: rolled back");
    let (after, epoch) = b.read().await.unwrap().unwrap();
    assert_eq!(epoch, done.epoch);
    assert!(after.moves.is_empty());
    assert_eq!(after.owner_of_slot(x), Some(2));
    assert_eq!(after.owner_of_slot(y), Some(1), "back where its data is");
    assert!(
        after.slot(x).since > mx.since,
        "assigned after the move began"
    );
    eventually(5, "nodes see the new epoch", || {
        n1.snapshot().is_some_and(|s| s.epoch == epoch)
    })
    .await;
    let s1 = n1.snapshot().unwrap();
    // A write to X routed before the activation is stale at the new owner.
    assert!(matches!(
        s1.fence(x, mx.since, 2),
        hearth_cluster::Fence::Moved { owner: Some(2), .. }
    ));
    assert_eq!(s1.fence(x, epoch, 2), hearth_cluster::Fence::Accept);
    assert_eq!(s1.fence(y, epoch, 1), hearth_cluster::Fence::Accept);
    assert_eq!(
        s1.fence(y, epoch + 5, 1),
        hearth_cluster::Fence::Behind { epoch: epoch + 5 }
    );
}
