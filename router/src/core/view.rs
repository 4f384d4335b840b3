//! What the core reads of the node's data: a small trait over in-memory state. `Store`
//! implements it; the simulation harness has an in-memory model. Nothing here touches a disk:
//! a group that is not in memory is reported as such, and the core asks the driver to load it.

use std::sync::Arc;

use bytes::Bytes;
use hearth_storage::{AccountRecord, DeviceKey, ListKind, QueueState};

/// A lookup that may need the driver's help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Loaded<T> {
    /// The value, from memory.
    Ready(T),
    /// Not in memory: ask the driver to load it (`Action::LoadGroup`).
    NotLoaded,
}

/// Reads the routing core makes, all from memory.
pub(crate) trait View: Send + Sync {
    /// The registered devices of `account`, sorted.
    fn devices(&self, account: u64) -> Vec<u32>;

    /// The registered devices of many accounts, appended to `out` in the order of `accounts`
    /// (an account without devices adds nothing).
    fn devices_of_many(&self, accounts: &[u64], out: &mut Vec<DeviceKey>) {
        for &account in accounts {
            out.extend(
                self.devices(account)
                    .into_iter()
                    .map(|d| DeviceKey::new(account, d)),
            );
        }
    }

    /// The queue of a registered device as the store counts it (what it holds and what it was
    /// handed); None: not registered, or being removed.
    fn queue(&self, key: DeviceKey) -> Option<QueueState>;

    /// The account's record (None: it never registered a device here).
    fn account(&self, account: u64) -> Option<Arc<AccountRecord>>;

    /// Whether `account`'s list of `kind` names `other`.
    fn listed(&self, account: u64, kind: ListKind, other: u64) -> bool;

    /// The device's push token, if it registered one.
    fn push_token(&self, key: DeviceKey) -> Option<Bytes>;

    /// The members of `group`, sorted (`Ready(None)`: no such group).
    fn group_members(&self, group: u64) -> Loaded<Option<Arc<Vec<u64>>>>;
}
