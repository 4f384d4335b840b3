//! A 100,000-member group: built in chunks within its size limit, one shared enqueue to every
//! member's device (one write batch, one stored payload), queues read back, then every pointer
//! expires and the payload with them. Peak RSS is printed (measured, not asserted). Its own
//! test binary, so the figure is this test's alone.

mod common;

use std::time::Instant;

use bytes::Bytes;
use common::{count, counts, opts};
use hearth_protocol::MessageId;
use hearth_storage::{
    DeviceKey, GroupError, GroupOp, SharedRecipient, Store, StoreOptions, StoredEnvelope,
};

const T0: u64 = 1_700_000_000_000;
const G: u64 = 0x6000_0001;
const SIZE: u32 = 100_000;
const CHUNK: u64 = 10_000;
const CREATOR: u64 = 1_000_000;

fn vm(field: &str) -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "n/a".into())
}

#[test]
fn one_shared_enqueue_to_a_100k_member_group() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // No fsync (the figures are about memory and batching, not this disk), default limits.
    let store = Store::open(
        dir.path(),
        StoreOptions {
            durability: opts().durability,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let accounts: Vec<u64> = (CREATOR + 1..CREATOR + u64::from(SIZE)).collect();
    eprintln!("start: VmHWM {} VmRSS {}", vm("VmHWM"), vm("VmRSS"));

    // The group, in chunks: the creator plus 99,999 members is exactly the limit.
    let t = Instant::now();
    let mut chunks = accounts.chunks(CHUNK as usize);
    let first = chunks.next().unwrap();
    let st = rt
        .block_on(store.create_group(G, CREATOR, first, SIZE, T0))
        .unwrap();
    assert_eq!(st.members, first.len() as u32 + 1);
    for chunk in chunks {
        rt.block_on(store.update_group(G, CREATOR, GroupOp::AddMembers(chunk.to_vec()), SIZE))
            .unwrap();
    }
    let r = rt.block_on(store.update_group(G, CREATOR, GroupOp::AddMembers(vec![7]), SIZE));
    assert_eq!(r, Err(GroupError::TooLarge));
    let st = store.group_info(G, 0, 0).unwrap().unwrap().0;
    assert_eq!(
        (st.members, st.version),
        (SIZE, accounts.len().div_ceil(CHUNK as usize) as u64)
    );
    let c = counts(&store);
    assert_eq!((c["groups"], c["members"]), (1, u64::from(SIZE)));
    eprintln!("group built in {:?}", t.elapsed());

    // One device per member: the creator's device 1 receives, its device 2 sends.
    let t = Instant::now();
    let all: Vec<u64> = accounts.iter().copied().chain([CREATOR]).collect();
    for chunk in all.chunks(5_000) {
        rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for &a in chunk {
                let store = store.clone();
                set.spawn(async move { store.register_device(DeviceKey::new(a, 1), T0).await });
            }
            while let Some(r) = set.join_next().await {
                assert!(r.unwrap().unwrap());
            }
        });
    }
    eprintln!("{} devices registered in {:?}", SIZE, t.elapsed());
    eprintln!(
        "before fan-out: VmHWM {} VmRSS {}",
        vm("VmHWM"),
        vm("VmRSS")
    );

    // The fan-out: members from the cache, their devices from memory, one shared enqueue.
    let t = Instant::now();
    let members = store.group_members(G).unwrap().unwrap();
    let devices = store.devices_of_many(&members).unwrap();
    assert_eq!(devices.len(), SIZE as usize);
    let recipients: Vec<SharedRecipient> = devices
        .iter()
        .map(|&device| SharedRecipient {
            device,
            header: Bytes::new(),
        })
        .collect();
    let env = StoredEnvelope {
        msg_id: MessageId::from_u128(42),
        from_account: CREATOR,
        from_device: 1,
        accepted_at_ms: T0,
        expires_at_ms: T0 + 60_000,
        flags: 0,
        payload: Bytes::from(vec![0x5a; 1024]),
    };
    let sender = DeviceKey::new(CREATOR, 2);
    let q = store
        .enqueue_shared(&recipients, &env, G, Some((sender, devices.len() as u64)))
        .unwrap();
    let submitted = t.elapsed();
    rt.block_on(q.commit).unwrap();
    eprintln!(
        "enqueue_shared to {} devices: submitted in {submitted:?}, committed in {:?}",
        devices.len(),
        t.elapsed()
    );
    eprintln!("after fan-out: VmHWM {} VmRSS {}", vm("VmHWM"), vm("VmRSS"));
    assert!(q.seqs.iter().all(|&(_, seq)| seq == 1));
    let c = counts(&store);
    assert_eq!((c["payloads"], c["queues"]), (1, u64::from(SIZE)));
    let st = store.stats();
    assert_eq!((st.payloads, st.queued), (1, u64::from(SIZE)));
    assert_eq!(st.queued_bytes, 1024 * u64::from(SIZE));

    // A few queues read back, sharing one payload.
    let some = [
        devices[0],
        devices[devices.len() / 2],
        devices[devices.len() - 1],
    ];
    let mut ptrs = Vec::new();
    for d in some {
        let q = store.read_queue(d, 0, 10).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!((q[0].seq, q[0].group, &q[0].envelope), (1, G, &env));
        ptrs.push(q[0].envelope.payload.as_ptr());
    }
    assert!(ptrs.windows(2).all(|w| w[0] == w[1]));

    // Remembered while queued: the payload carries the identity.
    let rec = store
        .dedup_lookup(sender, MessageId::from_u128(42))
        .unwrap()
        .unwrap();
    assert_eq!((rec.accepted_at_ms, rec.recipients), (T0, SIZE));

    // Acks of some keep the payload; expiry of the rest deletes it.
    for d in some {
        assert_eq!(rt.block_on(store.ack(d, &[1])).unwrap(), 1);
    }
    assert_eq!(count(&store, "payloads"), 1);
    let t = Instant::now();
    let s = rt
        .block_on(store.sweep_expired(T0 + 60_000, 2 * SIZE as usize))
        .unwrap();
    eprintln!("{} pointers expired in {:?}", s.expired.len(), t.elapsed());
    assert_eq!(s.expired.len(), SIZE as usize - some.len());
    let c = counts(&store);
    // Nothing outlives the envelope: its dedup identity was in its payload.
    assert_eq!(
        (c["payloads"], c["queues"], c["expiry"], c["dedup"]),
        (0, 0, 0, 0)
    );
    assert_eq!(
        store
            .dedup_lookup(sender, MessageId::from_u128(42))
            .unwrap(),
        None
    );
    assert_eq!(store.stats().payloads, 0);
    eprintln!("end: VmHWM {} VmRSS {}", vm("VmHWM"), vm("VmRSS"));
}
