//! Encoded size of the cluster map (one etcd key) at creation and after one node joined and
//! was rebalanced onto, for 3, 100 and 1,000 nodes (8 shards per node, and 2 at 1,000);
//! feeds docs/SIZING.md.
//!
//! `cargo run --release -p hearth-cluster --example map_size`

use hearth_cluster::{ClusterMap, NodeState, PlacedNode, Residency};

/// Encoded size of the cluster map at creation and after one node joined and was
/// rebalanced onto, with the number of slots moved.
fn map_sizes(nodes: u32, shards_per_node: u32) -> (usize, usize, usize, usize) {
    let placed = |_| PlacedNode {
        region: "r".into(),
        failure_zone: String::new(),
        state: NodeState::Active,
    };
    let all = (1..=nodes).map(|n| (n, placed(n))).collect();
    let mut map =
        ClusterMap::create("sizing", 1, shards_per_node, Residency::default(), &all, 1).unwrap();
    let created = map.encode().len();
    map.add_node(nodes + 1, placed(0)).unwrap();
    let plan = map.plan_rebalance();
    for m in &plan {
        map.start_move(m.slot, m.to, 2).unwrap();
        map.activate_move(m.slot, 2, 3).unwrap();
    }
    (created, map.encode().len(), plan.len(), map.shards.len())
}

fn main() {
    for (nodes, spn) in [(3u32, 8u32), (100, 8), (1000, 8), (1000, 2)] {
        let (created, after, moved, shards) = map_sizes(nodes, spn);
        println!(
            "map, {nodes} nodes x {spn} shards: {created} bytes at creation; +1 node: \
             {moved} slots moved, {shards} shards, {after} bytes"
        );
    }
}
