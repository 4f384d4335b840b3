//! Groups: creation, the permission rules of updates, idempotence and versions, durability,
//! deletion, and one-at-a-time application of concurrent operations.

mod common;

use std::collections::BTreeSet;

use common::{counts, opts, rt};
use hearth_storage::{GroupError, GroupOp, GroupState, Role, Store};

const T0: u64 = 1_700_000_000_000;
const G: u64 = 4242;
const MAX: u32 = 10;
const CREATOR: u64 = 1;

fn open(path: &std::path::Path) -> Store {
    Store::open(path, opts()).unwrap()
}

fn update(store: &Store, actor: u64, op: GroupOp) -> Result<GroupState, GroupError> {
    rt().block_on(store.update_group(G, actor, op, MAX))
}

fn state(version: u64, members: u32) -> GroupState {
    GroupState {
        group: G,
        creator: CREATOR,
        version,
        members,
    }
}

fn members(store: &Store) -> Vec<u64> {
    store.group_members(G).unwrap().unwrap().to_vec()
}

/// A group of 1 (creator), 2 and 3.
fn created(store: &Store) {
    let st = rt()
        .block_on(store.create_group(G, CREATOR, &[3, 2, 3], MAX, T0))
        .unwrap();
    assert_eq!(st, state(1, 3));
}

#[test]
fn create_is_idempotent_for_its_creator_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    created(&store);
    assert_eq!(members(&store), [1, 2, 3]);
    let (st, page) = store.group_info(G, 0, 10).unwrap().unwrap();
    assert_eq!(st, state(1, 3));
    assert_eq!(
        page,
        [(1, Role::Admin), (2, Role::Member), (3, Role::Member)]
    );
    // Same creator again: the group as it is, whatever the list.
    let again = rt().block_on(store.create_group(G, CREATOR, &[7, 8], MAX, T0 + 1));
    assert_eq!(again, Ok(state(1, 3)));
    let other = rt().block_on(store.create_group(G, 2, &[], MAX, T0));
    assert_eq!(other, Err(GroupError::Exists));
    assert_eq!(members(&store), [1, 2, 3]);
    // Limits and bad ids.
    let big: Vec<u64> = (10..20).collect();
    let r = rt().block_on(store.create_group(G + 1, CREATOR, &big, MAX, T0));
    assert_eq!(r, Err(GroupError::TooLarge), "10 members plus the creator");
    let r = rt().block_on(store.create_group(G + 1, CREATOR, &big[1..], MAX, T0));
    assert_eq!(r.unwrap().members, MAX);
    let r = rt().block_on(store.create_group(0, CREATOR, &[], MAX, T0));
    assert!(matches!(r, Err(GroupError::Invalid(_))), "{r:?}");
    assert_eq!(store.group_members(G + 2).unwrap(), None);
    assert_eq!(store.group_info(G + 2, 0, 10).unwrap(), None);
}

#[test]
fn permission_rules() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    created(&store);
    // Not a member / no such group.
    assert_eq!(
        update(&store, 9, GroupOp::RemoveMembers(vec![9])),
        Err(GroupError::NotMember)
    );
    assert_eq!(
        rt().block_on(store.update_group(G + 1, CREATOR, GroupOp::Delete, MAX)),
        Err(GroupError::NoSuchGroup)
    );
    // A non-admin may not add, remove others, promote, demote or delete.
    for op in [
        GroupOp::AddMembers(vec![4]),
        GroupOp::RemoveMembers(vec![3]),
        GroupOp::RemoveMembers(vec![2, 3]),
        GroupOp::AddAdmins(vec![2]),
        GroupOp::RemoveAdmins(vec![CREATOR]),
        GroupOp::Delete,
    ] {
        assert_eq!(
            update(&store, 2, op.clone()),
            Err(GroupError::NotAdmin),
            "{op:?}"
        );
    }
    assert_eq!(members(&store), [1, 2, 3]);
    // But it may leave.
    assert_eq!(
        update(&store, 2, GroupOp::RemoveMembers(vec![2])),
        Ok(state(2, 2))
    );
    assert_eq!(members(&store), [1, 3]);
    assert_eq!(
        update(&store, 2, GroupOp::RemoveMembers(vec![2])),
        Err(GroupError::NotMember)
    );
    // Admins must be members; the creator can be neither demoted nor removed.
    let r = update(&store, CREATOR, GroupOp::AddAdmins(vec![2]));
    assert!(matches!(r, Err(GroupError::Invalid(_))), "{r:?}");
    let r = update(&store, CREATOR, GroupOp::RemoveAdmins(vec![CREATOR]));
    assert!(matches!(r, Err(GroupError::Invalid(_))), "{r:?}");
    let r = update(&store, CREATOR, GroupOp::RemoveMembers(vec![CREATOR]));
    assert!(matches!(r, Err(GroupError::Invalid(_))), "{r:?}");
    // A promoted member may add others, and still not demote the creator.
    assert_eq!(
        update(&store, CREATOR, GroupOp::AddAdmins(vec![3])),
        Ok(state(3, 2))
    );
    assert_eq!(
        update(&store, 3, GroupOp::AddMembers(vec![5, 4])),
        Ok(state(4, 4))
    );
    let r = update(&store, 3, GroupOp::RemoveAdmins(vec![CREATOR, 3]));
    assert!(matches!(r, Err(GroupError::Invalid(_))), "{r:?}");
    let (_, page) = store.group_info(G, 0, 10).unwrap().unwrap();
    assert_eq!(
        page,
        [
            (1, Role::Admin),
            (3, Role::Admin),
            (4, Role::Member),
            (5, Role::Member)
        ]
    );
    // Demoted, it is a plain member again.
    assert_eq!(
        update(&store, CREATOR, GroupOp::RemoveAdmins(vec![3])),
        Ok(state(5, 4))
    );
    assert_eq!(
        update(&store, 3, GroupOp::AddMembers(vec![6])),
        Err(GroupError::NotAdmin)
    );
    // Too large: all or nothing.
    let r = update(&store, CREATOR, GroupOp::AddMembers((100..107).collect()));
    assert_eq!(r, Err(GroupError::TooLarge));
    assert_eq!(
        update(&store, CREATOR, GroupOp::AddMembers((100..106).collect())),
        Ok(state(6, 10))
    );
    assert_eq!(
        store.group_info(G, 0, 100).unwrap().unwrap().0,
        state(6, 10)
    );
}

#[test]
fn idempotent_operations_keep_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    created(&store);
    let keys = counts(&store);
    for op in [
        GroupOp::AddMembers(vec![2, 3, CREATOR]),
        GroupOp::RemoveMembers(vec![8, 9]),
        GroupOp::AddAdmins(vec![CREATOR]),
        GroupOp::RemoveAdmins(vec![2, 9]),
        GroupOp::AddMembers(vec![]),
    ] {
        assert_eq!(
            update(&store, CREATOR, op.clone()),
            Ok(state(1, 3)),
            "{op:?}"
        );
    }
    assert_eq!(counts(&store), keys);
    // Repeating a change changes nothing the second time.
    assert_eq!(
        update(&store, CREATOR, GroupOp::AddMembers(vec![4, 4])),
        Ok(state(2, 4))
    );
    assert_eq!(
        update(&store, CREATOR, GroupOp::AddMembers(vec![4])),
        Ok(state(2, 4))
    );
    assert_eq!(
        update(&store, CREATOR, GroupOp::RemoveMembers(vec![4])),
        Ok(state(3, 3))
    );
    assert_eq!(
        update(&store, CREATOR, GroupOp::RemoveMembers(vec![4])),
        Ok(state(3, 3))
    );
    assert_eq!(counts(&store), keys);
}

#[test]
fn groups_are_durable_and_deleted_entirely() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        created(&store);
        update(&store, CREATOR, GroupOp::AddAdmins(vec![3])).unwrap();
        let c = counts(&store);
        assert_eq!((c["groups"], c["members"]), (1, 3));
    }
    let store = open(dir.path());
    let (st, page) = store.group_info(G, 1, 5).unwrap().unwrap();
    assert_eq!(st, state(2, 3));
    assert_eq!(page, [(2, Role::Member), (3, Role::Admin)]);
    // The reopened store still enforces the roles it read back.
    assert_eq!(
        update(&store, 3, GroupOp::AddMembers(vec![7])),
        Ok(state(3, 4))
    );
    assert_eq!(
        update(&store, 2, GroupOp::Delete),
        Err(GroupError::NotAdmin)
    );
    assert_eq!(update(&store, CREATOR, GroupOp::Delete), Ok(state(4, 0)));
    assert_eq!(store.group_members(G).unwrap(), None);
    let c = counts(&store);
    assert_eq!((c["groups"], c["members"]), (0, 0));
    assert_eq!(
        update(&store, CREATOR, GroupOp::Delete),
        Err(GroupError::NoSuchGroup)
    );
    store.close();
    let store = open(dir.path());
    assert_eq!(store.group_members(G).unwrap(), None);
    // The id can be used again, by anyone.
    let st = rt()
        .block_on(store.create_group(G, 2, &[], MAX, T0))
        .unwrap();
    assert_eq!((st.creator, st.version, st.members), (2, 1, 1));
}

#[test]
fn concurrent_operations_on_one_group_apply_one_at_a_time() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        hearth_storage::StoreOptions {
            durability: hearth_storage::Durability::Sync,
            ..opts()
        },
    )
    .unwrap();
    rt.block_on(store.create_group(G, CREATOR, &[], 1000, T0))
        .unwrap();
    let tasks: Vec<_> = (0..100u64)
        .map(|i| {
            let store = store.clone();
            // Each account is added twice, by two tasks: only one of them changes the group.
            rt.spawn(async move {
                store
                    .update_group(G, CREATOR, GroupOp::AddMembers(vec![100 + i / 2]), 1000)
                    .await
            })
        })
        .collect();
    let versions: Vec<u64> = rt.block_on(async {
        let mut v = Vec::new();
        for t in tasks {
            v.push(t.await.unwrap().unwrap().version);
        }
        v
    });
    // 50 changes: versions 2..=51, each seen by the change that made it (and its repeat).
    let distinct: BTreeSet<u64> = versions.iter().copied().collect();
    assert_eq!(distinct, (2..=51).collect());
    let st = store.group_info(G, 0, 0).unwrap().unwrap().0;
    assert_eq!((st.version, st.members), (51, 51));
    let mut want = vec![CREATOR];
    want.extend(100..150);
    assert_eq!(store.group_members(G).unwrap().unwrap().to_vec(), want);
}
