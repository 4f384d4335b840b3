//! The group-commit writer: the one thread that mutates the database.
//!
//! It takes one job, drains whatever else is waiting, turns them all into ONE write batch,
//! writes it (with fsync if any job needs durability), applies the counter changes, then
//! resolves every job. Existence checks (ack, sweep, remove) happen here, in submission order,
//! so an entry is deleted exactly once. Within a group, checks see the group's earlier jobs
//! through small overlays, since those are not in the database yet.
//!
//! The writer owns the reference counts of shared payloads (pointer entries per payload,
//! recounted at open): deleting a pointer for any reason (ack, expiry, device removal)
//! decrements it, and the last one deletes the payload in the same batch. Group operations
//! are decided here too, one at a time, against the group as of the earlier jobs, and every
//! change of a group's membership writes the `memberships` reverse index in the same batch.
//! Account records, lists and push tokens are changed here too (see `account_ops`), and their
//! in-memory caches are updated once the batch is written.

mod account_ops;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crossbeam_channel::Receiver;
use rocksdb::{ColumnFamily, IteratorMode, ReadOptions, WriteOptions};
use tokio::sync::oneshot;

use crate::account::{self, AccountRecord, ListKind, PurgeReport};
use crate::batch::Batch;
use crate::error::{GroupError, StorageError};
use crate::groups::{self, Decision, GroupEntry};
use crate::keys::{self, DeviceRecord, EntryMeta, QueueKey, DEDUP_KEY_LEN, KIND_DEDUP, KIND_QUEUE};
use crate::shared::{
    cache_group, Shared, Totals, ACCOUNTS, DEDUP, DEVICES, EXPIRY, GROUPS, LISTS, MEMBERS,
    MEMBERSHIPS, PAYLOADS, PUSH, QUEUES,
};
use crate::types::{
    DedupRecord, DeviceKey, DeviceStats, Durability, GroupOp, GroupState, SweepStats,
};
use crate::write::{SendOutcome, WriteOutcome};

pub(crate) use account_ops::AccountChange;

/// Key of the marker written by a clean shutdown (default column family).
pub(crate) const CLEAN_SHUTDOWN_KEY: &[u8] = b"hearth-clean-shutdown";

/// Jobs drained into one group at most.
const MAX_GROUP_JOBS: usize = 4096;
/// A group stops growing once its batch holds this many bytes.
const MAX_GROUP_BYTES: usize = 32 << 20;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StorageError>>;

/// A dedup key.
pub(crate) type DedupKey = [u8; DEDUP_KEY_LEN];

/// Work for the writer.
pub(crate) enum Job {
    Write(WriteJob),
    Register {
        prefix: keys::DevicePrefix,
        record: DeviceRecord,
        reply: Reply<()>,
    },
    Ack {
        device: DeviceKey,
        seqs: Vec<u64>,
        reply: Reply<u64>,
    },
    Sweep {
        now_ms: u64,
        max: usize,
        reply: Reply<SweepStats>,
    },
    Remove {
        device: DeviceKey,
        record: DeviceRecord,
        reply: Reply<Option<DeviceStats>>,
    },
    Group {
        group: u64,
        req: GroupReq,
        reply: oneshot::Sender<Result<GroupState, GroupError>>,
    },
    /// Creates the record if absent; answers the record in force.
    EnsureAccount {
        account: u64,
        record: AccountRecord,
        reply: Reply<AccountRecord>,
    },
    SetAccount {
        account: u64,
        change: AccountChange,
        reply: Reply<()>,
    },
    List {
        account: u64,
        kind: ListKind,
        add: bool,
        others: Vec<u64>,
        reply: Reply<u64>,
    },
    Push {
        device: DeviceKey,
        token: Option<Bytes>,
        reply: Reply<()>,
    },
    /// Erases an account; `devices`: its registered devices, already marked as removing.
    Purge {
        account: u64,
        devices: Vec<(DeviceKey, DeviceRecord)>,
        reply: Reply<PurgeReport>,
    },
    /// Deletes the expiry index keys (found by a scan) whose entry or record is gone.
    CleanIndex {
        keys: Vec<Box<[u8]>>,
        reply: Reply<u64>,
    },
}

/// A group operation.
pub(crate) enum GroupReq {
    Create {
        creator: u64,
        members: Vec<u64>,
        max_size: u32,
        now_ms: u64,
    },
    Update {
        actor: u64,
        op: GroupOp,
        max_size: u32,
    },
}

/// The values of an enqueue's entries.
pub(crate) enum Values {
    /// Every entry has this value.
    Same(Vec<u8>),
    /// Entry i has `arena[ends[i - 1]..ends[i]]` (from 0 for the first).
    Each { arena: Vec<u8>, ends: Vec<usize> },
}

impl Values {
    fn range(&self, i: usize) -> Range<usize> {
        match self {
            Values::Same(v) => 0..v.len(),
            Values::Each { ends, .. } => {
                let start = if i == 0 { 0 } else { ends[i - 1] };
                start..ends[i]
            }
        }
    }

    fn get(&self, i: usize) -> &[u8] {
        let r = self.range(i);
        match self {
            Values::Same(v) => &v[r],
            Values::Each { arena, .. } => &arena[r],
        }
    }
}

/// One envelope (inline, or pointers to a shared payload) for one or more device queues,
/// encoded, its queue counters already taken.
pub(crate) struct PreparedSend {
    pub values: Values,
    pub entries: Vec<QueueKey>,
    /// Each entry's device and its bytes.
    pub counted: Vec<(DeviceKey, u64)>,
    /// Whether `counted` took room in the queues (`Store::enqueue`), to give back once the
    /// writer is done with it.
    pub reserved: bool,
    /// Device records with their new `next_seq`.
    pub records: Vec<(keys::DevicePrefix, DeviceRecord)>,
    /// Dedup key, record and expiry.
    pub dedup: Option<(DedupKey, DedupRecord, u64)>,
    /// The shared payload the entries point to: its id and `payloads` value.
    pub payload: Option<(u64, Vec<u8>)>,
    /// Bytes this send added to `pending_bytes`.
    pub pending: u64,
    /// Entries dropped at submission (device not registered).
    pub skipped: u32,
    /// When the envelope was accepted (a dedup record that expired before is no duplicate).
    pub accepted_at_ms: u64,
}

/// Sends and acks written in one group.
pub(crate) struct WriteJob {
    pub sends: Vec<PreparedSend>,
    pub acks: Vec<(DeviceKey, Vec<u64>)>,
    pub reply: WriteReply,
}

/// Who waits for a [`WriteJob`].
pub(crate) enum WriteReply {
    /// The routing core: one outcome per send, and the acks applied.
    Outcomes(Reply<WriteOutcome>),
    /// `Store::enqueue`: durable or not.
    Unit(Reply<()>),
}

/// Runs until every `Store` handle is gone, then marks a clean shutdown. `refs`: pointer
/// entries per shared payload, as loaded.
pub(crate) fn run(sh: Arc<Shared>, rx: Receiver<Job>, mut refs: HashMap<u64, u32>) {
    while let Ok(first) = rx.recv() {
        let mut group = Group::new(&sh, &mut refs);
        group.add(first);
        let mut jobs = 1;
        while jobs < MAX_GROUP_JOBS && group.batch.wb.size_in_bytes() < MAX_GROUP_BYTES {
            match rx.try_recv() {
                Ok(job) => group.add(job),
                Err(_) => break,
            }
            jobs += 1;
        }
        group.commit();
    }
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    if let Err(e) = sh.db.put_opt(CLEAN_SHUTDOWN_KEY, [], &wo) {
        tracing::error!(error = %e, "could not mark the clean shutdown");
    }
}

struct Cfs<'a> {
    queues: &'a ColumnFamily,
    devices: &'a ColumnFamily,
    dedup: &'a ColumnFamily,
    expiry: &'a ColumnFamily,
    groups: &'a ColumnFamily,
    members: &'a ColumnFamily,
    payloads: &'a ColumnFamily,
    accounts: &'a ColumnFamily,
    lists: &'a ColumnFamily,
    push: &'a ColumnFamily,
    memberships: &'a ColumnFamily,
}

/// A job's answer, sent once the group is written: its own outcome, unless the write failed.
enum Done {
    Unit(Reply<()>),
    Count(Reply<u64>, Result<u64, StorageError>),
    Sweep(Reply<SweepStats>, Result<SweepStats, StorageError>),
    Removed(
        Reply<Option<DeviceStats>>,
        Result<DeviceStats, StorageError>,
    ),
    Group(
        oneshot::Sender<Result<GroupState, GroupError>>,
        Result<GroupState, GroupError>,
    ),
    /// The answer of a less frequent job, boxed.
    Other(Answer),
}

/// Sends a job's answer once the write's outcome is known.
type Answer = Box<dyn FnOnce(&Result<(), StorageError>) + Send>;

/// Answers `own` unless the write failed.
fn answer<T>(reply: Reply<T>, own: Result<T, StorageError>, written: &Result<(), StorageError>) {
    // A dropped receiver only means the caller stopped waiting.
    let _ = reply.send(own.and_then(|v| written.clone().map(|()| v)));
}

impl Done {
    fn other<T: Send + 'static>(reply: Reply<T>, own: Result<T, StorageError>) -> Done {
        Done::Other(Box::new(move |written| answer(reply, own, written)))
    }

    fn resolve(self, written: &Result<(), StorageError>) {
        match self {
            Done::Unit(r) => answer(r, Ok(()), written),
            Done::Count(r, own) => answer(r, own, written),
            Done::Sweep(r, own) => answer(r, own, written),
            Done::Removed(r, own) => answer(r, own.map(Some), written),
            Done::Group(r, own) => {
                let _ = r.send(
                    own.and_then(|s| written.clone().map(|()| s).map_err(GroupError::Storage)),
                );
            }
            Done::Other(f) => f(written),
        }
    }
}

/// A queue entry found by a read, to be deleted.
struct Found {
    key: QueueKey,
    device: DeviceKey,
    seq: u64,
    meta: EntryMeta,
}

struct Group<'a> {
    sh: &'a Shared,
    cfs: Cfs<'a>,
    /// Pointer entries per shared payload, as committed.
    refs: &'a mut HashMap<u64, u32>,
    /// Reference counts changed by this group.
    refs_overlay: HashMap<u64, u32>,
    /// Shared payloads written and deleted by this group.
    payloads_created: u64,
    payloads_deleted: Vec<u64>,
    /// Groups as of the end of this group so far (None: no such group).
    groups_overlay: HashMap<u64, Option<GroupEntry>>,
    /// Account records written (Some) or deleted (None) by earlier jobs of this group.
    account_overlay: HashMap<u64, Option<Arc<AccountRecord>>>,
    /// List entries added (true) or deleted (false) by earlier jobs of this group.
    list_overlay: HashMap<(u64, ListKind, u64), bool>,
    /// Push tokens set (Some) or deleted (None) by earlier jobs of this group.
    push_overlay: HashMap<DeviceKey, Option<Bytes>>,
    batch: Batch,
    /// Queue entries put (Some) or deleted (None) by earlier jobs of this group.
    queue_overlay: BTreeMap<QueueKey, Option<EntryMeta>>,
    /// Dedup records put (Some(expiry)) or deleted (None) by earlier jobs of this group.
    dedup_overlay: HashMap<DedupKey, Option<u64>>,
    /// The records of the dedup keys this group put.
    dedup_written: HashMap<DedupKey, DedupRecord>,
    /// Entries this group writes (device, bytes, whether room was reserved for it).
    added: Vec<(DeviceKey, u64, bool)>,
    /// Room reserved for entries this group does not write (duplicates, failed reads).
    unreserved: Vec<(DeviceKey, u64)>,
    /// Shared payloads cached at submission that are not written.
    payloads_dropped: Vec<u64>,
    /// Expiry index keys deleted by earlier jobs of this group.
    index_gone: HashSet<Vec<u8>>,
    /// Entries and payload bytes removed per device.
    removed_entries: HashMap<DeviceKey, (u64, u64)>,
    /// Devices whose removal this group writes.
    removed_devices: Vec<DeviceKey>,
    /// Devices whose removal failed before reaching the batch.
    unremoved: Vec<DeviceKey>,
    sync: bool,
    pending_bytes: u64,
    done: Vec<Done>,
}

impl<'a> Group<'a> {
    fn new(sh: &'a Shared, refs: &'a mut HashMap<u64, u32>) -> Group<'a> {
        Group {
            sh,
            cfs: Cfs {
                queues: sh.cf(QUEUES),
                devices: sh.cf(DEVICES),
                dedup: sh.cf(DEDUP),
                expiry: sh.cf(EXPIRY),
                groups: sh.cf(GROUPS),
                members: sh.cf(MEMBERS),
                payloads: sh.cf(PAYLOADS),
                accounts: sh.cf(ACCOUNTS),
                lists: sh.cf(LISTS),
                push: sh.cf(PUSH),
                memberships: sh.cf(MEMBERSHIPS),
            },
            refs,
            refs_overlay: HashMap::new(),
            payloads_created: 0,
            payloads_deleted: Vec::new(),
            groups_overlay: HashMap::new(),
            account_overlay: HashMap::new(),
            list_overlay: HashMap::new(),
            push_overlay: HashMap::new(),
            batch: Batch::default(),
            queue_overlay: BTreeMap::new(),
            dedup_overlay: HashMap::new(),
            dedup_written: HashMap::new(),
            added: Vec::new(),
            unreserved: Vec::new(),
            payloads_dropped: Vec::new(),
            index_gone: HashSet::new(),
            removed_entries: HashMap::new(),
            removed_devices: Vec::new(),
            unremoved: Vec::new(),
            sync: false,
            pending_bytes: 0,
            done: Vec::new(),
        }
    }

    fn durable(&mut self) {
        self.sync |= self.sh.opts.durability == Durability::Sync;
    }

    fn add(&mut self, job: Job) {
        match job {
            Job::Write(job) => self.write(job),
            Job::Register {
                prefix,
                record,
                reply,
            } => {
                self.batch
                    .wb
                    .put_cf(self.cfs.devices, prefix, record.encode());
                self.durable();
                self.done.push(Done::Unit(reply));
            }
            Job::Ack {
                device,
                seqs,
                reply,
            } => {
                let own = self.find_acked(device, seqs).map(|found| {
                    let mut n = 0;
                    for f in found {
                        n += u64::from(self.delete_entry(f));
                    }
                    n
                });
                self.done.push(Done::Count(reply, own));
            }
            Job::Sweep { now_ms, max, reply } => {
                let own = self.sweep(now_ms, max);
                self.done.push(Done::Sweep(reply, own));
            }
            Job::Remove {
                device,
                record,
                reply,
            } => {
                let own = match self.find_queue(device) {
                    Ok(found) => {
                        // A removed device gets no more wake-ups.
                        self.set_push(device, None);
                        Ok(self.remove(device, record, found))
                    }
                    Err(e) => {
                        self.unremoved.push(device);
                        Err(e)
                    }
                };
                self.done.push(Done::Removed(reply, own));
            }
            Job::Group { group, req, reply } => {
                let own = self.group_op(group, req);
                self.done.push(Done::Group(reply, own));
            }
            Job::EnsureAccount {
                account,
                record,
                reply,
            } => {
                let own = self.ensure_account(account, record);
                self.done.push(Done::other(reply, Ok(own)));
            }
            Job::SetAccount {
                account,
                change,
                reply,
            } => {
                let own = self.set_account(account, change);
                self.done.push(Done::other(reply, own));
            }
            Job::List {
                account,
                kind,
                add,
                others,
                reply,
            } => {
                let own = self.update_list(account, kind, add, others);
                self.done.push(Done::Count(reply, own));
            }
            Job::Push {
                device,
                token,
                reply,
            } => {
                self.set_push(device, token);
                self.done.push(Done::Unit(reply));
            }
            Job::Purge {
                account,
                devices,
                reply,
            } => {
                let own = self.purge(account, devices);
                self.done.push(Done::other(reply, own));
            }
            Job::CleanIndex { keys, reply } => {
                let own = self.clean_index(keys);
                self.done.push(Done::Count(reply, own));
            }
        }
    }

    /// Writes a group of sends and acks. Reads first (dedup records, acked entries), so a
    /// failed read leaves the batch untouched and gives every counter back.
    fn write(&mut self, job: WriteJob) {
        let reads = self.write_reads(&job);
        let (dups, acked) = match reads {
            Ok(r) => r,
            Err(e) => {
                for send in &job.sends {
                    self.pending_bytes += send.pending;
                    if send.reserved {
                        self.unreserved.extend_from_slice(&send.counted);
                    }
                    if let Some((id, _)) = send.payload {
                        self.payloads_dropped.push(id);
                    }
                }
                self.done.push(match job.reply {
                    WriteReply::Outcomes(r) => Done::other(r, Err(e)),
                    WriteReply::Unit(r) => Done::other(r, Err(e)),
                });
                return;
            }
        };
        let mut outcomes = Vec::with_capacity(job.sends.len());
        for (send, dup) in job.sends.into_iter().zip(dups) {
            self.pending_bytes += send.pending;
            if let Some(rec) = dup {
                if send.reserved {
                    self.unreserved.extend_from_slice(&send.counted);
                }
                if let Some((id, _)) = send.payload {
                    self.payloads_dropped.push(id);
                }
                // Its seqs were given out (and maybe seen live): they are never reused.
                for (prefix, record) in &send.records {
                    self.batch
                        .wb
                        .put_cf(self.cfs.devices, prefix, record.encode());
                }
                outcomes.push(SendOutcome::Duplicate(rec));
                continue;
            }
            outcomes.push(SendOutcome::Written {
                skipped: send.skipped,
            });
            self.put_send(send);
        }
        let mut acks = 0;
        for found in acked {
            acks += u64::from(self.delete_entry(found));
        }
        // Deletes alone need no fsync: a lost ack only means a redelivery.
        if outcomes
            .iter()
            .any(|o| matches!(o, SendOutcome::Written { .. }))
        {
            self.durable();
        }
        self.done.push(match job.reply {
            WriteReply::Outcomes(r) => Done::other(
                r,
                Ok(WriteOutcome {
                    sends: outcomes,
                    acked: acks,
                }),
            ),
            WriteReply::Unit(r) => Done::Unit(r),
        });
    }

    /// The reads a write job needs: each send's committed dedup record, the acked entries.
    #[allow(clippy::type_complexity)]
    fn write_reads(
        &self,
        job: &WriteJob,
    ) -> Result<(Vec<Option<DedupRecord>>, Vec<Found>), StorageError> {
        let mut dups = Vec::with_capacity(job.sends.len());
        for send in &job.sends {
            dups.push(match &send.dedup {
                Some((key, ..)) => self
                    .dedup_record(key)?
                    .filter(|(_, expires)| *expires > send.accepted_at_ms)
                    .map(|(rec, _)| rec),
                None => None,
            });
        }
        let mut acked = Vec::new();
        for (device, seqs) in &job.acks {
            acked.extend(self.find_acked(*device, seqs.clone())?);
        }
        Ok((dups, acked))
    }

    fn put_send(&mut self, send: PreparedSend) {
        let reserved = send.reserved;
        self.added
            .extend(send.counted.iter().map(|&(d, b)| (d, b, reserved)));
        let same = match &send.values {
            Values::Same(v) => Some(keys::entry_meta(v).expect("the store encodes its values")),
            Values::Each { .. } => None,
        };
        for (i, key) in send.entries.iter().enumerate() {
            let value = send.values.get(i);
            let meta = match same {
                Some(meta) => meta,
                None => keys::entry_meta(value).expect("the store encodes its values"),
            };
            self.batch.wb.put_cf(self.cfs.queues, key, value);
            let index = keys::queue_expiry_key(meta.expires_at_ms, key);
            self.batch.wb.put_cf(self.cfs.expiry, index, []);
            self.queue_overlay.insert(*key, Some(meta));
        }
        if let Some((id, value)) = &send.payload {
            if !send.entries.is_empty() {
                self.batch
                    .wb
                    .put_cf(self.cfs.payloads, keys::payload_key(*id), value);
                let n = u32::try_from(send.entries.len()).expect("fewer than 2^32 recipients");
                self.refs_overlay.insert(*id, n);
                self.payloads_created += 1;
            }
        }
        for (prefix, record) in &send.records {
            self.batch
                .wb
                .put_cf(self.cfs.devices, prefix, record.encode());
        }
        if let Some((key, rec, expires)) = send.dedup {
            self.batch
                .wb
                .put_cf(self.cfs.dedup, key, keys::encode_dedup(rec, expires));
            self.batch.wb.put_cf(
                self.cfs.expiry,
                keys::expiry_key(expires, KIND_DEDUP, &key),
                [],
            );
            self.dedup_overlay.insert(key, Some(expires));
            self.dedup_written.insert(key, rec);
        }
    }

    /// Drops one reference to a shared payload; the last one deletes it.
    fn unref(&mut self, id: u64) {
        let n = match self.refs_overlay.get(&id) {
            Some(n) => *n,
            None => self.refs.get(&id).copied().unwrap_or(0),
        };
        let Some(n) = n.checked_sub(1) else {
            tracing::error!(id, "a pointer to a shared payload with no references");
            return;
        };
        self.refs_overlay.insert(id, n);
        if n == 0 {
            // Put once, deleted once.
            self.batch
                .single_delete(self.sh.payloads_cf_id, &keys::payload_key(id));
            self.payloads_deleted.push(id);
        }
    }

    /// The group as of the end of this group so far.
    fn group_entry(&mut self, group: u64) -> Result<Option<GroupEntry>, StorageError> {
        if let Some(o) = self.groups_overlay.get(&group) {
            return Ok(o.clone());
        }
        // The cache holds committed groups, and only this thread commits.
        let cached = self.sh.read_groups().get(&group).cloned();
        let entry = match cached {
            Some(e) => Some(e),
            None => self.sh.load_group(group)?,
        };
        self.groups_overlay.insert(group, entry.clone());
        Ok(entry)
    }

    fn group_op(&mut self, group: u64, req: GroupReq) -> Result<GroupState, GroupError> {
        let current = self.group_entry(group)?;
        let decision = match &req {
            GroupReq::Create {
                creator,
                members,
                max_size,
                now_ms,
            } => groups::create(
                current.as_ref(),
                group,
                *creator,
                members,
                *max_size,
                *now_ms,
            ),
            GroupReq::Update {
                actor,
                op,
                max_size,
            } => groups::update(current.as_ref(), group, *actor, op, *max_size),
        }?;
        Ok(self.apply_group(group, current.as_ref(), decision))
    }

    /// Writes a decision about `group` (which was `before`): the group record, its member
    /// keys and the memberships index.
    fn apply_group(
        &mut self,
        group: u64,
        before: Option<&GroupEntry>,
        decision: Decision,
    ) -> GroupState {
        let (state, after, put, delete) = match decision {
            Decision::Unchanged(state) => return state,
            Decision::Changed {
                state,
                after,
                put,
                delete,
            } => (state, after, put, delete),
        };
        for (account, role) in put {
            self.batch.wb.put_cf(
                self.cfs.members,
                keys::member_key(group, account),
                [role.to_u8()],
            );
            // Role changes put present members again: their membership is already there.
            if !before.is_some_and(|e| e.is_member(account)) {
                self.batch.wb.put_cf(
                    self.cfs.memberships,
                    account::membership_key(account, group),
                    [],
                );
            }
        }
        for account in delete {
            self.batch
                .wb
                .delete_cf(self.cfs.members, keys::member_key(group, account));
            self.batch.wb.delete_cf(
                self.cfs.memberships,
                account::membership_key(account, group),
            );
        }
        let key = keys::group_key(group);
        match &after {
            Some(e) => self
                .batch
                .wb
                .put_cf(self.cfs.groups, key, e.record().encode()),
            None => self.batch.wb.delete_cf(self.cfs.groups, key),
        }
        self.groups_overlay.insert(group, after);
        self.durable();
        state
    }

    /// The entry under `key` as of the end of this group so far.
    fn entry(&self, key: &QueueKey) -> Result<Option<EntryMeta>, StorageError> {
        if let Some(o) = self.queue_overlay.get(key) {
            return Ok(*o);
        }
        match self.sh.db.get_pinned_cf(self.cfs.queues, key)? {
            Some(v) => Ok(Some(keys::entry_meta(&v)?)),
            None => Ok(None),
        }
    }

    /// The expiry of the dedup record under `key` as of the end of this group so far.
    fn dedup_expiry(&self, key: &DedupKey) -> Result<Option<u64>, StorageError> {
        if let Some(o) = self.dedup_overlay.get(key) {
            return Ok(*o);
        }
        match self.sh.db.get_pinned_cf(self.cfs.dedup, key)? {
            Some(v) => Ok(Some(keys::decode_dedup(&v)?.1)),
            None => Ok(None),
        }
    }

    /// The dedup record under `key` and its expiry, as of the end of this group so far.
    fn dedup_record(&self, key: &DedupKey) -> Result<Option<(DedupRecord, u64)>, StorageError> {
        match self.dedup_overlay.get(key) {
            Some(None) => return Ok(None),
            Some(Some(expires)) => {
                if let Some(rec) = self.dedup_written.get(key) {
                    return Ok(Some((*rec, *expires)));
                }
            }
            None => {}
        }
        match self.sh.db.get_pinned_cf(self.cfs.dedup, key)? {
            Some(v) => Ok(Some(keys::decode_dedup(&v)?)),
            None => Ok(None),
        }
    }

    fn find_acked(
        &self,
        device: DeviceKey,
        mut seqs: Vec<u64>,
    ) -> Result<Vec<Found>, StorageError> {
        seqs.sort_unstable();
        seqs.dedup();
        let mut found = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let key = keys::queue_key(device, seq);
            if let Some(meta) = self.entry(&key)? {
                found.push(Found {
                    key,
                    device,
                    seq,
                    meta,
                });
            }
        }
        Ok(found)
    }

    /// Single-deletes an entry (put once, deleted once) and counts it; false if this group
    /// deleted it already.
    fn delete_entry(&mut self, f: Found) -> bool {
        if self.queue_overlay.get(&f.key) == Some(&None) {
            return false;
        }
        self.batch.single_delete(self.sh.queues_cf_id, &f.key);
        self.queue_overlay.insert(f.key, None);
        let c = self.removed_entries.entry(f.device).or_default();
        c.0 += 1;
        c.1 += f.meta.bytes;
        if let Some(id) = f.meta.payload {
            self.unref(id);
        }
        true
    }

    fn sweep(&mut self, now_ms: u64, max: usize) -> Result<SweepStats, StorageError> {
        // Read first, then change the group: a failed read leaves the group untouched.
        let mut ro = ReadOptions::default();
        if let Some(end) = now_ms.checked_add(1) {
            ro.set_iterate_upper_bound(end.to_be_bytes());
        }
        let mut visited = Vec::new();
        let mut expired = Vec::new();
        let mut dedup = Vec::new();
        for item in self
            .sh
            .db
            .iterator_cf_opt(self.cfs.expiry, ro, IteratorMode::Start)
        {
            if visited.len() >= max {
                break;
            }
            let (index, _) = item?;
            if self.index_gone.contains(&*index) {
                continue;
            }
            let (expires, kind, key) = keys::decode_expiry_key(&index)
                .ok_or_else(|| StorageError::Corrupt("expiry key".into()))?;
            debug_assert!(expires <= now_ms);
            match kind {
                KIND_QUEUE => {
                    let (device, seq) = keys::decode_queue_key(key)
                        .ok_or_else(|| StorageError::Corrupt("expiry key".into()))?;
                    let key: QueueKey = key.try_into().expect("queue key length checked");
                    // The entry may be gone (acked) or be a newer one under a reused key.
                    if let Some(meta) = self.entry(&key)? {
                        if meta.expires_at_ms <= now_ms {
                            expired.push(Found {
                                key,
                                device,
                                seq,
                                meta,
                            });
                        }
                    }
                }
                KIND_DEDUP => {
                    let key: DedupKey = key
                        .try_into()
                        .map_err(|_| StorageError::Corrupt("expiry key".into()))?;
                    if matches!(self.dedup_expiry(&key)?, Some(e) if e <= now_ms) {
                        dedup.push(key);
                    }
                }
                _ => {}
            }
            visited.push(index);
        }
        let mut stats = SweepStats {
            scanned: visited.len() as u64,
            ..SweepStats::default()
        };
        for index in visited {
            self.batch.wb.delete_cf(self.cfs.expiry, &index);
            self.index_gone.insert(index.into_vec());
        }
        for f in expired {
            if self.queue_overlay.get(&f.key) != Some(&None) {
                stats.expired.push((f.device, f.seq));
                let _ = self.delete_entry(f);
            }
        }
        for key in dedup {
            if self.dedup_overlay.get(&key) != Some(&None) {
                self.batch.wb.delete_cf(self.cfs.dedup, key);
                self.dedup_overlay.insert(key, None);
                stats.dedup_removed += 1;
            }
        }
        Ok(stats)
    }

    /// Every entry of a device's queue as of the end of this group so far.
    fn find_queue(&self, device: DeviceKey) -> Result<Vec<Found>, StorageError> {
        let mut entries = BTreeMap::new();
        for item in self.sh.scan(QUEUES, &keys::device_prefix(device)) {
            let (k, v) = item?;
            let key: QueueKey = (*k)
                .try_into()
                .map_err(|_| StorageError::Corrupt("queue key".into()))?;
            entries.insert(key, keys::entry_meta(&v)?);
        }
        let range = keys::queue_key(device, 0)..=keys::queue_key(device, u64::MAX);
        for (key, o) in self.queue_overlay.range(range) {
            match o {
                Some(meta) => entries.insert(*key, *meta),
                None => entries.remove(key),
            };
        }
        Ok(entries
            .into_iter()
            .map(|(key, meta)| {
                let seq = keys::decode_queue_key(&key).expect("a queue key").1;
                Found {
                    key,
                    device,
                    seq,
                    meta,
                }
            })
            .collect())
    }

    /// Deletes a device's queue (with the expiry index of each entry) and its record.
    fn remove(
        &mut self,
        device: DeviceKey,
        record: DeviceRecord,
        found: Vec<Found>,
    ) -> DeviceStats {
        let (mut queued, mut bytes) = (0, 0);
        for f in found {
            // Plain deletes: a removed device's keys may be written again if it re-registers.
            self.batch.wb.delete_cf(self.cfs.queues, f.key);
            let index = keys::expiry_key(f.meta.expires_at_ms, KIND_QUEUE, &f.key);
            self.batch.wb.delete_cf(self.cfs.expiry, &index);
            self.index_gone.insert(index);
            self.queue_overlay.insert(f.key, None);
            queued += 1;
            bytes += f.meta.bytes;
            if let Some(id) = f.meta.payload {
                self.unref(id);
            }
        }
        let c = self.removed_entries.entry(device).or_default();
        c.0 += queued;
        c.1 += bytes;
        self.batch
            .wb
            .delete_cf(self.cfs.devices, keys::device_prefix(device));
        self.removed_devices.push(device);
        self.durable();
        DeviceStats {
            key: device,
            slot: device.slot(),
            queued,
            bytes,
            next_seq: record.next_seq,
            registered_at_ms: record.registered_at_ms,
        }
    }

    /// Writes the batch, applies the counter changes, answers every job.
    fn commit(mut self) {
        let sh = self.sh;
        let batch = std::mem::take(&mut self.batch);
        let written = if batch.len() == 0 {
            Ok(())
        } else {
            let start = Instant::now();
            Totals::add(&sh.totals.batch_ops, batch.len() as u64);
            let mut wo = WriteOptions::default();
            wo.set_sync(self.sync);
            let gate = sh.gate.write().unwrap_or_else(|e| e.into_inner());
            let written = sh
                .db
                .write_opt(batch.finish(), &wo)
                .map_err(StorageError::from);
            if written.is_ok() {
                self.apply();
                self.apply_shared();
            } else {
                self.unremoved.append(&mut self.removed_devices);
            }
            drop(gate);
            let us = start.elapsed().as_micros() as u64;
            sh.latency
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(us);
            Totals::add(&sh.totals.commits, 1);
            written
        };
        if let Err(e) = &written {
            tracing::error!(error = %e, "group commit failed: the store refuses every further change");
            sh.poisoned
                .store(true, std::sync::atomic::Ordering::Release);
        }
        Totals::sub(&sh.totals.pending_bytes, self.pending_bytes);
        self.give_back(written.is_ok());
        if !self.unremoved.is_empty() {
            // The devices stay registered: bring them back.
            let mut map = sh.lock_devices();
            for device in &self.unremoved {
                if let Some(st) = map.get_mut(device) {
                    st.removing = false;
                    Totals::add(&sh.totals.devices, 1);
                    sh.index_add(*device);
                }
            }
        }
        if !self.removed_devices.is_empty() || !self.unremoved.is_empty() {
            sh.removal_done.notify_waiters();
        }
        for done in self.done {
            done.resolve(&written);
        }
    }

    /// Gives back the room reserved for entries that were not written (all of them if the
    /// batch failed), and forgets the shared payloads cached for them.
    fn give_back(&mut self, written: bool) {
        let sh = self.sh;
        if !written {
            let lost = self.added.drain(..).filter(|a| a.2).map(|a| (a.0, a.1));
            self.unreserved.extend(lost);
        }
        if !self.unreserved.is_empty() {
            let mut map = sh.lock_devices();
            for (device, bytes) in self.unreserved.drain(..) {
                if let Some(st) = map.get_mut(&device) {
                    st.reserved -= 1;
                    st.reserved_bytes -= bytes;
                }
            }
        }
        if !self.payloads_dropped.is_empty() {
            let mut cache = sh.lock_payloads();
            for id in self.payloads_dropped.drain(..) {
                cache.remove(id);
            }
        }
    }

    /// Applies the counter changes of a written batch.
    fn apply(&mut self) {
        let sh = self.sh;
        let mut map = sh.lock_devices();
        for (device, bytes, reserved) in self.added.drain(..) {
            if let Some(st) = map.get_mut(&device) {
                st.queued += 1;
                st.bytes += bytes;
                if reserved {
                    st.reserved -= 1;
                    st.reserved_bytes -= bytes;
                }
            }
            Totals::add(&sh.totals.queued, 1);
            Totals::add(&sh.totals.bytes, bytes);
        }
        for (device, (n, bytes)) in &self.removed_entries {
            if let Some(st) = map.get_mut(device) {
                st.queued -= n;
                st.bytes -= bytes;
            }
            Totals::sub(&sh.totals.queued, *n);
            Totals::sub(&sh.totals.bytes, *bytes);
        }
        for device in &self.removed_devices {
            let st = map.remove(device);
            debug_assert!(st.is_some_and(|s| s.removing));
        }
    }

    /// Applies the reference counts, payload and group changes of a written batch.
    fn apply_shared(&mut self) {
        let sh = self.sh;
        for (id, n) in self.refs_overlay.drain() {
            if n == 0 {
                self.refs.remove(&id);
            } else {
                self.refs.insert(id, n);
            }
        }
        Totals::add(&sh.totals.payloads, self.payloads_created);
        Totals::sub(&sh.totals.payloads, self.payloads_deleted.len() as u64);
        if !self.payloads_deleted.is_empty() {
            let mut cache = sh.lock_payloads();
            for id in &self.payloads_deleted {
                cache.remove(*id);
            }
        }
        if !self.groups_overlay.is_empty() {
            let mut cache = sh.write_groups();
            for (group, entry) in self.groups_overlay.drain() {
                match entry {
                    Some(e) => cache_group(&mut cache, group, e),
                    None => {
                        cache.remove(&group);
                    }
                }
            }
        }
        self.apply_accounts();
    }
}
