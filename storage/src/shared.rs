//! State shared by the store handles and the writer thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};

use rocksdb::{ColumnFamily, Direction, IteratorMode, ReadOptions, DB};
use tokio::sync::Notify;

use crate::error::StorageError;
use crate::keys::{self, DeviceRecord};
use crate::types::{DeviceKey, DeviceStats, StoreOptions};

pub(crate) const QUEUES: &str = "queues";
pub(crate) const DEVICES: &str = "devices";
pub(crate) const DEDUP: &str = "dedup";
pub(crate) const EXPIRY: &str = "expiry";
/// Every column family of ours, in the order `count_keys` reports them.
pub(crate) const COLUMN_FAMILIES: [&str; 4] = [QUEUES, DEVICES, DEDUP, EXPIRY];

/// In-memory state of a loaded device. Counters include submitted, not yet committed entries.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeviceState {
    pub registered_at_ms: u64,
    pub next_seq: u64,
    pub queued: u64,
    pub bytes: u64,
    /// A removal was submitted: the device is gone for new work; the writer drops the state
    /// once the removal is written.
    pub removing: bool,
}

impl DeviceState {
    pub(crate) fn stats(&self, key: DeviceKey) -> DeviceStats {
        DeviceStats {
            key,
            slot: key.slot(),
            queued: self.queued,
            bytes: self.bytes,
            next_seq: self.next_seq,
            registered_at_ms: self.registered_at_ms,
        }
    }
}

pub(crate) type Devices = HashMap<DeviceKey, DeviceState>;

/// A key and its value, as RocksDB iterators return them.
pub(crate) type KeyValue = (Box<[u8]>, Box<[u8]>);

/// Store-wide counters.
#[derive(Default)]
pub(crate) struct Totals {
    pub devices: AtomicU64,
    pub queued: AtomicU64,
    pub bytes: AtomicU64,
    pub pending_bytes: AtomicU64,
    pub commits: AtomicU64,
}

impl Totals {
    pub(crate) fn add(counter: &AtomicU64, v: u64) {
        counter.fetch_add(v, Ordering::Relaxed);
    }

    pub(crate) fn sub(counter: &AtomicU64, v: u64) {
        counter.fetch_sub(v, Ordering::Relaxed);
    }

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Durations of recent group writes.
pub(crate) struct Latency {
    ring: Vec<u64>,
    next: usize,
    max: u64,
}

const LATENCY_WINDOW: usize = 1024;

impl Latency {
    pub(crate) fn new() -> Latency {
        Latency {
            ring: Vec::with_capacity(LATENCY_WINDOW),
            next: 0,
            max: 0,
        }
    }

    pub(crate) fn record(&mut self, us: u64) {
        if self.ring.len() < LATENCY_WINDOW {
            self.ring.push(us);
        } else {
            self.ring[self.next] = us;
        }
        self.next = (self.next + 1) % LATENCY_WINDOW;
        self.max = self.max.max(us);
    }

    /// (p50, p99, max) in microseconds.
    pub(crate) fn summary(&self) -> (u64, u64, u64) {
        if self.ring.is_empty() {
            return (0, 0, 0);
        }
        let mut v = self.ring.clone();
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        (at(0.50), at(0.99), self.max)
    }
}

/// Everything behind a `Store` handle.
pub(crate) struct Shared {
    pub db: DB,
    pub opts: StoreOptions,
    /// RocksDB's id of the `queues` column family (for SingleDelete records).
    pub queues_cf_id: u32,
    /// Loaded devices. Lock order: `gate` before `devices`.
    pub devices: Mutex<Devices>,
    /// Held for writing by the writer while it writes a batch and applies its counter changes,
    /// for reading while a device is loaded: a load sees a batch and its counter changes
    /// entirely or not at all.
    pub gate: RwLock<()>,
    /// Woken when the writer has finished removing devices.
    pub removal_done: Notify,
    pub totals: Totals,
    pub latency: Mutex<Latency>,
}

impl Shared {
    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("the store opens every column family")
    }

    pub(crate) fn lock_devices(&self) -> MutexGuard<'_, Devices> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks the device map with every device of `keys` that is registered loaded into it.
    pub(crate) fn lock_loaded(
        &self,
        keys: &[DeviceKey],
    ) -> Result<MutexGuard<'_, Devices>, StorageError> {
        {
            let map = self.lock_devices();
            if keys.iter().all(|k| map.contains_key(k)) {
                return Ok(map);
            }
        }
        let _gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let mut missing: Vec<DeviceKey> = {
            let map = self.lock_devices();
            keys.iter()
                .filter(|k| !map.contains_key(k))
                .copied()
                .collect()
        };
        missing.sort_unstable();
        missing.dedup();
        let mut loaded = Vec::with_capacity(missing.len());
        for key in missing {
            if let Some(state) = self.load_device(key)? {
                loaded.push((key, state));
            }
        }
        let mut map = self.lock_devices();
        for (key, state) in loaded {
            map.entry(key).or_insert(state);
        }
        Ok(map)
    }

    /// Reads a device's record and scans its queue (None: not registered).
    fn load_device(&self, key: DeviceKey) -> Result<Option<DeviceState>, StorageError> {
        let prefix = keys::device_prefix(key);
        let Some(v) = self.db.get_pinned_cf(self.cf(DEVICES), prefix)? else {
            return Ok(None);
        };
        let rec = DeviceRecord::decode(&v)?;
        let (mut queued, mut bytes, mut last_seq) = (0u64, 0u64, 0u64);
        for item in self.scan(QUEUES, &prefix) {
            let (k, v) = item?;
            let meta = keys::envelope_meta(&v)?;
            queued += 1;
            bytes += meta.payload_len;
            last_seq = keys::decode_queue_key(&k)
                .ok_or_else(|| StorageError::Corrupt("queue key".into()))?
                .1;
        }
        Ok(Some(DeviceState {
            registered_at_ms: rec.registered_at_ms,
            next_seq: rec.next_seq.max(last_seq + 1),
            queued,
            bytes,
            removing: false,
        }))
    }

    /// Iterates the keys of column family `cf` that start with `prefix`, from `start`
    /// (which must itself start with `prefix`).
    pub(crate) fn scan_from<'a>(
        &'a self,
        cf: &str,
        prefix: &[u8],
        start: &[u8],
    ) -> impl Iterator<Item = Result<KeyValue, StorageError>> + 'a {
        let mut ro = ReadOptions::default();
        if let Some(end) = keys::prefix_end(prefix) {
            ro.set_iterate_upper_bound(end);
        }
        self.db
            .iterator_cf_opt(
                self.cf(cf),
                ro,
                IteratorMode::From(start, Direction::Forward),
            )
            .map(|r| r.map_err(StorageError::from))
    }

    /// Iterates the keys of column family `cf` that start with `prefix`.
    pub(crate) fn scan<'a>(
        &'a self,
        cf: &str,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<KeyValue, StorageError>> + 'a {
        self.scan_from(cf, prefix, prefix)
    }
}
