//! Per-device delivery window: decides what to push and when to read the queue. No I/O.
//!
//! Invariant: DELIVERs for stored envelopes leave in strictly increasing seq order, at most
//! `max_inflight` unacknowledged at a time. A live push is sent directly only when it is the
//! very next seq and nothing older may still be waiting in the queue; otherwise the session
//! reads the queue (which holds everything durable) from `cursor + 1`.

use std::collections::BTreeSet;

/// Delivery bookkeeping of one connected device.
#[derive(Debug)]
pub(crate) struct DeliveryState {
    /// Highest seq handed to the client.
    cursor: u64,
    /// Highest seq known to exist (durable or about to be).
    max_seen: u64,
    /// Whether the first read of the queue reached its end.
    caught_up: bool,
    inflight: BTreeSet<u64>,
    max_inflight: usize,
}

/// What to read from the queue next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Read {
    pub from_seq: u64,
    pub max: usize,
}

impl DeliveryState {
    pub(super) fn new(max_inflight: usize) -> DeliveryState {
        DeliveryState {
            cursor: 0,
            max_seen: 0,
            caught_up: false,
            inflight: BTreeSet::new(),
            max_inflight,
        }
    }

    fn room(&self) -> usize {
        self.max_inflight.saturating_sub(self.inflight.len())
    }

    /// Note that `seq` exists; returns true if the live copy should be sent right now.
    pub(super) fn on_live(&mut self, seq: u64) -> bool {
        self.max_seen = self.max_seen.max(seq);
        if self.caught_up && seq == self.cursor + 1 && self.room() > 0 {
            self.sent(seq);
            true
        } else {
            false
        }
    }

    /// Note that seq `seq` exists (it became durable, and this connection may not have seen it
    /// live).
    pub(super) fn saw(&mut self, seq: u64) {
        self.max_seen = self.max_seen.max(seq);
    }

    /// The queue read to do now, if any.
    pub(super) fn want_read(&self) -> Option<Read> {
        let room = self.room();
        if room == 0 || (self.caught_up && self.cursor >= self.max_seen) {
            return None;
        }
        Some(Read {
            from_seq: self.cursor + 1,
            max: room,
        })
    }

    /// Record a queue read that asked for `asked` entries and returned these seqs (ascending),
    /// of which `deliver(seq)` says whether it is still deliverable (not expired).
    /// Returns the seqs to send.
    pub(super) fn on_read(&mut self, asked: usize, seqs: &[(u64, bool)]) -> Vec<u64> {
        if seqs.len() < asked {
            self.caught_up = true;
        }
        let mut out = Vec::with_capacity(seqs.len());
        for &(seq, deliverable) in seqs {
            if seq <= self.cursor {
                continue;
            }
            self.max_seen = self.max_seen.max(seq);
            if deliverable {
                self.sent(seq);
                out.push(seq);
            } else {
                self.cursor = seq;
            }
        }
        out
    }

    fn sent(&mut self, seq: u64) {
        self.cursor = seq;
        self.inflight.insert(seq);
    }

    /// Whether the queue may hold entries this connection has not been sent yet.
    pub(super) fn behind(&self) -> bool {
        !self.caught_up || self.cursor < self.max_seen
    }

    /// Record acknowledgements; returns how many were in flight on this connection.
    pub(super) fn on_ack(&mut self, seqs: &[u64]) -> usize {
        seqs.iter().filter(|s| self.inflight.remove(s)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_read_drains_before_live_pushes() {
        let mut d = DeliveryState::new(4);
        // Live push before the initial drain: not sent directly.
        assert!(!d.on_live(3));
        assert_eq!(
            d.want_read(),
            Some(Read {
                from_seq: 1,
                max: 4
            })
        );
        let sent = d.on_read(4, &[(1, true), (2, false), (3, true)]);
        assert_eq!(sent, vec![1, 3]);
        // Caught up: the next live seq goes straight out.
        assert!(d.on_live(4));
        assert_eq!(d.want_read(), None);
    }

    #[test]
    fn window_bounds_inflight_and_acks_reopen_it() {
        let mut d = DeliveryState::new(2);
        assert_eq!(d.on_read(2, &[]), Vec::<u64>::new());
        assert!(d.on_live(1));
        assert!(d.on_live(2));
        assert!(!d.on_live(3), "window full");
        assert_eq!(d.want_read(), None);
        assert_eq!(d.on_ack(&[1, 99]), 1);
        assert_eq!(
            d.want_read(),
            Some(Read {
                from_seq: 3,
                max: 1
            })
        );
        assert_eq!(d.on_read(1, &[(3, true)]), vec![3]);
        assert_eq!(d.want_read(), None);
    }

    #[test]
    fn gap_in_live_pushes_forces_a_read_and_never_reorders() {
        let mut d = DeliveryState::new(8);
        d.on_read(8, &[]);
        assert!(!d.on_live(2), "seq 1 was not seen: must not skip it");
        assert_eq!(
            d.want_read(),
            Some(Read {
                from_seq: 1,
                max: 8
            })
        );
        // Nothing durable yet: read returns nothing, state waits.
        assert!(d.on_read(8, &[]).is_empty());
        assert!(d.want_read().is_some(), "still waiting for seq 1");
        assert_eq!(d.on_read(8, &[(1, true), (2, true)]), vec![1, 2]);
        assert!(!d.on_live(2), "already sent");
        assert_eq!(d.want_read(), None);
    }
}
