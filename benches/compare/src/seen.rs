//! Per-receiver bookkeeping of what arrived: duplicates and reordering, per sender.

/// Which sequence numbers of each sender one receiver has seen.
pub(crate) struct Seen {
    per_sender: Vec<SenderSeen>,
}

#[derive(Default)]
struct SenderSeen {
    bits: Vec<u64>,
    last: u64,
}

/// How a message compares with what came before from the same sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// First time, in order.
    New,
    /// First time, but after a later sequence number of the same sender.
    Reordered,
    /// Seen before.
    Duplicate,
}

impl Seen {
    /// Bookkeeping for messages from `senders` senders.
    pub(crate) fn new(senders: usize) -> Seen {
        Seen {
            per_sender: (0..senders).map(|_| SenderSeen::default()).collect(),
        }
    }

    /// Records `seq` (from 1) of `sender` (which must be below the sender count).
    pub(crate) fn record(&mut self, sender: usize, seq: u64) -> Arrival {
        let s = &mut self.per_sender[sender];
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if s.bits.len() <= word {
            s.bits.resize((word + 1).next_power_of_two(), 0);
        }
        if s.bits[word] & (1 << bit) != 0 {
            return Arrival::Duplicate;
        }
        s.bits[word] |= 1 << bit;
        if seq < s.last {
            return Arrival::Reordered;
        }
        s.last = seq;
        Arrival::New
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_reordering_are_told_apart() {
        let mut s = Seen::new(2);
        assert_eq!(s.record(0, 1), Arrival::New);
        assert_eq!(s.record(0, 3), Arrival::New);
        assert_eq!(s.record(0, 2), Arrival::Reordered);
        assert_eq!(s.record(0, 3), Arrival::Duplicate);
        assert_eq!(s.record(1, 3), Arrival::New);
        assert_eq!(s.record(1, 100_000), Arrival::New);
        assert_eq!(s.record(1, 100_000), Arrival::Duplicate);
    }
}
