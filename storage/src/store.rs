//! The `Store` handle.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use rocksdb::{
    ColumnFamilyDescriptor, DBCompressionType, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use tokio::sync::{oneshot, Notify};

use crate::batch::column_family_id;
use crate::commit::{reply, Commit};
use crate::error::{EnqueueError, StorageError};
use crate::keys::{self, DeviceRecord, EntryMeta};
use crate::shared::{Latency, Shared, Totals, COLUMN_FAMILIES, DEDUP, DEVICES, QUEUES};
use crate::types::{
    DedupRecord, DeviceKey, DeviceStats, Enqueued, QueueEntry, StoreOptions, StoreStats,
    StoredEnvelope, SweepStats,
};
use crate::writer::{self, EnqueueJob, Job, CLEAN_SHUTDOWN_KEY};
use hearth_protocol::MessageId;

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
    /// Opens (creating if needed) the store in directory `path`.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Store, StorageError> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        let cfs = COLUMN_FAMILIES.map(|name| {
            let mut o = Options::default();
            if name == QUEUES {
                // Payloads are ciphertext: compressing them wastes CPU.
                o.set_compression_type(DBCompressionType::None);
            }
            ColumnFamilyDescriptor::new(name, o)
        });
        let db = DB::open_cf_descriptors(&db_opts, path, cfs)?;

        let clean = db.get_pinned(CLEAN_SHUTDOWN_KEY)?.is_some();
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        if clean {
            // From now on a crash must be noticed at the next open.
            db.delete_opt(CLEAN_SHUTDOWN_KEY, &wo)?;
        }
        let totals = Totals::default();
        for item in db.iterator_cf(db.cf_handle(QUEUES).expect("opened"), IteratorMode::Start) {
            let (_, v) = item?;
            Totals::add(&totals.queued, 1);
            Totals::add(&totals.bytes, keys::envelope_meta(&v)?.payload_len);
        }
        // After a crash, seqs handed out but lost may have been seen by a device (live delivery
        // does not wait for the fsync): every device skips ahead of them. Per device they are at
        // most a queue's length, since the queue limit counts submitted entries.
        let skip = if clean {
            0
        } else {
            opts.max_queue_len.max(1 << 20)
        };
        let mut skipped = WriteBatch::default();
        let devices_cf = db.cf_handle(DEVICES).expect("opened");
        for item in db.iterator_cf(devices_cf, IteratorMode::Start) {
            let (k, v) = item?;
            Totals::add(&totals.devices, 1);
            if skip > 0 {
                let mut rec = DeviceRecord::decode(&v)?;
                rec.next_seq = rec.next_seq.saturating_add(skip);
                skipped.put_cf(devices_cf, k, rec.encode());
            }
        }
        if !skipped.is_empty() {
            tracing::warn!(
                skip,
                "the store was not shut down cleanly: device seqs skip ahead"
            );
            db.write_opt(skipped, &wo)?;
        }
        let queues_cf_id = column_family_id(db.cf_handle(QUEUES).expect("opened"));
        let shared = Arc::new(Shared {
            db,
            opts,
            queues_cf_id,
            devices: Mutex::new(Default::default()),
            gate: RwLock::new(()),
            removal_done: Notify::new(),
            totals,
            latency: Mutex::new(Latency::new()),
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("hearth-storage-writer".into())
                .spawn(move || writer::run(shared, rx))
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

    fn sh(&self) -> &Shared {
        &self.inner.shared
    }

    fn submit(&self, job: Job) -> Result<(), StorageError> {
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
        let mut map = sh.lock_loaded(&[key])?;
        match map.get(&key) {
            Some(st) if st.removing => return Ok(Register::Removing(sh.removal_done.notified())),
            Some(_) => return Ok(Register::Exists),
            None => {}
        }
        let record = DeviceRecord {
            registered_at_ms: now_ms,
            next_seq: 1,
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
                queued: 0,
                bytes: 0,
                removing: false,
            },
        );
        Totals::add(&sh.totals.devices, 1);
        Ok(Register::Submitted(rx))
    }

    /// The registered devices of an account, sorted.
    pub fn devices(&self, account: u64) -> Result<Vec<u32>, StorageError> {
        let sh = self.sh();
        let mut out = Vec::new();
        for item in sh.scan(DEVICES, &keys::account_prefix(account)) {
            let (k, _) = item?;
            let key = keys::decode_device(&k)
                .ok_or_else(|| StorageError::Corrupt("device key".into()))?;
            out.push(key);
        }
        let map = sh.lock_devices();
        Ok(out
            .into_iter()
            .filter(|k| !map.get(k).is_some_and(|s| s.removing))
            .map(|k| k.device)
            .collect())
    }

    /// Unregisters a device and deletes its whole queue. Returns its stats as they were when
    /// removed (None if it was not registered). Resolves once the removal is durable.
    pub async fn remove_device(&self, key: DeviceKey) -> Result<Option<DeviceStats>, StorageError> {
        let rx = {
            let sh = self.sh();
            let mut map = sh.lock_loaded(&[key])?;
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
            Totals::sub(&sh.totals.devices, 1);
            rx
        };
        reply(rx).await
    }

    /// Allocates per-device seqs (acceptance order), checks limits all-or-nothing, submits one
    /// write (queue entries + expiry index + dedup record when `dedup` is Some: the sender and
    /// the number of recipients to remember) to the group-commit writer and returns at once;
    /// `commit` resolves after fsync. A device listed twice gets two entries.
    pub fn enqueue(
        &self,
        devices: &[DeviceKey],
        env: &StoredEnvelope,
        dedup: Option<(DeviceKey, u64)>,
    ) -> Result<Enqueued, EnqueueError> {
        let sh = self.sh();
        let value = keys::encode_envelope(env);
        let meta = EntryMeta {
            payload_len: env.payload.len() as u64,
            expires_at_ms: env.expires_at_ms,
        };
        let dedup = dedup.map(|(sender, recipients)| {
            let rec = DedupRecord {
                accepted_at_ms: env.accepted_at_ms,
                recipients: u32::try_from(recipients).unwrap_or(u32::MAX),
            };
            let expires = env.accepted_at_ms.saturating_add(sh.opts.dedup_window_ms);
            (
                keys::dedup_key(sender, env.msg_id),
                keys::encode_dedup(rec, expires),
                expires,
            )
        });
        let mut map = sh.lock_loaded(devices)?;

        // Check every recipient before touching any.
        let mut wanted: Vec<(DeviceKey, u64)> = Vec::with_capacity(devices.len());
        for &device in devices {
            let Some(st) = map.get(&device).filter(|s| !s.removing) else {
                return Err(EnqueueError::UnknownDevice { device });
            };
            let n = match wanted.iter_mut().find(|(d, _)| *d == device) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    wanted.push((device, 1));
                    1
                }
            };
            let len_ok = st.queued.saturating_add(n) <= sh.opts.max_queue_len;
            let bytes_ok = st.bytes.saturating_add(n.saturating_mul(meta.payload_len))
                <= sh.opts.max_queue_bytes;
            if !len_ok || !bytes_ok {
                return Err(EnqueueError::QueueFull { device });
            }
        }

        let mut seqs = Vec::with_capacity(devices.len());
        let mut entries = Vec::with_capacity(devices.len());
        for &device in devices {
            let st = map.get_mut(&device).expect("checked above");
            let seq = st.next_seq;
            st.next_seq += 1;
            st.queued += 1;
            st.bytes += meta.payload_len;
            seqs.push((device, seq));
            entries.push(keys::queue_key(device, seq));
        }
        let records = wanted
            .iter()
            .map(|(device, _)| {
                let st = &map[device];
                let rec = DeviceRecord {
                    registered_at_ms: st.registered_at_ms,
                    next_seq: st.next_seq,
                };
                (keys::device_prefix(*device), rec)
            })
            .collect();
        let n = devices.len() as u64;
        let (tx, rx) = oneshot::channel();
        let job = EnqueueJob {
            value,
            meta,
            entries,
            records,
            dedup,
            reply: tx,
        };
        // Submitted under the lock: the writer sees every device's entries in seq order.
        if let Err(e) = self.submit(Job::Enqueue(job)) {
            for &device in devices {
                let st = map.get_mut(&device).expect("checked above");
                st.queued -= 1;
                st.bytes -= meta.payload_len;
            }
            return Err(e.into());
        }
        Totals::add(&sh.totals.queued, n);
        Totals::add(&sh.totals.bytes, n * meta.payload_len);
        Totals::add(&sh.totals.pending_bytes, n * meta.payload_len);
        drop(map);
        Ok(Enqueued {
            seqs,
            commit: Commit::new(rx),
        })
    }

    /// The dedup record of (sender, msg_id), if one was committed and not yet swept.
    pub fn dedup_lookup(
        &self,
        sender: DeviceKey,
        msg_id: MessageId,
    ) -> Result<Option<DedupRecord>, StorageError> {
        let sh = self.sh();
        match sh
            .db
            .get_pinned_cf(sh.cf(DEDUP), keys::dedup_key(sender, msg_id))?
        {
            Some(v) => Ok(Some(keys::decode_dedup(&v)?.0)),
            None => Ok(None),
        }
    }

    /// Up to `max` entries of the device's queue with seq >= from_seq, in seq order (committed
    /// only). Expired entries not yet swept are included: compare `expires_at_ms` with the time.
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
        let start = keys::queue_key(key, from_seq);
        for item in sh.scan_from(QUEUES, &keys::device_prefix(key), &start) {
            let (k, v) = item?;
            let (_, seq) = keys::decode_queue_key(&k)
                .ok_or_else(|| StorageError::Corrupt("queue key".into()))?;
            out.push(QueueEntry {
                seq,
                envelope: keys::decode_envelope(&v)?,
            });
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
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

    /// Deletes entries and dedup records whose expiry <= now_ms, visiting at most `max` expiry
    /// index entries (acked entries leave theirs behind; they are deleted here too).
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
        let map = self.sh().lock_loaded(&[key])?;
        Ok(map.get(&key).filter(|s| !s.removing).map(|s| s.stats(key)))
    }

    /// Counters of every registered device of an account, sorted by device.
    pub fn account_stats(&self, account: u64) -> Result<Vec<DeviceStats>, StorageError> {
        let keys: Vec<DeviceKey> = self
            .devices(account)?
            .into_iter()
            .map(|d| DeviceKey::new(account, d))
            .collect();
        let map = self.sh().lock_loaded(&keys)?;
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
        }
    }

    /// Raw count of keys in each column family: `queues`, `devices`, `dedup`, `expiry` (for
    /// tests that prove data is gone).
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

enum Register<'a> {
    Exists,
    Submitted(oneshot::Receiver<Result<(), StorageError>>),
    Removing(tokio::sync::futures::Notified<'a>),
}
