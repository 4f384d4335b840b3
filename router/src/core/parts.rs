//! Big fan-outs in bounded writes. A send with more entries than one write may hold is cut
//! into parts, written one per write after another, each together with whatever was collected
//! before its turn, so that no commit waits behind one huge batch. Per-device order holds: a
//! later send to a device that still has a part waiting queues behind that part (as a part of
//! its own), and the write that takes a part also takes everything collected before it.
//!
//! Only the last part of a send answers it and carries its dedup identity: `ACCEPTED` comes
//! once every part is durable. (A resend whose `ACCEPTED` was lost stores its earlier parts
//! again: at-least-once delivery, which PROTOCOL.md §6.4 tells receivers to handle.)

use std::collections::{HashMap, HashSet, VecDeque};

use hearth_storage::{DeviceKey, SendWrite};

use super::owner::Waiting;

/// Most queue entries one write takes from a big fan-out.
pub(super) const MAX_ENTRIES_PER_WRITE: usize = 8192;

/// One part of a send: its entries to write, and what its commit answers.
#[derive(Debug)]
pub(super) struct Part {
    pub write: SendWrite,
    pub waiting: Waiting,
}

/// A part taken for a write: its entries acknowledged while it waited are gone from it.
#[derive(Debug)]
pub(super) struct Taken {
    pub part: Part,
    /// Entries and bytes per device it writes (counted against queue limits until committed).
    pub counts: HashMap<DeviceKey, (u64, u64)>,
    /// Seqs it handed out that are not written (acknowledged first).
    pub unwritten: Vec<(DeviceKey, u64)>,
}

/// The parts waiting for their write, oldest first.
#[derive(Debug, Default)]
pub(super) struct Parts {
    queue: VecDeque<Part>,
    /// Entries and bytes per device in waiting parts.
    counts: HashMap<DeviceKey, (u64, u64)>,
    /// Entries of waiting parts not acknowledged, with their bytes.
    pending: HashMap<(DeviceKey, u64), u64>,
    /// Entries of waiting parts acknowledged before their write.
    acked: HashSet<(DeviceKey, u64)>,
}

impl Parts {
    /// Whether no part waits.
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether a waiting part has an entry for `key` (a send to it must queue behind).
    pub(super) fn holds(&self, key: &DeviceKey) -> bool {
        self.counts.contains_key(key)
    }

    /// Entries and bytes waiting parts hold for `key`.
    pub(super) fn count(&self, key: &DeviceKey) -> (u64, u64) {
        self.counts.get(key).copied().unwrap_or((0, 0))
    }

    /// Queue `part` behind the others.
    pub(super) fn push(&mut self, part: Part) {
        let payload = part.write.env.payload.len() as u64;
        for e in &part.write.entries {
            let bytes = payload + e.header.len() as u64;
            let c = self.counts.entry(e.device).or_default();
            c.0 += 1;
            c.1 += bytes;
            self.pending.insert((e.device, e.seq), bytes);
        }
        self.queue.push_back(part);
    }

    /// `(key, seq)` was acknowledged: true if it belongs to a waiting part (which will not
    /// write it).
    pub(super) fn ack(&mut self, key: DeviceKey, seq: u64) -> bool {
        let Some(bytes) = self.pending.remove(&(key, seq)) else {
            return false;
        };
        self.acked.insert((key, seq));
        self.uncount(key, bytes);
        true
    }

    /// The oldest part that still has something to write (parts left with nothing to write
    /// and nothing to answer are dropped).
    pub(super) fn take(&mut self) -> Option<Taken> {
        while let Some(mut part) = self.queue.pop_front() {
            let payload = part.write.env.payload.len() as u64;
            let mut counts: HashMap<DeviceKey, (u64, u64)> = HashMap::new();
            let mut unwritten = Vec::new();
            let acked = &mut self.acked;
            let pending = &mut self.pending;
            let mut uncount = Vec::new();
            part.write.entries.retain(|e| {
                let k = (e.device, e.seq);
                if acked.remove(&k) {
                    unwritten.push(k);
                    return false;
                }
                let bytes = pending.remove(&k).unwrap_or(payload);
                uncount.push((e.device, bytes));
                let c = counts.entry(e.device).or_default();
                c.0 += 1;
                c.1 += bytes;
                true
            });
            for (key, bytes) in uncount {
                self.uncount(key, bytes);
            }
            if !unwritten.is_empty() {
                let gone: HashSet<(DeviceKey, u64)> = unwritten.iter().copied().collect();
                part.waiting.entries.retain(|k| !gone.contains(k));
            }
            if part.write.entries.is_empty() && part.write.dedup.is_none() {
                continue;
            }
            return Some(Taken {
                part,
                counts,
                unwritten,
            });
        }
        None
    }

    /// Every waiting part, emptied out (the store can no longer write them).
    pub(super) fn drain(&mut self) -> Vec<Part> {
        self.counts.clear();
        self.pending.clear();
        self.acked.clear();
        self.queue.drain(..).collect()
    }

    fn uncount(&mut self, key: DeviceKey, bytes: u64) {
        if let Some(c) = self.counts.get_mut(&key) {
            c.0 -= 1;
            c.1 -= bytes;
            if c.0 == 0 {
                self.counts.remove(&key);
            }
        }
    }
}
