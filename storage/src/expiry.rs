//! Expiry without an index: what the store keeps per device so that the sweeper visits only
//! queues holding something that may have expired, and reads little more than the expired
//! entries of each.
//!
//! Per device (32 bytes, in its `DeviceState`): `bound`, a lower bound of the earliest expiry
//! of its queued entries; and, over its entries in seq order, `run_max`, the greatest expiry
//! put so far, and `slack`, the most an entry's expiry fell below the greatest expiry of the
//! entries before it (0 while expiries never decrease along the queue, as when every envelope
//! gets the same time to live). So for entries i before j: `expires(j) >= expires(i) - slack`,
//! and a scan in seq order that meets an entry expiring after `now + slack` has passed every
//! expired entry. Puts lower the bound; deletions leave it (a bound may only be low), except
//! that an empty queue forgets everything; a visit of the sweeper sets it again. Nothing is
//! kept per queued entry.

/// The expiry state of one device queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DevExpiry {
    /// No queued entry expires before it (`u64::MAX`: nothing queued, or nothing known).
    pub bound: u64,
    /// The greatest expiry of the entries put since the queue was last empty or scanned whole.
    pub run_max: u64,
    /// See the module documentation (`u64::MAX`: entries were put out of seq order).
    pub slack: u64,
    /// The greatest seq put since then.
    pub last_seq: u64,
}

impl Default for DevExpiry {
    fn default() -> Self {
        DevExpiry::EMPTY
    }
}

impl DevExpiry {
    /// An empty queue.
    pub(crate) const EMPTY: DevExpiry = DevExpiry {
        bound: u64::MAX,
        run_max: 0,
        slack: 0,
        last_seq: 0,
    };

    /// Accounts for an entry `seq` expiring at `expires` (entries are put in seq order; one out
    /// of order makes every later scan of the queue read it whole until it is empty again).
    pub(crate) fn put(&mut self, seq: u64, expires: u64) {
        if *self == DevExpiry::EMPTY {
            *self = DevExpiry {
                bound: expires,
                run_max: expires,
                slack: 0,
                last_seq: seq,
            };
            return;
        }
        if seq <= self.last_seq {
            self.slack = u64::MAX;
        } else if expires < self.run_max {
            self.slack = self.slack.max(self.run_max - expires);
        }
        self.last_seq = self.last_seq.max(seq);
        self.run_max = self.run_max.max(expires);
        self.bound = self.bound.min(expires);
    }

    /// Where a scan at `now` may stop: at an entry expiring after this.
    pub(crate) fn stop_after(&self, now: u64) -> u64 {
        now.saturating_add(self.slack)
    }
}

/// What the sweeper learns from one visit of a queue, read in seq order.
#[derive(Debug)]
pub(crate) struct Visit {
    /// The expiry state it started from.
    start: DevExpiry,
    /// Of the entries read that stay: the least expiry, and the state of a fresh put of each
    /// in order (exact when the whole queue was read).
    fresh: DevExpiry,
    /// The expiry of the entry it stopped at, if it stopped before the end.
    stopped_at: Option<u64>,
}

impl Visit {
    pub(crate) fn new(start: DevExpiry) -> Visit {
        Visit {
            start,
            fresh: DevExpiry::EMPTY,
            stopped_at: None,
        }
    }

    /// An entry that stays (it has not expired).
    pub(crate) fn stays(&mut self, seq: u64, expires: u64) {
        self.fresh.put(seq, expires);
    }

    /// The scan stopped at an entry expiring at `expires` (which `stays` saw).
    pub(crate) fn stopped(&mut self, expires: u64) {
        self.stopped_at = Some(expires);
    }

    /// The queue's expiry state after the visit (its expired entries deleted).
    pub(crate) fn result(&self) -> DevExpiry {
        match self.stopped_at {
            // Read whole: everything is known exactly.
            None => self.fresh,
            // Entries after the stop expire at `expires - slack` or later.
            Some(expires) => DevExpiry {
                bound: self
                    .fresh
                    .bound
                    .min(expires.saturating_sub(self.start.slack)),
                ..self.start
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_ttl_queues_have_no_slack() {
        let mut e = DevExpiry::EMPTY;
        for (seq, exp) in [(1, 100), (2, 100), (3, 150), (5, 200)] {
            e.put(seq, exp);
        }
        assert_eq!(
            e,
            DevExpiry {
                bound: 100,
                run_max: 200,
                slack: 0,
                last_seq: 5
            }
        );
        assert_eq!(e.stop_after(120), 120);
    }

    #[test]
    fn earlier_expiries_later_in_the_queue_widen_the_slack() {
        let mut e = DevExpiry::EMPTY;
        e.put(1, 1_000);
        e.put(2, 900);
        e.put(3, 950);
        assert_eq!((e.bound, e.run_max, e.slack), (900, 1_000, 100));
        // Out of seq order: no early stop until the queue is read whole.
        e.put(3, 2_000);
        assert_eq!(e.slack, u64::MAX);
        assert_eq!(e.stop_after(5), u64::MAX);
    }

    #[test]
    fn visits() {
        let start = DevExpiry {
            bound: 10,
            run_max: 500,
            slack: 20,
            last_seq: 9,
        };
        // Read whole: exact.
        let mut v = Visit::new(start);
        v.stays(7, 300);
        v.stays(9, 280);
        assert_eq!(
            v.result(),
            DevExpiry {
                bound: 280,
                run_max: 300,
                slack: 20,
                last_seq: 9
            }
        );
        // Stopped at an entry expiring at 400: what follows expires at 380 or later.
        let mut v = Visit::new(start);
        v.stays(7, 390);
        v.stays(8, 400);
        v.stopped(400);
        assert_eq!(
            v.result(),
            DevExpiry {
                bound: 380,
                ..start
            }
        );
        // Nothing stays.
        assert_eq!(Visit::new(start).result(), DevExpiry::EMPTY);
    }
}
