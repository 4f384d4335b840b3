//! Checked changes to the cluster map: creation, adding and removing nodes, rebalance plans
//! and the steps of a slot move. Pure functions of the map (no I/O); the controller wraps each
//! in a guarded etcd txn. Every change that places a slot checks residency first and refuses
//! with the reason.

use std::collections::{BTreeMap, BTreeSet};

use hearth_protocol::SLOT_COUNT;
use serde::Serialize;

use crate::model::{
    ClusterMap, Move, NodeId, NodeState, PlacedNode, Residency, Revision, Shard, ShardId,
    ShardState, SlotEntry, SLOTS,
};

/// Why a change to the map was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The change would put a slot's data in a region its zone does not allow.
    #[error(
        "residency: slot {slot} is in zone {zone:?}, which does not allow region {region:?} \
         of node {node}"
    )]
    Residency {
        /// The slot.
        slot: u16,
        /// Its zone.
        zone: String,
        /// The node that would hold it.
        node: NodeId,
        /// That node's region.
        region: String,
    },
    /// A zone has slots but no shard lives on nodes its regions allow.
    #[error("residency: zone {zone:?} has slots but no shard on a node in {regions:?}")]
    NoShardForZone {
        /// The zone.
        zone: String,
        /// Its allowed regions.
        regions: Vec<String>,
    },
    /// A zone's definition is unusable.
    #[error("residency: {0}")]
    BadZones(String),
    /// The node is already in placement.
    #[error("node {0} is already placed")]
    NodeExists(NodeId),
    /// No such node in placement.
    #[error("node {0} is not in placement")]
    UnknownNode(NodeId),
    /// No such shard.
    #[error("shard {0} does not exist")]
    UnknownShard(ShardId),
    /// The target shard takes no new slots.
    #[error("shard {0} is retiring and takes no new slots")]
    ShardRetiring(ShardId),
    /// The slot is moving already.
    #[error("slot {0} is already moving")]
    AlreadyMoving(u16),
    /// The slot is not moving (or moving under another revision).
    #[error("slot {slot} has no move at revision {since}")]
    NoSuchMove {
        /// The slot.
        slot: u16,
        /// The move's revision the caller named.
        since: Revision,
    },
    /// The slot is on that shard already.
    #[error("slot {slot} is already on shard {shard}")]
    SameShard {
        /// The slot.
        slot: u16,
        /// Its shard.
        shard: ShardId,
    },
    /// The node still holds data.
    #[error("node {node} still holds {slots} slots and {moves} moves: move them off first")]
    NodeHoldsSlots {
        /// The node.
        node: NodeId,
        /// Slots on its shards.
        slots: usize,
        /// Moves from or to its shards.
        moves: usize,
    },
    /// No nodes at all.
    #[error("no nodes to place shards on")]
    NoNodes,
}

/// One move of a rebalance plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PlannedMove {
    /// The slot.
    pub slot: u16,
    /// Its shard now.
    pub from: ShardId,
    /// Where it goes.
    pub to: ShardId,
}

impl ClusterMap {
    /// A new map: `shards_per_node` shards on each of `nodes`, every zone's slots spread
    /// evenly (contiguous ranges) over the shards on nodes its regions allow. `since` is the
    /// first revision the map can be in force at (the slots' `since`).
    pub fn create(
        name: &str,
        replication_factor: u8,
        shards_per_node: u32,
        residency: Residency,
        nodes: &BTreeMap<NodeId, PlacedNode>,
        since: Revision,
    ) -> Result<ClusterMap, PlanError> {
        if nodes.is_empty() {
            return Err(PlanError::NoNodes);
        }
        check_zones(&residency)?;
        let mut map = ClusterMap::empty(name, replication_factor, shards_per_node, residency);
        for (&id, node) in nodes {
            map.nodes.insert(id, node.clone());
        }
        for &id in nodes.keys() {
            map.create_shards(id);
        }
        map.spread_slots(since)?;
        map.check_residency()?;
        Ok(map)
    }

    /// Add a node to placement with its `shards_per_node` (empty) shards; returns their ids.
    /// Slots come to them by a rebalance plan.
    pub fn add_node(&mut self, id: NodeId, node: PlacedNode) -> Result<Vec<ShardId>, PlanError> {
        if self.nodes.contains_key(&id) {
            return Err(PlanError::NodeExists(id));
        }
        self.nodes.insert(id, node);
        Ok(self.create_shards(id))
    }

    /// Mark a node as leaving: its shards retire (take no new slots) and the next rebalance
    /// plan moves their slots off.
    pub fn set_leaving(&mut self, id: NodeId) -> Result<(), PlanError> {
        let node = self.nodes.get_mut(&id).ok_or(PlanError::UnknownNode(id))?;
        node.state = NodeState::Leaving;
        for shard in self.shards.values_mut() {
            if shard.owner() == Some(id) {
                shard.state = ShardState::Retiring;
            }
        }
        Ok(())
    }

    /// Remove a node from placement with its shards. Refused while any of its shards holds a
    /// slot or takes part in a move.
    pub fn remove_node(&mut self, id: NodeId) -> Result<(), PlanError> {
        if !self.nodes.contains_key(&id) {
            return Err(PlanError::UnknownNode(id));
        }
        let owned: BTreeSet<ShardId> = self
            .shards
            .iter()
            .filter(|(_, s)| s.owner() == Some(id))
            .map(|(&k, _)| k)
            .collect();
        let slots = self
            .slots
            .iter()
            .filter(|e| owned.contains(&e.shard))
            .count();
        let moves = self
            .moves
            .values()
            .filter(|m| owned.contains(&m.from) || owned.contains(&m.to))
            .count();
        if slots > 0 || moves > 0 {
            return Err(PlanError::NodeHoldsSlots {
                node: id,
                slots,
                moves,
            });
        }
        for s in &owned {
            self.shards.remove(s);
        }
        for shard in self.shards.values_mut() {
            shard.replicas.retain(|&n| n != id);
            shard.learners.retain(|&n| n != id);
        }
        self.nodes.remove(&id);
        Ok(())
    }

    /// Moves that even out slots per shard: retiring shards lose every slot, active shards
    /// end with `floor` or `ceil` of slots / active shards where residency allows (a slot
    /// without an allowed, less loaded shard stays), and nothing moves between shards that
    /// are already within one slot of each other. Slots already moving count at their target.
    pub fn plan_rebalance(&self) -> Vec<PlannedMove> {
        let active: Vec<ShardId> = self
            .shards
            .iter()
            .filter(|(_, s)| s.state == ShardState::Active)
            .map(|(&k, _)| k)
            .collect();
        if active.is_empty() {
            return Vec::new();
        }
        let mut load: BTreeMap<ShardId, usize> = self.shards.keys().map(|&s| (s, 0)).collect();
        let mut holding: BTreeMap<ShardId, Vec<u16>> = BTreeMap::new();
        for s in 0..SLOT_COUNT {
            match self.moves.get(&s) {
                Some(m) => *load.entry(m.to).or_default() += 1,
                None => {
                    let shard = self.slots[usize::from(s)].shard;
                    *load.entry(shard).or_default() += 1;
                    holding.entry(shard).or_default().push(s);
                }
            }
        }
        let ceil = SLOTS.div_ceil(active.len());
        let retiring = |shard: ShardId| self.shards[&shard].state == ShardState::Retiring;
        let mut plan = Vec::new();
        // One move at a time from the most loaded shard that still has slots to give
        // (retiring shards first), its highest slot first (the low end stays contiguous), to
        // the least loaded shard allowed to hold that slot, while that strictly evens out.
        while let Some(src) = holding
            .iter()
            .filter(|(_, slots)| !slots.is_empty())
            .map(|(&s, _)| s)
            .max_by_key(|&s| (retiring(s), load[&s], std::cmp::Reverse(s)))
        {
            let slot = *holding[&src].last().expect("non-empty");
            let to = active
                .iter()
                .copied()
                .filter(|&t| t != src && self.check_slot_on_shard(slot, t).is_ok())
                .min_by_key(|&t| (load[&t], t));
            let improves = to.is_some_and(|t| {
                if retiring(src) {
                    load[&t] < ceil
                } else {
                    load[&src] >= load[&t] + 2
                }
            });
            if !improves {
                if retiring(src) {
                    holding.get_mut(&src).unwrap().pop(); // stays: nowhere allowed to go
                    continue;
                }
                // The most loaded shard cannot give this slot anywhere useful: stop giving
                // from it (others are less loaded and give first next time round).
                holding.remove(&src);
                continue;
            }
            let to = to.expect("improves");
            holding.get_mut(&src).unwrap().pop();
            *load.get_mut(&src).unwrap() -= 1;
            *load.get_mut(&to).unwrap() += 1;
            plan.push(PlannedMove {
                slot,
                from: src,
                to,
            });
        }
        plan.sort_by_key(|m| m.slot);
        plan
    }

    /// Replace the residency rules (zones and their slot ranges), refused with the reason if
    /// the current placement (or a move in progress) would break them.
    pub fn set_residency(&mut self, residency: Residency) -> Result<(), PlanError> {
        check_zones(&residency)?;
        let old = std::mem::replace(&mut self.residency, residency);
        self.index_zones();
        if let Err(e) = self.check_residency() {
            self.residency = old;
            self.index_zones();
            return Err(e);
        }
        Ok(())
    }

    /// Start moving `slot` to shard `to`: the slot becomes MOVING at `since`.
    pub fn start_move(&mut self, slot: u16, to: ShardId, since: Revision) -> Result<(), PlanError> {
        if self.moves.contains_key(&slot) {
            return Err(PlanError::AlreadyMoving(slot));
        }
        let target = self.shards.get(&to).ok_or(PlanError::UnknownShard(to))?;
        if target.state == ShardState::Retiring {
            return Err(PlanError::ShardRetiring(to));
        }
        let from = self.slots[usize::from(slot)].shard;
        if from == to {
            return Err(PlanError::SameShard { slot, shard: to });
        }
        self.check_slot_on_shard(slot, to)?;
        self.moves.insert(slot, Move { from, to, since });
        Ok(())
    }

    /// Finish the move of `slot` that started at `move_since`: the slot is ACTIVE on the
    /// target from `since` on.
    pub fn activate_move(
        &mut self,
        slot: u16,
        move_since: Revision,
        since: Revision,
    ) -> Result<ShardId, PlanError> {
        let m = self.take_move(slot, move_since)?;
        if let Err(e) = self.check_slot_on_shard(slot, m.to) {
            self.moves.insert(slot, m);
            return Err(e);
        }
        self.slots[usize::from(slot)] = SlotEntry { shard: m.to, since };
        Ok(m.to)
    }

    /// Abandon the move of `slot` that started at `move_since`: the slot stays ACTIVE on
    /// its source (whose data was never dropped); the target discards what it imported.
    pub fn rollback_move(&mut self, slot: u16, move_since: Revision) -> Result<(), PlanError> {
        self.take_move(slot, move_since).map(|_| ())
    }

    fn take_move(&mut self, slot: u16, since: Revision) -> Result<Move, PlanError> {
        match self.moves.get(&slot) {
            Some(m) if m.since == since => Ok(self.moves.remove(&slot).expect("present")),
            _ => Err(PlanError::NoSuchMove { slot, since }),
        }
    }

    /// Whether slot `slot` may live on shard `shard`: every node holding the shard is in a
    /// region the slot's zone allows.
    pub fn check_slot_on_shard(&self, slot: u16, shard: ShardId) -> Result<(), PlanError> {
        let s = self
            .shards
            .get(&shard)
            .ok_or(PlanError::UnknownShard(shard))?;
        let zone_name = self.zone_of_slot(slot);
        let zone = &self.residency.zones[zone_name];
        for node in s.holders() {
            let region = self
                .nodes
                .get(&node)
                .map(|n| n.region.as_str())
                .ok_or(PlanError::UnknownNode(node))?;
            if !zone.allows(region) {
                return Err(PlanError::Residency {
                    slot,
                    zone: zone_name.to_owned(),
                    node,
                    region: region.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Check every slot (and every move's target) against residency.
    pub fn check_residency(&self) -> Result<(), PlanError> {
        for s in 0..SLOT_COUNT {
            self.check_slot_on_shard(s, self.slots[usize::from(s)].shard)?;
        }
        for (&s, m) in &self.moves {
            self.check_slot_on_shard(s, m.to)?;
        }
        Ok(())
    }

    /// Create a node's shards; replicas beyond the first are the least loaded other nodes of
    /// the same region, preferring distinct failure zones (replication).
    fn create_shards(&mut self, id: NodeId) -> Vec<ShardId> {
        let mut created = Vec::new();
        for _ in 0..self.shards_per_node {
            let replicas = self.choose_replicas(id);
            let sid = self.next_shard;
            self.next_shard += 1;
            self.shards.insert(
                sid,
                Shard {
                    replicas,
                    learners: Vec::new(),
                    state: ShardState::Active,
                },
            );
            created.push(sid);
        }
        created
    }

    fn choose_replicas(&self, primary: NodeId) -> Vec<NodeId> {
        let mut replicas = vec![primary];
        let Some(p) = self.nodes.get(&primary) else {
            return replicas;
        };
        let mut held: BTreeMap<NodeId, usize> = BTreeMap::new();
        for s in self.shards.values() {
            for n in s.holders() {
                *held.entry(n).or_default() += 1;
            }
        }
        let mut zones: BTreeSet<&str> = [p.failure_zone.as_str()].into();
        let mut candidates: Vec<(NodeId, &PlacedNode)> = self
            .nodes
            .iter()
            .filter(|(&n, node)| {
                n != primary && node.region == p.region && node.state == NodeState::Active
            })
            .map(|(&n, node)| (n, node))
            .collect();
        candidates.sort_by_key(|(n, _)| (held.get(n).copied().unwrap_or(0), *n));
        // Distinct failure zones first, then any node.
        for pass in 0..2 {
            for (n, node) in &candidates {
                if replicas.len() >= usize::from(self.replication_factor) {
                    return replicas;
                }
                let fresh =
                    node.failure_zone.is_empty() || !zones.contains(node.failure_zone.as_str());
                if !replicas.contains(n) && (pass == 1 || fresh) {
                    replicas.push(*n);
                    zones.insert(node.failure_zone.as_str());
                }
            }
        }
        replicas
    }

    /// Give each zone's slots to the shards allowed to hold them, evenly, in contiguous
    /// ranges; the most restricted zones first, each on the least loaded shards.
    fn spread_slots(&mut self, since: Revision) -> Result<(), PlanError> {
        let mut by_zone: BTreeMap<String, Vec<u16>> = BTreeMap::new();
        for s in 0..SLOT_COUNT {
            by_zone
                .entry(self.zone_of_slot(s).to_owned())
                .or_default()
                .push(s);
        }
        let mut eligible: Vec<(String, Vec<ShardId>)> = Vec::new();
        for zone in by_zone.keys() {
            let rule = &self.residency.zones[zone];
            let shards: Vec<ShardId> = self
                .shards
                .iter()
                .filter(|(_, sh)| {
                    sh.holders()
                        .all(|n| self.nodes.get(&n).is_some_and(|p| rule.allows(&p.region)))
                })
                .map(|(&k, _)| k)
                .collect();
            if shards.is_empty() {
                return Err(PlanError::NoShardForZone {
                    zone: zone.clone(),
                    regions: rule.regions.clone(),
                });
            }
            eligible.push((zone.clone(), shards));
        }
        eligible.sort_by_key(|(z, s)| (s.len(), z.clone()));
        let mut load: BTreeMap<ShardId, usize> = self.shards.keys().map(|&s| (s, 0)).collect();
        for (zone, mut shards) in eligible {
            let slots = &by_zone[&zone];
            shards.sort_by_key(|s| (load[s], *s));
            let n = shards.len();
            let mut i = 0;
            for (k, &shard) in shards.iter().enumerate() {
                let take = slots.len() / n + usize::from(k < slots.len() % n);
                for &s in &slots[i..i + take] {
                    self.slots[usize::from(s)] = SlotEntry { shard, since };
                }
                i += take;
                *load.get_mut(&shard).unwrap() += take;
            }
        }
        Ok(())
    }
}

/// Zones must not overlap and must name valid slots.
fn check_zones(r: &Residency) -> Result<(), PlanError> {
    if !r.zones.contains_key(&r.default_zone) {
        return Err(PlanError::BadZones(format!(
            "default zone {:?} is not defined",
            r.default_zone
        )));
    }
    let mut seen = vec![false; SLOTS];
    for (name, z) in &r.zones {
        if z.regions.is_empty() {
            return Err(PlanError::BadZones(format!(
                "zone {name:?} allows no region"
            )));
        }
        for &(a, b) in &z.slots {
            if a > b || b >= SLOT_COUNT {
                return Err(PlanError::BadZones(format!(
                    "zone {name:?}: bad slot range {a}..={b}"
                )));
            }
            for s in a..=b {
                if std::mem::replace(&mut seen[usize::from(s)], true) {
                    return Err(PlanError::BadZones(format!("slot {s} is in two zones")));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SlotState, Zone};

    fn node(region: &str) -> PlacedNode {
        PlacedNode {
            region: region.into(),
            failure_zone: String::new(),
            state: NodeState::Active,
        }
    }

    fn nodes(regions: &[&str]) -> BTreeMap<NodeId, PlacedNode> {
        regions
            .iter()
            .enumerate()
            .map(|(i, r)| (i as NodeId + 1, node(r)))
            .collect()
    }

    #[test]
    fn creation_spreads_slots_evenly_and_round_trips() {
        let map = ClusterMap::create("t", 1, 8, Residency::default(), &nodes(&["a", "a", "b"]), 7)
            .unwrap();
        assert_eq!(map.shards.len(), 24);
        let load = map.load();
        let (min, max) = (load.values().min().unwrap(), load.values().max().unwrap());
        assert!(max - min <= 1, "{load:?}");
        assert_eq!(load.values().sum::<usize>(), SLOTS);
        assert!((0..SLOT_COUNT).all(|s| map.slot(s).since == 7 && map.owner_of_slot(s).is_some()));
        let bytes = map.encode();
        assert!(bytes.len() < 4096, "{} bytes", bytes.len());
        assert_eq!(ClusterMap::decode(&bytes).unwrap(), map);
        assert!(ClusterMap::decode(b"{}").is_err());
    }

    #[test]
    fn adding_a_node_plans_moves_onto_its_shards_only_and_evens_out() {
        let mut map =
            ClusterMap::create("t", 1, 8, Residency::default(), &nodes(&["a", "a"]), 1).unwrap();
        let new = map.add_node(3, node("a")).unwrap();
        let plan = map.plan_rebalance();
        assert!(
            plan.iter().all(|m| new.contains(&m.to)),
            "only onto the new shards"
        );
        // 16384 / 24 shards: each new shard gets 682 or 683 slots.
        assert!((8 * 682..=8 * 683).contains(&plan.len()), "{}", plan.len());
        for (i, m) in plan.iter().enumerate() {
            map.start_move(m.slot, m.to, 10 + i as u64).unwrap();
            map.activate_move(m.slot, 10 + i as u64, 100).unwrap();
        }
        let load = map.load();
        assert!(load.values().max().unwrap() - load.values().min().unwrap() <= 1);
        assert!(
            map.plan_rebalance().is_empty(),
            "balanced: nothing more to do"
        );
    }

    #[test]
    fn moves_activate_roll_back_and_are_named_by_revision() {
        let mut map =
            ClusterMap::create("t", 1, 2, Residency::default(), &nodes(&["a", "a"]), 1).unwrap();
        let from = map.slot(5).shard;
        let to = *map.shards.keys().find(|&&s| s != from).unwrap();
        map.start_move(5, to, 20).unwrap();
        assert_eq!(
            map.slot_state(5),
            SlotState::Moving(Move {
                from,
                to,
                since: 20
            })
        );
        assert_eq!(map.start_move(5, to, 21), Err(PlanError::AlreadyMoving(5)));
        assert!(
            map.activate_move(5, 19, 30).is_err(),
            "another move's revision"
        );
        map.rollback_move(5, 20).unwrap();
        assert_eq!(map.slot_state(5), SlotState::Active { shard: from });
        map.start_move(5, to, 40).unwrap();
        assert_eq!(map.activate_move(5, 40, 41), Ok(to));
        assert_eq!(
            map.slot(5),
            SlotEntry {
                shard: to,
                since: 41
            }
        );
        assert_eq!(
            map.start_move(5, to, 50),
            Err(PlanError::SameShard { slot: 5, shard: to })
        );
    }

    fn eu_us() -> Residency {
        Residency {
            default_zone: "global".into(),
            zones: [
                (
                    "global".to_string(),
                    Zone {
                        regions: vec!["*".into()],
                        slots: vec![],
                    },
                ),
                (
                    "eu".to_string(),
                    Zone {
                        regions: vec!["eu-west".into()],
                        slots: vec![(0, 4095)],
                    },
                ),
            ]
            .into(),
        }
    }

    #[test]
    fn residency_keeps_a_zone_on_allowed_nodes_and_refuses_with_the_reason() {
        let map =
            ClusterMap::create("t", 1, 4, eu_us(), &nodes(&["eu-west", "us-east"]), 1).unwrap();
        let eu_node = 1;
        for s in 0..4096u16 {
            assert_eq!(map.zone_of_slot(s), "eu");
            assert_eq!(map.owner_of_slot(s), Some(eu_node), "slot {s}");
        }
        assert_eq!(map.zone_of_slot(4096), "global");
        map.check_residency().unwrap();
        let mut m = map.clone();
        let us_shard = *m
            .shards
            .iter()
            .find(|(_, s)| s.owner() == Some(2))
            .unwrap()
            .0;
        let err = m.start_move(10, us_shard, 5).unwrap_err();
        assert_eq!(
            err,
            PlanError::Residency {
                slot: 10,
                zone: "eu".into(),
                node: 2,
                region: "us-east".into()
            }
        );
        assert!(err
            .to_string()
            .contains("does not allow region \"us-east\""));
        // A rebalance never proposes such a move; retiring the only EU node leaves the EU
        // slots where they are (nowhere allowed to go).
        m.set_leaving(1).unwrap();
        let plan = m.plan_rebalance();
        assert!(plan.iter().all(|p| p.slot >= 4096), "EU slots stay");
        assert!(!plan.is_empty());
        // Rules that the current placement breaks are refused, and change nothing.
        let mut all = ClusterMap::create(
            "t",
            1,
            2,
            Residency::default(),
            &nodes(&["eu-west", "us-east"]),
            1,
        )
        .unwrap();
        let before = all.clone();
        // The last quarter of the slots lives on node 2 (us-east): it cannot become EU.
        let mut eu_tail = eu_us();
        eu_tail.zones.get_mut("eu").unwrap().slots = vec![(12288, 16383)];
        assert!(matches!(
            all.set_residency(eu_tail),
            Err(PlanError::Residency { node: 2, .. })
        ));
        assert_eq!(all, before);
        assert_eq!(all.zone_of_slot(16383), "global");
        all.set_residency(eu_us()).unwrap();
        assert_eq!(all.zone_of_slot(5), "eu");
        // A zone without any allowed node cannot be created.
        assert!(matches!(
            ClusterMap::create("t", 1, 4, eu_us(), &nodes(&["us-east"]), 1),
            Err(PlanError::NoShardForZone { .. })
        ));
    }

    #[test]
    fn a_node_is_removed_only_when_empty() {
        let mut map =
            ClusterMap::create("t", 1, 2, Residency::default(), &nodes(&["a", "a"]), 1).unwrap();
        assert!(matches!(
            map.remove_node(2),
            Err(PlanError::NodeHoldsSlots { node: 2, .. })
        ));
        map.set_leaving(2).unwrap();
        let plan = map.plan_rebalance();
        assert_eq!(plan.len(), SLOTS / 2);
        for m in &plan {
            map.start_move(m.slot, m.to, 3).unwrap();
            map.activate_move(m.slot, 3, 4).unwrap();
        }
        map.remove_node(2).unwrap();
        assert_eq!(map.shards.len(), 2);
        assert!((0..SLOT_COUNT).all(|s| map.owner_of_slot(s) == Some(1)));
    }

    #[test]
    fn replicas_go_to_distinct_nodes_and_failure_zones() {
        let mut ns = nodes(&["r", "r", "r", "r"]);
        for (i, z) in ["z1", "z1", "z2", "z3"].iter().enumerate() {
            ns.get_mut(&(i as NodeId + 1)).unwrap().failure_zone = (*z).into();
        }
        let map = ClusterMap::create("t", 3, 2, Residency::default(), &ns, 1).unwrap();
        for s in map.shards.values() {
            assert_eq!(s.replicas.len(), 3);
            let zones: BTreeSet<&str> = s
                .replicas
                .iter()
                .map(|n| map.nodes[n].failure_zone.as_str())
                .collect();
            assert_eq!(zones.len(), 3, "{s:?}");
        }
    }
}
