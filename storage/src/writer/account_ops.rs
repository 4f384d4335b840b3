//! The writer's account jobs: records, lists, push tokens, purge, and taking a purged
//! account's dedup identities out of the values of other queues that still carry them.
//!
//! Like the other jobs, each sees the state as of the earlier jobs of its group (committed
//! state from the caches and the database, plus this group's overlays), and the caches are
//! updated only once the batch is written.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;

use super::{Found, Group};
use crate::account::{self, AccountRecord, ListKind, PurgeReport, Reach};
use crate::error::StorageError;
use crate::groups::{self, Decision, GroupEntry};
use crate::keys::{self, DedupId, DeviceRecord, Mark, QueueKey};
use crate::shared::{MEMBERSHIPS, PUSH};
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
    /// The remembered identities of its sends: of queued sends, of sends stored nowhere.
    held: BTreeSet<DedupId>,
    standalone: BTreeSet<DedupId>,
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
        // Its sends are forgotten first (their values in other queues still carry them until
        // `strip`; releases of a forgotten identity change nothing).
        let mut report = PurgeReport {
            dedup_records: reads.held.union(&reads.standalone).count() as u64,
            ..PurgeReport::default()
        };
        for id in reads.held {
            self.held_view.insert(id, None);
        }
        for id in reads.standalone {
            self.batch.wb.delete_cf(self.cfs.dedup, id.key());
            self.standalone_view.insert(id, None);
        }
        for ((device, record), found) in devices.into_iter().zip(reads.queues) {
            let st = self.remove(device, record, found);
            report.devices += 1;
            report.envelopes += st.queued;
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

        // Its identities (one pass over the remembered ones: a purge is rare).
        let (mut held, mut standalone) = (BTreeSet::new(), BTreeSet::new());
        {
            let d = self.sh.read_dedup();
            held.extend(d.queued.keys().filter(|id| id.account == account));
            standalone.extend(d.standalone.keys().filter(|id| id.account == account));
        }
        for (id, h) in &self.held_view {
            if id.account == account {
                match h {
                    Some(_) => held.insert(*id),
                    None => held.remove(id),
                };
            }
        }
        for (id, r) in &self.standalone_view {
            if id.account == account {
                match r {
                    Some(_) => standalone.insert(*id),
                    None => standalone.remove(id),
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
            held,
            standalone,
            groups: member_of,
            lists,
            push,
        })
    }

    /// Writes the values of `entries` and `payloads` again without the dedup identity of
    /// `account`'s sends they carry, unless that identity is remembered again (sent anew since
    /// the purge) or the value changed; returns how many. Reads first. Such values are written
    /// twice: they are marked so, and their keys deleted with Delete.
    pub(super) fn strip(
        &mut self,
        account: u64,
        entries: Vec<QueueKey>,
        payloads: Vec<u64>,
    ) -> Result<u64, StorageError> {
        let forgotten = |g: &Self, mark: Mark| match mark {
            Mark::Remembered(id, _) => id.account == account && g.held(&id).is_none(),
            _ => false,
        };
        let mut puts = Vec::new();
        for key in entries {
            // Changed by this group: not the value the scan saw.
            if self.queue_overlay.contains_key(&key) {
                continue;
            }
            let Some(v) = self.sh.db.get_pinned_cf(self.cfs.queues, key)? else {
                continue;
            };
            let (mark, env) = keys::split_marked(&v)?;
            if forgotten(self, mark) {
                let value = keys::stripped(env);
                let meta = keys::entry_meta(&value)?;
                puts.push((key, value, meta));
            }
        }
        let mut payload_puts = Vec::new();
        for id in payloads {
            if self.refs_overlay.contains_key(&id) || self.payload_dedup_view.contains_key(&id) {
                continue;
            }
            let key = keys::payload_key(id);
            let Some(v) = self.sh.db.get_pinned_cf(self.cfs.payloads, key)? else {
                continue;
            };
            let (refs, mark, env) = keys::split_payload(&v)?;
            if forgotten(self, mark) {
                payload_puts.push((id, keys::stripped_payload(refs, env)));
            }
        }
        let n = (puts.len() + payload_puts.len()) as u64;
        for (key, value, meta) in puts {
            debug_assert!(meta.overwritten && meta.dedup.is_none());
            self.batch.wb.put_cf(self.cfs.queues, key, value);
            self.queue_overlay.insert(key, Some(meta));
        }
        for (id, value) in payload_puts {
            self.batch
                .wb
                .put_cf(self.cfs.payloads, keys::payload_key(id), value);
            self.payload_dedup_view.insert(id, None);
            self.overwritten_added.push(id);
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
