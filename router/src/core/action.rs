//! What the core asks its driver to do: actions for the node as a whole (`Action`, from
//! `Router::poll_action`) and, per connection, what it has for that connection
//! (`ConnOutput`, from `Router::poll_conn`), which the connection's own task performs.

use std::borrow::Cow;

use bytes::Bytes;
use hearth_protocol::{ErrorCode, Frame, MessageId};
use std::sync::Arc;

use hearth_storage::{
    DeviceKey, GroupError, GroupOp, GroupPage, GroupState, ListKind, Reach, StorageError, WriteSet,
};

use super::forward::{Forwarded, Returned};
use super::slots::NodeId;

/// A connection, as the core knows it (never reused while the core lives).
pub(crate) type ConnId = u64;

/// A write handed to the store; its result comes back with `Router::handle_committed`.
pub(crate) type JobId = u64;

/// Wakes a connection's task: the core has output for it (`Router::poll_conn`).
pub(crate) trait Wake: Send + Sync {
    /// Called by the core at most once until the next `poll_conn`.
    fn wake(&self);
}

/// Work for the node as a whole.
#[derive(Debug)]
pub(crate) enum Action {
    /// Write this group of changes (one write batch, one fsync), then call
    /// `handle_committed(job, ..)`. At most one is outstanding: the next group collects
    /// meanwhile (group commit).
    Enqueue { job: JobId, write: WriteSet },
    /// A content-free push wake-up for an offline device.
    Wake { token: Bytes, urgent: bool },
    /// Load a group's members into memory, then call `handle_group_loaded`.
    LoadGroup { group: u64 },
    /// Send these routed values to the node that owns their slots (cluster); its answers come
    /// back with `handle_returned`.
    Forward { node: NodeId, batch: Vec<Forwarded> },
    /// Send these answers back to the node the forwarded sends came from.
    Return { node: NodeId, batch: Vec<Returned> },
}

/// Device registration to perform at HELLO, then `handle_registered`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Registration {
    /// The device.
    pub key: DeviceKey,
    /// Its network (app), recorded on its account's first registration.
    pub network: String,
    /// Its residency zone, likewise.
    pub zone: String,
}

/// A queue read to perform, then `handle_queue_read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueRead {
    /// Whose queue.
    pub device: DeviceKey,
    /// The first seq wanted.
    pub from_seq: u64,
    /// At most this many entries.
    pub max: usize,
}

/// A change (or read) the store decides or performs, then `handle_request_done`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// `GROUP_CREATE`.
    GroupCreate {
        group: u64,
        creator: u64,
        members: Vec<u64>,
        max_size: u32,
    },
    /// `GROUP_UPDATE`.
    GroupUpdate {
        group: u64,
        actor: u64,
        op: GroupOp,
        max_size: u32,
    },
    /// `GROUP_GET`: the group's members (for the membership check) and one page.
    GroupGet {
        group: u64,
        actor: u64,
        offset: u32,
        limit: u32,
    },
    /// `POLICY_SET` reachability.
    SetReach { account: u64, reach: Reach },
    /// `POLICY_SET` allow or block list; `newly_blocked` are the accounts a block adds.
    UpdateList {
        account: u64,
        kind: ListKind,
        add: bool,
        accounts: Vec<u64>,
        newly_blocked: Vec<u64>,
    },
    /// `POLICY_SET` networks.
    SetNetworks { account: u64, names: Vec<String> },
    /// `POLICY_SET` delivery access key (its SHA-256; None clears it).
    SetAccessKey {
        account: u64,
        hash: Option<[u8; 32]>,
    },
    /// `POLICY_SET` push token of one device (None clears it).
    SetPushToken {
        device: DeviceKey,
        token: Option<Bytes>,
    },
}

/// What a [`Request`] came to, for `handle_request_done`.
#[derive(Debug)]
pub(crate) enum RequestOutcome {
    /// A group change: the group as it now is, or why not.
    Group(Result<GroupState, GroupError>),
    /// A group read: the members and the page asked for (None: no such group).
    Page(Result<Option<GroupRead>, StorageError>),
    /// A settings change.
    Done(Result<(), StorageError>),
}

/// A group's members and one page of them with their roles.
pub(crate) type GroupRead = (Arc<Vec<u64>>, GroupPage);

/// What the core has for one connection, in the order to perform it.
#[derive(Debug, Default)]
pub(crate) struct ConnOutput {
    /// Frames to write, in order.
    pub frames: Vec<Frame>,
    /// A registration to perform (after HELLO).
    pub register: Option<Registration>,
    /// A queue read to perform.
    pub read: Option<QueueRead>,
    /// Store requests to perform, with the id their answer carries.
    pub requests: Vec<(MessageId, Request)>,
    /// Stop reading input: the connection is closing (its taken sends are still answered).
    pub closing: bool,
    /// Close the connection now, with this code (after writing `frames`).
    pub close: Option<(ErrorCode, Cow<'static, str>)>,
    /// Whether the core takes more input from this connection now (it has room for more
    /// unanswered sends); when false, stop reading until the next output.
    pub accepting: bool,
}
