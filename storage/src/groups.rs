//! Groups: their in-memory form and the rules of their operations, decided without I/O (the
//! writer applies the decisions), plus loading a group from the database.

use std::sync::Arc;

use crate::error::GroupError;
use crate::keys::GroupRecord;
use crate::types::{GroupOp, GroupState, Role};

/// A group as cached: its record and its sorted membership. Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GroupEntry {
    pub creator: u64,
    pub version: u64,
    pub created_at_ms: u64,
    /// Every member, sorted, unique.
    pub members: Arc<Vec<u64>>,
    /// The members that are admins, sorted, unique.
    pub admins: Arc<Vec<u64>>,
}

impl GroupEntry {
    pub(crate) fn state(&self, group: u64) -> GroupState {
        GroupState {
            group,
            creator: self.creator,
            version: self.version,
            members: self.members.len() as u32,
        }
    }

    pub(crate) fn record(&self) -> GroupRecord {
        GroupRecord {
            creator: self.creator,
            version: self.version,
            created_at_ms: self.created_at_ms,
            member_count: self.members.len() as u32,
        }
    }

    pub(crate) fn is_member(&self, account: u64) -> bool {
        self.members.binary_search(&account).is_ok()
    }

    fn is_admin(&self, account: u64) -> bool {
        self.admins.binary_search(&account).is_ok()
    }

    pub(crate) fn role(&self, account: u64) -> Role {
        if self.is_admin(account) {
            Role::Admin
        } else {
            Role::Member
        }
    }
}

/// What an accepted operation does.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Nothing to write (idempotent repeat); the group as it is.
    Unchanged(GroupState),
    /// Writes: the group record (or its deletion), member keys to put and to delete.
    Changed {
        state: GroupState,
        /// The group afterwards (None: deleted).
        after: Option<GroupEntry>,
        put: Vec<(u64, Role)>,
        delete: Vec<u64>,
    },
}

fn sorted(list: &[u64]) -> Vec<u64> {
    let mut v = list.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// Both sorted, unique: their sorted union.
fn union(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// `a` without the elements of sorted `b`.
fn minus(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter()
        .copied()
        .filter(|x| b.binary_search(x).is_err())
        .collect()
}

/// Creating `group` by `creator` with `members` (the creator is added as admin).
pub(crate) fn create(
    current: Option<&GroupEntry>,
    group: u64,
    creator: u64,
    members: &[u64],
    max_size: u32,
    now_ms: u64,
) -> Result<Decision, GroupError> {
    if group == 0 {
        return Err(GroupError::Invalid("group 0".into()));
    }
    if let Some(cur) = current {
        return if cur.creator == creator {
            Ok(Decision::Unchanged(cur.state(group)))
        } else {
            Err(GroupError::Exists)
        };
    }
    let all = union(&sorted(members), &[creator]);
    if all.len() > max_size as usize {
        return Err(GroupError::TooLarge);
    }
    let put = all
        .iter()
        .map(|&a| {
            (
                a,
                if a == creator {
                    Role::Admin
                } else {
                    Role::Member
                },
            )
        })
        .collect();
    let after = GroupEntry {
        creator,
        version: 1,
        created_at_ms: now_ms,
        members: Arc::new(all),
        admins: Arc::new(vec![creator]),
    };
    Ok(Decision::Changed {
        state: after.state(group),
        after: Some(after),
        put,
        delete: Vec::new(),
    })
}

/// `actor` applying `op` to `group`.
pub(crate) fn update(
    current: Option<&GroupEntry>,
    group: u64,
    actor: u64,
    op: &GroupOp,
    max_size: u32,
) -> Result<Decision, GroupError> {
    if group == 0 {
        return Err(GroupError::Invalid("group 0".into()));
    }
    let cur = current.ok_or(GroupError::NoSuchGroup)?;
    if !cur.is_member(actor) {
        return Err(GroupError::NotMember);
    }
    let leaving = matches!(op, GroupOp::RemoveMembers(list) if list.iter().all(|&a| a == actor));
    if !cur.is_admin(actor) && !leaving {
        return Err(GroupError::NotAdmin);
    }
    let mut next = cur.clone();
    let (put, delete) = match op {
        GroupOp::AddMembers(list) => {
            let new = minus(&sorted(list), &cur.members);
            if !new.is_empty() && cur.members.len() + new.len() > max_size as usize {
                return Err(GroupError::TooLarge);
            }
            next.members = Arc::new(union(&cur.members, &new));
            (new.into_iter().map(|a| (a, Role::Member)).collect(), vec![])
        }
        GroupOp::RemoveMembers(list) => {
            let gone: Vec<u64> = sorted(list)
                .into_iter()
                .filter(|&a| cur.is_member(a))
                .collect();
            if gone.contains(&cur.creator) {
                return Err(GroupError::Invalid(
                    "the creator cannot be removed (it may delete the group)".into(),
                ));
            }
            next.members = Arc::new(minus(&cur.members, &gone));
            next.admins = Arc::new(minus(&cur.admins, &gone));
            (vec![], gone)
        }
        GroupOp::AddAdmins(list) => {
            let list = sorted(list);
            if let Some(a) = list.iter().find(|&&a| !cur.is_member(a)) {
                return Err(GroupError::Invalid(format!(
                    "account {a} is not a member: only members can be admins"
                )));
            }
            let new = minus(&list, &cur.admins);
            next.admins = Arc::new(union(&cur.admins, &new));
            (new.into_iter().map(|a| (a, Role::Admin)).collect(), vec![])
        }
        GroupOp::RemoveAdmins(list) => {
            let list = sorted(list);
            if list.contains(&cur.creator) {
                return Err(GroupError::Invalid("the creator cannot be demoted".into()));
            }
            let demoted: Vec<u64> = list.into_iter().filter(|&a| cur.is_admin(a)).collect();
            next.admins = Arc::new(minus(&cur.admins, &demoted));
            (
                demoted.into_iter().map(|a| (a, Role::Member)).collect(),
                vec![],
            )
        }
        GroupOp::Delete => {
            let state = GroupState {
                group,
                creator: cur.creator,
                version: cur.version + 1,
                members: 0,
            };
            return Ok(Decision::Changed {
                state,
                after: None,
                put: vec![],
                delete: cur.members.to_vec(),
            });
        }
    };
    if put.is_empty() && delete.is_empty() {
        return Ok(Decision::Unchanged(cur.state(group)));
    }
    next.version += 1;
    Ok(Decision::Changed {
        state: next.state(group),
        after: Some(next),
        put,
        delete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 77;

    fn created(members: &[u64]) -> GroupEntry {
        match create(None, G, 1, members, 10, 5).unwrap() {
            Decision::Changed {
                after: Some(e),
                put,
                ..
            } => {
                assert_eq!(put.len(), e.members.len());
                e
            }
            d => panic!("{d:?}"),
        }
    }

    fn changed(d: Result<Decision, GroupError>) -> GroupEntry {
        match d.unwrap() {
            Decision::Changed { after: Some(e), .. } => e,
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn create_adds_the_creator_as_admin() {
        let e = created(&[3, 2, 3]);
        assert_eq!(*e.members, [1, 2, 3]);
        assert_eq!(*e.admins, [1]);
        assert_eq!(e.state(G).version, 1);
        assert_eq!(
            create(Some(&e), G, 1, &[9], 10, 6).unwrap(),
            Decision::Unchanged(e.state(G))
        );
        assert_eq!(create(Some(&e), G, 2, &[], 10, 6), Err(GroupError::Exists));
        assert_eq!(create(None, G, 1, &[2, 3], 2, 6), Err(GroupError::TooLarge));
        assert!(matches!(
            create(None, 0, 1, &[], 2, 6),
            Err(GroupError::Invalid(_))
        ));
    }

    #[test]
    fn permissions() {
        let e = created(&[2, 3]);
        let up = |e: &GroupEntry, actor, op: GroupOp| update(Some(e), G, actor, &op, 10);
        assert_eq!(
            up(&e, 9, GroupOp::RemoveMembers(vec![9])),
            Err(GroupError::NotMember)
        );
        assert_eq!(
            up(&e, 2, GroupOp::AddMembers(vec![4])),
            Err(GroupError::NotAdmin)
        );
        assert_eq!(
            up(&e, 2, GroupOp::RemoveMembers(vec![2, 3])),
            Err(GroupError::NotAdmin)
        );
        assert_eq!(up(&e, 2, GroupOp::Delete), Err(GroupError::NotAdmin));
        assert_eq!(
            update(None, G, 1, &GroupOp::Delete, 10),
            Err(GroupError::NoSuchGroup)
        );
        // A member leaves.
        let left = changed(up(&e, 2, GroupOp::RemoveMembers(vec![2, 2])));
        assert_eq!((left.members.to_vec(), left.version), (vec![1, 3], 2));
        // Admins must be members; the creator stays admin and member.
        assert!(matches!(
            up(&e, 1, GroupOp::AddAdmins(vec![4])),
            Err(GroupError::Invalid(_))
        ));
        assert!(matches!(
            up(&e, 1, GroupOp::RemoveAdmins(vec![1])),
            Err(GroupError::Invalid(_))
        ));
        assert!(matches!(
            up(&e, 1, GroupOp::RemoveMembers(vec![1])),
            Err(GroupError::Invalid(_))
        ));
        let e = changed(up(&e, 1, GroupOp::AddAdmins(vec![3])));
        assert_eq!((e.admins.to_vec(), e.version), (vec![1, 3], 2));
        // A new admin may add, and may not demote the creator.
        let e = changed(up(&e, 3, GroupOp::AddMembers(vec![5, 4])));
        assert_eq!((e.members.to_vec(), e.version), (vec![1, 2, 3, 4, 5], 3));
        assert!(up(&e, 3, GroupOp::RemoveAdmins(vec![1])).is_err());
        // Removing an admin member drops its admin role too.
        let e = changed(up(&e, 1, GroupOp::RemoveMembers(vec![3])));
        assert_eq!(*e.admins, [1]);
        assert_eq!(
            up(&e, 1, GroupOp::AddMembers((10..20).collect())),
            Err(GroupError::TooLarge)
        );
    }

    #[test]
    fn idempotent_ops_keep_the_version() {
        let e = created(&[2]);
        let state = e.state(G);
        for op in [
            GroupOp::AddMembers(vec![2, 1]),
            GroupOp::RemoveMembers(vec![7]),
            GroupOp::AddAdmins(vec![1]),
            GroupOp::RemoveAdmins(vec![2]),
            GroupOp::AddMembers(vec![]),
        ] {
            assert_eq!(
                update(Some(&e), G, 1, &op, 10).unwrap(),
                Decision::Unchanged(state),
                "{op:?}"
            );
        }
        // A non-admin "leaving" a group with an empty list changes nothing either.
        assert_eq!(
            update(Some(&e), G, 2, &GroupOp::RemoveMembers(vec![]), 10).unwrap(),
            Decision::Unchanged(state)
        );
    }

    #[test]
    fn delete_removes_every_member() {
        let e = created(&[4, 2]);
        match update(Some(&e), G, 1, &GroupOp::Delete, 10).unwrap() {
            Decision::Changed {
                state,
                after,
                put,
                delete,
            } => {
                assert_eq!((state.version, state.members), (2, 0));
                assert_eq!(after, None);
                assert!(put.is_empty());
                assert_eq!(delete, [1, 2, 4]);
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn set_helpers() {
        assert_eq!(union(&[1, 3, 5], &[2, 3, 6]), [1, 2, 3, 5, 6]);
        assert_eq!(minus(&[1, 3, 5], &[3, 4]), [1, 5]);
        assert_eq!(sorted(&[3, 1, 3]), [1, 3]);
    }
}
