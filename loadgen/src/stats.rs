//! Shared counters of a run: lock-free bitmaps of accepted and delivered sequence numbers,
//! event counters, refusals by error code.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};

use hdrhistogram::Histogram;

const SEG_WORDS: usize = 1 << 14; // 2^20 bits = 128 KiB per segment
const SEG_BITS: u64 = (SEG_WORDS as u64) * 64;
const MAX_SEGS: usize = 1 << 12; // 2^32 sequence numbers

/// A growable bitmap that many tasks set bits in without locks; segments are allocated on
/// first use.
pub(crate) struct AtomicBitmap {
    segs: Box<[OnceLock<Box<[AtomicU64]>>]>,
}

impl AtomicBitmap {
    pub(crate) fn new() -> AtomicBitmap {
        AtomicBitmap {
            segs: (0..MAX_SEGS).map(|_| OnceLock::new()).collect(),
        }
    }

    fn word(&self, bit: u64) -> Option<(&AtomicU64, u64)> {
        let seg = usize::try_from(bit / SEG_BITS)
            .ok()
            .filter(|&s| s < MAX_SEGS)?;
        let words =
            self.segs[seg].get_or_init(|| (0..SEG_WORDS).map(|_| AtomicU64::new(0)).collect());
        let w = ((bit % SEG_BITS) / 64) as usize;
        Some((&words[w], 1u64 << (bit % 64)))
    }

    /// Sets `bit`; true if it was clear before. Bits beyond 2^32 are ignored (false).
    pub(crate) fn set(&self, bit: u64) -> bool {
        match self.word(bit) {
            Some((w, mask)) => w.fetch_or(mask, Relaxed) & mask == 0,
            None => false,
        }
    }

    fn load(&self, seg: usize, w: usize) -> u64 {
        self.segs[seg].get().map_or(0, |s| s[w].load(Relaxed))
    }

    /// How many bits below `upto` are set here and clear in `other`.
    pub(crate) fn count_and_not(&self, other: &AtomicBitmap, upto: u64) -> u64 {
        let words = upto.div_ceil(64);
        let mut n = 0;
        for i in 0..words {
            let (seg, w) = (
                (i / SEG_WORDS as u64) as usize,
                (i % SEG_WORDS as u64) as usize,
            );
            if seg >= MAX_SEGS {
                break;
            }
            let mut v = self.load(seg, w) & !other.load(seg, w);
            let tail = upto & 63;
            if i == words - 1 && tail != 0 {
                v &= (1u64 << tail) - 1;
            }
            n += u64::from(v.count_ones());
        }
        n
    }
}

/// Counters shared by schedulers, devices and the sampler. "measured" = the send's intended
/// time falls in the steady window; "in_window" = the event itself happened in it.
#[derive(Default)]
pub(crate) struct Counters {
    pub issued_measured: AtomicU64,
    pub answered: AtomicU64,
    pub accepted: AtomicU64,
    pub accepted_measured: AtomicU64,
    pub accepted_in_window: AtomicU64,
    /// First copies the accepted stored sends should produce (1:1, probe, group queues).
    pub expected: AtomicU64,
    /// Of those, received.
    pub owed_delivered: AtomicU64,
    /// First copies received (every kind, ephemeral included).
    pub delivered: AtomicU64,
    pub delivered_measured: AtomicU64,
    pub delivered_in_window: AtomicU64,
    pub group_delivered: AtomicU64,
    pub group_delivered_in_window: AtomicU64,
    pub group_accepted_measured: AtomicU64,
    /// First copies to devices that were offline at the intended send time.
    pub offline_delivered: AtomicU64,
    pub duplicated: AtomicU64,
    /// Of those, copies to a device that had not reconnected (not at-least-once redelivery).
    pub unexpected_duplicates: AtomicU64,
    pub reordered: AtomicU64,
    pub late_sends: AtomicU64,
    pub stale: AtomicU64,
    /// Refused or failed requests (all kinds), for the timeline.
    pub errors: AtomicU64,
    /// Ephemeral sends the node pushed to nobody (the recipient was away).
    pub ephemeral_unpushed: AtomicU64,
    pub reconnects: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Sends by kind (1:1, group, ephemeral) with intended time in the measured window.
    pub issued_by_kind: [AtomicU64; 3],
}

impl Counters {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    pub(crate) fn get(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }
}

/// Refused or failed sends, by error name (`OVERLOADED`, `connection_closed`, ...).
#[derive(Default)]
pub(crate) struct ErrorCounts(Mutex<BTreeMap<String, u64>>);

impl ErrorCounts {
    pub(crate) fn add(&self, name: &str) {
        let mut m = self.0.lock().expect("error counts lock");
        *m.entry(name.to_string()).or_default() += 1;
    }

    pub(crate) fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().expect("error counts lock").clone()
    }
}

/// A latency histogram in microseconds: 1 µs to 60 s, 3 significant digits.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

const REC_SHARDS: usize = 8;

struct Pair {
    interval: Histogram<u64>,
    total: Histogram<u64>,
}

/// A latency recorder many tasks write to: sharded histograms, each with the current
/// interval's values (taken by the sampler every interval) and the run's counted values.
pub(crate) struct Recorder {
    shards: Vec<Mutex<Pair>>,
}

impl Recorder {
    pub(crate) fn new() -> Recorder {
        Recorder {
            shards: (0..REC_SHARDS)
                .map(|_| {
                    Mutex::new(Pair {
                        interval: latency_histogram(),
                        total: latency_histogram(),
                    })
                })
                .collect(),
        }
    }

    /// Records `us` (µs) in the interval, and in the total if `counted`. `hint` spreads
    /// writers over the shards (e.g. the device index).
    pub(crate) fn record(&self, hint: usize, us: u64, counted: bool) {
        let mut p = self.shards[hint % REC_SHARDS]
            .lock()
            .expect("recorder lock");
        let us = us.max(1);
        p.interval.saturating_record(us);
        if counted {
            p.total.saturating_record(us);
        }
    }

    /// The values recorded since the last call (all shards), resetting them.
    pub(crate) fn take_interval(&self) -> Histogram<u64> {
        let mut h = latency_histogram();
        for s in &self.shards {
            let mut p = s.lock().expect("recorder lock");
            h.add(&p.interval).expect("same bounds");
            p.interval.reset();
        }
        h
    }

    /// Every counted value so far.
    pub(crate) fn total(&self) -> Histogram<u64> {
        let mut h = latency_histogram();
        for s in &self.shards {
            h.add(&s.lock().expect("recorder lock").total)
                .expect("same bounds");
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_sets_once_and_counts_differences() {
        let a = AtomicBitmap::new();
        let b = AtomicBitmap::new();
        assert!(a.set(3));
        assert!(!a.set(3));
        for bit in [0, 63, 64, SEG_BITS - 1, SEG_BITS, 5 * SEG_BITS + 7] {
            assert!(a.set(bit));
        }
        assert!(b.set(63));
        assert!(b.set(SEG_BITS));
        assert!(b.set(9)); // set only in b: not counted
        assert_eq!(a.count_and_not(&b, 5 * SEG_BITS + 8), 5);
        assert_eq!(a.count_and_not(&b, 5 * SEG_BITS + 7), 4);
        assert_eq!(a.count_and_not(&b, 4), 2);
        assert_eq!(a.count_and_not(&b, 0), 0);
        assert!(!a.set(u64::MAX));
    }

    #[test]
    fn recorder_separates_intervals_and_counted_totals() {
        let r = Recorder::new();
        r.record(0, 100, true);
        r.record(3, 0, false); // clamped to 1 µs
        r.record(5, 200, true);
        r.record(5, 300, false);
        let i = r.take_interval();
        assert_eq!(i.len(), 4);
        assert_eq!(i.min(), 1);
        assert_eq!(r.take_interval().len(), 0);
        let t = r.total();
        assert_eq!(t.len(), 2);
        assert_eq!(t.max(), t.highest_equivalent(200));
    }
}
