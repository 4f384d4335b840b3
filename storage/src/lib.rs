//! Hearth's durable storage on RocksDB: per-device queues, device records, dedup identities
//! and expiry, groups, and payloads shared by many queues.
//!
//! Column families (keys big-endian, so a slot's data is one range and a device's queue one
//! prefix): `queues` (slot | account | device | seq -> inline envelope, with its send's dedup
//! identity when it has one, or pointer to a shared payload), `devices` (slot | account |
//! device -> registered_at_ms | seq ceiling), `dedup` (slot | sender account | sender device |
//! msg_id -> accepted_at_ms | recipients | expires_at_ms: only for sends stored nowhere),
//! `expiry` (no longer written: emptied at open), `groups` (slot(group) | group -> creator |
//! version | created_at_ms | member_count), `members` (slot(group) | group | account -> role),
//! `payloads` (payload_id -> refs | envelope, with its send's dedup identity), `accounts`
//! (slot | account -> account record), `lists` (slot | account | kind | other account ->
//! empty), `push` (slot | account | device -> push token), `memberships` (slot(account) |
//! account | group -> empty: the reverse of `members`, written in the same batches, verified
//! at open). See the `keys` module for the encodings.
//!
//! One writer thread applies every mutation with group commit: it drains all waiting jobs into
//! one `WriteBatch` and writes it with one fsync ([`Durability::Sync`]). A stored envelope costs
//! one put per queue entry (and one for a shared payload) and one delete each when it is
//! acknowledged, expires or its device is removed; nothing else:
//!
//! - Expiry has no index: each device keeps in memory a lower bound of the earliest expiry in
//!   its queue (and how far expiries fall along the queue), rebuilt at open from the queue
//!   scan; the sweeper reads only the queues whose bound has passed, each up to its last entry
//!   that may have expired (see the `expiry` module).
//! - Seqs are never reused: a device record holds a ceiling above every seq handed out,
//!   raised by a block (4096) in the batch of the write that reaches it, and set to the exact
//!   next seq at a clean shutdown; after an unclean shutdown every device skips ahead of its
//!   ceiling (seqs may have been delivered live before their fsync).
//! - Dedup: a send's identity `(sender, msg_id)` is carried by the value of its envelope (each
//!   inline entry, or its shared payload) and remembered in memory while any of them is
//!   queued (rebuilt at open); a send stored nowhere gets a record that lives for the dedup
//!   window (see the `dedup` module).
//!
//! Queue entries are written once and deleted with SingleDelete (device removal, and values a
//! purge wrote again, use plain deletes).
//!
//! In memory: every device's counters, seq ceiling and expiry bound (32 bytes), and each
//! account's devices (loaded at open); 48 bytes per queued send that has a dedup identity
//! (whatever its number of recipients), in a hash map; groups in use (a cache of committed
//! groups), the reference count of each shared payload (recounted from the pointers at open),
//! recent shared payloads, and every account record, list entry and push token (loaded at
//! open; see [`Store::purge_account`] and the bound documented on the account methods).

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
