//! Abuse signals from metadata only: per account, in memory, expiring counters of new
//! recipients, blocks and reports received, and fan-out volume.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{Flagged, SafetyConfig, HOUR_MS, SHARDS};

/// Abuse thresholds and windows.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rules {
    /// The hour of the hourly signals: min(1 h, retention).
    pub(super) hour_ms: u64,
    pub(super) retention_ms: u64,
    pub(super) new_recipients: u32,
    pub(super) blocks: u32,
    pub(super) reports: u32,
    pub(super) fanout: u64,
}

impl From<&SafetyConfig> for Rules {
    fn from(c: &SafetyConfig) -> Rules {
        let retention_ms = c.retention_secs.saturating_mul(1000).max(1);
        Rules {
            hour_ms: HOUR_MS.min(retention_ms),
            retention_ms,
            new_recipients: c.new_recipients_per_hour,
            blocks: c.blocks_received_per_window,
            reports: c.reports_received_per_window,
            fanout: c.fanout_per_hour,
        }
    }
}

impl Rules {
    /// Most recipients remembered per sender.
    pub(super) fn contact_cap(&self) -> usize {
        (self.new_recipients as usize)
            .saturating_mul(2)
            .saturating_add(1)
    }

    pub(super) fn over(&self, c: &Counts) -> bool {
        (self.new_recipients > 0 && c.new_recipients > self.new_recipients)
            || (self.blocks > 0 && c.blocks > self.blocks)
            || (self.reports > 0 && c.reports > self.reports)
            || (self.fanout > 0 && c.fanout > self.fanout)
    }

    /// Why `c` is flagged, and its severity.
    pub(super) fn reasons(&self, c: &Counts) -> (Vec<String>, f64) {
        let hour = span(self.hour_ms);
        let window = span(self.retention_ms);
        let mut reasons = Vec::new();
        let mut severity = 0.0;
        let mut check = |n: u64, t: u64, what: String| {
            if t > 0 && n > t {
                reasons.push(format!("{what} (threshold {t})"));
                severity += n as f64 / t as f64;
            }
        };
        let nr = c.new_recipients;
        let at_least = if nr as usize >= self.contact_cap() {
            "at least "
        } else {
            ""
        };
        check(
            nr.into(),
            self.new_recipients.into(),
            format!("{at_least}{nr} distinct new recipients in the last {hour}"),
        );
        check(
            c.blocks.into(),
            self.blocks.into(),
            format!("blocked {} times in the last {window}", c.blocks),
        );
        check(
            c.reports.into(),
            self.reports.into(),
            format!("reported {} times in the last {window}", c.reports),
        );
        check(
            c.fanout,
            self.fanout,
            format!("{} deliveries in the last {hour}", c.fanout),
        );
        (reasons, severity)
    }
}

/// "24 h", "30 min", "90 s".
pub(super) fn span(ms: u64) -> String {
    if ms % HOUR_MS == 0 {
        format!("{} h", ms / HOUR_MS)
    } else if ms % 60_000 == 0 {
        format!("{} min", ms / 60_000)
    } else {
        format!("{} s", ms.div_ceil(1000))
    }
}

/// Signal values of one account at one time.
#[derive(Debug, Clone, Copy)]
pub(super) struct Counts {
    pub(super) new_recipients: u32,
    pub(super) blocks: u32,
    pub(super) reports: u32,
    pub(super) fanout: u64,
}

/// `first_ms` of a recipient contacted within the hour before its latest contact: not new.
pub(super) const KNOWN: u64 = u64::MAX;

/// A recipient a sender contacted recently.
#[derive(Debug, Clone, Copy)]
pub(super) struct Contact {
    /// Keyed 32-bit fingerprint of the recipient account (never the id itself).
    pub(super) fp: u32,
    /// When this run of contacts began ([`KNOWN`] once that is over an hour ago).
    pub(super) first_ms: u64,
    pub(super) last_ms: u64,
}

/// Buckets of the fan-out ring: the hour in twelfths.
pub(super) const RING: u64 = 12;

/// Deliveries in the last hour, in twelfths of the hour: a bucket counts while all of it lies
/// within the last hour, so nothing older than the hour is ever counted (the count may miss up
/// to one twelfth of the hour).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Ring {
    /// Number of the latest bucket (time / step).
    pub(super) latest: u64,
    /// Bucket `b` lives in slot `b % RING`, for `b` in `latest - RING + 1 ..= latest`.
    pub(super) counts: [u32; RING as usize],
}

impl Ring {
    pub(super) fn step(w: u64) -> u64 {
        (w / RING).max(1)
    }

    pub(super) fn add(&mut self, n: u64, now: u64, w: u64) {
        let b = now / Ring::step(w);
        if b > self.latest {
            if b - self.latest >= RING {
                self.counts = [0; RING as usize];
            } else {
                for old in self.latest + 1..=b {
                    self.counts[(old % RING) as usize] = 0;
                }
            }
            self.latest = b;
        } else if b + RING <= self.latest {
            return; // older than the ring (the caller's clock went back): nothing to count
        }
        let slot = &mut self.counts[(b % RING) as usize];
        *slot = slot.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
    }

    pub(super) fn total(&self, now: u64, w: u64) -> u64 {
        let b = now / Ring::step(w);
        let lo = b
            .saturating_sub(RING - 1)
            .max(self.latest.saturating_sub(RING - 1));
        let hi = b.min(self.latest);
        (lo..=hi)
            .map(|i| u64::from(self.counts[(i % RING) as usize]))
            .sum()
    }

    pub(super) fn is_zero(&self) -> bool {
        self.counts.iter().all(|&c| c == 0)
    }
}

/// Abuse counters of one account.
#[derive(Debug, Default)]
pub(super) struct Record {
    /// Recipients contacted within the hour, at most [`Rules::contact_cap`].
    pub(super) contacts: Vec<Contact>,
    pub(super) fanout: Ring,
    /// Times of blocks received within the retention window, at most threshold + 1.
    pub(super) blocks: VecDeque<u64>,
    /// Times of reports received within the retention window, at most threshold + 1.
    pub(super) reports: VecDeque<u64>,
    /// Start of the current flagged episode.
    pub(super) since_ms: Option<u64>,
    /// Latest event.
    pub(super) last_ms: u64,
}

impl Record {
    /// Drop what is older than its window, and end a flagged episode that is over.
    pub(super) fn prune(&mut self, now: u64, r: &Rules) {
        let hour = r.hour_ms;
        self.contacts
            .retain(|c| c.last_ms.saturating_add(hour) > now);
        for c in &mut self.contacts {
            if c.first_ms != KNOWN && c.first_ms.saturating_add(hour) <= now {
                c.first_ms = KNOWN;
            }
        }
        self.blocks
            .retain(|&t| t.saturating_add(r.retention_ms) > now);
        self.reports
            .retain(|&t| t.saturating_add(r.retention_ms) > now);
        if self.fanout.total(now, hour) == 0 {
            self.fanout = Ring::default();
        }
        if !r.over(&self.counts(now, r)) {
            self.since_ms = None;
        }
    }

    /// Signal values at `now` (read-only: applies the windows without pruning).
    pub(super) fn counts(&self, now: u64, r: &Rules) -> Counts {
        let within = |q: &VecDeque<u64>| {
            q.iter()
                .filter(|&&t| t.saturating_add(r.retention_ms) > now)
                .count() as u32
        };
        Counts {
            new_recipients: self
                .contacts
                .iter()
                .filter(|c| c.first_ms != KNOWN && c.first_ms.saturating_add(r.hour_ms) > now)
                .count() as u32,
            blocks: within(&self.blocks),
            reports: within(&self.reports),
            fanout: self.fanout.total(now, r.hour_ms),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.contacts.is_empty()
            && self.blocks.is_empty()
            && self.reports.is_empty()
            && self.fanout.is_zero()
    }

    /// Note a contact with the recipient of fingerprint `fp`.
    pub(super) fn contact(&mut self, fp: u32, now: u64, cap: usize) {
        if let Some(c) = self.contacts.iter_mut().find(|c| c.fp == fp) {
            c.last_ms = c.last_ms.max(now);
            return;
        }
        if self.contacts.len() >= cap {
            // Make room: a known recipient first (keeps the new count exact), least recent first.
            let victim = (self.contacts.iter().enumerate())
                .min_by_key(|(_, c)| (c.first_ms != KNOWN, c.last_ms))
                .map(|(i, _)| i);
            if let Some(i) = victim {
                self.contacts.swap_remove(i);
            }
        }
        self.contacts.push(Contact {
            fp,
            first_ms: now,
            last_ms: now,
        });
    }
}

/// Append an event time, keeping at most `threshold + 1` (enough to tell "past the threshold").
pub(super) fn push_capped(q: &mut VecDeque<u64>, now: u64, threshold: u32) {
    q.push_back(now);
    while q.len() > threshold as usize + 1 {
        q.pop_front();
    }
}

/// Abuse counters of every tracked account, sharded.
pub(super) struct Abuse {
    pub(super) rules: Rules,
    pub(super) shards: Box<[Mutex<HashMap<u64, Record>>]>,
    pub(super) hasher: RandomState,
    pub(super) shard_cap: usize,
}

impl Abuse {
    pub(super) fn new(rules: Rules, max_tracked: usize) -> Abuse {
        Abuse {
            rules,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            shard_cap: (max_tracked / SHARDS).max(1),
        }
    }

    pub(super) fn shard(&self, account: u64) -> MutexGuard<'_, HashMap<u64, Record>> {
        let i = (self.hasher.hash_one(account) % SHARDS as u64) as usize;
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn all(&self) -> impl Iterator<Item = MutexGuard<'_, HashMap<u64, Record>>> {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A keyed fingerprint of a recipient account (process-random key: not the id).
    pub(super) fn fingerprint(&self, account: u64) -> u32 {
        (self.hasher.hash_one((0xfee1_u16, account)) >> 32) as u32
    }

    /// Apply an event to `account`'s record at `now`, creating it (within the bound) if needed.
    pub(super) fn update(&self, account: u64, now: u64, event: impl FnOnce(&mut Record)) {
        let r = &self.rules;
        let mut map = self.shard(account);
        if !map.contains_key(&account) && map.len() >= self.shard_cap {
            map.retain(|_, rec| {
                rec.prune(now, r);
                !rec.is_empty()
            });
            if map.len() >= self.shard_cap {
                let victim = (map.iter())
                    .min_by_key(|(_, rec)| (rec.since_ms.is_some(), rec.last_ms))
                    .map(|(&k, _)| k);
                if let Some(k) = victim {
                    map.remove(&k);
                }
            }
        }
        let rec = map.entry(account).or_default();
        rec.prune(now, r);
        event(rec);
        rec.last_ms = rec.last_ms.max(now);
        if r.over(&rec.counts(now, r)) {
            rec.since_ms.get_or_insert(now);
        }
    }

    pub(super) fn is_flagged(&self, account: u64, now: u64) -> bool {
        let map = self.shard(account);
        map.get(&account)
            .is_some_and(|rec| self.rules.over(&rec.counts(now, &self.rules)))
    }

    pub(super) fn flagged(&self, now: u64) -> Vec<Flagged> {
        let r = &self.rules;
        let mut out = Vec::new();
        for map in self.all() {
            for (&account, rec) in map.iter() {
                let c = rec.counts(now, r);
                if !r.over(&c) {
                    continue;
                }
                let (reasons, severity) = r.reasons(&c);
                let flagged = Flagged {
                    account,
                    reasons,
                    new_recipients: c.new_recipients,
                    blocks: c.blocks,
                    reports: c.reports,
                    fanout: c.fanout,
                    since_ms: rec.since_ms.unwrap_or(now),
                };
                out.push((flagged, severity));
            }
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.account.cmp(&b.0.account)));
        out.into_iter().map(|(f, _)| f).collect()
    }

    pub(super) fn forget(&self, account: u64) {
        self.shard(account).remove(&account);
        let fp = self.fingerprint(account);
        for mut map in self.all() {
            for rec in map.values_mut() {
                rec.contacts.retain(|c| c.fp != fp);
            }
        }
    }

    pub(super) fn expire(&self, now: u64) {
        let r = &self.rules;
        for mut map in self.all() {
            map.retain(|_, rec| {
                rec.prune(now, r);
                !rec.is_empty()
            });
            if map.capacity() > 4 * map.len() + 64 {
                map.shrink_to_fit();
            }
        }
    }

    #[cfg(test)]
    pub(super) fn tracked(&self) -> usize {
        self.all().map(|m| m.len()).sum()
    }

    #[cfg(test)]
    pub(super) fn record<T>(&self, account: u64, f: impl FnOnce(Option<&Record>) -> T) -> T {
        f(self.shard(account).get(&account))
    }
}
