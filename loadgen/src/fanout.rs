//! Fan-out completeness: every member device (but the sender) must receive every accepted group
//! message exactly once after dedup. One bit per (group message, member) records the first copy;
//! further copies are duplicates; a copy to a non-member or of an unknown message is
//! unexpected.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::report::Latency;
use crate::stats::latency_histogram;

const SHARDS: usize = 64;
const PENDING: u32 = u32::MAX;

/// One group message being tracked.
struct Track {
    group: u32,
    /// Position of the sender among the members, if it is one (its bit is never expected).
    sender_pos: Option<usize>,
    bits: Box<[AtomicU64]>,
    /// Device queues the node reported in `ACCEPTED`; `PENDING` before the answer.
    accepted: AtomicU32,
    /// Intended send time, and the time of the latest first copy (ns since the run's start).
    intended_ns: u64,
    last_ns: AtomicU64,
}

/// What a delivery was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The first copy for this (message, device).
    First,
    /// Another copy.
    Duplicate,
    /// The device is not a recipient, or the message is unknown.
    Unexpected,
}

/// Totals of the fan-out check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanoutResult {
    /// Accepted group messages checked.
    pub messages: u64,
    /// Of those, received by every member device.
    pub complete: u64,
    /// Of those, missing at least one member device.
    pub incomplete: u64,
    /// (message, device) pairs expected.
    pub expected: u64,
    /// (message, device) pairs received (first copies).
    pub received: u64,
    /// (message, device) pairs missing.
    pub missing: u64,
    /// Extra copies of a pair already received.
    pub duplicates: u64,
    /// Copies to a device that is not a recipient, or of an unknown message.
    pub unexpected: u64,
    /// Accepted messages whose `ACCEPTED.recipients` differs from the member devices expected.
    pub recipient_mismatch: u64,
    /// Fan-out completion of the complete messages: intended send time to the last member
    /// device's first copy, µs. (Merged across agents by taking the larger of each figure.)
    pub completion_us: Latency,
}

impl FanoutResult {
    /// Adds another checker's totals (distributed mode).
    pub fn merge(&mut self, o: &FanoutResult) {
        self.messages += o.messages;
        self.complete += o.complete;
        self.incomplete += o.incomplete;
        self.expected += o.expected;
        self.received += o.received;
        self.missing += o.missing;
        self.duplicates += o.duplicates;
        self.unexpected += o.unexpected;
        self.recipient_mismatch += o.recipient_mismatch;
        let (a, b) = (&mut self.completion_us, &o.completion_us);
        a.count += b.count;
        a.p50 = a.p50.max(b.p50);
        a.p90 = a.p90.max(b.p90);
        a.p99 = a.p99.max(b.p99);
        a.p999 = a.p999.max(b.p999);
        a.max = a.max.max(b.max);
    }
}

/// Tracks every group message of a run, keyed by its global sequence number.
pub(crate) struct FanoutChecker {
    /// Members (device indices, sorted) of each group.
    groups: Vec<Arc<[u32]>>,
    shards: Vec<Mutex<HashMap<u64, Arc<Track>>>>,
    duplicates: AtomicU64,
    unexpected: AtomicU64,
}

impl FanoutChecker {
    pub(crate) fn new(groups: Vec<Arc<[u32]>>) -> FanoutChecker {
        FanoutChecker {
            groups,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            duplicates: AtomicU64::new(0),
            unexpected: AtomicU64::new(0),
        }
    }

    fn shard(&self, seq: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Track>>> {
        self.shards[(seq % SHARDS as u64) as usize]
            .lock()
            .expect("fanout shard lock")
    }

    fn get(&self, seq: u64) -> Option<Arc<Track>> {
        self.shard(seq).get(&seq).cloned()
    }

    /// Group message `seq` to `group` from device `sender`, intended at `intended_ns`, is about
    /// to be sent (call before the send, so that deliveries racing the `ACCEPTED` find it).
    pub(crate) fn sent(&self, seq: u64, group: u32, sender: u32, intended_ns: u64) {
        let members = &self.groups[group as usize];
        let track = Track {
            group,
            sender_pos: members.binary_search(&sender).ok(),
            bits: (0..members.len().div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            accepted: AtomicU32::new(PENDING),
            intended_ns,
            last_ns: AtomicU64::new(0),
        };
        self.shard(seq).insert(seq, Arc::new(track));
    }

    /// The node accepted it for `recipients` device queues.
    pub(crate) fn accepted(&self, seq: u64, recipients: u32) {
        if let Some(t) = self.get(seq) {
            t.accepted.store(recipients.min(PENDING - 1), Relaxed);
        }
    }

    /// The node refused it: nothing is expected.
    pub(crate) fn refused(&self, seq: u64) {
        self.shard(seq).remove(&seq);
    }

    /// Device `device` received a copy of `seq` at `now_ns`.
    pub(crate) fn delivered(&self, seq: u64, device: u32, now_ns: u64) -> Outcome {
        let Some(t) = self.get(seq) else {
            self.unexpected.fetch_add(1, Relaxed);
            return Outcome::Unexpected;
        };
        let pos = match self.groups[t.group as usize].binary_search(&device) {
            Ok(p) if Some(p) != t.sender_pos => p,
            _ => {
                self.unexpected.fetch_add(1, Relaxed);
                return Outcome::Unexpected;
            }
        };
        let mask = 1u64 << (pos % 64);
        if t.bits[pos / 64].fetch_or(mask, Relaxed) & mask == 0 {
            t.last_ns.fetch_max(now_ns, Relaxed);
            Outcome::First
        } else {
            self.duplicates.fetch_add(1, Relaxed);
            Outcome::Duplicate
        }
    }

    /// Totals over the accepted messages (unanswered ones are left out).
    pub(crate) fn result(&self) -> FanoutResult {
        let mut r = FanoutResult {
            duplicates: self.duplicates.load(Relaxed),
            unexpected: self.unexpected.load(Relaxed),
            ..FanoutResult::default()
        };
        let mut completion = latency_histogram();
        for shard in &self.shards {
            let shard = shard.lock().expect("fanout shard lock");
            for t in shard.values() {
                let acc = t.accepted.load(Relaxed);
                if acc == PENDING {
                    continue;
                }
                let members = self.groups[t.group as usize].len() as u64;
                let expected = members - u64::from(t.sender_pos.is_some());
                let received: u64 = t
                    .bits
                    .iter()
                    .map(|w| u64::from(w.load(Relaxed).count_ones()))
                    .sum();
                r.messages += 1;
                r.expected += expected;
                r.received += received;
                r.missing += expected - received;
                if received == expected {
                    r.complete += 1;
                    let last = t.last_ns.load(Relaxed);
                    if expected > 0 {
                        let us = last.saturating_sub(t.intended_ns) / 1000;
                        completion.saturating_record(us.max(1));
                    }
                } else {
                    r.incomplete += 1;
                }
                if u64::from(acc) != expected {
                    r.recipient_mismatch += 1;
                }
            }
        }
        r.completion_us = Latency::from_histogram(&completion);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker() -> FanoutChecker {
        let g0: Arc<[u32]> = vec![1, 4, 7].into();
        let g1: Arc<[u32]> = (0..100).collect::<Vec<u32>>().into();
        FanoutChecker::new(vec![g0, g1])
    }

    #[test]
    fn complete_fan_out_passes() {
        let c = checker();
        c.sent(10, 0, 4, 1_000_000);
        assert_eq!(c.delivered(10, 1, 2_000_000), Outcome::First); // may precede ACCEPTED
        c.accepted(10, 2);
        assert_eq!(c.delivered(10, 7, 5_000_000), Outcome::First);
        let r = c.result();
        assert_eq!(
            (r.messages, r.complete, r.expected, r.received),
            (1, 1, 2, 2)
        );
        assert_eq!(
            (r.missing, r.duplicates, r.unexpected, r.recipient_mismatch),
            (0, 0, 0, 0)
        );
        // Complete 4 ms after the intended time (the last member's copy).
        assert_eq!(r.completion_us.count, 1);
        assert!(
            (4000..=4004).contains(&r.completion_us.max),
            "{:?}",
            r.completion_us
        );
    }

    #[test]
    fn a_missing_delivery_is_caught() {
        let c = checker();
        c.sent(1, 1, 0, 0);
        c.accepted(1, 99);
        for d in 1..100 {
            if d != 63 {
                assert_eq!(c.delivered(1, d, 10), Outcome::First);
            }
        }
        let r = c.result();
        assert_eq!((r.messages, r.incomplete, r.missing), (1, 1, 1));
        assert_eq!(r.received, 98);
        assert_eq!(c.result().missing, 1);
        assert_eq!(c.delivered(1, 63, 10), Outcome::First);
        assert_eq!(c.result().missing, 0);
    }

    #[test]
    fn duplicates_strangers_and_mismatches_are_counted() {
        let c = checker();
        c.sent(5, 0, 1, 0);
        c.accepted(5, 3); // the node claims 3 queues; 2 are expected
        assert_eq!(c.delivered(5, 4, 1), Outcome::First);
        assert_eq!(c.delivered(5, 4, 1), Outcome::Duplicate);
        assert_eq!(c.delivered(5, 1, 1), Outcome::Unexpected); // the sender itself
        assert_eq!(c.delivered(5, 2, 1), Outcome::Unexpected); // not a member
        assert_eq!(c.delivered(6, 4, 1), Outcome::Unexpected); // unknown message
        let r = c.result();
        assert_eq!(
            (r.duplicates, r.unexpected, r.recipient_mismatch),
            (1, 3, 1)
        );
        assert_eq!((r.missing, r.incomplete), (1, 1));
    }

    #[test]
    fn unanswered_and_refused_messages_expect_nothing() {
        let c = checker();
        c.sent(1, 0, 1, 0);
        c.sent(2, 0, 1, 0);
        c.refused(2);
        assert_eq!(c.result(), FanoutResult::default());
        assert_eq!(c.delivered(2, 4, 1), Outcome::Unexpected);
    }
}
