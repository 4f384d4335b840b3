//! An in-memory model of the store for the simulation: it implements the core's [`View`] and
//! performs what the driver performs against RocksDB (writes with group commit, queue reads,
//! registrations, group and settings requests), with the same visible semantics.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use hearth_protocol::MessageId;
use hearth_storage::{
    AccountRecord, DedupRecord, DeviceKey, GroupError, GroupOp, GroupState, ListKind, QueueEntry,
    QueueState, Reach, Role, SendOutcome, StorageError, WriteOutcome, WriteSet,
};

use crate::core::{JobId, Loaded, Registration, Request, RequestOutcome, View};

#[derive(Debug, Clone)]
struct Group {
    creator: u64,
    version: u64,
    members: BTreeMap<u64, Role>,
}

#[derive(Debug, Default)]
struct Mem {
    /// Registered devices and their queue counters (committed + submitted, as the store counts).
    devices: BTreeMap<DeviceKey, QueueState>,
    accounts: HashMap<u64, Arc<AccountRecord>>,
    lists: HashSet<(u64, ListKind, u64)>,
    push: HashMap<DeviceKey, Bytes>,
    groups: HashMap<u64, Group>,
    /// Groups whose members are "in memory" (the others answer NotLoaded).
    cached: HashSet<u64>,
    /// Queue entries, with the identity (sender, msg_id) of the send that wrote them.
    queues: BTreeMap<(DeviceKey, u64), (QueueEntry, (DeviceKey, MessageId))>,
    /// What a retry is answered with while a copy of its first send is queued, and how many
    /// copies are.
    identities: HashMap<(DeviceKey, MessageId), (DedupRecord, usize)>,
    /// Records of sends stored nowhere (every recipient blocked), kept for the window.
    dedup: HashMap<(DeviceKey, MessageId), (DedupRecord, u64)>,
    /// Writes submitted and not yet committed, in order.
    submitted: VecDeque<(JobId, WriteSet)>,
    /// Puts of entries ever committed (for "never written" checks).
    written: u64,
}

/// The model store. Cheap to share; every method takes `&self`.
#[derive(Debug)]
pub(crate) struct MemStore {
    mem: Mutex<Mem>,
    dedup_window_ms: u64,
}

impl MemStore {
    pub(crate) fn new(dedup_window_ms: u64) -> MemStore {
        MemStore {
            mem: Mutex::new(Mem::default()),
            dedup_window_ms,
        }
    }

    fn m(&self) -> MutexGuard<'_, Mem> {
        self.mem.lock().expect("the model is never poisoned")
    }

    /// Record a device (and its account on first sight).
    pub(crate) fn register(&self, r: &Registration, now_ms: u64) {
        let mut m = self.m();
        m.accounts.entry(r.key.account).or_insert_with(|| {
            Arc::new(AccountRecord {
                network: r.network.clone(),
                zone: r.zone.clone(),
                created_at_ms: now_ms,
                reach: Reach::Everyone,
                networks: Vec::new(),
                access_key_hash: None,
            })
        });
        m.devices.entry(r.key).or_insert(QueueState {
            next_seq: 1,
            queued: 0,
            bytes: 0,
        });
    }

    /// Submit a write (its seqs are taken at once; its entries count once written, like
    /// `Store::write`).
    pub(crate) fn submit(&self, job: JobId, set: WriteSet) {
        let mut m = self.m();
        for send in &set.sends {
            for e in &send.entries {
                if let Some(q) = m.devices.get_mut(&e.device) {
                    q.next_seq = q.next_seq.max(e.seq + 1);
                }
            }
        }
        m.submitted.push_back((job, set));
    }

    /// Whether a write waits to be committed.
    pub(crate) fn has_submitted(&self) -> bool {
        !self.m().submitted.is_empty()
    }

    /// Commit the oldest submitted write: its outcome.
    pub(crate) fn commit_one(&self) -> Option<(JobId, WriteOutcome)> {
        let mut m = self.m();
        let (job, set) = m.submitted.pop_front()?;
        let mut outcomes = Vec::new();
        for send in set.sends {
            let len = send.env.payload.len() as u64;
            // As the store: a duplicate while a copy of the first send is queued, or (for a
            // send stored nowhere) within the window.
            let dup = send.dedup.and_then(|(sender, _)| {
                let id = (sender, send.env.msg_id);
                m.identities.get(&id).map(|(rec, _)| *rec).or_else(|| {
                    m.dedup
                        .get(&id)
                        .filter(|(_, expires)| *expires > send.env.accepted_at_ms)
                        .map(|(rec, _)| *rec)
                })
            });
            let registered: Vec<_> = send
                .entries
                .iter()
                .filter(|e| m.devices.contains_key(&e.device))
                .cloned()
                .collect();
            let skipped = (send.entries.len() - registered.len()) as u32;
            if let Some(rec) = dup {
                outcomes.push(SendOutcome::Duplicate(rec));
                continue;
            }
            let identity = send
                .dedup
                .map_or((DeviceKey::new(0, 0), send.env.msg_id), |(s, _)| {
                    (s, send.env.msg_id)
                });
            let copies = registered.len();
            for e in registered {
                m.written += 1;
                let q = m.devices.get_mut(&e.device).expect("registered");
                q.queued += 1;
                q.bytes += len + e.header.len() as u64;
                let entry = QueueEntry {
                    seq: e.seq,
                    envelope: send.env.clone(),
                    group: send.shared.unwrap_or(0),
                    header: e.header,
                };
                m.queues.insert((e.device, e.seq), (entry, identity));
            }
            if let Some((_, recipients)) = send.dedup {
                let rec = DedupRecord {
                    accepted_at_ms: send.env.accepted_at_ms,
                    recipients,
                };
                if copies > 0 {
                    m.identities.insert(identity, (rec, copies));
                } else {
                    let expires = send.env.accepted_at_ms + self.dedup_window_ms;
                    m.dedup.insert(identity, (rec, expires));
                }
            }
            outcomes.push(SendOutcome::Written { skipped });
        }
        let mut acked = 0;
        for (device, seqs) in set.acks {
            for seq in seqs {
                if let Some((e, id)) = m.queues.remove(&(device, seq)) {
                    acked += 1;
                    forget_copy(&mut m, id);
                    let q = m.devices.get_mut(&device).expect("a queued device");
                    q.queued -= 1;
                    q.bytes -= e.envelope.payload.len() as u64 + e.header.len() as u64;
                }
            }
        }
        Some((
            job,
            WriteOutcome {
                sends: outcomes,
                acked,
            },
        ))
    }

    /// Up to `max` committed entries of a queue from `from_seq` (expired ones included).
    pub(crate) fn read_queue(&self, key: DeviceKey, from_seq: u64, max: usize) -> Vec<QueueEntry> {
        self.m()
            .queues
            .range((key, from_seq)..=(key, u64::MAX))
            .take(max)
            .map(|(_, (e, _))| e.clone())
            .collect()
    }

    /// Delete expired entries and dedup records (the sweeper).
    pub(crate) fn sweep(&self, now_ms: u64) {
        let mut m = self.m();
        let expired: Vec<_> = m
            .queues
            .iter()
            .filter(|(_, (e, _))| e.envelope.expires_at_ms <= now_ms)
            .map(|(k, (e, _))| (*k, e.envelope.payload.len() as u64 + e.header.len() as u64))
            .collect();
        for ((device, seq), bytes) in expired {
            if let Some((_, id)) = m.queues.remove(&(device, seq)) {
                forget_copy(&mut m, id);
            }
            let q = m.devices.get_mut(&device).expect("a queued device");
            q.queued -= 1;
            q.bytes -= bytes;
        }
        m.dedup.retain(|_, (_, expires)| *expires > now_ms);
    }

    /// Committed entries of one device.
    pub(crate) fn queued(&self, key: DeviceKey) -> Vec<QueueEntry> {
        self.read_queue(key, 0, usize::MAX)
    }

    /// Entries ever written.
    pub(crate) fn entries_written(&self) -> u64 {
        self.m().written
    }

    /// Forget which groups are in memory (the next send to one loads it).
    pub(crate) fn evict_groups(&self) {
        self.m().cached.clear();
    }

    /// Load a group into memory.
    pub(crate) fn load_group(&self, group: u64) -> Option<Arc<Vec<u64>>> {
        let mut m = self.m();
        m.cached.insert(group);
        m.groups
            .get(&group)
            .map(|g| Arc::new(g.members.keys().copied().collect()))
    }

    /// Perform a store request.
    pub(crate) fn request(&self, r: &Request) -> RequestOutcome {
        let mut m = self.m();
        let done = |r: Result<(), StorageError>| RequestOutcome::Done(r);
        match r.clone() {
            Request::GroupCreate {
                group,
                creator,
                members,
                max_size,
            } => {
                let out = match m.groups.get(&group) {
                    Some(g) if g.creator != creator => Err(GroupError::Exists),
                    Some(g) => Ok(state(group, g)),
                    None => {
                        let mut list: BTreeMap<u64, Role> =
                            members.into_iter().map(|a| (a, Role::Member)).collect();
                        list.insert(creator, Role::Admin);
                        if list.len() > max_size as usize {
                            Err(GroupError::TooLarge)
                        } else {
                            let g = Group {
                                creator,
                                version: 1,
                                members: list,
                            };
                            let st = state(group, &g);
                            m.groups.insert(group, g);
                            m.cached.insert(group);
                            Ok(st)
                        }
                    }
                };
                RequestOutcome::Group(out)
            }
            Request::GroupUpdate {
                group,
                actor,
                op,
                max_size,
            } => RequestOutcome::Group(update(&mut m, group, actor, op, max_size)),
            Request::GroupGet {
                group,
                offset,
                limit,
                ..
            } => RequestOutcome::Page(Ok(m.groups.get(&group).map(|g| {
                let members = Arc::new(g.members.keys().copied().collect());
                let page = g
                    .members
                    .iter()
                    .skip(offset as usize)
                    .take(limit as usize)
                    .map(|(a, r)| (*a, *r))
                    .collect();
                (members, (state(group, g), page))
            }))),
            Request::SetReach { account, reach } => done(with_record(&mut m, account, |r| {
                r.reach = reach;
            })),
            Request::UpdateList {
                account,
                kind,
                add,
                accounts,
                ..
            } => {
                for a in accounts {
                    if add {
                        m.lists.insert((account, kind, a));
                    } else {
                        m.lists.remove(&(account, kind, a));
                    }
                }
                done(Ok(()))
            }
            Request::SetNetworks { account, names } => done(with_record(&mut m, account, |r| {
                r.networks = names;
            })),
            Request::SetAccessKey { account, hash } => {
                done(with_record(&mut m, account, |r| r.access_key_hash = hash))
            }
            Request::SetPushToken { device, token } => {
                match token {
                    Some(t) => m.push.insert(device, t),
                    None => m.push.remove(&device),
                };
                done(Ok(()))
            }
        }
    }
}

/// One copy of a send left the queues; the last one takes its identity along.
fn forget_copy(m: &mut Mem, id: (DeviceKey, MessageId)) {
    if let Some((_, n)) = m.identities.get_mut(&id) {
        *n -= 1;
        if *n == 0 {
            m.identities.remove(&id);
        }
    }
}

fn state(group: u64, g: &Group) -> GroupState {
    GroupState {
        group,
        creator: g.creator,
        version: g.version,
        members: g.members.len() as u32,
    }
}

fn with_record(
    m: &mut Mem,
    account: u64,
    f: impl FnOnce(&mut AccountRecord),
) -> Result<(), StorageError> {
    let rec = m
        .accounts
        .get(&account)
        .ok_or(StorageError::NoSuchAccount)?;
    let mut r = (**rec).clone();
    f(&mut r);
    m.accounts.insert(account, Arc::new(r));
    Ok(())
}

/// The group rules, as the store applies them (a subset: members, deletion).
fn update(
    m: &mut Mem,
    group: u64,
    actor: u64,
    op: GroupOp,
    max_size: u32,
) -> Result<GroupState, GroupError> {
    let g = m.groups.get_mut(&group).ok_or(GroupError::NoSuchGroup)?;
    let role = g
        .members
        .get(&actor)
        .copied()
        .ok_or(GroupError::NotMember)?;
    let admin = role == Role::Admin;
    let changed = match op {
        GroupOp::AddMembers(accounts) => {
            if !admin {
                return Err(GroupError::NotAdmin);
            }
            let before = g.members.len();
            for a in accounts {
                g.members.entry(a).or_insert(Role::Member);
            }
            if g.members.len() > max_size as usize {
                return Err(GroupError::TooLarge);
            }
            g.members.len() != before
        }
        GroupOp::RemoveMembers(accounts) => {
            if !admin && accounts.iter().any(|a| *a != actor) {
                return Err(GroupError::NotAdmin);
            }
            let before = g.members.len();
            for a in accounts {
                if a != g.creator {
                    g.members.remove(&a);
                }
            }
            g.members.len() != before
        }
        GroupOp::Delete => {
            if !admin {
                return Err(GroupError::NotAdmin);
            }
            let st = GroupState {
                members: 0,
                ..state(group, g)
            };
            m.groups.remove(&group);
            return Ok(st);
        }
        GroupOp::AddAdmins(_) | GroupOp::RemoveAdmins(_) => {
            return Err(GroupError::Invalid("not modelled".into()))
        }
    };
    if changed {
        g.version += 1;
    }
    Ok(state(group, g))
}

impl View for MemStore {
    fn devices(&self, account: u64) -> Vec<u32> {
        self.m()
            .devices
            .range(DeviceKey::new(account, 0)..=DeviceKey::new(account, u32::MAX))
            .map(|(k, _)| k.device)
            .collect()
    }

    fn queue(&self, key: DeviceKey) -> Option<QueueState> {
        self.m().devices.get(&key).copied()
    }

    fn account(&self, account: u64) -> Option<Arc<AccountRecord>> {
        self.m().accounts.get(&account).cloned()
    }

    fn listed(&self, account: u64, kind: ListKind, other: u64) -> bool {
        self.m().lists.contains(&(account, kind, other))
    }

    fn push_token(&self, key: DeviceKey) -> Option<Bytes> {
        self.m().push.get(&key).cloned()
    }

    fn group_members(&self, group: u64) -> Loaded<Option<Arc<Vec<u64>>>> {
        let m = self.m();
        if !m.cached.contains(&group) {
            return Loaded::NotLoaded;
        }
        Loaded::Ready(
            m.groups
                .get(&group)
                .map(|g| Arc::new(g.members.keys().copied().collect())),
        )
    }
}
