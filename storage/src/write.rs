//! A group of changes the routing core hands to the store in one piece: envelopes whose
//! per-device seqs the core already chose, and acknowledged entries to delete. The writer
//! turns one `WriteSet` (with whatever else is waiting) into one write batch and one fsync.

use bytes::Bytes;

use crate::types::{DedupRecord, DeviceKey, StoredEnvelope};

/// Changes written together by [`crate::Store::write`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteSet {
    /// Envelopes to store, in order.
    pub sends: Vec<SendWrite>,
    /// Acknowledged entries to delete (applied after `sends`); unknown seqs are ignored.
    pub acks: Vec<(DeviceKey, Vec<u64>)>,
    /// Seqs handed out by sends that are not written (every device acknowledged them first):
    /// the store must never give them again, after a restart either.
    pub seen: Vec<(DeviceKey, u64)>,
}

impl WriteSet {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty() && self.acks.is_empty() && self.seen.is_empty()
    }
}

/// One envelope for one or more device queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendWrite {
    /// The envelope.
    pub env: StoredEnvelope,
    /// `None`: each entry holds the envelope inline. `Some(group)`: the payload is stored once
    /// and each entry holds a pointer to it with its header (`group` is 0 for `SEND_MULTI`).
    pub shared: Option<u64>,
    /// The entries, each with the seq its device's queue gives it.
    pub entries: Vec<EntryWrite>,
    /// Remember `(sender, msg_id)` for retries, with this many recipients.
    pub dedup: Option<(DeviceKey, u32)>,
}

/// One queue entry of a [`SendWrite`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryWrite {
    /// The device whose queue holds it.
    pub device: DeviceKey,
    /// Its seq there (greater than every seq that queue gave before).
    pub seq: u64,
    /// The recipient's opaque header (shared entries only; empty otherwise).
    pub header: Bytes,
}

/// What became of one [`SendWrite`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// Written; `skipped` entries were for devices no longer registered.
    Written {
        /// Entries not written because their device was removed meanwhile.
        skipped: u32,
    },
    /// A dedup record of `(sender, msg_id)` was already committed: nothing was written.
    Duplicate(DedupRecord),
}

/// What a [`WriteSet`] came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// One outcome per send, in order.
    pub sends: Vec<SendOutcome>,
    /// Acknowledged entries that existed and were deleted.
    pub acked: u64,
}
