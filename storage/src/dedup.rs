//! Dedup without records of their own: the identities `(sender, msg_id)` of the sends whose
//! envelope is still queued, kept in memory and rebuilt at open from the values that carry
//! them (an inline entry's value, or a shared payload's), plus the records of sends stored
//! nowhere (every recipient blocked or removed), which have a key of their own in `dedup` and
//! expire after the dedup window.
//!
//! A send is a duplicate while an earlier send with its identity is queued for some device
//! (whenever it was accepted), or while the record of an earlier send stored nowhere is within
//! its window. Memory: 48 bytes per remembered send (identity 28 bytes padded to 32, record
//! and holder count 16) in a hash map (plus its control byte and spare room), whatever the
//! number of its recipients; 40 more per shared payload (its identity, for when it is deleted).

use std::collections::HashMap;

use crate::keys::DedupId;
use crate::types::DedupRecord;

/// What is remembered of a send whose envelope is queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    pub record: DedupRecord,
    /// Values carrying the identity: inline entries, or the one shared payload.
    pub holders: u32,
}

/// Every remembered identity, as committed (changed by the writer only, once a batch is
/// written).
#[derive(Debug, Default)]
pub(crate) struct Remembered {
    /// Sends whose envelope is queued.
    pub queued: HashMap<DedupId, Held>,
    /// Sends stored nowhere: their record and its expiry.
    pub standalone: HashMap<DedupId, (DedupRecord, u64)>,
}

impl Remembered {
    /// The record of `id`: a queued send's, else a stored-nowhere send's (with its expiry).
    pub(crate) fn get(&self, id: &DedupId) -> Option<(DedupRecord, Option<u64>)> {
        if let Some(h) = self.queued.get(id) {
            return Some((h.record, None));
        }
        self.standalone.get(id).map(|(r, e)| (*r, Some(*e)))
    }
}
