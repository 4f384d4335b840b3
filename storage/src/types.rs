//! Public data types of the store.

use bytes::Bytes;
use hearth_protocol::{slot_of, MessageId};

/// How hard a commit tries to reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Every group commit is fsync'd before its jobs resolve (the default).
    Sync,
    /// Written to the WAL without fsync. A crash of the machine (not only of the process) can
    /// lose acknowledged envelopes: for benchmarks only.
    None,
}

/// Options of [`crate::Store::open`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Whether commits are fsync'd.
    pub durability: Durability,
    /// Maximum number of envelopes queued for one device.
    pub max_queue_len: u64,
    /// Maximum payload bytes queued for one device.
    pub max_queue_bytes: u64,
    /// How long the dedup record of a send stored nowhere (no queue entry written: every
    /// recipient blocked or removed) is kept after acceptance, in milliseconds. A send stored
    /// somewhere is remembered while any of its envelopes is queued, however long.
    pub dedup_window_ms: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::Sync,
            max_queue_len: 100_000,
            max_queue_bytes: 256 * 1024 * 1024,
            dedup_window_ms: 60 * 60 * 1000,
        }
    }
}

/// One device of one account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceKey {
    /// Account id.
    pub account: u64,
    /// Device id within the account.
    pub device: u32,
}

impl DeviceKey {
    /// The key of `device` of `account`.
    pub const fn new(account: u64, device: u32) -> DeviceKey {
        DeviceKey { account, device }
    }

    /// The slot the device's data lives in (the slot of its account).
    pub fn slot(&self) -> u16 {
        slot_of(self.account)
    }
}

/// An envelope as stored in a device queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEnvelope {
    /// The sender's message id.
    pub msg_id: MessageId,
    /// Sending account.
    pub from_account: u64,
    /// Sending device.
    pub from_device: u32,
    /// Acceptance time, milliseconds since the Unix epoch.
    pub accepted_at_ms: u64,
    /// Expiry time, milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    /// Frame flags.
    pub flags: u8,
    /// Opaque ciphertext.
    pub payload: Bytes,
}

/// One entry of a device queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueEntry {
    /// Per-device sequence number (acceptance order).
    pub seq: u64,
    /// The stored envelope (for a shared entry, the shared payload: its `Bytes` are shared).
    pub envelope: StoredEnvelope,
    /// The group of a shared entry stored by [`crate::Store::enqueue_shared`] (0 for
    /// `SEND_MULTI` and for inline entries).
    pub group: u64,
    /// The recipient's opaque header of a shared entry (empty for inline entries).
    pub header: Bytes,
}

/// One recipient of [`crate::Store::enqueue_shared`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedRecipient {
    /// The recipient device.
    pub device: DeviceKey,
    /// An opaque per-recipient header stored in its pointer entry (may be empty).
    pub header: Bytes,
}

/// The role of a group member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A member (may read the group and leave it).
    Member,
    /// An admin: a member who may change the group.
    Admin,
}

impl Role {
    /// The wire value: 1 member, 2 admin.
    pub fn to_u8(self) -> u8 {
        match self {
            Role::Member => 1,
            Role::Admin => 2,
        }
    }

    /// The role of a wire value.
    pub fn from_u8(v: u8) -> Option<Role> {
        match v {
            1 => Some(Role::Member),
            2 => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A change to a group, for [`crate::Store::update_group`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupOp {
    /// Adds accounts as members (present ones are left as they are).
    AddMembers(Vec<u64>),
    /// Removes members (absent ones are ignored); a non-admin may remove itself only.
    RemoveMembers(Vec<u64>),
    /// Makes members admins (every account must be a member).
    AddAdmins(Vec<u64>),
    /// Makes admins plain members (never the creator).
    RemoveAdmins(Vec<u64>),
    /// Deletes the group and its membership.
    Delete,
}

/// A group's state and a page of its members with their roles (see
/// [`crate::Store::group_info`]).
pub type GroupPage = (GroupState, Vec<(u64, Role)>);

/// A group's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupState {
    /// Group id.
    pub group: u64,
    /// The account that created it (always an admin).
    pub creator: u64,
    /// Bumped by every change that changed something (1 at creation).
    pub version: u64,
    /// Number of members (0 once deleted).
    pub members: u32,
}

/// The queue of one registered device as the store counts it: committed entries plus those
/// submitted and not yet written (see [`crate::Store::queue_state`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueState {
    /// The smallest seq greater than every seq submitted for it (seqs are never reused).
    pub next_seq: u64,
    /// Entries in its queue.
    pub queued: u64,
    /// Payload bytes in its queue (a shared entry counts its payload plus its header).
    pub bytes: u64,
}

/// What a dedup record remembers of an accepted `SEND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupRecord {
    /// Acceptance time of the first `SEND`.
    pub accepted_at_ms: u64,
    /// Number of device queues it was stored in.
    pub recipients: u32,
}

/// Counters of one registered device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceStats {
    /// The device.
    pub key: DeviceKey,
    /// Its slot.
    pub slot: u16,
    /// Envelopes in its queue (including submitted, not yet committed ones).
    pub queued: u64,
    /// Payload bytes in its queue (a shared entry counts its payload plus its header).
    pub bytes: u64,
    /// The sequence number the next envelope will get.
    pub next_seq: u64,
    /// When it was registered, milliseconds since the Unix epoch.
    pub registered_at_ms: u64,
}

/// Store-wide counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Registered devices.
    pub devices: u64,
    /// Envelopes queued over all devices.
    pub queued: u64,
    /// Payload bytes queued over all devices (a shared entry counts its payload and header
    /// for each device it is queued for).
    pub queued_bytes: u64,
    /// Group commits written since open.
    pub commits: u64,
    /// Median duration of a group write (including its fsync when synced), recent commits.
    pub fsync_p50_us: u64,
    /// 99th percentile of the same.
    pub fsync_p99_us: u64,
    /// Longest group write since open.
    pub fsync_max_us: u64,
    /// Payload bytes submitted by `enqueue` and not yet committed.
    pub pending_bytes: u64,
    /// Shared payloads stored (committed) by `enqueue_shared` and still referenced.
    pub payloads: u64,
    /// RocksDB operations (the records of the write batches: puts, deletes, single deletes)
    /// written by group commits since open.
    pub batch_ops: u64,
}

/// What one [`crate::Store::sweep_expired`] call removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Queue entries deleted because they expired, by device then seq.
    pub expired: Vec<(DeviceKey, u64)>,
    /// Dedup records of sends stored nowhere deleted because their window ended (those of
    /// sends stored somewhere go with their last envelope).
    pub dedup_removed: u64,
    /// Everything deleted (`expired` and `dedup_removed`); equal to `max` when more may remain.
    pub scanned: u64,
}
