//! The client against a scripted node: real QUIC and TLS on loopback, with the node side
//! played by the test frame by frame (the real node has its own end-to-end tests).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hearth_client::{
    Client, ClientConfig, ClientError, Connection, Deliveries, ErrorCode, MessageId, Outgoing,
};
use hearth_protocol::{
    encode, Accepted, Ack, Decoded, Decoder, Deliver, DeliverMeta, Frame, Hello, Ping, Pong,
    Refusal, Refused, Welcome, ALPN,
};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Endpoint, VarInt};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};

/// Safety net against a hang; a test that reaches it has failed.
async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test hung")
}

struct FakeNode {
    endpoint: Endpoint,
    ca_pem: String,
    addr: SocketAddr,
}

impl FakeNode {
    fn start() -> FakeNode {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key = PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(ck.cert.der().to_vec())],
                key.into(),
            )
            .unwrap();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicServerConfig::try_from(tls).unwrap();
        let server = quinn::ServerConfig::with_crypto(Arc::new(quic));
        let endpoint = Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        FakeNode {
            endpoint,
            ca_pem: ck.cert.pem(),
            addr,
        }
    }

    fn config(&self) -> ClientConfig {
        ClientConfig::new(
            self.addr,
            "localhost",
            self.ca_pem.clone(),
            "ht1.test-token",
        )
    }

    /// The next connection, once the client has opened its stream (sent HELLO).
    async fn accept(&self) -> Peer {
        let conn = self.endpoint.accept().await.unwrap().await.unwrap();
        let (send, recv) = conn.accept_bi().await.unwrap();
        let rd = FrameReader {
            recv,
            buf: BytesMut::new(),
            decoder: Decoder::new(1 << 20),
        };
        Peer { conn, send, rd }
    }
}

struct Peer {
    conn: quinn::Connection,
    send: quinn::SendStream,
    rd: FrameReader,
}

struct FrameReader {
    recv: quinn::RecvStream,
    buf: BytesMut,
    decoder: Decoder,
}

impl FrameReader {
    async fn read_frame(&mut self) -> Frame {
        loop {
            if let Some(decoded) = self.decoder.decode(&mut self.buf).unwrap() {
                match decoded {
                    Decoded::Frame(f) => return f,
                    other => panic!("unexpected {other:?}"),
                }
            }
            let chunk = self
                .recv
                .read_chunk(1 << 16, true)
                .await
                .unwrap()
                .expect("stream ended");
            self.buf.extend_from_slice(&chunk.bytes);
        }
    }

    /// Reads exactly `n` raw bytes.
    async fn read_raw(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            let chunk = self
                .recv
                .read_chunk(1 << 16, true)
                .await
                .unwrap()
                .expect("stream ended");
            self.buf.extend_from_slice(&chunk.bytes);
        }
        self.buf.split_to(n).to_vec()
    }
}

impl Peer {
    async fn read_frame(&mut self) -> Frame {
        self.rd.read_frame().await
    }

    async fn read_raw(&mut self, n: usize) -> Vec<u8> {
        self.rd.read_raw(n).await
    }

    async fn write_raw(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
    }

    async fn write(&mut self, frames: &[Frame]) {
        let mut buf = BytesMut::new();
        for f in frames {
            encode(f, &mut buf);
        }
        self.send.write_all(&buf).await.unwrap();
    }

    /// Expects HELLO, answers WELCOME.
    async fn welcome(&mut self, max_envelope: u32) {
        match self.read_frame().await {
            Frame::Hello(Hello { version: 1, token }) => assert_eq!(token, "ht1.test-token"),
            other => panic!("expected HELLO, got {other:?}"),
        }
        self.write(&[welcome(max_envelope)]).await;
    }

    fn close(&self, code: ErrorCode, reason: &str) {
        self.conn
            .close(VarInt::from_u32(code.as_u16().into()), reason.as_bytes());
    }

    /// The client's close code, once it closed the connection.
    async fn client_close_code(&self) -> u64 {
        match self.conn.closed().await {
            quinn::ConnectionError::ApplicationClosed(c) => c.error_code.into_inner(),
            other => panic!("unexpected close {other:?}"),
        }
    }
}

fn welcome(max_envelope: u32) -> Frame {
    Frame::Welcome(Welcome {
        account: 7,
        device: 2,
        server_time_ms: 1_700_000_000_000,
        max_envelope,
        max_inflight: 64,
        idle_timeout_ms: 30_000,
        max_pending_sends: 512,
    })
}

fn deliver(seq: u64) -> Frame {
    Frame::Deliver(Deliver {
        meta: DeliverMeta {
            seq,
            msg_id: MessageId::from_u128(1000 + seq as u128),
            from_account: 9,
            from_device: 1,
            accepted_at_ms: 5,
            expires_at_ms: 6,
            flags: 0,
        },
        payload: Bytes::from(format!("payload {seq}")),
    })
}

async fn connected(node: &FakeNode) -> (Connection, Deliveries, Peer) {
    let cfg = node.config();
    let (client, peer) = tokio::join!(Connection::connect(&cfg), async {
        let mut peer = node.accept().await;
        peer.welcome(1024).await;
        peer
    });
    let (conn, deliveries) = client.unwrap();
    (conn, deliveries, peer)
}

#[tokio::test]
async fn handshake_then_pipelined_sends_matched_by_id() {
    bounded(async {
        let node = FakeNode::start();
        let (conn, _deliveries, mut peer) = connected(&node).await;
        assert_eq!(conn.welcome().account, 7);
        assert_eq!(conn.welcome().device, 2);
        assert_eq!(conn.welcome().max_envelope, 1024);
        assert_eq!(conn.welcome().max_inflight, 64);
        assert_eq!(conn.welcome().idle_timeout_ms, 30_000);
        assert_eq!(conn.welcome().max_pending_sends, 512);

        let ids: Vec<MessageId> = (1..=3).map(MessageId::from_u128).collect();
        let sends = ids.iter().map(|id| {
            let conn = conn.clone();
            let out = Outgoing {
                msg_id: *id,
                to_account: 9,
                to_device: id.as_u128() as u32,
                ttl_secs: 60,
                ephemeral: id.as_u128() == 3,
                payload: Bytes::from_static(b"hello"),
            };
            tokio::spawn(async move { conn.send(out).await })
        });
        let sends: Vec<_> = sends.collect();
        let mut seen = Vec::new();
        for _ in 0..3 {
            match peer.read_frame().await {
                Frame::Send(hearth_protocol::Send {
                    msg_id,
                    to_account,
                    to_device,
                    ttl_secs,
                    flags,
                    payload,
                }) => {
                    assert_eq!((to_account, ttl_secs, &payload[..]), (9, 60, &b"hello"[..]));
                    assert_eq!(to_device as u128, msg_id.as_u128());
                    assert_eq!(flags, if msg_id.as_u128() == 3 { 1 } else { 0 });
                    seen.push(msg_id);
                }
                other => panic!("expected SEND, got {other:?}"),
            }
        }
        seen.sort();
        assert_eq!(seen, ids);
        // Answer in reverse order; one is refused.
        peer.write(&[
            Frame::Accepted(Accepted {
                msg_id: ids[2],
                accepted_at_ms: 30,
                recipients: 0,
            }),
            Frame::Error(Refused {
                msg_id: ids[1],
                refusal: Refusal {
                    code: ErrorCode::QueueFull,
                    retry_after_ms: 0,
                    message: "queue full".into(),
                },
            }),
            Frame::Accepted(Accepted {
                msg_id: ids[0],
                accepted_at_ms: 10,
                recipients: 2,
            }),
        ])
        .await;
        let results: Vec<_> = futures_join(sends).await;
        let first = results[0].as_ref().unwrap();
        assert_eq!(
            (first.msg_id, first.accepted_at_ms, first.recipients),
            (ids[0], 10, 2)
        );
        match &results[1] {
            Err(ClientError::Refused {
                code: ErrorCode::QueueFull,
                message,
                ..
            }) => {
                assert_eq!(message, "queue full")
            }
            other => panic!("expected QUEUE_FULL, got {other:?}"),
        }
        assert_eq!(results[2].as_ref().unwrap().accepted_at_ms, 30);
    })
    .await
}

async fn futures_join<T: Send + 'static>(
    handles: Vec<tokio::task::JoinHandle<Result<T, ClientError>>>,
) -> Vec<Result<T, ClientError>> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn deliveries_arrive_in_order_and_acks_are_coalesced() {
    bounded(async {
        let node = FakeNode::start();
        let (conn, mut deliveries, mut peer) = connected(&node).await;
        let mut ephemeral = deliver(0);
        if let Frame::Deliver(Deliver {
            meta: DeliverMeta { flags, .. },
            ..
        }) = &mut ephemeral
        {
            *flags = 1;
        }
        peer.write(&[
            deliver(1),
            deliver(2),
            ephemeral,
            deliver(3),
            deliver(4),
            deliver(5),
        ])
        .await;
        let mut got = Vec::new();
        for _ in 0..6 {
            got.push(deliveries.next().await.unwrap());
        }
        let seqs: Vec<u64> = got.iter().map(|d| d.seq).collect();
        assert_eq!(seqs, vec![1, 2, 0, 3, 4, 5]);
        assert!(got[2].is_ephemeral() && !got[0].is_ephemeral());
        assert_eq!(&got[4].payload[..], b"payload 4");
        assert_eq!(got[0].msg_id, MessageId::from_u128(1001));
        assert_eq!((got[0].from_account, got[0].from_device), (9, 1));
        assert_eq!((got[0].accepted_at_ms, got[0].expires_at_ms), (5, 6));

        // Acknowledged one by one without yielding: they leave in one ACK frame, before PING.
        for d in &got {
            conn.ack(&[d.seq]).unwrap();
        }
        let ping = tokio::spawn({
            let conn = conn.clone();
            async move { conn.ping().await }
        });
        assert_eq!(
            peer.read_frame().await,
            Frame::Ack(Ack {
                seqs: vec![1, 2, 3, 4, 5]
            })
        );
        let nonce = match peer.read_frame().await {
            Frame::Ping(Ping { nonce }) => nonce,
            other => panic!("expected PING, got {other:?}"),
        };
        peer.write(&[
            Frame::Pong(Pong { nonce: nonce + 1 }),
            Frame::Pong(Pong { nonce }),
        ])
        .await;
        ping.await.unwrap().unwrap();
        assert!(deliveries.try_next().is_none());
    })
    .await
}

#[tokio::test]
async fn oversized_send_still_goes_to_the_node() {
    bounded(async {
        let node = FakeNode::start();
        let (conn, _deliveries, mut peer) = connected(&node).await;
        let big = Bytes::from(vec![7u8; 4096]); // welcome said max_envelope 1024
        let id = MessageId::from_u128(77);
        let out = Outgoing {
            payload: big.clone(),
            msg_id: id,
            ..Outgoing::new(9, "")
        };
        let send = tokio::spawn({
            let conn = conn.clone();
            async move { conn.send(out).await }
        });
        match peer.read_frame().await {
            Frame::Send(hearth_protocol::Send {
                msg_id, payload, ..
            }) => assert_eq!((msg_id, payload), (id, big)),
            other => panic!("expected SEND, got {other:?}"),
        }
        peer.write(&[Frame::Error(Refused {
            msg_id: id,
            refusal: Refusal {
                code: ErrorCode::EnvelopeTooLarge,
                retry_after_ms: 0,
                message: "too large".into(),
            },
        })])
        .await;
        let err = send.await.unwrap().unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::EnvelopeTooLarge));
        assert!(!conn.is_closed());
    })
    .await
}

#[tokio::test]
async fn send_raw_writes_exact_bytes() {
    bounded(async {
        let node = FakeNode::start();
        let (conn, _deliveries, mut peer) = connected(&node).await;
        conn.send_raw(Bytes::from_static(&[0, 0, 0, 0, 0xAB]))
            .await
            .unwrap();
        assert_eq!(peer.read_raw(5).await, vec![0, 0, 0, 0, 0xAB]);
    })
    .await
}

#[tokio::test]
async fn refused_hello_is_reported_with_its_code() {
    bounded(async {
        let node = FakeNode::start();
        // ERROR frame first, connection kept open: the client reports Refused and closes.
        let cfg = node.config();
        let (res, code) = tokio::join!(Connection::connect(&cfg), async {
            let mut peer = node.accept().await;
            assert!(matches!(peer.read_frame().await, Frame::Hello(_)));
            peer.write(&[Frame::error(ErrorCode::TokenExpired, "expired")])
                .await;
            peer.client_close_code().await
        });
        match res.unwrap_err() {
            ClientError::Refused {
                code: ErrorCode::TokenExpired,
                message,
                ..
            } => {
                assert_eq!(message, "expired")
            }
            other => panic!("expected Refused, got {other:?}"),
        }
        assert_eq!(code, ErrorCode::Normal.as_u16() as u64);

        // Only a connection close: the code comes from it.
        let (res, _) = tokio::join!(Connection::connect(&cfg), async {
            let mut peer = node.accept().await;
            assert!(matches!(peer.read_frame().await, Frame::Hello(_)));
            peer.close(ErrorCode::BadToken, "bad signature");
        });
        let err = res.unwrap_err();
        match &err {
            ClientError::Closed {
                code: Some(ErrorCode::BadToken),
                reason,
            } => {
                assert_eq!(reason, "bad signature")
            }
            other => panic!("expected Closed(BAD_TOKEN), got {other:?}"),
        }
        assert!(err.is_permanent());
    })
    .await
}

#[tokio::test]
async fn untrusted_certificate_is_a_tls_error() {
    bounded(async {
        let node = FakeNode::start();
        let server = tokio::spawn({
            let endpoint = node.endpoint.clone();
            async move { endpoint.accept().await.unwrap().await.is_err() }
        });
        let mut cfg = node.config();
        cfg.ca_pem = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .unwrap()
            .cert
            .pem()
            .into_bytes();
        match Connection::connect(&cfg).await {
            Err(ClientError::Tls(msg)) => {
                assert!(msg.to_lowercase().contains("certificate"), "{msg}")
            }
            other => panic!("expected a TLS error, got {:?}", other.map(|_| ())),
        }
        assert!(server.await.unwrap());
    })
    .await
}

#[tokio::test]
async fn node_close_fails_pending_sends_and_ends_deliveries() {
    bounded(async {
        let node = FakeNode::start();
        let (conn, mut deliveries, mut peer) = connected(&node).await;
        let send = tokio::spawn({
            let conn = conn.clone();
            async move { conn.send(Outgoing::new(9, "x")).await }
        });
        assert!(matches!(peer.read_frame().await, Frame::Send(_)));
        peer.write(&[deliver(1)]).await;
        assert_eq!(deliveries.next().await.unwrap().seq, 1);
        peer.close(ErrorCode::GoingAway, "shutting down");
        let err = send.await.unwrap().unwrap_err();
        match &err {
            ClientError::Closed {
                code: Some(ErrorCode::GoingAway),
                reason,
            } => {
                assert_eq!(reason, "shutting down")
            }
            other => panic!("expected Closed(GOING_AWAY), got {other:?}"),
        }
        assert_eq!(conn.closed().await.code(), Some(ErrorCode::GoingAway));
        assert!(deliveries.next().await.is_none());
        assert_eq!(
            conn.send(Outgoing::new(9, "y")).await.unwrap_err().code(),
            Some(ErrorCode::GoingAway)
        );
        assert_eq!(
            conn.ack(&[1]).unwrap_err().code(),
            Some(ErrorCode::GoingAway)
        );
        assert_eq!(
            conn.ping().await.unwrap_err().code(),
            Some(ErrorCode::GoingAway)
        );
    })
    .await
}

#[tokio::test]
async fn fatal_error_frame_is_the_close_reason() {
    bounded(async {
        let node = FakeNode::start();
        let (conn, _deliveries, mut peer) = connected(&node).await;
        let send = tokio::spawn({
            let conn = conn.clone();
            async move { conn.send(Outgoing::new(9, "x")).await }
        });
        assert!(matches!(peer.read_frame().await, Frame::Send(_)));
        // The frame alone (no connection close yet) ends the connection for the client.
        peer.write(&[Frame::error(
            ErrorCode::Replaced,
            "another connection of this device",
        )])
        .await;
        for err in [conn.closed().await, send.await.unwrap().unwrap_err()] {
            match err {
                ClientError::Closed {
                    code: Some(ErrorCode::Replaced),
                    reason,
                } => {
                    assert_eq!(reason, "another connection of this device")
                }
                other => panic!("expected Closed(REPLACED), got {other:?}"),
            }
        }
        peer.close(ErrorCode::Replaced, "replaced");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pipelined_sends_and_acks_under_flow_control() {
    const N: u32 = 2000;
    bounded(async {
        let node = FakeNode::start();
        let (conn, mut deliveries, peer) = connected(&node).await;
        let Peer {
            conn: _quic,
            send: mut node_tx,
            mut rd,
        } = peer;

        // Node side, reading: every SEND (2 MB in all, above the 1 MiB window) and every ACK.
        let (ids_tx, mut ids_rx) = tokio::sync::mpsc::unbounded_channel::<MessageId>();
        let node_reader = tokio::spawn(async move {
            let (mut sends, mut acked) = (0, Vec::new());
            while sends < N || acked.len() < N as usize {
                match rd.read_frame().await {
                    Frame::Send(hearth_protocol::Send {
                        msg_id, payload, ..
                    }) => {
                        assert_eq!(payload.len(), 1024);
                        ids_tx.send(msg_id).unwrap();
                        sends += 1;
                    }
                    Frame::Ack(Ack { seqs }) => acked.extend(seqs),
                    other => panic!("unexpected {other:?}"),
                }
            }
            acked
        });
        // Node side, writing: N deliveries, and an answer to every SEND in any order.
        let node_writer = tokio::spawn(async move {
            let (mut delivered, mut answered) = (0u64, 0u32);
            while answered < N {
                let mut buf = BytesMut::new();
                for _ in 0..100 {
                    if delivered < N as u64 {
                        delivered += 1;
                        encode(&deliver(delivered), &mut buf);
                    }
                }
                let mut ids = Vec::new();
                if delivered == N as u64 {
                    ids.push(ids_rx.recv().await.unwrap());
                }
                while let Ok(id) = ids_rx.try_recv() {
                    ids.push(id);
                }
                for id in ids.into_iter().rev() {
                    let recipients = id.as_u128() as u32 % 1000;
                    encode(
                        &Frame::Accepted(Accepted {
                            msg_id: id,
                            accepted_at_ms: 1,
                            recipients,
                        }),
                        &mut buf,
                    );
                    answered += 1;
                }
                node_tx.write_all(&buf).await.unwrap();
            }
            node_tx
        });

        let sends: Vec<_> = (0..N)
            .map(|i| {
                let conn = conn.clone();
                let out = Outgoing {
                    // Never the all-zero id (refused).
                    msg_id: MessageId::from_u128(i as u128 + 1),
                    payload: Bytes::from(vec![1u8; 1024]),
                    ..Outgoing::new(9, "")
                };
                tokio::spawn(async move { conn.send(out).await })
            })
            .collect();
        let mut seqs = Vec::new();
        let mut batch = Vec::new();
        while seqs.len() < N as usize {
            batch.clear();
            assert!(deliveries.next_batch(&mut batch, 256).await > 0);
            let got: Vec<u64> = batch.iter().map(|d| d.seq).collect();
            conn.ack(&got).unwrap();
            seqs.extend(got);
        }
        assert_eq!(seqs, (1..=N as u64).collect::<Vec<_>>());
        for (i, send) in sends.into_iter().enumerate() {
            let accepted = send.await.unwrap().unwrap();
            assert_eq!(accepted.msg_id, MessageId::from_u128(i as u128 + 1));
            assert_eq!(accepted.recipients, (i as u32 + 1) % 1000);
        }
        let acked = node_reader.await.unwrap();
        assert_eq!(acked, (1..=N as u64).collect::<Vec<_>>());
        let _node_tx = node_writer.await.unwrap();
    })
    .await
}

#[tokio::test]
async fn garbage_from_the_node_closes_with_malformed_frame() {
    bounded(async {
        let node = FakeNode::start();
        let (conn, _deliveries, mut peer) = connected(&node).await;
        peer.send.write_all(&[0, 0, 0, 1, 0x99]).await.unwrap();
        assert!(matches!(conn.closed().await, ClientError::Protocol(_)));
        assert_eq!(
            peer.client_close_code().await,
            ErrorCode::MalformedFrame.as_u16() as u64
        );
    })
    .await
}

#[tokio::test]
async fn close_and_drop_close_with_normal() {
    bounded(async {
        let node = FakeNode::start();
        let (conn, mut deliveries, peer) = connected(&node).await;
        conn.close();
        assert_eq!(conn.closed().await.code(), Some(ErrorCode::Normal));
        assert_eq!(
            peer.client_close_code().await,
            ErrorCode::Normal.as_u16() as u64
        );
        assert!(deliveries.next().await.is_none());

        let (conn, _deliveries, peer) = connected(&node).await;
        let clone = conn.clone();
        drop(conn);
        assert!(!clone.is_closed());
        drop(clone);
        assert_eq!(
            peer.client_close_code().await,
            ErrorCode::Normal.as_u16() as u64
        );
    })
    .await
}

#[tokio::test]
async fn shutdown_flushes_acks_before_closing() {
    bounded(async {
        let node = FakeNode::start();
        let (conn, _deliveries, mut peer) = connected(&node).await;
        conn.ack(&[41, 42]).unwrap();
        let shutdown = tokio::spawn(async move { conn.shutdown().await });
        assert_eq!(
            peer.read_frame().await,
            Frame::Ack(Ack { seqs: vec![41, 42] })
        );
        let Frame::Ping(Ping { nonce }) = peer.read_frame().await else {
            panic!("expected PING")
        };
        peer.write(&[Frame::Pong(Pong { nonce })]).await;
        shutdown.await.unwrap();
        assert_eq!(
            peer.client_close_code().await,
            ErrorCode::Normal.as_u16() as u64
        );
    })
    .await
}

#[tokio::test]
async fn shared_endpoint_carries_several_connections() {
    bounded(async {
        let node = FakeNode::start();
        let endpoint = hearth_client::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
        let cfg = node.config();
        let quic = hearth_client::quic_client_config(&cfg).unwrap();
        let mut conns = Vec::new();
        for _ in 0..3 {
            let (res, peer) = tokio::join!(
                Connection::connect_with_config(&endpoint, &quic, &cfg),
                async {
                    let mut peer = node.accept().await;
                    peer.welcome(1024).await;
                    peer
                }
            );
            let (conn, _) = res.unwrap();
            conns.push((conn, peer));
        }
        let local = endpoint.local_addr().unwrap();
        for (_, peer) in &conns {
            assert_eq!(peer.conn.remote_address(), local);
        }
    })
    .await
}

#[tokio::test]
async fn client_reconnects_and_keeps_one_delivery_stream() {
    bounded(async {
        let node = FakeNode::start();
        let (client, mut deliveries) = Client::new(node.config());
        let mut p1 = node.accept().await;
        p1.welcome(1024).await;
        p1.write(&[deliver(1)]).await;
        assert_eq!(deliveries.next().await.unwrap().seq, 1);

        let send = tokio::spawn({
            let client = client.clone();
            async move { client.send(Outgoing::new(9, "via client")).await }
        });
        let Frame::Send(hearth_protocol::Send { msg_id, .. }) = p1.read_frame().await else {
            panic!("expected SEND")
        };
        p1.write(&[Frame::Accepted(Accepted {
            msg_id,
            accepted_at_ms: 1,
            recipients: 1,
        })])
        .await;
        assert_eq!(send.await.unwrap().unwrap().msg_id, msg_id);
        client.ack(&[1]).unwrap();
        assert_eq!(p1.read_frame().await, Frame::Ack(Ack { seqs: vec![1] }));

        // The node goes away; the client comes back on its own.
        p1.close(ErrorCode::GoingAway, "restart");
        let mut p2 = node.accept().await;
        p2.welcome(1024).await;
        p2.write(&[deliver(2)]).await;
        assert_eq!(deliveries.next().await.unwrap().seq, 2);
        let conn = client.connection().await.unwrap();
        assert_eq!(
            conn.quic().stable_id(),
            client.current().unwrap().quic().stable_id()
        );

        // Closing flushes first: acknowledgements queued before it, then a PING; the close
        // follows the PONG.
        client.ack(&[2]).unwrap();
        client.close();
        assert_eq!(p2.read_frame().await, Frame::Ack(Ack { seqs: vec![2] }));
        let Frame::Ping(ping) = p2.read_frame().await else {
            panic!("expected PING")
        };
        assert!(p2.conn.close_reason().is_none(), "closed before the PONG");
        p2.write(&[Frame::Pong(Pong { nonce: ping.nonce })]).await;
        assert_eq!(
            p2.client_close_code().await,
            ErrorCode::Normal.as_u16() as u64
        );
        assert!(deliveries.next().await.is_none());
        assert_eq!(client.stopped().await.code(), Some(ErrorCode::Normal));
        assert!(client.current().is_none());
    })
    .await
}

#[tokio::test]
async fn client_stops_on_a_bad_token() {
    bounded(async {
        let node = FakeNode::start();
        let (client, mut deliveries) = Client::new(node.config());
        let mut peer = node.accept().await;
        assert!(matches!(peer.read_frame().await, Frame::Hello(_)));
        peer.write(&[Frame::error(ErrorCode::BadToken, "bad signature")])
            .await;
        peer.close(ErrorCode::BadToken, "bad signature");
        let err = client.stopped().await;
        assert_eq!(err.code(), Some(ErrorCode::BadToken));
        assert!(deliveries.next().await.is_none());
        let err = client.send(Outgoing::new(9, "x")).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BadToken));
        assert!(client.ack(&[1]).is_err());
    })
    .await
}

#[tokio::test]
async fn client_stops_when_its_device_is_removed() {
    bounded(async {
        let node = FakeNode::start();
        let (client, mut deliveries) = Client::new(node.config());
        let mut peer = node.accept().await;
        peer.welcome(1024).await;
        client.connection().await.unwrap();
        peer.close(ErrorCode::DeviceRemoved, "removed by operator");
        assert_eq!(
            client.stopped().await.code(),
            Some(ErrorCode::DeviceRemoved)
        );
        assert!(deliveries.next().await.is_none());
    })
    .await
}

/// A node of an earlier revision sends the 29-byte WELCOME (no idle timeout, no pending-send
/// limit); a later one may add fields this client does not know. Both are accepted.
#[tokio::test]
async fn shorter_and_longer_welcomes_are_accepted() {
    bounded(async {
        let mut full = BytesMut::new();
        encode(&welcome(2048), &mut full);
        assert_eq!(full.len(), 4 + 37);
        let mut old = full[..4 + 29].to_vec();
        old[3] = 29;
        let mut newer = full.to_vec();
        newer.extend_from_slice(&[0xee; 8]);
        newer[3] = 37 + 8;
        for (bytes, idle, pending) in [(old, 0, 0), (newer, 30_000, 512)] {
            let node = FakeNode::start();
            let cfg = node.config();
            let (client, _peer) = tokio::join!(Connection::connect(&cfg), async {
                let mut peer = node.accept().await;
                assert!(matches!(peer.read_frame().await, Frame::Hello(_)));
                peer.write_raw(&bytes).await;
                peer
            });
            let (conn, _deliveries) = client.unwrap();
            assert_eq!(conn.welcome().max_envelope, 2048);
            assert_eq!(conn.welcome().max_inflight, 64);
            assert_eq!(conn.welcome().idle_timeout_ms, idle);
            assert_eq!(conn.welcome().max_pending_sends, pending);
        }
    })
    .await;
}

/// An ERROR with a code this version does not know answers its request (not malformed), and
/// the client classifies it by range.
#[tokio::test]
async fn unknown_error_codes_answer_their_request() {
    bounded(async {
        let node = FakeNode::start();
        let (conn, _deliveries, mut peer) = connected(&node).await;
        let send = tokio::spawn({
            let conn = conn.clone();
            async move { conn.send(Outgoing::new(9, Bytes::from_static(b"x"))).await }
        });
        let Frame::Send(hearth_protocol::Send { msg_id, .. }) = peer.read_frame().await else {
            panic!("expected SEND");
        };
        // 51: unassigned, in the retryable range (48..=63).
        peer.write(&[Refusal::new(ErrorCode::from_u16(51), "new in 1.2")
            .retry_after(20)
            .answer(msg_id)])
            .await;
        let err = send.await.unwrap().unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unknown(51)));
        assert!(err.is_retryable(), "{err}");
        assert_eq!(err.retry_after_ms(), 20);
        assert!(!conn.is_closed());
        // An all-zero msg_id is refused without asking the node (its answer would name no
        // request).
        let zero = Outgoing {
            msg_id: MessageId::NONE,
            ..Outgoing::new(9, "")
        };
        let err = conn.send(zero).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidMessageId));
    })
    .await;
}
