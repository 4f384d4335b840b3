//! `Routed`: a send that passed the sender's checks at ingress, on its way to the owner of its
//! target's slot. This is exactly what travels between nodes: plain owned data.

use std::sync::Arc;

use bytes::Bytes;
use hearth_protocol::{MessageId, MultiRecipient};
use hearth_storage::{DeviceKey, StoredEnvelope};

use super::action::ConnId;
use super::slots::NodeId;

/// Who sent a request, and where its answer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    /// The node the sender is connected to.
    pub node: NodeId,
    /// Its connection there.
    pub conn: ConnId,
    /// The authenticated sending device.
    pub device: DeviceKey,
    /// The network (app) its token names.
    pub network: Arc<str>,
}

/// What a send is addressed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// `SEND`: one device of an account, or all of them (`device` 0).
    Account { account: u64, device: u32 },
    /// `SEND_SEALED`: like `Account`, authorised by the recipient's delivery access key; the
    /// envelope carries no sender.
    Sealed {
        account: u64,
        device: u32,
        access_key: Bytes,
    },
    /// `SEND_GROUP`, at the owner of the group's slot: members are not resolved yet.
    Group { group: u64 },
    /// A group message resolved by the group's owner: the members whose slots one owner holds.
    Members { group: u64, accounts: Vec<u64> },
    /// `SEND_MULTI`: the recipients whose slots one owner holds, each with its header.
    Multi { recipients: Vec<MultiRecipient> },
}

/// A send on its way to its owner stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Routed {
    /// The sender and where the answer goes.
    pub origin: Origin,
    /// The slot map epoch it was routed under (an owner refuses a stale one in a cluster).
    pub epoch: u64,
    /// The envelope to deliver (sender fields already zero for a sealed send).
    pub env: StoredEnvelope,
    /// What it is addressed to.
    pub target: Target,
}

impl Routed {
    /// The message id the answer carries.
    pub(crate) fn msg_id(&self) -> MessageId {
        self.env.msg_id
    }

    /// The account or group whose slot's owner handles this value.
    pub(crate) fn slot_key(&self) -> u64 {
        match &self.target {
            Target::Account { account, .. } | Target::Sealed { account, .. } => *account,
            Target::Group { group } => *group,
            Target::Members { accounts, .. } => accounts.first().copied().unwrap_or(0),
            Target::Multi { recipients } => recipients.first().map_or(0, |r| r.account),
        }
    }
}
