//! The QUIC front under abuse and change: connections that never say HELLO, handshake floods
//! (address validation with Retry), session resumption, 0-RTT refused, stateless reset after a
//! restart, connection migration. Real nodes, real QUIC, the real client.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hearth_client::{quic_client_config, quic_client_config_with_tickets, Connection, ErrorCode};

/// One counter of the node's `/metrics`.
fn metric(n: &TestNode, name: &str) -> u64 {
    let url = format!("http://{}/metrics", n.node.admin_addr());
    let text = ureq::get(&url).call().unwrap().into_string().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

fn client_endpoint() -> quinn::Endpoint {
    quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap()
}

/// A raw QUIC connection (TLS and ALPN as a device, but no Hearth frames).
async fn raw_connect(
    ep: &quinn::Endpoint,
    qcfg: &quinn::ClientConfig,
    n: &TestNode,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    ep.connect_with(qcfg.clone(), n.node.quic_addr(), n.node.server_name())
        .unwrap()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_says_hello_is_closed_after_the_hello_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.limits.hello_timeout_ms = 300;
    let n = TestNode::start_with(cfg).await;
    let qcfg = quic_client_config(&n.client_config(1, 1)).unwrap();
    let ep = client_endpoint();

    // Opens no stream at all.
    let silent = raw_connect(&ep, &qcfg, &n).await.unwrap();
    // Opens the stream and sends half a frame header.
    let partial = raw_connect(&ep, &qcfg, &n).await.unwrap();
    let (mut send, _recv) = partial.open_bi().await.unwrap();
    send.write_all(&[0x01]).await.unwrap();
    let start = Instant::now();
    for conn in [&silent, &partial] {
        let err = tokio::time::timeout(DEADLINE, conn.closed())
            .await
            .expect("closed by the node");
        match err {
            quinn::ConnectionError::ApplicationClosed(c) => assert_eq!(
                c.error_code,
                quinn::VarInt::from(ErrorCode::ProtocolViolation.as_u16()),
                "{c:?}"
            ),
            other => panic!("expected a close by the node, got {other:?}"),
        }
    }
    // The default is 10 s: the configured 300 ms is what closed them.
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // The node keeps serving devices that do say HELLO.
    let (a, _) = n.connect(1, 1).await;
    let (_b, mut bd) = n.connect(2, 1).await;
    a.send(envelope(2, 1, 1, b"after")).await.unwrap();
    assert_eq!(&next(&mut bd).await.payload[..], b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_gets_retry_and_an_established_device_keeps_being_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.limits.retry_above_handshakes_per_sec = 20;
    cfg.limits.hello_timeout_ms = 1000;
    let n = Arc::new(TestNode::start_with(cfg).await);
    let (a, _) = n.connect(1, 1).await;
    let (b, mut bd) = n.connect(2, 1).await;
    let before = metric(&n, "hearth_quic_handshakes_total");

    // 40 client endpoints (own UDP ports), 10 handshakes each, all at once; none says HELLO.
    const FLOODERS: usize = 40;
    const EACH: usize = 10;
    let qcfg = quic_client_config(&n.client_config(9, 1)).unwrap();
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..FLOODERS {
        let (n, qcfg) = (n.clone(), qcfg.clone());
        flood.spawn(async move {
            let ep = client_endpoint();
            let mut conns = tokio::task::JoinSet::new();
            for _ in 0..EACH {
                let connecting = ep
                    .connect_with(qcfg.clone(), n.node.quic_addr(), n.node.server_name())
                    .unwrap();
                conns.spawn(connecting);
            }
            let mut held = Vec::new();
            while let Some(c) = conns.join_next().await {
                if let Ok(Ok(c)) = c {
                    held.push(c);
                }
            }
            held.len()
        });
    }

    // Meanwhile device 1 sends 100 envelopes to device 2, one after the other.
    for i in 0..100u128 {
        a.send(envelope(2, 1, 1000 + i, format!("m{i}").as_bytes()))
            .await
            .unwrap_or_else(|e| panic!("send {i} during the flood: {e}"));
    }
    for i in 0..100 {
        let d = next(&mut bd).await;
        assert_eq!(d.payload, format!("m{i}").as_bytes(), "delivery {i}");
        b.ack(&[d.seq]).unwrap();
    }
    let mut completed = 0;
    while let Some(r) = flood.join_next().await {
        completed += r.unwrap();
    }
    let handshakes = metric(&n, "hearth_quic_handshakes_total") - before;
    let retries = metric(&n, "hearth_quic_retries_total");
    assert!(
        handshakes >= (FLOODERS * EACH) as u64,
        "the flood reached the node: {handshakes} handshakes"
    );
    assert!(retries > 0, "no Retry above 20 handshakes/s");
    // Real clients echo the Retry token, so the flood's handshakes still complete.
    assert!(completed > 0, "no flood handshake completed");
    // Device 1 is still connected and served.
    a.send(envelope(2, 1, 5000, b"after")).await.unwrap();
    assert_eq!(&next(&mut bd).await.payload[..], b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_retry_threshold_no_retry_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    for i in 0..5 {
        let (c, _) = n.connect(1, i + 1).await;
        c.close();
    }
    assert!(metric(&n, "hearth_quic_handshakes_total") >= 5);
    assert_eq!(metric(&n, "hearth_quic_retries_total"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_resumes_the_tls_session_unless_the_client_keeps_no_tickets() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    let cc = n.client_config(1, 1);
    let ep = client_endpoint();
    for (tickets, resumes) in [(hearth_client::SESSION_TICKETS, true), (0, false)] {
        let qcfg = quic_client_config_with_tickets(&cc, tickets).unwrap();
        let (c, _) = Connection::connect_with_config(&ep, &qcfg, &cc)
            .await
            .unwrap();
        // A round trip after the handshake: the node's tickets have arrived.
        c.ping().await.unwrap();
        c.shutdown().await;
        let before = metric(&n, "hearth_tls_resumed_total");
        let (c, _) = Connection::connect_with_config(&ep, &qcfg, &cc)
            .await
            .unwrap();
        c.ping().await.unwrap();
        let resumed = metric(&n, "hearth_tls_resumed_total") - before;
        assert_eq!(resumed, u64::from(resumes), "tickets={tickets}");
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    // A client that would send 0-RTT data if the node allowed it.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &n.node.ca_pem()[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"hearth/1".to_vec()];
    tls.enable_early_data = true;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let qcfg = quinn::ClientConfig::new(Arc::new(quic));
    let ep = client_endpoint();
    let first = raw_connect(&ep, &qcfg, &n).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // the tickets arrive
    first.close(0u32.into(), b"");
    let before = metric(&n, "hearth_tls_resumed_total");
    let connecting = ep
        .connect_with(qcfg.clone(), n.node.quic_addr(), n.node.server_name())
        .unwrap();
    let connecting = match connecting.into_0rtt() {
        Ok(_) => panic!("the node's ticket allowed 0-RTT"),
        Err(connecting) => connecting,
    };
    // The handshake itself still resumes (1-RTT).
    connecting.await.unwrap();
    assert_eq!(metric(&n, "hearth_tls_resumed_total") - before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_rebinds_its_socket_keeps_receiving() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    let ep = client_endpoint();
    let (r, mut rd) = Connection::connect_with(&ep, &n.client_config(1, 1))
        .await
        .unwrap();
    let (s, _) = n.connect(2, 1).await;
    s.send(envelope(1, 1, 1, b"before")).await.unwrap();
    let d = next(&mut rd).await;
    assert_eq!(&d.payload[..], b"before");
    r.ack(&[d.seq]).unwrap();

    let old: SocketAddr = ep.local_addr().unwrap();
    ep.rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .unwrap();
    assert_ne!(ep.local_addr().unwrap(), old, "a new port");
    // The node learns the new path from the next packet; the client's ping goes first.
    r.ping().await.unwrap();
    for i in 2..12u128 {
        s.send(envelope(1, 1, i, format!("after {i}").as_bytes()))
            .await
            .unwrap();
        let d = next(&mut rd).await;
        assert_eq!(d.payload, format!("after {i}").as_bytes());
        r.ack(&[d.seq]).unwrap();
    }
    // The acks came over the new path too: the queue drains.
    eventually("queue of 1/1 empty", || {
        n.admin_get("/v1/queues/1/1")["queued"] == 0
    })
    .await;
    assert!(!r.is_closed());
}

/// A `hearthd` child process on a fixed port and data dir.
struct Hearthd {
    child: std::process::Child,
}

impl Hearthd {
    fn start(config: &std::path::Path) -> Hearthd {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hearthd"))
            .args(["--config", config.to_str().unwrap(), "--log", "warn"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("hearthd listening"),
            "hearthd said {line:?}"
        );
        Hearthd { child }
    }

    /// SIGKILL: a crash, no connection is closed.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Hearthd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_resets_the_connections_of_its_previous_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("hearthd.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n",
            data
        ),
    )
    .unwrap();
    let first = Hearthd::start(&config);
    let reset_key = std::fs::read(data.join("quic-reset.key")).unwrap();
    assert_eq!(reset_key.len(), 32);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("quic-reset.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let key =
        hearth_protocol::SigningKey::from_pkcs8(&std::fs::read(data.join("token.key")).unwrap())
            .unwrap();
    let cc = hearth_client::ClientConfig::new(
        SocketAddr::from(([127, 0, 0, 1], port)),
        "localhost",
        std::fs::read(data.join("dev-cert.pem")).unwrap(),
        token(&key, 1, 1),
    );
    // The client would wait a long time for a silent node: the idle timeout is the node's 30 s.
    let (c, _) = Connection::connect(&cc).await.unwrap();
    c.ping().await.unwrap();

    first.kill();
    let _second = Hearthd::start(&config);
    assert_eq!(
        std::fs::read(data.join("quic-reset.key")).unwrap(),
        reset_key,
        "the reset secret survives the restart"
    );
    let restarted = Instant::now();
    // The client's next packet reaches the new process, which answers with a stateless reset.
    let _ = c.ping().await;
    let err = tokio::time::timeout(DEADLINE, c.quic().closed())
        .await
        .expect("the connection ends");
    assert!(
        matches!(err, quinn::ConnectionError::Reset),
        "expected a stateless reset, got {err:?}"
    );
    assert!(
        restarted.elapsed() < Duration::from_secs(10),
        "noticed after {:?} (idle timeout is 30 s)",
        restarted.elapsed()
    );
    // And it reconnects to the new process.
    let (c2, _) = Connection::connect(&cc).await.unwrap();
    c2.ping().await.unwrap();
}
