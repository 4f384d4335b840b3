//! The writer's account jobs: records, lists, push tokens, purge, and the cleanup of expiry
//! index keys left behind by acknowledged entries of a purged account.
//!
//! Like the other jobs, each sees the state as of the earlier jobs of its group (committed
//! state from the caches and the database, plus this group's overlays), and the caches are
//! updated only once the batch is written.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;

use super::{DedupKey, Found, Group};
use crate::account::{self, AccountRecord, ListKind, PurgeReport, Reach};
use crate::error::StorageError;
use crate::groups::{self, Decision, GroupEntry};
use crate::keys::{self, DeviceRecord, QueueKey, KIND_DEDUP, KIND_QUEUE};
use crate::shared::{DEDUP, MEMBERSHIPS, PUSH};
use crate::types::{DeviceKey, GroupOp};

/// A change to an account record.
pub(crate) enum AccountChange {
    Reach(Reach),
    /// Sorted, unique, checked.
    Networks(Vec<String>),
    AccessKey(Option<[u8; 32]>),
}

/// What a purge found, before it changes anything.
struct PurgeReads {
    queues: Vec<Vec<Found>>,
    /// Dedup keys and the expiry of each.
    dedup: BTreeMap<DedupKey, u64>,
    /// Groups it is a member of: the group, what to do, whether that deletes it.
    groups: Vec<(u64, GroupEntry, Decision, bool)>,
    lists: BTreeSet<(ListKind, u64)>,
    push: BTreeSet<DeviceKey>,
}

impl Group<'_> {
    /// The account's record as of the end of this group so far.
    fn record(&self, account: u64) -> Option<Arc<AccountRecord>> {
        match self.account_overlay.get(&account) {
            Some(o) => o.clone(),
            None => self.sh.read_records().get(&account).cloned(),
        }
    }

    fn put_record(&mut self, account: u64, record: Arc<AccountRecord>) {
        self.batch.wb.put_cf(
            self.cfs.accounts,
            account::account_key(account),
            account::encode_record(&record),
        );
        self.account_overlay.insert(account, Some(record));
        self.durable();
    }

    pub(super) fn ensure_account(&mut self, account: u64, record: AccountRecord) -> AccountRecord {
        if let Some(r) = self.record(account) {
            return (*r).clone();
        }
        self.put_record(account, Arc::new(record.clone()));
        record
    }

    pub(super) fn set_account(
        &mut self,
        account: u64,
        change: AccountChange,
    ) -> Result<(), StorageError> {
        let current = self.record(account).ok_or(StorageError::NoSuchAccount)?;
        let mut next = (*current).clone();
        match change {
            AccountChange::Reach(reach) => next.reach = reach,
            AccountChange::Networks(networks) => next.networks = networks,
            AccountChange::AccessKey(hash) => next.access_key_hash = hash,
        }
        if next != *current {
            self.put_record(account, Arc::new(next));
        }
        Ok(())
    }

    fn listed(&self, account: u64, kind: ListKind, other: u64) -> bool {
        match self.list_overlay.get(&(account, kind, other)) {
            Some(listed) => *listed,
            None => self
                .sh
                .read_lists()
                .get(&account)
                .is_some_and(|l| l.get(kind).contains(&other)),
        }
    }

    pub(super) fn update_list(
        &mut self,
        account: u64,
        kind: ListKind,
        add: bool,
        others: Vec<u64>,
    ) -> Result<u64, StorageError> {
        if self.record(account).is_none() {
            return Err(StorageError::NoSuchAccount);
        }
        let mut changed = 0;
        for other in others {
            if self.listed(account, kind, other) == add {
                continue;
            }
            let key = account::list_key(account, kind, other);
            if add {
                self.batch.wb.put_cf(self.cfs.lists, key, []);
            } else {
                self.batch.wb.delete_cf(self.cfs.lists, key);
            }
            self.list_overlay.insert((account, kind, other), add);
            changed += 1;
        }
        if changed > 0 {
            self.durable();
        }
        Ok(changed)
    }

    fn push_token(&self, device: DeviceKey) -> Option<Bytes> {
        match self.push_overlay.get(&device) {
            Some(o) => o.clone(),
            None => self.sh.read_push().get(&device).cloned(),
        }
    }

    /// Sets or deletes a device's push token (nothing to write if it is already so).
    pub(super) fn set_push(&mut self, device: DeviceKey, token: Option<Bytes>) {
        if self.push_token(device) == token {
            return;
        }
        let key = account::push_key(device);
        match &token {
            Some(t) => self.batch.wb.put_cf(self.cfs.push, key, t),
            None => self.batch.wb.delete_cf(self.cfs.push, key),
        }
        self.push_overlay.insert(device, token);
        self.durable();
    }

    /// Erases everything of `account` (see [`crate::Store::purge_account`]). Reads first: a
    /// failed read changes nothing and leaves its devices registered.
    pub(super) fn purge(
        &mut self,
        account: u64,
        devices: Vec<(DeviceKey, DeviceRecord)>,
    ) -> Result<PurgeReport, StorageError> {
        let reads = match self.purge_reads(account, &devices) {
            Ok(r) => r,
            Err(e) => {
                self.unremoved.extend(devices.iter().map(|(d, _)| *d));
                return Err(e);
            }
        };
        let mut report = PurgeReport::default();
        for ((device, record), found) in devices.into_iter().zip(reads.queues) {
            let st = self.remove(device, record, found);
            report.devices += 1;
            report.envelopes += st.queued;
        }
        for (key, expires) in reads.dedup {
            self.batch.wb.delete_cf(self.cfs.dedup, key);
            let index = keys::expiry_key(expires, KIND_DEDUP, &key);
            self.batch.wb.delete_cf(self.cfs.expiry, &index);
            self.index_gone.insert(index);
            self.dedup_overlay.insert(key, None);
            report.dedup_records += 1;
        }
        for (group, before, decision, deleted) in reads.groups {
            self.apply_group(group, Some(&before), decision);
            if deleted {
                report.groups_deleted += 1;
            } else {
                report.groups_left += 1;
            }
        }
        for (kind, other) in reads.lists {
            self.batch
                .wb
                .delete_cf(self.cfs.lists, account::list_key(account, kind, other));
            self.list_overlay.insert((account, kind, other), false);
            report.list_entries += 1;
        }
        for device in reads.push {
            self.set_push(device, None);
            report.push_tokens += 1;
        }
        if self.record(account).is_some() {
            self.batch
                .wb
                .delete_cf(self.cfs.accounts, account::account_key(account));
            self.account_overlay.insert(account, None);
            report.account_record = true;
        }
        self.durable();
        Ok(report)
    }

    fn purge_reads(
        &mut self,
        account: u64,
        devices: &[(DeviceKey, DeviceRecord)],
    ) -> Result<PurgeReads, StorageError> {
        let prefix = account::account_key(account);
        let queues = devices
            .iter()
            .map(|(d, _)| self.find_queue(*d))
            .collect::<Result<Vec<_>, _>>()?;

        let mut dedup = BTreeMap::new();
        for item in self.sh.scan(DEDUP, &prefix) {
            let (k, v) = item?;
            let key: DedupKey = (*k)
                .try_into()
                .map_err(|_| StorageError::Corrupt("dedup key".into()))?;
            dedup.insert(key, keys::decode_dedup(&v)?.1);
        }
        for (key, o) in self.dedup_overlay.iter() {
            if key.starts_with(&prefix) {
                match o {
                    Some(expires) => dedup.insert(*key, *expires),
                    None => dedup.remove(key),
                };
            }
        }

        // Its groups: the committed index, and the groups earlier jobs of this group changed.
        let mut candidates: BTreeSet<u64> = self.groups_overlay.keys().copied().collect();
        for item in self.sh.scan(MEMBERSHIPS, &prefix) {
            let (k, _) = item?;
            let (_, group) = account::decode_membership_key(&k)
                .ok_or_else(|| StorageError::Corrupt("membership key".into()))?;
            candidates.insert(group);
        }
        let mut member_of = Vec::new();
        for group in candidates {
            let Some(entry) = self.group_entry(group)? else {
                continue;
            };
            if !entry.is_member(account) {
                continue;
            }
            let deleted = entry.creator == account;
            let op = if deleted {
                GroupOp::Delete
            } else {
                GroupOp::RemoveMembers(vec![account])
            };
            // A member may always leave, and a creator (always an admin) delete.
            let decision = groups::update(Some(&entry), group, account, &op, u32::MAX)
                .map_err(|e| StorageError::Corrupt(format!("group {group}: {e}")))?;
            member_of.push((group, entry, decision, deleted));
        }

        let mut lists = BTreeSet::new();
        if let Some(l) = self.sh.read_lists().get(&account) {
            for kind in [ListKind::Allow, ListKind::Block] {
                lists.extend(l.get(kind).iter().map(|&other| (kind, other)));
            }
        }
        for (&(owner, kind, other), &listed) in &self.list_overlay {
            if owner == account {
                if listed {
                    lists.insert((kind, other));
                } else {
                    lists.remove(&(kind, other));
                }
            }
        }

        let mut push = BTreeSet::new();
        for item in self.sh.scan(PUSH, &prefix) {
            let (k, _) = item?;
            push.insert(
                keys::decode_device(&k).ok_or_else(|| StorageError::Corrupt("push key".into()))?,
            );
        }
        for (device, token) in &self.push_overlay {
            if device.account == account {
                match token {
                    Some(_) => push.insert(*device),
                    None => push.remove(device),
                };
            }
        }

        Ok(PurgeReads {
            queues,
            dedup,
            groups: member_of,
            lists,
            push,
        })
    }

    /// Deletes the given expiry index keys whose queue entry or dedup record is gone, or now
    /// has another expiry (its own index key is then another one); returns how many.
    pub(super) fn clean_index(&mut self, index_keys: Vec<Box<[u8]>>) -> Result<u64, StorageError> {
        let mut stale = Vec::new();
        for index in index_keys {
            if self.index_gone.contains(&*index) {
                continue;
            }
            let corrupt = || StorageError::Corrupt("expiry key".into());
            let (expires, kind, key) = keys::decode_expiry_key(&index).ok_or_else(corrupt)?;
            let current = match kind {
                KIND_QUEUE => {
                    let key: QueueKey = key.try_into().map_err(|_| corrupt())?;
                    self.entry(&key)?.map(|m| m.expires_at_ms)
                }
                KIND_DEDUP => {
                    let key: DedupKey = key.try_into().map_err(|_| corrupt())?;
                    self.dedup_expiry(&key)?
                }
                _ => continue,
            };
            if current != Some(expires) {
                stale.push(index);
            }
        }
        let n = stale.len() as u64;
        for index in stale {
            self.batch.wb.delete_cf(self.cfs.expiry, &index);
            self.index_gone.insert(index.into_vec());
        }
        if n > 0 {
            self.durable();
        }
        Ok(n)
    }

    /// Applies the account, list and push token changes of a written batch to the caches.
    pub(super) fn apply_accounts(&mut self) {
        let sh = self.sh;
        if !self.account_overlay.is_empty() {
            let mut cache = sh.records.write().unwrap_or_else(|e| e.into_inner());
            for (account, record) in self.account_overlay.drain() {
                match record {
                    Some(r) => cache.insert(account, r),
                    None => cache.remove(&account),
                };
            }
        }
        if !self.list_overlay.is_empty() {
            let mut cache = sh.lists.write().unwrap_or_else(|e| e.into_inner());
            for ((account, kind, other), listed) in self.list_overlay.drain() {
                let lists = cache.entry(account).or_default();
                if listed {
                    lists.get_mut(kind).insert(other);
                } else {
                    lists.get_mut(kind).remove(&other);
                    if lists.is_empty() {
                        cache.remove(&account);
                    }
                }
            }
        }
        if !self.push_overlay.is_empty() {
            let mut cache = sh.push.write().unwrap_or_else(|e| e.into_inner());
            for (device, token) in self.push_overlay.drain() {
                match token {
                    Some(t) => cache.insert(device, t),
                    None => cache.remove(&device),
                };
            }
        }
    }
}
