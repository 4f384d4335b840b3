//! The account methods of [`Store`]: records, lists, push tokens, purge, and a raw scan.
//!
//! Records, list entries and push tokens are kept in memory (loaded at open, updated by the
//! writer once a change is committed), so the checks made for every send read no disk. The
//! bound is their number: about 200 bytes plus its names per account record (every account
//! whose devices called `ensure_account` has one), about 20 bytes per list entry, about 60
//! bytes plus the token (at most [`crate::MAX_PUSH_TOKEN`] bytes) per device with a push
//! token. A million accounts with 50 list entries and one 200-byte token each take about
//! 1.5 GB; past that scale these should become bounded caches over the column families.

use std::sync::Arc;

use bytes::Bytes;
use rocksdb::{IteratorMode, ReadOptions};
use tokio::sync::oneshot;

use crate::account::{
    check_name, normalize_networks, AccountRecord, ListKind, PurgeReport, Reach, MAX_PUSH_TOKEN,
};
use crate::commit::reply;
use crate::error::StorageError;
use crate::keys::{self, DeviceRecord, Mark, QueueKey};
use crate::shared::{Shared, Totals, COLUMN_FAMILIES, PAYLOADS, QUEUES};
use crate::store::Store;
use crate::types::DeviceKey;
use crate::writer::{AccountChange, Job};

impl Store {
    /// Creates the account's record if it has none (first registration: `network` and `zone`
    /// from its token, reach [`Reach::Everyone`], no other networks, no access key) and
    /// returns the record in force, which an existing record's own network and zone win over.
    /// Resolves once the record is durable. Names longer than [`crate::MAX_NAME_LEN`] bytes
    /// are refused ([`StorageError::Invalid`]).
    pub async fn ensure_account(
        &self,
        account: u64,
        network: &str,
        zone: &str,
        now_ms: u64,
    ) -> Result<AccountRecord, StorageError> {
        // Committed records only are cached: one found there is durable.
        if let Some(r) = self.account_arc(account) {
            return Ok((*r).clone());
        }
        check_name("network", network)?;
        check_name("zone", zone)?;
        let record = AccountRecord {
            network: network.to_owned(),
            zone: zone.to_owned(),
            created_at_ms: now_ms,
            reach: Reach::Everyone,
            networks: Vec::new(),
            access_key_hash: None,
        };
        let (tx, rx) = oneshot::channel();
        self.submit(Job::EnsureAccount {
            account,
            record,
            reply: tx,
        })?;
        reply(rx).await
    }

    /// The account's record (None: it has none), from memory.
    pub fn account(&self, account: u64) -> Result<Option<AccountRecord>, StorageError> {
        Ok(self.account_arc(account).map(|r| (*r).clone()))
    }

    /// The account's record without copying it (None: it has none), from memory.
    pub fn account_arc(&self, account: u64) -> Option<Arc<AccountRecord>> {
        self.sh().read_records().get(&account).cloned()
    }

    /// Sets who may reach the account. [`StorageError::NoSuchAccount`] without a record.
    /// Resolves once durable.
    pub async fn set_reach(&self, account: u64, reach: Reach) -> Result<(), StorageError> {
        self.change_account(account, AccountChange::Reach(reach))
            .await
    }

    /// Sets the other networks the account accepts envelopes from (stored sorted, without
    /// repeats; at most [`crate::MAX_NETWORKS`] names of at most [`crate::MAX_NAME_LEN`]
    /// bytes, else [`StorageError::Invalid`]). [`StorageError::NoSuchAccount`] without a
    /// record. Resolves once durable.
    pub async fn set_networks(
        &self,
        account: u64,
        networks: Vec<String>,
    ) -> Result<(), StorageError> {
        let networks = normalize_networks(networks)?;
        self.change_account(account, AccountChange::Networks(networks))
            .await
    }

    /// Sets (or clears) the SHA-256 of the account's delivery access key.
    /// [`StorageError::NoSuchAccount`] without a record. Resolves once durable.
    pub async fn set_access_key_hash(
        &self,
        account: u64,
        hash: Option<[u8; 32]>,
    ) -> Result<(), StorageError> {
        self.change_account(account, AccountChange::AccessKey(hash))
            .await
    }

    async fn change_account(
        &self,
        account: u64,
        change: AccountChange,
    ) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Job::SetAccount {
            account,
            change,
            reply: tx,
        })?;
        reply(rx).await
    }

    /// Adds `others` to (or, `add` false, removes them from) the account's list `kind`;
    /// returns how many entries changed (present ones added or absent ones removed do not
    /// count). [`StorageError::NoSuchAccount`] without a record. Resolves once durable.
    pub async fn update_list(
        &self,
        account: u64,
        kind: ListKind,
        add: bool,
        others: &[u64],
    ) -> Result<u64, StorageError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Job::List {
            account,
            kind,
            add,
            others: others.to_vec(),
            reply: tx,
        })?;
        reply(rx).await
    }

    /// Whether the account's list `kind` contains `other` (O(1), from memory).
    pub fn list_contains(&self, account: u64, kind: ListKind, other: u64) -> bool {
        self.sh()
            .read_lists()
            .get(&account)
            .is_some_and(|l| l.get(kind).contains(&other))
    }

    /// The account's list `kind`, sorted, from memory.
    pub fn list(&self, account: u64, kind: ListKind) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .sh()
            .read_lists()
            .get(&account)
            .map(|l| l.get(kind).iter().copied().collect())
            .unwrap_or_default();
        out.sort_unstable();
        out
    }

    /// Sets (Some) or deletes (None, or an empty token) a device's push token. A token longer
    /// than [`MAX_PUSH_TOKEN`] bytes is refused ([`StorageError::Invalid`]). A device that is
    /// not registered (or is being removed) keeps no token: the call then does nothing.
    /// Removing the device deletes its token. Resolves once durable.
    pub async fn set_push_token(
        &self,
        key: DeviceKey,
        token: Option<Bytes>,
    ) -> Result<(), StorageError> {
        let token = token.filter(|t| !t.is_empty());
        if let Some(t) = &token {
            if t.len() > MAX_PUSH_TOKEN {
                return Err(StorageError::Invalid(format!(
                    "push token of {} bytes (at most {MAX_PUSH_TOKEN})",
                    t.len()
                )));
            }
        }
        let rx = {
            let sh = self.sh();
            // Checked and submitted under the device lock: a removal submitted later
            // deletes the token, one submitted earlier makes this call do nothing.
            let map = sh.lock_devices();
            if map.get(&key).is_none_or(|s| s.removing) {
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            self.submit(Job::Push {
                device: key,
                token,
                reply: tx,
            })?;
            rx
        };
        reply(rx).await
    }

    /// The device's push token, from memory.
    pub fn push_token(&self, key: DeviceKey) -> Option<Bytes> {
        self.sh().read_push().get(&key).cloned()
    }

    /// Erases everything the store holds about `account` and reports what it removed: its
    /// devices and their queues (dropping their references to shared payloads, the last of
    /// which deletes the payload), its account record, the lists it owns, its devices' push
    /// tokens, the dedup identities of its sends (forgotten at once; then taken out of the
    /// values of other accounts' queue entries and shared payloads that carry them, found by
    /// one scan of the `queues` and `payloads` column families on a thread of its own, not
    /// holding up the writer), and its group memberships (it leaves every group; a group it
    /// created is deleted, with every member). Resolves once durable.
    ///
    /// Not erased, see [`PurgeReport`]: entries of OTHER accounts' lists that name it (they
    /// belong to those accounts, and keep a purged account that comes back blocked), and
    /// envelopes it sent that wait in other accounts' queues (their recipients' data, gone
    /// when acknowledged or expired).
    ///
    /// A device registered after the purge was submitted is a new registration and stays.
    pub async fn purge_account(&self, account: u64) -> Result<PurgeReport, StorageError> {
        let rx = {
            let sh = self.sh();
            let mut map = sh.lock_devices();
            let ids = sh
                .read_accounts()
                .get(&account)
                .cloned()
                .unwrap_or_default();
            let mut devices = Vec::with_capacity(ids.len());
            for id in ids {
                let key = DeviceKey::new(account, id);
                let Some(st) = map.get_mut(&key) else {
                    continue;
                };
                devices.push((
                    key,
                    DeviceRecord {
                        registered_at_ms: st.registered_at_ms,
                        next_seq: st.next_seq,
                    },
                ));
                st.removing = true;
            }
            let (tx, rx) = oneshot::channel();
            let submitted = self.submit(Job::Purge {
                account,
                devices: devices.clone(),
                reply: tx,
            });
            for (key, _) in &devices {
                if submitted.is_ok() {
                    sh.index_remove(*key);
                    Totals::sub(&sh.totals.devices, 1);
                } else if let Some(st) = map.get_mut(key) {
                    st.removing = false;
                }
            }
            submitted?;
            rx
        };
        let report = reply(rx).await?;
        let sh = self.shared_arc();
        let (tx, rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("hearth-storage-purge".into())
            .spawn(move || {
                let _ = tx.send(identities_of(&sh, account));
            })
            .map_err(|e| StorageError::Db(format!("spawning the purge scan: {e}")))?;
        let (entries, payloads) = reply(rx).await?;
        if !entries.is_empty() || !payloads.is_empty() {
            let (tx, rx) = oneshot::channel();
            self.submit(Job::Strip {
                account,
                entries,
                payloads,
                reply: tx,
            })?;
            reply(rx).await?;
        }
        Ok(report)
    }

    /// Every key and value of every column family (the default one, named "default", too),
    /// for tests that prove nothing about an account remains. Reads everything into memory.
    #[allow(clippy::type_complexity)] // the signature of the spec
    pub fn scan_all(&self) -> Result<Vec<(String, Vec<u8>, Vec<u8>)>, StorageError> {
        let sh = self.sh();
        let mut out = Vec::new();
        for item in sh.db.iterator(IteratorMode::Start) {
            let (k, v) = item?;
            out.push(("default".to_string(), k.into_vec(), v.into_vec()));
        }
        for name in COLUMN_FAMILIES {
            for item in sh.db.iterator_cf(sh.cf(name), IteratorMode::Start) {
                let (k, v) = item?;
                out.push((name.to_string(), k.into_vec(), v.into_vec()));
            }
        }
        Ok(out)
    }
}

/// The queue entries and shared payloads whose value carries the dedup identity of one of
/// `account`'s sends.
#[allow(clippy::type_complexity)]
fn identities_of(sh: &Shared, account: u64) -> Result<(Vec<QueueKey>, Vec<u64>), StorageError> {
    let mut ro = ReadOptions::default();
    ro.fill_cache(false);
    let ours = |mark: Mark| matches!(mark, Mark::Remembered(id, _) if id.account == account);
    let mut entries = Vec::new();
    for item in sh
        .db
        .iterator_cf_opt(sh.cf(QUEUES), ro, IteratorMode::Start)
    {
        let (k, v) = item?;
        // Pointers carry no identity (their payload does).
        if let Ok((mark, _)) = keys::split_marked(&v) {
            if ours(mark) {
                let key: QueueKey = (*k)
                    .try_into()
                    .map_err(|_| StorageError::Corrupt("queue key".into()))?;
                entries.push(key);
            }
        }
    }
    let mut ro = ReadOptions::default();
    ro.fill_cache(false);
    let mut payloads = Vec::new();
    for item in sh
        .db
        .iterator_cf_opt(sh.cf(PAYLOADS), ro, IteratorMode::Start)
    {
        let (k, v) = item?;
        if ours(keys::split_payload(&v)?.1) {
            payloads.push(
                keys::decode_payload_key(&k)
                    .ok_or_else(|| StorageError::Corrupt("payload key".into()))?,
            );
        }
    }
    Ok((entries, payloads))
}
