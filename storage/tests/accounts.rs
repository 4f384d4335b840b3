//! Account records, lists and push tokens: creation, refusals, durability and the caches
//! loaded at open.

mod common;

use bytes::Bytes;
use common::{count, opts, rt};
use hearth_storage::{
    DeviceKey, ListKind, Reach, StorageError, Store, MAX_NAME_LEN, MAX_NETWORKS, MAX_PUSH_TOKEN,
};

const T0: u64 = 1_700_000_000_000;

fn open(path: &std::path::Path) -> Store {
    Store::open(path, opts()).unwrap()
}

#[test]
fn the_first_record_stays_in_force_and_survives_reopen() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(store.account(5).unwrap(), None);
    let first = rt
        .block_on(store.ensure_account(5, "chat", "eu", T0))
        .unwrap();
    assert_eq!(
        (
            first.network.as_str(),
            first.zone.as_str(),
            first.created_at_ms
        ),
        ("chat", "eu", T0)
    );
    assert_eq!(first.reach, Reach::Everyone);
    assert!(first.networks.is_empty() && first.access_key_hash.is_none());
    // A later token of another network or zone changes nothing.
    let again = rt
        .block_on(store.ensure_account(5, "photos", "us", T0 + 1))
        .unwrap();
    assert_eq!(again, first);
    rt.block_on(store.set_reach(5, Reach::Nobody)).unwrap();
    rt.block_on(store.set_networks(5, vec!["social".into(), "photos".into(), "social".into()]))
        .unwrap();
    rt.block_on(store.set_access_key_hash(5, Some([9; 32])))
        .unwrap();
    let set = store.account(5).unwrap().unwrap();
    assert_eq!(set.reach, Reach::Nobody);
    assert_eq!(set.networks, ["photos", "social"]);
    assert_eq!(set.access_key_hash, Some([9; 32]));
    assert_eq!(*store.account_arc(5).unwrap(), set);
    assert_eq!(count(&store, "accounts"), 1);
    store.close();

    let store = open(dir.path());
    assert_eq!(store.account(5).unwrap(), Some(set.clone()));
    assert_eq!(
        rt.block_on(store.ensure_account(5, "x", "y", T0 + 2))
            .unwrap(),
        set
    );
    rt.block_on(store.set_access_key_hash(5, None)).unwrap();
    store.close();
    let store = open(dir.path());
    assert_eq!(store.account(5).unwrap().unwrap().access_key_hash, None);
}

#[test]
fn settings_need_a_record_and_bounded_values() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let none = Err(StorageError::NoSuchAccount);
    assert_eq!(rt.block_on(store.set_reach(1, Reach::Contacts)), none);
    assert_eq!(rt.block_on(store.set_networks(1, vec![])), none);
    assert_eq!(rt.block_on(store.set_access_key_hash(1, None)), none);
    assert_eq!(
        rt.block_on(store.update_list(1, ListKind::Block, true, &[2])),
        Err(StorageError::NoSuchAccount)
    );
    let long = "n".repeat(MAX_NAME_LEN + 1);
    let r = rt.block_on(store.ensure_account(1, &long, "eu", T0));
    assert!(matches!(r, Err(StorageError::Invalid(_))), "{r:?}");
    let r = rt.block_on(store.ensure_account(1, "chat", &long, T0));
    assert!(matches!(r, Err(StorageError::Invalid(_))), "{r:?}");
    rt.block_on(store.ensure_account(1, "chat", "eu", T0))
        .unwrap();
    let r = rt.block_on(store.set_networks(1, vec![long]));
    assert!(matches!(r, Err(StorageError::Invalid(_))), "{r:?}");
    let many = (0..=MAX_NETWORKS).map(|i| format!("n{i}")).collect();
    let r = rt.block_on(store.set_networks(1, many));
    assert!(matches!(r, Err(StorageError::Invalid(_))), "{r:?}");
    let max: Vec<String> = (0..MAX_NETWORKS).map(|i| format!("n{i:03}")).collect();
    rt.block_on(store.set_networks(1, max.clone())).unwrap();
    assert_eq!(store.account(1).unwrap().unwrap().networks, max);
    assert_eq!(count(&store, "accounts"), 1);
}

#[test]
fn lists_count_changes_and_are_reloaded_at_open() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    rt.block_on(store.ensure_account(1, "chat", "eu", T0))
        .unwrap();
    let up = |kind, add, others: &[u64]| {
        rt.block_on(store.update_list(1, kind, add, others))
            .unwrap()
    };
    assert_eq!(up(ListKind::Block, true, &[3, 2, 3]), 2);
    assert_eq!(up(ListKind::Block, true, &[2]), 0);
    assert_eq!(up(ListKind::Allow, true, &[2, 4]), 2);
    assert_eq!(up(ListKind::Allow, false, &[4, 5]), 1);
    assert_eq!(up(ListKind::Allow, false, &[]), 0);
    assert!(store.list_contains(1, ListKind::Block, 2));
    assert!(store.list_contains(1, ListKind::Allow, 2));
    assert!(!store.list_contains(1, ListKind::Allow, 3));
    assert!(!store.list_contains(2, ListKind::Block, 1));
    assert_eq!(store.list(1, ListKind::Block), [2, 3]);
    assert_eq!(count(&store, "lists"), 3);
    store.close();
    let store = open(dir.path());
    assert_eq!(store.list(1, ListKind::Block), [2, 3]);
    assert_eq!(store.list(1, ListKind::Allow), [2]);
    assert!(store.list_contains(1, ListKind::Block, 3));
}

#[test]
fn concurrent_list_updates_count_each_change_once() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    rt.block_on(store.ensure_account(1, "chat", "eu", T0))
        .unwrap();
    // Each entry is added by two tasks: one of them changes it.
    let tasks: Vec<_> = (0..100u64)
        .map(|i| {
            let store = store.clone();
            rt.spawn(async move {
                store
                    .update_list(1, ListKind::Block, true, &[1000 + i / 2])
                    .await
                    .unwrap()
            })
        })
        .collect();
    let changed: u64 = rt.block_on(async {
        let mut n = 0;
        for t in tasks {
            n += t.await.unwrap();
        }
        n
    });
    assert_eq!(changed, 50);
    assert_eq!(
        store.list(1, ListKind::Block),
        (1000..1050).collect::<Vec<_>>()
    );
    assert_eq!(count(&store, "lists"), 50);
}

#[test]
fn push_tokens_belong_to_registered_devices() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (d1, d2) = (DeviceKey::new(1, 1), DeviceKey::new(1, 2));
    let token = Bytes::from_static(b"apns:0123456789abcdef");
    // Not registered: nothing is kept.
    rt.block_on(store.set_push_token(d1, Some(token.clone())))
        .unwrap();
    assert_eq!(store.push_token(d1), None);
    assert_eq!(count(&store, "push"), 0);
    for d in [d1, d2] {
        rt.block_on(store.register_device(d, T0)).unwrap();
    }
    rt.block_on(store.set_push_token(d1, Some(token.clone())))
        .unwrap();
    rt.block_on(store.set_push_token(d2, Some(Bytes::from_static(b"fcm:x"))))
        .unwrap();
    assert_eq!(store.push_token(d1), Some(token.clone()));
    let long = Bytes::from(vec![1; MAX_PUSH_TOKEN + 1]);
    let r = rt.block_on(store.set_push_token(d1, Some(long)));
    assert!(matches!(r, Err(StorageError::Invalid(_))), "{r:?}");
    let max = Bytes::from(vec![1; MAX_PUSH_TOKEN]);
    rt.block_on(store.set_push_token(d2, Some(max.clone())))
        .unwrap();
    assert_eq!(store.push_token(d2), Some(max.clone()));
    store.close();

    let store = open(dir.path());
    assert_eq!(store.push_token(d1), Some(token));
    assert_eq!(store.push_token(d2), Some(max));
    // An empty token clears; removing the device deletes its token.
    rt.block_on(store.set_push_token(d1, Some(Bytes::new())))
        .unwrap();
    assert_eq!(store.push_token(d1), None);
    assert!(rt.block_on(store.remove_device(d2)).unwrap().is_some());
    assert_eq!(store.push_token(d2), None);
    assert_eq!(count(&store, "push"), 0);
    store.close();
    let store = open(dir.path());
    assert_eq!((store.push_token(d1), store.push_token(d2)), (None, None));
}
