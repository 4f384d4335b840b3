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
//!
//! Dedup identities (see the `dedup` module) are checked here, against the committed ones and
//! this group's changes; a value carrying one counts as a holder of it, and deleting the value
//! (ack, expiry, device removal, a payload's last pointer) drops it. Expiry is swept here too
//! (see the `expiry` module): devices whose bound has passed become ripe and are visited in
//! device order.

mod account_ops;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::{Bound, Range};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crossbeam_channel::Receiver;
use rocksdb::{ColumnFamily, WriteBatch, WriteOptions};
use tokio::sync::oneshot;

use crate::account::{self, AccountRecord, ListKind, PurgeReport};
use crate::batch::Batch;
use crate::dedup::Held;
use crate::error::{GroupError, StorageError};
use crate::expiry::{DevExpiry, Visit};
use crate::groups::{self, Decision, GroupEntry};
use crate::keys::{self, DedupId, DeviceRecord, EntryMeta, QueueKey};
use crate::shared::{
    cache_group, Shared, Totals, ACCOUNTS, DEDUP, DEVICES, GROUPS, LISTS, MEMBERS, MEMBERSHIPS,
    PAYLOADS, PUSH, QUEUES,
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
    /// Takes the dedup identities of `account`'s sends out of the values that carry them
    /// (found by a scan after a purge), unless remembered again since.
    Strip {
        account: u64,
        entries: Vec<QueueKey>,
        payloads: Vec<u64>,
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
    /// Device records whose seq ceiling this send's seqs crossed, with their new ceiling.
    pub records: Vec<(keys::DevicePrefix, DeviceRecord)>,
    /// The send's dedup identity, record and (if it is stored nowhere) its expiry. With
    /// entries, the values carry the identity (inline entries, or the shared payload).
    pub dedup: Option<(DedupId, DedupRecord, u64)>,
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
    /// Device records whose seq ceiling the job's unwritten seqs crossed.
    pub records: Vec<(keys::DevicePrefix, DeviceRecord)>,
    pub reply: WriteReply,
}

/// Who waits for a [`WriteJob`].
pub(crate) enum WriteReply {
    /// The routing core: one outcome per send, and the acks applied.
    Outcomes(Reply<WriteOutcome>),
    /// `Store::enqueue`: durable or not.
    Unit(Reply<()>),
}

/// What only the writer keeps in memory (loaded at open).
#[derive(Default)]
pub(crate) struct WriterState {
    /// Pointer entries per shared payload, as committed.
    pub refs: HashMap<u64, u32>,
    /// The dedup identity each shared payload carries.
    pub payload_dedup: HashMap<u64, DedupId>,
    /// Shared payloads whose value was written twice (delete them with Delete).
    pub overwritten_payloads: HashSet<u64>,
    /// (bound, device) of every queue holding entries and not ripe (see the `expiry` module).
    pub due: BTreeSet<(u64, DeviceKey)>,
    /// Devices whose bound has passed and that a sweep has yet to visit.
    pub ripe: BTreeSet<DeviceKey>,
    /// (expiry, identity) of the records of sends stored nowhere.
    pub standalone_by_expiry: BTreeSet<(u64, DedupId)>,
}

/// Runs until every `Store` handle is gone, then writes every device's exact next seq and marks
/// a clean shutdown (unless a write failed: the next open then moves seqs ahead).
pub(crate) fn run(sh: Arc<Shared>, rx: Receiver<Job>, mut state: WriterState) {
    while let Ok(first) = rx.recv() {
        let mut group = Group::new(&sh, &mut state);
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
    if sh.poisoned.load(Ordering::Acquire) {
        tracing::error!("not marking a clean shutdown: a write failed");
        return;
    }
    let mut wb = WriteBatch::default();
    let devices = sh.cf(DEVICES);
    for (key, st) in sh.lock_devices().iter() {
        if !st.removing && st.next_seq != st.ceiling {
            let record = DeviceRecord {
                registered_at_ms: st.registered_at_ms,
                next_seq: st.next_seq,
            };
            wb.put_cf(devices, keys::device_prefix(*key), record.encode());
        }
    }
    wb.put(CLEAN_SHUTDOWN_KEY, []);
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    if let Err(e) = sh.db.write_opt(wb, &wo) {
        tracing::error!(error = %e, "could not mark the clean shutdown");
    }
}

struct Cfs<'a> {
    queues: &'a ColumnFamily,
    devices: &'a ColumnFamily,
    dedup: &'a ColumnFamily,
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

/// A change to a queue's expiry state, applied in the order of the group's jobs.
enum ExpEvent {
    /// An entry written.
    Put {
        device: DeviceKey,
        seq: u64,
        expires: u64,
    },
    /// A sweep read the queue (with this group's earlier changes) and deleted its expired
    /// entries: its state after (None: it stopped at `max`, the device stays ripe).
    Visited {
        device: DeviceKey,
        after: Option<DevExpiry>,
    },
}

struct Group<'a> {
    sh: &'a Shared,
    cfs: Cfs<'a>,
    /// What the writer keeps: reference counts, payload identities, expiry order.
    w: &'a mut WriterState,
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
    /// Identities of queued sends changed by earlier jobs of this group: their state as of the
    /// end of the group so far (None: not remembered).
    held_view: HashMap<DedupId, Option<Held>>,
    /// Records of sends stored nowhere written (Some) or deleted (None) by this group.
    standalone_view: HashMap<DedupId, Option<(DedupRecord, u64)>>,
    /// Identities of shared payloads set (Some) or dropped (None) by this group.
    payload_dedup_view: HashMap<u64, Option<DedupId>>,
    /// Shared payloads this group wrote a second time.
    overwritten_added: Vec<u64>,
    /// Entries this group writes (device, bytes, whether room was reserved for it).
    added: Vec<(DeviceKey, u64, bool)>,
    /// Changes to queues' expiry states, in order.
    exp_events: Vec<ExpEvent>,
    /// Room reserved for entries this group does not write (duplicates, failed reads).
    unreserved: Vec<(DeviceKey, u64)>,
    /// Shared payloads cached at submission that are not written.
    payloads_dropped: Vec<u64>,
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
    fn new(sh: &'a Shared, w: &'a mut WriterState) -> Group<'a> {
        Group {
            sh,
            cfs: Cfs {
                queues: sh.cf(QUEUES),
                devices: sh.cf(DEVICES),
                dedup: sh.cf(DEDUP),
                groups: sh.cf(GROUPS),
                members: sh.cf(MEMBERS),
                payloads: sh.cf(PAYLOADS),
                accounts: sh.cf(ACCOUNTS),
                lists: sh.cf(LISTS),
                push: sh.cf(PUSH),
                memberships: sh.cf(MEMBERSHIPS),
            },
            w,
            refs_overlay: HashMap::new(),
            payloads_created: 0,
            payloads_deleted: Vec::new(),
            groups_overlay: HashMap::new(),
            account_overlay: HashMap::new(),
            list_overlay: HashMap::new(),
            push_overlay: HashMap::new(),
            batch: Batch::default(),
            queue_overlay: BTreeMap::new(),
            held_view: HashMap::new(),
            standalone_view: HashMap::new(),
            payload_dedup_view: HashMap::new(),
            overwritten_added: Vec::new(),
            added: Vec::new(),
            exp_events: Vec::new(),
            unreserved: Vec::new(),
            payloads_dropped: Vec::new(),
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
            Job::Strip {
                account,
                entries,
                payloads,
                reply,
            } => {
                let own = self.strip(account, entries, payloads);
                self.done.push(Done::Count(reply, own));
            }
        }
    }

    /// Writes a group of sends and acks. Reads first (the acked entries), so a failed read
    /// leaves the batch untouched (but the seq ceilings: seqs were handed out) and gives every
    /// counter back. Duplicates are decided in order, each send seeing the ones before it.
    fn write(&mut self, job: WriteJob) {
        // Seqs were handed out, written or not: their ceilings go to disk in any case.
        self.put_records(&job.records);
        let (mut acked, unknown) = match self.find_acks(&job.acks) {
            Ok(found) => found,
            Err(e) => {
                for send in &job.sends {
                    self.pending_bytes += send.pending;
                    if send.reserved {
                        self.unreserved.extend_from_slice(&send.counted);
                    }
                    if let Some((id, _)) = send.payload {
                        self.payloads_dropped.push(id);
                    }
                    self.put_records(&send.records);
                }
                self.done.push(match job.reply {
                    WriteReply::Outcomes(r) => Done::other(r, Err(e)),
                    WriteReply::Unit(r) => Done::other(r, Err(e)),
                });
                return;
            }
        };
        let mut outcomes = Vec::with_capacity(job.sends.len());
        for send in job.sends {
            self.pending_bytes += send.pending;
            let dup = send
                .dedup
                .as_ref()
                .and_then(|(id, ..)| self.duplicate(id, send.accepted_at_ms));
            if let Some(rec) = dup {
                if send.reserved {
                    self.unreserved.extend_from_slice(&send.counted);
                }
                if let Some((id, _)) = send.payload {
                    self.payloads_dropped.push(id);
                }
                // Its seqs were given out (and maybe seen live): they are never reused.
                self.put_records(&send.records);
                outcomes.push(SendOutcome::Duplicate(rec));
                continue;
            }
            outcomes.push(SendOutcome::Written {
                skipped: send.skipped,
            });
            self.put_send(send);
        }
        // Acks apply after the sends: those of entries the sends just wrote too.
        for (device, seq) in unknown {
            let key = keys::queue_key(device, seq);
            if let Some(Some(meta)) = self.queue_overlay.get(&key) {
                let meta = *meta;
                acked.push(Found {
                    key,
                    device,
                    seq,
                    meta,
                });
            }
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

    /// The acked entries that exist as of the end of this group so far, and the (device, seq)
    /// of the others.
    #[allow(clippy::type_complexity)]
    fn find_acks(
        &self,
        acks: &[(DeviceKey, Vec<u64>)],
    ) -> Result<(Vec<Found>, Vec<(DeviceKey, u64)>), StorageError> {
        let mut acked = Vec::new();
        let mut unknown = Vec::new();
        for (device, seqs) in acks {
            // In seq order.
            let found = self.find_acked(*device, seqs.clone())?;
            if found.len() < seqs.len() {
                let mut seqs = seqs.clone();
                seqs.sort_unstable();
                seqs.dedup();
                unknown.extend(
                    seqs.into_iter()
                        .filter(|s| found.binary_search_by_key(s, |f| f.seq).is_err())
                        .map(|s| (*device, s)),
                );
            }
            acked.extend(found);
        }
        Ok((acked, unknown))
    }

    fn put_records(&mut self, records: &[(keys::DevicePrefix, DeviceRecord)]) {
        for (prefix, record) in records {
            self.batch
                .wb
                .put_cf(self.cfs.devices, prefix, record.encode());
        }
    }

    /// The state of a queued send's identity as of the end of this group so far.
    fn held(&self, id: &DedupId) -> Option<Held> {
        match self.held_view.get(id) {
            Some(h) => *h,
            None => self.sh.read_dedup().queued.get(id).copied(),
        }
    }

    /// The record of a send stored nowhere, and its expiry, as of the end of this group so far.
    fn standalone(&self, id: &DedupId) -> Option<(DedupRecord, u64)> {
        match self.standalone_view.get(id) {
            Some(r) => *r,
            None => self.sh.read_dedup().standalone.get(id).copied(),
        }
    }

    /// The record that makes a send accepted at `accepted_at_ms` a duplicate: a queued send's
    /// with the same identity, or a send's stored nowhere whose window has not ended.
    fn duplicate(&self, id: &DedupId, accepted_at_ms: u64) -> Option<DedupRecord> {
        if let Some(h) = self.held(id) {
            return Some(h.record);
        }
        self.standalone(id)
            .filter(|(_, expires)| *expires > accepted_at_ms)
            .map(|(rec, _)| rec)
    }

    /// `n` more values carry `id` (the record is the newest send's).
    fn hold(&mut self, id: DedupId, record: DedupRecord, n: u32) {
        let holders = self.held(&id).map_or(0, |h| h.holders) + n;
        self.held_view.insert(id, Some(Held { record, holders }));
    }

    /// A value carrying `id` is deleted (nothing if `id` is not remembered: a purge forgot it).
    fn release(&mut self, id: DedupId) {
        if let Some(mut h) = self.held(&id) {
            h.holders -= 1;
            self.held_view.insert(id, (h.holders > 0).then_some(h));
        }
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
            self.queue_overlay.insert(*key, Some(meta));
            let (device, seq) = keys::decode_queue_key(key).expect("a queue key");
            self.exp_events.push(ExpEvent::Put {
                device,
                seq,
                expires: meta.expires_at_ms,
            });
        }
        let shared = send.payload.is_some();
        if let Some((id, value)) = &send.payload {
            if !send.entries.is_empty() {
                self.batch
                    .wb
                    .put_cf(self.cfs.payloads, keys::payload_key(*id), value);
                let n = u32::try_from(send.entries.len()).expect("fewer than 2^32 recipients");
                self.refs_overlay.insert(*id, n);
                self.payloads_created += 1;
                if let Some((dedup, ..)) = send.dedup {
                    self.payload_dedup_view.insert(*id, Some(dedup));
                }
            }
        }
        self.put_records(&send.records);
        if let Some((id, rec, expires)) = send.dedup {
            if send.entries.is_empty() {
                // Stored nowhere: a record of its own, until its window ends.
                self.batch
                    .wb
                    .put_cf(self.cfs.dedup, id.key(), keys::encode_dedup(rec, expires));
                self.standalone_view.insert(id, Some((rec, expires)));
                self.durable();
            } else {
                // The values written carry the identity: one payload, or each inline entry.
                let n = match shared {
                    true => 1,
                    false => u32::try_from(send.entries.len()).expect("fewer than 2^32"),
                };
                self.hold(id, rec, n);
            }
        }
    }

    /// Drops one reference to a shared payload; the last one deletes it (and drops the
    /// identity it carries).
    fn unref(&mut self, id: u64) {
        let n = match self.refs_overlay.get(&id) {
            Some(n) => *n,
            None => self.w.refs.get(&id).copied().unwrap_or(0),
        };
        let Some(n) = n.checked_sub(1) else {
            tracing::error!(id, "a pointer to a shared payload with no references");
            return;
        };
        self.refs_overlay.insert(id, n);
        if n == 0 {
            let key = keys::payload_key(id);
            if self.w.overwritten_payloads.contains(&id) || self.overwritten_added.contains(&id) {
                self.batch.wb.delete_cf(self.cfs.payloads, key);
            } else {
                // Put once, deleted once.
                self.batch.single_delete(self.sh.payloads_cf_id, &key);
            }
            self.payloads_deleted.push(id);
            let dedup = match self.payload_dedup_view.get(&id) {
                Some(d) => *d,
                None => self.w.payload_dedup.get(&id).copied(),
            };
            if let Some(dedup) = dedup {
                self.release(dedup);
                self.payload_dedup_view.insert(id, None);
            }
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

    /// Deletes an entry (SingleDelete: put once, deleted once; Delete if it was written twice)
    /// and counts it; false if this group deleted it already.
    fn delete_entry(&mut self, f: Found) -> bool {
        if self.queue_overlay.get(&f.key) == Some(&None) {
            return false;
        }
        if f.meta.overwritten {
            self.batch.wb.delete_cf(self.cfs.queues, f.key);
        } else {
            self.batch.single_delete(self.sh.queues_cf_id, &f.key);
        }
        self.queue_overlay.insert(f.key, None);
        let c = self.removed_entries.entry(f.device).or_default();
        c.0 += 1;
        c.1 += f.meta.bytes;
        if let Some(id) = f.meta.dedup {
            self.release(id);
        }
        if let Some(id) = f.meta.payload {
            self.unref(id);
        }
        true
    }

    /// Deletes what expired at `now_ms`, at most `max` in all: first the records of sends
    /// stored nowhere (by expiry), then queue entries, device by device in device order
    /// (each in seq order), visiting only ripe devices. Reads first: a failed read leaves the
    /// group untouched.
    fn sweep(&mut self, now_ms: u64, max: usize) -> Result<SweepStats, StorageError> {
        let mut records = Vec::new();
        for &(expires, id) in &self.w.standalone_by_expiry {
            if expires > now_ms || records.len() >= max {
                break;
            }
            // Deleted by this group, or written again with another expiry.
            match self.standalone_view.get(&id) {
                Some(Some((_, e))) if *e == expires => {}
                Some(_) => continue,
                None => {}
            }
            records.push(id);
        }
        while let Some(&(bound, device)) = self.w.due.first() {
            if bound > now_ms {
                break;
            }
            self.w.due.pop_first();
            self.w.ripe.insert(device);
        }
        let room = max - records.len();
        let mut expired = Vec::new();
        let mut visits = Vec::new();
        let mut cursor = Bound::Unbounded;
        while expired.len() < room {
            let Some(&device) = self.w.ripe.range((cursor, Bound::Unbounded)).next() else {
                break;
            };
            cursor = Bound::Excluded(device);
            let start = self.sh.lock_devices().get(&device).map(|st| st.exp);
            let after = match start {
                Some(start) => self.visit(device, start, now_ms, room, &mut expired)?,
                // Removed: nothing to visit.
                None => Some(DevExpiry::EMPTY),
            };
            visits.push((device, after));
        }
        let mut stats = SweepStats::default();
        for id in records {
            self.batch.wb.delete_cf(self.cfs.dedup, id.key());
            self.standalone_view.insert(id, None);
            stats.dedup_removed += 1;
        }
        for f in expired {
            stats.expired.push((f.device, f.seq));
            let deleted = self.delete_entry(f);
            debug_assert!(deleted, "the visit skips what this group deleted");
        }
        for (device, after) in visits {
            self.exp_events.push(ExpEvent::Visited { device, after });
        }
        stats.scanned = stats.dedup_removed + stats.expired.len() as u64;
        Ok(stats)
    }

    /// Reads a device's queue in seq order (with this group's earlier changes), adding its
    /// expired entries to `expired` while it holds fewer than `room`, until past the last entry
    /// that may have expired. Returns the queue's expiry state once they are deleted, or None
    /// if it stopped at `room` with more to delete.
    fn visit(
        &self,
        device: DeviceKey,
        start: DevExpiry,
        now_ms: u64,
        room: usize,
        expired: &mut Vec<Found>,
    ) -> Result<Option<DevExpiry>, StorageError> {
        let mut visit = Visit::new(start);
        let stop = start.stop_after(now_ms);
        let mut db = self.sh.scan(QUEUES, &keys::device_prefix(device));
        let mut db_next = || -> Result<Option<(QueueKey, EntryMeta)>, StorageError> {
            match db.next() {
                None => Ok(None),
                Some(item) => {
                    let (k, v) = item?;
                    let key: QueueKey = (*k)
                        .try_into()
                        .map_err(|_| StorageError::Corrupt("queue key".into()))?;
                    Ok(Some((key, keys::entry_meta(&v)?)))
                }
            }
        };
        let range = keys::queue_key(device, 0)..=keys::queue_key(device, u64::MAX);
        let mut overlay = self.queue_overlay.range(range);
        let mut d = db_next()?;
        let mut o = overlay.next();
        loop {
            // The next entry in key order; this group's change of a key wins.
            let (key, meta) = match (&d, o) {
                (None, None) => break,
                (Some((dk, _)), Some((ok, om))) if ok <= dk => {
                    if ok == dk {
                        d = db_next()?;
                    }
                    o = overlay.next();
                    match om {
                        Some(meta) => (*ok, *meta),
                        None => continue,
                    }
                }
                (Some(entry), _) => {
                    let entry = *entry;
                    d = db_next()?;
                    entry
                }
                (None, Some((ok, om))) => {
                    o = overlay.next();
                    match om {
                        Some(meta) => (*ok, *meta),
                        None => continue,
                    }
                }
            };
            let seq = keys::decode_queue_key(&key).expect("a queue key").1;
            let expires = meta.expires_at_ms;
            if expires <= now_ms {
                if expired.len() >= room {
                    return Ok(None);
                }
                expired.push(Found {
                    key,
                    device,
                    seq,
                    meta,
                });
            } else {
                visit.stays(seq, expires);
                if expires > stop {
                    visit.stopped(expires);
                    break;
                }
            }
        }
        Ok(Some(visit.result()))
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

    /// Deletes a device's queue and its record.
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
            self.queue_overlay.insert(f.key, None);
            queued += 1;
            bytes += f.meta.bytes;
            if let Some(id) = f.meta.dedup {
                self.release(id);
            }
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
            // Nothing to write, but memory may change (a purge forgetting identities of an
            // account with nothing stored, a sweep learning a queue's expiry).
            self.apply();
            self.apply_dedup();
            self.apply_shared();
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
                self.apply_dedup();
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
        // Expiry states, in the order of the jobs; then each changed bound moves in `due`.
        // (device -> its bound before, whether a sweep finished a visit of it)
        let mut touched: HashMap<DeviceKey, (u64, bool)> = HashMap::new();
        for event in self.exp_events.drain(..) {
            let (device, visited) = match event {
                ExpEvent::Put { device, .. } => (device, false),
                ExpEvent::Visited { device, after } => (device, after.is_some()),
            };
            let Some(st) = map.get_mut(&device) else {
                self.w.ripe.remove(&device);
                continue;
            };
            let t = touched.entry(device).or_insert((st.exp.bound, false));
            t.1 |= visited;
            match event {
                ExpEvent::Put { seq, expires, .. } => st.exp.put(seq, expires),
                ExpEvent::Visited { after, .. } => {
                    if let Some(after) = after {
                        st.exp = after;
                        self.w.ripe.remove(&device);
                    }
                }
            }
        }
        for device in self.removed_entries.keys() {
            if let Some(st) = map.get(device) {
                touched.entry(*device).or_insert((st.exp.bound, false));
            }
        }
        for (device, (before, visited)) in touched {
            let st = map
                .get_mut(&device)
                .expect("touched devices are registered");
            if st.queued == 0 {
                // An empty queue forgets its expiry state.
                st.exp = DevExpiry::EMPTY;
                self.w.ripe.remove(&device);
            }
            let after = st.exp.bound;
            if after == before && !visited {
                continue;
            }
            self.w.due.remove(&(before, device));
            if after != u64::MAX && !self.w.ripe.contains(&device) {
                self.w.due.insert((after, device));
            }
        }
        for device in &self.removed_devices {
            let st = map.remove(device);
            debug_assert!(st.is_some_and(|s| s.removing));
            if let Some(st) = st {
                self.w.due.remove(&(st.exp.bound, *device));
            }
            self.w.ripe.remove(device);
        }
    }

    /// Applies the dedup changes of a written batch: the remembered identities, the records
    /// of sends stored nowhere (and their expiry order), the identities of shared payloads.
    fn apply_dedup(&mut self) {
        if self.held_view.is_empty() && self.standalone_view.is_empty() {
            return;
        }
        let mut d = self.sh.dedup.write().unwrap_or_else(|e| e.into_inner());
        for (id, held) in self.held_view.drain() {
            match held {
                Some(h) => d.queued.insert(id, h),
                None => d.queued.remove(&id),
            };
        }
        for (id, record) in self.standalone_view.drain() {
            if let Some((_, expires)) = d.standalone.get(&id) {
                self.w.standalone_by_expiry.remove(&(*expires, id));
            }
            match record {
                Some((rec, expires)) => {
                    d.standalone.insert(id, (rec, expires));
                    self.w.standalone_by_expiry.insert((expires, id));
                }
                None => {
                    d.standalone.remove(&id);
                }
            }
        }
    }

    /// Applies the reference counts, payload and group changes of a written batch.
    fn apply_shared(&mut self) {
        let sh = self.sh;
        for (id, n) in self.refs_overlay.drain() {
            if n == 0 {
                self.w.refs.remove(&id);
            } else {
                self.w.refs.insert(id, n);
            }
        }
        for (id, dedup) in self.payload_dedup_view.drain() {
            match dedup {
                Some(d) => self.w.payload_dedup.insert(id, d),
                None => self.w.payload_dedup.remove(&id),
            };
        }
        self.w
            .overwritten_payloads
            .extend(self.overwritten_added.drain(..));
        for id in &self.payloads_deleted {
            self.w.overwritten_payloads.remove(id);
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
