//! Helpers shared by the storage tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use bytes::Bytes;
use hearth_protocol::MessageId;
use hearth_storage::{Durability, Store, StoreOptions, StoredEnvelope};

/// A current-thread runtime to await the store's futures.
pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Options with small limits and no fsync (tests that need fsync say so).
pub(crate) fn opts() -> StoreOptions {
    StoreOptions {
        durability: Durability::None,
        max_queue_len: 1000,
        max_queue_bytes: 1 << 20,
        dedup_window_ms: 60_000,
    }
}

/// An envelope from account 1 device 1.
pub(crate) fn env(msg: u128, accepted_at_ms: u64, ttl_ms: u64, payload: &[u8]) -> StoredEnvelope {
    StoredEnvelope {
        msg_id: MessageId::from_u128(msg),
        from_account: 1,
        from_device: 1,
        accepted_at_ms,
        expires_at_ms: accepted_at_ms + ttl_ms,
        flags: 0,
        payload: Bytes::copy_from_slice(payload),
    }
}

/// Keys per column family.
pub(crate) fn counts(store: &Store) -> BTreeMap<String, u64> {
    store.count_keys().unwrap().into_iter().collect()
}

/// Keys in one column family.
pub(crate) fn count(store: &Store, cf: &str) -> u64 {
    counts(store)[cf]
}
