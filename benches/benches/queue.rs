//! Storage micro-benchmarks: enqueue + commit (group commit), queue drain, ack, and fan-out of
//! one payload to 1,000 devices, shared (one payload, pointer entries) or inline (a copy per
//! entry).
//!
//! `stored_acked` is the routing core's path: `Store::write` of envelopes with their dedup
//! identity, then their acks, then a sweep once everything expired (the whole life of an
//! envelope a device fetched from its queue).
//!
//! `cargo bench -p hearth-benches --bench queue`. Each group is kept short: the machine has
//! two cores shared with other work. Sync figures measure this disk's fsync more than our code.

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hearth_protocol::MessageId;
use hearth_storage::{
    DeviceKey, Durability, EntryWrite, SendWrite, SharedRecipient, Store, StoreOptions,
    StoredEnvelope, WriteSet,
};

const PAYLOAD: usize = 512;
const BATCH: usize = 64;
const DEVICES: u32 = 16;
const DRAIN: u64 = 1_000;
const FANOUT: u32 = 1_000;

fn open(dir: &tempfile::TempDir, durability: Durability) -> Store {
    let opts = StoreOptions {
        durability,
        max_queue_len: u64::MAX,
        max_queue_bytes: u64::MAX,
        ..StoreOptions::default()
    };
    Store::open(dir.path(), opts).unwrap()
}

fn device(i: u32) -> DeviceKey {
    DeviceKey::new(1_000 + u64::from(i), 1)
}

fn register(rt: &tokio::runtime::Runtime, store: &Store) {
    for i in 0..DEVICES {
        rt.block_on(store.register_device(device(i), 1)).unwrap();
    }
}

fn envelope(n: u128) -> StoredEnvelope {
    StoredEnvelope {
        msg_id: MessageId::from_u128(n),
        from_account: 1,
        from_device: 1,
        accepted_at_ms: 1_700_000_000_000,
        expires_at_ms: 1_700_000_000_000 + 86_400_000,
        flags: 0,
        payload: Bytes::from(vec![0xa5; PAYLOAD]),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// BATCH concurrent enqueues (one envelope each, to one of DEVICES queues), then every commit.
fn enqueue_commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("enqueue_commit");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, durability) in [("none", Durability::None), ("sync", Durability::Sync)] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, durability);
        let rt = rt();
        register(&rt, &store);
        let mut n = 0u128;
        g.bench_function(format!("{name}/batch{BATCH}"), |b| {
            b.iter(|| {
                let commits: Vec<_> = (0..BATCH)
                    .map(|i| {
                        n += 1;
                        let d = device(i as u32 % DEVICES);
                        store.enqueue(&[d], &envelope(n), None).unwrap().commit
                    })
                    .collect();
                rt.block_on(async {
                    for c in commits {
                        c.await.unwrap();
                    }
                });
            })
        });
        store.close();
    }
    g.finish();
}

/// Reads a queue of DRAIN entries from the start in pages of 100, as a reconnecting device does.
fn read_queue_drain(c: &mut Criterion) {
    let mut g = c.benchmark_group("read_queue");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(DRAIN));
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, Durability::None);
    let rt = rt();
    register(&rt, &store);
    let d = device(0);
    let commits: Vec<_> = (0..DRAIN)
        .map(|i| {
            store
                .enqueue(&[d], &envelope(i.into()), None)
                .unwrap()
                .commit
        })
        .collect();
    rt.block_on(async {
        for c in commits {
            c.await.unwrap();
        }
    });
    g.bench_function(format!("drain{DRAIN}/page100"), |b| {
        b.iter(|| {
            let mut from = 0;
            let mut n = 0;
            loop {
                let page = store.read_queue(d, from, 100).unwrap();
                let Some(last) = page.last() else { break };
                from = last.seq + 1;
                n += page.len();
            }
            assert_eq!(n as u64, DRAIN);
        })
    });
    g.finish();
    store.close();
}

/// Fills one queue with BATCH committed entries (setup, not timed); returns their seqs.
fn fill(rt: &tokio::runtime::Runtime, store: &Store, d: DeviceKey, n: &mut u128) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(BATCH);
    let mut commits = Vec::with_capacity(BATCH);
    for _ in 0..BATCH {
        *n += 1;
        let e = store.enqueue(&[d], &envelope(*n), None).unwrap();
        seqs.push(e.seqs[0].1);
        commits.push(e.commit);
    }
    rt.block_on(async {
        for c in commits {
            c.await.unwrap();
        }
    });
    seqs
}

/// Acks BATCH committed entries: in one call (an ACK frame carrying many seqs), or as BATCH
/// concurrent calls of one seq each (grouped by the writer).
fn ack(c: &mut Criterion) {
    let mut g = c.benchmark_group("ack");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(BATCH as u64));
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, Durability::None);
    let rt = rt();
    register(&rt, &store);
    let d = device(0);
    let mut n = 0u128;
    g.bench_function(format!("batch{BATCH}/one_call"), |b| {
        b.iter_batched(
            || fill(&rt, &store, d, &mut n),
            |seqs| assert_eq!(rt.block_on(store.ack(d, &seqs)).unwrap(), BATCH as u64),
            BatchSize::PerIteration,
        )
    });
    g.bench_function(format!("batch{BATCH}/concurrent_calls"), |b| {
        b.iter_batched(
            || fill(&rt, &store, d, &mut n),
            |seqs| {
                rt.block_on(async {
                    let acks: Vec<_> = seqs
                        .into_iter()
                        .map(|s| {
                            let store = store.clone();
                            tokio::spawn(async move { store.ack(d, &[s]).await })
                        })
                        .collect();
                    for a in acks {
                        assert_eq!(a.await.unwrap().unwrap(), 1);
                    }
                })
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
    store.close();
}

/// One envelope to FANOUT devices (Durability::None), enqueue + commit timed: one
/// `enqueue_shared` (payload written once, a pointer per device) against one `enqueue` of the
/// same devices (the payload copied into every entry) and against FANOUT `enqueue` calls of one
/// device each. Between iterations, untimed, a sweep deletes what was written.
fn fan_out(c: &mut Criterion) {
    let mut g = c.benchmark_group("fan_out");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(FANOUT.into()));
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, Durability::None);
    let rt = rt();
    let devices: Vec<DeviceKey> = (0..FANOUT)
        .map(|i| DeviceKey::new(100_000 + u64::from(i), 1))
        .collect();
    for d in &devices {
        rt.block_on(store.register_device(*d, 1)).unwrap();
    }
    let recipients: Vec<SharedRecipient> = devices
        .iter()
        .map(|&device| SharedRecipient {
            device,
            header: Bytes::new(),
        })
        .collect();
    let mut n = 0u128;
    for payload in [PAYLOAD, 4096] {
        let mut run = |b: &mut criterion::Bencher, how: &str| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let mut env = envelope(n);
                    env.payload = Bytes::from(vec![0xa5; payload]);
                    let start = Instant::now();
                    match how {
                        "shared" => {
                            let q = store.enqueue_shared(&recipients, &env, 7, None).unwrap();
                            rt.block_on(q.commit).unwrap();
                        }
                        "inline" => {
                            let q = store.enqueue(&devices, &env, None).unwrap();
                            rt.block_on(q.commit).unwrap();
                        }
                        _ => {
                            let commits: Vec<_> = devices
                                .iter()
                                .map(|d| store.enqueue(&[*d], &env, None).unwrap().commit)
                                .collect();
                            rt.block_on(async {
                                for c in commits {
                                    c.await.unwrap();
                                }
                            });
                        }
                    }
                    spent += start.elapsed();
                    let swept = rt
                        .block_on(store.sweep_expired(env.expires_at_ms, 2 * FANOUT as usize))
                        .unwrap();
                    assert_eq!(swept.expired.len(), FANOUT as usize);
                }
                spent
            })
        };
        for how in ["shared", "inline", "inline_calls"] {
            g.bench_function(format!("{how}/{FANOUT}/payload{payload}"), |b| run(b, how));
        }
    }
    g.finish();
    assert_eq!(store.stats().payloads, 0);
    store.close();
}

/// The whole life of stored envelopes on the core's path (Durability::None, so the CPU of the
/// writer is measured, not the disk): one `Store::write` of BATCH 1:1 envelopes (each with its
/// dedup identity, to one of DEVICES queues), or of one group envelope to GROUP devices, then
/// one write of their acks; every SWEEP_EVERY such cycles (timed too) a sweep at a time when
/// every envelope and dedup window has expired deletes what the writes left behind, if
/// anything (a sweep per cycle would mostly measure the walk over the tombstones that earlier
/// sweeps left in the old expiry index). Throughput counts envelopes (1:1) or entries (group).
fn stored_acked(c: &mut Criterion) {
    const GROUP: u32 = 100;
    const SWEEP_EVERY: u64 = 64;
    let mut g = c.benchmark_group("stored_acked");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, Durability::None);
    let rt = rt();
    register(&rt, &store);
    let members: Vec<DeviceKey> = (0..GROUP)
        .map(|i| DeviceKey::new(200_000 + u64::from(i), 1))
        .collect();
    for d in &members {
        rt.block_on(store.register_device(*d, 1)).unwrap();
    }
    let sender = DeviceKey::new(1, 1);
    let mut n = 0u128;
    let mut next_seq = std::collections::HashMap::<DeviceKey, u64>::new();
    let mut seq = move |d: DeviceKey| {
        let s = next_seq.entry(d).or_insert(1);
        *s += 1;
        *s - 1
    };
    let end = envelope(0).expires_at_ms + 24 * 3_600_000;
    let mut cycles = 0u64;
    let mut cycle = |set: WriteSet, acks: Vec<(DeviceKey, Vec<u64>)>| {
        let o = rt.block_on(store.write(set).unwrap()).unwrap();
        assert!(o
            .sends
            .iter()
            .all(|s| matches!(s, hearth_storage::SendOutcome::Written { .. })));
        let acked = rt
            .block_on(
                store
                    .write(WriteSet {
                        sends: vec![],
                        acks,
                        seen: Vec::new(),
                    })
                    .unwrap(),
            )
            .unwrap()
            .acked;
        cycles += 1;
        if cycles % SWEEP_EVERY == 0 {
            rt.block_on(store.sweep_expired(end, usize::MAX)).unwrap();
        }
        acked
    };
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function(format!("one_to_one/batch{BATCH}"), |b| {
        b.iter(|| {
            let mut set = WriteSet::default();
            let mut acks: Vec<(DeviceKey, Vec<u64>)> = Vec::new();
            for i in 0..BATCH {
                n += 1;
                let d = device(i as u32 % DEVICES);
                let s = seq(d);
                acks.push((d, vec![s]));
                set.sends.push(SendWrite {
                    env: envelope(n),
                    shared: None,
                    entries: vec![EntryWrite {
                        device: d,
                        seq: s,
                        header: Bytes::new(),
                    }],
                    dedup: Some((sender, 1)),
                });
            }
            assert_eq!(cycle(set, acks), BATCH as u64);
        })
    });
    g.throughput(Throughput::Elements(GROUP.into()));
    g.bench_function(format!("group/{GROUP}"), |b| {
        b.iter(|| {
            n += 1;
            let mut acks: Vec<(DeviceKey, Vec<u64>)> = Vec::new();
            let entries = members
                .iter()
                .map(|&device| {
                    let s = seq(device);
                    acks.push((device, vec![s]));
                    EntryWrite {
                        device,
                        seq: s,
                        header: Bytes::new(),
                    }
                })
                .collect();
            let set = WriteSet {
                sends: vec![SendWrite {
                    env: envelope(n),
                    shared: Some(9),
                    entries,
                    dedup: Some((sender, GROUP)),
                }],
                acks: vec![],
                seen: Vec::new(),
            };
            assert_eq!(cycle(set, acks), u64::from(GROUP));
        })
    });
    g.finish();
    assert_eq!(store.stats().queued, 0);
    store.close();
}

/// The criterion group (criterion's macro generates an undocumented `pub fn`).
#[allow(missing_docs)]
mod group {
    use super::*;

    criterion_group!(
        benches,
        enqueue_commit,
        read_queue_drain,
        ack,
        fan_out,
        stored_acked
    );
}

criterion_main!(group::benches);
