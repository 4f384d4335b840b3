//! `Store::write`, the routing core's path: caller-chosen seqs, outcomes, dedup decided in
//! order within and across writes, acks in the same write, sends stored nowhere, and expiry of
//! queues whose expiries do not grow along the queue.

mod common;

use bytes::Bytes;
use common::{count, counts, env, opts, rt};
use hearth_protocol::MessageId;
use hearth_storage::{
    DedupRecord, DeviceKey, EntryWrite, SendOutcome, SendWrite, Store, StoreOptions,
    StoredEnvelope, WriteOutcome, WriteSet,
};

const T0: u64 = 1_700_000_000_000;

fn write(store: &Store, set: WriteSet) -> WriteOutcome {
    rt().block_on(store.write(set).unwrap()).unwrap()
}

fn entry(device: DeviceKey, seq: u64) -> EntryWrite {
    EntryWrite {
        device,
        seq,
        header: Bytes::new(),
    }
}

fn inline(e: StoredEnvelope, entries: Vec<EntryWrite>, sender: DeviceKey) -> SendWrite {
    let n = entries.len() as u32;
    SendWrite {
        env: e,
        shared: None,
        entries,
        dedup: Some((sender, n)),
    }
}

fn seqs(store: &Store, d: DeviceKey) -> Vec<u64> {
    let q = store.read_queue(d, 0, usize::MAX).unwrap();
    q.into_iter().map(|e| e.seq).collect()
}

const WRITTEN: SendOutcome = SendOutcome::Written { skipped: 0 };

#[test]
fn duplicates_are_decided_in_order_and_acks_apply_after_the_sends() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    let (sender, a, b) = (
        DeviceKey::new(1, 1),
        DeviceKey::new(2, 1),
        DeviceKey::new(2, 2),
    );
    for d in [a, b] {
        rt().block_on(store.register_device(d, T0)).unwrap();
    }
    let first = DedupRecord {
        accepted_at_ms: T0,
        recipients: 2,
    };
    // The same identity twice in one write: the second is a duplicate of the first. A device
    // not registered is skipped. The ack of a's entry applies after the sends.
    let ghost = DeviceKey::new(3, 1);
    let o = write(
        &store,
        WriteSet {
            sends: vec![
                inline(
                    env(7, T0, 60_000, b"one"),
                    vec![entry(a, 1), entry(b, 1)],
                    sender,
                ),
                inline(env(7, T0 + 1, 60_000, b"two"), vec![entry(a, 2)], sender),
                inline(
                    env(8, T0, 60_000, b"three"),
                    vec![entry(a, 3), entry(ghost, 1)],
                    sender,
                ),
            ],
            acks: vec![(a, vec![1, 99])],
            seen: Vec::new(),
        },
    );
    assert_eq!(
        o,
        WriteOutcome {
            sends: vec![
                WRITTEN,
                SendOutcome::Duplicate(first),
                SendOutcome::Written { skipped: 1 }
            ],
            acked: 1,
        }
    );
    assert_eq!(seqs(&store, a), [3]);
    assert_eq!(seqs(&store, b), [1]);
    // Seqs given to the duplicate are never given again.
    assert_eq!(store.queue_state(a).unwrap().next_seq, 4);
    // Still queued for b: still remembered, in a later write too.
    let o = write(
        &store,
        WriteSet {
            sends: vec![inline(
                env(7, T0 + 9, 60_000, b"again"),
                vec![entry(a, 4)],
                sender,
            )],
            acks: vec![],
            seen: Vec::new(),
        },
    );
    assert_eq!(o.sends, [SendOutcome::Duplicate(first)]);
    // b acks it, in the same write as a retry: the retry comes first, so it is a duplicate;
    // the next one is stored.
    let retry = |seq| {
        inline(
            env(7, T0 + 10, 60_000, b"again"),
            vec![entry(a, seq)],
            sender,
        )
    };
    let o = write(
        &store,
        WriteSet {
            sends: vec![retry(5)],
            acks: vec![(b, vec![1])],
            seen: Vec::new(),
        },
    );
    assert_eq!((o.sends[0], o.acked), (SendOutcome::Duplicate(first), 1));
    assert_eq!(
        store.dedup_lookup(sender, MessageId::from_u128(7)).unwrap(),
        None
    );
    let o = write(
        &store,
        WriteSet {
            sends: vec![retry(6)],
            acks: vec![],
            seen: Vec::new(),
        },
    );
    assert_eq!(o.sends, [WRITTEN]);
    assert_eq!(seqs(&store, a), [3, 6]);
    let rec = store.dedup_lookup(sender, MessageId::from_u128(7)).unwrap();
    assert_eq!(rec.map(|r| r.accepted_at_ms), Some(T0 + 10));
    // Nothing but the entries and the device records.
    let c = counts(&store);
    assert_eq!(
        (c["queues"], c["dedup"], c["expiry"], c["devices"]),
        (2, 0, 0, 2)
    );
}

#[test]
fn a_send_whose_every_entry_is_skipped_is_stored_nowhere_and_remembered_for_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let o = StoreOptions {
        dedup_window_ms: 1_000,
        ..opts()
    };
    let store = Store::open(dir.path(), o).unwrap();
    let (sender, a, gone) = (
        DeviceKey::new(1, 1),
        DeviceKey::new(2, 1),
        DeviceKey::new(4, 1),
    );
    rt().block_on(store.register_device(a, T0)).unwrap();
    let send = |accepted| inline(env(5, accepted, 60_000, b"x"), vec![entry(gone, 1)], sender);
    let o = write(
        &store,
        WriteSet {
            sends: vec![send(T0)],
            acks: vec![],
            seen: Vec::new(),
        },
    );
    assert_eq!(o.sends, [SendOutcome::Written { skipped: 1 }]);
    assert_eq!(count(&store, "dedup"), 1);
    let rec = DedupRecord {
        accepted_at_ms: T0,
        recipients: 1,
    };
    // Within the window: a duplicate, even to a device that exists.
    let o = write(
        &store,
        WriteSet {
            sends: vec![inline(
                env(5, T0 + 999, 60_000, b"x"),
                vec![entry(a, 1)],
                sender,
            )],
            acks: vec![],
            seen: Vec::new(),
        },
    );
    assert_eq!(o.sends, [SendOutcome::Duplicate(rec)]);
    // Past it (swept or not), stored; then remembered by its envelope.
    let o = write(
        &store,
        WriteSet {
            sends: vec![inline(
                env(5, T0 + 1_000, 60_000, b"x"),
                vec![entry(a, 2)],
                sender,
            )],
            acks: vec![],
            seen: Vec::new(),
        },
    );
    assert_eq!(o.sends, [WRITTEN]);
    let s = rt().block_on(store.sweep_expired(T0 + 1_000, 10)).unwrap();
    assert_eq!((s.dedup_removed, s.expired.len()), (1, 0));
    assert_eq!(count(&store, "dedup"), 0);
    let found = store.dedup_lookup(sender, MessageId::from_u128(5)).unwrap();
    assert_eq!(found.map(|r| r.accepted_at_ms), Some(T0 + 1_000));
}

#[test]
fn queues_whose_expiries_do_not_grow_are_swept_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    let (sender, a, b) = (
        DeviceKey::new(1, 1),
        DeviceKey::new(2, 1),
        DeviceKey::new(3, 1),
    );
    for d in [a, b] {
        rt().block_on(store.register_device(d, T0)).unwrap();
    }
    // a: expiries 1000, 100, 500, 2000 along the queue. b: seqs written out of order.
    let mut sends = Vec::new();
    for (i, (seq, ttl)) in [(1, 1_000), (2, 100), (3, 500), (4, 2_000)]
        .iter()
        .enumerate()
    {
        sends.push(inline(
            env(i as u128, T0, *ttl, b"a"),
            vec![entry(a, *seq)],
            sender,
        ));
    }
    for (i, (seq, ttl)) in [(10, 1_000), (5, 100)].iter().enumerate() {
        sends.push(inline(
            env(10 + i as u128, T0, *ttl, b"b"),
            vec![entry(b, *seq)],
            sender,
        ));
    }
    let o = write(
        &store,
        WriteSet {
            sends,
            acks: vec![],
            seen: Vec::new(),
        },
    );
    assert!(o.sends.iter().all(|s| *s == WRITTEN));
    let sweep = |now| {
        rt().block_on(store.sweep_expired(T0 + now, 100))
            .unwrap()
            .expired
    };
    assert_eq!(sweep(99), []);
    assert_eq!(sweep(100), [(a, 2), (b, 5)]);
    assert_eq!(sweep(100), []);
    assert_eq!(sweep(500), [(a, 3)]);
    store.close();
    // After a reopen, the state is rebuilt from the queues.
    let store = Store::open(dir.path(), opts()).unwrap();
    let sweep = |now| {
        rt().block_on(store.sweep_expired(T0 + now, 100))
            .unwrap()
            .expired
    };
    assert_eq!(sweep(999), []);
    assert_eq!(sweep(1_000), [(a, 1), (b, 10)]);
    assert_eq!(sweep(5_000), [(a, 4)]);
    assert_eq!(count(&store, "queues"), 0);
    assert_eq!(store.stats().queued, 0);
    assert_eq!(
        store.dedup_lookup(sender, MessageId::from_u128(3)).unwrap(),
        None
    );
}

#[test]
fn shared_sends_carry_their_identity_in_the_payload() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    let sender = DeviceKey::new(1, 1);
    let members: Vec<DeviceKey> = (0..3).map(|i| DeviceKey::new(10 + i, 1)).collect();
    for d in &members {
        rt().block_on(store.register_device(*d, T0)).unwrap();
    }
    let send = |msg, seq| SendWrite {
        env: env(msg, T0, 60_000, b"group"),
        shared: Some(77),
        entries: members
            .iter()
            .map(|&device| EntryWrite {
                device,
                seq,
                header: Bytes::from_static(b"h"),
            })
            .collect(),
        dedup: Some((sender, 5)),
    };
    let o = write(
        &store,
        WriteSet {
            sends: vec![send(1, 1), send(1, 2)],
            acks: vec![],
            seen: Vec::new(),
        },
    );
    let rec = DedupRecord {
        accepted_at_ms: T0,
        recipients: 5,
    };
    assert_eq!(o.sends, [WRITTEN, SendOutcome::Duplicate(rec)]);
    let c = counts(&store);
    assert_eq!((c["payloads"], c["queues"], c["dedup"]), (1, 3, 0));
    store.close();
    let store = Store::open(dir.path(), opts()).unwrap();
    let lookup = || store.dedup_lookup(sender, MessageId::from_u128(1)).unwrap();
    assert_eq!(lookup(), Some(rec));
    for (i, d) in members.iter().enumerate() {
        assert_eq!(lookup(), Some(rec), "before the ack of member {i}");
        let o = write(
            &store,
            WriteSet {
                sends: vec![],
                acks: vec![(*d, vec![1])],
                seen: Vec::new(),
            },
        );
        assert_eq!(o.acked, 1);
    }
    // The last pointer deleted the payload, and the identity with it.
    assert_eq!(lookup(), None);
    assert_eq!(count(&store, "payloads"), 0);
}

#[test]
fn seqs_handed_out_but_never_written_are_never_given_again() {
    let dir = tempfile::tempdir().unwrap();
    let d = DeviceKey::new(4, 1);
    {
        let store = Store::open(dir.path(), opts()).unwrap();
        rt().block_on(store.register_device(d, T0)).unwrap();
        // Seqs 1..=9000 went out live and were acknowledged before any write.
        write(
            &store,
            WriteSet {
                sends: vec![],
                acks: vec![],
                seen: vec![(d, 9000)],
            },
        );
        assert_eq!(store.queue_state(d).unwrap().next_seq, 9001);
        store.close();
    }
    let store = Store::open(dir.path(), opts()).unwrap();
    assert!(
        store.queue_state(d).unwrap().next_seq > 9000,
        "after a restart the store starts past every seq handed out"
    );
}
