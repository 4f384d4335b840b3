//! What a client written from PROTOCOL.md alone, in another language, found (issue 10): each
//! test drives a real node over real QUIC, by hand where the Rust client would hide the problem.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use hearth_client::{Client, Outgoing};
use hearth_protocol::{
    encode, ErrorCode, Frame, GroupCreate, GroupGet, GroupUpdate, Hello, MessageId, MultiRecipient,
    Ping, PolicyChange, PolicySet, Pong, Refused, Report, Send, SendGroup, SendMulti, SendSealed,
    PROTOCOL_VERSION,
};

/// A behaviour test, not a timing test: generous.
const ANSWER: Duration = Duration::from_secs(5);

fn hello(n: &TestNode, account: u64, device: u32) -> Frame {
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        token: n.token(account, device),
    })
}

fn send(id: u128, to_account: u64, payload: &'static [u8]) -> Frame {
    Frame::Send(Send {
        msg_id: MessageId::from_u128(id),
        to_account,
        to_device: 0,
        ttl_secs: 0,
        flags: 0,
        payload: Bytes::from_static(payload),
    })
}

/// A raw connection of `account`/`device` that has its WELCOME.
async fn welcomed(n: &TestNode, account: u64, device: u32) -> Raw {
    let mut raw = n.raw().await;
    raw.write(&[hello(n, account, device)]).await;
    match raw.next().await {
        Frame::Welcome(_) => raw,
        other => panic!("expected WELCOME, got {other:?}"),
    }
}

/// PING/PONG: the connection is open and the node has read everything written before.
async fn round_trip(raw: &mut Raw, nonce: u64) {
    raw.write(&[Frame::Ping(Ping { nonce })]).await;
    loop {
        match raw.next().await {
            Frame::Pong(Pong { nonce: n }) if n == nonce => return,
            Frame::Pong(_) => {}
            other => panic!("expected PONG {nonce}, got {other:?}"),
        }
    }
}

/// A SEND written in the same stream write as HELLO, with nothing written after it, is answered
/// (it used to wait in the node's buffer until some later frame arrived).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_written_with_hello_are_answered_without_further_writes() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    let (_recipient, mut deliveries) = n.connect(20, 1).await;

    let mut raw = n.raw().await;
    raw.write(&[hello(&n, 10, 1), send(1, 20, b"pipelined")])
        .await;
    match raw.next_within(ANSWER).await {
        Some(Frame::Welcome(w)) => assert_eq!((w.account, w.device), (10, 1)),
        other => panic!("expected WELCOME, got {other:?}"),
    }
    match raw.next_within(ANSWER).await {
        Some(Frame::Accepted(a)) => {
            assert_eq!(a.msg_id, MessageId::from_u128(1));
            assert_eq!(a.recipients, 1);
        }
        other => panic!("expected ACCEPTED for the pipelined SEND, got {other:?}"),
    }
    assert_eq!(&next(&mut deliveries).await.payload[..], b"pipelined");
}

/// Every send kind and every request with an all-zero msg_id / req_id is refused with
/// INVALID_MESSAGE_ID; nothing is stored or changed, and the connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_zero_ids_are_refused_and_the_connection_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    let (_recipient, mut deliveries) = n.connect(20, 1).await;
    let mut raw = welcomed(&n, 10, 1).await;
    let zero = MessageId::NONE;
    let payload = Bytes::from_static(b"zero");
    let group = 777;
    let frames = [
        Frame::Send(Send {
            msg_id: zero,
            to_account: 20,
            to_device: 0,
            ttl_secs: 0,
            flags: 0,
            payload: payload.clone(),
        }),
        Frame::SendGroup(SendGroup {
            msg_id: zero,
            group,
            ttl_secs: 0,
            flags: 0,
            payload: payload.clone(),
        }),
        Frame::SendMulti(SendMulti {
            msg_id: zero,
            ttl_secs: 0,
            flags: 0,
            recipients: vec![MultiRecipient {
                account: 20,
                device: 0,
                header: Bytes::new(),
            }],
            payload: payload.clone(),
        }),
        Frame::SendSealed(SendSealed {
            msg_id: zero,
            to_account: 20,
            to_device: 0,
            ttl_secs: 0,
            flags: 0,
            access_key: Bytes::from_static(b"key"),
            payload: payload.clone(),
        }),
        Frame::GroupCreate(GroupCreate {
            req_id: zero,
            group,
            members: vec![20],
        }),
        Frame::GroupUpdate(GroupUpdate {
            req_id: zero,
            group,
            op: hearth_protocol::group_op::ADD_MEMBERS,
            accounts: vec![20],
        }),
        Frame::GroupGet(GroupGet {
            req_id: zero,
            group,
            offset: 0,
            limit: 10,
        }),
        Frame::PolicySet(PolicySet {
            req_id: zero,
            change: PolicyChange::Block {
                add: true,
                accounts: vec![20],
            },
        }),
        Frame::Report(Report {
            req_id: zero,
            account: 20,
        }),
    ];
    for f in frames {
        let kind = format!("{f:?}");
        raw.write(&[f]).await;
        match raw.next_within(ANSWER).await {
            Some(Frame::Error(Refused { msg_id, refusal })) => {
                assert_eq!(msg_id, zero, "{kind}");
                assert_eq!(refusal.code, ErrorCode::InvalidMessageId, "{kind}");
            }
            other => panic!("{kind}: expected INVALID_MESSAGE_ID, got {other:?}"),
        }
    }
    round_trip(&mut raw, 1).await;

    // Nothing was changed: the group does not exist, 20 is not blocked (a send reaches it), and
    // the first envelope 20 receives is that send, not one of the refused ones.
    raw.write(&[Frame::GroupGet(GroupGet {
        req_id: MessageId::from_u128(2),
        group,
        offset: 0,
        limit: 10,
    })])
    .await;
    match raw.next().await {
        Frame::Error(Refused { msg_id, refusal }) => {
            assert_eq!(msg_id, MessageId::from_u128(2));
            assert_eq!(refusal.code, ErrorCode::NoSuchGroup);
        }
        other => panic!("expected NO_SUCH_GROUP, got {other:?}"),
    }
    raw.write(&[send(3, 20, b"after")]).await;
    match raw.next().await {
        Frame::Accepted(a) => assert_eq!((a.msg_id, a.recipients), (MessageId::from_u128(3), 1)),
        other => panic!("expected ACCEPTED, got {other:?}"),
    }
    assert_eq!(&next(&mut deliveries).await.payload[..], b"after");
    assert!(raw.conn.close_reason().is_none());
}

/// A client that finishes its stream inside a frame gets MALFORMED_FRAME ("stream finished
/// inside a frame") and that close code, not NORMAL; one that finishes between frames gets
/// its answers, then NORMAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_finished_inside_a_frame_is_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    let malformed = u64::from(ErrorCode::MalformedFrame.as_u16());

    // After WELCOME: half a SEND, then FIN.
    let mut raw = welcomed(&n, 10, 1).await;
    let mut half = BytesMut::new();
    encode(&send(1, 20, b"never complete"), &mut half);
    raw.write_bytes(&half[..half.len() / 2]).await;
    raw.send.finish().unwrap();
    match raw.next_within(ANSWER).await {
        Some(Frame::Error(Refused { msg_id, refusal })) => {
            assert_eq!(msg_id, MessageId::NONE);
            assert_eq!(refusal.code, ErrorCode::MalformedFrame);
            assert_eq!(refusal.message, "stream finished inside a frame");
        }
        other => panic!("expected MALFORMED_FRAME, got {other:?}"),
    }
    assert_eq!(raw.close_code().await, malformed);

    // Before WELCOME: half a HELLO, then FIN.
    let mut raw = n.raw().await;
    let mut buf = BytesMut::new();
    encode(&hello(&n, 10, 2), &mut buf);
    raw.write_bytes(&buf[..10]).await;
    raw.send.finish().unwrap();
    assert_eq!(raw.close_code().await, malformed);

    // Between frames: the PING is answered, then the node closes with NORMAL.
    let mut raw = welcomed(&n, 10, 3).await;
    raw.write(&[Frame::Ping(Ping { nonce: 9 })]).await;
    raw.send.finish().unwrap();
    assert_eq!(raw.next().await, Frame::Pong(Pong { nonce: 9 }));
    assert_eq!(
        raw.close_code().await,
        u64::from(ErrorCode::Normal.as_u16())
    );
}

/// ACK has no answer and a QUIC close discards unread stream data: closing through the client
/// flushes (PING round trip), so acknowledged envelopes are not delivered again. On one thread
/// the close runs before QUIC transmits what the writer queued, so without the flush the ACKs
/// are lost every time, not only when a race goes badly.
#[tokio::test(flavor = "current_thread")]
async fn acks_written_just_before_a_client_close_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    let (sender, _) = n.connect(10, 1).await;
    let (client, mut deliveries) = Client::new(n.client_config(20, 1));
    client.connection().await.unwrap();
    const N: u128 = 50;
    for i in 1..=N {
        sender
            .send(envelope(20, 1, i, format!("m{i}").as_bytes()))
            .await
            .unwrap();
    }
    let mut seqs = Vec::new();
    while seqs.len() < N as usize {
        seqs.push(next(&mut deliveries).await.seq);
    }
    // Acknowledge everything and close at once.
    client.ack(&seqs).unwrap();
    client.close();
    assert_eq!(client.stopped().await.code(), Some(ErrorCode::Normal));

    let (conn, mut again) = n.connect(20, 1).await;
    sender.send(envelope(20, 1, 1000, b"marker")).await.unwrap();
    let first = next(&mut again).await;
    assert_eq!(
        &first.payload[..],
        b"marker",
        "an acknowledged envelope (seq {}) was delivered again",
        first.seq
    );
    conn.shutdown().await;
}

/// WELCOME announces the node's idle timeout and max_pending_sends (from its configuration);
/// the client exposes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_announces_idle_timeout_and_pending_send_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.limits.max_pending_sends = 77;
    let n = TestNode::start_with(cfg).await;
    let mut raw = n.raw().await;
    raw.write(&[hello(&n, 10, 1)]).await;
    match raw.next().await {
        Frame::Welcome(w) => {
            assert_eq!(w.idle_timeout_ms, 30_000);
            assert_eq!(w.max_pending_sends, 77);
        }
        other => panic!("expected WELCOME, got {other:?}"),
    }
    let (conn, _) = n.connect(10, 2).await;
    assert_eq!(conn.welcome().idle_timeout_ms, 30_000);
    assert_eq!(conn.welcome().max_pending_sends, 77);
    // The Rust client refuses an all-zero msg_id itself (the node's answer would name no
    // request).
    let zero = Outgoing {
        msg_id: MessageId::NONE,
        ..Outgoing::new(10, "x")
    };
    let err = conn.send(zero).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidMessageId));
}
