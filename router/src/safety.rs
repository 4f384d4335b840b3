//! Rate limits and abuse signals (issue 5). This module decides only: no I/O, and no logging at
//! all (account ids must never reach a log line at any level, so nothing here logs).
//!
//! ## Rate limits
//! Token buckets (GCRA, the `governor` crate), one keyed limiter per kind of limit: per sending
//! device, per (sender account, recipient account) pair, per recipient account's incoming bytes,
//! per source address for new connections (IPv6 by /64, IPv4-mapped IPv6 as IPv4), group fan-out
//! per sender, sealed sends per recipient, and the lower rate of throttled (flagged) accounts.
//! Every refusal carries the wait until the bucket would admit the request. A rate of 0 turns
//! that limit off. The limiters read a [`SafetyClock`] (monotonic); the `now_ms` arguments (wall
//! clock) drive only the abuse counters, so a wall-clock step never frees or freezes a bucket.
//!
//! A request of `n` units larger than the burst is charged as the whole burst (it passes when the
//! bucket is full), so the bursts should be at least the largest envelope / group fan-out.
//! `check_send` checks the sender's own limit first, then the pairs, then the recipients' bytes:
//! a send refused by an earlier limit spends nothing of a later one (in particular, a sender held
//! back by its own limits cannot spend a recipient's byte budget).
//!
//! ## Abuse signals (metadata only)
//! Per account, in memory, expiring: distinct *new* recipients in the last hour (a recipient is
//! new when the sender has not contacted it within the hour before), blocks and `REPORT`s
//! received in the retention window, and fan-out volume in the last hour. Past any threshold the
//! account is flagged (and its sends use the throttled rate) until the counts fall back.
//! "The hour" is `min(1 h, retention)`.
//!
//! Memory bounds: recipients are kept as 32-bit keyed fingerprints (not account ids), at most
//! `2 * new_recipients_per_hour + 1` per sender, each dropped an hour after its last contact;
//! block and report times at most `threshold + 1` per account; fan-out is a ring of twelve counters
//! (the last hour in twelfths). An account's record is dropped by
//! [`Safety::expire`] once nothing in it is recent, so records exist only for accounts active in
//! the last hour or blocked/reported within the retention window; at most [`MAX_TRACKED_ACCOUNTS`]
//! records are kept (the least recently active unflagged one makes room), about 200 bytes each
//! plus 24 bytes per remembered recipient. The limiters keep one small state per key in use;
//! `expire` drops the states of keys whose bucket is full again.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};

/// Most accounts with abuse counters held at once (see the module docs for the memory bound).
pub(crate) const MAX_TRACKED_ACCOUNTS: usize = 1 << 20;

/// Shards of the abuse counters (each a mutex-protected map).
const SHARDS: usize = 64;

/// Length of "the hour" of the hourly signals, before capping at the retention window.
const HOUR_MS: u64 = 3_600_000;

/// Rate limits and abuse thresholds (`[safety]` in the node configuration). A rate of 0 turns
/// that limit off, a burst of 0 means "equal to the rate", and a threshold of 0 turns that abuse
/// signal off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SafetyConfig {
    /// Sends per second one device may make, sustained.
    pub per_device_per_sec: u32,
    /// Sends one device may make at once after a pause.
    pub per_device_burst: u32,
    /// Sends per second from one account to one other account, sustained.
    pub per_pair_per_sec: u32,
    /// Sends from one account to one other account at once after a pause.
    pub per_pair_burst: u32,
    /// Payload bytes per second one account may receive (from direct and multi sends), sustained.
    pub recipient_bytes_per_sec: u32,
    /// Payload bytes one account may receive at once; keep it >= `limits.max_envelope_bytes`.
    pub recipient_bytes_burst: u32,
    /// New connections per second from one source address (IPv6: one /64), sustained.
    pub new_connections_per_ip_per_sec: u32,
    /// New connections at once from one source address (allow for carrier-grade NAT).
    pub new_connections_per_ip_burst: u32,
    /// Group deliveries (recipient devices) per second one account may cause, sustained.
    pub group_fanout_per_sender_per_sec: u32,
    /// Group deliveries one account may cause at once; a bigger group send is charged as the
    /// whole burst.
    pub group_fanout_burst: u32,
    /// Sealed-sender envelopes per second one account may receive, sustained.
    pub sealed_per_recipient_per_sec: u32,
    /// Sealed-sender envelopes one account may receive at once.
    pub sealed_per_recipient_burst: u32,
    /// Metadata retention window in seconds: abuse counters older than this are dropped, and
    /// blocks / reports are counted over this window.
    pub retention_secs: u64,
    /// Flag a sender contacting more distinct new recipients than this within an hour.
    pub new_recipients_per_hour: u32,
    /// Flag an account blocked more often than this within the retention window.
    pub blocks_received_per_window: u32,
    /// Flag an account reported more often than this within the retention window.
    pub reports_received_per_window: u32,
    /// Flag a sender causing more deliveries than this within an hour (direct recipients plus
    /// group fan-out).
    pub fanout_per_hour: u64,
    /// Sends per second (burst the same) of all devices together of a flagged account, instead
    /// of the per-device limit; 0 leaves flagged accounts on the per-device limit.
    pub throttled_per_sec: u32,
}

impl Default for SafetyConfig {
    fn default() -> SafetyConfig {
        SafetyConfig {
            per_device_per_sec: 100,
            per_device_burst: 1_000,
            per_pair_per_sec: 20,
            per_pair_burst: 200,
            recipient_bytes_per_sec: 512 * 1024,
            recipient_bytes_burst: 8 * 1024 * 1024,
            new_connections_per_ip_per_sec: 50,
            new_connections_per_ip_burst: 500,
            group_fanout_per_sender_per_sec: 5_000,
            group_fanout_burst: 100_000,
            sealed_per_recipient_per_sec: 20,
            sealed_per_recipient_burst: 200,
            retention_secs: 86_400,
            new_recipients_per_hour: 50,
            blocks_received_per_window: 10,
            reports_received_per_window: 5,
            fanout_per_hour: 100_000,
            throttled_per_sec: 1,
        }
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Limit {
    /// Sends of one device.
    Device,
    /// Sends from one account to one other account.
    Pair,
    /// Bytes one account receives.
    RecipientBytes,
    /// New connections from one source address.
    NewConnection,
    /// Group deliveries one account causes.
    GroupFanout,
    /// Sealed-sender envelopes one account receives.
    SealedRecipient,
    /// Sends of a flagged account.
    Throttled,
}

impl Limit {
    /// Every limit, in declaration order (the order of [`Safety::refusals`]).
    pub const ALL: [Limit; 7] = [
        Limit::Device,
        Limit::Pair,
        Limit::RecipientBytes,
        Limit::NewConnection,
        Limit::GroupFanout,
        Limit::SealedRecipient,
        Limit::Throttled,
    ];

    /// A stable snake_case name, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Device => "device",
            Limit::Pair => "pair",
            Limit::RecipientBytes => "recipient_bytes",
            Limit::NewConnection => "new_connection",
            Limit::GroupFanout => "group_fanout",
            Limit::SealedRecipient => "sealed_recipient",
            Limit::Throttled => "throttled",
        }
    }
}

/// A request a rate limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The limit that refused it.
    pub limit: Limit,
    /// Milliseconds (at least 1) until the same request would pass, other traffic aside.
    pub retry_after_ms: u32,
}

/// An account past at least one abuse threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Flagged {
    /// The account.
    pub account: u64,
    /// One line per threshold crossed.
    pub reasons: Vec<String>,
    /// Distinct new recipients in the last hour (capped at `2 * threshold + 1`).
    pub new_recipients: u32,
    /// Blocks received in the retention window (capped at `threshold + 1`).
    pub blocks: u32,
    /// Reports received in the retention window (capped at `threshold + 1`).
    pub reports: u32,
    /// Deliveries caused in the last hour (counted in twelfths of the hour).
    pub fanout: u64,
    /// When the account crossed a threshold (ms since the epoch; flagged since then).
    pub since_ms: u64,
}

/// The time the rate limiters read: a monotonic clock (tests drive a manual one).
#[derive(Debug, Clone)]
pub(crate) struct SafetyClock(ClockSource);

#[derive(Debug, Clone)]
enum ClockSource {
    /// Time since this instant.
    Monotonic(Instant),
    /// Milliseconds set by the test.
    #[cfg(test)]
    Manual(Arc<AtomicU64>),
}

impl SafetyClock {
    /// The production clock.
    fn monotonic() -> SafetyClock {
        SafetyClock(ClockSource::Monotonic(Instant::now()))
    }

    /// A clock at 0 that moves only by [`SafetyClock::advance_ms`]; clones share the time.
    #[cfg(test)]
    pub(crate) fn manual() -> SafetyClock {
        SafetyClock(ClockSource::Manual(Arc::new(AtomicU64::new(0))))
    }

    /// Move a manual clock forward.
    #[cfg(test)]
    pub(crate) fn advance_ms(&self, ms: u64) {
        match &self.0 {
            ClockSource::Manual(now) => {
                now.fetch_add(ms, Relaxed);
            }
            ClockSource::Monotonic(_) => panic!("advance_ms on the monotonic clock"),
        }
    }
}

impl Clock for SafetyClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        match &self.0 {
            ClockSource::Monotonic(origin) => {
                Nanos::new(u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
            }
            #[cfg(test)]
            ClockSource::Manual(ms) => Nanos::new(ms.load(Relaxed) * 1_000_000),
        }
    }
}

/// Rate limiters and abuse counters of one node. `Send + Sync`; every method takes `&self`.
pub(crate) struct Safety {
    cfg: SafetyConfig,
    device: Bucket<(u64, u32)>,
    pair: Bucket<(u64, u64)>,
    recipient_bytes: Bucket<u64>,
    connection: Bucket<IpAddr>,
    group_fanout: Bucket<u64>,
    sealed: Bucket<u64>,
    throttled: Bucket<u64>,
    refused: [AtomicU64; Limit::ALL.len()],
    abuse: Abuse,
}

impl Safety {
    /// Limiters and counters for `cfg`, on the monotonic clock.
    pub fn new(cfg: SafetyConfig) -> Safety {
        Safety::build(cfg, SafetyClock::monotonic(), MAX_TRACKED_ACCOUNTS)
    }

    /// Limiters on `clock` (tests drive a manual one).
    #[cfg(test)]
    pub(crate) fn with_clock(cfg: SafetyConfig, clock: SafetyClock) -> Safety {
        Safety::build(cfg, clock, MAX_TRACKED_ACCOUNTS)
    }

    fn build(cfg: SafetyConfig, clock: SafetyClock, max_tracked: usize) -> Safety {
        let c = &cfg;
        let k = &clock;
        Safety {
            device: Bucket::new(Limit::Device, c.per_device_per_sec, c.per_device_burst, k),
            pair: Bucket::new(Limit::Pair, c.per_pair_per_sec, c.per_pair_burst, k),
            recipient_bytes: Bucket::new(
                Limit::RecipientBytes,
                c.recipient_bytes_per_sec,
                c.recipient_bytes_burst,
                k,
            ),
            connection: Bucket::new(
                Limit::NewConnection,
                c.new_connections_per_ip_per_sec,
                c.new_connections_per_ip_burst,
                k,
            ),
            group_fanout: Bucket::new(
                Limit::GroupFanout,
                c.group_fanout_per_sender_per_sec,
                c.group_fanout_burst,
                k,
            ),
            sealed: Bucket::new(
                Limit::SealedRecipient,
                c.sealed_per_recipient_per_sec,
                c.sealed_per_recipient_burst,
                k,
            ),
            throttled: Bucket::new(
                Limit::Throttled,
                c.throttled_per_sec,
                c.throttled_per_sec,
                k,
            ),
            refused: Default::default(),
            abuse: Abuse::new(Rules::from(c), max_tracked),
            cfg,
        }
    }

    /// A new connection from `ip` (before the handshake work).
    pub fn check_connection(&self, ip: IpAddr) -> Result<(), Refusal> {
        self.count(self.connection.check(&source_key(ip), 1))
    }

    /// One call per accepted-for-checking send: per-device (or the lower throttled rate if the
    /// sender account is flagged), per-pair for each recipient account, recipient bytes.
    ///
    /// `sender` is (account, device). Duplicate recipients count once; the sender's own account
    /// (a send to its other devices) is subject only to the per-device limit. `recipients` may be
    /// empty (a group send: only the sender's limit applies). `now_ms` (wall clock) is used
    /// only to tell whether the sender is flagged.
    pub fn check_send(
        &self,
        sender: (u64, u32),
        recipients: &[u64],
        bytes: u64,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        let throttle = self.cfg.throttled_per_sec > 0 && self.abuse.is_flagged(sender.0, now_ms);
        if throttle {
            self.count(self.throttled.check(&sender.0, 1))?;
        } else {
            self.count(self.device.check(&sender, 1))?;
        }
        let recipients = distinct(recipients);
        let others = || recipients.iter().copied().filter(|&r| r != sender.0);
        for r in others() {
            self.count(self.pair.check(&(sender.0, r), 1))?;
        }
        if bytes > 0 {
            for r in others() {
                self.count(self.recipient_bytes.check(&r, bytes))?;
            }
        }
        Ok(())
    }

    /// A group send from `sender` that would make `deliveries` deliveries (0 always passes).
    pub fn check_group_fanout(&self, sender: u64, deliveries: u64) -> Result<(), Refusal> {
        if deliveries == 0 {
            return Ok(());
        }
        self.count(self.group_fanout.check(&sender, deliveries))
    }

    /// A sealed-sender envelope for `recipient`.
    pub fn check_sealed(&self, recipient: u64) -> Result<(), Refusal> {
        self.count(self.sealed.check(&recipient, 1))
    }

    /// Abuse signals: `sender` sent to `recipients` (accounts) at `now_ms`. Counts distinct new
    /// recipients (not the sender's own account; duplicates once) and one delivery of fan-out
    /// volume per distinct other recipient.
    pub fn note_sent(&self, sender: u64, recipients: &[u64], now_ms: u64) {
        let rules = self.abuse.rules;
        if rules.new_recipients == 0 && rules.fanout == 0 {
            return;
        }
        let recipients = distinct(recipients);
        let n = recipients.iter().filter(|&&r| r != sender).count() as u64;
        if n == 0 {
            return;
        }
        let cap = rules.contact_cap();
        self.abuse.update(sender, now_ms, |rec| {
            if rules.new_recipients > 0 {
                for &r in recipients.iter().filter(|&&r| r != sender) {
                    rec.contact(self.abuse.fingerprint(r), now_ms, cap);
                }
            }
            if rules.fanout > 0 {
                rec.fanout.add(n, now_ms, rules.hour_ms);
            }
        });
    }

    /// Abuse signals: `sender` caused `deliveries` group deliveries at `now_ms` (fan-out volume
    /// only; group members are not counted as new recipients).
    pub fn note_fanout(&self, sender: u64, deliveries: u64, now_ms: u64) {
        let rules = self.abuse.rules;
        if rules.fanout == 0 || deliveries == 0 {
            return;
        }
        self.abuse.update(sender, now_ms, |rec| {
            rec.fanout.add(deliveries, now_ms, rules.hour_ms)
        });
    }

    /// Abuse signals: an account put `blocked` on its block list at `now_ms` (call once per new
    /// block-list entry).
    pub fn note_block(&self, blocked: u64, now_ms: u64) {
        let limit = self.abuse.rules.blocks;
        if limit > 0 {
            self.abuse.update(blocked, now_ms, |rec| {
                push_capped(&mut rec.blocks, now_ms, limit)
            });
        }
    }

    /// Abuse signals: a `REPORT` named `reported` at `now_ms`.
    pub fn note_report(&self, reported: u64, now_ms: u64) {
        let limit = self.abuse.rules.reports;
        if limit > 0 {
            self.abuse.update(reported, now_ms, |rec| {
                push_capped(&mut rec.reports, now_ms, limit)
            });
        }
    }

    /// Accounts past a threshold at `now_ms`, most severe first (severity: the sum over crossed
    /// thresholds of count / threshold; ties by account).
    pub fn flagged(&self, now_ms: u64) -> Vec<Flagged> {
        self.abuse.flagged(now_ms)
    }

    /// Purge: drop everything held about `account`: its abuse counters, its fingerprint in other
    /// senders' recent recipients, and the limiter states keyed by it (device, pair either way,
    /// bytes, fan-out, sealed, throttled).
    pub fn forget(&self, account: u64) {
        self.abuse.forget(account);
        self.device.forget(|k| k.0 == account);
        self.pair.forget(|k| k.0 == account || k.1 == account);
        for bucket in [
            &self.recipient_bytes,
            &self.group_fanout,
            &self.sealed,
            &self.throttled,
        ] {
            bucket.forget(|k| *k == account);
        }
    }

    /// Housekeeping, call periodically (every few seconds): drop abuse counters older than the
    /// retention window (and hourly ones older than the hour), and limiter states whose bucket
    /// is full again.
    pub fn expire(&self, now_ms: u64) {
        self.abuse.expire(now_ms);
        self.device.expire();
        self.pair.expire();
        self.recipient_bytes.expire();
        self.connection.expire();
        self.group_fanout.expire();
        self.sealed.expire();
        self.throttled.expire();
    }

    /// Refusals so far per limit, for metrics (every limit, in [`Limit::ALL`] order).
    pub fn refusals(&self) -> Vec<(Limit, u64)> {
        Limit::ALL
            .iter()
            .map(|&l| (l, self.refused[l as usize].load(Relaxed)))
            .collect()
    }

    /// Count a refusal.
    fn count(&self, r: Result<(), Refusal>) -> Result<(), Refusal> {
        if let Err(refusal) = &r {
            self.refused[refusal.limit as usize].fetch_add(1, Relaxed);
        }
        r
    }
}

/// Connections are limited per IPv4 address and per IPv6 /64 (one host's usual allocation).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The distinct values of `list` (borrowed when it is short and has no duplicate).
fn distinct(list: &[u64]) -> Cow<'_, [u64]> {
    let unique = list.len() <= 16 && list.iter().enumerate().all(|(i, a)| !list[..i].contains(a));
    if unique {
        return Cow::Borrowed(list);
    }
    let mut v = list.to_vec();
    v.sort_unstable();
    v.dedup();
    Cow::Owned(v)
}

/// A governor state store whose map the limiter and [`Safety::forget`] share.
struct SharedStore<K: Hash + Eq + Clone>(Arc<DashMapStateStore<K>>);

impl<K: Hash + Eq + Clone> StateStore for SharedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        StateStore::measure_and_replace(&*self.0, key, f)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for SharedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&*self.0, drop_below)
    }

    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&*self.0)
    }

    fn len(&self) -> usize {
        ShrinkableKeyedStateStore::len(&*self.0)
    }

    fn is_empty(&self) -> bool {
        ShrinkableKeyedStateStore::is_empty(&*self.0)
    }
}

type Limiter<K> = RateLimiter<K, SharedStore<K>, SafetyClock, NoOpMiddleware<Nanos>>;

/// One keyed token bucket (absent when its rate is 0).
struct Bucket<K: Hash + Eq + Clone> {
    limit: Limit,
    limiter: Option<Limiter<K>>,
    states: Arc<DashMapStateStore<K>>,
    burst: u32,
    clock: SafetyClock,
}

impl<K: Hash + Eq + Clone> Bucket<K> {
    fn new(limit: Limit, per_sec: u32, burst: u32, clock: &SafetyClock) -> Bucket<K> {
        let states: Arc<DashMapStateStore<K>> = Arc::new(DashMapStateStore::default());
        let burst = if burst == 0 { per_sec } else { burst };
        let limiter = NonZeroU32::new(per_sec).map(|rate| {
            let quota = Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate));
            Limiter::new(quota, SharedStore(states.clone()), clock.clone())
        });
        Bucket {
            limit,
            limiter,
            states,
            burst,
            clock: clock.clone(),
        }
    }

    /// Take `n` units (clamped to 1..=burst) for `key`.
    fn check(&self, key: &K, n: u64) -> Result<(), Refusal> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let n = n.clamp(1, u64::from(self.burst)) as u32;
        let outcome = match NonZeroU32::new(n) {
            Some(n) if n.get() > 1 => match limiter.check_key_n(key, n) {
                Ok(outcome) => outcome,
                // Unreachable: n is clamped to the burst. Refuse for one refill to be safe.
                Err(_) => {
                    return Err(Refusal {
                        limit: self.limit,
                        retry_after_ms: 1000,
                    })
                }
            },
            _ => limiter.check_key(key),
        };
        outcome.map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            let ms = wait
                .as_nanos()
                .div_ceil(1_000_000)
                .clamp(1, u128::from(u32::MAX));
            Refusal {
                limit: self.limit,
                retry_after_ms: ms as u32,
            }
        })
    }

    /// Drop the states of keys whose bucket is full again.
    fn expire(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Drop the states of the keys `matches` selects.
    fn forget(&self, matches: impl Fn(&K) -> bool) {
        self.states.retain(|k, _| !matches(k));
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        self.states.len()
    }
}

/// Abuse thresholds and windows.
#[derive(Debug, Clone, Copy)]
struct Rules {
    /// The hour of the hourly signals: min(1 h, retention).
    hour_ms: u64,
    retention_ms: u64,
    new_recipients: u32,
    blocks: u32,
    reports: u32,
    fanout: u64,
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
    fn contact_cap(&self) -> usize {
        (self.new_recipients as usize)
            .saturating_mul(2)
            .saturating_add(1)
    }

    fn over(&self, c: &Counts) -> bool {
        (self.new_recipients > 0 && c.new_recipients > self.new_recipients)
            || (self.blocks > 0 && c.blocks > self.blocks)
            || (self.reports > 0 && c.reports > self.reports)
            || (self.fanout > 0 && c.fanout > self.fanout)
    }

    /// Why `c` is flagged, and its severity.
    fn reasons(&self, c: &Counts) -> (Vec<String>, f64) {
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
fn span(ms: u64) -> String {
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
struct Counts {
    new_recipients: u32,
    blocks: u32,
    reports: u32,
    fanout: u64,
}

/// `first_ms` of a recipient contacted within the hour before its latest contact: not new.
const KNOWN: u64 = u64::MAX;

/// A recipient a sender contacted recently.
#[derive(Debug, Clone, Copy)]
struct Contact {
    /// Keyed 32-bit fingerprint of the recipient account (never the id itself).
    fp: u32,
    /// When this run of contacts began ([`KNOWN`] once that is over an hour ago).
    first_ms: u64,
    last_ms: u64,
}

/// Buckets of the fan-out ring: the hour in twelfths.
const RING: u64 = 12;

/// Deliveries in the last hour, in twelfths of the hour: a bucket counts while all of it lies
/// within the last hour, so nothing older than the hour is ever counted (the count may miss up
/// to one twelfth of the hour).
#[derive(Debug, Clone, Copy, Default)]
struct Ring {
    /// Number of the latest bucket (time / step).
    latest: u64,
    /// Bucket `b` lives in slot `b % RING`, for `b` in `latest - RING + 1 ..= latest`.
    counts: [u32; RING as usize],
}

impl Ring {
    fn step(w: u64) -> u64 {
        (w / RING).max(1)
    }

    fn add(&mut self, n: u64, now: u64, w: u64) {
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

    fn total(&self, now: u64, w: u64) -> u64 {
        let b = now / Ring::step(w);
        let lo = b
            .saturating_sub(RING - 1)
            .max(self.latest.saturating_sub(RING - 1));
        let hi = b.min(self.latest);
        (lo..=hi)
            .map(|i| u64::from(self.counts[(i % RING) as usize]))
            .sum()
    }

    fn is_zero(&self) -> bool {
        self.counts.iter().all(|&c| c == 0)
    }
}

/// Abuse counters of one account.
#[derive(Debug, Default)]
struct Record {
    /// Recipients contacted within the hour, at most [`Rules::contact_cap`].
    contacts: Vec<Contact>,
    fanout: Ring,
    /// Times of blocks received within the retention window, at most threshold + 1.
    blocks: VecDeque<u64>,
    /// Times of reports received within the retention window, at most threshold + 1.
    reports: VecDeque<u64>,
    /// Start of the current flagged episode.
    since_ms: Option<u64>,
    /// Latest event.
    last_ms: u64,
}

impl Record {
    /// Drop what is older than its window, and end a flagged episode that is over.
    fn prune(&mut self, now: u64, r: &Rules) {
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
    fn counts(&self, now: u64, r: &Rules) -> Counts {
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

    fn is_empty(&self) -> bool {
        self.contacts.is_empty()
            && self.blocks.is_empty()
            && self.reports.is_empty()
            && self.fanout.is_zero()
    }

    /// Note a contact with the recipient of fingerprint `fp`.
    fn contact(&mut self, fp: u32, now: u64, cap: usize) {
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
fn push_capped(q: &mut VecDeque<u64>, now: u64, threshold: u32) {
    q.push_back(now);
    while q.len() > threshold as usize + 1 {
        q.pop_front();
    }
}

/// Abuse counters of every tracked account, sharded.
struct Abuse {
    rules: Rules,
    shards: Box<[Mutex<HashMap<u64, Record>>]>,
    hasher: RandomState,
    shard_cap: usize,
}

impl Abuse {
    fn new(rules: Rules, max_tracked: usize) -> Abuse {
        Abuse {
            rules,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            shard_cap: (max_tracked / SHARDS).max(1),
        }
    }

    fn shard(&self, account: u64) -> MutexGuard<'_, HashMap<u64, Record>> {
        let i = (self.hasher.hash_one(account) % SHARDS as u64) as usize;
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn all(&self) -> impl Iterator<Item = MutexGuard<'_, HashMap<u64, Record>>> {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A keyed fingerprint of a recipient account (process-random key: not the id).
    fn fingerprint(&self, account: u64) -> u32 {
        (self.hasher.hash_one((0xfee1_u16, account)) >> 32) as u32
    }

    /// Apply an event to `account`'s record at `now`, creating it (within the bound) if needed.
    fn update(&self, account: u64, now: u64, event: impl FnOnce(&mut Record)) {
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

    fn is_flagged(&self, account: u64, now: u64) -> bool {
        let map = self.shard(account);
        map.get(&account)
            .is_some_and(|rec| self.rules.over(&rec.counts(now, &self.rules)))
    }

    fn flagged(&self, now: u64) -> Vec<Flagged> {
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

    fn forget(&self, account: u64) {
        self.shard(account).remove(&account);
        let fp = self.fingerprint(account);
        for mut map in self.all() {
            for rec in map.values_mut() {
                rec.contacts.retain(|c| c.fp != fp);
            }
        }
    }

    fn expire(&self, now: u64) {
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
    fn tracked(&self) -> usize {
        self.all().map(|m| m.len()).sum()
    }

    #[cfg(test)]
    fn record<T>(&self, account: u64, f: impl FnOnce(Option<&Record>) -> T) -> T {
        f(self.shard(account).get(&account))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = HOUR_MS;

    /// Every limit and signal off; each test turns on what it checks.
    fn quiet() -> SafetyConfig {
        SafetyConfig {
            per_device_per_sec: 0,
            per_device_burst: 0,
            per_pair_per_sec: 0,
            per_pair_burst: 0,
            recipient_bytes_per_sec: 0,
            recipient_bytes_burst: 0,
            new_connections_per_ip_per_sec: 0,
            new_connections_per_ip_burst: 0,
            group_fanout_per_sender_per_sec: 0,
            group_fanout_burst: 0,
            sealed_per_recipient_per_sec: 0,
            sealed_per_recipient_burst: 0,
            retention_secs: 86_400,
            new_recipients_per_hour: 0,
            blocks_received_per_window: 0,
            reports_received_per_window: 0,
            fanout_per_hour: 0,
            throttled_per_sec: 0,
        }
    }

    fn safety(cfg: SafetyConfig) -> (Safety, SafetyClock) {
        let clock = SafetyClock::manual();
        (Safety::with_clock(cfg, clock.clone()), clock)
    }

    fn refused(r: Result<(), Refusal>, limit: Limit) -> u32 {
        let r = r.expect_err("should be refused");
        assert_eq!(r.limit, limit);
        assert!(r.retry_after_ms >= 1);
        r.retry_after_ms
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn is_flagged(s: &Safety, account: u64, now: u64) -> bool {
        s.flagged(now).iter().any(|f| f.account == account)
    }

    #[test]
    fn device_limit_refuses_with_retry_after_and_recovers() {
        let (s, clock) = safety(SafetyConfig {
            per_device_per_sec: 10,
            per_device_burst: 3,
            ..quiet()
        });
        for _ in 0..3 {
            s.check_send((1, 1), &[2], 10, 0).unwrap();
        }
        assert_eq!(
            refused(s.check_send((1, 1), &[2], 10, 0), Limit::Device),
            100
        );
        // Other devices, of the same account or not, have their own buckets.
        s.check_send((1, 2), &[2], 10, 0).unwrap();
        s.check_send((7, 1), &[2], 10, 0).unwrap();
        // One millisecond short of the retry-after is still too early; at it, one send passes.
        clock.advance_ms(99);
        assert_eq!(refused(s.check_send((1, 1), &[2], 10, 0), Limit::Device), 1);
        clock.advance_ms(1);
        s.check_send((1, 1), &[2], 10, 0).unwrap();
        refused(s.check_send((1, 1), &[2], 10, 0), Limit::Device);
        // After a full refill the whole burst is back.
        clock.advance_ms(1_000);
        for _ in 0..3 {
            s.check_send((1, 1), &[2], 10, 0).unwrap();
        }
        refused(s.check_send((1, 1), &[2], 10, 0), Limit::Device);
    }

    #[test]
    fn pair_limit_is_per_account_pair() {
        let (s, clock) = safety(SafetyConfig {
            per_pair_per_sec: 1,
            per_pair_burst: 2,
            ..quiet()
        });
        s.check_send((1, 1), &[2], 0, 0).unwrap();
        s.check_send((1, 2), &[2], 0, 0).unwrap();
        // The pair is (account, account): the sender's other device shares it.
        assert_eq!(refused(s.check_send((1, 1), &[2], 0, 0), Limit::Pair), 1000);
        refused(s.check_send((1, 3), &[2], 0, 0), Limit::Pair);
        // A multi send refused on one pair is refused as a whole.
        refused(s.check_send((1, 1), &[3, 2], 0, 0), Limit::Pair);
        s.check_send((1, 1), &[4], 0, 0).unwrap();
        s.check_send((5, 1), &[2], 0, 0).unwrap();
        clock.advance_ms(1_000);
        s.check_send((1, 1), &[2], 0, 0).unwrap();
        refused(s.check_send((1, 1), &[2], 0, 0), Limit::Pair);
    }

    #[test]
    fn duplicate_recipients_count_once_and_self_is_not_a_pair() {
        let (s, _clock) = safety(SafetyConfig {
            per_pair_per_sec: 1,
            per_pair_burst: 2,
            ..quiet()
        });
        s.check_send((1, 1), &[2, 2, 2], 0, 0).unwrap();
        s.check_send((1, 1), &[2], 0, 0).unwrap();
        refused(s.check_send((1, 1), &[2], 0, 0), Limit::Pair);
        // A long list (sorted copy path) with duplicates.
        let mut long: Vec<u64> = (100..140).collect();
        long.extend(100..140);
        s.check_send((1, 1), &long, 0, 0).unwrap();
        s.check_send((1, 1), &long, 0, 0).unwrap();
        refused(s.check_send((1, 1), &long, 0, 0), Limit::Pair);
        // Sends to the sender's own account are limited per device only.
        for _ in 0..100 {
            s.check_send((1, 1), &[1, 1], 0, 0).unwrap();
        }
    }

    #[test]
    fn recipient_bytes_limit_is_shared_by_senders_and_recovers() {
        let cfg = SafetyConfig {
            recipient_bytes_per_sec: 1_000,
            recipient_bytes_burst: 3_000,
            ..quiet()
        };
        let (s, clock) = safety(cfg);
        s.check_send((1, 1), &[9], 2_000, 0).unwrap();
        // 1000 bytes left: 1500 more must wait 500 ms, whoever sends them.
        assert_eq!(
            refused(s.check_send((2, 1), &[9], 1_500, 0), Limit::RecipientBytes),
            500
        );
        s.check_send((2, 1), &[8], 1_500, 0).unwrap();
        clock.advance_ms(499);
        refused(s.check_send((2, 1), &[9], 1_500, 0), Limit::RecipientBytes);
        clock.advance_ms(1);
        s.check_send((2, 1), &[9], 1_500, 0).unwrap();
        // An envelope larger than the burst passes on a full bucket and empties it.
        clock.advance_ms(10_000);
        s.check_send((3, 1), &[9], 1_000_000, 0).unwrap();
        refused(s.check_send((3, 1), &[9], 1, 0), Limit::RecipientBytes);
        // Empty payloads never touch the byte budget.
        s.check_send((3, 1), &[9], 0, 0).unwrap();
    }

    #[test]
    fn a_sender_refused_by_its_own_limits_spends_no_recipient_bytes() {
        let cfg = SafetyConfig {
            per_pair_per_sec: 1,
            per_pair_burst: 1,
            recipient_bytes_per_sec: 1,
            recipient_bytes_burst: 1_000,
            ..quiet()
        };
        let (s, _clock) = safety(cfg);
        s.check_send((1, 1), &[9], 500, 0).unwrap();
        for _ in 0..10 {
            refused(s.check_send((1, 1), &[9], 500, 0), Limit::Pair);
        }
        s.check_send((2, 1), &[9], 500, 0).unwrap();
        refused(s.check_send((3, 1), &[9], 1, 0), Limit::RecipientBytes);
    }

    #[test]
    fn new_connection_limit_per_address_and_ipv6_prefix() {
        let cfg = SafetyConfig {
            new_connections_per_ip_per_sec: 1,
            new_connections_per_ip_burst: 2,
            ..quiet()
        };
        let (s, clock) = safety(cfg);
        s.check_connection(ip("10.0.0.1")).unwrap();
        s.check_connection(ip("10.0.0.1")).unwrap();
        assert_eq!(
            refused(s.check_connection(ip("10.0.0.1")), Limit::NewConnection),
            1000
        );
        // IPv4-mapped IPv6 is the same source.
        refused(
            s.check_connection(ip("::ffff:10.0.0.1")),
            Limit::NewConnection,
        );
        s.check_connection(ip("10.0.0.2")).unwrap();
        // One IPv6 /64 is one source.
        s.check_connection(ip("2001:db8::1")).unwrap();
        s.check_connection(ip("2001:db8::2")).unwrap();
        refused(
            s.check_connection(ip("2001:db8::ffff:3")),
            Limit::NewConnection,
        );
        s.check_connection(ip("2001:db8:0:1::1")).unwrap();
        clock.advance_ms(1_000);
        s.check_connection(ip("10.0.0.1")).unwrap();
        s.check_connection(ip("2001:db8::9")).unwrap();
    }

    #[test]
    fn group_fanout_limit_counts_deliveries() {
        let cfg = SafetyConfig {
            group_fanout_per_sender_per_sec: 100,
            group_fanout_burst: 500,
            ..quiet()
        };
        let (s, clock) = safety(cfg);
        s.check_group_fanout(7, 400).unwrap();
        assert_eq!(
            refused(s.check_group_fanout(7, 200), Limit::GroupFanout),
            1000
        );
        s.check_group_fanout(7, 100).unwrap();
        s.check_group_fanout(7, 0).unwrap();
        s.check_group_fanout(8, 500).unwrap();
        clock.advance_ms(1_000);
        s.check_group_fanout(7, 100).unwrap();
        refused(s.check_group_fanout(7, 1), Limit::GroupFanout);
        // A group bigger than the burst passes on a full bucket.
        clock.advance_ms(5_000);
        s.check_group_fanout(7, 100_000).unwrap();
        refused(s.check_group_fanout(7, 1), Limit::GroupFanout);
    }

    #[test]
    fn sealed_limit_is_per_recipient() {
        let cfg = SafetyConfig {
            sealed_per_recipient_per_sec: 2,
            sealed_per_recipient_burst: 2,
            ..quiet()
        };
        let (s, clock) = safety(cfg);
        s.check_sealed(9).unwrap();
        s.check_sealed(9).unwrap();
        assert_eq!(refused(s.check_sealed(9), Limit::SealedRecipient), 500);
        s.check_sealed(10).unwrap();
        clock.advance_ms(500);
        s.check_sealed(9).unwrap();
        refused(s.check_sealed(9), Limit::SealedRecipient);
    }

    #[test]
    fn zero_rates_turn_limits_off() {
        let (s, _clock) = safety(quiet());
        for i in 0..2_000u64 {
            s.check_send((1, 1), &[2, 3], 1 << 20, i).unwrap();
            s.check_connection(ip("10.0.0.1")).unwrap();
            s.check_group_fanout(1, 1 << 30).unwrap();
            s.check_sealed(2).unwrap();
            s.note_sent(1, &[i + 10], i);
            s.note_block(1, i);
            s.note_report(1, i);
            s.note_fanout(1, 1 << 20, i);
        }
        assert!(s.flagged(2_000).is_empty());
        assert_eq!(s.abuse.tracked(), 0, "disabled signals keep no records");
        assert!(s.refusals().iter().all(|&(_, n)| n == 0));
    }

    #[test]
    fn burst_zero_means_the_rate() {
        let (s, _clock) = safety(SafetyConfig {
            per_device_per_sec: 3,
            ..quiet()
        });
        for _ in 0..3 {
            s.check_send((1, 1), &[], 0, 0).unwrap();
        }
        refused(s.check_send((1, 1), &[], 0, 0), Limit::Device);
    }

    #[test]
    fn refusals_are_counted_per_limit() {
        let cfg = SafetyConfig {
            per_device_per_sec: 1,
            per_device_burst: 1,
            sealed_per_recipient_per_sec: 1,
            sealed_per_recipient_burst: 1,
            ..quiet()
        };
        let (s, _clock) = safety(cfg);
        s.check_send((1, 1), &[], 0, 0).unwrap();
        for _ in 0..3 {
            s.check_send((1, 1), &[], 0, 0).unwrap_err();
        }
        s.check_sealed(5).unwrap();
        s.check_sealed(5).unwrap_err();
        let counts = s.refusals();
        assert_eq!(
            counts.iter().map(|c| c.0).collect::<Vec<_>>(),
            Limit::ALL.to_vec()
        );
        for (limit, n) in counts {
            let want = match limit {
                Limit::Device => 3,
                Limit::SealedRecipient => 1,
                _ => 0,
            };
            assert_eq!(n, want, "{limit:?}");
        }
        let names: Vec<_> = Limit::ALL.iter().map(|l| l.as_str()).collect();
        assert_eq!(names[2], "recipient_bytes");
        assert_eq!(
            serde_json::to_value(Limit::RecipientBytes).unwrap(),
            "recipient_bytes"
        );
    }

    #[test]
    fn concurrent_callers_share_one_bucket() {
        let (s, _clock) = safety(SafetyConfig {
            per_device_per_sec: 1,
            per_device_burst: 50,
            ..quiet()
        });
        let passed = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..100 {
                        if s.check_send((1, 1), &[], 0, 0).is_ok() {
                            passed.fetch_add(1, Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(passed.load(Relaxed), 50);
        assert_eq!(s.refusals()[0], (Limit::Device, 750));
    }

    #[test]
    fn new_recipients_past_threshold_flag_and_throttle_the_sender() {
        let cfg = SafetyConfig {
            per_device_per_sec: 1_000,
            per_device_burst: 1_000,
            new_recipients_per_hour: 3,
            throttled_per_sec: 1,
            ..quiet()
        };
        let (s, clock) = safety(cfg);
        let t0 = 1_700_000_000_000;
        s.note_sent(1, &[10, 11, 12], t0);
        assert!(s.flagged(t0).is_empty());
        for _ in 0..5 {
            s.check_send((1, 1), &[10], 0, t0).unwrap();
        }
        s.note_sent(1, &[13], t0 + 1_000);
        let flagged = s.flagged(t0 + 1_000);
        assert_eq!(flagged.len(), 1);
        let f = &flagged[0];
        assert_eq!(
            (f.account, f.new_recipients, f.since_ms),
            (1, 4, t0 + 1_000)
        );
        assert_eq!(f.reasons.len(), 1);
        assert!(
            f.reasons[0].contains("4 distinct new recipients"),
            "{:?}",
            f.reasons
        );
        // Throttled: one send per second for all the account's devices together.
        s.check_send((1, 1), &[10], 0, t0 + 1_000).unwrap();
        assert_eq!(
            refused(s.check_send((1, 1), &[10], 0, t0 + 1_000), Limit::Throttled),
            1000
        );
        refused(s.check_send((1, 2), &[10], 0, t0 + 1_000), Limit::Throttled);
        // Others are not throttled.
        for _ in 0..5 {
            s.check_send((2, 1), &[10], 0, t0 + 1_000).unwrap();
        }
        clock.advance_ms(1_000);
        s.check_send((1, 2), &[10], 0, t0 + 2_000).unwrap();
        refused(s.check_send((1, 1), &[10], 0, t0 + 2_000), Limit::Throttled);
        // An hour after those first contacts, the flag (and the throttle) are gone.
        let later = t0 + H;
        assert!(s.flagged(later).is_empty());
        for _ in 0..5 {
            s.check_send((1, 1), &[10], 0, later).unwrap();
        }
    }

    #[test]
    fn without_a_throttled_rate_flagged_senders_keep_the_device_limit() {
        let cfg = SafetyConfig {
            per_device_per_sec: 1_000,
            per_device_burst: 1_000,
            new_recipients_per_hour: 1,
            ..quiet()
        };
        let (s, _clock) = safety(cfg);
        s.note_sent(1, &[10, 11], 0);
        assert!(is_flagged(&s, 1, 0));
        for _ in 0..100 {
            s.check_send((1, 1), &[10], 0, 0).unwrap();
        }
    }

    #[test]
    fn ongoing_conversations_and_self_are_not_new_recipients() {
        let (s, _clock) = safety(SafetyConfig {
            new_recipients_per_hour: 3,
            ..quiet()
        });
        for i in 0..100 {
            s.note_sent(1, &[10, 11, 12], i * 1_000);
        }
        s.note_sent(1, &[1, 1, 1], 200_000);
        assert!(!is_flagged(&s, 1, 200_000));
        // Talked to within the last hour and begun over an hour ago: not new any more.
        let t = 30 * 60_000;
        s.note_sent(1, &[10, 11, 12], t);
        let t = 80 * 60_000;
        s.note_sent(1, &[10, 11, 12, 13, 14, 15], t);
        assert!(!is_flagged(&s, 1, t), "three new recipients is not past 3");
        s.note_sent(1, &[16], t);
        assert!(is_flagged(&s, 1, t));
        assert_eq!(s.flagged(t)[0].new_recipients, 4);
    }

    #[test]
    fn recipient_memory_is_capped_and_holds_no_account_ids() {
        let (s, _clock) = safety(SafetyConfig {
            new_recipients_per_hour: 5,
            ..quiet()
        });
        let many: Vec<u64> = (1_000..11_000).collect();
        s.note_sent(1, &many, 0);
        for chunk in many.chunks(7) {
            s.note_sent(1, chunk, 1);
        }
        let len = s.abuse.record(1, |r| r.unwrap().contacts.len());
        assert_eq!(len, 11, "capped at 2 * threshold + 1");
        let f = &s.flagged(1)[0];
        assert_eq!(f.new_recipients, 11);
        assert!(f.reasons[0].starts_with("at least 11 "), "{:?}", f.reasons);
        // Fingerprints are 32-bit keyed hashes, not the low bits of the ids.
        let fps: Vec<u32> = s
            .abuse
            .record(1, |r| r.unwrap().contacts.iter().map(|c| c.fp).collect());
        assert!(fps
            .iter()
            .any(|&fp| !(1_000..11_000).contains(&u64::from(fp))));
    }

    #[test]
    fn blocks_and_reports_flag_sorted_by_severity() {
        let cfg = SafetyConfig {
            blocks_received_per_window: 2,
            reports_received_per_window: 1,
            ..quiet()
        };
        let (s, _clock) = safety(cfg);
        for t in [10, 20, 30] {
            s.note_block(5, t);
        }
        s.note_report(6, 40);
        assert!(!is_flagged(&s, 6, 40));
        s.note_report(6, 50);
        for t in [60, 61, 62, 63] {
            s.note_block(7, t);
            s.note_report(7, t);
        }
        let f = s.flagged(100);
        let order: Vec<u64> = f.iter().map(|f| f.account).collect();
        // 7: 3/2 + 2/1 (counts capped at threshold + 1), 6: 2/1, 5: 3/2.
        assert_eq!(order, vec![7, 6, 5]);
        assert_eq!((f[2].blocks, f[2].reports, f[2].since_ms), (3, 0, 30));
        assert_eq!((f[1].blocks, f[1].reports, f[1].since_ms), (0, 2, 50));
        assert_eq!((f[0].blocks, f[0].reports, f[0].reasons.len()), (3, 2, 2));
        assert!(
            f[2].reasons[0].contains("blocked 3 times in the last 24 h"),
            "{:?}",
            f[2].reasons
        );
        assert!(
            f[1].reasons[0].contains("reported 2 times"),
            "{:?}",
            f[1].reasons
        );
    }

    #[test]
    fn fanout_volume_flags_within_the_hour() {
        let (s, _clock) = safety(SafetyConfig {
            fanout_per_hour: 1_000,
            ..quiet()
        });
        s.note_fanout(3, 600, 0);
        s.note_fanout(3, 500, 1_000);
        let f = s.flagged(1_000);
        assert_eq!((f[0].account, f[0].fanout), (3, 1_100));
        assert!(
            f[0].reasons[0].contains("1100 deliveries in the last 1 h"),
            "{:?}",
            f[0].reasons
        );
        // Counted until the hour is over, not a millisecond longer.
        assert!(is_flagged(&s, 3, H - 1));
        assert!(!is_flagged(&s, 3, H));
        s.note_fanout(3, 1_000, H);
        assert_eq!(s.flagged(H + 1).len(), 0, "the old hour no longer counts");
        s.note_fanout(3, 1, H + H / 2);
        assert_eq!(s.flagged(H + H / 2)[0].fanout, 1_001);
        // Direct sends count one delivery per distinct other recipient.
        let many: Vec<u64> = (10..1_011).collect();
        s.note_sent(4, &many, 0);
        s.note_sent(4, &[4, 4], 0);
        assert_eq!(
            s.flagged(0).iter().find(|f| f.account == 4).unwrap().fanout,
            1_001
        );
    }

    #[test]
    fn counters_expire_after_the_retention_window() {
        let cfg = SafetyConfig {
            retention_secs: 100,
            blocks_received_per_window: 2,
            reports_received_per_window: 2,
            new_recipients_per_hour: 2,
            fanout_per_hour: 2,
            ..quiet()
        };
        let (s, _clock) = safety(cfg);
        for t in [0, 50_000, 90_000] {
            s.note_block(5, t);
        }
        assert_eq!(s.flagged(90_000)[0].since_ms, 90_000);
        // The block at 0 leaves the window at 100 s.
        assert!(is_flagged(&s, 5, 99_999));
        assert!(!is_flagged(&s, 5, 100_000));
        // A new episode starts with a new since.
        s.note_block(5, 120_000);
        assert_eq!(s.flagged(120_000)[0].since_ms, 120_000);
        // The "hour" is capped at the retention window.
        s.note_sent(6, &[1, 2, 3], 0);
        let f = s.flagged(0);
        let f6 = f.iter().find(|f| f.account == 6).unwrap();
        assert!(
            f6.reasons.iter().any(|r| r.contains("in the last 100 s")),
            "{:?}",
            f6.reasons
        );
        assert!(!is_flagged(&s, 6, 100_000));
        // expire() keeps what is recent and drops the rest.
        s.expire(120_000);
        assert_eq!(s.abuse.tracked(), 1);
        s.expire(120_000 + 100_000);
        assert_eq!(s.abuse.tracked(), 0);
        assert!(s.flagged(220_000).is_empty());
    }

    #[test]
    fn default_retention_drops_every_counter_after_24_hours() {
        let (s, _clock) = safety(SafetyConfig::default());
        for a in 0..100u64 {
            s.note_sent(a, &[a + 1_000, a + 2_000], 0);
            s.note_block(a + 5_000, 0);
            s.note_report(a + 6_000, 0);
            s.note_fanout(a, 10, 0);
        }
        s.expire(H);
        assert_eq!(
            s.abuse.tracked(),
            200,
            "blocks and reports outlive the hour"
        );
        s.expire(86_400_000 - 1);
        assert_eq!(s.abuse.tracked(), 200);
        s.expire(86_400_000);
        assert_eq!(s.abuse.tracked(), 0);
    }

    #[test]
    fn expire_drops_limiter_states_once_their_bucket_is_full() {
        let cfg = SafetyConfig {
            per_device_per_sec: 10,
            per_device_burst: 10,
            per_pair_per_sec: 10,
            per_pair_burst: 10,
            new_connections_per_ip_per_sec: 10,
            new_connections_per_ip_burst: 10,
            ..quiet()
        };
        let (s, clock) = safety(cfg);
        for a in 0..50u64 {
            s.check_send((a, 1), &[a + 100], 0, 0).unwrap();
            s.check_connection(IpAddr::V4(std::net::Ipv4Addr::from(a as u32)))
                .unwrap();
        }
        s.expire(0);
        assert_eq!(
            (s.device.keys(), s.pair.keys(), s.connection.keys()),
            (50, 50, 50)
        );
        clock.advance_ms(1_000);
        s.expire(1_000);
        assert_eq!(
            (s.device.keys(), s.pair.keys(), s.connection.keys()),
            (0, 0, 0)
        );
    }

    #[test]
    fn forget_erases_counters_and_limiter_states_of_an_account() {
        let cfg = SafetyConfig {
            per_device_per_sec: 1,
            per_device_burst: 1,
            per_pair_per_sec: 1,
            per_pair_burst: 1,
            recipient_bytes_per_sec: 1,
            recipient_bytes_burst: 10,
            sealed_per_recipient_per_sec: 1,
            sealed_per_recipient_burst: 1,
            group_fanout_per_sender_per_sec: 1,
            group_fanout_burst: 1,
            blocks_received_per_window: 1,
            new_recipients_per_hour: 1,
            ..quiet()
        };
        let (s, _clock) = safety(cfg);
        s.check_send((1, 1), &[2], 10, 0).unwrap();
        s.check_send((3, 1), &[1], 10, 0).unwrap();
        s.check_sealed(1).unwrap();
        s.check_group_fanout(1, 1).unwrap();
        s.note_sent(1, &[2, 3], 0);
        s.note_block(1, 0);
        s.note_block(1, 0);
        s.note_sent(3, &[1], 0);
        assert!(is_flagged(&s, 1, 0));
        refused(s.check_send((1, 1), &[2], 10, 0), Limit::Device);

        s.forget(1);
        assert!(s.flagged(0).is_empty());
        s.abuse.record(1, |r| assert!(r.is_none()));
        let fp = s.abuse.fingerprint(1);
        s.abuse.record(3, |r| {
            assert!(r.unwrap().contacts.iter().all(|c| c.fp != fp))
        });
        // Every bucket of account 1, as sender or recipient, starts full again.
        s.check_send((1, 1), &[2], 0, 0).unwrap();
        s.check_send((4, 1), &[1], 10, 0).unwrap();
        s.check_sealed(1).unwrap();
        s.check_group_fanout(1, 1).unwrap();
        // Others keep theirs.
        refused(s.check_send((3, 1), &[5], 0, 0), Limit::Device);
    }

    #[test]
    fn tracked_accounts_are_bounded_and_flagged_ones_survive() {
        let cfg = SafetyConfig {
            reports_received_per_window: 1,
            blocks_received_per_window: 100,
            ..quiet()
        };
        let clock = SafetyClock::manual();
        let s = Safety::build(cfg, clock, 2 * SHARDS);
        s.note_report(42, 0);
        s.note_report(42, 0);
        for a in 1_000..11_000u64 {
            s.note_block(a, a);
        }
        assert!(s.abuse.tracked() <= 2 * SHARDS);
        assert_eq!(
            s.flagged(20_000)
                .iter()
                .map(|f| f.account)
                .collect::<Vec<_>>(),
            vec![42]
        );
    }

    #[test]
    fn config_defaults_and_toml() {
        let d = SafetyConfig::default();
        assert_eq!(d.retention_secs, 86_400);
        assert!(d.recipient_bytes_burst as usize >= hearth_protocol::DEFAULT_MAX_ENVELOPE);
        assert!(d.throttled_per_sec > 0 && d.throttled_per_sec < d.per_device_per_sec);
        let text = toml::to_string(&d).unwrap();
        assert_eq!(toml::from_str::<SafetyConfig>(&text).unwrap(), d);
        let c: SafetyConfig =
            toml::from_str("per_device_per_sec = 5\nretention_secs = 60").unwrap();
        assert_eq!((c.per_device_per_sec, c.retention_secs), (5, 60));
        assert_eq!(c.per_pair_burst, d.per_pair_burst);
        assert!(toml::from_str::<SafetyConfig>("per_device_per_second = 5").is_err());
    }

    #[test]
    fn safety_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Safety>();
    }
}
