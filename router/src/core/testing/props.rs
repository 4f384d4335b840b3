//! Random interleavings of sends, retries, acks, disconnects, reconnects, commits and time,
//! checked against the delivery invariants. Deterministic: case `i` runs seed `i`, and a
//! failure names its seed (rerun one with `HEARTH_SIM_SEED=<seed>`). The same cases run on the
//! bytes of a fuzz input ([`fuzz_case`], router/fuzz), which choose every step instead of a
//! seeded generator; a stranger in another network adds raw frame bytes, decoded as the
//! driver decodes them. The fuzz corpus (router/fuzz/corpus/core) is replayed by `cargo test`
//! (router/src/fuzz_corpus.rs).
//!
//! Invariants, per device:
//! - within one connection (epoch), stored envelopes arrive in strictly increasing seq order,
//!   which is acceptance order, each seq at most once;
//! - nothing arrives after it expired;
//! - nothing arrives again in a later epoch once its ack was written;
//! - a message arrives twice only if it was retried after its first copy was committed (the
//!   at-least-once case PROTOCOL.md describes);
//! - at the end, every envelope that got ACCEPTED and has not expired reaches the device
//!   (delivered in the last epoch, or acknowledged before).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use bytes::BytesMut;
use hearth_protocol::{flags, Decoded, Decoder, Frame};
use hearth_storage::DeviceKey;
use rand::rngs::StdRng;
use rand::Rng;

use super::sim::{Setup, Sim};
use crate::core::ConnId;

const ACCOUNTS: u64 = 3;
const DEVICES: u32 = 2;
/// The stranger: an account in another network, which may send anything.
const STRANGER: DeviceKey = DeviceKey::new(9, 1);
/// The stranger's network; the case's devices never opt in to it.
const STRANGER_NETWORK: &str = "elsewhere";
/// Most operations one fuzz input runs.
const FUZZ_OPS: usize = 2000;

/// Where a case takes its choices from.
enum Choices<'a> {
    /// A seeded generator (the property test).
    Seeded(Box<StdRng>),
    /// A fuzz input, read a byte at a time; zeros once it runs out.
    Bytes(&'a [u8]),
}

impl Choices<'_> {
    /// A number in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        match self {
            Choices::Seeded(rng) => rng.gen_range(lo..=hi),
            Choices::Bytes(_) => {
                let span = hi - lo + 1;
                let mut n = u64::from(self.byte());
                if span > 256 {
                    n = n << 8 | u64::from(self.byte());
                }
                lo + n % span
            }
        }
    }

    /// True `percent` times in 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.range(0, 99) < percent
    }

    /// Up to `n` raw bytes.
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        match self {
            Choices::Seeded(rng) => (0..n).map(|_| rng.gen()).collect(),
            Choices::Bytes(data) => {
                let (head, rest) = data.split_at(n.min(data.len()));
                *data = rest;
                head.to_vec()
            }
        }
    }

    fn byte(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    /// Whether a fuzz input is used up (a seeded generator never is).
    fn exhausted(&self) -> bool {
        matches!(self, Choices::Bytes(data) if data.is_empty())
    }
}

/// What the test knows of one message.
#[derive(Debug, Clone)]
struct Sent {
    /// The devices it addresses (durable messages only).
    to: Vec<DeviceKey>,
    /// Order of acceptance (the send's index).
    order: usize,
    expires_at_ms: u64,
    accepted: bool,
    /// Retried (possibly after its first copy was committed): a second copy is allowed.
    retried_late: bool,
    /// How to send it again: sender, target account and device, flags, TTL.
    again: (DeviceKey, DeviceKey, u8, u32),
}

#[derive(Default)]
struct Device {
    conn: Option<ConnId>,
    /// (seq, msg) delivered in the current epoch.
    epoch: Vec<(u64, u128)>,
    /// Seqs delivered and not yet acked in the current epoch.
    unacked: Vec<u64>,
    /// Acks sent (seq → msg), and those known to be written.
    acked: HashMap<u64, u128>,
    acked_written: HashSet<u64>,
    /// Messages seen in any epoch.
    seen: HashSet<u128>,
}

struct Case<'a> {
    sim: Sim,
    choose: Choices<'a>,
    devices: BTreeMap<DeviceKey, Device>,
    sent: HashMap<u128, Sent>,
    next_msg: u128,
    sends: usize,
    /// What a failure names: the seed, or the fuzz input.
    origin: String,
    /// The stranger's connection and the decoder of its bytes.
    stranger: Option<(ConnId, Decoder, BytesMut)>,
}

impl<'a> Case<'a> {
    fn new(choose: Choices<'a>, origin: String) -> Case<'a> {
        let mut setup = Setup::default();
        setup.limits.max_inflight = 3;
        setup.privacy.networks.push(STRANGER_NETWORK.into());
        let mut sim = Sim::with(setup);
        sim.auto_commit = false;
        // Time moves only when the case says so (`advance`, `settle`), never inside a connect:
        // every frame is checked against the time it was written.
        sim.auto_advance = false;
        let mut devices = BTreeMap::new();
        for a in 1..=ACCOUNTS {
            for d in 1..=DEVICES {
                let key = DeviceKey::new(a, d);
                let conn = sim.connect(key);
                devices.insert(
                    key,
                    Device {
                        conn: Some(conn),
                        ..Device::default()
                    },
                );
            }
        }
        Case {
            sim,
            choose,
            devices,
            sent: HashMap::new(),
            next_msg: 1,
            sends: 0,
            origin,
            stranger: None,
        }
    }

    fn key(&mut self) -> DeviceKey {
        DeviceKey::new(
            self.choose.range(1, ACCOUNTS),
            self.choose.range(1, u64::from(DEVICES)) as u32,
        )
    }

    fn fail(&self, why: String) -> ! {
        panic!("{}: {why}", self.origin);
    }

    /// Raw bytes from the stranger, decoded and handed to the core as the driver does; its own
    /// answers are taken and dropped (it is checked only in that nothing it sends reaches the
    /// case's devices, nor breaks their invariants).
    fn stranger_writes(&mut self) {
        if self.stranger.as_ref().is_none_or(|(id, ..)| {
            self.sim.closed(*id).is_some() || !self.sim.clients.contains_key(id)
        }) {
            if let Some((id, ..)) = self.stranger.take() {
                self.sim.disconnect(id);
            }
            let id = self.sim.connect_in(STRANGER, STRANGER_NETWORK);
            self.stranger = Some((id, Decoder::new(4096), BytesMut::new()));
        }
        let n = self.choose.range(1, 64) as usize;
        let bytes = self.choose.bytes(n);
        let Some((id, decoder, buf)) = self.stranger.as_mut() else {
            return;
        };
        let id = *id;
        buf.extend_from_slice(&bytes);
        loop {
            match decoder.decode(buf) {
                Ok(Some(Decoded::Frame(f))) => self.sim.input(id, f),
                Ok(Some(Decoded::OversizedSend { msg_id, len })) => {
                    self.sim.core.handle_oversized(id, msg_id, len)
                }
                Ok(None) => break,
                Err(e) => {
                    self.sim
                        .core
                        .handle_input_error(id, e.code(), e.to_string());
                    break;
                }
            }
        }
        while self.sim.step() {}
        self.sim.take(id);
    }

    /// Take and check everything written to every connection.
    fn collect(&mut self) {
        let now = self.sim.now_ms;
        let keys: Vec<DeviceKey> = self.devices.keys().copied().collect();
        for key in keys {
            let Some(conn) = self.devices[&key].conn else {
                continue;
            };
            for f in self.sim.take(conn) {
                match f {
                    Frame::Deliver(d) => self.delivered(
                        key,
                        d.meta.seq,
                        d.meta.msg_id.as_u128(),
                        d.meta.expires_at_ms,
                        now,
                    ),
                    Frame::Accepted(a) => {
                        if let Some(s) = self.sent.get_mut(&a.msg_id.as_u128()) {
                            s.accepted = true;
                        }
                    }
                    Frame::Error(e) => self.fail(format!("{key:?} refused: {e:?}")),
                    _ => {}
                }
            }
        }
    }

    fn delivered(&mut self, key: DeviceKey, seq: u64, msg: u128, expires: u64, now: u64) {
        if expires <= now {
            self.fail(format!("{key:?} got msg {msg} after its expiry"));
        }
        if seq == 0 {
            return; // ephemeral
        }
        let Some(s) = self.sent.get(&msg).cloned() else {
            self.fail(format!("{key:?} got unknown msg {msg}"));
        };
        if !s.to.contains(&key) {
            self.fail(format!("{key:?} got msg {msg} addressed to {:?}", s.to));
        }
        let d = self.devices.get_mut(&key).expect("known device");
        if let Some(&(last_seq, last_msg)) = d.epoch.last() {
            if seq <= last_seq {
                self.fail(format!("{key:?}: seq {seq} after {last_seq} in one epoch"));
            }
            let last_order = self.sent[&last_msg].order;
            if s.order < last_order && !s.retried_late {
                self.fail(format!("{key:?}: msg {msg} after later msg {last_msg}"));
            }
        }
        let d = self.devices.get_mut(&key).expect("known device");
        if d.acked_written.contains(&seq) {
            self.fail(format!(
                "{key:?}: seq {seq} again after its ack was written"
            ));
        }
        if !d.seen.insert(msg) && !s.retried_late {
            // A second copy without a late retry: only a redelivery in a new epoch is fine.
            if d.epoch.iter().any(|(_, m)| *m == msg) {
                self.fail(format!("{key:?}: msg {msg} twice in one epoch"));
            }
        }
        d.epoch.push((seq, msg));
        d.unacked.push(seq);
    }

    fn op(&mut self) {
        match self.choose.range(0, 99) {
            0..=39 => {
                let from = self.key();
                let to_account = self.choose.range(1, ACCOUNTS);
                let to_device = if self.choose.chance(50) {
                    0
                } else {
                    self.choose.range(1, u64::from(DEVICES)) as u32
                };
                let Some(conn) = self.devices[&from].conn else {
                    return;
                };
                let to: Vec<DeviceKey> = (1..=DEVICES)
                    .filter(|d| to_device == 0 || *d == to_device)
                    .map(|d| DeviceKey::new(to_account, d))
                    .filter(|k| *k != from)
                    .collect();
                if to.is_empty() {
                    return;
                }
                let ephemeral = self.choose.chance(10);
                let ttl = if self.choose.chance(20) { 2 } else { 3600 };
                let msg = self.next_msg;
                self.next_msg += 1;
                self.sends += 1;
                let f = if ephemeral { flags::EPHEMERAL } else { 0 };
                let target = DeviceKey::new(to_account, to_device);
                self.sent.insert(
                    msg,
                    Sent {
                        to: if ephemeral { Vec::new() } else { to },
                        order: self.sends,
                        expires_at_ms: self.sim.now_ms + ttl * 1000,
                        accepted: false,
                        retried_late: false,
                        again: (from, target, f, ttl as u32),
                    },
                );
                self.sim.send_with(
                    conn,
                    DeviceKey::new(to_account, to_device),
                    msg,
                    f,
                    ttl as u32,
                    b"payload",
                );
            }
            40..=59 => {
                let key = self.key();
                let d = &self.devices[&key];
                let (Some(conn), false) = (d.conn, d.unacked.is_empty()) else {
                    return;
                };
                let n = self.choose.range(1, d.unacked.len() as u64) as usize;
                let d = self.devices.get_mut(&key).expect("known");
                let seqs: Vec<u64> = d.unacked.drain(..n).collect();
                for s in &seqs {
                    let msg = d.epoch.iter().find(|(q, _)| q == s).expect("delivered").1;
                    d.acked.insert(*s, msg);
                }
                self.sim.ack(conn, seqs);
            }
            60..=67 => {
                let key = self.key();
                if let Some(conn) = self.devices.get_mut(&key).and_then(|d| d.conn.take()) {
                    self.sim.disconnect(conn);
                }
            }
            68..=77 => {
                let key = self.key();
                if self.devices[&key].conn.is_none() {
                    let conn = self.sim.connect(key);
                    let d = self.devices.get_mut(&key).expect("known");
                    d.conn = Some(conn);
                    d.epoch.clear();
                    d.unacked.clear();
                }
            }
            78..=92 => {
                self.sim.commit();
            }
            93..=95 => self.sim.advance(self.choose.range(1, 1499)),
            96 => self.stranger_writes(),
            _ => {
                // Retry an earlier durable message from its sender's connection, as a client
                // does when it lost the answer. Its first copy may be committed already.
                if self.next_msg <= 1 {
                    return;
                }
                let msg = u128::from(self.choose.range(1, self.next_msg as u64 - 1));
                let s = self.sent.get_mut(&msg).expect("sent");
                let (from, target, f, ttl) = s.again;
                if s.to.is_empty() || s.expires_at_ms <= self.sim.now_ms + 1000 {
                    return;
                }
                let Some(conn) = self.devices[&from].conn else {
                    return;
                };
                s.retried_late = true;
                self.sim.send_with(conn, target, msg, f, ttl, b"payload");
            }
        }
    }

    /// Drain everything: commit all writes, record which acks are written.
    fn settle(&mut self) {
        loop {
            // What the node writes is taken before the clock moves (to the core's next
            // timeout): a frame is checked against the time it was written.
            while self.sim.step() {}
            self.collect();
            if !self.sim.commit() && !self.sim.fire_timeout() {
                break;
            }
        }
        for d in self.devices.values_mut() {
            let written: Vec<u64> = d.acked.keys().copied().collect();
            d.acked_written.extend(written);
        }
    }

    fn run(mut self, ops: usize) {
        for _ in 0..ops {
            if self.choose.exhausted() {
                break;
            }
            self.op();
            // Everything the node writes is taken before the clock moves again.
            while self.sim.step() {}
            self.collect();
            if self.choose.chance(5) {
                self.settle();
            }
        }
        // The end: everyone connects and reads everything, acking as it goes.
        self.settle();
        let keys: Vec<DeviceKey> = self.devices.keys().copied().collect();
        for key in &keys {
            if let Some(conn) = self.devices.get_mut(key).and_then(|d| d.conn.take()) {
                self.sim.disconnect(conn);
            }
            let conn = self.sim.connect(*key);
            let d = self.devices.get_mut(key).expect("known");
            d.conn = Some(conn);
            d.epoch.clear();
            d.unacked.clear();
        }
        let mut final_epoch: HashMap<DeviceKey, BTreeSet<u128>> = HashMap::new();
        for _ in 0..1000 {
            self.settle();
            let mut acked_any = false;
            for key in &keys {
                let d = self.devices.get_mut(key).expect("known");
                final_epoch
                    .entry(*key)
                    .or_default()
                    .extend(d.epoch.iter().map(|(_, m)| *m));
                if !d.unacked.is_empty() {
                    let seqs: Vec<u64> = std::mem::take(&mut d.unacked);
                    for s in &seqs {
                        let msg = d.epoch.iter().find(|(q, _)| q == s).expect("delivered").1;
                        d.acked.insert(*s, msg);
                    }
                    let conn = d.conn.expect("connected");
                    self.sim.ack(conn, seqs);
                    acked_any = true;
                }
            }
            if !acked_any {
                break;
            }
        }
        let now = self.sim.now_ms;
        for (msg, s) in &self.sent {
            if !s.accepted || s.expires_at_ms <= now {
                continue;
            }
            for key in &s.to {
                let d = &self.devices[key];
                let acked_before = d.acked.values().any(|m| m == msg);
                if !acked_before && !final_epoch[key].contains(msg) {
                    self.fail(format!("accepted msg {msg} never reached {key:?}"));
                }
            }
        }
    }
}

#[test]
fn random_interleavings_keep_the_delivery_invariants() {
    use rand::SeedableRng;
    let seeds: Vec<u64> = match std::env::var("HEARTH_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("a seed")],
        Err(_) => (0..200).collect(),
    };
    for seed in seeds {
        Case::new(
            Choices::Seeded(Box::new(StdRng::seed_from_u64(seed))),
            format!("seed {seed}"),
        )
        .run(300);
    }
}

/// One fuzz input as a case (router/fuzz's `core` target): its bytes choose every step. Panics
/// when an invariant breaks.
#[cfg_attr(not(feature = "fuzzing"), allow(unreachable_pub))]
pub fn fuzz_case(data: &[u8]) {
    Case::new(Choices::Bytes(data), "fuzz input".to_string()).run(FUZZ_OPS);
}
