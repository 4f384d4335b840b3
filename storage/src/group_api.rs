//! The group methods of [`Store`].

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::error::{GroupError, StorageError};
use crate::groups::GroupEntry;
use crate::shared::cache_group;
use crate::store::Store;
use crate::types::{GroupOp, GroupPage, GroupState};
use crate::writer::{GroupReq, Job};

impl Store {
    /// Creates `group` (non-zero) with `creator` as admin and member and `members` as members;
    /// more than `max_size` members in all => [`GroupError::TooLarge`]. Asked again by the
    /// same creator, it changes nothing and answers the group as it is; by another account,
    /// [`GroupError::Exists`]. Resolves once durable.
    pub async fn create_group(
        &self,
        group: u64,
        creator: u64,
        members: &[u64],
        max_size: u32,
        now_ms: u64,
    ) -> Result<GroupState, GroupError> {
        let req = GroupReq::Create {
            creator,
            members: members.to_vec(),
            max_size,
            now_ms,
        };
        self.group_job(group, req).await
    }

    /// Applies `op` by `actor` to `group`, in the writer, so that operations on one group
    /// apply one at a time in submission order. Admins may do everything; a member that is not
    /// an admin may only remove itself; the creator can be neither removed nor demoted (it may
    /// delete the group); admins must be members. Adding a present member or removing an
    /// absent one changes nothing, and the version is bumped only when something changed.
    /// Resolves once durable.
    pub async fn update_group(
        &self,
        group: u64,
        actor: u64,
        op: GroupOp,
        max_size: u32,
    ) -> Result<GroupState, GroupError> {
        let req = GroupReq::Update {
            actor,
            op,
            max_size,
        };
        self.group_job(group, req).await
    }

    async fn group_job(&self, group: u64, req: GroupReq) -> Result<GroupState, GroupError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Group {
            group,
            req,
            reply: tx,
        })?;
        rx.await
            .unwrap_or(Err(GroupError::Storage(StorageError::Closed)))
    }

    /// The members of a group, sorted (None: no such group), from an in-memory cache of
    /// committed groups.
    pub fn group_members(&self, group: u64) -> Result<Option<Arc<Vec<u64>>>, StorageError> {
        Ok(self.group(group)?.map(|e| e.members))
    }

    /// The members of a group if the in-memory cache holds it (None: not cached, whether or
    /// not it exists; [`Store::group_members`] reads it).
    pub fn cached_group_members(&self, group: u64) -> Option<Arc<Vec<u64>>> {
        self.sh()
            .read_groups()
            .get(&group)
            .map(|e| e.members.clone())
    }

    /// A group's state and up to `limit` of its members with their roles, from the
    /// `offset`-th in account order (None: no such group).
    pub fn group_info(
        &self,
        group: u64,
        offset: u32,
        limit: u32,
    ) -> Result<Option<GroupPage>, StorageError> {
        let Some(e) = self.group(group)? else {
            return Ok(None);
        };
        let page = e
            .members
            .iter()
            .skip(offset as usize)
            .take(limit as usize)
            .map(|&a| (a, e.role(a)))
            .collect();
        Ok(Some((e.state(group), page)))
    }

    /// A committed group, from the cache, else read and cached.
    fn group(&self, group: u64) -> Result<Option<GroupEntry>, StorageError> {
        let sh = self.sh();
        if let Some(e) = sh.read_groups().get(&group) {
            return Ok(Some(e.clone()));
        }
        // The writer changes a group and its cache entry under the write side of the gate.
        let _gate = sh.gate.read().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = sh.read_groups().get(&group) {
            return Ok(Some(e.clone()));
        }
        let loaded = sh.load_group(group)?;
        if let Some(e) = &loaded {
            cache_group(&mut sh.write_groups(), group, e.clone());
        }
        Ok(loaded)
    }
}
