//! Two cores as two nodes of a cluster, each with its own store model, passing forwarded sends
//! and their answers as bytes (the encoding the links carry): cross-node delivery, a group
//! whose members live on both nodes, fencing by epoch, a lost node.

use bytes::Bytes;
use hearth_protocol::{
    slot_of, ErrorCode, Frame, GroupCreate, MessageId, SendGroup, SigningKey, SLOT_COUNT,
};
use hearth_storage::DeviceKey;

use super::sim::{Setup, Sim, Wire};
use crate::core::{Forwarded, NodeId, Returned, SlotMap};

/// Slot `s` belongs to node `s % 2`.
fn map(epoch: u64, local: NodeId) -> SlotMap {
    SlotMap::new(
        epoch,
        local,
        (0..SLOT_COUNT).map(|s| u32::from(s % 2)).collect(),
    )
}

/// The `n`-th account whose slot node `node` owns.
fn account_on(node: u16, n: usize) -> u64 {
    (1..u64::MAX)
        .filter(|a| slot_of(*a) % 2 == node)
        .nth(n)
        .unwrap()
}

struct Pair {
    nodes: Vec<Sim>,
}

impl Pair {
    fn new() -> Pair {
        let key = SigningKey::generate();
        let der = key.to_pkcs8().to_vec();
        let nodes = (0..2)
            .map(|i| {
                let signing = SigningKey::from_pkcs8(&der).unwrap();
                Sim::node(Setup::default(), map(1, i), signing)
            })
            .collect();
        Pair { nodes }
    }

    /// Run both nodes and carry their bytes until nothing moves.
    fn run(&mut self) {
        loop {
            for n in &mut self.nodes {
                n.run();
            }
            let mut moved = false;
            for from in 0..self.nodes.len() {
                for (to, wire) in std::mem::take(&mut self.nodes[from].outbox) {
                    moved = true;
                    self.deliver(from as NodeId, to, wire);
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, wire: Wire) {
        let node = &mut self.nodes[to as usize];
        let now = node.now_ms;
        match wire {
            Wire::Forward(mut b) => {
                let f = Forwarded::decode(&mut b).expect("decodes");
                node.core.handle_forwarded(from, vec![f], now);
            }
            Wire::Return(mut b) => {
                let r = Returned::decode(&mut b).expect("decodes");
                node.core.handle_returned(vec![r]);
            }
        }
    }
}

fn ids(frames: &[Frame]) -> Vec<u128> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Deliver(d) => Some(d.meta.msg_id.as_u128()),
            Frame::DeliverShared(d) => Some(d.meta.msg_id.as_u128()),
            _ => None,
        })
        .collect()
}

fn answer(frames: &[Frame], msg: u128) -> Option<Result<u32, ErrorCode>> {
    frames.iter().find_map(|f| match f {
        Frame::Accepted(a) if a.msg_id.as_u128() == msg => Some(Ok(a.recipients)),
        Frame::Error(e) if e.msg_id.as_u128() == msg => Some(Err(e.refusal.code)),
        _ => None,
    })
}

#[test]
fn a_send_to_an_account_on_another_node_is_stored_there_and_answered_here() {
    let mut p = Pair::new();
    let (a, b) = (account_on(0, 0), account_on(1, 0));
    let sa = p.nodes[0].connect(DeviceKey::new(a, 1));
    let sb = p.nodes[1].connect(DeviceKey::new(b, 1));
    p.nodes[1].disconnect(sb);
    p.nodes[0].send(sa, DeviceKey::new(b, 0), 1, b"across");
    p.run();
    assert_eq!(answer(&p.nodes[0].take(sa), 1), Some(Ok(1)));
    assert_eq!(
        p.nodes[1].store.queued(DeviceKey::new(b, 1)).len(),
        1,
        "stored at the owner"
    );
    assert!(p.nodes[0].store.queued(DeviceKey::new(b, 1)).is_empty());
    let sb = p.nodes[1].connect(DeviceKey::new(b, 1));
    assert_eq!(ids(&p.nodes[1].take(sb)), vec![1]);
}

#[test]
fn a_device_of_an_account_another_node_owns_is_refused_at_hello() {
    let mut p = Pair::new();
    let b = account_on(1, 0);
    let c = p.nodes[0].open(DeviceKey::new(b, 1));
    let token = p.nodes[0].token(DeviceKey::new(b, 1), "", "");
    p.nodes[0].input(
        c,
        Frame::Hello(hearth_protocol::Hello {
            version: hearth_protocol::PROTOCOL_VERSION,
            token,
        }),
    );
    p.run();
    assert!(p.nodes[0].closed(c).is_some(), "not served here");
}

#[test]
fn a_group_with_members_on_both_nodes_is_answered_once_with_every_recipient() {
    let mut p = Pair::new();
    let a = account_on(0, 0);
    let (b, c) = (account_on(1, 0), account_on(1, 1));
    let group = account_on(0, 5);
    let sa = p.nodes[0].connect(DeviceKey::new(a, 1));
    let sb = p.nodes[1].connect(DeviceKey::new(b, 1));
    let sc = p.nodes[1].connect(DeviceKey::new(c, 1));
    p.nodes[0].input(
        sa,
        Frame::GroupCreate(GroupCreate {
            req_id: MessageId::from_u128(100),
            group,
            members: vec![b, c],
        }),
    );
    p.run();
    assert!(matches!(p.nodes[0].take(sa)[0], Frame::GroupOk(_)));
    p.nodes[0].input(
        sa,
        Frame::SendGroup(SendGroup {
            msg_id: MessageId::from_u128(7),
            group,
            ttl_secs: 0,
            flags: 0,
            payload: Bytes::from_static(b"to all"),
        }),
    );
    p.run();
    assert_eq!(
        answer(&p.nodes[0].take(sa), 7),
        Some(Ok(2)),
        "both parts summed"
    );
    assert_eq!(ids(&p.nodes[1].take(sb)), vec![7]);
    assert_eq!(ids(&p.nodes[1].take(sc)), vec![7]);
}

#[test]
fn a_send_routed_under_an_old_map_is_refused_with_moved() {
    let mut p = Pair::new();
    let (a, b) = (account_on(0, 0), account_on(1, 0));
    let sa = p.nodes[0].connect(DeviceKey::new(a, 1));
    p.nodes[1].connect(DeviceKey::new(b, 1));
    // Node 1 learns of a newer map in which b's slot came to it at epoch 5; node 0 still routes
    // under epoch 1.
    let mut since = vec![0; SLOT_COUNT as usize];
    since[usize::from(slot_of(b))] = 5;
    p.nodes[1].core.set_slot_map(map(5, 1).with_since(since));
    p.nodes[0].send(sa, DeviceKey::new(b, 0), 1, b"stale");
    p.run();
    assert_eq!(answer(&p.nodes[0].take(sa), 1), Some(Err(ErrorCode::Moved)));
    assert!(p.nodes[1].store.queued(DeviceKey::new(b, 1)).is_empty());
}

#[test]
fn sends_to_a_lost_node_are_answered_with_a_retry() {
    let mut p = Pair::new();
    let (a, b) = (account_on(0, 0), account_on(1, 0));
    let sa = p.nodes[0].connect(DeviceKey::new(a, 1));
    p.nodes[0].send(sa, DeviceKey::new(b, 0), 1, b"into the void");
    p.nodes[0].run();
    assert_eq!(p.nodes[0].outbox.len(), 1, "forwarded");
    p.nodes[0].outbox.clear();
    p.nodes[0].core.node_lost(1);
    p.nodes[0].run();
    let frames = p.nodes[0].take(sa);
    assert_eq!(answer(&frames, 1), Some(Err(ErrorCode::Overloaded)));
}
