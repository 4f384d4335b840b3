//! The crate's error type.

use crate::model::Revision;
use crate::placement::PlanError;

/// What went wrong talking to etcd or changing the map.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// etcd could not be reached or answered with an error.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// This controller is no longer the elected one: its write was refused.
    #[error("deposed: this controller's election key is gone or was replaced")]
    Deposed,
    /// The map changed since the epoch the write was based on.
    #[error("stale epoch {expected}: the map is at {current}")]
    StaleEpoch {
        /// The epoch the write was based on.
        expected: Revision,
        /// The map's epoch now (0: no map).
        current: Revision,
    },
    /// The change was refused by placement (residency, unknown shard, ...).
    #[error("{0}")]
    Plan(#[from] PlanError),
    /// A value in etcd could not be decoded.
    #[error("bad value at {key}: {reason}")]
    BadValue {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// There is no cluster map yet.
    #[error("the cluster map does not exist yet")]
    NoMap,
    /// A bad configuration.
    #[error("config: {0}")]
    Config(String),
}
