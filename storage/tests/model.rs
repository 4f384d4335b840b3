//! Random operation sequences applied to the store and to an in-memory model, compared after
//! every step, with close-and-reopen steps in between (the habit of sled's tests/tree).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use hearth_protocol::{slot_of, MessageId};
use hearth_storage::{
    DedupRecord, DeviceKey, DeviceStats, Durability, EnqueueError, QueueEntry, Store, StoreOptions,
    StoredEnvelope, SweepStats,
};
use proptest::collection::vec;
use proptest::prelude::*;

const ACCOUNTS: [u64; 2] = [7, 1 << 40];
const DEVICES: usize = 6;
const MAX_LEN: u64 = 4;
const MAX_BYTES: u64 = 100;
const WINDOW: u64 = 2_000;

fn dev(i: u8) -> DeviceKey {
    let i = i as usize % DEVICES;
    DeviceKey::new(ACCOUNTS[i / 3], (i % 3) as u32 + 1)
}

fn all_devices() -> impl Iterator<Item = DeviceKey> {
    (0..DEVICES as u8).map(dev)
}

#[derive(Clone, Debug)]
enum Op {
    Register(u8),
    Enqueue {
        to: Vec<u8>,
        len: u8,
        ttl: u16,
        dedup: Option<(u8, u8)>,
    },
    Ack {
        dev: u8,
        picks: Vec<u16>,
    },
    Sweep {
        advance: u16,
        max: u8,
    },
    Remove(u8),
    Read {
        dev: u8,
        from: u8,
        max: u8,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => any::<u8>().prop_map(Op::Register),
        6 => (vec(any::<u8>(), 0..4), 0u8..40, 1u16..4000, proptest::option::of((any::<u8>(), 0u8..6)))
            .prop_map(|(to, len, ttl, dedup)| Op::Enqueue { to, len, ttl, dedup }),
        3 => (any::<u8>(), vec(any::<u16>(), 0..5)).prop_map(|(dev, picks)| Op::Ack { dev, picks }),
        2 => (0u16..3000, 1u8..8).prop_map(|(advance, max)| Op::Sweep { advance, max }),
        1 => any::<u8>().prop_map(Op::Remove),
        1 => (any::<u8>(), 0u8..12, 0u8..4).prop_map(|(dev, from, max)| Op::Read { dev, from, max }),
        1 => Just(Op::Reopen),
    ]
}

struct MDevice {
    registered_at_ms: u64,
    next_seq: u64,
    queue: BTreeMap<u64, StoredEnvelope>,
}

impl MDevice {
    fn stats(&self, key: DeviceKey) -> DeviceStats {
        DeviceStats {
            key,
            slot: slot_of(key.account),
            queued: self.queue.len() as u64,
            bytes: self.queue.values().map(|e| e.payload.len() as u64).sum(),
            next_seq: self.next_seq,
            registered_at_ms: self.registered_at_ms,
        }
    }
}

/// An expiry index entry, ordered like the store's expiry keys:
/// (expires, kind, slot, account, device, seq or msg id).
type IndexEntry = (u64, u8, u16, u64, u32, u128);

fn index_entry(expires: u64, kind: u8, d: DeviceKey, x: u128) -> IndexEntry {
    (expires, kind, slot_of(d.account), d.account, d.device, x)
}

struct Model {
    now: u64,
    devices: BTreeMap<DeviceKey, MDevice>,
    dedup: BTreeMap<(DeviceKey, u128), (DedupRecord, u64)>,
    index: BTreeSet<IndexEntry>,
    next_msg: u128,
}

impl Model {
    fn enqueue(
        &mut self,
        to: &[DeviceKey],
        env: &StoredEnvelope,
    ) -> Result<Vec<(DeviceKey, u64)>, EnqueueError> {
        let mut wanted: BTreeMap<DeviceKey, u64> = BTreeMap::new();
        for d in to {
            let Some(md) = self.devices.get(d) else {
                return Err(EnqueueError::UnknownDevice { device: *d });
            };
            let n = wanted.entry(*d).or_default();
            *n += 1;
            let st = md.stats(*d);
            if st.queued + *n > MAX_LEN || st.bytes + *n * env.payload.len() as u64 > MAX_BYTES {
                return Err(EnqueueError::QueueFull { device: *d });
            }
        }
        let mut seqs = Vec::new();
        for d in to {
            let md = self.devices.get_mut(d).unwrap();
            let seq = md.next_seq;
            md.next_seq += 1;
            md.queue.insert(seq, env.clone());
            self.index
                .insert(index_entry(env.expires_at_ms, 0, *d, seq as u128));
            seqs.push((*d, seq));
        }
        Ok(seqs)
    }

    fn sweep(&mut self, max: usize) -> SweepStats {
        let now = self.now;
        let due: Vec<IndexEntry> = self
            .index
            .iter()
            .take_while(|e| e.0 <= now)
            .take(max)
            .copied()
            .collect();
        let mut stats = SweepStats {
            scanned: due.len() as u64,
            ..SweepStats::default()
        };
        for e in due {
            self.index.remove(&e);
            let (_, kind, _, account, device, x) = e;
            let d = DeviceKey::new(account, device);
            if kind == 0 {
                let seq = x as u64;
                if let Some(md) = self.devices.get_mut(&d) {
                    if md
                        .queue
                        .get(&seq)
                        .is_some_and(|env| env.expires_at_ms <= now)
                    {
                        md.queue.remove(&seq);
                        stats.expired.push((d, seq));
                    }
                }
            } else if self.dedup.get(&(d, x)).is_some_and(|r| r.1 <= now) {
                self.dedup.remove(&(d, x));
                stats.dedup_removed += 1;
            }
        }
        stats
    }
}

fn open(path: &std::path::Path) -> Store {
    let opts = StoreOptions {
        durability: Durability::None,
        max_queue_len: MAX_LEN,
        max_queue_bytes: MAX_BYTES,
        dedup_window_ms: WINDOW,
    };
    Store::open(path, opts).unwrap()
}

fn check(store: &Store, m: &Model) {
    let mut total = (0, 0, 0);
    for d in all_devices() {
        let queue = store.read_queue(d, 0, usize::MAX).unwrap();
        let want: Vec<QueueEntry> = m
            .devices
            .get(&d)
            .map(|md| {
                md.queue
                    .iter()
                    .map(|(s, e)| QueueEntry {
                        seq: *s,
                        envelope: e.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(queue, want, "queue of {d:?}");
        let want = m.devices.get(&d).map(|md| md.stats(d));
        assert_eq!(store.device_stats(d).unwrap(), want, "stats of {d:?}");
        if let Some(st) = want {
            total.0 += 1;
            total.1 += st.queued;
            total.2 += st.bytes;
        }
    }
    for account in ACCOUNTS {
        let want: Vec<u32> = m
            .devices
            .keys()
            .filter(|d| d.account == account)
            .map(|d| d.device)
            .collect();
        assert_eq!(store.devices(account).unwrap(), want);
        let want: Vec<DeviceStats> = m
            .devices
            .iter()
            .filter(|(d, _)| d.account == account)
            .map(|(d, md)| md.stats(*d))
            .collect();
        assert_eq!(store.account_stats(account).unwrap(), want);
    }
    let st = store.stats();
    assert_eq!(
        (st.devices, st.queued, st.queued_bytes),
        total,
        "store stats"
    );
    assert_eq!(st.pending_bytes, 0);
    let counts = common::counts(store);
    assert_eq!(counts["queues"], total.1, "queue keys");
    assert_eq!(counts["devices"], total.0, "device keys");
    assert_eq!(counts["dedup"], m.dedup.len() as u64, "dedup keys");
    assert_eq!(counts["expiry"], m.index.len() as u64, "expiry keys");
    for ((sender, msg), (rec, _)) in &m.dedup {
        assert_eq!(
            store
                .dedup_lookup(*sender, MessageId::from_u128(*msg))
                .unwrap(),
            Some(*rec)
        );
    }
    assert_eq!(
        store
            .dedup_lookup(dev(0), MessageId::from_u128(u128::MAX))
            .unwrap(),
        None
    );
}

fn run(ops: Vec<Op>) {
    let rt = common::rt();
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let mut m = Model {
        now: 1_000_000,
        devices: BTreeMap::new(),
        dedup: BTreeMap::new(),
        index: BTreeSet::new(),
        next_msg: 1 << 64,
    };
    for op in ops {
        match op {
            Op::Register(i) => {
                let d = dev(i);
                let new = !m.devices.contains_key(&d);
                if new {
                    let md = MDevice {
                        registered_at_ms: m.now,
                        next_seq: 1,
                        queue: BTreeMap::new(),
                    };
                    m.devices.insert(d, md);
                }
                assert_eq!(rt.block_on(store.register_device(d, m.now)).unwrap(), new);
            }
            Op::Enqueue {
                to,
                len,
                ttl,
                dedup,
            } => {
                let to: Vec<DeviceKey> = to.into_iter().map(dev).collect();
                let sender = dedup.map(|(s, _)| dev(s)).unwrap_or(dev(0));
                let msg = match dedup {
                    Some((_, id)) => id as u128,
                    None => {
                        m.next_msg += 1;
                        m.next_msg
                    }
                };
                let env = StoredEnvelope {
                    msg_id: MessageId::from_u128(msg),
                    from_account: sender.account,
                    from_device: sender.device,
                    accepted_at_ms: m.now,
                    expires_at_ms: m.now + ttl as u64,
                    flags: (msg % 3) as u8,
                    payload: Bytes::from(vec![msg as u8; len as usize]),
                };
                let want = m.enqueue(&to, &env);
                let got = store.enqueue(&to, &env, dedup.map(|_| (sender, to.len() as u64)));
                match (got, want) {
                    (Ok(got), Ok(want)) => {
                        assert_eq!(got.seqs, want);
                        rt.block_on(got.commit).unwrap();
                        if dedup.is_some() {
                            let rec = DedupRecord {
                                accepted_at_ms: m.now,
                                recipients: to.len() as u32,
                            };
                            let expires = m.now + WINDOW;
                            m.dedup.insert((sender, msg), (rec, expires));
                            m.index.insert(index_entry(expires, 1, sender, msg));
                        }
                    }
                    (Err(got), Err(want)) => assert_eq!(got, want),
                    (got, want) => panic!("enqueue: store {got:?}, model {want:?}"),
                }
            }
            Op::Ack { dev: i, picks } => {
                let d = dev(i);
                let (existing, next) = match m.devices.get(&d) {
                    Some(md) => (md.queue.keys().copied().collect::<Vec<_>>(), md.next_seq),
                    None => (Vec::new(), 1),
                };
                let seqs: Vec<u64> = picks
                    .iter()
                    .map(|p| match p % 4 {
                        0 => next + (*p as u64 % 3),
                        _ if existing.is_empty() => 0,
                        _ => existing[*p as usize % existing.len()],
                    })
                    .collect();
                let mut want = 0;
                if let Some(md) = m.devices.get_mut(&d) {
                    for s in &seqs {
                        if md.queue.remove(s).is_some() {
                            want += 1;
                        }
                    }
                }
                assert_eq!(
                    rt.block_on(store.ack(d, &seqs)).unwrap(),
                    want,
                    "ack {seqs:?}"
                );
            }
            Op::Sweep { advance, max } => {
                m.now += advance as u64;
                let want = m.sweep(max as usize);
                assert_eq!(
                    rt.block_on(store.sweep_expired(m.now, max as usize))
                        .unwrap(),
                    want
                );
            }
            Op::Remove(i) => {
                let d = dev(i);
                let want = m.devices.remove(&d).map(|md| {
                    for (seq, env) in &md.queue {
                        m.index
                            .remove(&index_entry(env.expires_at_ms, 0, d, *seq as u128));
                    }
                    md.stats(d)
                });
                assert_eq!(rt.block_on(store.remove_device(d)).unwrap(), want);
            }
            Op::Read { dev: i, from, max } => {
                let d = dev(i);
                let want: Vec<QueueEntry> = m
                    .devices
                    .get(&d)
                    .map(|md| {
                        md.queue
                            .range(from as u64..)
                            .take(max as usize)
                            .map(|(s, e)| QueueEntry {
                                seq: *s,
                                envelope: e.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                assert_eq!(
                    store.read_queue(d, from as u64, max as usize).unwrap(),
                    want
                );
            }
            Op::Reopen => {
                store.close();
                store = open(dir.path());
            }
        }
        check(&store, &m);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in vec(op(), 1..60)) {
        run(ops);
    }
}

/// A fixed sequence covering every operation, so the model test exercises each one even if
/// the random generator changes.
#[test]
fn model_fixed_sequence() {
    run(vec![
        Op::Register(0),
        Op::Register(1),
        Op::Register(0),
        Op::Enqueue {
            to: vec![0, 1, 1],
            len: 10,
            ttl: 100,
            dedup: Some((3, 1)),
        },
        Op::Enqueue {
            to: vec![1, 1],
            len: 30,
            ttl: 50,
            dedup: None,
        },
        Op::Enqueue {
            to: vec![2],
            len: 1,
            ttl: 50,
            dedup: None,
        },
        Op::Ack {
            dev: 1,
            picks: vec![1, 1, 4, 7],
        },
        Op::Reopen,
        Op::Read {
            dev: 1,
            from: 2,
            max: 2,
        },
        Op::Sweep {
            advance: 60,
            max: 2,
        },
        Op::Sweep { advance: 0, max: 7 },
        Op::Remove(0),
        Op::Register(0),
        Op::Enqueue {
            to: vec![0],
            len: 5,
            ttl: 3000,
            dedup: Some((3, 1)),
        },
        Op::Reopen,
        Op::Sweep {
            advance: 2999,
            max: 7,
        },
        Op::Sweep {
            advance: 2999,
            max: 7,
        },
    ]);
}
