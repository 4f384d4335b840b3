//! The group-commit writer: the one thread that mutates the database.
//!
//! It takes one job, drains whatever else is waiting, turns them all into ONE write batch,
//! writes it (with fsync if any job needs durability), applies the counter changes, then
//! resolves every job. Existence checks (ack, sweep, remove) happen here, in submission order,
//! so an entry is deleted exactly once. Within a group, checks see the group's earlier jobs
//! through small overlays, since those are not in the database yet.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;
use rocksdb::{ColumnFamily, IteratorMode, ReadOptions, WriteOptions};
use tokio::sync::oneshot;

use crate::batch::Batch;
use crate::error::StorageError;
use crate::keys::{self, DeviceRecord, EntryMeta, QueueKey, DEDUP_KEY_LEN, KIND_DEDUP, KIND_QUEUE};
use crate::shared::{Shared, Totals, DEDUP, DEVICES, EXPIRY, QUEUES};
use crate::types::{DeviceKey, DeviceStats, Durability, SweepStats};

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
    Enqueue(EnqueueJob),
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
}

/// One envelope for one or more device queues.
pub(crate) struct EnqueueJob {
    /// The encoded envelope, the value of every entry.
    pub value: Vec<u8>,
    pub meta: EntryMeta,
    pub entries: Vec<QueueKey>,
    /// Device records with their new `next_seq`.
    pub records: Vec<(keys::DevicePrefix, DeviceRecord)>,
    /// Dedup key, value and expiry.
    pub dedup: Option<(DedupKey, [u8; 20], u64)>,
    pub reply: Reply<()>,
}

/// Runs until every `Store` handle is gone, then marks a clean shutdown.
pub(crate) fn run(sh: Arc<Shared>, rx: Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut group = Group::new(&sh);
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
}

impl Done {
    fn resolve(self, written: &Result<(), StorageError>) {
        fn answer<T>(reply: Reply<T>, own: Result<T, StorageError>, w: &Result<(), StorageError>) {
            // A dropped receiver only means the caller stopped waiting.
            let _ = reply.send(own.and_then(|v| w.clone().map(|()| v)));
        }
        match self {
            Done::Unit(r) => answer(r, Ok(()), written),
            Done::Count(r, own) => answer(r, own, written),
            Done::Sweep(r, own) => answer(r, own, written),
            Done::Removed(r, own) => answer(r, own.map(Some), written),
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
    batch: Batch,
    /// Queue entries put (Some) or deleted (None) by earlier jobs of this group.
    queue_overlay: BTreeMap<QueueKey, Option<EntryMeta>>,
    /// Dedup records put (Some(expiry)) or deleted (None) by earlier jobs of this group.
    dedup_overlay: HashMap<DedupKey, Option<u64>>,
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
    fn new(sh: &'a Shared) -> Group<'a> {
        Group {
            sh,
            cfs: Cfs {
                queues: sh.cf(QUEUES),
                devices: sh.cf(DEVICES),
                dedup: sh.cf(DEDUP),
                expiry: sh.cf(EXPIRY),
            },
            batch: Batch::default(),
            queue_overlay: BTreeMap::new(),
            dedup_overlay: HashMap::new(),
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
            Job::Enqueue(job) => self.enqueue(job),
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
                    let n = found.len() as u64;
                    for f in found {
                        self.delete_entry(f);
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
                    Ok(found) => Ok(self.remove(device, record, found)),
                    Err(e) => {
                        self.unremoved.push(device);
                        Err(e)
                    }
                };
                self.done.push(Done::Removed(reply, own));
            }
        }
    }

    fn enqueue(&mut self, job: EnqueueJob) {
        for key in &job.entries {
            self.batch.wb.put_cf(self.cfs.queues, key, &job.value);
            let index = keys::expiry_key(job.meta.expires_at_ms, KIND_QUEUE, key);
            self.batch.wb.put_cf(self.cfs.expiry, index, []);
            self.queue_overlay.insert(*key, Some(job.meta));
        }
        for (prefix, record) in &job.records {
            self.batch
                .wb
                .put_cf(self.cfs.devices, prefix, record.encode());
        }
        if let Some((key, value, expires)) = &job.dedup {
            self.batch.wb.put_cf(self.cfs.dedup, key, value);
            self.batch.wb.put_cf(
                self.cfs.expiry,
                keys::expiry_key(*expires, KIND_DEDUP, key),
                [],
            );
            self.dedup_overlay.insert(*key, Some(*expires));
        }
        self.pending_bytes += job.meta.payload_len * job.entries.len() as u64;
        self.durable();
        self.done.push(Done::Unit(job.reply));
    }

    /// The entry under `key` as of the end of this group so far.
    fn entry(&self, key: &QueueKey) -> Result<Option<EntryMeta>, StorageError> {
        if let Some(o) = self.queue_overlay.get(key) {
            return Ok(*o);
        }
        match self.sh.db.get_pinned_cf(self.cfs.queues, key)? {
            Some(v) => Ok(Some(keys::envelope_meta(&v)?)),
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

    /// Single-deletes an entry (put once, deleted once) and counts it.
    fn delete_entry(&mut self, f: Found) {
        if self.queue_overlay.get(&f.key) == Some(&None) {
            return;
        }
        self.batch.single_delete(self.sh.queues_cf_id, &f.key);
        self.queue_overlay.insert(f.key, None);
        let c = self.removed_entries.entry(f.device).or_default();
        c.0 += 1;
        c.1 += f.meta.payload_len;
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
                self.delete_entry(f);
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
            entries.insert(key, keys::envelope_meta(&v)?);
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
            bytes += f.meta.payload_len;
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
            let mut wo = WriteOptions::default();
            wo.set_sync(self.sync);
            let gate = sh.gate.write().unwrap_or_else(|e| e.into_inner());
            let written = sh
                .db
                .write_opt(batch.finish(), &wo)
                .map_err(StorageError::from);
            if written.is_ok() {
                self.apply();
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
            tracing::error!(error = %e, "group commit failed");
        }
        Totals::sub(&sh.totals.pending_bytes, self.pending_bytes);
        if !self.unremoved.is_empty() {
            // The devices stay registered: bring them back.
            let mut map = sh.lock_devices();
            for device in &self.unremoved {
                if let Some(st) = map.get_mut(device) {
                    st.removing = false;
                    Totals::add(&sh.totals.devices, 1);
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

    /// Applies the counter changes of a written batch.
    fn apply(&self) {
        let sh = self.sh;
        let mut map = sh.lock_devices();
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
}
