//! Who may reach whom: blocks, reachability modes and network opt-in, decided from the
//! recipient's settings (read through the [`View`]) before anything is stored.

use hearth_storage::{ListKind, Reach};

use super::view::View;

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

/// Decide whether `recipient` accepts envelopes from account `sender` speaking for `network`.
/// An account's own devices always reach each other.
pub(crate) fn admits(view: &dyn View, sender: u64, network: &str, recipient: u64) -> Admit {
    if recipient == sender {
        return Admit::Yes;
    }
    // Mode and network first, the block list last: a blocked sender only ever gets answers an
    // unblocked stranger could get too.
    if let Some(rec) = view.account(recipient) {
        let network_ok = network == rec.network || rec.networks.iter().any(|n| n == network);
        let mode_ok = match rec.reach {
            Reach::Everyone => true,
            Reach::Nobody => false,
            Reach::Contacts => view.listed(recipient, ListKind::Allow, sender),
        };
        if !network_ok || !mode_ok {
            return Admit::Unreachable;
        }
    }
    // No record: the account never registered here, so it has no device to deliver to.
    if view.listed(recipient, ListKind::Block, sender) {
        return Admit::Blocked;
    }
    Admit::Yes
}
