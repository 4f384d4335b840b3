//! One authenticated device connection: handshake, then pipelined requests over one stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hearth_protocol::{
    self as wire, encode, Decoded, Decoder, ErrorCode, Frame, MessageId, PolicyChange,
    PROTOCOL_VERSION,
};
use quinn::{Endpoint, RecvStream, SendStream, VarInt};
use tokio::sync::mpsc;

use crate::config::{client_endpoint, quic_client_config};
use crate::io::{read_more, reader, writer, Out};
use crate::shared::Shared;
use crate::types::GroupReply;
use crate::{
    random_message_id, Accepted, ClientConfig, ClientError, Deliveries, Delivery, GroupInfo,
    GroupOk, Outgoing, OutgoingGroup, OutgoingMulti, OutgoingSealed, Welcome,
};

/// Frames queued for the writer before `send` waits (backpressure from a slow node).
const OUT_CAPACITY: usize = 1024;
/// Frame limit before `WELCOME` (only `WELCOME` and `ERROR`, at most about 1 KiB, may come).
const HANDSHAKE_MAX_FRAME: usize = 4096;
/// Redirects (`REDIRECT` at `HELLO`, a cluster) followed in a row before giving up with
/// [`ClientError::Redirected`].
pub const MAX_REDIRECTS: usize = 3;
/// How long [`Connection::shutdown`] waits for the node to confirm it read everything.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// One authenticated device connection. Cheap to clone; all clones share the connection, which
/// closes (code NORMAL) when the last clone is dropped.
///
/// Requests are pipelined: many `send`s may be outstanding at once; answers are matched by
/// message id. Frames queued together are written to the stream in one write.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    quic: quinn::Connection,
    welcome: Welcome,
    tx: mpsc::Sender<Out>,
    shared: Arc<Shared>,
    /// The connection's own endpoint, when it has one (kept alive with it).
    _endpoint: Option<Endpoint>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.fail(ClientError::closed(
            ErrorCode::Normal,
            "connection handle dropped",
        ));
        self.quic.close(
            close_code(ErrorCode::Normal),
            b"client dropped the connection",
        );
    }
}

fn close_code(code: ErrorCode) -> VarInt {
    VarInt::from_u32(code.as_u16().into())
}

impl Connection {
    /// Connects from a new endpoint of its own (bound to `cfg.local_addr`, or any address),
    /// authenticates with `HELLO` and waits for `WELCOME`.
    ///
    /// A refused `HELLO` is [`ClientError::Refused`] when the node's `ERROR` frame arrives
    /// first, or [`ClientError::Closed`] with the same code when its connection close does:
    /// check [`ClientError::code`].
    pub async fn connect(cfg: &ClientConfig) -> Result<(Connection, Deliveries), ClientError> {
        let endpoint = client_endpoint(cfg.bind_addr())?;
        let quic_cfg = quic_client_config(cfg)?;
        let (tx, deliveries) = Deliveries::channel();
        let conn = Self::establish(&endpoint, &quic_cfg, cfg, tx, Some(endpoint.clone())).await?;
        Ok((conn, deliveries))
    }

    /// Like [`Connection::connect`], over a shared endpoint (see
    /// [`client_endpoint`](crate::client_endpoint)); `cfg.local_addr` is ignored.
    pub async fn connect_with(
        endpoint: &Endpoint,
        cfg: &ClientConfig,
    ) -> Result<(Connection, Deliveries), ClientError> {
        let quic_cfg = quic_client_config(cfg)?;
        Self::connect_with_config(endpoint, &quic_cfg, cfg).await
    }

    /// Like [`Connection::connect_with`], with a prepared QUIC configuration (see
    /// [`quic_client_config`](crate::quic_client_config)); `cfg.ca_pem` is not read again.
    pub async fn connect_with_config(
        endpoint: &Endpoint,
        quic_cfg: &quinn::ClientConfig,
        cfg: &ClientConfig,
    ) -> Result<(Connection, Deliveries), ClientError> {
        let (tx, deliveries) = Deliveries::channel();
        let conn = Self::establish(endpoint, quic_cfg, cfg, tx, None).await?;
        Ok((conn, deliveries))
    }

    /// Handshake, then start the reader and writer tasks; deliveries go to `deliveries`.
    pub(crate) async fn establish(
        endpoint: &Endpoint,
        quic_cfg: &quinn::ClientConfig,
        cfg: &ClientConfig,
        deliveries: mpsc::UnboundedSender<Delivery>,
        own_endpoint: Option<Endpoint>,
    ) -> Result<Connection, ClientError> {
        let mut addr = cfg.addr;
        let mut hops = 0;
        let (quic, (send, recv, buf, welcome)) = loop {
            let quic = endpoint
                .connect_with(quic_cfg.clone(), addr, &cfg.server_name)?
                .await?;
            match handshake(&quic, &cfg.token).await {
                Ok(Greeting::Welcome(parts)) => break (quic, parts),
                Ok(Greeting::Redirect(to)) => {
                    quic.close(close_code(ErrorCode::Normal), b"redirected");
                    hops += 1;
                    if hops > MAX_REDIRECTS {
                        return Err(ClientError::Redirected(format!(
                            "more than {MAX_REDIRECTS} redirects in a row (last to {to})"
                        )));
                    }
                    addr = resolve(&to, addr).await?;
                    tracing::debug!(%addr, hops, "redirected by the node");
                }
                Err(e) => {
                    quic.close(close_code(ErrorCode::Normal), b"handshake failed");
                    return Err(e);
                }
            }
        };
        let shared = Arc::new(Shared::new());
        let (tx, rx) = mpsc::channel(OUT_CAPACITY);
        // DELIVER carries up to max_envelope bytes plus a small fixed header.
        let decoder = Decoder::new((welcome.max_envelope as usize).saturating_add(1024));
        tokio::spawn(reader(
            recv,
            buf,
            decoder,
            shared.clone(),
            deliveries,
            quic.clone(),
        ));
        tokio::spawn(writer(send, rx, shared.clone(), quic.clone()));
        let inner = Inner {
            quic,
            welcome,
            tx,
            shared,
            _endpoint: own_endpoint,
        };
        Ok(Connection {
            inner: Arc::new(inner),
        })
    }

    /// What the node said at login.
    pub fn welcome(&self) -> &Welcome {
        &self.inner.welcome
    }

    /// The underlying QUIC connection (statistics, addresses).
    pub fn quic(&self) -> &quinn::Connection {
        &self.inner.quic
    }

    /// Sends one envelope and waits for the node's answer: `Ok` on `ACCEPTED`,
    /// [`ClientError::Refused`] on `ERROR`, the close reason if the connection ends first.
    ///
    /// The payload is not checked against `welcome().max_envelope`: the node decides (and
    /// answers `ENVELOPE_TOO_LARGE`). Dropping the future forgets the answer, not the `SEND`.
    pub async fn send(&self, out: Outgoing) -> Result<Accepted, ClientError> {
        let frame = Frame::Send(wire::Send {
            msg_id: out.msg_id,
            to_account: out.to_account,
            to_device: out.to_device,
            ttl_secs: out.ttl_secs,
            flags: out.flags(),
            payload: out.payload,
        });
        self.send_frame(out.msg_id, frame).await
    }

    /// Sends one envelope to every device of every member of a group (`SEND_GROUP`); answers
    /// like [`Connection::send`]. `recipients` in the answer counts device queues.
    pub async fn send_group(&self, out: OutgoingGroup) -> Result<Accepted, ClientError> {
        let flags = out.flags();
        let frame = Frame::SendGroup(wire::SendGroup {
            msg_id: out.msg_id,
            group: out.group,
            ttl_secs: out.ttl_secs,
            flags,
            payload: out.payload,
        });
        self.send_frame(out.msg_id, frame).await
    }

    /// Sends one payload to a list of recipients with per-recipient headers (`SEND_MULTI`).
    pub async fn send_multi(&self, out: OutgoingMulti) -> Result<Accepted, ClientError> {
        let flags = out.flags();
        let frame = Frame::SendMulti(wire::SendMulti {
            msg_id: out.msg_id,
            ttl_secs: out.ttl_secs,
            flags,
            recipients: out.recipients,
            payload: out.payload,
        });
        self.send_frame(out.msg_id, frame).await
    }

    async fn send_frame(&self, id: MessageId, frame: Frame) -> Result<Accepted, ClientError> {
        if id.is_none() {
            // The node would refuse it with an ERROR whose msg_id (zero) names no request.
            return Err(ClientError::Refused {
                code: ErrorCode::InvalidMessageId,
                retry_after_ms: 0,
                message: "msg_id must not be all zero (refused locally)".into(),
            });
        }
        let shared = &self.inner.shared;
        let (token, rx) = shared.add_send(id)?;
        let mut guard = Forget(Some(|| shared.forget_send(id, token)));
        if self.inner.tx.send(Out::Frame(frame)).await.is_err() {
            return Err(self.closed().await);
        }
        let answer = rx.await;
        guard.0 = None; // answered (or failed): the waiter is gone already
        match answer {
            Ok(result) => result,
            Err(_) => Err(self.closed().await),
        }
    }

    /// Creates a group with this account as creator and admin (`GROUP_CREATE`).
    pub async fn create_group(&self, group: u64, members: &[u64]) -> Result<GroupOk, ClientError> {
        let req_id = random_message_id();
        let frame = Frame::GroupCreate(wire::GroupCreate {
            req_id,
            group,
            members: members.to_vec(),
        });
        match self.request(req_id, frame).await? {
            GroupReply::Ok(ok) => Ok(ok),
            _ => Err(ClientError::Protocol(
                "unexpected answer to GROUP_CREATE".into(),
            )),
        }
    }

    /// Changes a group's membership (`GROUP_UPDATE`, `op` from `hearth_protocol::group_op`).
    pub async fn update_group(
        &self,
        group: u64,
        op: u8,
        accounts: &[u64],
    ) -> Result<GroupOk, ClientError> {
        let req_id = random_message_id();
        let frame = Frame::GroupUpdate(wire::GroupUpdate {
            req_id,
            group,
            op,
            accounts: accounts.to_vec(),
        });
        match self.request(req_id, frame).await? {
            GroupReply::Ok(ok) => Ok(ok),
            _ => Err(ClientError::Protocol(
                "unexpected answer to GROUP_UPDATE".into(),
            )),
        }
    }

    /// Reads one page of a group's members (`GROUP_GET`).
    pub async fn group_info(
        &self,
        group: u64,
        offset: u32,
        limit: u32,
    ) -> Result<GroupInfo, ClientError> {
        let req_id = random_message_id();
        let frame = Frame::GroupGet(wire::GroupGet {
            req_id,
            group,
            offset,
            limit,
        });
        match self.request(req_id, frame).await? {
            GroupReply::Info(info) => Ok(info),
            _ => Err(ClientError::Protocol(
                "unexpected answer to GROUP_GET".into(),
            )),
        }
    }

    /// Sends like [`Connection::send`] with the `URGENT` flag: an offline recipient device is
    /// woken through its push token even if it was woken recently.
    pub async fn send_urgent(&self, out: Outgoing) -> Result<Accepted, ClientError> {
        let frame = Frame::Send(wire::Send {
            msg_id: out.msg_id,
            to_account: out.to_account,
            to_device: out.to_device,
            ttl_secs: out.ttl_secs,
            flags: out.flags() | hearth_protocol::flags::URGENT,
            payload: out.payload,
        });
        self.send_frame(out.msg_id, frame).await
    }

    /// Sends an envelope without the sender's identity (`SEND_SEALED`).
    pub async fn send_sealed(&self, out: OutgoingSealed) -> Result<Accepted, ClientError> {
        let frame = Frame::SendSealed(wire::SendSealed {
            msg_id: out.msg_id,
            to_account: out.to_account,
            to_device: out.to_device,
            ttl_secs: out.ttl_secs,
            flags: 0,
            access_key: out.access_key,
            payload: out.payload,
        });
        self.send_frame(out.msg_id, frame).await
    }

    /// Changes this account's privacy settings (or this device's push token): `POLICY_SET`.
    pub async fn set_policy(&self, change: PolicyChange) -> Result<(), ClientError> {
        let req_id = random_message_id();
        match self
            .request(req_id, Frame::PolicySet(wire::PolicySet { req_id, change }))
            .await?
        {
            GroupReply::Done => Ok(()),
            _ => Err(ClientError::Protocol(
                "unexpected answer to POLICY_SET".into(),
            )),
        }
    }

    /// Reports an account as abusive (`REPORT`).
    pub async fn report(&self, account: u64) -> Result<(), ClientError> {
        let req_id = random_message_id();
        match self
            .request(req_id, Frame::Report(wire::Report { req_id, account }))
            .await?
        {
            GroupReply::Done => Ok(()),
            _ => Err(ClientError::Protocol("unexpected answer to REPORT".into())),
        }
    }

    async fn request(&self, req_id: MessageId, frame: Frame) -> Result<GroupReply, ClientError> {
        let shared = &self.inner.shared;
        let rx = shared.add_request(req_id)?;
        let mut guard = Forget(Some(|| shared.forget_request(req_id)));
        if self.inner.tx.send(Out::Frame(frame)).await.is_err() {
            return Err(self.closed().await);
        }
        let answer = rx.await;
        guard.0 = None;
        match answer {
            Ok(result) => result,
            Err(_) => Err(self.closed().await),
        }
    }

    /// Queues acknowledgements of delivered sequence numbers (0, the ephemeral seq, is
    /// skipped). Acks queued before the writer runs travel together in one `ACK` frame.
    pub fn ack(&self, seqs: &[u64]) -> Result<(), ClientError> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.inner.shared.queue_acks(seqs)
    }

    /// Round trip `PING`/`PONG`. When it returns, the node has read everything written before.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let shared = &self.inner.shared;
        let (nonce, rx) = shared.add_ping()?;
        let _guard = Forget(Some(|| shared.forget_ping(nonce)));
        let start = Instant::now();
        if self
            .inner
            .tx
            .send(Out::Frame(Frame::Ping(wire::Ping { nonce })))
            .await
            .is_err()
        {
            return Err(self.closed().await);
        }
        match rx.await {
            Ok(()) => Ok(start.elapsed()),
            Err(_) => Err(self.closed().await),
        }
    }

    /// Writes raw bytes on the stream, in order with the frames queued before (tests use it to
    /// send malformed frames). Returns once the bytes were handed to QUIC. Queued
    /// acknowledgements may be written before them.
    pub async fn send_raw(&self, bytes: Bytes) -> Result<(), ClientError> {
        if let Some(err) = self.inner.shared.close_error() {
            return Err(err);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.inner.tx.send(Out::Raw(bytes, tx)).await.is_err() || rx.await.is_err() {
            return Err(self.closed().await);
        }
        Ok(())
    }

    /// Waits until the connection has ended and returns why (the node's close code and
    /// reason, the fatal `ERROR` it sent, or a local close: code NORMAL).
    pub async fn closed(&self) -> ClientError {
        self.inner.shared.closed().await
    }

    /// Why the connection ended, or `None` while it is open.
    pub fn close_reason(&self) -> Option<ClientError> {
        self.inner.shared.close_error()
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.close_reason().is_some()
    }

    /// Closes the connection at once with code NORMAL. Frames not yet written are dropped
    /// (use [`Connection::shutdown`] to flush acknowledgements first); waiters get
    /// [`ClientError::Closed`] with code NORMAL.
    pub fn close(&self) {
        self.inner
            .shared
            .fail(ClientError::closed(ErrorCode::Normal, "closed by client"));
        self.inner
            .quic
            .close(close_code(ErrorCode::Normal), b"closed by client");
    }

    /// Flushes, then closes like [`Connection::close`]. `ACK` has no answer and closing a QUIC
    /// connection discards stream data not yet delivered, so queued acknowledgements would be
    /// lost (and redelivered later): one `PING` round trip (at most 5 s) first proves the node
    /// has read and applied every frame written before it (PROTOCOL.md §6.9).
    pub async fn shutdown(&self) {
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, self.ping()).await;
        self.close();
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("remote", &self.inner.quic.remote_address())
            .field("welcome", &self.inner.welcome)
            .field("closed", &self.close_reason())
            .finish()
    }
}

/// Runs its closure on drop unless emptied: removes the waiter of a cancelled request.
struct Forget<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for Forget<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// Opens the stream, sends `HELLO`, reads until `WELCOME`. Returns the stream halves, the
/// bytes already received after `WELCOME`, and the welcome.
/// What a node answers `HELLO` with.
enum Greeting {
    /// `WELCOME`: the stream halves, bytes read past it, and the session parameters.
    Welcome((SendStream, RecvStream, BytesMut, Welcome)),
    /// `REDIRECT`: another node serves the account, at this `host:port`.
    Redirect(String),
}

/// The address of a redirect, `host:port` (the family of `current` preferred).
async fn resolve(
    to: &str,
    current: std::net::SocketAddr,
) -> Result<std::net::SocketAddr, ClientError> {
    if let Ok(a) = to.parse() {
        return Ok(a);
    }
    let bad = |why: String| ClientError::Redirected(format!("to {to:?}: {why}"));
    let addrs: Vec<_> = tokio::net::lookup_host(to)
        .await
        .map_err(|e| bad(e.to_string()))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4() == current.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| bad("no address".into()))
}

async fn handshake(quic: &quinn::Connection, token: &str) -> Result<Greeting, ClientError> {
    let (mut send, mut recv) = quic.open_bi().await?;
    let mut buf = BytesMut::new();
    encode(
        &Frame::Hello(wire::Hello {
            version: PROTOCOL_VERSION,
            token: token.to_string(),
        }),
        &mut buf,
    );
    send.write_all(&buf).await?;
    buf.clear();
    let mut decoder = Decoder::new(HANDSHAKE_MAX_FRAME);
    loop {
        let decoded = decoder
            .decode(&mut buf)
            .map_err(|e| ClientError::Protocol(format!("before WELCOME: {e}")))?;
        match decoded {
            Some(Decoded::Frame(Frame::Welcome(w))) => {
                return Ok(Greeting::Welcome((send, recv, buf, w.into())));
            }
            Some(Decoded::Frame(Frame::Redirect(r))) => return Ok(Greeting::Redirect(r.addr)),
            Some(Decoded::Frame(Frame::Error(wire::Refused { refusal, .. }))) => {
                return Err(ClientError::Refused {
                    code: refusal.code,
                    retry_after_ms: refusal.retry_after_ms,
                    message: refusal.message.into_owned(),
                });
            }
            Some(Decoded::Frame(other)) => {
                return Err(ClientError::Protocol(format!(
                    "expected WELCOME, got frame type 0x{:02x}",
                    other.type_byte()
                )));
            }
            Some(Decoded::OversizedSend { .. }) => {
                return Err(ClientError::Protocol("expected WELCOME, got SEND".into()));
            }
            None => {
                if !read_more(&mut recv, &mut buf).await? {
                    return Err(ClientError::Closed {
                        code: None,
                        reason: "node ended the stream before WELCOME".into(),
                    });
                }
            }
        }
    }
}
