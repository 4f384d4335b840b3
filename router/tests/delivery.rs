//! End-to-end delivery rules against real nodes: real QUIC, real RocksDB, the real client.

mod common;

use std::time::Duration;

use common::*;
use hearth_client::ClientError;
use hearth_protocol::{ErrorCode, MessageId};
use hearth_storage::{Store, StoreOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_delivery_reaches_every_device_of_the_account() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    let (_c1, mut d1) = n.connect(1, 1).await;
    let (_c2, mut d2) = n.connect(1, 2).await;
    let (_c3, mut d3) = n.connect(1, 3).await;
    let (sender, _) = n.connect(2, 1).await;
    let acc = sender.send(envelope(1, 0, 7, b"hello all")).await.unwrap();
    assert_eq!(acc.recipients, 3);
    for d in [&mut d1, &mut d2, &mut d3] {
        let got = next(d).await;
        assert_eq!(&got.payload[..], b"hello all");
        assert_eq!((got.from_account, got.from_device), (2, 1));
        assert_eq!(got.msg_id, MessageId::from_u128(7));
        assert!(got.seq > 0);
    }
    // A device-addressed send reaches only that device.
    sender.send(envelope(1, 2, 8, b"only two")).await.unwrap();
    assert_eq!(&next(&mut d2).await.payload[..], b"only two");
    // The sending device is excluded from its own account's fan-out.
    let (own, mut own_d) = n.connect(2, 2).await;
    let acc = own
        .send(envelope(2, 0, 9, b"to my other devices"))
        .await
        .unwrap();
    assert_eq!(acc.recipients, 1);
    assert!(nothing_within(&mut own_d, Duration::from_millis(300)).await);
    n.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_device_drains_its_queue_in_order_after_reconnecting() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    let (c, _) = n.connect(10, 1).await; // registers the device
    c.close();
    let (sender, _) = n.connect(20, 1).await;
    // Acceptance order is known for sequential sends...
    let ordered = 50u32;
    for i in 0..ordered {
        sender
            .send(envelope(10, 0, i as u128 + 1, &i.to_be_bytes()))
            .await
            .unwrap();
    }
    // ...and pipelined ones push the queue past the in-flight window.
    let total = 600u32;
    let sends: Vec<_> = (ordered..total)
        .map(|i| sender.send(envelope(10, 0, i as u128 + 1, &i.to_be_bytes())))
        .collect();
    for s in futures_util::future::join_all(sends).await {
        s.unwrap();
    }
    let (c, mut d) = n.connect(10, 1).await;
    let mut last_seq = 0;
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..total {
        let got = next(&mut d).await;
        let body = u32::from_be_bytes(got.payload[..].try_into().unwrap());
        if i < ordered {
            assert_eq!(body, i, "delivery {i} out of acceptance order");
        }
        assert!(got.seq > last_seq, "seq went backwards");
        assert!(seen.insert(body), "duplicate delivery of {body}");
        last_seq = got.seq;
        c.ack(&[got.seq]).unwrap();
    }
    assert_eq!(seen.len(), total as usize);
    n.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_envelopes_stay_gone_and_unacked_ones_return_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    let (rc, mut rd) = n.connect(1, 1).await;
    let (sender, _) = n.connect(2, 1).await;
    sender.send(envelope(1, 0, 1, b"first")).await.unwrap();
    sender.send(envelope(1, 0, 2, b"second")).await.unwrap();
    let a = next(&mut rd).await;
    let b = next(&mut rd).await;
    assert_eq!(
        (&a.payload[..], &b.payload[..]),
        (&b"first"[..], &b"second"[..])
    );
    rc.ack(&[a.seq]).unwrap();
    eventually("the ack is applied", || {
        n.status()["envelopes"]["acked"] == 1
    })
    .await;
    n.node.shutdown().await;

    let n = TestNode::start(dir.path()).await;
    let (_rc, mut rd) = n.connect(1, 1).await;
    let again = next(&mut rd).await;
    assert_eq!(&again.payload[..], b"second");
    assert_eq!(again.seq, b.seq);
    assert!(
        nothing_within(&mut rd, Duration::from_millis(300)).await,
        "acked one came back"
    );
    n.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_envelopes_are_not_delivered_and_are_removed_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    let (c, _) = n.connect(1, 1).await;
    c.close();
    let (sender, _) = n.connect(2, 1).await;
    let mut short = envelope(1, 0, 1, b"short-lived");
    short.ttl_secs = 1;
    sender.send(short).await.unwrap();
    eventually("the sweeper removes the expired entry", || {
        n.status()["envelopes"]["expired"] == 1
    })
    .await;
    sender.send(envelope(1, 0, 2, b"marker")).await.unwrap();
    let (rc, mut rd) = n.connect(1, 1).await;
    let got = next(&mut rd).await;
    assert_eq!(
        &got.payload[..],
        b"marker",
        "an expired envelope was delivered"
    );
    rc.ack(&[got.seq]).unwrap();
    eventually("the ack is applied", || {
        n.status()["envelopes"]["acked"] == 1
    })
    .await;
    n.node.shutdown().await;
    let store = Store::open(&dir.path().join("db"), StoreOptions::default()).unwrap();
    let counts = store.count_keys().unwrap();
    let queued = counts.iter().find(|(cf, _)| cf == "queues").unwrap().1;
    assert_eq!(queued, 0, "queue keys left in RocksDB: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_envelopes_reach_online_devices_only_and_never_touch_disk() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    let (_on, mut on_d) = n.connect(1, 1).await;
    let (off, _) = n.connect(1, 2).await;
    off.close();
    let (sender, _) = n.connect(2, 1).await;
    let marker = b"EPHEMERAL-typing-indicator-5f3a9c";
    let mut e = envelope(1, 0, 1, marker);
    e.ephemeral = true;
    let acc = sender.send(e).await.unwrap();
    assert_eq!(acc.recipients, 1);
    let got = next(&mut on_d).await;
    assert_eq!((got.seq, &got.payload[..]), (0, &marker[..]));
    sender
        .send(envelope(1, 2, 2, b"stored marker"))
        .await
        .unwrap();
    let (_off, mut off_d) = n.connect(1, 2).await;
    assert_eq!(&next(&mut off_d).await.payload[..], b"stored marker");
    n.node.shutdown().await;
    assert!(
        !files_containing(dir.path(), b"stored marker").is_empty(),
        "the check sees payloads"
    );
    assert_eq!(
        files_containing(dir.path(), marker),
        Vec::<std::path::PathBuf>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_send_id_is_stored_once_and_answered_alike() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    let (c, _) = n.connect(1, 1).await;
    c.close();
    let (sender, _) = n.connect(2, 1).await;
    // Concurrent duplicates (the first not yet durable) and a later retry.
    let (a, b) = tokio::join!(
        sender.send(envelope(1, 0, 42, b"once")),
        sender.send(envelope(1, 0, 42, b"once"))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let c2 = sender.send(envelope(1, 0, 42, b"once")).await.unwrap();
    assert_eq!(
        (a.accepted_at_ms, a.recipients),
        (b.accepted_at_ms, b.recipients)
    );
    assert_eq!(
        (a.accepted_at_ms, a.recipients),
        (c2.accepted_at_ms, c2.recipients)
    );
    // A retry after a restart is still recognised.
    n.node.shutdown().await;
    let n = TestNode::start(dir.path()).await;
    let (sender, _) = n.connect(2, 1).await;
    let d = sender.send(envelope(1, 0, 42, b"once")).await.unwrap();
    assert_eq!(d.accepted_at_ms, a.accepted_at_ms);
    let q = n.admin_get("/v1/queues/1/1");
    assert_eq!(q["queued"], 1, "{q}");
    let (_rc, mut rd) = n.connect(1, 1).await;
    assert_eq!(&next(&mut rd).await.payload[..], b"once");
    assert!(nothing_within(&mut rd, Duration::from_millis(300)).await);
    n.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_of_a_device_replaces_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    let (first, _) = n.connect(1, 1).await;
    let (_second, mut d2) = n.connect(1, 1).await;
    match tokio::time::timeout(DEADLINE, first.closed())
        .await
        .unwrap()
    {
        ClientError::Closed { code, .. } => assert_eq!(code, Some(ErrorCode::Replaced)),
        other => panic!("unexpected: {other:?}"),
    }
    let (sender, _) = n.connect(2, 1).await;
    sender
        .send(envelope(1, 1, 1, b"to the new one"))
        .await
        .unwrap();
    assert_eq!(&next(&mut d2).await.payload[..], b"to the new one");
    n.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_device_closes_it_and_deletes_its_queue() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    let (dev, _) = n.connect(1, 1).await;
    let (off, _) = n.connect(1, 2).await;
    off.close();
    let (sender, _) = n.connect(2, 1).await;
    sender
        .send(envelope(1, 2, 1, b"for the removed device"))
        .await
        .unwrap();
    let url = format!("http://{}/v1/devices/1/2", n.node.admin_addr());
    let removed: serde_json::Value = ureq::delete(&url)
        .set("Authorization", &n.admin_auth())
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(removed["envelopes"], 1);
    let err = sender.send(envelope(1, 2, 2, b"again")).await.unwrap_err();
    assert!(matches!(
        err,
        ClientError::Refused {
            code: ErrorCode::NoSuchRecipient,
            ..
        }
    ));
    let url = format!("http://{}/v1/devices/1/1", n.node.admin_addr());
    ureq::delete(&url)
        .set("Authorization", &n.admin_auth())
        .call()
        .unwrap();
    match tokio::time::timeout(DEADLINE, dev.closed()).await.unwrap() {
        ClientError::Closed { code, .. } => assert_eq!(code, Some(ErrorCode::DeviceRemoved)),
        other => panic!("unexpected: {other:?}"),
    }
    let missing = ureq::get(&format!("http://{}/v1/queues/1/2", n.node.admin_addr()))
        .set("Authorization", &n.admin_auth())
        .call();
    assert!(matches!(missing, Err(ureq::Error::Status(404, _))));
    n.node.shutdown().await;
}
