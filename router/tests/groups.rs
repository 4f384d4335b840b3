//! Group fan-out and multi-recipient sends against real nodes.

mod common;

use bytes::Bytes;
use common::*;
use hearth_client::{group_op, ClientError, MultiRecipient, OutgoingGroup, OutgoingMulti};
use hearth_protocol::{ErrorCode, MessageId};
use hearth_storage::{DeviceKey, Store, StoreOptions};

fn group_msg(group: u64, id: u128, payload: &[u8]) -> OutgoingGroup {
    OutgoingGroup {
        msg_id: MessageId::from_u128(id),
        group,
        ttl_secs: 0,
        ephemeral: false,
        payload: Bytes::copy_from_slice(payload),
    }
}

fn code(e: &ClientError) -> Option<ErrorCode> {
    e.code()
}

/// Keys left in a column family of the node's store (the node must be shut down).
fn keys_in(dir: &std::path::Path, cf: &str) -> u64 {
    let store = Store::open(&dir.join("db"), StoreOptions::default()).unwrap();
    let counts = store.count_keys().unwrap();
    counts
        .iter()
        .find(|(name, _)| name == cf)
        .unwrap_or_else(|| panic!("no {cf} in {counts:?}"))
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_messages_reach_online_and_offline_members_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    let (_a1, mut a1d) = n.connect(1, 1).await;
    let (a2, _) = n.connect(1, 2).await; // registered, then offline
    a2.close();
    let (_b, mut bd) = n.connect(2, 1).await;
    let (_s2, mut sd_other) = n.connect(3, 2).await; // the sender's other device receives too
    let (sender, _) = n.connect(3, 1).await;
    let ok = sender.create_group(77, &[1, 2]).await.unwrap();
    assert_eq!((ok.group, ok.members), (77, 3));
    // A 1:1 envelope before and after the group message: one queue, one order.
    sender.send(envelope(1, 2, 1, b"before")).await.unwrap();
    let acc = sender
        .send_group(group_msg(77, 2, b"to the group"))
        .await
        .unwrap();
    assert_eq!(
        acc.recipients, 4,
        "a1, a2, b1 and the sender's other device"
    );
    sender.send(envelope(1, 2, 3, b"after")).await.unwrap();
    for d in [&mut a1d, &mut bd, &mut sd_other] {
        let got = next(d).await;
        assert_eq!((&got.payload[..], got.group), (&b"to the group"[..], 77));
        assert_eq!((got.from_account, got.from_device), (3, 1));
    }
    let (a2, mut a2d) = n.connect(1, 2).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = next(&mut a2d).await;
        a2.ack(&[d.seq]).unwrap();
        got.push((String::from_utf8(d.payload.to_vec()).unwrap(), d.group));
    }
    let want = [("before", 0), ("to the group", 77), ("after", 0)];
    assert_eq!(got, want.map(|(p, g)| (p.to_string(), g)).to_vec());
    n.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_rules_are_enforced_and_removed_members_stop_receiving() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    let (admin, _) = n.connect(1, 1).await;
    let (member, mut md) = n.connect(2, 1).await;
    let (outsider, _) = n.connect(3, 1).await;
    admin.create_group(5, &[2]).await.unwrap();
    // Idempotent: adding a present member changes nothing.
    let v = admin
        .update_group(5, group_op::ADD_MEMBERS, &[2])
        .await
        .unwrap()
        .version;
    let again = admin
        .update_group(5, group_op::ADD_MEMBERS, &[2])
        .await
        .unwrap();
    assert_eq!(again.version, v);
    // A non-admin may not add; an outsider may not send or read.
    let e = member
        .update_group(5, group_op::ADD_MEMBERS, &[3])
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::NotAdmin));
    let e = outsider
        .send_group(group_msg(5, 1, b"spam"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::NotAMember));
    let e = outsider.group_info(5, 0, 10).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::NotAMember));
    let e = admin
        .send_group(group_msg(6, 2, b"nowhere"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::NoSuchGroup));
    let e = outsider.create_group(5, &[]).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::GroupExists));
    let info = member.group_info(5, 0, 10).await.unwrap();
    assert_eq!((info.creator, info.total), (1, 2));
    // Operators see the same through the admin API.
    let shown = n.admin_get("/v1/groups/5");
    assert_eq!(
        (shown["creator"].as_u64(), shown["members"].as_u64()),
        (Some(1), Some(2))
    );
    let page = n.admin_get("/v1/groups/5/members?offset=1&limit=5");
    assert_eq!(page["members"][0]["account"], 2, "{page}");
    assert_eq!(page["members"][0]["role"], "member", "{page}");
    // Members receive; once the removal is answered, the removed member does not.
    admin
        .send_group(group_msg(5, 3, b"hello members"))
        .await
        .unwrap();
    let got = next(&mut md).await;
    assert_eq!(&got.payload[..], b"hello members");
    member.ack(&[got.seq]).unwrap();
    let removed = admin
        .update_group(5, group_op::REMOVE_MEMBERS, &[2])
        .await
        .unwrap();
    assert!(removed.version > v);
    assert_eq!(removed.members, 1);
    let acc = admin
        .send_group(group_msg(5, 4, b"after removal"))
        .await
        .unwrap();
    assert_eq!(acc.recipients, 0);
    admin.send(envelope(2, 1, 5, b"marker")).await.unwrap();
    assert_eq!(
        &next(&mut md).await.payload[..],
        b"marker",
        "a removed member still received"
    );
    let e = member
        .send_group(group_msg(5, 6, b"let me in"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::NotAMember));
    n.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_recipient_sends_reach_exactly_the_listed_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    let (_x1, mut x1) = n.connect(10, 1).await;
    let (_x2, mut x2) = n.connect(10, 2).await;
    let (_y1, mut y1) = n.connect(11, 1).await;
    let (_y2, mut y2) = n.connect(11, 2).await; // not listed
    let (sender, _) = n.connect(12, 1).await;
    let out = OutgoingMulti {
        msg_id: MessageId::from_u128(9),
        ttl_secs: 0,
        ephemeral: false,
        recipients: vec![
            MultiRecipient {
                account: 10,
                device: 0,
                header: Bytes::from_static(b"key-for-10"),
            },
            MultiRecipient {
                account: 11,
                device: 1,
                header: Bytes::from_static(b"key-for-11/1"),
            },
        ],
        payload: Bytes::from_static(b"shared ciphertext"),
    };
    let acc = sender.send_multi(out).await.unwrap();
    assert_eq!(acc.recipients, 3);
    for (d, header) in [
        (&mut x1, &b"key-for-10"[..]),
        (&mut x2, b"key-for-10"),
        (&mut y1, b"key-for-11/1"),
    ] {
        let got = next(d).await;
        assert_eq!(
            (&got.payload[..], &got.header[..], got.group),
            (&b"shared ciphertext"[..], header, 0)
        );
    }
    sender.send(envelope(11, 2, 10, b"marker")).await.unwrap();
    assert_eq!(
        &next(&mut y2).await.payload[..],
        b"marker",
        "an unlisted device received"
    );
    // Over the recipient limit, or naming an unknown device: refused, nothing stored.
    let many = (0..1001).map(|i| MultiRecipient {
        account: i,
        device: 0,
        header: Bytes::new(),
    });
    let out = OutgoingMulti {
        msg_id: MessageId::from_u128(11),
        ttl_secs: 0,
        ephemeral: false,
        recipients: many.collect(),
        payload: Bytes::from_static(b"x"),
    };
    let e = sender.send_multi(out).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::TooManyRecipients));
    n.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_payloads_are_deleted_after_the_last_ack_and_at_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    let (c1, mut d1) = n.connect(1, 1).await;
    let (c2, mut d2) = n.connect(2, 1).await;
    let (off, _) = n.connect(4, 1).await;
    off.close();
    let (sender, _) = n.connect(3, 1).await;
    sender.create_group(1, &[1, 2]).await.unwrap();
    sender.create_group(2, &[4]).await.unwrap();
    sender
        .send_group(group_msg(1, 1, b"acked by all"))
        .await
        .unwrap();
    let mut short = group_msg(2, 2, b"expires unread");
    short.ttl_secs = 1;
    sender.send_group(short).await.unwrap();
    let g1 = next(&mut d1).await;
    c1.ack(&[g1.seq]).unwrap();
    let g2 = next(&mut d2).await;
    c2.ack(&[g2.seq]).unwrap();
    eventually("acks applied and the short one expired", || {
        let s = n.status();
        s["envelopes"]["acked"] == 2 && s["envelopes"]["expired"] == 1
    })
    .await;
    n.node.shutdown().await;
    assert_eq!(
        keys_in(dir.path(), "payloads"),
        0,
        "a shared payload leaked"
    );
    assert_eq!(keys_in(dir.path(), "queues"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_acknowledged_shared_payload_is_kept_for_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    let (c1, mut d1) = n.connect(1, 1).await;
    let (c2, _) = n.connect(2, 1).await;
    c2.close();
    let (sender, _) = n.connect(3, 1).await;
    sender.create_group(1, &[1, 2]).await.unwrap();
    sender
        .send_group(group_msg(1, 1, b"for both"))
        .await
        .unwrap();
    let g = next(&mut d1).await;
    c1.ack(&[g.seq]).unwrap();
    eventually("ack applied", || n.status()["envelopes"]["acked"] == 1).await;
    n.node.shutdown().await;
    assert_eq!(keys_in(dir.path(), "payloads"), 1);
    let n = TestNode::start(dir.path()).await;
    let (_c2, mut d2) = n.connect(2, 1).await;
    assert_eq!(&next(&mut d2).await.payload[..], b"for both");
    n.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_member_group_fans_out_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let members = 100_000u64;
    {
        // Register the members' devices through the real store, as earlier logins would have.
        let store = Store::open(&dir.path().join("db"), StoreOptions::default()).unwrap();
        let regs: Vec<_> = (1..=members)
            .map(|a| {
                store.register_device(
                    DeviceKey {
                        account: a,
                        device: 1,
                    },
                    1,
                )
            })
            .collect();
        for r in futures_util::future::join_all(regs).await {
            r.unwrap();
        }
    }
    let n = TestNode::start(dir.path()).await;
    let (admin, _) = n.connect(1, 1).await;
    admin.create_group(42, &[]).await.unwrap();
    let all: Vec<u64> = (2..=members).collect();
    for chunk in all.chunks(20_000) {
        admin
            .update_group(42, group_op::ADD_MEMBERS, chunk)
            .await
            .unwrap();
    }
    let info = admin.group_info(42, 0, 10).await.unwrap();
    assert_eq!(info.total as u64, members);
    let e = admin
        .update_group(42, group_op::ADD_MEMBERS, &[members + 1])
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::GroupTooLarge));
    let payload = vec![0x5a; 512];
    let acc = admin.send_group(group_msg(42, 1, &payload)).await.unwrap();
    assert_eq!(acc.recipients as u64, members - 1);
    for account in [2, 50_000, members] {
        let (_c, mut d) = n.connect(account, 1).await;
        let got = next(&mut d).await;
        assert_eq!((got.group, got.payload.len()), (42, 512));
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?");
    eprintln!("100k-member fan-out: peak RSS of the test process (node + clients): {hwm}");
    n.node.shutdown().await;
}
