//! Who owns which slot: the slot map, consulted at HELLO, at ingress and, at the owner, to
//! fence sends routed under an older map. A single node owns every slot; in a cluster the map
//! comes from etcd, and every change bumps its epoch (the etcd revision).

use std::collections::HashMap;

use hearth_protocol::{slot_of, SLOT_COUNT};

/// A node of the cluster (0 on a single node).
pub(crate) type NodeId = u32;

/// The owner's verdict on a send routed to it under epoch `e`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fence {
    /// This node owns the slot, and the sender routed under a map at least as new as the
    /// slot's last change.
    Accept,
    /// Another node owns the slot (or took it since the sender's map): answer MOVED.
    Moved { owner: NodeId },
    /// The slot is being moved: its writes wait until the move ends.
    Sealed,
    /// The sender's map is newer than this node's: this node must catch up first.
    Behind,
}

/// Slot to owner node, at one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotMap {
    epoch: u64,
    local: NodeId,
    owners: Box<[NodeId]>,
    /// The epoch at which each slot's owner got it.
    since: Box<[u64]>,
    /// Slots being moved (sealed at their source).
    moving: Vec<u16>,
    /// Client (QUIC) address of each node, for redirects.
    addrs: HashMap<NodeId, String>,
}

impl SlotMap {
    /// The map of a single node that owns every slot.
    pub(crate) fn single(local: NodeId) -> SlotMap {
        SlotMap::new(0, local, vec![local; SLOT_COUNT as usize])
    }

    /// A map at `epoch` where slot `s` belongs to `owners[s]`, seen from node `local`.
    pub(crate) fn new(epoch: u64, local: NodeId, owners: Vec<NodeId>) -> SlotMap {
        assert_eq!(owners.len(), SLOT_COUNT as usize, "one owner per slot");
        SlotMap {
            epoch,
            local,
            owners: owners.into_boxed_slice(),
            since: vec![0; SLOT_COUNT as usize].into_boxed_slice(),
            moving: Vec::new(),
            addrs: HashMap::new(),
        }
    }

    /// The same map with the epoch at which each slot got its owner (`since[s]` <= epoch).
    pub(crate) fn with_since(mut self, since: Vec<u64>) -> SlotMap {
        assert_eq!(since.len(), SLOT_COUNT as usize, "one epoch per slot");
        self.since = since.into_boxed_slice();
        self
    }

    /// The same map with these slots sealed for a move.
    pub(crate) fn with_moving(mut self, mut slots: Vec<u16>) -> SlotMap {
        slots.sort_unstable();
        slots.dedup();
        self.moving = slots;
        self
    }

    /// The same map with the nodes' client addresses.
    pub(crate) fn with_addrs(mut self, addrs: HashMap<NodeId, String>) -> SlotMap {
        self.addrs = addrs;
        self
    }

    /// The revision of the map this value reflects.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// This node.
    pub(crate) fn local(&self) -> NodeId {
        self.local
    }

    /// The owner of an account's (or a group's) slot.
    pub(crate) fn owner_of(&self, id: u64) -> NodeId {
        self.owners[usize::from(slot_of(id))]
    }

    /// Whether this node owns the slot of `id`.
    pub(crate) fn is_local(&self, id: u64) -> bool {
        self.owner_of(id) == self.local
    }

    /// The client address of `node`, if known.
    pub(crate) fn addr(&self, node: NodeId) -> Option<&str> {
        self.addrs.get(&node).map(String::as_str)
    }

    /// Whether a send for `id`'s slot, routed under `epoch`, may be handled here.
    pub(crate) fn fence(&self, id: u64, epoch: u64) -> Fence {
        let slot = slot_of(id);
        let owner = self.owners[usize::from(slot)];
        if epoch > self.epoch {
            return Fence::Behind;
        }
        if owner != self.local || epoch < self.since[usize::from(slot)] {
            return Fence::Moved { owner };
        }
        if self.moving.binary_search(&slot).is_ok() {
            return Fence::Sealed;
        }
        Fence::Accept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_node_owns_everything_and_a_cluster_map_splits() {
        let single = SlotMap::single(7);
        assert!((0..1000u64).all(|a| single.is_local(a) && single.owner_of(a) == 7));
        let owners = (0..SLOT_COUNT).map(|s| u32::from(s % 3)).collect();
        let map = SlotMap::new(42, 1, owners);
        assert_eq!(map.epoch(), 42);
        let a = (0..u64::MAX).find(|&a| slot_of(a) % 3 == 2).unwrap();
        assert_eq!(map.owner_of(a), 2);
        assert!(!map.is_local(a));
    }

    #[test]
    fn the_fence_refuses_stale_foreign_sealed_and_future_epochs() {
        let mine = (0..u64::MAX).find(|&a| slot_of(a) % 2 == 1).unwrap();
        let theirs = (0..u64::MAX).find(|&a| slot_of(a) % 2 == 0).unwrap();
        let owners: Vec<NodeId> = (0..SLOT_COUNT).map(|s| u32::from(s % 2)).collect();
        let mut since = vec![0; SLOT_COUNT as usize];
        since[usize::from(slot_of(mine))] = 40;
        let map = SlotMap::new(50, 1, owners).with_since(since);
        assert_eq!(map.fence(mine, 45), Fence::Accept);
        assert_eq!(
            map.fence(mine, 39),
            Fence::Moved { owner: 1 },
            "routed before it came here"
        );
        assert_eq!(map.fence(theirs, 50), Fence::Moved { owner: 0 });
        assert_eq!(map.fence(mine, 51), Fence::Behind);
        let sealed = map.clone().with_moving(vec![slot_of(mine)]);
        assert_eq!(sealed.fence(mine, 50), Fence::Sealed);
    }
}
