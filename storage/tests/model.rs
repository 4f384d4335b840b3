//! Random operation sequences applied to the store and to an in-memory model, compared after
//! every step, with close-and-reopen steps in between (the habit of sled's tests/tree).
//! Covers inline and shared (pointer) entries, shared payload lifetimes, dedup identities
//! (remembered while an envelope of their send is queued; sends stored nowhere get a record
//! that expires), expiry sweeps, groups with their permission rules and the memberships
//! index, account records, lists, push tokens, and account purges.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use hearth_protocol::{slot_of, MessageId};
use hearth_storage::{
    AccountRecord, DedupRecord, DeviceKey, DeviceStats, Durability, EnqueueError, GroupError,
    GroupOp, GroupState, ListKind, PurgeReport, QueueEntry, Reach, Role, SharedRecipient,
    StorageError, Store, StoreOptions, StoredEnvelope, SweepStats,
};
use proptest::collection::vec;
use proptest::prelude::*;

const ACCOUNTS: [u64; 2] = [7, 1 << 40];
const DEVICES: usize = 6;
const MAX_LEN: u64 = 4;
const MAX_BYTES: u64 = 100;
const WINDOW: u64 = 2_000;
/// Accounts that may be group members (the first two have devices).
const GROUP_ACCOUNTS: [u64; 4] = [ACCOUNTS[0], ACCOUNTS[1], 3, 9];
/// Group ids used (0 is invalid).
const GROUP_IDS: [u64; 3] = [5, 1 << 33, 0];
const MAX_GROUP: u32 = 3;
const NETWORKS: [&str; 3] = ["social", "photos", "chat"];
const ZONES: [&str; 2] = ["eu", "us"];
const KINDS: [ListKind; 2] = [ListKind::Allow, ListKind::Block];

fn gacc(i: u8) -> u64 {
    GROUP_ACCOUNTS[i as usize % GROUP_ACCOUNTS.len()]
}

fn gid(i: u8) -> u64 {
    GROUP_IDS[i as usize % GROUP_IDS.len()]
}

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
    /// `enqueue_shared` to devices, each with a header of 0 to 3 bytes.
    EnqueueShared {
        to: Vec<(u8, u8)>,
        len: u8,
        ttl: u16,
        dedup: Option<(u8, u8)>,
        group: u8,
    },
    /// `enqueue_shared` to every device of a group's members, as a group send does.
    SendGroup {
        group: u8,
        len: u8,
        ttl: u16,
    },
    CreateGroup {
        group: u8,
        creator: u8,
        members: Vec<u8>,
    },
    UpdateGroup {
        group: u8,
        actor: u8,
        op: u8,
        list: Vec<u8>,
    },
    EnsureAccount {
        account: u8,
        network: u8,
        zone: u8,
    },
    /// `what`: 0 reach, 1 networks, 2 access key hash; `v` picks the value.
    SetAccount {
        account: u8,
        what: u8,
        v: u8,
    },
    UpdateList {
        account: u8,
        block: bool,
        add: bool,
        others: Vec<u8>,
    },
    /// Token 0: none; otherwise `token % 4` bytes (0 bytes also clears).
    SetPush {
        dev: u8,
        token: u8,
    },
    Purge(u8),
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
        4 => (vec((any::<u8>(), 0u8..4), 0..4), 0u8..40, 1u16..4000,
              proptest::option::of((any::<u8>(), 0u8..6)), any::<u8>())
            .prop_map(|(to, len, ttl, dedup, group)| Op::EnqueueShared { to, len, ttl, dedup, group }),
        2 => (any::<u8>(), 0u8..40, 1u16..4000)
            .prop_map(|(group, len, ttl)| Op::SendGroup { group, len, ttl }),
        2 => (any::<u8>(), any::<u8>(), vec(any::<u8>(), 0..4))
            .prop_map(|(group, creator, members)| Op::CreateGroup { group, creator, members }),
        4 => (any::<u8>(), any::<u8>(), 0u8..5, vec(any::<u8>(), 0..3))
            .prop_map(|(group, actor, op, list)| Op::UpdateGroup { group, actor, op, list }),
        2 => (any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(account, network, zone)| Op::EnsureAccount { account, network, zone }),
        2 => (any::<u8>(), 0u8..3, any::<u8>())
            .prop_map(|(account, what, v)| Op::SetAccount { account, what, v }),
        3 => (any::<u8>(), any::<bool>(), any::<bool>(), vec(any::<u8>(), 0..4))
            .prop_map(|(account, block, add, others)| Op::UpdateList { account, block, add, others }),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(dev, token)| Op::SetPush { dev, token }),
        1 => any::<u8>().prop_map(Op::Purge),
    ]
}

/// A dedup identity: the sender and the message id.
type Ident = (DeviceKey, u128);

/// One queue entry of the model: the envelope, for a shared entry its group, header and
/// the model's id of its shared payload, and the dedup identity and record of its send if it
/// is remembered.
#[derive(Clone, Debug)]
struct MEntry {
    env: StoredEnvelope,
    group: u64,
    header: Bytes,
    payload: Option<u64>,
    dedup: Option<(Ident, DedupRecord)>,
}

impl MEntry {
    fn bytes(&self) -> u64 {
        (self.env.payload.len() + self.header.len()) as u64
    }

    fn entry(&self, seq: u64) -> QueueEntry {
        QueueEntry {
            seq,
            envelope: self.env.clone(),
            group: self.group,
            header: self.header.clone(),
        }
    }
}

#[derive(Clone, Debug)]
struct MGroup {
    creator: u64,
    version: u64,
    members: BTreeMap<u64, Role>,
}

impl MGroup {
    fn state(&self, group: u64) -> GroupState {
        GroupState {
            group,
            creator: self.creator,
            version: self.version,
            members: self.members.len() as u32,
        }
    }
}

/// Errors compared by kind (the messages of `Invalid` are the store's own).
fn kind(e: &GroupError) -> String {
    match e {
        GroupError::Invalid(_) => "Invalid".into(),
        e => format!("{e:?}"),
    }
}

fn group_op(op: u8, list: Vec<u64>) -> GroupOp {
    match op {
        0 => GroupOp::AddMembers(list),
        1 => GroupOp::RemoveMembers(list),
        2 => GroupOp::AddAdmins(list),
        3 => GroupOp::RemoveAdmins(list),
        _ => GroupOp::Delete,
    }
}

struct MDevice {
    registered_at_ms: u64,
    next_seq: u64,
    queue: BTreeMap<u64, MEntry>,
}

impl MDevice {
    fn stats(&self, key: DeviceKey) -> DeviceStats {
        DeviceStats {
            key,
            slot: slot_of(key.account),
            queued: self.queue.len() as u64,
            bytes: self.queue.values().map(MEntry::bytes).sum(),
            next_seq: self.next_seq,
            registered_at_ms: self.registered_at_ms,
        }
    }
}

struct Model {
    now: u64,
    devices: BTreeMap<DeviceKey, MDevice>,
    /// Records of sends stored nowhere, with their expiry.
    standalone: BTreeMap<Ident, (DedupRecord, u64)>,
    /// Every identity sent with (to check that the forgotten ones are not found).
    idents: BTreeSet<Ident>,
    next_msg: u128,
    groups: BTreeMap<u64, MGroup>,
    next_payload: u64,
    accounts: BTreeMap<u64, AccountRecord>,
    /// (owner, kind, other).
    lists: BTreeSet<(u64, ListKind, u64)>,
    push: BTreeMap<DeviceKey, Bytes>,
}

/// The networks picked by the bits of `v` (in an unsorted order, bit 3 repeating one).
fn networks(v: u8) -> Vec<String> {
    let mut out: Vec<String> = (0..3)
        .filter(|i| v & (1 << i) != 0)
        .map(|i| NETWORKS[i].to_string())
        .collect();
    if v & 8 != 0 {
        if let Some(first) = out.first().cloned() {
            out.push(first);
        }
    }
    out
}

impl Model {
    /// The identities remembered and their records: those of queued envelopes, then those of
    /// sends stored nowhere (a queued send's wins).
    fn remembered(&self) -> BTreeMap<Ident, DedupRecord> {
        let mut out: BTreeMap<Ident, DedupRecord> = self
            .standalone
            .iter()
            .map(|(id, (rec, _))| (*id, *rec))
            .collect();
        for md in self.devices.values() {
            for e in md.queue.values() {
                if let Some((id, rec)) = e.dedup {
                    out.insert(id, rec);
                }
            }
        }
        out
    }

    /// Whether an envelope of the send `id` is queued.
    fn queued(&self, id: Ident) -> bool {
        self.devices.values().any(|md| {
            md.queue
                .values()
                .any(|e| e.dedup.is_some_and(|d| d.0 == id))
        })
    }

    fn ensure_account(&mut self, account: u64, network: &str, zone: &str) -> AccountRecord {
        let now = self.now;
        self.accounts
            .entry(account)
            .or_insert_with(|| AccountRecord {
                network: network.into(),
                zone: zone.into(),
                created_at_ms: now,
                reach: Reach::Everyone,
                networks: vec![],
                access_key_hash: None,
            })
            .clone()
    }

    fn update_list(
        &mut self,
        account: u64,
        kind: ListKind,
        add: bool,
        others: &[u64],
    ) -> Result<u64, StorageError> {
        if !self.accounts.contains_key(&account) {
            return Err(StorageError::NoSuchAccount);
        }
        let mut changed = 0;
        for &o in others {
            let done = match add {
                true => self.lists.insert((account, kind, o)),
                false => self.lists.remove(&(account, kind, o)),
            };
            changed += u64::from(done);
        }
        Ok(changed)
    }

    fn purge(&mut self, account: u64) -> PurgeReport {
        let mut r = PurgeReport::default();
        let forgotten = self
            .remembered()
            .keys()
            .filter(|(sender, _)| sender.account == account)
            .count() as u64;
        let devices: Vec<DeviceKey> = self
            .devices
            .keys()
            .filter(|d| d.account == account)
            .copied()
            .collect();
        for d in devices {
            let md = self.devices.remove(&d).unwrap();
            r.devices += 1;
            r.envelopes += md.queue.len() as u64;
        }
        // Its sends are forgotten, wherever their envelopes wait.
        r.dedup_records = forgotten;
        self.standalone
            .retain(|(sender, _), _| sender.account != account);
        for md in self.devices.values_mut() {
            for e in md.queue.values_mut() {
                if e.dedup
                    .is_some_and(|((sender, _), _)| sender.account == account)
                {
                    e.dedup = None;
                }
            }
        }
        let groups: Vec<u64> = self.groups.keys().copied().collect();
        for g in groups {
            let mg = self.groups.get_mut(&g).unwrap();
            if !mg.members.contains_key(&account) {
                continue;
            }
            if mg.creator == account {
                self.groups.remove(&g);
                r.groups_deleted += 1;
            } else {
                mg.members.remove(&account);
                mg.version += 1;
                r.groups_left += 1;
            }
        }
        let before = self.lists.len();
        self.lists.retain(|e| e.0 != account);
        r.list_entries = (before - self.lists.len()) as u64;
        let before = self.push.len();
        self.push.retain(|d, _| d.account != account);
        r.push_tokens = (before - self.push.len()) as u64;
        r.account_record = self.accounts.remove(&account).is_some();
        r
    }

    /// Entries of `to` (device, header); `shared`: the group of shared entries; `dedup`: the
    /// identity and record the entries carry. A duplicate (`write` false: its identity is
    /// remembered) takes its seqs but writes nothing.
    fn enqueue(
        &mut self,
        to: &[(DeviceKey, Bytes)],
        env: &StoredEnvelope,
        shared: Option<u64>,
        write: bool,
        dedup: Option<(Ident, DedupRecord)>,
    ) -> Result<Vec<(DeviceKey, u64)>, EnqueueError> {
        // (entries, bytes) wanted per device so far.
        let mut wanted: BTreeMap<DeviceKey, (u64, u64)> = BTreeMap::new();
        for (d, header) in to {
            let Some(md) = self.devices.get(d) else {
                return Err(EnqueueError::UnknownDevice { device: *d });
            };
            let w = wanted.entry(*d).or_default();
            w.0 += 1;
            w.1 += (env.payload.len() + header.len()) as u64;
            let st = md.stats(*d);
            if st.queued + w.0 > MAX_LEN || st.bytes + w.1 > MAX_BYTES {
                return Err(EnqueueError::QueueFull { device: *d });
            }
        }
        let payload = shared.map(|_| {
            self.next_payload += 1;
            self.next_payload
        });
        let mut seqs = Vec::new();
        for (d, header) in to {
            let md = self.devices.get_mut(d).unwrap();
            let seq = md.next_seq;
            md.next_seq += 1;
            seqs.push((*d, seq));
            if !write {
                continue;
            }
            let entry = MEntry {
                env: env.clone(),
                group: shared.unwrap_or(0),
                header: header.clone(),
                payload,
                dedup,
            };
            md.queue.insert(seq, entry);
        }
        Ok(seqs)
    }

    /// Shared payloads some entry still points to.
    fn payloads(&self) -> u64 {
        let ids: BTreeSet<u64> = self
            .devices
            .values()
            .flat_map(|md| md.queue.values().filter_map(|e| e.payload))
            .collect();
        ids.len() as u64
    }

    fn create_group(
        &mut self,
        group: u64,
        creator: u64,
        members: &[u64],
    ) -> Result<GroupState, GroupError> {
        if group == 0 {
            return Err(GroupError::Invalid(String::new()));
        }
        if let Some(g) = self.groups.get(&group) {
            return match g.creator == creator {
                true => Ok(g.state(group)),
                false => Err(GroupError::Exists),
            };
        }
        let mut all: BTreeMap<u64, Role> = members.iter().map(|&a| (a, Role::Member)).collect();
        all.insert(creator, Role::Admin);
        if all.len() > MAX_GROUP as usize {
            return Err(GroupError::TooLarge);
        }
        let g = MGroup {
            creator,
            version: 1,
            members: all,
        };
        let state = g.state(group);
        self.groups.insert(group, g);
        Ok(state)
    }

    fn update_group(
        &mut self,
        group: u64,
        actor: u64,
        op: &GroupOp,
    ) -> Result<GroupState, GroupError> {
        if group == 0 {
            return Err(GroupError::Invalid(String::new()));
        }
        let Some(g) = self.groups.get(&group) else {
            return Err(GroupError::NoSuchGroup);
        };
        let Some(&role) = g.members.get(&actor) else {
            return Err(GroupError::NotMember);
        };
        let leave = matches!(op, GroupOp::RemoveMembers(l) if l.iter().all(|&a| a == actor));
        if role != Role::Admin && !leave {
            return Err(GroupError::NotAdmin);
        }
        let mut next = g.clone();
        match op {
            GroupOp::AddMembers(list) => {
                for &a in list {
                    next.members.entry(a).or_insert(Role::Member);
                }
                if next.members.len() > g.members.len().max(MAX_GROUP as usize) {
                    return Err(GroupError::TooLarge);
                }
            }
            GroupOp::RemoveMembers(list) => {
                if list.contains(&g.creator) {
                    return Err(GroupError::Invalid(String::new()));
                }
                for a in list {
                    next.members.remove(a);
                }
            }
            GroupOp::AddAdmins(list) => {
                for a in list {
                    match next.members.get_mut(a) {
                        Some(r) => *r = Role::Admin,
                        None => return Err(GroupError::Invalid(String::new())),
                    }
                }
            }
            GroupOp::RemoveAdmins(list) => {
                if list.contains(&g.creator) {
                    return Err(GroupError::Invalid(String::new()));
                }
                for a in list {
                    if let Some(r) = next.members.get_mut(a) {
                        *r = Role::Member;
                    }
                }
            }
            GroupOp::Delete => {
                let state = GroupState {
                    version: g.version + 1,
                    members: 0,
                    ..g.state(group)
                };
                self.groups.remove(&group);
                return Ok(state);
            }
        }
        if next.members != g.members {
            next.version += 1;
        }
        let state = next.state(group);
        self.groups.insert(group, next);
        Ok(state)
    }

    /// Deletes what expired, at most `max` in all: records of sends stored nowhere by
    /// (expiry, identity), then queue entries by device then seq.
    fn sweep(&mut self, max: usize) -> SweepStats {
        let now = self.now;
        let mut due: Vec<(u64, Ident)> = self
            .standalone
            .iter()
            .filter(|(_, (_, expires))| *expires <= now)
            .map(|(id, (_, expires))| (*expires, *id))
            .collect();
        due.sort();
        due.truncate(max);
        let mut stats = SweepStats::default();
        for (_, id) in due {
            self.standalone.remove(&id);
            stats.dedup_removed += 1;
        }
        let room = max - stats.dedup_removed as usize;
        'devices: for (d, md) in self.devices.iter_mut() {
            let seqs: Vec<u64> = md
                .queue
                .iter()
                .filter(|(_, e)| e.env.expires_at_ms <= now)
                .map(|(s, _)| *s)
                .collect();
            for seq in seqs {
                if stats.expired.len() >= room {
                    break 'devices;
                }
                md.queue.remove(&seq);
                stats.expired.push((*d, seq));
            }
        }
        stats.scanned = stats.dedup_removed + stats.expired.len() as u64;
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
            .map(|md| md.queue.iter().map(|(s, e)| e.entry(*s)).collect())
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
    let asked = [ACCOUNTS[1], 3, ACCOUNTS[0], ACCOUNTS[1]];
    let want: Vec<DeviceKey> = asked
        .iter()
        .flat_map(|a| m.devices.keys().filter(move |d| d.account == *a).copied())
        .collect();
    assert_eq!(store.devices_of_many(&asked).unwrap(), want);
    for g in GROUP_IDS {
        let want = m.groups.get(&g);
        let members = store.group_members(g).unwrap();
        assert_eq!(
            members.as_deref().cloned(),
            want.map(|mg| mg.members.keys().copied().collect::<Vec<u64>>()),
            "members of group {g}"
        );
        let want_info = want.map(|mg| {
            let all: Vec<(u64, Role)> = mg.members.iter().map(|(a, r)| (*a, *r)).collect();
            (mg.state(g), all)
        });
        assert_eq!(store.group_info(g, 0, 100).unwrap(), want_info);
        let page = want_info.map(|(st, all)| (st, all.into_iter().skip(1).take(1).collect()));
        assert_eq!(store.group_info(g, 1, 1).unwrap(), page);
    }
    let st = store.stats();
    assert_eq!(
        (st.devices, st.queued, st.queued_bytes),
        total,
        "store stats"
    );
    assert_eq!(st.pending_bytes, 0);
    assert_eq!(st.payloads, m.payloads(), "stored payloads");
    let counts = common::counts(store);
    assert_eq!(counts["queues"], total.1, "queue keys");
    assert_eq!(counts["devices"], total.0, "device keys");
    assert_eq!(counts["dedup"], m.standalone.len() as u64, "dedup keys");
    assert_eq!(counts["expiry"], 0, "expiry keys");
    assert_eq!(counts["payloads"], m.payloads(), "payload keys");
    assert_eq!(counts["groups"], m.groups.len() as u64, "group keys");
    let members: usize = m.groups.values().map(|g| g.members.len()).sum();
    assert_eq!(counts["members"], members as u64, "member keys");
    assert_eq!(counts["accounts"], m.accounts.len() as u64, "account keys");
    assert_eq!(counts["lists"], m.lists.len() as u64, "list keys");
    assert_eq!(counts["push"], m.push.len() as u64, "push keys");
    assert_eq!(counts["memberships"], members as u64, "membership keys");
    // The reverse index holds exactly the (account, group) pairs of the groups.
    let index: BTreeSet<(u64, u64)> = store
        .scan_all()
        .unwrap()
        .into_iter()
        .filter(|(cf, _, _)| cf == "memberships")
        .map(|(_, k, _)| {
            let account = u64::from_be_bytes(k[2..10].try_into().unwrap());
            let group = u64::from_be_bytes(k[10..18].try_into().unwrap());
            assert_eq!(&k[..2], slot_of(account).to_be_bytes());
            (account, group)
        })
        .collect();
    let want: BTreeSet<(u64, u64)> = m
        .groups
        .iter()
        .flat_map(|(g, mg)| mg.members.keys().map(move |a| (*a, *g)))
        .collect();
    assert_eq!(index, want, "memberships index");
    for a in GROUP_ACCOUNTS {
        assert_eq!(store.account(a).unwrap(), m.accounts.get(&a).cloned());
        for kind in KINDS {
            for o in GROUP_ACCOUNTS {
                assert_eq!(
                    store.list_contains(a, kind, o),
                    m.lists.contains(&(a, kind, o)),
                    "list {kind:?} of {a} has {o}"
                );
            }
            let want: Vec<u64> = m
                .lists
                .iter()
                .filter(|e| e.0 == a && e.1 == kind)
                .map(|e| e.2)
                .collect();
            assert_eq!(store.list(a, kind), want);
        }
    }
    for d in all_devices() {
        assert_eq!(
            store.push_token(d),
            m.push.get(&d).cloned(),
            "push of {d:?}"
        );
    }
    let remembered = m.remembered();
    for (sender, msg) in &m.idents {
        assert_eq!(
            store
                .dedup_lookup(*sender, MessageId::from_u128(*msg))
                .unwrap(),
            remembered.get(&(*sender, *msg)).copied(),
            "dedup of {msg} from {sender:?}"
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
        standalone: BTreeMap::new(),
        idents: BTreeSet::new(),
        next_msg: 1 << 64,
        groups: BTreeMap::new(),
        next_payload: 0,
        accounts: BTreeMap::new(),
        lists: BTreeSet::new(),
        push: BTreeMap::new(),
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
                let to: Vec<(DeviceKey, Bytes)> =
                    to.into_iter().map(|i| (dev(i), Bytes::new())).collect();
                send(&rt, &store, &mut m, &to, len, ttl, dedup, None);
            }
            Op::EnqueueShared {
                to,
                len,
                ttl,
                dedup,
                group,
            } => {
                let to: Vec<(DeviceKey, Bytes)> = to
                    .into_iter()
                    .map(|(i, h)| (dev(i), Bytes::from(vec![i; h as usize])))
                    .collect();
                let group = [0, gid(group)][group as usize % 2];
                send(&rt, &store, &mut m, &to, len, ttl, dedup, Some(group));
            }
            Op::SendGroup { group, len, ttl } => {
                let g = gid(group);
                let members = store.group_members(g).unwrap();
                let Some(members) = members else {
                    assert!(!m.groups.contains_key(&g));
                    check(&store, &m);
                    continue;
                };
                let to: Vec<(DeviceKey, Bytes)> = store
                    .devices_of_many(&members)
                    .unwrap()
                    .into_iter()
                    .map(|d| (d, Bytes::new()))
                    .collect();
                let want: Vec<DeviceKey> = m.groups[&g]
                    .members
                    .keys()
                    .flat_map(|a| m.devices.keys().filter(move |d| d.account == *a).copied())
                    .collect();
                assert_eq!(to.iter().map(|(d, _)| *d).collect::<Vec<_>>(), want);
                send(&rt, &store, &mut m, &to, len, ttl, None, Some(g));
            }
            Op::CreateGroup {
                group,
                creator,
                members,
            } => {
                let (g, creator) = (gid(group), gacc(creator));
                let members: Vec<u64> = members.into_iter().map(gacc).collect();
                let want = m.create_group(g, creator, &members);
                let got = rt.block_on(store.create_group(g, creator, &members, MAX_GROUP, m.now));
                assert_eq!(got.as_ref().map_err(kind), want.as_ref().map_err(kind));
            }
            Op::UpdateGroup {
                group,
                actor,
                op,
                list,
            } => {
                let (g, actor) = (gid(group), gacc(actor));
                let op = group_op(op, list.into_iter().map(gacc).collect());
                let want = m.update_group(g, actor, &op);
                let got = rt.block_on(store.update_group(g, actor, op.clone(), MAX_GROUP));
                assert_eq!(
                    got.as_ref().map_err(kind),
                    want.as_ref().map_err(kind),
                    "{op:?} by {actor} on {g}"
                );
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
                m.push.remove(&d);
                let want = m.devices.remove(&d).map(|md| md.stats(d));
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
                            .map(|(s, e)| e.entry(*s))
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
            Op::EnsureAccount {
                account,
                network,
                zone,
            } => {
                let a = gacc(account);
                let (net, zone) = (
                    NETWORKS[network as usize % NETWORKS.len()],
                    ZONES[zone as usize % ZONES.len()],
                );
                let want = m.ensure_account(a, net, zone);
                let got = rt.block_on(store.ensure_account(a, net, zone, m.now));
                assert_eq!(got.unwrap(), want);
            }
            Op::SetAccount { account, what, v } => {
                let a = gacc(account);
                let got = match what {
                    0 => {
                        let reach = Reach::from_u8(v % 3).unwrap();
                        if let Some(r) = m.accounts.get_mut(&a) {
                            r.reach = reach;
                        }
                        rt.block_on(store.set_reach(a, reach))
                    }
                    1 => {
                        if let Some(r) = m.accounts.get_mut(&a) {
                            let mut want = networks(v);
                            want.sort();
                            want.dedup();
                            r.networks = want;
                        }
                        rt.block_on(store.set_networks(a, networks(v)))
                    }
                    _ => {
                        let hash = (v % 3 != 0).then_some([v; 32]);
                        if let Some(r) = m.accounts.get_mut(&a) {
                            r.access_key_hash = hash;
                        }
                        rt.block_on(store.set_access_key_hash(a, hash))
                    }
                };
                let want = match m.accounts.contains_key(&a) {
                    true => Ok(()),
                    false => Err(StorageError::NoSuchAccount),
                };
                assert_eq!(got, want);
            }
            Op::UpdateList {
                account,
                block,
                add,
                others,
            } => {
                let a = gacc(account);
                let kind = KINDS[usize::from(block)];
                let others: Vec<u64> = others.into_iter().map(gacc).collect();
                let want = m.update_list(a, kind, add, &others);
                let got = rt.block_on(store.update_list(a, kind, add, &others));
                assert_eq!(got, want, "{kind:?} add {add} {others:?} of {a}");
            }
            Op::SetPush { dev: i, token } => {
                let d = dev(i);
                let token = (token != 0).then(|| Bytes::from(vec![token; token as usize % 4]));
                if m.devices.contains_key(&d) {
                    match token.clone().filter(|t| !t.is_empty()) {
                        Some(t) => m.push.insert(d, t),
                        None => m.push.remove(&d),
                    };
                }
                rt.block_on(store.set_push_token(d, token)).unwrap();
            }
            Op::Purge(i) => {
                let a = gacc(i);
                let want = m.purge(a);
                assert_eq!(rt.block_on(store.purge_account(a)).unwrap(), want);
            }
        }
        check(&store, &m);
    }
}

/// Enqueues one envelope to `to` (inline, or shared with `shared` = Some(group)) in the store
/// and the model, and compares.
#[allow(clippy::too_many_arguments)]
fn send(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    m: &mut Model,
    to: &[(DeviceKey, Bytes)],
    len: u8,
    ttl: u16,
    dedup: Option<(u8, u8)>,
    shared: Option<u64>,
) {
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
    // A send whose identity is remembered is a duplicate: nothing is written. Remembered: an
    // envelope of an earlier send with it is queued (however old), or the record of an
    // earlier send stored nowhere is within its window.
    let id = (sender, msg);
    let duplicate = dedup.is_some()
        && (m.queued(id)
            || m.standalone
                .get(&id)
                .is_some_and(|(_, expires)| *expires > m.now));
    let rec = DedupRecord {
        accepted_at_ms: m.now,
        recipients: to.len() as u32,
    };
    let carried = dedup.map(|_| (id, rec));
    let want = m.enqueue(to, &env, shared, !duplicate, carried);
    let dedup_arg = dedup.map(|_| (sender, to.len() as u64));
    let got = match shared {
        None => {
            let devices: Vec<DeviceKey> = to.iter().map(|(d, _)| *d).collect();
            store.enqueue(&devices, &env, dedup_arg)
        }
        Some(group) => {
            let recipients: Vec<SharedRecipient> = to
                .iter()
                .map(|(device, header)| SharedRecipient {
                    device: *device,
                    header: header.clone(),
                })
                .collect();
            store.enqueue_shared(&recipients, &env, group, dedup_arg)
        }
    };
    match (got, want) {
        (Ok(got), Ok(want)) => {
            assert_eq!(got.seqs, want);
            rt.block_on(got.commit).unwrap();
            if dedup.is_some() {
                m.idents.insert(id);
                // Stored nowhere: a record of its own, for the window.
                if !duplicate && to.is_empty() {
                    m.standalone.insert(id, (rec, m.now + WINDOW));
                }
            }
        }
        (Err(got), Err(want)) => assert_eq!(got, want),
        (got, want) => panic!("enqueue: store {got:?}, model {want:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in vec(op(), 1..80)) {
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
        // Groups and shared payloads.
        Op::Register(3),
        Op::CreateGroup {
            group: 0,
            creator: 0,
            members: vec![1, 2, 1],
        },
        Op::CreateGroup {
            group: 0,
            creator: 1,
            members: vec![],
        },
        Op::SendGroup {
            group: 0,
            len: 7,
            ttl: 500,
        },
        Op::UpdateGroup {
            group: 0,
            actor: 1,
            op: 0,
            list: vec![3],
        },
        Op::UpdateGroup {
            group: 0,
            actor: 1,
            op: 1,
            list: vec![1],
        },
        Op::EnqueueShared {
            to: vec![(0, 2), (1, 0), (0, 3)],
            len: 5,
            ttl: 100,
            dedup: Some((1, 4)),
            group: 1,
        },
        Op::Reopen,
        Op::Read {
            dev: 0,
            from: 0,
            max: 3,
        },
        Op::Ack {
            dev: 1,
            picks: vec![1, 2, 3],
        },
        Op::Sweep {
            advance: 101,
            max: 3,
        },
        Op::Remove(3),
        Op::Sweep {
            advance: 500,
            max: 20,
        },
        Op::UpdateGroup {
            group: 0,
            actor: 0,
            op: 4,
            list: vec![],
        },
        Op::Reopen,
        Op::SendGroup {
            group: 0,
            len: 1,
            ttl: 5,
        },
        // Accounts, lists, push tokens, then purges with a reopen after them.
        Op::SetAccount {
            account: 0,
            what: 0,
            v: 1,
        },
        Op::UpdateList {
            account: 0,
            block: true,
            add: true,
            others: vec![1],
        },
        Op::EnsureAccount {
            account: 0,
            network: 0,
            zone: 1,
        },
        Op::EnsureAccount {
            account: 0,
            network: 1,
            zone: 0,
        },
        Op::EnsureAccount {
            account: 1,
            network: 2,
            zone: 0,
        },
        Op::SetAccount {
            account: 0,
            what: 0,
            v: 1,
        },
        Op::SetAccount {
            account: 0,
            what: 1,
            v: 15,
        },
        Op::SetAccount {
            account: 0,
            what: 2,
            v: 7,
        },
        Op::UpdateList {
            account: 0,
            block: true,
            add: true,
            others: vec![1, 2, 1, 0],
        },
        Op::UpdateList {
            account: 0,
            block: false,
            add: true,
            others: vec![3],
        },
        Op::UpdateList {
            account: 1,
            block: true,
            add: true,
            others: vec![0],
        },
        Op::UpdateList {
            account: 0,
            block: true,
            add: false,
            others: vec![2, 2],
        },
        Op::Register(0),
        Op::Register(1),
        Op::Register(4),
        Op::SetPush { dev: 0, token: 3 },
        Op::SetPush { dev: 1, token: 2 },
        Op::SetPush { dev: 4, token: 1 },
        Op::SetPush { dev: 2, token: 3 },
        Op::SetPush { dev: 1, token: 4 },
        Op::CreateGroup {
            group: 0,
            creator: 0,
            members: vec![1, 2],
        },
        Op::CreateGroup {
            group: 1,
            creator: 1,
            members: vec![0],
        },
        Op::Enqueue {
            to: vec![0, 4],
            len: 3,
            ttl: 3000,
            dedup: Some((0, 9)),
        },
        Op::Enqueue {
            to: vec![4],
            len: 3,
            ttl: 3000,
            dedup: Some((4, 8)),
        },
        Op::SendGroup {
            group: 1,
            len: 4,
            ttl: 3000,
        },
        Op::Ack {
            dev: 0,
            picks: vec![1, 2, 3, 5],
        },
        Op::Reopen,
        Op::Purge(0),
        Op::Reopen,
        Op::Purge(0),
        Op::Remove(4),
        Op::Purge(1),
        Op::Reopen,
        Op::SetAccount {
            account: 1,
            what: 0,
            v: 2,
        },
        Op::EnsureAccount {
            account: 1,
            network: 0,
            zone: 0,
        },
    ]);
}
