//! `purge_account` erases everything about an account: an account with devices, inline and
//! shared envelopes queued for it and sent by it, groups it created and joined, lists, push
//! tokens and dedup identities (carried by its envelopes queued elsewhere, or a record of their
//! own for a send stored nowhere) is purged, the store is closed and reopened, and every key
//! and value of every column family is searched for the account id.

mod common;

use std::collections::BTreeSet;

use bytes::Bytes;
use common::{opts, rt};
use hearth_protocol::{slot_of, MessageId};
use hearth_storage::{
    DeviceKey, Durability, EnqueueError, GroupOp, ListKind, PurgeReport, QueueEntry, Reach,
    SharedRecipient, Store, StoreOptions, StoredEnvelope,
};

const T0: u64 = 1_700_000_000_000;
/// The purged account: a distinctive id, so its 8 bytes are found only where it was written.
const A: u64 = 0xa5a5_5a5a_c3c3_3c3c;
const B: u64 = 0x0000_0b0b_0000_0002;
const C: u64 = 0x0000_0c0c_0000_0003;
/// A group A created (with B and C), and one B created (with A and C).
const G_A: u64 = 0x1111;
const G_B: u64 = 0x2222;
const TTL: u64 = 3_600_000;

fn open(path: &std::path::Path) -> Store {
    let o = StoreOptions {
        durability: Durability::Sync,
        ..opts()
    };
    Store::open(path, o).unwrap()
}

fn env(msg: u128, from: DeviceKey, payload: &[u8]) -> StoredEnvelope {
    StoredEnvelope {
        msg_id: MessageId::from_u128(msg),
        from_account: from.account,
        from_device: from.device,
        accepted_at_ms: T0,
        expires_at_ms: T0 + TTL,
        flags: 0,
        payload: Bytes::copy_from_slice(payload),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// (column family, key) of every key or value holding A's id.
fn holding_a(store: &Store) -> BTreeSet<(String, Vec<u8>)> {
    let needle = A.to_be_bytes();
    store
        .scan_all()
        .unwrap()
        .into_iter()
        .filter(|(_, k, v)| contains(k, &needle) || contains(v, &needle))
        .map(|(cf, k, _)| (cf, k))
        .collect()
}

/// What the purge must leave of the other accounts.
#[derive(Debug, PartialEq)]
struct Others {
    queues: Vec<Vec<QueueEntry>>,
    stats: Vec<Option<hearth_storage::DeviceStats>>,
    records: Vec<Option<hearth_storage::AccountRecord>>,
    lists: Vec<Vec<u64>>,
    push: Option<Bytes>,
    dedup: Option<hearth_storage::DedupRecord>,
}

fn others(store: &Store) -> Others {
    let (b1, c1) = (DeviceKey::new(B, 1), DeviceKey::new(C, 1));
    Others {
        queues: [b1, c1]
            .map(|d| store.read_queue(d, 0, 100).unwrap())
            .to_vec(),
        stats: [b1, c1].map(|d| store.device_stats(d).unwrap()).to_vec(),
        records: [B, C].map(|a| store.account(a).unwrap()).to_vec(),
        lists: [
            store.list(B, ListKind::Block),
            store.list(B, ListKind::Allow),
            store.list(C, ListKind::Allow),
        ]
        .to_vec(),
        push: store.push_token(b1),
        dedup: store.dedup_lookup(b1, MessageId::from_u128(108)).unwrap(),
    }
}

#[test]
fn purge_leaves_nothing_about_the_account() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (a1, a2, a3) = (
        DeviceKey::new(A, 1),
        DeviceKey::new(A, 2),
        DeviceKey::new(A, 3),
    );
    let (b1, c1) = (DeviceKey::new(B, 1), DeviceKey::new(C, 1));

    // Accounts, settings, lists, devices, push tokens.
    for (acc, net) in [(A, "chat"), (B, "chat"), (C, "photos")] {
        rt.block_on(store.ensure_account(acc, net, "eu", T0))
            .unwrap();
    }
    rt.block_on(store.set_reach(A, Reach::Contacts)).unwrap();
    rt.block_on(store.set_networks(A, vec!["photos".into()]))
        .unwrap();
    rt.block_on(store.set_access_key_hash(A, Some([0x42; 32])))
        .unwrap();
    rt.block_on(store.set_reach(B, Reach::Nobody)).unwrap();
    let list = |acc, kind, others: &[u64]| {
        rt.block_on(store.update_list(acc, kind, true, others))
            .unwrap()
    };
    assert_eq!(list(A, ListKind::Allow, &[B, C]), 2);
    assert_eq!(list(A, ListKind::Block, &[C]), 1);
    // Other accounts' entries naming A: theirs, they stay.
    assert_eq!(list(B, ListKind::Block, &[A]), 1);
    assert_eq!(list(B, ListKind::Allow, &[C]), 1);
    assert_eq!(list(C, ListKind::Allow, &[A, B]), 2);
    for d in [a1, a2, a3, b1, c1] {
        assert!(rt.block_on(store.register_device(d, T0)).unwrap());
    }
    for d in [a1, a2, b1] {
        let token = Bytes::from(format!("push-token-{}", d.device));
        rt.block_on(store.set_push_token(d, Some(token))).unwrap();
    }

    // Groups: A created one, B created one A is in.
    rt.block_on(store.create_group(G_A, A, &[B, C], 10, T0))
        .unwrap();
    rt.block_on(store.create_group(G_B, B, &[A, C], 10, T0))
        .unwrap();
    rt.block_on(store.update_group(G_B, B, GroupOp::AddAdmins(vec![A]), 10))
        .unwrap();

    let commit = |e: Result<hearth_storage::Enqueued, EnqueueError>| {
        rt.block_on(e.unwrap().commit).unwrap();
    };
    let shared = |devices: &[DeviceKey]| -> Vec<SharedRecipient> {
        devices
            .iter()
            .map(|&device| SharedRecipient {
                device,
                header: Bytes::from_static(b"hdr"),
            })
            .collect()
    };
    // Inline, to A (with B's dedup identity), from A to B and to A's other device (with A's),
    // and from B to C (with B's). One from A stored nowhere: a dedup record of its own.
    commit(store.enqueue(&[a1, a2], &env(100, b1, b"b to a"), Some((b1, 2))));
    commit(store.enqueue(&[b1], &env(101, a1, b"a to b"), Some((a1, 1))));
    commit(store.enqueue(&[a2], &env(102, a1, b"a to self"), Some((a1, 1))));
    commit(store.enqueue(&[c1], &env(108, b1, b"b to c"), Some((b1, 1))));
    commit(store.enqueue(&[], &env(107, a1, b"a to nobody"), Some((a1, 1))));
    // Shared: A's group message (its payload, from A, stays for B and C), B's group message
    // to A and C, and a payload only A's devices point to (deleted with them).
    commit(store.enqueue_shared(
        &shared(&[b1, c1, a2]),
        &env(103, a1, b"a to group"),
        G_A,
        Some((a2, 3)),
    ));
    commit(store.enqueue_shared(
        &shared(&[a1, a2, c1]),
        &env(104, b1, b"b to group"),
        G_B,
        None,
    ));
    commit(store.enqueue_shared(&shared(&[a1, a2]), &env(105, c1, b"c to a"), 0, None));
    // Acks, and a device removed after an ack.
    commit(store.enqueue(&[a3], &env(106, c1, b"c to a3"), None));
    assert_eq!(rt.block_on(store.ack(a1, &[1])).unwrap(), 1);
    assert_eq!(rt.block_on(store.ack(a3, &[1])).unwrap(), 1);
    assert_eq!(
        rt.block_on(store.remove_device(a3))
            .unwrap()
            .unwrap()
            .queued,
        0
    );

    // The search finds A everywhere before the purge (so it can find what a purge leaves),
    // but in `expiry`, which holds nothing.
    assert_eq!(common::count(&store, "expiry"), 0);
    let before: BTreeSet<String> = holding_a(&store).into_iter().map(|(cf, _)| cf).collect();
    let mut every_cf: BTreeSet<String> = common::counts(&store).into_keys().collect();
    every_cf.remove("expiry");
    assert_eq!(
        before, every_cf,
        "A's id is in every column family but `expiry` before the purge"
    );
    let lookup = |store: &Store, sender: DeviceKey, msg: u128| {
        store
            .dedup_lookup(sender, MessageId::from_u128(msg))
            .unwrap()
    };
    for (sender, msg) in [
        (b1, 100),
        (a1, 101),
        (a1, 102),
        (a2, 103),
        (a1, 107),
        (b1, 108),
    ] {
        assert!(lookup(&store, sender, msg).is_some(), "{msg}");
    }
    let queued_for_a = [a1, a2]
        .map(|d| store.device_stats(d).unwrap().unwrap().queued)
        .iter()
        .sum::<u64>();
    assert_eq!(queued_for_a, 7);
    let payloads_before = store.stats().payloads;
    let others_before = others(&store);

    let report = rt.block_on(store.purge_account(A)).unwrap();
    assert_eq!(
        report,
        PurgeReport {
            devices: 2,
            envelopes: queued_for_a,
            groups_left: 1,
            groups_deleted: 1,
            list_entries: 3,
            dedup_records: 4,
            push_tokens: 2,
            account_record: true,
        }
    );
    // The payload only A's devices pointed to is gone.
    assert_eq!(store.stats().payloads, payloads_before - 1);
    // B's send to A only is forgotten with A's queues (nothing of it is queued any more).
    assert_eq!(lookup(&store, b1, 100), None);
    assert_eq!(store.devices(A).unwrap(), Vec::<u32>::new());
    assert_eq!(
        store
            .enqueue(&[a1], &env(200, b1, b"late"), None)
            .unwrap_err(),
        EnqueueError::UnknownDevice { device: a1 }
    );
    store.close();

    // Durable: a reopened store (caches loaded from disk) has nothing of A either.
    let store = open(dir.path());
    assert_eq!(store.account(A).unwrap(), None);
    assert_eq!(store.devices(A).unwrap(), Vec::<u32>::new());
    for d in [a1, a2, a3] {
        assert_eq!(store.push_token(d), None);
        assert_eq!(store.device_stats(d).unwrap(), None);
        assert!(store.read_queue(d, 0, 100).unwrap().is_empty());
    }
    for kind in [ListKind::Allow, ListKind::Block] {
        assert!(store.list(A, kind).is_empty());
    }
    // A's sends are forgotten, those whose envelope waits in B's and C's queues too (their
    // values no longer carry A's identity).
    for (sender, msg) in [(a1, 101), (a1, 102), (a2, 103), (a1, 107), (b1, 100)] {
        assert_eq!(lookup(&store, sender, msg), None, "{msg}");
    }
    assert_eq!(
        lookup(&store, b1, 108).map(|r| r.recipients),
        Some(1),
        "B's send to C is remembered"
    );
    assert_eq!(store.group_members(G_A).unwrap(), None);
    assert_eq!(store.group_members(G_B).unwrap().unwrap().to_vec(), [B, C]);

    // The only keys or values left holding A's id belong to other accounts: B's block list
    // and C's allow list naming A (their own lists: a purge must not let A escape a block by
    // coming back under the same id), the envelope A sent that waits in B's queue, and the
    // shared payload of A's group message that B's and C's queues still point to (their
    // recipients' data, gone when acknowledged or expired).
    let mut list_b = vec![];
    let mut list_c = vec![];
    let mut queue_b = vec![];
    let mut payloads = 0;
    for (cf, k) in holding_a(&store) {
        match cf.as_str() {
            "lists" => {
                let owner = u64::from_be_bytes(k[2..10].try_into().unwrap());
                let other = u64::from_be_bytes(k[11..19].try_into().unwrap());
                assert_eq!(
                    other, A,
                    "a list key holding A names it as the other account"
                );
                match owner {
                    B => list_b.push(k[10]),
                    C => list_c.push(k[10]),
                    _ => panic!("list of {owner:x} holds A"),
                }
            }
            "queues" => {
                assert_eq!(&k[..2], slot_of(B).to_be_bytes());
                assert_eq!(u64::from_be_bytes(k[2..10].try_into().unwrap()), B);
                queue_b.push(u64::from_be_bytes(k[14..22].try_into().unwrap()));
            }
            "payloads" => payloads += 1,
            _ => panic!("{cf} still holds A's id under key {k:02x?}"),
        }
    }
    assert_eq!(list_b, [ListKind::Block.to_u8()]);
    assert_eq!(list_c, [ListKind::Allow.to_u8()]);
    assert_eq!(payloads, 1);
    // The inline envelope from A in B's queue is seq 1; seq 2, B's pointer to A's group
    // send, holds no account id (the payload does).
    assert_eq!(queue_b, [1]);
    let q = store.read_queue(b1, 0, 10).unwrap();
    assert_eq!(q.len(), 2);
    assert_eq!((q[0].envelope.from_account, q[0].group), (A, 0));
    assert_eq!((q[1].envelope.from_account, q[1].group), (A, G_A));

    // Everything of B and C is as it was (B's group lost A, a version bump).
    assert_eq!(others(&store), others_before);
    let (st, members) = store.group_info(G_B, 0, 10).unwrap().unwrap();
    assert_eq!((st.version, st.members, members.len()), (3, 2, 2));

    // A may come back: a new record, nothing of the old one.
    let again = rt
        .block_on(store.ensure_account(A, "social", "us", T0 + 9))
        .unwrap();
    assert_eq!(
        (again.reach, again.created_at_ms),
        (Reach::Everyone, T0 + 9)
    );
    assert!(again.networks.is_empty() && again.access_key_hash.is_none());
    assert!(rt.block_on(store.register_device(a1, T0 + 9)).unwrap());
    assert!(store.read_queue(a1, 0, 10).unwrap().is_empty());
    assert!(
        store.list_contains(B, ListKind::Block, A),
        "B still blocks A"
    );
}

#[test]
fn purging_an_unknown_account_reports_nothing() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    rt.block_on(store.ensure_account(B, "chat", "eu", T0))
        .unwrap();
    let before = store.scan_all().unwrap();
    let report = rt.block_on(store.purge_account(A)).unwrap();
    assert_eq!(report, PurgeReport::default());
    assert_eq!(store.scan_all().unwrap(), before);
}

/// A purge racing enqueues, acks and registrations of the same account: every enqueue is
/// either stored before the purge (and erased by it) or refused; counters stay right.
#[test]
fn purge_racing_other_work_leaves_consistent_counters() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let devices: Vec<DeviceKey> = (1..=4).map(|d| DeviceKey::new(A, d)).collect();
    let b1 = DeviceKey::new(B, 1);
    rt.block_on(async {
        for d in devices.iter().chain([&b1]) {
            store.register_device(*d, T0).await.unwrap();
        }
        store.ensure_account(A, "chat", "eu", T0).await.unwrap();
    });
    let senders: Vec<_> = (0..4u128)
        .map(|t| {
            let store = store.clone();
            let devices = devices.clone();
            rt.spawn(async move {
                let mut stored = 0u64;
                for i in 0..200u128 {
                    let e = env(t << 32 | i, b1, b"x");
                    match store.enqueue(&devices, &e, None) {
                        Ok(q) => {
                            q.commit.await.unwrap();
                            stored += 1;
                        }
                        Err(EnqueueError::UnknownDevice { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                    store.ack(devices[0], &[i as u64 + 1]).await.unwrap();
                }
                stored
            })
        })
        .collect();
    let report = rt.block_on(store.purge_account(A)).unwrap();
    for s in senders {
        rt.block_on(s).unwrap();
    }
    assert_eq!(report.devices, 4);
    assert!(report.account_record);
    let st = store.stats();
    assert_eq!((st.devices, st.queued, st.queued_bytes), (1, 0, 0));
    let c = common::counts(&store);
    assert_eq!((c["queues"], c["devices"], c["expiry"]), (0, 1, 0));
    assert!(holding_a(&store).is_empty());
}
