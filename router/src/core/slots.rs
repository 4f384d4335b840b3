//! Who owns which slot: the slot map, consulted at HELLO and at ingress. A single node owns
//! every slot; the cluster fills the map in from etcd and bumps its epoch on every change.

use hearth_protocol::{slot_of, SLOT_COUNT};

/// A node of the cluster (0 on a single node).
pub(crate) type NodeId = u32;

/// Slot to owner node, at one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotMap {
    epoch: u64,
    local: NodeId,
    owners: Box<[NodeId]>,
}

impl SlotMap {
    /// The map of a single node that owns every slot.
    pub fn single(local: NodeId) -> SlotMap {
        SlotMap {
            epoch: 0,
            local,
            owners: vec![local; SLOT_COUNT as usize].into_boxed_slice(),
        }
    }

    /// A map at `epoch` where slot `s` belongs to `owners[s]`, seen from node `local`.
    #[allow(dead_code)] // filled in by the cluster
    pub fn new(epoch: u64, local: NodeId, owners: Vec<NodeId>) -> SlotMap {
        assert_eq!(owners.len(), SLOT_COUNT as usize, "one owner per slot");
        SlotMap {
            epoch,
            local,
            owners: owners.into_boxed_slice(),
        }
    }

    /// The revision of the map this value reflects.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// This node.
    pub fn local(&self) -> NodeId {
        self.local
    }

    /// The owner of an account's (or a group's) slot.
    pub fn owner_of(&self, id: u64) -> NodeId {
        self.owners[usize::from(slot_of(id))]
    }

    /// Whether this node owns the slot of `id`.
    pub fn is_local(&self, id: u64) -> bool {
        self.owner_of(id) == self.local
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
}
