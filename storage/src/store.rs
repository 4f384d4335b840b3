//! The `Store` handle.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use bytes::Bytes;
use crossbeam_channel::Sender;
use rocksdb::{Direction, IteratorMode, ReadOptions};
use tokio::sync::{oneshot, Notify};

use crate::batch::column_family_id;
use crate::commit::{reply, Commit, Enqueued};
use crate::error::{EnqueueError, StorageError};
use crate::expiry::DevExpiry;
use crate::keys::{self, DedupId, DeviceRecord, Pointer, QueueValue};
use crate::load;
use crate::shared::{
    Devices, Latency, PayloadCache, Shared, Totals, COLUMN_FAMILIES, PAYLOADS, QUEUES,
};
use crate::types::{
    DedupRecord, DeviceKey, DeviceStats, QueueEntry, QueueState, SharedRecipient, StoreOptions,
    StoreStats, StoredEnvelope, SweepStats,
};
use crate::write::{EntryWrite, WriteOutcome, WriteSet};
use crate::writer::{self, Job, PreparedSend, Values, WriteJob, WriteReply};
use hearth_protocol::MessageId;

/// Payload bytes of the shared payload cache.
const PAYLOAD_CACHE_BYTES: usize = 64 << 20;

/// Seqs a device record reserves at a time: a write that hands out a seq at or above a
/// device's ceiling writes the record with the ceiling raised by this much.
const SEQ_BLOCK: u64 = 4096;

/// The durable store: per-device queues, device records, dedup records and their expiry.
///
/// Cheap to clone (all clones share one database and one writer thread); `Send + Sync`.
/// Every mutation goes through one group-commit writer thread; reads go to RocksDB directly and
/// see committed data only. No async runtime is needed: futures resolve from the writer thread.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    tx: Option<Sender<Job>>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The writer drains everything submitted, writes it, then stops.
        drop(self.tx.take());
        if let Some(w) = self.writer.take() {
            if w.join().is_err() {
                tracing::error!("the storage writer panicked");
            }
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store in directory `path`. Loads every device's counters
    /// and expiry state, the devices of each account and the dedup identities of queued sends
    /// into memory (one scan of the `devices`, `queues`, `payloads` and `dedup` column
    /// families), and every account record, list entry and push token; verifies the
    /// `memberships` index against the group members (one scan of each) and rebuilds it if
    /// they differ (data written before the index existed).
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Store, StorageError> {
        let db = load::open_db(path)?;
        let loaded = load::load(&db, &opts)?;
        let queues_cf_id = column_family_id(db.cf_handle(QUEUES).expect("opened"));
        let payloads_cf_id = column_family_id(db.cf_handle(PAYLOADS).expect("opened"));
        let shared = Arc::new(Shared {
            db,
            opts,
            queues_cf_id,
            payloads_cf_id,
            devices: Mutex::new(loaded.devices),
            accounts: RwLock::new(loaded.accounts),
            groups: RwLock::new(HashMap::new()),
            payload_cache: Mutex::new(PayloadCache::new(PAYLOAD_CACHE_BYTES)),
            next_payload_id: AtomicU64::new(loaded.next_payload_id),
            gate: RwLock::new(()),
            records: RwLock::new(loaded.records),
            lists: RwLock::new(loaded.lists),
            push: RwLock::new(loaded.push),
            removal_done: Notify::new(),
            totals: loaded.totals,
            latency: Mutex::new(Latency::new()),
            poisoned: AtomicBool::new(false),
            dedup: RwLock::new(loaded.remembered),
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let writer = {
            let shared = shared.clone();
            let state = loaded.writer;
            std::thread::Builder::new()
                .name("hearth-storage-writer".into())
                .spawn(move || writer::run(shared, rx, state))
                .map_err(|e| StorageError::Db(format!("spawning the writer thread: {e}")))?
        };
        Ok(Store {
            inner: Arc::new(Inner {
                shared,
                tx: Some(tx),
                writer: Some(writer),
            }),
        })
    }

    pub(crate) fn sh(&self) -> &Shared {
        &self.inner.shared
    }

    /// The shared state, for work done on another thread.
    pub(crate) fn shared_arc(&self) -> Arc<Shared> {
        self.inner.shared.clone()
    }

    pub(crate) fn submit(&self, job: Job) -> Result<(), StorageError> {
        self.check_poisoned()?;
        let tx = self
            .inner
            .tx
            .as_ref()
            .expect("the sender lives as long as the store");
        tx.send(job).map_err(|_| StorageError::Closed)
    }

    /// Registers a device; true if it was new. Resolves once the registration is durable.
    /// Waits for a removal of the same device that is in progress.
    pub async fn register_device(&self, key: DeviceKey, now_ms: u64) -> Result<bool, StorageError> {
        loop {
            match self.register_step(key, now_ms)? {
                Register::Exists => return Ok(false),
                Register::Submitted(rx) => return reply(rx).await.map(|()| true),
                Register::Removing(notified) => notified.await,
            }
        }
    }

    fn register_step(&self, key: DeviceKey, now_ms: u64) -> Result<Register<'_>, StorageError> {
        let sh = self.sh();
        let mut map = sh.lock_devices();
        match map.get(&key) {
            Some(st) if st.removing => return Ok(Register::Removing(sh.removal_done.notified())),
            Some(_) => return Ok(Register::Exists),
            None => {}
        }
        // Its first block of seqs is reserved with the registration.
        let record = DeviceRecord {
            registered_at_ms: now_ms,
            next_seq: 1 + SEQ_BLOCK,
        };
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Register {
            prefix: keys::device_prefix(key),
            record,
            reply: tx,
        })?;
        map.insert(
            key,
            crate::shared::DeviceState {
                registered_at_ms: now_ms,
                next_seq: 1,
                ceiling: record.next_seq,
                exp: DevExpiry::EMPTY,
                queued: 0,
                bytes: 0,
                reserved: 0,
                reserved_bytes: 0,
                removing: false,
            },
        );
        sh.index_add(key);
        Totals::add(&sh.totals.devices, 1);
        Ok(Register::Submitted(rx))
    }

    /// The registered devices of an account, sorted (from memory).
    pub fn devices(&self, account: u64) -> Result<Vec<u32>, StorageError> {
        Ok(self
            .sh()
            .read_accounts()
            .get(&account)
            .cloned()
            .unwrap_or_default())
    }

    /// The registered devices of many accounts at once (for fan-out), from memory: in the
    /// order of `accounts`, each account's devices sorted; accounts without devices add
    /// nothing, an account listed twice is listed twice.
    pub fn devices_of_many(&self, accounts: &[u64]) -> Result<Vec<DeviceKey>, StorageError> {
        let index = self.sh().read_accounts();
        let mut out = Vec::with_capacity(accounts.len());
        for &account in accounts {
            if let Some(devices) = index.get(&account) {
                out.extend(devices.iter().map(|&d| DeviceKey::new(account, d)));
            }
        }
        Ok(out)
    }

    /// Unregisters a device and deletes its whole queue. Returns its stats as they were when
    /// removed (None if it was not registered). Resolves once the removal is durable.
    pub async fn remove_device(&self, key: DeviceKey) -> Result<Option<DeviceStats>, StorageError> {
        let rx = {
            let sh = self.sh();
            let mut map = sh.lock_devices();
            let Some(st) = map.get_mut(&key).filter(|s| !s.removing) else {
                return Ok(None);
            };
            let record = DeviceRecord {
                registered_at_ms: st.registered_at_ms,
                next_seq: st.next_seq,
            };
            let (tx, rx) = oneshot::channel();
            self.submit(Job::Remove {
                device: key,
                record,
                reply: tx,
            })?;
            st.removing = true;
            sh.index_remove(key);
            Totals::sub(&sh.totals.devices, 1);
            rx
        };
        reply(rx).await
    }

    /// Allocates per-device seqs (acceptance order), checks limits all-or-nothing, submits one
    /// write (the queue entries; when `dedup` is Some, the sender and the number of recipients
    /// to remember, carried by the entries' values or, with no recipients, a record of its
    /// own) to the group-commit writer and returns at once; `commit` resolves after fsync. A
    /// device listed twice gets two entries. If `(sender, msg_id)` is remembered (see
    /// [`Store::dedup_lookup`]), nothing is written.
    pub fn enqueue(
        &self,
        devices: &[DeviceKey],
        env: &StoredEnvelope,
        dedup: Option<(DeviceKey, u64)>,
    ) -> Result<Enqueued, EnqueueError> {
        let recipients: Vec<SharedRecipient> = devices
            .iter()
            .map(|&device| SharedRecipient {
                device,
                header: Bytes::new(),
            })
            .collect();
        self.enqueue_with(&recipients, env, None, dedup)
    }

    /// Stores `env` once in `payloads` and a pointer entry (payload id, `group`, the
    /// recipient's header) in each recipient device queue, all in ONE write batch; same seq
    /// allocation, limits (all-or-nothing), dedup and Commit semantics as [`Store::enqueue`].
    /// Each entry counts its payload plus its header against its queue's byte limit.
    ///
    /// The payload is deleted when its last pointer is acked, expires, or its device is
    /// removed. Nothing is copied per recipient but its small key, pointer and header; with no
    /// recipients nothing is stored (but the dedup record).
    pub fn enqueue_shared(
        &self,
        recipients: &[SharedRecipient],
        env: &StoredEnvelope,
        group: u64,
        dedup: Option<(DeviceKey, u64)>,
    ) -> Result<Enqueued, EnqueueError> {
        self.enqueue_with(recipients, env, Some(group), dedup)
    }

    fn enqueue_with(
        &self,
        recipients: &[SharedRecipient],
        env: &StoredEnvelope,
        shared: Option<u64>,
        dedup: Option<(DeviceKey, u64)>,
    ) -> Result<Enqueued, EnqueueError> {
        let sh = self.sh();
        self.check_poisoned()?;
        let len = env.payload.len() as u64;
        let bytes = |i: usize| len + recipients[i].header.len() as u64;
        let mut map = sh.lock_devices();
        let seqs = allocate(
            &mut map,
            recipients.len(),
            &|i| (recipients[i].device, bytes(i)),
            sh.opts.max_queue_len,
            sh.opts.max_queue_bytes,
        )?;
        let entries: Vec<EntryWrite> = seqs
            .iter()
            .zip(recipients)
            .map(|(&(device, seq), r)| EntryWrite {
                device,
                seq,
                header: r.header.clone(),
            })
            .collect();
        let dedup = dedup.map(|(sender, n)| (sender, u32::try_from(n).unwrap_or(u32::MAX)));
        let send = self.prepare(&mut map, env, shared, entries, 0, dedup, true)?;
        let (tx, rx) = oneshot::channel();
        let job = Job::Write(WriteJob {
            sends: vec![send],
            acks: Vec::new(),
            records: Vec::new(),
            reply: WriteReply::Unit(tx),
        });
        // Submitted under the lock: the writer sees every device's entries in seq order.
        if let Err(e) = self.submit(job) {
            release(&mut map, &seqs, &|i| (recipients[i].device, bytes(i)));
            return Err(e.into());
        }
        drop(map);
        Ok(Enqueued {
            seqs,
            commit: Commit::new(rx),
        })
    }

    /// Submits a group of changes whose seqs the caller chose (the routing core allocates them:
    /// each greater than every seq its device's queue gave before, see [`Store::queue_state`])
    /// and returns at once; the `Commit` resolves once it is written (fsync'd with
    /// [`crate::Durability::Sync`]) with one [`crate::SendOutcome`] per send. No queue limit
    /// is checked here (the caller did), and the queues count the entries once they are
    /// written. Entries for devices that are not registered (or are being removed) are
    /// skipped; a send whose identity is remembered when the writer reaches it (see
    /// [`Store::dedup_lookup`]; earlier sends of the same group count) is not written at all.
    pub fn write(&self, set: WriteSet) -> Result<Commit<WriteOutcome>, StorageError> {
        let sh = self.sh();
        self.check_poisoned()?;
        let mut map = sh.lock_devices();
        let mut sends = Vec::with_capacity(set.sends.len());
        for send in set.sends {
            let mut kept = Vec::with_capacity(send.entries.len());
            let mut skipped = 0u32;
            for e in send.entries {
                match map.get_mut(&e.device).filter(|s| !s.removing) {
                    Some(st) => {
                        st.next_seq = st.next_seq.max(e.seq + 1);
                        kept.push(e);
                    }
                    None => skipped += 1,
                }
            }
            let (env, shared, dedup) = (&send.env, send.shared, send.dedup);
            sends.push(self.prepare(&mut map, env, shared, kept, skipped, dedup, false)?);
        }
        let mut records = Vec::new();
        for (device, seq) in set.seen {
            if let Some(st) = map.get_mut(&device).filter(|s| !s.removing) {
                st.next_seq = st.next_seq.max(seq + 1);
                if seq >= st.ceiling {
                    st.ceiling = seq.saturating_add(1 + SEQ_BLOCK);
                    let rec = DeviceRecord {
                        registered_at_ms: st.registered_at_ms,
                        next_seq: st.ceiling,
                    };
                    records.push((keys::device_prefix(device), rec));
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Write(WriteJob {
            sends,
            acks: set.acks,
            records,
            reply: WriteReply::Outcomes(tx),
        }))?;
        drop(map);
        Ok(Commit::new(rx))
    }

    /// Encodes one send for the writer, under the device lock `map` (which the caller holds),
    /// and raises the seq ceilings its seqs reach; `reserved`: its entries took room in their
    /// queues (`allocate`).
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &self,
        map: &mut Devices,
        env: &StoredEnvelope,
        shared: Option<u64>,
        entries: Vec<EntryWrite>,
        skipped: u32,
        dedup: Option<(DeviceKey, u32)>,
        reserved: bool,
    ) -> Result<PreparedSend, StorageError> {
        let sh = self.sh();
        let payload_len = u32::try_from(env.payload.len())
            .map_err(|_| StorageError::Invalid("payload of 4 GiB or more".into()))?;
        let len = u64::from(payload_len);
        let headers: usize = entries.iter().map(|e| e.header.len()).sum();
        let counted: Vec<(DeviceKey, u64)> = entries
            .iter()
            .map(|e| (e.device, len + e.header.len() as u64))
            .collect();
        // With recipients, the values carry the send's identity; without, it gets a record.
        let identity = dedup.filter(|_| !entries.is_empty());
        let (values, payload) = match shared {
            None => (Values::Same(keys::encode_inline(env, identity)), None),
            Some(group) => {
                let payload_id = sh.next_payload_id.fetch_add(1, Ordering::Relaxed);
                let pointer = Pointer {
                    payload_id,
                    expires_at_ms: env.expires_at_ms,
                    payload_len,
                    group,
                };
                let values = if headers == 0 {
                    let mut v = Vec::with_capacity(keys::POINTER_HEADER_LEN);
                    keys::encode_pointer(&pointer, &mut v);
                    Values::Same(v)
                } else {
                    let mut arena =
                        Vec::with_capacity(entries.len() * keys::POINTER_HEADER_LEN + headers);
                    let mut ends = Vec::with_capacity(entries.len());
                    for e in &entries {
                        keys::encode_pointer(&pointer, &mut arena);
                        arena.extend_from_slice(&e.header);
                        ends.push(arena.len());
                    }
                    Values::Each { arena, ends }
                };
                let payload = (!entries.is_empty()).then(|| {
                    let refs = u32::try_from(entries.len()).unwrap_or(u32::MAX);
                    // Cached before the writer can see it: its deletion then always evicts it.
                    sh.lock_payloads().insert(payload_id, env.clone());
                    (payload_id, keys::encode_payload(refs, env, identity))
                });
                (values, payload)
            }
        };
        let mut records: Vec<(keys::DevicePrefix, DeviceRecord)> = Vec::new();
        for e in &entries {
            let st = map
                .get_mut(&e.device)
                .expect("entries are for registered devices");
            if e.seq >= st.ceiling {
                st.ceiling = e.seq.saturating_add(1 + SEQ_BLOCK);
                let rec = DeviceRecord {
                    registered_at_ms: st.registered_at_ms,
                    next_seq: st.ceiling,
                };
                records.push((keys::device_prefix(e.device), rec));
            }
        }
        let pending = len + headers as u64;
        Totals::add(&sh.totals.pending_bytes, pending);
        Ok(PreparedSend {
            values,
            entries: entries
                .iter()
                .map(|e| keys::queue_key(e.device, e.seq))
                .collect(),
            counted,
            reserved,
            records,
            dedup: self.dedup_entry(env, dedup),
            payload,
            pending,
            skipped,
            accepted_at_ms: env.accepted_at_ms,
        })
    }

    /// The dedup identity, record and expiry (for a send stored nowhere) of an envelope.
    fn dedup_entry(
        &self,
        env: &StoredEnvelope,
        dedup: Option<(DeviceKey, u32)>,
    ) -> Option<(DedupId, DedupRecord, u64)> {
        dedup.map(|(sender, recipients)| {
            let rec = DedupRecord {
                accepted_at_ms: env.accepted_at_ms,
                recipients,
            };
            let expires = env
                .accepted_at_ms
                .saturating_add(self.sh().opts.dedup_window_ms);
            (DedupId::new(sender, env.msg_id), rec, expires)
        })
    }

    /// A device's queue, from memory: its next seq, and the entries and bytes it holds
    /// (committed, plus what [`Store::enqueue`] took room for; not what [`Store::write`] was
    /// handed and has not written yet). None: not registered, or being removed.
    pub fn queue_state(&self, key: DeviceKey) -> Option<QueueState> {
        let map = self.sh().lock_devices();
        map.get(&key).filter(|s| !s.removing).map(|s| QueueState {
            next_seq: s.next_seq,
            queued: s.queued + s.reserved,
            bytes: s.bytes + s.reserved_bytes,
        })
    }

    /// Whether a write failed: the store then refuses every further change (a failed write
    /// leaves memory and disk out of step; reopen the store to recover from disk).
    pub fn is_poisoned(&self) -> bool {
        self.sh().poisoned.load(Ordering::Acquire)
    }

    fn check_poisoned(&self) -> Result<(), StorageError> {
        if self.is_poisoned() {
            return Err(StorageError::Poisoned);
        }
        Ok(())
    }

    /// The dedup record of `(sender, msg_id)` if it is remembered (committed), from memory:
    /// while an envelope of that send is queued for some device (however long ago it was
    /// accepted), or, for a send stored nowhere (no entry written: every recipient blocked or
    /// removed), until a sweep deletes its record once the dedup window has passed. A send
    /// whose envelopes were all acknowledged, expired or removed is forgotten.
    pub fn dedup_lookup(
        &self,
        sender: DeviceKey,
        msg_id: MessageId,
    ) -> Result<Option<DedupRecord>, StorageError> {
        let id = DedupId::new(sender, msg_id);
        Ok(self.sh().read_dedup().get(&id).map(|(rec, _)| rec))
    }

    /// Up to `max` entries of the device's queue with seq >= from_seq, in seq order (committed
    /// only). Expired entries not yet swept are included: compare `expires_at_ms` with the time.
    /// Pointer entries come with their shared payload (its `Bytes` shared between entries and
    /// readers, from a cache of recent payloads).
    pub fn read_queue(
        &self,
        key: DeviceKey,
        from_seq: u64,
        max: usize,
    ) -> Result<Vec<QueueEntry>, StorageError> {
        let sh = self.sh();
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        // One snapshot for the queue and the payloads: a pointer read is never left without
        // its payload by an ack that deletes both meanwhile.
        let snap = sh.db.snapshot();
        let prefix = keys::device_prefix(key);
        let mut ro = ReadOptions::default();
        if let Some(end) = keys::prefix_end(&prefix) {
            ro.set_iterate_upper_bound(end);
        }
        let start = keys::queue_key(key, from_seq);
        let iter = snap.iterator_cf_opt(
            sh.cf(QUEUES),
            ro,
            IteratorMode::From(&start, Direction::Forward),
        );
        // Payloads met in this read (a queue holds few distinct ones in a row).
        let mut seen: Vec<(u64, StoredEnvelope)> = Vec::new();
        for item in iter {
            let (k, v) = item?;
            let (_, seq) = keys::decode_queue_key(&k)
                .ok_or_else(|| StorageError::Corrupt("queue key".into()))?;
            let entry = match keys::decode_queue_value(&v)? {
                QueueValue::Inline(envelope) => QueueEntry {
                    seq,
                    envelope,
                    group: 0,
                    header: bytes::Bytes::new(),
                },
                QueueValue::Pointer { pointer, header } => {
                    let id = pointer.payload_id;
                    let envelope = match seen.iter().find(|(s, _)| *s == id) {
                        Some((_, env)) => env.clone(),
                        None => {
                            let env = self.payload(&snap, id)?;
                            seen.push((id, env.clone()));
                            env
                        }
                    };
                    QueueEntry {
                        seq,
                        envelope,
                        group: pointer.group,
                        header,
                    }
                }
            };
            out.push(entry);
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// A shared payload, from the cache or else the snapshot.
    fn payload(
        &self,
        snap: &rocksdb::Snapshot<'_>,
        id: u64,
    ) -> Result<StoredEnvelope, StorageError> {
        let sh = self.sh();
        if let Some(env) = sh.lock_payloads().get(id) {
            return Ok(env);
        }
        let v = snap
            .get_pinned_cf(sh.cf(PAYLOADS), keys::payload_key(id))?
            .ok_or_else(|| StorageError::Corrupt(format!("shared payload {id} is missing")))?;
        let (_, env) = keys::decode_payload(&v)?;
        // Should its last pointer have been deleted since the snapshot, this entry only waits
        // for its turn to be evicted: ids are not reused while the store is open.
        sh.lock_payloads().insert(id, env.clone());
        Ok(env)
    }

    /// Deletes the acknowledged entries that exist (SingleDelete), not asking for an fsync of its
    /// own; returns how many existed. Unknown and repeated seqs are ignored.
    pub async fn ack(&self, key: DeviceKey, seqs: &[u64]) -> Result<u64, StorageError> {
        if seqs.is_empty() {
            return Ok(0);
        }
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Ack {
            device: key,
            seqs: seqs.to_vec(),
            reply: tx,
        })?;
        reply(rx).await
    }

    /// Deletes what expired at `now_ms` (expiry <= now_ms), at most `max` in all: the records
    /// of sends stored nowhere whose dedup window ended (by expiry), then queue entries, by
    /// device then seq. Only queues whose earliest expiry may have passed are read, each up to
    /// its last entry that may have expired (see [`SweepStats`]).
    pub async fn sweep_expired(&self, now_ms: u64, max: usize) -> Result<SweepStats, StorageError> {
        if max == 0 {
            return Ok(SweepStats::default());
        }
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Sweep {
            now_ms,
            max,
            reply: tx,
        })?;
        reply(rx).await
    }

    /// Counters of a registered device (None if it is not registered).
    pub fn device_stats(&self, key: DeviceKey) -> Result<Option<DeviceStats>, StorageError> {
        let map = self.sh().lock_devices();
        Ok(map.get(&key).filter(|s| !s.removing).map(|s| s.stats(key)))
    }

    /// Counters of every registered device of an account, sorted by device.
    pub fn account_stats(&self, account: u64) -> Result<Vec<DeviceStats>, StorageError> {
        let keys: Vec<DeviceKey> = self
            .devices(account)?
            .into_iter()
            .map(|d| DeviceKey::new(account, d))
            .collect();
        let map = self.sh().lock_devices();
        Ok(keys
            .iter()
            .filter_map(|k| map.get(k).filter(|s| !s.removing).map(|s| s.stats(*k)))
            .collect())
    }

    /// Store-wide counters.
    pub fn stats(&self) -> StoreStats {
        let t = &self.sh().totals;
        let (p50, p99, max) = self
            .sh()
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .summary();
        StoreStats {
            devices: Totals::get(&t.devices),
            queued: Totals::get(&t.queued),
            queued_bytes: Totals::get(&t.bytes),
            commits: Totals::get(&t.commits),
            fsync_p50_us: p50,
            fsync_p99_us: p99,
            fsync_max_us: max,
            pending_bytes: Totals::get(&t.pending_bytes),
            payloads: Totals::get(&t.payloads),
            batch_ops: Totals::get(&t.batch_ops),
        }
    }

    /// Raw count of keys in each column family: `queues`, `devices`, `dedup`, `expiry`,
    /// `groups`, `members`, `payloads`, `accounts`, `lists`, `push`, `memberships` (for tests
    /// that prove data is gone).
    pub fn count_keys(&self) -> Result<Vec<(String, u64)>, StorageError> {
        let sh = self.sh();
        let mut out = Vec::with_capacity(COLUMN_FAMILIES.len());
        for name in COLUMN_FAMILIES {
            let mut n = 0;
            for item in sh.db.iterator_cf(sh.cf(name), IteratorMode::Start) {
                item?;
                n += 1;
            }
            out.push((name.to_string(), n));
        }
        Ok(out)
    }

    /// Drops this handle. When it is the last one, the writer writes everything submitted,
    /// marks a clean shutdown and stops, and the database is closed before this returns.
    pub fn close(self) {
        drop(self);
    }
}

/// Takes a seq and room for each entry in its device's queue, in order; on the first unknown
/// device or full queue, gives back what it took (seqs too: nothing was submitted) and fails.
fn allocate(
    map: &mut Devices,
    n: usize,
    entry: &impl Fn(usize) -> (DeviceKey, u64),
    max_len: u64,
    max_bytes: u64,
) -> Result<Vec<(DeviceKey, u64)>, EnqueueError> {
    let mut seqs = Vec::with_capacity(n);
    for i in 0..n {
        let (device, bytes) = entry(i);
        let refused = match map.get_mut(&device).filter(|s| !s.removing) {
            None => Some(EnqueueError::UnknownDevice { device }),
            Some(st)
                if st.queued + st.reserved >= max_len
                    || (st.bytes + st.reserved_bytes).saturating_add(bytes) > max_bytes =>
            {
                Some(EnqueueError::QueueFull { device })
            }
            Some(st) => {
                st.reserved += 1;
                st.reserved_bytes += bytes;
                seqs.push((device, st.next_seq));
                st.next_seq += 1;
                None
            }
        };
        if let Some(e) = refused {
            release(map, &seqs, entry);
            return Err(e);
        }
    }
    Ok(seqs)
}

/// Undoes `allocate` of the entries that got `seqs` (in reverse, so `next_seq` goes back).
fn release(
    map: &mut Devices,
    seqs: &[(DeviceKey, u64)],
    entry: &impl Fn(usize) -> (DeviceKey, u64),
) {
    for (i, (device, seq)) in seqs.iter().enumerate().rev() {
        let st = map.get_mut(device).expect("allocated");
        st.reserved -= 1;
        st.reserved_bytes -= entry(i).1;
        debug_assert_eq!(st.next_seq, seq + 1);
        st.next_seq = *seq;
    }
}

enum Register<'a> {
    Exists,
    Submitted(oneshot::Receiver<Result<(), StorageError>>),
    Removing(tokio::sync::futures::Notified<'a>),
}
