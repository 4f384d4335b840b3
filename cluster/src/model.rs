//! The cluster map stored in etcd: placement nodes, shards (with replica lists), slot to
//! shard, moves in progress and residency zones. Plain data; every change goes through the
//! checked operations in `placement.rs`.

use std::collections::BTreeMap;

use hearth_protocol::SLOT_COUNT;
use serde::{Deserialize, Serialize};

/// A node of the cluster (1 or more; 0 is the unclustered single node).
pub type NodeId = u32;
/// A shard: a group of slots, the unit of placement and, later, one Raft group.
pub type ShardId = u32;
/// An etcd revision. The slot map's revision is the cluster's **epoch**.
pub type Revision = u64;

/// Slots in the cluster (`hearth_protocol::SLOT_COUNT`).
pub const SLOTS: usize = SLOT_COUNT as usize;

/// Version of the map's encoding.
pub const MAP_FORMAT: u32 = 1;

/// A live node as it registers itself in etcd (under its lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node id.
    pub id: NodeId,
    /// Where devices reach its QUIC front (`host:port`): the address of a redirect.
    pub client_addr: String,
    /// Where other nodes reach its inter-node link (`host:port`).
    pub link_addr: String,
    /// Its region (residency).
    pub region: String,
    /// Its failure zone (replica spreading); empty for none.
    #[serde(default)]
    pub failure_zone: String,
    /// hearthd's version, for rolling upgrades.
    #[serde(default)]
    pub version: String,
}

/// A node known to placement (it stays here while it is down; only decommission removes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedNode {
    /// Its region: residency is checked against it.
    pub region: String,
    /// Its failure zone; empty for none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub failure_zone: String,
    /// Whether new slots may be placed on it.
    #[serde(default, skip_serializing_if = "NodeState::is_active")]
    pub state: NodeState,
}

/// Placement state of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Takes new slots.
    #[default]
    Active,
    /// Being decommissioned: takes no new slots; its slots move off.
    Leaving,
}

impl NodeState {
    fn is_active(&self) -> bool {
        *self == NodeState::Active
    }
}

/// A shard's placement. The owner that serves its slots is `replicas[0]` until replication
/// lands; then it is the Raft leader, preferably `replicas[0]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Voting replicas, preferred leader first; distinct nodes.
    pub replicas: Vec<NodeId>,
    /// Replicas catching up before they vote (replication's add-learner step).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learners: Vec<NodeId>,
    /// Lifecycle.
    #[serde(default, skip_serializing_if = "ShardState::is_active")]
    pub state: ShardState,
}

impl Shard {
    /// The node that serves the shard's slots (one replica: its only replica).
    pub fn owner(&self) -> Option<NodeId> {
        self.replicas.first().copied()
    }

    /// Every node that holds (or is receiving) the shard's data.
    pub fn holders(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.replicas.iter().chain(&self.learners).copied()
    }
}

/// Lifecycle of a shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardState {
    /// Serving.
    #[default]
    Active,
    /// Being emptied (its node leaves); takes no new slots.
    Retiring,
}

impl ShardState {
    fn is_active(&self) -> bool {
        *self == ShardState::Active
    }
}

/// Where one slot lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotEntry {
    /// The shard that holds the slot (the source while it moves).
    pub shard: ShardId,
    /// First revision at which this assignment is in force: a write routed under an older
    /// epoch is stale for this slot.
    pub since: Revision,
}

/// A slot on its way from one shard to another. While it exists the slot is MOVING: the
/// source seals it (writes answered MOVED), the target imports its range; activation points
/// the slot at `to`, a rollback deletes the move and leaves the slot at `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// Source shard.
    pub from: ShardId,
    /// Target shard.
    pub to: ShardId,
    /// First revision at which the move is in force; names this move in progress reports.
    pub since: Revision,
}

/// The state of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Served by its shard.
    Active {
        /// Its shard.
        shard: ShardId,
    },
    /// Being moved.
    Moving(Move),
}

/// A residency zone: which regions may hold its data, and which slots are its.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zone {
    /// Regions allowed to hold the zone's data (`*`: every region).
    pub regions: Vec<String>,
    /// Its slots, as inclusive ranges; the default zone has every slot no zone lists.
    #[serde(default)]
    pub slots: Vec<(u16, u16)>,
}

impl Zone {
    /// Whether `region` may hold this zone's data.
    pub fn allows(&self, region: &str) -> bool {
        self.regions.iter().any(|r| r == "*" || r == region)
    }
}

/// Residency rules of the cluster: a slot is the unit of residency, so every slot belongs to
/// exactly one zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Residency {
    /// The zone of every slot no other zone lists.
    pub default_zone: String,
    /// Zones by name.
    pub zones: BTreeMap<String, Zone>,
}

impl Default for Residency {
    fn default() -> Residency {
        Residency {
            default_zone: "global".into(),
            zones: [(
                "global".to_string(),
                Zone {
                    regions: vec!["*".into()],
                    slots: Vec::new(),
                },
            )]
            .into(),
        }
    }
}

/// The whole cluster map, one etcd key. Its etcd `mod_revision` is the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMap {
    /// Cluster name.
    pub name: String,
    /// Replicas per shard.
    pub replication_factor: u8,
    /// Shards per node at join.
    pub shards_per_node: u32,
    /// The next shard id to allocate (ids are never reused: a Raft group id stays unique).
    pub next_shard: ShardId,
    /// Nodes known to placement.
    pub nodes: BTreeMap<NodeId, PlacedNode>,
    /// Shards by id.
    pub shards: BTreeMap<ShardId, Shard>,
    /// Slot to shard, `SLOTS` entries.
    pub(crate) slots: Vec<SlotEntry>,
    /// Slots being moved.
    pub moves: BTreeMap<u16, Move>,
    /// Residency zones.
    pub residency: Residency,
    /// Slot to zone name index into `zone_names`, `SLOTS` entries (derived from `residency`).
    zone_of: Vec<u16>,
    zone_names: Vec<String>,
}

/// Why a map could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("cluster map: {0}")]
pub struct DecodeError(String);

impl ClusterMap {
    /// An empty map (no nodes, no shards; every slot on shard 0, which does not exist).
    pub(crate) fn empty(
        name: &str,
        replication_factor: u8,
        shards_per_node: u32,
        residency: Residency,
    ) -> ClusterMap {
        let mut m = ClusterMap {
            name: name.to_owned(),
            replication_factor,
            shards_per_node,
            next_shard: 1,
            nodes: BTreeMap::new(),
            shards: BTreeMap::new(),
            slots: vec![SlotEntry { shard: 0, since: 0 }; SLOTS],
            moves: BTreeMap::new(),
            residency,
            zone_of: Vec::new(),
            zone_names: Vec::new(),
        };
        m.index_zones();
        m
    }

    /// Where slot `slot` lives.
    pub fn slot(&self, slot: u16) -> SlotEntry {
        self.slots[usize::from(slot)]
    }

    /// Slot `slot`'s state: active on its shard, or moving.
    pub fn slot_state(&self, slot: u16) -> SlotState {
        match self.moves.get(&slot) {
            Some(m) => SlotState::Moving(*m),
            None => SlotState::Active {
                shard: self.slots[usize::from(slot)].shard,
            },
        }
    }

    /// The node serving slot `slot` (its shard's owner).
    pub fn owner_of_slot(&self, slot: u16) -> Option<NodeId> {
        self.shards.get(&self.slot(slot).shard)?.owner()
    }

    /// The residency zone of slot `slot`.
    pub fn zone_of_slot(&self, slot: u16) -> &str {
        &self.zone_names[usize::from(self.zone_of[usize::from(slot)])]
    }

    /// The slots shard `shard` holds, ascending.
    pub fn slots_of(&self, shard: ShardId) -> Vec<u16> {
        (0..SLOT_COUNT)
            .filter(|&s| self.slots[usize::from(s)].shard == shard)
            .collect()
    }

    /// Slot counts per shard (shards without slots included).
    pub fn load(&self) -> BTreeMap<ShardId, usize> {
        let mut load: BTreeMap<ShardId, usize> = self.shards.keys().map(|&s| (s, 0)).collect();
        for e in &self.slots {
            *load.entry(e.shard).or_default() += 1;
        }
        load
    }

    /// Recompute the slot-to-zone index after `residency` changed.
    pub(crate) fn index_zones(&mut self) {
        self.zone_names = std::iter::once(self.residency.default_zone.clone())
            .chain(
                self.residency
                    .zones
                    .keys()
                    .filter(|z| **z != self.residency.default_zone)
                    .cloned(),
            )
            .collect();
        self.zone_of = vec![0; SLOTS];
        for (i, name) in self.zone_names.iter().enumerate().skip(1) {
            for &(a, b) in &self.residency.zones[name].slots {
                for s in a..=b.min(SLOT_COUNT - 1) {
                    self.zone_of[usize::from(s)] = i as u16;
                }
            }
        }
    }

    /// Encode for etcd (JSON; slots as ranges `[first, last, shard, since]`).
    pub fn encode(&self) -> Vec<u8> {
        let mut ranges: Vec<(u16, u16, ShardId, Revision)> = Vec::new();
        for (s, e) in self.slots.iter().enumerate() {
            match ranges.last_mut() {
                Some(r) if r.2 == e.shard && r.3 == e.since => r.1 = s as u16,
                _ => ranges.push((s as u16, s as u16, e.shard, e.since)),
            }
        }
        let wire = Wire {
            format: MAP_FORMAT,
            name: self.name.clone(),
            replication_factor: self.replication_factor,
            shards_per_node: self.shards_per_node,
            next_shard: self.next_shard,
            nodes: self.nodes.clone(),
            shards: self.shards.clone(),
            slots: ranges,
            moves: self.moves.clone(),
            residency: self.residency.clone(),
        };
        serde_json::to_vec(&wire).expect("the map serializes")
    }

    /// Decode a value written by [`ClusterMap::encode`], checking that every slot is covered
    /// exactly once.
    pub fn decode(bytes: &[u8]) -> Result<ClusterMap, DecodeError> {
        let w: Wire = serde_json::from_slice(bytes).map_err(|e| DecodeError(e.to_string()))?;
        if w.format != MAP_FORMAT {
            return Err(DecodeError(format!("unknown format {}", w.format)));
        }
        let mut slots = Vec::with_capacity(SLOTS);
        for (a, b, shard, since) in w.slots {
            if usize::from(a) != slots.len() || b < a || usize::from(b) >= SLOTS {
                return Err(DecodeError(format!("bad slot range {a}..={b}")));
            }
            slots.extend(std::iter::repeat_n(
                SlotEntry { shard, since },
                usize::from(b - a) + 1,
            ));
        }
        if slots.len() != SLOTS {
            return Err(DecodeError(format!("{} slots, want {SLOTS}", slots.len())));
        }
        if !w.residency.zones.contains_key(&w.residency.default_zone) {
            return Err(DecodeError("default zone missing from zones".into()));
        }
        let mut m = ClusterMap {
            name: w.name,
            replication_factor: w.replication_factor,
            shards_per_node: w.shards_per_node,
            next_shard: w.next_shard,
            nodes: w.nodes,
            shards: w.shards,
            slots,
            moves: w.moves,
            residency: w.residency,
            zone_of: Vec::new(),
            zone_names: Vec::new(),
        };
        m.index_zones();
        Ok(m)
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    format: u32,
    name: String,
    replication_factor: u8,
    shards_per_node: u32,
    next_shard: ShardId,
    nodes: BTreeMap<NodeId, PlacedNode>,
    shards: BTreeMap<ShardId, Shard>,
    slots: Vec<(u16, u16, ShardId, Revision)>,
    #[serde(default)]
    moves: BTreeMap<u16, Move>,
    residency: Residency,
}
