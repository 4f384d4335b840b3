//! Behaviour of the store: limits, dedup, expiry, acks, removal, concurrency, reopen.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{count, counts, env, opts, rt};
use hearth_protocol::MessageId;
use hearth_storage::{DedupRecord, DeviceKey, Durability, EnqueueError, Store, StoreOptions};

const T0: u64 = 1_700_000_000_000;

fn store_with(path: &std::path::Path, o: StoreOptions) -> Store {
    Store::open(path, o).unwrap()
}

fn seqs(store: &Store, d: DeviceKey) -> Vec<u64> {
    store
        .read_queue(d, 0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| e.seq)
        .collect()
}

#[test]
fn register_is_idempotent_and_devices_are_sorted() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), opts());
    for dev in [9, 2, 5] {
        assert!(rt
            .block_on(store.register_device(DeviceKey::new(42, dev), T0 + dev as u64))
            .unwrap());
    }
    assert!(!rt
        .block_on(store.register_device(DeviceKey::new(42, 5), T0 + 99))
        .unwrap());
    assert!(rt
        .block_on(store.register_device(DeviceKey::new(43, 1), T0))
        .unwrap());
    assert_eq!(store.devices(42).unwrap(), [2, 5, 9]);
    assert_eq!(store.devices(43).unwrap(), [1]);
    assert_eq!(store.devices(44).unwrap(), Vec::<u32>::new());
    let st = store.device_stats(DeviceKey::new(42, 5)).unwrap().unwrap();
    assert_eq!(
        (st.registered_at_ms, st.next_seq, st.queued, st.bytes),
        (T0 + 5, 1, 0, 0)
    );
    assert_eq!(st.slot, hearth_protocol::slot_of(42));
    assert_eq!(store.stats().devices, 4);
    store.close();
    // Registrations are durable and counted again after reopen.
    let store = store_with(dir.path(), opts());
    assert_eq!(store.devices(42).unwrap(), [2, 5, 9]);
    assert_eq!(store.stats().devices, 4);
    assert!(!rt
        .block_on(store.register_device(DeviceKey::new(42, 9), T0))
        .unwrap());
}

#[test]
fn queue_full_is_all_or_nothing() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let o = StoreOptions {
        max_queue_len: 3,
        max_queue_bytes: 100,
        ..opts()
    };
    let store = store_with(dir.path(), o);
    let (a, b) = (DeviceKey::new(1, 1), DeviceKey::new(1, 2));
    for d in [a, b] {
        rt.block_on(store.register_device(d, T0)).unwrap();
    }
    for i in 0..3 {
        let e = store.enqueue(&[a], &env(i, T0, 1000, b"x"), None).unwrap();
        rt.block_on(e.commit).unwrap();
    }
    // `a` is full by length: nothing goes to `b` either, and no dedup record is written.
    let before = counts(&store);
    let err = store
        .enqueue(&[b, a], &env(10, T0, 1000, b"y"), Some((b, 2)))
        .unwrap_err();
    assert_eq!(err, EnqueueError::QueueFull { device: a });
    assert_eq!(counts(&store), before);
    assert_eq!(seqs(&store, b), Vec::<u64>::new());
    assert_eq!(store.device_stats(b).unwrap().unwrap().next_seq, 1);
    assert_eq!(
        store.dedup_lookup(b, MessageId::from_u128(10)).unwrap(),
        None
    );

    // By bytes: 60 + 60 > 100, counting a device listed twice.
    let err = store
        .enqueue(&[b, b], &env(11, T0, 1000, &[0; 60]), None)
        .unwrap_err();
    assert_eq!(err, EnqueueError::QueueFull { device: b });
    let e = store
        .enqueue(&[b], &env(12, T0, 1000, &[0; 60]), None)
        .unwrap();
    assert_eq!(e.seqs, [(b, 1)]);
    rt.block_on(e.commit).unwrap();
    let err = store
        .enqueue(&[b], &env(13, T0, 1000, &[0; 41]), None)
        .unwrap_err();
    assert_eq!(err, EnqueueError::QueueFull { device: b });
    let e = store
        .enqueue(&[b], &env(14, T0, 1000, &[0; 40]), None)
        .unwrap();
    rt.block_on(e.commit).unwrap();
    assert_eq!(seqs(&store, b), [1, 2]);
    assert_eq!(store.device_stats(b).unwrap().unwrap().bytes, 100);

    // Acking makes room again.
    assert_eq!(rt.block_on(store.ack(a, &[1])).unwrap(), 1);
    let e = store.enqueue(&[a], &env(15, T0, 1000, b"z"), None).unwrap();
    assert_eq!(e.seqs, [(a, 4)]);
}

#[test]
fn unknown_device_is_refused_and_nothing_stored() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), opts());
    let a = DeviceKey::new(1, 1);
    rt.block_on(store.register_device(a, T0)).unwrap();
    let ghost = DeviceKey::new(1, 2);
    let err = store
        .enqueue(&[a, ghost], &env(1, T0, 1000, b"x"), None)
        .unwrap_err();
    assert_eq!(err, EnqueueError::UnknownDevice { device: ghost });
    assert_eq!(count(&store, "queues"), 0);
    assert_eq!(store.device_stats(ghost).unwrap(), None);
    assert_eq!(store.device_stats(a).unwrap().unwrap().next_seq, 1);
    assert_eq!(rt.block_on(store.ack(ghost, &[1, 2])).unwrap(), 0);
    assert_eq!(rt.block_on(store.remove_device(ghost)).unwrap(), None);
}

#[test]
fn a_send_is_remembered_while_its_envelope_is_queued() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(
        dir.path(),
        StoreOptions {
            dedup_window_ms: 5_000,
            ..opts()
        },
    );
    let (sender, to) = (DeviceKey::new(1, 1), DeviceKey::new(2, 1));
    rt.block_on(store.register_device(to, T0)).unwrap();
    let e = store
        .enqueue(&[to], &env(77, T0, 60_000, b"hi"), Some((sender, 3)))
        .unwrap();
    rt.block_on(e.commit).unwrap();
    let rec = DedupRecord {
        accepted_at_ms: T0,
        recipients: 3,
    };
    let lookup = |store: &Store, sender, msg| {
        store
            .dedup_lookup(sender, MessageId::from_u128(msg))
            .unwrap()
    };
    assert_eq!(lookup(&store, sender, 77), Some(rec));
    // Keyed by sender device and message id.
    assert_eq!(lookup(&store, sender, 78), None);
    assert_eq!(lookup(&store, DeviceKey::new(1, 2), 77), None);
    // The envelope carries it: no record of its own.
    assert_eq!(count(&store, "dedup"), 0);
    store.close();
    let store = store_with(dir.path(), opts());
    assert_eq!(lookup(&store, sender, 77), Some(rec));
    // Past the window it is still remembered, since its envelope is still queued.
    let s = rt.block_on(store.sweep_expired(T0 + 5_000, 100)).unwrap();
    assert_eq!((s.dedup_removed, s.scanned), (0, 0));
    assert_eq!(lookup(&store, sender, 77), Some(rec));
    let retry = store
        .enqueue(
            &[to],
            &env(77, T0 + 5_000, 60_000, b"hi"),
            Some((sender, 3)),
        )
        .unwrap();
    rt.block_on(retry.commit).unwrap();
    assert_eq!(seqs(&store, to), [1], "a duplicate writes nothing");
    // Acknowledged: forgotten, and a retry is stored again.
    assert_eq!(rt.block_on(store.ack(to, &[1])).unwrap(), 1);
    assert_eq!(lookup(&store, sender, 77), None);
    let retry = store
        .enqueue(
            &[to],
            &env(77, T0 + 6_000, 60_000, b"hi"),
            Some((sender, 3)),
        )
        .unwrap();
    rt.block_on(retry.commit).unwrap();
    assert_eq!(seqs(&store, to), [3]);
    assert_eq!(
        lookup(&store, sender, 77).map(|r| r.accepted_at_ms),
        Some(T0 + 6_000)
    );
    // Expired: forgotten with its envelope.
    let s = rt.block_on(store.sweep_expired(T0 + 66_000, 100)).unwrap();
    assert_eq!(s.expired, [(to, 3)]);
    assert_eq!(lookup(&store, sender, 77), None);
    let c = counts(&store);
    assert_eq!((c["queues"], c["dedup"], c["expiry"]), (0, 0, 0));
}

#[test]
fn a_send_stored_nowhere_is_remembered_until_its_window_is_swept() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(
        dir.path(),
        StoreOptions {
            dedup_window_ms: 5_000,
            ..opts()
        },
    );
    let sender = DeviceKey::new(1, 1);
    let e = store
        .enqueue(&[], &env(77, T0, 60_000, b"hi"), Some((sender, 3)))
        .unwrap();
    rt.block_on(e.commit).unwrap();
    let rec = DedupRecord {
        accepted_at_ms: T0,
        recipients: 3,
    };
    let lookup = |store: &Store| {
        store
            .dedup_lookup(sender, MessageId::from_u128(77))
            .unwrap()
    };
    assert_eq!(lookup(&store), Some(rec));
    assert_eq!(count(&store, "dedup"), 1);
    store.close();
    let store = store_with(dir.path(), opts());
    assert_eq!(lookup(&store), Some(rec));
    let s = rt.block_on(store.sweep_expired(T0 + 4_999, 100)).unwrap();
    assert_eq!((s.dedup_removed, s.scanned), (0, 0));
    let s = rt.block_on(store.sweep_expired(T0 + 5_000, 100)).unwrap();
    assert_eq!((s.dedup_removed, s.scanned, s.expired.len()), (1, 1, 0));
    assert_eq!(lookup(&store), None);
    assert_eq!(count(&store, "dedup"), 0);
    store.close();
    let store = store_with(dir.path(), opts());
    assert_eq!(lookup(&store), None);
}

#[test]
fn seqs_are_never_reused_after_all_entries_are_acked_and_reopen() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let d = DeviceKey::new(5, 5);
    {
        let store = store_with(dir.path(), opts());
        rt.block_on(store.register_device(d, T0)).unwrap();
        for i in 0..3 {
            let e = store.enqueue(&[d], &env(i, T0, 1000, b"x"), None).unwrap();
            rt.block_on(e.commit).unwrap();
        }
        assert_eq!(rt.block_on(store.ack(d, &[1, 2, 3])).unwrap(), 3);
        assert_eq!(count(&store, "queues"), 0);
    }
    let store = store_with(dir.path(), opts());
    assert_eq!(store.device_stats(d).unwrap().unwrap().next_seq, 4);
    let e = store.enqueue(&[d], &env(9, T0, 1000, b"x"), None).unwrap();
    assert_eq!(e.seqs, [(d, 4)]);
    rt.block_on(e.commit).unwrap();
    assert_eq!(seqs(&store, d), [4]);
}

#[test]
fn expired_entries_are_deleted_from_rocksdb() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), opts());
    let (a, b) = (DeviceKey::new(1, 1), DeviceKey::new(1, 2));
    for d in [a, b] {
        rt.block_on(store.register_device(d, T0)).unwrap();
    }
    // Three short-lived envelopes to both devices, one long-lived to `a`.
    for i in 0..3 {
        let e = store
            .enqueue(&[a, b], &env(i, T0 + i as u64, 100, b"short"), None)
            .unwrap();
        rt.block_on(e.commit).unwrap();
    }
    let e = store
        .enqueue(&[a], &env(9, T0, 10_000, b"long"), None)
        .unwrap();
    rt.block_on(e.commit).unwrap();
    // `b` acks one before it expires. Nothing but the entries is stored: no expiry index.
    assert_eq!(rt.block_on(store.ack(b, &[2])).unwrap(), 1);
    let c = counts(&store);
    assert_eq!((c["queues"], c["expiry"]), (6, 0));

    // read_queue hides nothing: the caller compares expires_at_ms.
    let q = store.read_queue(a, 0, 10).unwrap();
    assert_eq!(
        q.iter()
            .map(|e| e.envelope.expires_at_ms)
            .collect::<Vec<_>>(),
        [T0 + 100, T0 + 101, T0 + 102, T0 + 10_000]
    );

    // At most 3, by device then seq.
    let s = rt.block_on(store.sweep_expired(T0 + 101, 3)).unwrap();
    assert_eq!(s.scanned, 3);
    assert_eq!(s.expired, [(a, 1), (a, 2), (b, 1)]);
    let s = rt.block_on(store.sweep_expired(T0 + 1_000, 100)).unwrap();
    assert_eq!(s.scanned, 2, "b's acked entry 2 left nothing behind");
    assert_eq!(s.expired, [(a, 3), (b, 3)]);
    assert_eq!(seqs(&store, a), [4]);
    assert_eq!(seqs(&store, b), Vec::<u64>::new());
    let c = counts(&store);
    assert_eq!((c["queues"], c["expiry"]), (1, 0));
    let st = store.stats();
    assert_eq!((st.queued, st.queued_bytes), (1, 4));
    assert_eq!(store.device_stats(b).unwrap().unwrap().queued, 0);
    // Nothing left to do; a second sweep at the same time finds nothing.
    let s = rt.block_on(store.sweep_expired(T0 + 1_000, 100)).unwrap();
    assert_eq!(s.scanned, 0);
    store.close();
    // Still gone after reopen (and after compaction, which the reopen may trigger).
    let store = store_with(dir.path(), opts());
    let c = counts(&store);
    assert_eq!((c["queues"], c["expiry"]), (1, 0));
    assert_eq!(seqs(&store, b), Vec::<u64>::new());
    // The long-lived one goes at its time, after a reopen too.
    let s = rt.block_on(store.sweep_expired(T0 + 9_999, 100)).unwrap();
    assert_eq!(s.scanned, 0);
    let s = rt.block_on(store.sweep_expired(T0 + 10_000, 100)).unwrap();
    assert_eq!(s.expired, [(a, 4)]);
    assert_eq!(count(&store, "queues"), 0);
    assert_eq!(store.stats().queued, 0);
}

#[test]
fn ack_of_unknown_or_repeated_seqs_is_harmless() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), opts());
    let d = DeviceKey::new(3, 3);
    rt.block_on(store.register_device(d, T0)).unwrap();
    for i in 0..3 {
        let e = store
            .enqueue(&[d], &env(i, T0, 1000, b"abc"), None)
            .unwrap();
        rt.block_on(e.commit).unwrap();
    }
    assert_eq!(rt.block_on(store.ack(d, &[2, 2, 99, 0])).unwrap(), 1);
    assert_eq!(rt.block_on(store.ack(d, &[2])).unwrap(), 0);
    assert_eq!(rt.block_on(store.ack(d, &[])).unwrap(), 0);
    assert_eq!(
        rt.block_on(store.ack(DeviceKey::new(3, 4), &[1])).unwrap(),
        0
    );
    assert_eq!(seqs(&store, d), [1, 3]);
    let st = store.device_stats(d).unwrap().unwrap();
    assert_eq!((st.queued, st.bytes), (2, 6));
    assert_eq!((store.stats().queued, store.stats().queued_bytes), (2, 6));
    // Acks racing each other from two tasks delete each entry once.
    let (x, y) = rt.block_on(async { tokio::join!(store.ack(d, &[1, 3]), store.ack(d, &[3, 1])) });
    assert_eq!(x.unwrap() + y.unwrap(), 2);
    assert_eq!(store.stats().queued, 0);
    assert_eq!(count(&store, "queues"), 0);
}

#[test]
fn acks_racing_their_own_enqueue_delete_each_entry_once() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(
        dir.path(),
        StoreOptions {
            durability: Durability::Sync,
            ..opts()
        },
    );
    let d = DeviceKey::new(3, 3);
    rt.block_on(store.register_device(d, T0)).unwrap();
    // Acks are submitted from other threads while enqueues are still waiting for their group,
    // so some land in the same group as the entry they delete; each is deleted exactly once.
    let mut acks = Vec::new();
    let mut commits = Vec::new();
    for i in 0..200 {
        let e = store
            .enqueue(&[d], &env(i, T0, 1000, b"abc"), None)
            .unwrap();
        let seq = e.seqs[0].1;
        commits.push(e.commit);
        if seq & 1 == 0 {
            let store = store.clone();
            acks.push(rt.spawn(async move { store.ack(d, &[seq, seq]).await }));
        }
    }
    let acked: u64 = rt.block_on(async {
        let mut n = 0;
        for a in acks {
            n += a.await.unwrap().unwrap();
        }
        for c in commits {
            c.await.unwrap();
        }
        n
    });
    assert_eq!(acked, 100);
    let left = seqs(&store, d);
    assert_eq!(left, (1..=200).filter(|s| s % 2 == 1).collect::<Vec<_>>());
    assert_eq!(store.device_stats(d).unwrap().unwrap().queued, 100);
    assert_eq!(store.stats().queued_bytes, 300);
    assert_eq!(count(&store, "queues"), 100);
}

#[test]
fn concurrent_enqueues_keep_each_device_queue_contiguous_and_in_order() {
    const THREADS: u128 = 4;
    const PER_THREAD: u128 = 250;
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(
        dir.path(),
        StoreOptions {
            durability: Durability::Sync,
            ..opts()
        },
    );
    let devices = [
        DeviceKey::new(8, 1),
        DeviceKey::new(8, 2),
        DeviceKey::new(9, 1),
    ];
    for d in devices {
        rt.block_on(store.register_device(d, T0)).unwrap();
    }
    let store = Arc::new(store);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut commits = Vec::new();
                let mut got = Vec::new();
                for i in 0..PER_THREAD {
                    let msg = t << 32 | i;
                    let e = store
                        .enqueue(&devices, &env(msg, T0, 60_000, b"p"), None)
                        .unwrap();
                    got.push((msg, e.seqs));
                    commits.push(e.commit);
                    if i % 16 == 15 {
                        commits.drain(..).try_for_each(|c| c.wait()).unwrap();
                    }
                }
                commits.into_iter().try_for_each(|c| c.wait()).unwrap();
                got
            })
        })
        .collect();
    let mut by_msg = BTreeMap::new();
    for h in handles {
        for (msg, s) in h.join().unwrap() {
            by_msg.insert(msg, s);
        }
    }
    let total = (THREADS * PER_THREAD) as u64;
    for (i, d) in devices.iter().enumerate() {
        let q = store.read_queue(*d, 0, usize::MAX).unwrap();
        // Contiguous seqs from 1, one per envelope.
        assert_eq!(
            q.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=total).collect::<Vec<_>>()
        );
        for e in &q {
            // The entry under each seq is the envelope that was given that seq.
            assert_eq!(by_msg[&e.envelope.msg_id.as_u128()][i], (*d, e.seq));
        }
        // Each thread's envelopes appear in the order it sent them.
        for t in 0..THREADS {
            let mine: Vec<u128> = q
                .iter()
                .map(|e| e.envelope.msg_id.as_u128())
                .filter(|m| m >> 32 == t)
                .collect();
            assert_eq!(
                mine,
                (0..PER_THREAD).map(|i| t << 32 | i).collect::<Vec<_>>()
            );
        }
    }
    let st = store.stats();
    assert_eq!(st.queued, total * 3);
    assert_eq!(st.pending_bytes, 0);
}

#[test]
fn remove_device_deletes_its_queue_and_record() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), opts());
    let (a, b) = (DeviceKey::new(1, 1), DeviceKey::new(1, 2));
    for d in [a, b] {
        rt.block_on(store.register_device(d, T0)).unwrap();
    }
    for i in 0..5 {
        let e = store
            .enqueue(&[a, b], &env(i, T0, 1000, b"12345678"), None)
            .unwrap();
        rt.block_on(e.commit).unwrap();
    }
    assert_eq!(rt.block_on(store.ack(a, &[1])).unwrap(), 1);
    let st = rt.block_on(store.remove_device(a)).unwrap().unwrap();
    assert_eq!(
        (
            st.key,
            st.queued,
            st.bytes,
            st.next_seq,
            st.registered_at_ms
        ),
        (a, 4, 32, 6, T0)
    );
    assert_eq!(store.devices(1).unwrap(), [2]);
    assert_eq!(store.device_stats(a).unwrap(), None);
    assert_eq!(seqs(&store, a), Vec::<u64>::new());
    assert_eq!(rt.block_on(store.remove_device(a)).unwrap(), None);
    let c = counts(&store);
    // b's 5 entries (no expiry index).
    assert_eq!((c["queues"], c["devices"], c["expiry"]), (5, 1, 0));
    assert_eq!(
        store
            .enqueue(&[a], &env(9, T0, 1000, b"x"), None)
            .unwrap_err(),
        EnqueueError::UnknownDevice { device: a }
    );
    let st = store.stats();
    assert_eq!((st.devices, st.queued, st.queued_bytes), (1, 5, 40));
    store.close();
    let store = store_with(dir.path(), opts());
    assert_eq!(store.devices(1).unwrap(), [2]);
    assert_eq!(store.stats().devices, 1);
}

#[test]
fn register_during_a_removal_waits_for_it() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(
        dir.path(),
        StoreOptions {
            durability: Durability::Sync,
            ..opts()
        },
    );
    let d = DeviceKey::new(4, 4);
    rt.block_on(store.register_device(d, T0)).unwrap();
    let e = store
        .enqueue(&[d], &env(1, T0, 1000, b"old"), None)
        .unwrap();
    // Remove and register again at once: the registration lands after the removal.
    let (removed, registered) = rt
        .block_on(async { tokio::join!(store.remove_device(d), store.register_device(d, T0 + 1)) });
    rt.block_on(e.commit).unwrap();
    assert_eq!(removed.unwrap().unwrap().queued, 1);
    assert!(registered.unwrap());
    let st = store.device_stats(d).unwrap().unwrap();
    assert_eq!(
        (st.registered_at_ms, st.queued, st.next_seq),
        (T0 + 1, 0, 1)
    );
    assert_eq!(seqs(&store, d), Vec::<u64>::new());
    assert_eq!(store.stats().devices, 1);
}

#[test]
fn close_writes_everything_submitted() {
    let dir = tempfile::tempdir().unwrap();
    let d = DeviceKey::new(6, 1);
    {
        let store = store_with(dir.path(), opts());
        rt().block_on(store.register_device(d, T0)).unwrap();
        let clone = store.clone();
        for i in 0..50 {
            // Commit futures dropped unawaited: the writes still happen.
            drop(store.enqueue(&[d], &env(i, T0, 1000, b"x"), None).unwrap());
        }
        clone.close();
        store.close();
    }
    let store = store_with(dir.path(), opts());
    assert_eq!(seqs(&store, d), (1..=50).collect::<Vec<_>>());
    let st = store.stats();
    assert_eq!((st.devices, st.queued, st.queued_bytes), (1, 50, 50));
    // A clean shutdown does not skip seqs.
    assert_eq!(store.device_stats(d).unwrap().unwrap().next_seq, 51);
}

#[test]
fn read_queue_pages_from_a_seq() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), opts());
    let (a, b) = (DeviceKey::new(1, 1), DeviceKey::new(1, 2));
    for d in [a, b] {
        rt.block_on(store.register_device(d, T0)).unwrap();
    }
    for i in 0..10u8 {
        let e = store
            .enqueue(&[a, b], &env(i.into(), T0, 1000, &[i]), None)
            .unwrap();
        rt.block_on(e.commit).unwrap();
    }
    rt.block_on(store.ack(a, &[4, 5])).unwrap();
    let page = store.read_queue(a, 3, 3).unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 6, 7]);
    assert_eq!(page[1].envelope.payload.as_ref(), [5]);
    assert_eq!(page[1].envelope.msg_id, MessageId::from_u128(5));
    assert_eq!(store.read_queue(a, 10, 100).unwrap().len(), 1);
    assert_eq!(store.read_queue(a, 11, 100).unwrap().len(), 0);
    assert_eq!(store.read_queue(a, 1, 0).unwrap().len(), 0);
    assert_eq!(store.read_queue(b, 0, 100).unwrap().len(), 10);
}

#[test]
fn sync_commits_are_counted_and_timed() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(
        dir.path(),
        StoreOptions {
            durability: Durability::Sync,
            ..opts()
        },
    );
    let d = DeviceKey::new(1, 1);
    rt.block_on(store.register_device(d, T0)).unwrap();
    let e = store
        .enqueue(&[d], &env(1, T0, 1000, &[0; 300]), None)
        .unwrap();
    rt.block_on(e.commit).unwrap();
    let st = store.stats();
    assert_eq!(st.commits, 2);
    assert!(st.fsync_max_us >= st.fsync_p99_us && st.fsync_p99_us >= st.fsync_p50_us);
    assert!(st.fsync_max_us > 0);
    assert_eq!((st.queued_bytes, st.pending_bytes), (300, 0));
}

#[test]
fn handles_and_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    fn sync<T: Send + Sync + Clone>() {}
    sync::<Store>();
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), opts());
    let d = DeviceKey::new(1, 1);
    send(&store.register_device(d, T0));
    send(&store.remove_device(d));
    send(&store.ack(d, &[1]));
    send(&store.sweep_expired(T0, 1));
}

/// A store written by the previous layout (an expiry index, a dedup record per send, device
/// records holding the exact next seq) opens: the index is deleted, the dedup records are kept
/// as records of their own until their window ends, entries expire at their time.
#[test]
fn data_of_the_previous_layout_opens() {
    use rocksdb::{ColumnFamilyDescriptor, Options, DB};
    let dir = tempfile::tempdir().unwrap();
    let (sender, d) = (DeviceKey::new(1, 1), DeviceKey::new(2, 1));
    let prefix = |d: DeviceKey| {
        [
            &d.slot().to_be_bytes()[..],
            &d.account.to_be_bytes(),
            &d.device.to_be_bytes(),
        ]
        .concat()
    };
    let envelope = |msg: u128, expires: u64| {
        let mut v = vec![1u8];
        v.extend_from_slice(&msg.to_be_bytes());
        v.extend_from_slice(&1u64.to_be_bytes());
        v.extend_from_slice(&1u32.to_be_bytes());
        v.extend_from_slice(&T0.to_be_bytes());
        v.extend_from_slice(&expires.to_be_bytes());
        v.push(0);
        v.extend_from_slice(b"old");
        v
    };
    {
        let mut o = Options::default();
        o.create_if_missing(true);
        o.create_missing_column_families(true);
        let names = [
            "queues",
            "devices",
            "dedup",
            "expiry",
            "groups",
            "members",
            "payloads",
            "accounts",
            "lists",
            "push",
            "memberships",
        ];
        let cfs = names.map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = DB::open_cf_descriptors(&o, dir.path(), cfs).unwrap();
        let cf = |n: &str| db.cf_handle(n).unwrap();
        let record = [T0.to_be_bytes(), 3u64.to_be_bytes()].concat();
        db.put_cf(cf("devices"), prefix(d), record).unwrap();
        let mut index = Vec::new();
        for (seq, expires) in [(1u64, T0 + 100), (2, T0 + 10_000)] {
            let key = [prefix(d), seq.to_be_bytes().to_vec()].concat();
            db.put_cf(cf("queues"), &key, envelope(u128::from(seq), expires))
                .unwrap();
            index.push([&expires.to_be_bytes()[..], &[0], &key].concat());
        }
        let dedup_key = [prefix(sender), 1u128.to_be_bytes().to_vec()].concat();
        let expires = T0 + 60_000;
        let value = [
            &T0.to_be_bytes()[..],
            &1u32.to_be_bytes(),
            &expires.to_be_bytes(),
        ]
        .concat();
        db.put_cf(cf("dedup"), &dedup_key, value).unwrap();
        index.push([&expires.to_be_bytes()[..], &[1], &dedup_key].concat());
        for k in index {
            db.put_cf(cf("expiry"), k, []).unwrap();
        }
        db.put(b"hearth-clean-shutdown", []).unwrap();
    }
    let rt = rt();
    let store = store_with(dir.path(), opts());
    let c = counts(&store);
    assert_eq!((c["queues"], c["dedup"], c["expiry"]), (2, 1, 0));
    assert_eq!(store.queue_state(d).unwrap().next_seq, 3);
    let rec = DedupRecord {
        accepted_at_ms: T0,
        recipients: 1,
    };
    let lookup = |store: &Store| store.dedup_lookup(sender, MessageId::from_u128(1)).unwrap();
    assert_eq!(lookup(&store), Some(rec));
    let s = rt.block_on(store.sweep_expired(T0 + 100, 10)).unwrap();
    assert_eq!((s.expired, s.dedup_removed), (vec![(d, 1)], 0));
    // The record outlives its envelope (it has no copy to go with), until its window ends.
    assert_eq!(lookup(&store), Some(rec));
    let e = store
        .enqueue(&[d], &env(1, T0 + 200, 1_000, b"retry"), Some((sender, 1)))
        .unwrap();
    rt.block_on(e.commit).unwrap();
    assert_eq!(seqs(&store, d), [2], "a duplicate");
    let s = rt.block_on(store.sweep_expired(T0 + 60_000, 10)).unwrap();
    assert_eq!((s.expired, s.dedup_removed), (vec![(d, 2)], 1));
    assert_eq!(lookup(&store), None);
    let c = counts(&store);
    assert_eq!((c["queues"], c["dedup"], c["expiry"]), (0, 0, 0));
    // The old entries' seqs are not given again.
    let e = store
        .enqueue(&[d], &env(9, T0, 1_000, b"new"), None)
        .unwrap();
    assert_eq!(e.seqs, [(d, 4)]);
}
