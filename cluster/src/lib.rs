//! Hearth cluster coordination on etcd: membership under leases, the cluster map (slots to
//! shards to nodes, with moves and residency zones) and the one controller allowed to write
//! it.
//!
//! - [`ClusterConfig`]: the `[cluster]` section of hearthd's TOML.
//! - [`ClusterNode`]: what every node runs: registration (lease, keep-alives, re-registration)
//!   and the [`MapWatcher`] (one resumable watch), with the serving gate
//!   ([`ClusterNode::serving`]) and the current [`MapSnapshot`] (owners, epoch, fencing).
//! - [`Controller`]: elected with etcd's election API; its writes are txns guarded by the
//!   map's revision (the **epoch**) and its own election key. [`run_controller`] is the loop a
//!   node runs to take part in the election.
//! - [`ClusterMap`] and its checked operations (creation, add/remove node, rebalance plans,
//!   move steps, residency): pure, no I/O.
//!
//! The layout of keys in etcd is described in docs/CLUSTER.md.

mod config;
mod controller;
mod error;
mod keys;
mod membership;
mod model;
mod node;
mod placement;
mod watcher;

pub use config::ClusterConfig;
pub use controller::{run_controller, Controller, Reconciled};
pub use error::Error;
pub use membership::LeaseState;
pub use model::{
    ClusterMap, DecodeError, Member, Move, NodeId, NodeState, PlacedNode, Residency, Revision,
    Shard, ShardId, ShardState, SlotEntry, SlotState, Zone, MAP_FORMAT, SLOTS,
};
pub use node::{connect, ClusterNode, Serving};
pub use placement::{PlanError, PlannedMove};
pub use watcher::{ClusterView, Fence, MapSnapshot, MapWatcher, MoveProgress, Owner};

/// The etcd client crate, re-exported for callers that pass a [`etcd_client::Client`].
pub use etcd_client;
