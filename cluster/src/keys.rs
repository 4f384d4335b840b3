//! The key layout in etcd, all under the cluster's prefix (default `/hearth/<name>/`):
//!
//! | key | value | written by |
//! | --- | --- | --- |
//! | `map` | the cluster map (JSON); its mod_revision is the epoch | the controller, by guarded txn |
//! | `members/<id>` | a [`crate::Member`] (JSON), under the node's lease | the node |
//! | `controller/<lease>` | election key (etcd election API) | the campaigning nodes |
//! | `progress/<slot>` | a [`crate::MoveProgress`] (JSON) | the move's target node |
//! | `leaders/<shard>` | reserved for replication: the Raft leader and term, under its lease | a shard's leader |

use crate::model::NodeId;

/// Keys of one cluster.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: String) -> Keys {
        Keys { prefix }
    }

    /// Everything of the cluster (what the map watcher follows).
    pub(crate) fn root(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn map(&self) -> String {
        format!("{}map", self.prefix)
    }

    pub(crate) fn members(&self) -> String {
        format!("{}members/", self.prefix)
    }

    pub(crate) fn member(&self, id: NodeId) -> String {
        format!("{}members/{id:010}", self.prefix)
    }

    pub(crate) fn election(&self) -> String {
        format!("{}controller", self.prefix)
    }

    pub(crate) fn progress_dir(&self) -> String {
        format!("{}progress/", self.prefix)
    }

    pub(crate) fn progress(&self, slot: u16) -> String {
        format!("{}progress/{slot:05}", self.prefix)
    }
}
