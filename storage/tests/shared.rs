//! Shared payloads: stored once, pointed to by many queue entries, deleted with the last
//! pointer (acked, expired, or its device removed), and never before.

mod common;

use bytes::Bytes;
use common::{count, counts, env, opts, rt};
use hearth_protocol::MessageId;
use hearth_storage::{
    DedupRecord, DeviceKey, Durability, EnqueueError, QueueEntry, SharedRecipient, Store,
    StoreOptions, StoredEnvelope,
};

const T0: u64 = 1_700_000_000_000;
const GROUP: u64 = 0xfeed;

fn open(path: &std::path::Path) -> Store {
    Store::open(path, opts()).unwrap()
}

fn register(store: &Store, devices: &[DeviceKey]) {
    for d in devices {
        rt().block_on(store.register_device(*d, T0)).unwrap();
    }
}

fn to(devices: &[DeviceKey]) -> Vec<SharedRecipient> {
    devices
        .iter()
        .map(|d| SharedRecipient {
            device: *d,
            header: Bytes::from(format!("hdr {}", d.device)),
        })
        .collect()
}

/// Enqueues a shared envelope and waits for its commit; returns each recipient's seq.
fn shared(store: &Store, devices: &[DeviceKey], e: &StoredEnvelope) -> Vec<u64> {
    let q = store.enqueue_shared(&to(devices), e, GROUP, None).unwrap();
    rt().block_on(q.commit).unwrap();
    q.seqs.into_iter().map(|(_, s)| s).collect()
}

fn payloads(store: &Store) -> u64 {
    let n = count(store, "payloads");
    assert_eq!(store.stats().payloads, n, "stats agree with the keys");
    n
}

fn queue(store: &Store, d: DeviceKey) -> Vec<QueueEntry> {
    store.read_queue(d, 0, usize::MAX).unwrap()
}

fn devices() -> [DeviceKey; 3] {
    [
        DeviceKey::new(10, 1),
        DeviceKey::new(10, 2),
        DeviceKey::new(11, 1),
    ]
}

#[test]
fn payload_is_stored_once_and_deleted_after_the_last_ack() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ds = devices();
    register(&store, &ds);
    let e = env(1, T0, 60_000, &[7; 300]);
    let seqs = shared(&store, &ds, &e);
    assert_eq!(seqs, [1, 1, 1]);
    let c = counts(&store);
    // No expiry index: a payload and three pointers, nothing else.
    assert_eq!((c["payloads"], c["queues"], c["expiry"]), (1, 3, 0));
    // Each entry counts the payload and its header against its queue.
    let st = store.device_stats(ds[0]).unwrap().unwrap();
    assert_eq!((st.queued, st.bytes), (1, 300 + 5));
    assert_eq!(store.stats().queued_bytes, 3 * 305);

    for d in ds {
        let q = queue(&store, d);
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].envelope, e);
        assert_eq!(
            (q[0].group, &q[0].header[..]),
            (GROUP, format!("hdr {}", d.device).as_bytes())
        );
    }
    // Partial acks keep the payload: the others still read it.
    assert_eq!(rt().block_on(store.ack(ds[0], &[1])).unwrap(), 1);
    assert_eq!(rt().block_on(store.ack(ds[0], &[1])).unwrap(), 0);
    assert_eq!(rt().block_on(store.ack(ds[1], &[1, 2])).unwrap(), 1);
    assert_eq!(payloads(&store), 1);
    assert_eq!(queue(&store, ds[2])[0].envelope, e);
    // The last ack deletes it.
    assert_eq!(rt().block_on(store.ack(ds[2], &[1])).unwrap(), 1);
    assert_eq!(payloads(&store), 0);
    assert_eq!(count(&store, "queues"), 0);
    let st = store.stats();
    assert_eq!((st.queued, st.queued_bytes, st.pending_bytes), (0, 0, 0));
    store.close();
    let store = open(dir.path());
    assert_eq!(payloads(&store), 0);
}

#[test]
fn reference_counts_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ds = devices();
    let e = env(2, T0, 60_000, b"survives");
    {
        let store = open(dir.path());
        register(&store, &ds);
        shared(&store, &ds, &e);
        assert_eq!(rt().block_on(store.ack(ds[0], &[1])).unwrap(), 1);
    }
    let store = open(dir.path());
    assert_eq!(payloads(&store), 1);
    assert_eq!(rt().block_on(store.ack(ds[1], &[1])).unwrap(), 1);
    assert_eq!(payloads(&store), 1);
    assert_eq!(queue(&store, ds[2])[0].envelope, e);
    store.close();
    let store = open(dir.path());
    assert_eq!(payloads(&store), 1);
    assert_eq!(rt().block_on(store.ack(ds[2], &[1])).unwrap(), 1);
    assert_eq!(payloads(&store), 0);
}

#[test]
fn payload_is_deleted_when_its_pointers_expire() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ds = devices();
    register(&store, &ds);
    shared(&store, &ds, &env(1, T0, 100, b"short"));
    let long = env(2, T0, 10_000, b"long");
    shared(&store, &ds[..2], &long);
    let inline = store
        .enqueue(&[ds[0]], &env(3, T0, 100, b"inline"), None)
        .unwrap();
    rt().block_on(inline.commit).unwrap();
    assert_eq!(payloads(&store), 2);
    // Two entries first (device then seq): ds[0]'s short pointer and its inline entry; two of
    // the three short pointers remain, and the payload with them.
    let s = rt().block_on(store.sweep_expired(T0 + 100, 2)).unwrap();
    assert_eq!(s.expired, [(ds[0], 1), (ds[0], 3)]);
    assert_eq!(payloads(&store), 2);
    let s = rt().block_on(store.sweep_expired(T0 + 100, 100)).unwrap();
    assert_eq!(
        s.expired,
        [(ds[1], 1), (ds[2], 1)],
        "the other two entries due at T0 + 100"
    );
    assert_eq!(payloads(&store), 1);
    let c = counts(&store);
    assert_eq!((c["queues"], c["expiry"]), (2, 0));
    for d in &ds[..2] {
        let q = queue(&store, *d);
        assert_eq!(q.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
        assert_eq!(q[0].envelope, long);
    }
    rt().block_on(store.sweep_expired(T0 + 10_000, 100))
        .unwrap();
    assert_eq!(payloads(&store), 0);
    let c = counts(&store);
    assert_eq!((c["queues"], c["expiry"]), (0, 0));
}

#[test]
fn payload_is_deleted_when_its_recipient_devices_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ds = devices();
    register(&store, &ds);
    shared(&store, &ds, &env(1, T0, 60_000, b"gone with the devices"));
    // One acks, the other two are removed one after the other.
    assert_eq!(rt().block_on(store.ack(ds[1], &[1])).unwrap(), 1);
    let st = rt().block_on(store.remove_device(ds[0])).unwrap().unwrap();
    assert_eq!((st.queued, st.bytes), (1, 21 + 5));
    assert_eq!(payloads(&store), 1);
    rt().block_on(store.remove_device(ds[2])).unwrap().unwrap();
    assert_eq!(payloads(&store), 0);
    let c = counts(&store);
    assert_eq!((c["queues"], c["devices"]), (0, 1));
    // The same device listed twice holds two references.
    let d = ds[1];
    let q = store
        .enqueue_shared(&to(&[d, d]), &env(2, T0, 60_000, b"twice"), 0, None)
        .unwrap();
    assert_eq!(q.seqs, [(d, 2), (d, 3)]);
    rt().block_on(q.commit).unwrap();
    assert_eq!(rt().block_on(store.ack(d, &[2])).unwrap(), 1);
    assert_eq!(payloads(&store), 1);
    assert_eq!(
        rt().block_on(store.remove_device(d))
            .unwrap()
            .unwrap()
            .queued,
        1
    );
    assert_eq!(payloads(&store), 0);
}

#[test]
fn acks_in_the_same_commit_as_the_enqueue_delete_the_payload() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreOptions {
            durability: Durability::Sync,
            ..opts()
        },
    )
    .unwrap();
    let ds = devices();
    for d in ds {
        rt.block_on(store.register_device(d, T0)).unwrap();
    }
    // Acks submitted while their enqueue waits for its group: some land in the same batch as
    // the payload they release.
    let mut commits = Vec::new();
    let mut acks = Vec::new();
    for i in 0..100 {
        let q = store
            .enqueue_shared(&to(&ds), &env(i, T0, 60_000, b"racing"), GROUP, None)
            .unwrap();
        commits.push(q.commit);
        for (d, seq) in q.seqs {
            let store = store.clone();
            acks.push(rt.spawn(async move { store.ack(d, &[seq]).await }));
        }
    }
    let acked = rt.block_on(async {
        let mut n = 0;
        for a in acks {
            n += a.await.unwrap().unwrap();
        }
        for c in commits {
            c.await.unwrap();
        }
        n
    });
    assert_eq!(acked, 300);
    assert_eq!(payloads(&store), 0);
    assert_eq!(count(&store, "queues"), 0);
    assert_eq!(store.stats().queued, 0);
}

#[test]
fn shared_enqueue_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreOptions {
            max_queue_len: 2,
            max_queue_bytes: 100,
            ..opts()
        },
    )
    .unwrap();
    let ds = devices();
    register(&store, &ds);
    let inline = store
        .enqueue(&[ds[2]], &env(1, T0, 1000, &[0; 60]), None)
        .unwrap();
    rt().block_on(inline.commit).unwrap();
    let before = counts(&store);
    // 60 + 36 + header 5 > 100 for ds[2]: nothing stored anywhere, no seq used.
    let sender = DeviceKey::new(1, 1);
    let err = store
        .enqueue_shared(
            &to(&ds),
            &env(2, T0, 1000, &[0; 36]),
            GROUP,
            Some((sender, 3)),
        )
        .unwrap_err();
    assert_eq!(err, EnqueueError::QueueFull { device: ds[2] });
    let ghost = DeviceKey::new(12, 1);
    let err = store
        .enqueue_shared(&to(&[ds[0], ghost]), &env(3, T0, 1000, b"x"), GROUP, None)
        .unwrap_err();
    assert_eq!(err, EnqueueError::UnknownDevice { device: ghost });
    // By length: the same device twice on a queue of room 2 that already holds one.
    let err = store
        .enqueue_shared(&to(&[ds[2], ds[2]]), &env(4, T0, 1000, b"x"), GROUP, None)
        .unwrap_err();
    assert_eq!(err, EnqueueError::QueueFull { device: ds[2] });
    assert_eq!(counts(&store), before);
    assert_eq!(store.stats().payloads, 0);
    assert_eq!(store.device_stats(ds[0]).unwrap().unwrap().next_seq, 1);
    assert_eq!(store.device_stats(ds[2]).unwrap().unwrap().next_seq, 2);
    assert_eq!(store.stats().queued, 1);
    assert_eq!(
        store.dedup_lookup(sender, MessageId::from_u128(2)).unwrap(),
        None
    );

    // Accepted: the dedup record is written like `enqueue`'s.
    let q = store
        .enqueue_shared(
            &to(&ds),
            &env(5, T0, 1000, &[0; 34]),
            GROUP,
            Some((sender, 3)),
        )
        .unwrap();
    assert_eq!(q.seqs, [(ds[0], 1), (ds[1], 1), (ds[2], 2)]);
    rt().block_on(q.commit).unwrap();
    let rec = DedupRecord {
        accepted_at_ms: T0,
        recipients: 3,
    };
    assert_eq!(
        store.dedup_lookup(sender, MessageId::from_u128(5)).unwrap(),
        Some(rec)
    );
    // No recipients: nothing but the dedup record.
    let before = counts(&store);
    let q = store
        .enqueue_shared(&[], &env(6, T0, 1000, b"nobody"), GROUP, Some((sender, 0)))
        .unwrap();
    rt().block_on(q.commit).unwrap();
    let after = counts(&store);
    assert_eq!(after["payloads"], before["payloads"]);
    assert_eq!(after["queues"], before["queues"]);
    assert_eq!(after["dedup"], before["dedup"] + 1);
}

#[test]
fn shared_and_inline_entries_interleave_in_seq_order_and_share_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ds = devices();
    register(&store, &ds);
    let a = env(1, T0, 60_000, b"inline one");
    let b = env(2, T0, 60_000, &[9; 1000]);
    let c = env(3, T0, 60_000, b"inline two");
    rt().block_on(store.enqueue(&ds, &a, None).unwrap().commit)
        .unwrap();
    let recipients: Vec<SharedRecipient> = ds
        .iter()
        .map(|d| SharedRecipient {
            device: *d,
            header: Bytes::new(),
        })
        .collect();
    let q = store.enqueue_shared(&recipients, &b, 0, None).unwrap();
    rt().block_on(q.commit).unwrap();
    rt().block_on(store.enqueue(&ds, &c, None).unwrap().commit)
        .unwrap();
    let mut payload_ptrs = Vec::new();
    for d in ds {
        let q = queue(&store, d);
        assert_eq!(q.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(
            q.iter().map(|e| &e.envelope).collect::<Vec<_>>(),
            [&a, &b, &c]
        );
        // Inline entries have no group and no header; this pointer has group 0 (SEND_MULTI).
        assert!(q.iter().all(|e| e.group == 0 && e.header.is_empty()));
        payload_ptrs.push(q[1].envelope.payload.as_ptr());
        // Paging starts in the middle of the kinds.
        let page = store.read_queue(d, 2, 1).unwrap();
        assert_eq!((page[0].seq, &page[0].envelope), (2, &b));
    }
    // One payload in memory for every reader, not a copy per entry.
    assert!(payload_ptrs.windows(2).all(|w| w[0] == w[1]));
    store.close();
    // After reopen the payload is read from disk once and shared again.
    let store = open(dir.path());
    let p: Vec<_> = ds
        .iter()
        .map(|d| queue(&store, *d)[1].envelope.payload.clone())
        .collect();
    assert!(p
        .iter()
        .all(|x| x == &b.payload && x.as_ptr() == p[0].as_ptr()));
}

#[test]
fn devices_come_from_memory_and_follow_registration_and_removal() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ds = [
        DeviceKey::new(20, 3),
        DeviceKey::new(20, 1),
        DeviceKey::new(21, 1),
    ];
    register(&store, &ds);
    assert_eq!(
        store.devices_of_many(&[21, 22, 20]).unwrap(),
        [ds[2], ds[1], ds[0]]
    );
    assert_eq!(store.devices(20).unwrap(), [1, 3]);
    rt().block_on(store.remove_device(ds[1])).unwrap();
    assert_eq!(store.devices(20).unwrap(), [3]);
    assert_eq!(store.devices_of_many(&[20, 20]).unwrap(), [ds[0], ds[0]]);
    rt().block_on(store.remove_device(ds[2])).unwrap();
    assert_eq!(store.devices(21).unwrap(), Vec::<u32>::new());
    assert_eq!(store.devices_of_many(&[21]).unwrap(), []);
    store.close();
    let store = open(dir.path());
    assert_eq!(store.devices_of_many(&[20, 21]).unwrap(), [ds[0]]);
    assert_eq!(store.stats().devices, 1);
}
