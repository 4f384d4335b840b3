//! Shared helpers of the router's integration tests: real nodes on port 0, the real client.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hearth_client::{ClientConfig, Connection, Deliveries, Delivery, Outgoing};
use hearth_protocol::{encode, Decoded, Decoder, Frame, MessageId, SigningKey, TokenClaims};
use hearth_router::{Config, Node};

/// A generous deadline for events that must happen.
pub(crate) const DEADLINE: Duration = Duration::from_secs(20);

/// A node on a temp (or given) data dir, bound to port 0.
pub(crate) struct TestNode {
    pub node: Node,
    pub data_dir: PathBuf,
}

pub(crate) fn config(data_dir: &Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_path_buf(),
        sweep_interval_ms: 100,
        // Tests of other behaviour must not trip the production rate limits.
        safety: hearth_router::SafetyConfig::permissive(),
        ..Config::default()
    }
}

impl TestNode {
    pub(crate) async fn start(data_dir: &Path) -> TestNode {
        TestNode::start_with(config(data_dir)).await
    }

    pub(crate) async fn start_with(cfg: Config) -> TestNode {
        let data_dir = cfg.data_dir.clone();
        let node = Node::start(cfg).await.expect("node starts");
        TestNode { node, data_dir }
    }

    pub(crate) fn token(&self, account: u64, device: u32) -> String {
        token(self.node.signing_key(), account, device)
    }

    pub(crate) fn client_config(&self, account: u64, device: u32) -> ClientConfig {
        ClientConfig {
            addr: self.node.quic_addr(),
            server_name: self.node.server_name().to_string(),
            ca_pem: self.node.ca_pem(),
            token: self.token(account, device),
            local_addr: None,
        }
    }

    pub(crate) async fn connect(&self, account: u64, device: u32) -> (Connection, Deliveries) {
        Connection::connect(&self.client_config(account, device))
            .await
            .expect("connects")
    }

    /// `Authorization` header value carrying the node's admin token.
    pub(crate) fn admin_auth(&self) -> String {
        format!("Bearer {}", self.node.admin_token())
    }

    /// A raw connection to the node: QUIC handshake done and the stream open, nothing written.
    pub(crate) async fn raw(&self) -> Raw {
        let cfg = self.client_config(0, 0);
        let endpoint = hearth_client::client_endpoint(cfg.bind_addr()).expect("endpoint");
        let quic_cfg = hearth_client::quic_client_config(&cfg).expect("QUIC config");
        let conn = endpoint
            .connect_with(quic_cfg, cfg.addr, &cfg.server_name)
            .expect("connect")
            .await
            .expect("handshake");
        let (send, recv) = conn.open_bi().await.expect("stream");
        Raw {
            conn,
            send,
            recv,
            buf: BytesMut::new(),
            decoder: Decoder::new(1 << 20),
            finished: false,
            _endpoint: endpoint,
        }
    }

    pub(crate) fn admin_get(&self, path: &str) -> serde_json::Value {
        let url = format!("http://{}{}", self.node.admin_addr(), path);
        ureq::get(&url)
            .set("Authorization", &self.admin_auth())
            .call()
            .expect("admin GET")
            .into_json()
            .expect("JSON")
    }

    pub(crate) fn status(&self) -> serde_json::Value {
        self.admin_get("/v1/status")
    }
}

/// A connection driven by hand over the real QUIC stack, for what the Rust client would hide
/// (pipelining behind HELLO, zero ids, a stream finished inside a frame).
pub(crate) struct Raw {
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: BytesMut,
    decoder: Decoder,
    finished: bool,
    _endpoint: quinn::Endpoint,
}

impl Raw {
    /// Write `frames` in one stream write.
    pub(crate) async fn write(&mut self, frames: &[Frame]) {
        let mut buf = BytesMut::new();
        for f in frames {
            encode(f, &mut buf);
        }
        self.write_bytes(&buf).await;
    }

    pub(crate) async fn write_bytes(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.expect("stream write");
    }

    /// The next frame from the node within `wait`; `None` on timeout or when the node ended
    /// its stream (see [`Raw::closed`]).
    pub(crate) async fn next_within(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self
                .decoder
                .decode(&mut self.buf)
                .expect("node frames decode")
            {
                Some(Decoded::Frame(f)) => return Some(f),
                Some(other) => panic!("unexpected {other:?}"),
                None => {}
            }
            if self.finished {
                return None;
            }
            let read = tokio::time::timeout_at(deadline, self.recv.read_chunk(1 << 16, true));
            match read.await {
                Err(_) => return None,
                Ok(Ok(Some(c))) => self.buf.extend_from_slice(&c.bytes),
                Ok(Ok(None)) | Ok(Err(_)) => self.finished = true,
            }
        }
    }

    /// The next frame, or a panic after [`DEADLINE`].
    pub(crate) async fn next(&mut self) -> Frame {
        self.next_within(DEADLINE)
            .await
            .expect("a frame from the node within the deadline")
    }

    /// The application close code the node closed the connection with.
    pub(crate) async fn close_code(&self) -> u64 {
        match tokio::time::timeout(DEADLINE, self.conn.closed()).await {
            Ok(quinn::ConnectionError::ApplicationClosed(c)) => c.error_code.into_inner(),
            Ok(other) => panic!("closed without an application code: {other:?}"),
            Err(_) => panic!("the node did not close the connection"),
        }
    }
}

pub(crate) fn token(key: &SigningKey, account: u64, device: u32) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    key.issue(&TokenClaims {
        account,
        device,
        expires_at: now.as_secs() + 3600,
    })
}

pub(crate) fn envelope(to_account: u64, to_device: u32, id: u128, payload: &[u8]) -> Outgoing {
    Outgoing {
        msg_id: MessageId::from_u128(id),
        to_account,
        to_device,
        ttl_secs: 0,
        ephemeral: false,
        payload: Bytes::copy_from_slice(payload),
    }
}

/// The next delivery, or a panic after the deadline.
pub(crate) async fn next(d: &mut Deliveries) -> Delivery {
    tokio::time::timeout(DEADLINE, d.next())
        .await
        .expect("a delivery within the deadline")
        .expect("connection still open")
}

/// No delivery arrives within `wait` (used only where absence is the point, after a marker).
pub(crate) async fn nothing_within(d: &mut Deliveries, wait: Duration) -> bool {
    tokio::time::timeout(wait, d.next()).await.is_err()
}

/// Poll `f` until it returns true, or panic after the deadline.
pub(crate) async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every file under `dir` that contains `needle`.
pub(crate) fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(p);
                }
            }
        }
    }
    hits
}
