//! The `memberships` reverse index (account -> its groups) at open: verified against `members`
//! and rebuilt when they differ.
//!
//! The writer puts and deletes a membership key in the same batch as its member key, so the
//! two only differ for data written before the index existed (or after a bug). Verifying
//! streams both column families once with constant memory: the count of pairs and an
//! order-independent checksum (the wrapping sum of a 64-bit mix of each (account, group)
//! pair) must match. Rebuilding puts every pair of `members` and deletes every membership
//! whose member key is missing.

use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};

use crate::account::{self, membership_key};
use crate::error::StorageError;
use crate::keys;
use crate::shared::{MEMBERS, MEMBERSHIPS};

/// Operations per write batch of a rebuild.
const REBUILD_BATCH: usize = 64 * 1024;

/// What [`check`] found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Checked {
    /// Pairs in `members`.
    pub pairs: u64,
    /// Membership keys written (missing ones).
    pub added: u64,
    /// Membership keys deleted (stale ones).
    pub removed: u64,
}

/// Reads the two ids of a key.
type Decode = fn(&[u8]) -> Result<(u64, u64), StorageError>;

/// splitmix64's finalizer.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn pair_hash(account: u64, group: u64) -> u64 {
    mix(mix(account) ^ group)
}

/// (group, account) of a member key.
fn decode_member(k: &[u8]) -> Result<(u64, u64), StorageError> {
    let account =
        keys::decode_member_key(k).ok_or_else(|| StorageError::Corrupt("member key".into()))?;
    let group = account::decode_account(k).expect("a member key starts with its group key");
    Ok((group, account))
}

fn decode_membership(k: &[u8]) -> Result<(u64, u64), StorageError> {
    account::decode_membership_key(k).ok_or_else(|| StorageError::Corrupt("membership key".into()))
}

/// (count, checksum) of the pairs of one column family.
fn summary(
    db: &DB,
    cf: &str,
    decode: Decode,
    account_first: bool,
) -> Result<(u64, u64), StorageError> {
    let (mut n, mut sum) = (0u64, 0u64);
    for item in db.iterator_cf(db.cf_handle(cf).expect("opened"), IteratorMode::Start) {
        let (k, _) = item?;
        let (a, b) = decode(&k)?;
        let (account, group) = if account_first { (a, b) } else { (b, a) };
        n += 1;
        sum = sum.wrapping_add(pair_hash(account, group));
    }
    Ok((n, sum))
}

/// Verifies the index and rebuilds it if it differs from `members`.
pub(crate) fn check(db: &DB) -> Result<Checked, StorageError> {
    let members = summary(db, MEMBERS, decode_member, false)?;
    let index = summary(db, MEMBERSHIPS, decode_membership, true)?;
    let mut checked = Checked {
        pairs: members.0,
        ..Checked::default()
    };
    if members == index {
        return Ok(checked);
    }
    let members_cf = db.cf_handle(MEMBERS).expect("opened");
    let index_cf = db.cf_handle(MEMBERSHIPS).expect("opened");
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    let mut batch = WriteBatch::default();
    let flush = |batch: &mut WriteBatch, force: bool| -> Result<(), StorageError> {
        if batch.len() >= REBUILD_BATCH || (force && !batch.is_empty()) {
            db.write_opt(std::mem::take(batch), &wo)?;
        }
        Ok(())
    };
    for item in db.iterator_cf(members_cf, IteratorMode::Start) {
        let (k, _) = item?;
        let (group, account) = decode_member(&k)?;
        let key = membership_key(account, group);
        if db.get_pinned_cf(index_cf, key)?.is_none() {
            batch.put_cf(index_cf, key, []);
            checked.added += 1;
            flush(&mut batch, false)?;
        }
    }
    for item in db.iterator_cf(index_cf, IteratorMode::Start) {
        let (k, _) = item?;
        let (account, group) = decode_membership(&k)?;
        if db
            .get_pinned_cf(members_cf, keys::member_key(group, account))?
            .is_none()
        {
            batch.delete_cf(index_cf, &k);
            checked.removed += 1;
            flush(&mut batch, false)?;
        }
    }
    flush(&mut batch, true)?;
    tracing::warn!(
        pairs = checked.pairs,
        added = checked.added,
        removed = checked.removed,
        "the memberships index differed from the group members: rebuilt"
    );
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::open_db;
    use crate::shared::MEMBERSHIPS;
    use crate::{GroupOp, Store, StoreOptions};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    fn index(db: &DB) -> Vec<(u64, u64)> {
        db.iterator_cf(db.cf_handle(MEMBERSHIPS).unwrap(), IteratorMode::Start)
            .map(|r| decode_membership(&r.unwrap().0).unwrap())
            .collect()
    }

    #[test]
    fn pair_hash_tells_pairs_apart() {
        assert_ne!(pair_hash(1, 2), pair_hash(2, 1));
        assert_ne!(pair_hash(1, 2), pair_hash(1, 3));
    }

    /// Data written before the index existed (simulated by deleting the index behind the
    /// store's back) and a stale membership are both repaired at open; a consistent index is
    /// left alone.
    #[test]
    fn the_index_is_rebuilt_at_open_when_it_differs() {
        let dir = tempfile::tempdir().unwrap();
        let opts = || StoreOptions {
            durability: crate::Durability::None,
            ..StoreOptions::default()
        };
        {
            let store = Store::open(dir.path(), opts()).unwrap();
            let rt = rt();
            rt.block_on(store.create_group(10, 1, &[2, 3], 10, 5))
                .unwrap();
            rt.block_on(store.create_group(20, 2, &[1], 10, 5)).unwrap();
            rt.block_on(store.update_group(10, 1, GroupOp::RemoveMembers(vec![3]), 10))
                .unwrap();
        }
        let want = vec![(1, 10), (1, 20), (2, 10), (2, 20)];
        {
            let db = open_db(dir.path()).unwrap();
            let mut found = index(&db);
            found.sort_unstable_by_key(|&(a, g)| (a, g));
            assert_eq!(found, want);
            assert_eq!(
                check(&db).unwrap(),
                Checked {
                    pairs: 4,
                    added: 0,
                    removed: 0
                }
            );
            // Lose two memberships and add a stale one.
            let cf = db.cf_handle(MEMBERSHIPS).unwrap();
            db.delete_cf(cf, membership_key(1, 10)).unwrap();
            db.delete_cf(cf, membership_key(2, 20)).unwrap();
            db.put_cf(cf, membership_key(3, 10), []).unwrap();
        }
        {
            // Store::open repairs it.
            let store = Store::open(dir.path(), opts()).unwrap();
            drop(store);
        }
        let db = open_db(dir.path()).unwrap();
        let mut found = index(&db);
        found.sort_unstable_by_key(|&(a, g)| (a, g));
        assert_eq!(found, want);
        assert_eq!(check(&db).unwrap().added, 0);
        // Same count, different pairs: the checksum notices.
        let cf = db.cf_handle(MEMBERSHIPS).unwrap();
        db.delete_cf(cf, membership_key(2, 10)).unwrap();
        db.put_cf(cf, membership_key(2, 11), []).unwrap();
        assert_eq!(
            check(&db).unwrap(),
            Checked {
                pairs: 4,
                added: 1,
                removed: 1
            }
        );
        assert_eq!(index(&db).len(), 4);
    }
}
