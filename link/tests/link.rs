//! Two (or three) link endpoints on loopback with certificates from a test CA: ordered
//! delivery per key in batches, back-pressure, refusal of peers without a CA-signed
//! certificate for their id, and reconnection after a peer restarts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hearth_link::{node_name, Delivery, Incoming, Link, LinkConfig, SendError};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use tokio::time::timeout;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// Certificate and key PEM for DNS name `name`.
    fn issue(&self, name: &str) -> (String, String) {
        let mut p = CertificateParams::new(vec![name.to_owned()]).unwrap();
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn config(ca: &Ca, trust: &Ca, id: u32, cert_for: u32, listen: SocketAddr) -> LinkConfig {
    let (cert, key) = ca.issue(&node_name("test", cert_for));
    LinkConfig {
        ca_pem: trust.cert.pem().into_bytes(),
        cert_pem: cert.into_bytes(),
        key_pem: key.into_bytes(),
        ..LinkConfig::new(id, "test", listen)
    }
}

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn node(ca: &Ca, id: u32) -> (Link, Incoming) {
    Link::bind(config(ca, ca, id, id, any())).await.unwrap()
}

/// A message carrying its key and a sequence number.
fn msg(key: u16, seq: u32, pad: usize) -> Bytes {
    let mut v = key.to_be_bytes().to_vec();
    v.extend_from_slice(&seq.to_be_bytes());
    v.resize(6 + pad, 0xAB);
    Bytes::from(v)
}

/// Receive until `n` messages arrived; check order per key; return the batches.
async fn collect(inc: &mut Incoming, n: usize) -> Vec<Delivery> {
    let mut last: HashMap<(u32, u16), u32> = HashMap::new();
    let mut got = 0;
    let mut batches = Vec::new();
    while got < n {
        let d = timeout(Duration::from_secs(10), inc.recv())
            .await
            .expect("delivery in time")
            .expect("link open");
        for m in &d.messages {
            let key = u16::from_be_bytes([m[0], m[1]]);
            let seq = u32::from_be_bytes([m[2], m[3], m[4], m[5]]);
            assert_eq!(key % 8, d.stream, "stream chosen by key");
            if let Some(prev) = last.insert((d.from, key), seq) {
                assert_eq!(seq, prev + 1, "key {key} out of order");
            } else {
                assert_eq!(seq, 0, "key {key} starts at 0");
            }
        }
        got += d.messages.len();
        batches.push(d);
    }
    batches
}

#[tokio::test]
async fn messages_arrive_in_order_per_key_in_batches_both_ways() {
    let ca = Ca::new("hearth test CA");
    let (a, mut a_in) = node(&ca, 1).await;
    let (b, mut b_in) = node(&ca, 2).await;
    a.set_peer(2, b.local_addr());
    const N: u32 = 5000;
    for seq in 0..N {
        for key in [3u16, 11, 12] {
            a.send(2, key, msg(key, seq, 100)).await.unwrap();
            b.send(1, key, msg(key, seq, 10)).await.unwrap();
        }
    }
    let at_b = collect(&mut b_in, 3 * N as usize).await;
    let at_a = collect(&mut a_in, 3 * N as usize).await;
    assert!(at_b.iter().all(|d| d.from == 1) && at_a.iter().all(|d| d.from == 2));
    // Batched: many messages per frame, none over the 64 KiB flush size.
    assert!(at_b.len() * 4 < 3 * N as usize, "{} batches", at_b.len());
    for d in &at_b {
        let bytes: usize = d.messages.iter().map(|m| m.len() + 4).sum();
        assert!(bytes <= 64 * 1024, "{bytes}");
    }
    let s = &a.stats()[0];
    assert_eq!((s.peer, s.messages_sent, s.connects), (2, 3 * N as u64, 1));
    assert_eq!(s.bytes_sent, 3 * u64::from(N) * 106);
    assert!(s.batches_sent < s.messages_sent / 4);
    assert!(s.connected && s.rtt.is_some());
    assert_eq!(b.stats()[0].connects, 1, "one connection for the pair");
}

#[tokio::test]
async fn a_full_outbox_makes_send_wait_and_try_send_refuse() {
    let ca = Ca::new("hearth test CA");
    let mut cfg = config(&ca, &ca, 1, 1, any());
    cfg.max_outbox_bytes = 10_000;
    let (a, _a_in) = Link::bind(cfg).await.unwrap();
    let (b, mut b_in) = node(&ca, 2).await;
    // No address for node 2 yet: messages wait in the outbox.
    let mut queued = 0;
    loop {
        match a.try_send(2, 0, msg(0, queued, 990)) {
            Ok(()) => queued += 1,
            Err(e) => {
                assert_eq!(e, SendError::Full(2));
                break;
            }
        }
    }
    assert_eq!(queued, 10);
    assert_eq!(a.stats()[0].queued_bytes, 10_000);
    let a2 = a.clone();
    let blocked = tokio::spawn(async move { a2.send(2, 0, msg(0, 10, 990)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !blocked.is_finished(),
        "send waits while the outbox is full"
    );
    assert_eq!(
        a.try_send(2, 0, Bytes::from(vec![0; 5 * 1024 * 1024])),
        Err(SendError::TooLarge(5 * 1024 * 1024))
    );
    assert_eq!(a.try_send(1, 0, msg(0, 0, 1)), Err(SendError::ToSelf(1)));
    a.set_peer(2, b.local_addr());
    timeout(Duration::from_secs(10), blocked)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    collect(&mut b_in, 11).await;
}

#[tokio::test]
async fn peers_without_a_ca_signed_certificate_for_their_id_are_refused() {
    let ca = Ca::new("hearth test CA");
    let rogue_ca = Ca::new("rogue CA");
    let (b, mut b_in) = node(&ca, 5).await;
    // Node "1" with a certificate from another CA (it trusts ours).
    let (r1, _) = Link::bind(config(&rogue_ca, &ca, 1, 1, any()))
        .await
        .unwrap();
    // Node "2" with a certificate from our CA, but for node 3.
    let (r2, _) = Link::bind(config(&ca, &ca, 2, 3, any())).await.unwrap();
    // A genuine node 4, to show the endpoint works meanwhile.
    let (g, _) = node(&ca, 4).await;
    for l in [&r1, &r2, &g] {
        l.set_peer(5, b.local_addr());
        l.send(5, 0, msg(0, 0, 1)).await.unwrap();
    }
    let d = timeout(Duration::from_secs(10), b_in.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.from, 4);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        timeout(Duration::from_millis(100), b_in.recv())
            .await
            .is_err(),
        "nothing from rogues"
    );
    let peers: Vec<u32> = b
        .stats()
        .iter()
        .filter(|s| s.connects > 0)
        .map(|s| s.peer)
        .collect();
    assert_eq!(peers, vec![4]);
    assert!(r1.stats().iter().all(|s| !s.connected));
    assert!(r2
        .stats()
        .iter()
        .all(|s| s.batches_sent == 0 || !s.connected));
}

#[tokio::test]
async fn the_dialer_reconnects_after_the_peer_restarts() {
    let ca = Ca::new("hearth test CA");
    let (a, _a_in) = node(&ca, 1).await;
    let (b, mut b_in) = node(&ca, 2).await;
    let addr = b.local_addr();
    a.set_peer(2, addr);
    for seq in 0..100 {
        a.send(2, 7, msg(7, seq, 50)).await.unwrap();
    }
    collect(&mut b_in, 100).await;
    b.close().await;
    drop((b, b_in));
    // Queued while the peer is down; delivered once it is back on the same address (bound
    // again as soon as the old endpoint's tasks let go of the socket).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (b2, mut b2_in) = loop {
        match Link::bind(config(&ca, &ca, 2, 2, addr)).await {
            Ok(l) => break l,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("rebinding {addr}: {e}"),
        }
    };
    for seq in 0..100 {
        a.send(2, 7, msg(7, seq, 50)).await.unwrap();
    }
    let got: usize = collect(&mut b2_in, 100)
        .await
        .iter()
        .map(|d| d.messages.len())
        .sum();
    assert_eq!(got, 100);
    assert!(a.stats()[0].connects >= 2, "reconnected");
    assert_eq!(b2.stats()[0].connects, 1);
}
