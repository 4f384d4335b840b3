//! Who may reach whom: blocks, reachability modes and network opt-in, decided from the
//! recipient's settings before anything is stored.

use std::sync::Arc;

use hearth_storage::{DeviceKey, ListKind, Reach, Store};

/// The authenticated sender of a request: its device and the network its token names.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub key: DeviceKey,
    pub network: Arc<str>,
}

/// The recipient's verdict on a sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Deliver.
    Yes,
    /// The recipient blocked the sender: store nothing, and do not tell the sender.
    Blocked,
    /// The recipient's reachability or network settings refuse the sender.
    Unreachable,
}

/// Decide whether `recipient` accepts envelopes from `origin`. An account's own devices always
/// reach each other.
pub(crate) fn admits(store: &Store, origin: &Origin, recipient: u64) -> Admit {
    let sender = origin.key.account;
    if recipient == sender {
        return Admit::Yes;
    }
    // Mode and network first, the block list last: a blocked sender only ever gets answers an
    // unblocked stranger could get too.
    if let Some(rec) = store.account_arc(recipient) {
        let network_ok =
            *origin.network == *rec.network || rec.networks.iter().any(|n| **n == *origin.network);
        let mode_ok = match rec.reach {
            Reach::Everyone => true,
            Reach::Nobody => false,
            Reach::Contacts => store.list_contains(recipient, ListKind::Allow, sender),
        };
        if !network_ok || !mode_ok {
            return Admit::Unreachable;
        }
    }
    // No record: the account never registered here, so it has no device to deliver to.
    if store.list_contains(recipient, ListKind::Block, sender) {
        return Admit::Blocked;
    }
    Admit::Yes
}
