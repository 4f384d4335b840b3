//! RocksDB operations per stored envelope over its whole life (written by `Store::write` as the
//! routing core does, with its dedup identity; acknowledged; swept once everything expired),
//! counted from the records of the write batches (`StoreStats::batch_ops`): one put and one
//! delete per entry (and per shared payload), nothing else; a device record once per block of
//! seqs.

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use common::{env, opts, rt};
use hearth_storage::{DeviceKey, EntryWrite, SendWrite, Store, WriteSet};

const T0: u64 = 1_700_000_000_000;
const N: u64 = 1_000;
const GROUP: u32 = 100;

struct Seqs(HashMap<DeviceKey, u64>);

impl Seqs {
    fn next(&mut self, d: DeviceKey) -> u64 {
        let s = self.0.entry(d).or_insert(1);
        *s += 1;
        *s - 1
    }
}

fn ops(store: &Store) -> u64 {
    store.stats().batch_ops
}

fn write(rt: &tokio::runtime::Runtime, store: &Store, set: WriteSet) {
    rt.block_on(store.write(set).unwrap()).unwrap();
}

/// (operations to write, to ack, to sweep) per envelope.
fn one_to_one(rt: &tokio::runtime::Runtime, store: &Store) -> (f64, f64, f64) {
    let sender = DeviceKey::new(1, 1);
    let to = DeviceKey::new(2, 1);
    for d in [sender, to] {
        rt.block_on(store.register_device(d, T0)).unwrap();
    }
    let mut seqs = Seqs(HashMap::new());
    let start = ops(store);
    let mut acks = Vec::new();
    for chunk in 0..N / 50 {
        let mut set = WriteSet::default();
        for i in 0..50 {
            let seq = seqs.next(to);
            acks.push(seq);
            set.sends.push(SendWrite {
                env: env(u128::from(chunk * 50 + i), T0, 60_000, &[7; 512]),
                shared: None,
                entries: vec![EntryWrite {
                    device: to,
                    seq,
                    header: Bytes::new(),
                }],
                dedup: Some((sender, 1)),
            });
        }
        write(rt, store, set);
    }
    let written = ops(store);
    for chunk in acks.chunks(50) {
        let set = WriteSet {
            sends: vec![],
            acks: vec![(to, chunk.to_vec())],
            seen: Vec::new(),
        };
        write(rt, store, set);
    }
    let acked = ops(store);
    let s = rt
        .block_on(store.sweep_expired(T0 + 3_600_000_000, usize::MAX))
        .unwrap();
    assert!(s.expired.is_empty());
    let swept = ops(store);
    let per = |a: u64, b: u64| (b - a) as f64 / N as f64;
    (per(start, written), per(written, acked), per(acked, swept))
}

/// (operations to write, to ack, to sweep) per group envelope to GROUP devices.
fn group(rt: &tokio::runtime::Runtime, store: &Store) -> (f64, f64, f64) {
    let sender = DeviceKey::new(3, 1);
    let members: Vec<DeviceKey> = (0..GROUP)
        .map(|i| DeviceKey::new(10_000 + u64::from(i), 1))
        .collect();
    for d in members.iter().chain([&sender]) {
        rt.block_on(store.register_device(*d, T0)).unwrap();
    }
    let mut seqs = Seqs(HashMap::new());
    let rounds = 20;
    let start = ops(store);
    let mut acks: Vec<(DeviceKey, u64)> = Vec::new();
    for r in 0..rounds {
        let entries: Vec<EntryWrite> = members
            .iter()
            .map(|&device| {
                let seq = seqs.next(device);
                acks.push((device, seq));
                EntryWrite {
                    device,
                    seq,
                    header: Bytes::new(),
                }
            })
            .collect();
        let set = WriteSet {
            sends: vec![SendWrite {
                env: env(1_000_000 + r, T0, 60_000, &[9; 512]),
                shared: Some(77),
                entries,
                dedup: Some((sender, GROUP)),
            }],
            acks: vec![],
            seen: Vec::new(),
        };
        write(rt, store, set);
    }
    let written = ops(store);
    for (device, seq) in acks {
        let set = WriteSet {
            sends: vec![],
            acks: vec![(device, vec![seq])],
            seen: Vec::new(),
        };
        write(rt, store, set);
    }
    let acked = ops(store);
    rt.block_on(store.sweep_expired(T0 + 3_600_000_000, usize::MAX))
        .unwrap();
    let swept = ops(store);
    assert_eq!(store.stats().payloads, 0);
    let per = |a: u64, b: u64| (b - a) as f64 / rounds as f64;
    (per(start, written), per(written, acked), per(acked, swept))
}

#[test]
fn operations_per_stored_envelope() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    let (w, a, s) = one_to_one(&rt, &store);
    eprintln!(
        "1:1 envelope: {w} to write, {a} to ack, {s} to sweep: {}",
        w + a + s
    );
    assert_eq!((w, a, s), (1.0, 1.0, 0.0));
    let (gw, ga, gs) = group(&rt, &store);
    eprintln!(
        "group envelope to {GROUP} devices: {gw} to write, {ga} to ack, {gs} to sweep: {}",
        gw + ga + gs
    );
    let n = f64::from(GROUP);
    assert_eq!((gw, ga, gs), (n + 1.0, n + 1.0, 0.0));
}

/// The seq ceiling in a device record (registered_at_ms u64 | ceiling u64), read raw.
fn ceiling(store: &Store, d: DeviceKey) -> u64 {
    let key = [
        &d.slot().to_be_bytes()[..],
        &d.account.to_be_bytes(),
        &d.device.to_be_bytes(),
    ]
    .concat();
    let (_, _, v) = store
        .scan_all()
        .unwrap()
        .into_iter()
        .find(|(cf, k, _)| cf == "devices" && *k == key)
        .unwrap();
    u64::from_be_bytes(v[8..16].try_into().unwrap())
}

/// The device record reserves seqs by blocks: written at registration, again only by the
/// write whose seq reaches the ceiling, and with the exact next seq at a clean shutdown.
#[test]
fn device_records_are_written_once_per_block_of_seqs() {
    const BLOCK: u64 = 4096;
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    let (sender, to) = (DeviceKey::new(1, 1), DeviceKey::new(2, 1));
    rt.block_on(store.register_device(to, T0)).unwrap();
    assert_eq!(ceiling(&store, to), 1 + BLOCK);
    let send = |seq: u64| SendWrite {
        env: env(u128::from(seq), T0, 60_000, b"x"),
        shared: None,
        entries: vec![EntryWrite {
            device: to,
            seq,
            header: Bytes::new(),
        }],
        dedup: Some((sender, 1)),
    };
    let before = ops(&store);
    for first in (1..=BLOCK + 10).step_by(100) {
        let set = WriteSet {
            sends: (first..(first + 100).min(BLOCK + 11)).map(send).collect(),
            acks: vec![],
            seen: vec![],
        };
        write(&rt, &store, set);
    }
    // One put per entry, and one device record: seq 1 + BLOCK reached the ceiling.
    assert_eq!(ops(&store) - before, BLOCK + 10 + 1);
    assert_eq!(ceiling(&store, to), 2 + 2 * BLOCK);
    assert_eq!(store.queue_state(to).unwrap().next_seq, BLOCK + 11);
    store.close();
    let store = Store::open(dir.path(), opts()).unwrap();
    assert_eq!(
        ceiling(&store, to),
        BLOCK + 11,
        "exact after a clean shutdown"
    );
    assert_eq!(store.queue_state(to).unwrap().next_seq, BLOCK + 11);
}

/// User + system CPU time of this process so far, in microseconds (from /proc/self/stat).
fn cpu_us() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks * 1_000_000 / 100
}

/// CPU time (all threads of the process: the caller, the writer, RocksDB's) per stored
/// envelope over its whole life on the core's path, Durability::None, in batches of 64; a
/// sweep every 64 batches. A timing, not a test: run it by name with `--ignored --nocapture`.
#[test]
#[ignore]
fn cpu_per_stored_envelope() {
    const BATCHES: u64 = 1_500;
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let o = hearth_storage::StoreOptions {
        max_queue_len: u64::MAX,
        max_queue_bytes: u64::MAX,
        ..opts()
    };
    let store = Store::open(dir.path(), o).unwrap();
    let sender = DeviceKey::new(1, 1);
    let devices: Vec<DeviceKey> = (0..16).map(|i| DeviceKey::new(100 + i, 1)).collect();
    for d in devices.iter().chain([&sender]) {
        rt.block_on(store.register_device(*d, T0)).unwrap();
    }
    let mut seqs = Seqs(HashMap::new());
    let (cpu0, wall0, ops0) = (cpu_us(), std::time::Instant::now(), ops(&store));
    let mut n = 0u128;
    for b in 0..BATCHES {
        let mut set = WriteSet::default();
        let mut acks = Vec::new();
        for i in 0..64 {
            n += 1;
            let d = devices[i % devices.len()];
            let seq = seqs.next(d);
            acks.push((d, vec![seq]));
            set.sends.push(SendWrite {
                env: env(n, T0, 86_400_000, &[7; 512]),
                shared: None,
                entries: vec![EntryWrite {
                    device: d,
                    seq,
                    header: Bytes::new(),
                }],
                dedup: Some((sender, 1)),
            });
        }
        write(&rt, &store, set);
        write(
            &rt,
            &store,
            WriteSet {
                sends: vec![],
                acks,
                seen: Vec::new(),
            },
        );
        if b % 64 == 63 {
            rt.block_on(store.sweep_expired(T0 + 2 * 86_400_000, usize::MAX))
                .unwrap();
        }
    }
    let envelopes = BATCHES * 64;
    let cpu = cpu_us() - cpu0;
    eprintln!(
        "{envelopes} envelopes: {:.2} us CPU and {:.2} us wall each, {:.2} operations each",
        cpu as f64 / envelopes as f64,
        wall0.elapsed().as_micros() as f64 / envelopes as f64,
        (ops(&store) - ops0) as f64 / envelopes as f64
    );
}
