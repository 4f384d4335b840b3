//! Opening the database and loading the in-memory state: every device's counters, seq ceiling
//! and expiry state, the devices of each account, the reference counts of shared payloads, the
//! dedup identities of queued sends and the records of sends stored nowhere, account records,
//! lists and push tokens; the memberships index is verified (and rebuilt if needed).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use rocksdb::{
    ColumnFamilyDescriptor, DBCompressionType, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};

use crate::account;
use crate::dedup::{Held, Remembered};
use crate::error::StorageError;
use crate::expiry::DevExpiry;
use crate::keys::{self, DedupId, DeviceRecord, Mark};
use crate::memberships;
use crate::shared::{
    Accounts, DeviceState, Devices, Lists, PushTokens, Records, Totals, ACCOUNTS, COLUMN_FAMILIES,
    DEDUP, DEVICES, EXPIRY, LISTS, PAYLOADS, PUSH, QUEUES,
};
use crate::types::StoreOptions;
use crate::writer::{WriterState, CLEAN_SHUTDOWN_KEY};

/// What `load` found.
pub(crate) struct Loaded {
    pub devices: Devices,
    pub accounts: Accounts,
    pub totals: Totals,
    /// What only the writer keeps (reference counts, expiry order, ...).
    pub writer: WriterState,
    pub remembered: Remembered,
    pub next_payload_id: u64,
    pub records: Records,
    pub lists: Lists,
    pub push: PushTokens,
}

/// Bytes all memtables together may hold before RocksDB flushes one.
const MEMTABLE_BUDGET: usize = 256 << 20;

/// Opens (creating if needed) the database with every column family.
pub(crate) fn open_db(path: &Path) -> Result<DB, StorageError> {
    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    db_opts.set_max_background_jobs(2);
    // One memtable budget for all column families (each would otherwise fill two 64 MiB
    // memtables before its first flush, 1.5 GiB over twelve of them): past it, the largest
    // flushes, so a node's memory levels off.
    db_opts.set_db_write_buffer_size(MEMTABLE_BUDGET);
    let cfs = COLUMN_FAMILIES.map(|name| {
        let mut o = Options::default();
        if name == QUEUES || name == PAYLOADS {
            // Payloads are ciphertext: compressing them wastes CPU.
            o.set_compression_type(DBCompressionType::None);
        }
        ColumnFamilyDescriptor::new(name, o)
    });
    Ok(DB::open_cf_descriptors(&db_opts, path, cfs)?)
}

/// Reads the state to keep in memory; after an unclean shutdown, moves every device's seqs
/// ahead first. Deletes shared payloads no pointer refers to (none should exist: a payload
/// and its pointers are written and deleted in the same batches), and the expiry index of
/// older versions.
pub(crate) fn load(db: &DB, opts: &StoreOptions) -> Result<Loaded, StorageError> {
    let clean = db.get_pinned(CLEAN_SHUTDOWN_KEY)?.is_some();
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    if clean {
        // From now on a crash must be noticed at the next open.
        db.delete_opt(CLEAN_SHUTDOWN_KEY, &wo)?;
    }
    // After a crash, seqs handed out but lost may have been seen by a device (live delivery
    // does not wait for the fsync): every device skips ahead of them. Per device they are at
    // most a queue's length, since the queue limit counts submitted entries.
    let skip = if clean {
        0
    } else {
        opts.max_queue_len.max(1 << 20)
    };
    let totals = Totals::default();
    let mut devices = Devices::new();
    let mut accounts = Accounts::new();
    let mut fixes = WriteBatch::default();
    let devices_cf = db.cf_handle(DEVICES).expect("opened");
    for item in db.iterator_cf(devices_cf, IteratorMode::Start) {
        let (k, v) = item?;
        let key =
            keys::decode_device(&k).ok_or_else(|| StorageError::Corrupt("device key".into()))?;
        // Its ceiling: exact after a clean shutdown, else above every seq handed out but those
        // handed out live and never written.
        let mut rec = DeviceRecord::decode(&v)?;
        if skip > 0 {
            rec.next_seq = rec.next_seq.saturating_add(skip);
            fixes.put_cf(devices_cf, &k, rec.encode());
        }
        devices.insert(
            key,
            DeviceState {
                registered_at_ms: rec.registered_at_ms,
                next_seq: rec.next_seq,
                ceiling: rec.next_seq,
                exp: DevExpiry::EMPTY,
                queued: 0,
                bytes: 0,
                reserved: 0,
                reserved_bytes: 0,
                removing: false,
            },
        );
        // Keys sort by account then device: each list is built in order.
        accounts.entry(key.account).or_default().push(key.device);
        Totals::add(&totals.devices, 1);
    }
    if skip > 0 && !fixes.is_empty() {
        tracing::warn!(
            skip,
            "the store was not shut down cleanly: device seqs skip ahead"
        );
    }

    let expiry_cf = db.cf_handle(EXPIRY).expect("opened");
    if db
        .iterator_cf(expiry_cf, IteratorMode::Start)
        .next()
        .is_some()
    {
        tracing::info!("deleting the expiry index of an older version");
        fixes.delete_range_cf(expiry_cf, &[][..], &[0xff; 64][..]);
    }

    let mut w = WriterState::default();
    let mut remembered = Remembered::default();
    // Keys sort by device then seq: each queue is read in seq order.
    for item in db.iterator_cf(db.cf_handle(QUEUES).expect("opened"), IteratorMode::Start) {
        let (k, v) = item?;
        let (device, seq) =
            keys::decode_queue_key(&k).ok_or_else(|| StorageError::Corrupt("queue key".into()))?;
        let meta = keys::entry_meta(&v)?;
        Totals::add(&totals.queued, 1);
        Totals::add(&totals.bytes, meta.bytes);
        if let Some(st) = devices.get_mut(&device) {
            st.queued += 1;
            st.bytes += meta.bytes;
            st.next_seq = st.next_seq.max(seq + 1);
            st.exp.put(seq, meta.expires_at_ms);
        }
        if let Some(id) = meta.payload {
            *w.refs.entry(id).or_default() += 1;
        }
        if meta.dedup.is_some() {
            if let (Mark::Remembered(id, rec), _) = keys::split_marked(&v)? {
                hold(&mut remembered, id, rec);
            }
        }
    }

    let payloads_cf = db.cf_handle(PAYLOADS).expect("opened");
    let mut next_payload_id = 1;
    let mut found = 0;
    for item in db.iterator_cf(payloads_cf, IteratorMode::Start) {
        let (k, v) = item?;
        let id = keys::decode_payload_key(&k)
            .ok_or_else(|| StorageError::Corrupt("payload key".into()))?;
        next_payload_id = next_payload_id.max(id + 1);
        if w.refs.contains_key(&id) {
            found += 1;
            match keys::split_payload(&v)?.1 {
                Mark::Remembered(dedup, rec) => {
                    hold(&mut remembered, dedup, rec);
                    w.payload_dedup.insert(id, dedup);
                }
                Mark::Stripped => {
                    w.overwritten_payloads.insert(id);
                }
                Mark::Plain => {}
            }
        } else {
            tracing::warn!(id, "deleting a shared payload no entry points to");
            fixes.delete_cf(payloads_cf, k);
        }
    }
    if found != w.refs.len() {
        tracing::error!(
            missing = w.refs.len() - found,
            "queue entries point to missing shared payloads"
        );
    }
    Totals::add(&totals.payloads, found as u64);

    // Records of sends stored nowhere (and, from older versions, of every send).
    for item in db.iterator_cf(db.cf_handle(DEDUP).expect("opened"), IteratorMode::Start) {
        let (k, v) = item?;
        let id = DedupId::from_key(&k).ok_or_else(|| StorageError::Corrupt("dedup key".into()))?;
        let (rec, expires) = keys::decode_dedup(&v)?;
        remembered.standalone.insert(id, (rec, expires));
        w.standalone_by_expiry.insert((expires, id));
    }
    for (key, st) in &devices {
        if st.exp.bound != u64::MAX {
            w.due.insert((st.exp.bound, *key));
        }
    }

    if !fixes.is_empty() {
        db.write_opt(fixes, &wo)?;
    }
    memberships::check(db)?;
    let (records, lists, push) = load_accounts(db)?;
    Ok(Loaded {
        devices,
        accounts,
        totals,
        writer: w,
        remembered,
        next_payload_id,
        records,
        lists,
        push,
    })
}

/// Counts one more value carrying `id` (the newest record wins: two sends with one identity
/// are queued together only if the first was forgotten by a purge, or written by an older
/// version).
fn hold(remembered: &mut Remembered, id: DedupId, rec: crate::types::DedupRecord) {
    let held = remembered.queued.entry(id).or_insert(Held {
        record: rec,
        holders: 0,
    });
    held.holders += 1;
    if rec.accepted_at_ms > held.record.accepted_at_ms {
        held.record = rec;
    }
}

/// Reads every account record, list entry and push token.
fn load_accounts(db: &DB) -> Result<(Records, Lists, PushTokens), StorageError> {
    let mut records = Records::new();
    for item in db.iterator_cf(db.cf_handle(ACCOUNTS).expect("opened"), IteratorMode::Start) {
        let (k, v) = item?;
        let id = account::decode_account(&k)
            .ok_or_else(|| StorageError::Corrupt("account key".into()))?;
        records.insert(id, Arc::new(account::decode_record(&v)?));
    }
    let mut lists = Lists::new();
    for item in db.iterator_cf(db.cf_handle(LISTS).expect("opened"), IteratorMode::Start) {
        let (k, _) = item?;
        let (owner, kind, other) =
            account::decode_list_key(&k).ok_or_else(|| StorageError::Corrupt("list key".into()))?;
        lists.entry(owner).or_default().get_mut(kind).insert(other);
    }
    let mut push = PushTokens::new();
    for item in db.iterator_cf(db.cf_handle(PUSH).expect("opened"), IteratorMode::Start) {
        let (k, v) = item?;
        let device =
            keys::decode_device(&k).ok_or_else(|| StorageError::Corrupt("push key".into()))?;
        push.insert(device, Bytes::from(v.into_vec()));
    }
    Ok((records, lists, push))
}
