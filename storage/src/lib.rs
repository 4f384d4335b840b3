//! Hearth's durable storage on RocksDB: per-device queues, device records, dedup records and
//! their expiry, groups, and payloads shared by many queues.
//!
//! Column families (keys big-endian, so a slot's data is one range and a device's queue one
//! prefix): `queues` (slot | account | device | seq -> inline envelope or pointer to a shared
//! payload), `devices` (slot | account | device -> registered_at_ms | next_seq), `dedup` (slot |
//! sender account | sender device | msg_id -> accepted_at_ms | recipients | expires_at_ms),
//! `expiry` (expires_at_ms | kind | queue or dedup key -> empty), `groups` (slot(group) | group
//! -> creator | version | created_at_ms | member_count), `members` (slot(group) | group |
//! account -> role), `payloads` (payload_id -> refs | envelope), `accounts` (slot | account ->
//! account record), `lists` (slot | account | kind | other account -> empty), `push` (slot |
//! account | device -> push token), `memberships` (slot(account) | account | group -> empty:
//! the reverse of `members`, written in the same batches, verified at open).
//!
//! One writer thread applies every mutation with group commit: it drains all waiting jobs into
//! one `WriteBatch` and writes it with one fsync ([`Durability::Sync`]). Queue entries are
//! written once and deleted with SingleDelete (device removal uses plain deletes). Sequence
//! numbers are never reused: `next_seq` is written with every enqueue, and after an unclean
//! shutdown every device skips ahead (seqs may have been delivered live before their fsync).
//!
//! In memory: every device's counters and each account's devices (loaded at open), groups in
//! use (a cache of committed groups), the reference count of each shared payload (recounted
//! from the pointers at open), recent shared payloads, and every account record, list entry
//! and push token (loaded at open; see [`Store::purge_account`] and the bound documented on
//! the account methods).

mod account;
mod account_api;

mod batch;
mod commit;
mod dedup;
mod error;
mod expiry;
mod group_api;
mod groups;
mod keys;
mod load;
mod memberships;
mod shared;
mod store;
mod types;
mod write;
mod writer;

pub use account::{
    AccountRecord, ListKind, PurgeReport, Reach, MAX_NAME_LEN, MAX_NETWORKS, MAX_PUSH_TOKEN,
};
pub use commit::{Commit, Enqueued};
pub use error::{EnqueueError, GroupError, StorageError};
pub use store::Store;
pub use types::{
    DedupRecord, DeviceKey, DeviceStats, Durability, GroupOp, GroupPage, GroupState, QueueEntry,
    QueueState, Role, SharedRecipient, StoreOptions, StoreStats, StoredEnvelope, SweepStats,
};
pub use write::{EntryWrite, SendOutcome, SendWrite, WriteOutcome, WriteSet};
