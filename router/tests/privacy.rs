//! Privacy and safety controls against real nodes: who may reach whom, networks, sealed sender,
//! rate limits, abuse signals, residency, erasure and push wake-ups.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use hearth_client::{reach, ClientError, Connection, OutgoingGroup, OutgoingSealed, PolicyChange};
use hearth_protocol::{ErrorCode, MessageId, Scope, TokenClaims};
use hearth_router::Config;
use hearth_storage::{Store, StoreOptions};

fn code(r: &Result<hearth_client::Accepted, ClientError>) -> Option<ErrorCode> {
    r.as_ref().err().and_then(|e| e.code())
}

fn scoped_token(n: &TestNode, account: u64, device: u32, network: &str, zone: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let claims = TokenClaims {
        account,
        device,
        expires_at: now.as_secs() + 3600,
    };
    let scope = Scope {
        network: network.into(),
        zone: zone.into(),
    };
    n.node.signing_key().issue_scoped(&claims, &scope).unwrap()
}

async fn connect_scoped(
    n: &TestNode,
    account: u64,
    device: u32,
    network: &str,
    zone: &str,
) -> Result<(Connection, hearth_client::Deliveries), ClientError> {
    let mut cc = n.client_config(account, device);
    cc.token = scoped_token(n, account, device, network, zone);
    Connection::connect(&cc).await
}

/// Every key and value in the node's store that contains `account`'s 8 big-endian bytes.
fn traces_of(dir: &std::path::Path, account: u64) -> Vec<(String, Vec<u8>)> {
    let store = Store::open(&dir.join("db"), StoreOptions::default()).unwrap();
    let needle = account.to_be_bytes();
    store
        .scan_all()
        .unwrap()
        .into_iter()
        .filter(|(_, k, v)| k.windows(8).any(|w| w == needle) || v.windows(8).any(|w| w == needle))
        .map(|(cf, k, _)| (cf, k))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_and_reachability_decide_before_anything_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    let (alice, mut alice_in) = n.connect(1, 1).await;
    let (bob, _) = n.connect(2, 1).await;
    let (carol, _) = n.connect(3, 1).await;
    alice
        .set_policy(PolicyChange::Block {
            add: true,
            accounts: vec![2],
        })
        .await
        .unwrap();
    // Bob is blocked: he is told nothing, and nothing is stored or delivered.
    let acc = bob
        .send(envelope(1, 0, 1, b"BLOCKED-PAYLOAD-1"))
        .await
        .unwrap();
    assert_eq!(acc.recipients, 1);
    carol.send(envelope(1, 0, 2, b"from carol")).await.unwrap();
    let got = next(&mut alice_in).await;
    assert_eq!(
        &got.payload[..],
        b"from carol",
        "a blocked sender's envelope was delivered"
    );
    alice.ack(&[got.seq]).unwrap();
    // Contacts only: carol is not on the allow list any more than bob.
    alice
        .set_policy(PolicyChange::Reach(reach::CONTACTS))
        .await
        .unwrap();
    let r = carol.send(envelope(1, 0, 3, b"not a contact")).await;
    assert_eq!(code(&r), Some(ErrorCode::RecipientUnreachable));
    alice
        .set_policy(PolicyChange::Allow {
            add: true,
            accounts: vec![3],
        })
        .await
        .unwrap();
    carol
        .send(envelope(1, 0, 4, b"now a contact"))
        .await
        .unwrap();
    assert_eq!(&next(&mut alice_in).await.payload[..], b"now a contact");
    // Nobody: not even contacts.
    alice
        .set_policy(PolicyChange::Reach(reach::NOBODY))
        .await
        .unwrap();
    let r = carol.send(envelope(1, 0, 5, b"closed")).await;
    assert_eq!(code(&r), Some(ErrorCode::RecipientUnreachable));
    // Group sends skip the member who blocked the sender.
    alice
        .set_policy(PolicyChange::Reach(reach::EVERYONE))
        .await
        .unwrap();
    bob.create_group(9, &[1, 3]).await.unwrap();
    let out = OutgoingGroup {
        msg_id: MessageId::from_u128(6),
        group: 9,
        ttl_secs: 0,
        ephemeral: false,
        payload: Bytes::from_static(b"BLOCKED-PAYLOAD-2"),
    };
    bob.send_group(out).await.unwrap();
    carol.send(envelope(1, 0, 7, b"marker")).await.unwrap();
    assert_eq!(&next(&mut alice_in).await.payload[..], b"marker");
    n.node.shutdown().await;
    let hits = files_containing(&dir.path().join("db"), b"BLOCKED-PAYLOAD-1");
    assert!(
        hits.is_empty(),
        "a blocked envelope reached the disk: {hits:?}"
    );
}

fn two_network_config(dir: &std::path::Path) -> Config {
    let mut cfg = config(dir);
    cfg.privacy.networks = vec!["chat".into(), "photos".into()];
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_networks_reach_an_account_only_after_it_opts_in() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start_with(two_network_config(dir.path())).await;
    let (chat_user, mut chat_in) = connect_scoped(&n, 1, 1, "chat", "").await.unwrap();
    let (photos_user, _) = connect_scoped(&n, 2, 1, "photos", "").await.unwrap();
    let r = photos_user.send(envelope(1, 0, 1, b"hi from photos")).await;
    assert_eq!(code(&r), Some(ErrorCode::RecipientUnreachable));
    chat_user
        .set_policy(PolicyChange::Networks(vec!["photos".into()]))
        .await
        .unwrap();
    photos_user
        .send(envelope(1, 0, 2, b"hi again"))
        .await
        .unwrap();
    assert_eq!(&next(&mut chat_in).await.payload[..], b"hi again");
    // A token naming an unknown network is refused.
    let err = connect_scoped(&n, 3, 1, "social", "")
        .await
        .err()
        .map(|e| e.code());
    assert_eq!(err, Some(Some(ErrorCode::BadToken)));
    n.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_sends_need_the_recipients_access_key_and_hide_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    let (alice, mut alice_in) = n.connect(1, 1).await;
    let (bob, _) = n.connect(2, 1).await;
    let sealed = |key: &'static [u8], id: u128| OutgoingSealed {
        msg_id: MessageId::from_u128(id),
        to_account: 1,
        to_device: 0,
        ttl_secs: 0,
        access_key: Bytes::from_static(key),
        payload: Bytes::from_static(b"sealed"),
    };
    let r = bob.send_sealed(sealed(b"guess", 1)).await;
    assert_eq!(
        code(&r),
        Some(ErrorCode::BadAccessKey),
        "no key set: refused"
    );
    alice
        .set_policy(PolicyChange::AccessKey(Bytes::from_static(
            b"alice-secret-key",
        )))
        .await
        .unwrap();
    let r = bob.send_sealed(sealed(b"wrong-key", 2)).await;
    assert_eq!(code(&r), Some(ErrorCode::BadAccessKey));
    bob.send_sealed(sealed(b"alice-secret-key", 3))
        .await
        .unwrap();
    let got = next(&mut alice_in).await;
    assert_eq!(
        (got.from_account, got.from_device, &got.payload[..]),
        (0, 0, &b"sealed"[..])
    );
    n.node.shutdown().await;
    assert!(
        files_containing(&dir.path().join("db"), b"alice-secret-key").is_empty(),
        "the access key itself was stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_refuse_with_retry_after_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.safety.per_device_per_sec = 5;
    cfg.safety.per_device_burst = 5;
    let n = TestNode::start_with(cfg).await;
    let (_r, _) = n.connect(1, 1).await;
    let (s, _) = n.connect(2, 1).await;
    let mut refused = None;
    for i in 0..20u128 {
        match s.send(envelope(1, 0, i + 1, b"x")).await {
            Ok(_) => {}
            Err(ClientError::Refused {
                code: ErrorCode::RateLimited,
                retry_after_ms,
                ..
            }) => {
                refused = Some(retry_after_ms);
                break;
            }
            Err(e) => panic!("unexpected: {e:?}"),
        }
    }
    let retry_after_ms = refused.expect("the per-device limit refused a send");
    assert!(retry_after_ms > 0);
    tokio::time::sleep(Duration::from_millis(u64::from(retry_after_ms) + 50)).await;
    s.send(envelope(1, 0, 100, b"after waiting"))
        .await
        .expect("the limit recovers");
    n.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_recipient_bytes_sealed_fanout_and_connection_limits_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.safety.per_pair_per_sec = 2;
    cfg.safety.per_pair_burst = 2;
    cfg.safety.recipient_bytes_per_sec = 1000;
    cfg.safety.recipient_bytes_burst = 1000;
    cfg.safety.sealed_per_recipient_per_sec = 1;
    cfg.safety.sealed_per_recipient_burst = 1;
    cfg.safety.group_fanout_per_sender_per_sec = 3;
    cfg.safety.group_fanout_burst = 3;
    cfg.safety.new_connections_per_ip_per_sec = 1;
    cfg.safety.new_connections_per_ip_burst = 12;
    let n = TestNode::start_with(cfg).await;
    let (a, _) = n.connect(1, 1).await;
    let (_b, _) = n.connect(2, 1).await;
    let (_c, _) = n.connect(3, 1).await;
    let (s, _) = n.connect(4, 1).await;
    // Pair: two to account 1, the third refused, while account 2 still gets one.
    s.send(envelope(1, 0, 1, b"1")).await.unwrap();
    s.send(envelope(1, 0, 2, b"2")).await.unwrap();
    let r = s.send(envelope(1, 0, 3, b"3")).await;
    assert_eq!(code(&r), Some(ErrorCode::RateLimited));
    s.send(envelope(2, 0, 4, b"4")).await.unwrap();
    // Recipient bytes: two 600-byte envelopes to account 3 exceed its 1,000-byte bucket.
    s.send(envelope(3, 0, 5, &[0u8; 600])).await.unwrap();
    let r = s.send(envelope(3, 0, 6, &[0u8; 600])).await;
    assert_eq!(code(&r), Some(ErrorCode::RateLimited));
    // Sealed per recipient.
    a.set_policy(PolicyChange::AccessKey(Bytes::from_static(b"k")))
        .await
        .unwrap();
    let sealed = |id: u128| OutgoingSealed {
        msg_id: MessageId::from_u128(id),
        to_account: 1,
        to_device: 0,
        ttl_secs: 0,
        access_key: Bytes::from_static(b"k"),
        payload: Bytes::from_static(b"s"),
    };
    let (s2, _) = n.connect(5, 1).await;
    s2.send_sealed(sealed(10)).await.unwrap();
    assert_eq!(
        code(&s2.send_sealed(sealed(11)).await),
        Some(ErrorCode::RateLimited)
    );
    // Group fan-out: four deliveries per message against a bucket of 3 (a message larger than
    // the bucket passes only when it is full): the second message is refused.
    s2.create_group(77, &[1, 2, 3, 4]).await.unwrap();
    let out = |id: u128| OutgoingGroup {
        msg_id: MessageId::from_u128(id),
        group: 77,
        ttl_secs: 0,
        ephemeral: false,
        payload: Bytes::from_static(b"g"),
    };
    s2.send_group(out(12)).await.unwrap();
    assert_eq!(
        code(&s2.send_group(out(13)).await),
        Some(ErrorCode::RateLimited)
    );
    // New connections from one address: the burst of 12 is used up by now.
    let mut refused = false;
    for d in 0..10 {
        if let Err(e) = Connection::connect(&n.client_config(9, d + 1)).await {
            assert_eq!(e.code(), Some(ErrorCode::RateLimited), "{e:?}");
            refused = true;
            break;
        }
    }
    assert!(refused, "the per-address connection limit never refused");
    n.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_crossing_abuse_thresholds_is_throttled_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.safety.new_recipients_per_hour = 3;
    cfg.safety.throttled_per_sec = 1;
    let n = TestNode::start_with(cfg).await;
    let mut keep = Vec::new();
    for a in 10..16 {
        keep.push(n.connect(a, 1).await);
    }
    let (spammer, _) = n.connect(1, 1).await;
    for (i, a) in (10..15u64).enumerate() {
        let _ = spammer
            .send(envelope(a, 0, i as u128 + 1, b"buy now"))
            .await;
    }
    let abuse = n.admin_get("/v1/abuse");
    let flagged = abuse["flagged"].as_array().unwrap();
    let entry = flagged
        .iter()
        .find(|f| f["account"] == 1)
        .unwrap_or_else(|| panic!("{abuse}"));
    assert!(!entry["reasons"].as_array().unwrap().is_empty());
    // Throttled: a quick burst is refused even to a known recipient.
    let mut limited = false;
    for i in 0..5u128 {
        if let Err(ClientError::Refused {
            code: ErrorCode::RateLimited,
            ..
        }) = spammer.send(envelope(10, 0, 100 + i, b"again")).await
        {
            limited = true;
        }
    }
    assert!(limited, "a flagged sender was not throttled");
    // REPORTs are signals too.
    let (reporter, _) = n.connect(20, 1).await;
    reporter.report(1).await.unwrap();
    n.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_outside_a_zones_regions_refuses_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.region = "eu-west".into();
    cfg.residency.default_zone = "eu".into();
    cfg.residency.zones = [
        ("eu".to_string(), vec!["eu-west".to_string()]),
        ("us".to_string(), vec!["us-east".to_string()]),
    ]
    .into();
    let n = TestNode::start_with(cfg).await;
    connect_scoped(&n, 1, 1, "", "eu")
        .await
        .expect("eu data may live in eu-west");
    let Err(err) = connect_scoped(&n, 7_777_777_777, 1, "", "us").await else {
        panic!("a zone outside the node's region was accepted");
    };
    assert_eq!(err.code(), Some(ErrorCode::Residency), "{err:?}");
    n.node.shutdown().await;
    assert_eq!(traces_of(dir.path(), 7_777_777_777), Vec::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_erases_everything_the_node_holds_about_an_account() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    let victim = 0x5151_5151_5151_5151u64;
    let (v, _) = n.connect(victim, 1).await;
    let (v2, _) = n.connect(victim, 2).await;
    v2.close();
    let (other, mut other_in) = n.connect(2, 1).await;
    v.set_policy(PolicyChange::Block {
        add: true,
        accounts: vec![3],
    })
    .await
    .unwrap();
    v.set_policy(PolicyChange::PushToken(Bytes::from_static(b"push-token")))
        .await
        .unwrap();
    v.create_group(44, &[2]).await.unwrap();
    other.create_group(45, &[victim]).await.unwrap();
    v.send(envelope(2, 0, 1, b"from the victim")).await.unwrap();
    other
        .send(envelope(victim, 2, 2, b"to the victim"))
        .await
        .unwrap();
    let got = next(&mut other_in).await;
    other.ack(&[got.seq]).unwrap();
    let url = format!("http://{}/v1/accounts/{victim}", n.node.admin_addr());
    let report: serde_json::Value = ureq::delete(&url)
        .set("Authorization", &n.admin_auth())
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(report["devices"], 2, "{report}");
    assert!(report["envelopes"].as_u64().unwrap() >= 1, "{report}");
    n.node.shutdown().await;
    assert_eq!(
        traces_of(dir.path(), victim),
        Vec::new(),
        "something about the account remains"
    );
    assert!(
        !traces_of(dir.path(), 2).is_empty(),
        "the other account's data must remain"
    );
}

/// A one-request-at-a-time HTTP server that hands each request body to the test.
fn webhook() -> (String, std::sync::mpsc::Receiver<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/wake", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            if tx
                .send(String::from_utf8_lossy(&body).into_owned())
                .is_err()
            {
                return;
            }
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_devices_are_woken_through_the_webhook_without_content() {
    let dir = tempfile::tempdir().unwrap();
    let (url, requests) = webhook();
    let mut cfg = config(dir.path());
    cfg.push.webhook_url = Some(url);
    cfg.push.allow_http = true;
    cfg.push.batch_interval_ms = 50;
    cfg.push.min_interval_secs = 3600;
    let n = TestNode::start_with(cfg).await;
    let (r, _) = n.connect(1, 1).await;
    r.set_policy(PolicyChange::PushToken(Bytes::from_static(b"tok-1")))
        .await
        .unwrap();
    r.close();
    let (s, _) = n.connect(2, 1).await;
    s.send(envelope(1, 0, 1, b"SECRET-CONTENT")).await.unwrap();
    s.send(envelope(1, 0, 2, b"SECRET-CONTENT")).await.unwrap();
    let body = requests.recv_timeout(DEADLINE).expect("a wake-up request");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let wakeups = v["wakeups"].as_array().unwrap();
    assert_eq!(
        wakeups.len(),
        1,
        "one non-urgent wake-up per device per interval: {body}"
    );
    assert_eq!(wakeups[0]["urgent"], false);
    assert!(
        !body.contains("SECRET") && !body.contains("\"2\""),
        "content or sender leaked: {body}"
    );
    assert_eq!(v.as_object().unwrap().len(), 1);
    assert_eq!(
        wakeups[0].as_object().unwrap().len(),
        2,
        "only token and urgency: {body}"
    );
    // Urgent bypasses the interval.
    s.send_urgent(envelope(1, 0, 3, b"call")).await.unwrap();
    let body = requests.recv_timeout(DEADLINE).expect("an urgent wake-up");
    assert!(body.contains("\"urgent\":true"), "{body}");
    n.node.shutdown().await;
}
