//! Bad input gets a clear error code and loses nothing; everyone else keeps being served.

mod common;

use bytes::Bytes;
use common::*;
use hearth_client::{ClientError, Connection};
use hearth_protocol::{ErrorCode, SigningKey, TokenClaims};

/// A bystander that must keep receiving while others misbehave.
struct Bystander {
    sender: Connection,
    deliveries: hearth_client::Deliveries,
    conn: Connection,
    next_id: u128,
}

impl Bystander {
    async fn new(n: &TestNode) -> Bystander {
        let (conn, deliveries) = n.connect(500, 1).await;
        let (sender, _) = n.connect(501, 1).await;
        Bystander {
            sender,
            deliveries,
            conn,
            next_id: 1_000_000,
        }
    }

    async fn still_served(&mut self) {
        self.next_id += 1;
        let body = format!("ping {}", self.next_id);
        self.sender
            .send(envelope(500, 1, self.next_id, body.as_bytes()))
            .await
            .unwrap();
        let got = next(&mut self.deliveries).await;
        assert_eq!(&got.payload[..], body.as_bytes());
        self.conn.ack(&[got.seq]).unwrap();
    }
}

/// The error of a connection attempt that must fail.
fn refusal<T>(r: Result<T, ClientError>) -> ClientError {
    match r {
        Ok(_) => panic!("the connection was accepted"),
        Err(e) => e,
    }
}

fn closed_code(e: &ClientError) -> Option<ErrorCode> {
    match e {
        ClientError::Closed { code, .. } => *code,
        ClientError::Refused { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_its_code_while_others_keep_receiving() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.limits.max_queue_len = 5;
    cfg.limits.max_envelope_bytes = 4096;
    let n = TestNode::start_with(cfg).await;
    let mut by = Bystander::new(&n).await;
    by.still_served().await;

    // Oversized envelope: refused, the connection stays usable.
    let (bad, _) = n.connect(1, 1).await;
    let big = vec![7u8; 5000];
    let err = bad.send(envelope(500, 1, 1, &big)).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Refused {
                code: ErrorCode::EnvelopeTooLarge,
                ..
            }
        ),
        "{err:?}"
    );
    // Far over the frame limit too (the node skips the bytes without buffering them).
    let huge = vec![7u8; 300_000];
    let err = bad.send(envelope(500, 1, 2, &huge)).await.unwrap_err();
    assert!(matches!(
        err,
        ClientError::Refused {
            code: ErrorCode::EnvelopeTooLarge,
            ..
        }
    ));
    bad.send(envelope(500, 1, 3, b"fine after all"))
        .await
        .unwrap();
    assert_eq!(
        &next(&mut by.deliveries).await.payload[..],
        b"fine after all"
    );
    by.still_served().await;

    // Forged and expired tokens.
    let mut cc = n.client_config(2, 1);
    cc.token = token(&SigningKey::generate(), 2, 1);
    let err = refusal(Connection::connect(&cc).await);
    assert_eq!(closed_code(&err), Some(ErrorCode::BadToken), "{err:?}");
    cc.token = n.node.signing_key().issue(&TokenClaims {
        account: 2,
        device: 1,
        expires_at: 1,
    });
    let err = refusal(Connection::connect(&cc).await);
    assert_eq!(closed_code(&err), Some(ErrorCode::TokenExpired), "{err:?}");
    cc.token = "not a token".into();
    let err = refusal(Connection::connect(&cc).await);
    assert_eq!(closed_code(&err), Some(ErrorCode::BadToken), "{err:?}");
    by.still_served().await;

    // Malformed frame: unknown type byte. Fatal for that connection only.
    let (mal, _) = n.connect(3, 1).await;
    mal.send_raw(Bytes::from_static(&[0, 0, 0, 1, 0x7f]))
        .await
        .unwrap();
    let err = tokio::time::timeout(DEADLINE, mal.closed()).await.unwrap();
    assert_eq!(
        closed_code(&err),
        Some(ErrorCode::MalformedFrame),
        "{err:?}"
    );
    // A truncated SEND body.
    let (mal, _) = n.connect(3, 2).await;
    mal.send_raw(Bytes::from_static(&[0, 0, 0, 3, 0x02, 1, 2]))
        .await
        .unwrap();
    let err = tokio::time::timeout(DEADLINE, mal.closed()).await.unwrap();
    assert_eq!(
        closed_code(&err),
        Some(ErrorCode::MalformedFrame),
        "{err:?}"
    );
    by.still_served().await;

    // Queue overflow: the sixth envelope to an offline device is refused, nothing is dropped.
    let (off, _) = n.connect(4, 1).await;
    off.close();
    let (s, _) = n.connect(5, 1).await;
    for i in 0..5u8 {
        s.send(envelope(4, 1, 100 + i as u128, &[i])).await.unwrap();
    }
    let err = s
        .send(envelope(4, 1, 200, b"one too many"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Refused {
                code: ErrorCode::QueueFull,
                ..
            }
        ),
        "{err:?}"
    );
    by.still_served().await;
    let (oc, mut od) = n.connect(4, 1).await;
    for i in 0..5u8 {
        let got = next(&mut od).await;
        assert_eq!(&got.payload[..], &[i]);
        oc.ack(&[got.seq]).unwrap();
    }
    // Unknown recipient.
    let err = s.send(envelope(999, 0, 300, b"nobody")).await.unwrap_err();
    assert!(matches!(
        err,
        ClientError::Refused {
            code: ErrorCode::NoSuchRecipient,
            ..
        }
    ));
    by.still_served().await;
    n.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_is_refused_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.limits.max_connections = 2;
    let n = TestNode::start_with(cfg).await;
    let (_a, _) = n.connect(1, 1).await;
    let (_b, _) = n.connect(1, 2).await;
    let err = refusal(Connection::connect(&n.client_config(1, 3)).await);
    assert_eq!(
        closed_code(&err),
        Some(ErrorCode::TooManyConnections),
        "{err:?}"
    );
    n.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connections_with_going_away() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    let (c, _) = n.connect(1, 1).await;
    n.node.shutdown().await;
    let err = tokio::time::timeout(DEADLINE, c.closed()).await.unwrap();
    assert_eq!(closed_code(&err), Some(ErrorCode::GoingAway), "{err:?}");
}
