//! Error types.

use crate::types::DeviceKey;

/// A storage failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// RocksDB reported an error.
    #[error("rocksdb: {0}")]
    Db(String),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The writer thread has stopped (the store is closing or a write panicked).
    #[error("the store is closed")]
    Closed,
    /// The account has no record (see [`crate::Store::ensure_account`]).
    #[error("no such account")]
    NoSuchAccount,
    /// An earlier write failed, so the store refuses every change until it is reopened
    /// (memory and disk may disagree; reopening recovers from disk).
    #[error("the store is poisoned by an earlier failed write; restart the node")]
    Poisoned,
    /// The request is outside what the store accepts (a name or push token too long).
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl From<rocksdb::Error> for StorageError {
    fn from(e: rocksdb::Error) -> Self {
        StorageError::Db(e.into_string())
    }
}

/// Why [`crate::Store::enqueue`] refused an envelope; nothing was stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    /// The queue of `device` is at its length or bytes limit.
    #[error("queue of device {}/{} is full", device.account, device.device)]
    QueueFull {
        /// The first recipient whose queue is full.
        device: DeviceKey,
    },
    /// `device` is not registered (or is being removed).
    #[error("device {}/{} is not registered", device.account, device.device)]
    UnknownDevice {
        /// The first unknown recipient.
        device: DeviceKey,
    },
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Why a group operation was refused or failed; nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The group does not exist.
    #[error("no such group")]
    NoSuchGroup,
    /// The group exists and was created by another account.
    #[error("the group exists")]
    Exists,
    /// The acting account is not a member of the group.
    #[error("not a member of the group")]
    NotMember,
    /// The operation needs an admin.
    #[error("not an admin of the group")]
    NotAdmin,
    /// The group would have more members than allowed.
    #[error("the group would be too large")]
    TooLarge,
    /// The request is malformed or not allowed (group 0, admin not a member, demoting or
    /// removing the creator).
    #[error("invalid group request: {0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}
