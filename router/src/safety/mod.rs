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

mod abuse;
mod limits;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use governor::clock::Clock;
use governor::nanos::Nanos;
use serde::{Deserialize, Serialize};

use abuse::{push_capped, Abuse, Rules};
use limits::Bucket;

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
    pub(crate) const ALL: [Limit; 7] = [
        Limit::Device,
        Limit::Pair,
        Limit::RecipientBytes,
        Limit::NewConnection,
        Limit::GroupFanout,
        Limit::SealedRecipient,
        Limit::Throttled,
    ];

    /// A stable snake_case name, for metric labels.
    pub(crate) fn as_str(self) -> &'static str {
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

/// The time the rate limiters read: milliseconds set from the inputs of the routing core
/// ([`Safety::set_now_ms`], which never moves it back), so no clock is read inside the core.
/// Clones share the time.
#[derive(Debug, Clone, Default)]
pub(crate) struct SafetyClock(Arc<AtomicU64>);

impl SafetyClock {
    /// A clock at 0 that moves only when set.
    pub(crate) fn manual() -> SafetyClock {
        SafetyClock::default()
    }

    /// Move the clock to `now_ms`, never back.
    pub(crate) fn set_ms(&self, now_ms: u64) {
        self.0.fetch_max(now_ms, Relaxed);
    }

    /// Move the clock forward by `ms`.
    #[cfg(test)]
    pub(crate) fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms, Relaxed);
    }
}

impl Clock for SafetyClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::new(self.0.load(Relaxed).saturating_mul(1_000_000))
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
    clock: SafetyClock,
}

impl Safety {
    /// Limiters and counters for `cfg`, on a clock set by [`Safety::set_now_ms`].
    pub(crate) fn new(cfg: SafetyConfig) -> Safety {
        Safety::build(cfg, SafetyClock::manual(), MAX_TRACKED_ACCOUNTS)
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
            clock: clock.clone(),
            cfg,
        }
    }

    /// Move the limiters' clock to `now_ms` (milliseconds; it never moves back, so a step of
    /// the wall clock backwards freezes no bucket).
    pub(crate) fn set_now_ms(&self, now_ms: u64) {
        self.clock.set_ms(now_ms);
    }

    /// A new connection from `ip` (before the handshake work).
    pub(crate) fn check_connection(&self, ip: IpAddr) -> Result<(), Refusal> {
        self.count(self.connection.check(&source_key(ip), 1))
    }

    /// The sender's own limit, once per send (at ingress): per device, or the lower throttled
    /// rate if the sender account is flagged. `sender` is (account, device); `now_ms` (wall
    /// clock) is used only to tell whether the sender is flagged.
    pub(crate) fn check_sender(&self, sender: (u64, u32), now_ms: u64) -> Result<(), Refusal> {
        let throttle = self.cfg.throttled_per_sec > 0 && self.abuse.is_flagged(sender.0, now_ms);
        if throttle {
            self.count(self.throttled.check(&sender.0, 1))
        } else {
            self.count(self.device.check(&sender, 1))
        }
    }

    /// The recipients' limits, once per send (at the owner): per (sender, recipient) pair for
    /// each recipient account, then each recipient's incoming bytes. Duplicate recipients count
    /// once; the sender's own account (a send to its other devices) is not limited here. A send
    /// refused by a pair spends nothing of the byte budgets.
    pub(crate) fn check_recipients(
        &self,
        sender: u64,
        recipients: &[u64],
        bytes: u64,
    ) -> Result<(), Refusal> {
        let recipients = distinct(recipients);
        let others = || recipients.iter().copied().filter(|&r| r != sender);
        for r in others() {
            self.count(self.pair.check(&(sender, r), 1))?;
        }
        if bytes > 0 {
            for r in others() {
                self.count(self.recipient_bytes.check(&r, bytes))?;
            }
        }
        Ok(())
    }

    /// Both stages' limits in order (the sender's, then the recipients'), as one call.
    #[cfg(test)]
    pub(crate) fn check_send(
        &self,
        sender: (u64, u32),
        recipients: &[u64],
        bytes: u64,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        self.check_sender(sender, now_ms)?;
        self.check_recipients(sender.0, recipients, bytes)
    }

    /// A group send from `sender` that would make `deliveries` deliveries (0 always passes).
    pub(crate) fn check_group_fanout(&self, sender: u64, deliveries: u64) -> Result<(), Refusal> {
        if deliveries == 0 {
            return Ok(());
        }
        self.count(self.group_fanout.check(&sender, deliveries))
    }

    /// A sealed-sender envelope for `recipient`.
    pub(crate) fn check_sealed(&self, recipient: u64) -> Result<(), Refusal> {
        self.count(self.sealed.check(&recipient, 1))
    }

    /// Abuse signals: `sender` sent to `recipients` (accounts) at `now_ms`. Counts distinct new
    /// recipients (not the sender's own account; duplicates once) and one delivery of fan-out
    /// volume per distinct other recipient.
    pub(crate) fn note_sent(&self, sender: u64, recipients: &[u64], now_ms: u64) {
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
    pub(crate) fn note_fanout(&self, sender: u64, deliveries: u64, now_ms: u64) {
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
    pub(crate) fn note_block(&self, blocked: u64, now_ms: u64) {
        let limit = self.abuse.rules.blocks;
        if limit > 0 {
            self.abuse.update(blocked, now_ms, |rec| {
                push_capped(&mut rec.blocks, now_ms, limit)
            });
        }
    }

    /// Abuse signals: a `REPORT` named `reported` at `now_ms`.
    pub(crate) fn note_report(&self, reported: u64, now_ms: u64) {
        let limit = self.abuse.rules.reports;
        if limit > 0 {
            self.abuse.update(reported, now_ms, |rec| {
                push_capped(&mut rec.reports, now_ms, limit)
            });
        }
    }

    /// Accounts past a threshold at `now_ms`, most severe first (severity: the sum over crossed
    /// thresholds of count / threshold; ties by account).
    pub(crate) fn flagged(&self, now_ms: u64) -> Vec<Flagged> {
        self.abuse.flagged(now_ms)
    }

    /// Purge: drop everything held about `account`: its abuse counters, its fingerprint in other
    /// senders' recent recipients, and the limiter states keyed by it (device, pair either way,
    /// bytes, fan-out, sealed, throttled).
    pub(crate) fn forget(&self, account: u64) {
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
    pub(crate) fn expire(&self, now_ms: u64) {
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
    pub(crate) fn refusals(&self) -> Vec<(Limit, u64)> {
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
