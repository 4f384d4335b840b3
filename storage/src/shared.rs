//! State shared by the store handles and the writer thread.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use rocksdb::{ColumnFamily, Direction, IteratorMode, ReadOptions, DB};
use tokio::sync::Notify;

use crate::account::{AccountLists, AccountRecord};
use crate::dedup::Remembered;
use crate::error::StorageError;
use crate::expiry::DevExpiry;
use crate::groups::GroupEntry;
use crate::keys;
use crate::keys::GroupRecord;
use crate::types::Role;
use crate::types::{DeviceKey, DeviceStats, StoreOptions, StoredEnvelope};

pub(crate) const QUEUES: &str = "queues";
pub(crate) const DEVICES: &str = "devices";
pub(crate) const DEDUP: &str = "dedup";
pub(crate) const EXPIRY: &str = "expiry";
pub(crate) const GROUPS: &str = "groups";
pub(crate) const MEMBERS: &str = "members";
pub(crate) const PAYLOADS: &str = "payloads";
pub(crate) const ACCOUNTS: &str = "accounts";
pub(crate) const LISTS: &str = "lists";
pub(crate) const PUSH: &str = "push";
pub(crate) const MEMBERSHIPS: &str = "memberships";
/// Every column family of ours, in the order `count_keys` reports them.
pub(crate) const COLUMN_FAMILIES: [&str; 11] = [
    QUEUES,
    DEVICES,
    DEDUP,
    EXPIRY,
    GROUPS,
    MEMBERS,
    PAYLOADS,
    ACCOUNTS,
    LISTS,
    PUSH,
    MEMBERSHIPS,
];

/// In-memory state of a registered device.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeviceState {
    pub registered_at_ms: u64,
    pub next_seq: u64,
    /// The seq ceiling in its device record, as submitted: every seq handed out is below it
    /// (a write that hands out one at or above it raises it by a block, in the same batch).
    pub ceiling: u64,
    /// Its queue's expiry state (committed entries; changed by the writer only).
    pub exp: DevExpiry,
    /// Committed entries and their bytes.
    pub queued: u64,
    pub bytes: u64,
    /// Entries (and bytes) `Store::enqueue` took room for and the writer has not written yet.
    pub reserved: u64,
    pub reserved_bytes: u64,
    /// A removal was submitted: the device is gone for new work; the writer drops the state
    /// once the removal is written.
    pub removing: bool,
}

impl DeviceState {
    pub(crate) fn stats(&self, key: DeviceKey) -> DeviceStats {
        DeviceStats {
            key,
            slot: key.slot(),
            queued: self.queued + self.reserved,
            bytes: self.bytes + self.reserved_bytes,
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
    pub payloads: AtomicU64,
    pub batch_ops: AtomicU64,
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

/// Groups kept in the cache at most (a group evicted is read again when needed).
const MAX_CACHED_GROUPS: usize = 1 << 16;

/// Puts a group in the cache, evicting another one when the cache is full.
pub(crate) fn cache_group(cache: &mut HashMap<u64, GroupEntry>, group: u64, entry: GroupEntry) {
    if cache.len() >= MAX_CACHED_GROUPS && !cache.contains_key(&group) {
        if let Some(victim) = cache.keys().next().copied() {
            cache.remove(&victim);
        }
    }
    cache.insert(group, entry);
}

/// Registered devices of each account, sorted (devices being removed are left out).
pub(crate) type Accounts = HashMap<u64, Vec<u32>>;

/// Account records by account.
pub(crate) type Records = HashMap<u64, Arc<AccountRecord>>;
/// Non-empty lists by owning account.
pub(crate) type Lists = HashMap<u64, AccountLists>;
/// Push tokens by device.
pub(crate) type PushTokens = HashMap<DeviceKey, Bytes>;

/// Shared payloads recently stored or read, by id, so that readers share their `Bytes`
/// instead of decoding a copy per queue entry. Bounded by payload bytes, oldest out first.
pub(crate) struct PayloadCache {
    map: HashMap<u64, StoredEnvelope>,
    order: VecDeque<u64>,
    bytes: usize,
    budget: usize,
}

impl PayloadCache {
    pub(crate) fn new(budget: usize) -> PayloadCache {
        PayloadCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            budget,
        }
    }

    pub(crate) fn get(&self, id: u64) -> Option<StoredEnvelope> {
        self.map.get(&id).cloned()
    }

    pub(crate) fn insert(&mut self, id: u64, env: StoredEnvelope) {
        let len = env.payload.len();
        if len > self.budget {
            return;
        }
        if let Some(old) = self.map.insert(id, env) {
            self.bytes -= old.payload.len();
        } else {
            self.order.push_back(id);
        }
        self.bytes += len;
        while self.bytes > self.budget {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.remove(oldest);
        }
    }

    pub(crate) fn remove(&mut self, id: u64) {
        if let Some(old) = self.map.remove(&id) {
            self.bytes -= old.payload.len();
        }
        // Ids removed out of order leave their place in `order`; drop those lazily.
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order.retain(|id| map.contains_key(id));
        }
    }
}

/// Everything behind a `Store` handle.
pub(crate) struct Shared {
    pub db: DB,
    pub opts: StoreOptions,
    /// RocksDB's id of the `queues` column family (for SingleDelete records).
    pub queues_cf_id: u32,
    /// RocksDB's id of the `payloads` column family.
    pub payloads_cf_id: u32,
    /// Every registered device (loaded at open). Lock order: `devices`, then `accounts`.
    pub devices: Mutex<Devices>,
    /// The devices of each account, as `Store::devices` reports them.
    pub accounts: RwLock<Accounts>,
    /// Groups read or changed since open, as committed.
    pub groups: RwLock<HashMap<u64, GroupEntry>>,
    pub payload_cache: Mutex<PayloadCache>,
    /// The next shared payload id.
    pub next_payload_id: AtomicU64,
    /// Held for writing by the writer while it writes a batch and applies its in-memory
    /// changes, for reading while a group is loaded into the cache: a load sees a batch and
    /// its cache updates entirely or not at all.
    pub gate: RwLock<()>,
    /// Every account record, as committed (loaded at open, changed by the writer only).
    pub records: RwLock<Records>,
    /// The non-empty lists of each account, as committed.
    pub lists: RwLock<Lists>,
    /// Every push token, as committed.
    pub push: RwLock<PushTokens>,
    /// Woken when the writer has finished removing devices.
    pub removal_done: Notify,
    pub totals: Totals,
    pub latency: Mutex<Latency>,
    /// Set once a write failed: every later change is refused (see `Store::is_poisoned`).
    pub poisoned: AtomicBool,
    /// The dedup identities remembered (see the `dedup` module).
    pub dedup: RwLock<Remembered>,
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

    pub(crate) fn read_accounts(&self) -> RwLockReadGuard<'_, Accounts> {
        self.accounts.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Lists `key` in its account's devices (call with `devices` locked).
    pub(crate) fn index_add(&self, key: DeviceKey) {
        let mut accounts = self.accounts.write().unwrap_or_else(|e| e.into_inner());
        let list = accounts.entry(key.account).or_default();
        if let Err(at) = list.binary_search(&key.device) {
            list.insert(at, key.device);
        }
    }

    /// Takes `key` out of its account's devices (call with `devices` locked).
    pub(crate) fn index_remove(&self, key: DeviceKey) {
        let mut accounts = self.accounts.write().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = accounts.get_mut(&key.account) {
            if let Ok(at) = list.binary_search(&key.device) {
                list.remove(at);
            }
            if list.is_empty() {
                accounts.remove(&key.account);
            }
        }
    }

    /// Reads a group's record and membership from the database (None: no such group).
    pub(crate) fn load_group(&self, group: u64) -> Result<Option<GroupEntry>, StorageError> {
        let key = keys::group_key(group);
        let Some(v) = self.db.get_pinned_cf(self.cf(GROUPS), key)? else {
            return Ok(None);
        };
        let rec = GroupRecord::decode(&v)?;
        let mut members = Vec::with_capacity(rec.member_count as usize);
        let mut admins = Vec::new();
        for item in self.scan(MEMBERS, &key) {
            let (k, v) = item?;
            let account = keys::decode_member_key(&k)
                .ok_or_else(|| StorageError::Corrupt("member key".into()))?;
            members.push(account);
            match v.first().copied().and_then(Role::from_u8) {
                Some(Role::Admin) => admins.push(account),
                Some(Role::Member) => {}
                None => return Err(StorageError::Corrupt("member role".into())),
            }
        }
        if members.len() != rec.member_count as usize {
            return Err(StorageError::Corrupt(format!(
                "group {group} records {} members, {} stored",
                rec.member_count,
                members.len()
            )));
        }
        Ok(Some(GroupEntry {
            creator: rec.creator,
            version: rec.version,
            created_at_ms: rec.created_at_ms,
            members: Arc::new(members),
            admins: Arc::new(admins),
        }))
    }

    pub(crate) fn read_groups(&self) -> RwLockReadGuard<'_, HashMap<u64, GroupEntry>> {
        self.groups.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write_groups(&self) -> RwLockWriteGuard<'_, HashMap<u64, GroupEntry>> {
        self.groups.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn read_records(&self) -> RwLockReadGuard<'_, Records> {
        self.records.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn read_lists(&self) -> RwLockReadGuard<'_, Lists> {
        self.lists.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn read_push(&self) -> RwLockReadGuard<'_, PushTokens> {
        self.push.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn read_dedup(&self) -> RwLockReadGuard<'_, Remembered> {
        self.dedup.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lock_payloads(&self) -> MutexGuard<'_, PayloadCache> {
        self.payload_cache.lock().unwrap_or_else(|e| e.into_inner())
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
