//! The QUIC driver of one connection: authenticates the device, then moves frames between the
//! stream and the routing core. Decisions live in `core` and `delivery`; this file only does I/O.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use hearth_protocol::{
    self as wire, encode, Decoded, Decoder, ErrorCode, Frame, Refusal, PROTOCOL_VERSION,
};
use hearth_storage::{DeviceKey, QueueEntry};
use tokio::sync::{mpsc, watch};

use crate::core::{Live, Router, SendReply, SessionHandle};
use crate::delivery::DeliveryState;
use crate::metrics::Metrics;
use crate::policy::Origin;
use crate::{now_ms, Shared};

const READ_CHUNK: usize = 64 * 1024;
/// An empty read buffer larger than this is released, so an idle connection holds no buffer.
const IDLE_BUFFER: usize = 2 * 1024;
const WRITER_QUEUE: usize = 64;

/// How a session ended.
enum End {
    /// The node closes the connection with this code (after an `ERROR` frame).
    Close(ErrorCode, String),
    /// The connection is already gone.
    Lost,
}

/// Serve one QUIC connection until it ends.
pub(crate) async fn serve(shared: Arc<Shared>, conn: quinn::Connection) {
    let router = shared.router.clone();
    let accepted = tokio::time::timeout(router.limits.hello_timeout(), conn.accept_bi()).await;
    let Ok(Ok((send, recv))) = accepted else {
        conn.close(
            ErrorCode::ProtocolViolation.as_u16().into(),
            b"no stream opened",
        );
        return;
    };
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(WRITER_QUEUE);
    let writer = tokio::spawn(write_loop(send, out_rx));
    let mut session = Session {
        router: router.clone(),
        recv,
        buf: BytesMut::new(),
        decoder: Decoder::new(router.limits.max_frame()),
        out: BytesMut::new(),
        out_tx,
        acks: Vec::new(),
    };
    let end = match session.authenticate(&shared).await {
        Ok(origin) => {
            let (handle, live_rx) = router.attach(origin.key);
            let end = session
                .run(&origin, &handle, live_rx, shared.shutdown.subscribe())
                .await;
            router.detach(&handle);
            end
        }
        Err(end) => end,
    };
    if let End::Close(code, reason) = end {
        if code != ErrorCode::Normal {
            encode(&Frame::error(code, reason.clone()), &mut session.out);
        }
        let _ = session.flush().await;
        drop(session);
        // Let the writer finish the stream so the ERROR frame reaches the client.
        let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
        conn.close(code.as_u16().into(), reason.as_bytes());
    }
}

struct Session {
    router: Arc<Router>,
    recv: quinn::RecvStream,
    buf: BytesMut,
    decoder: Decoder,
    out: BytesMut,
    out_tx: mpsc::Sender<Bytes>,
    /// `ACK`s being applied (and `PONG`s waiting for them): a `PONG` goes out only after every
    /// `ACK` read before its `PING` was applied (PROTOCOL.md §6.9).
    acks: Vec<tokio::task::JoinHandle<()>>,
}

impl Session {
    /// Read one decoded item, waiting for bytes as needed.
    async fn read_item(&mut self) -> Result<Decoded, End> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(d)) => return Ok(d),
                Ok(None) => {}
                Err(e) => return Err(End::Close(e.code(), e.to_string())),
            }
            match self.recv.read_chunk(READ_CHUNK, true).await {
                Ok(Some(c)) => self.buf.extend_from_slice(&c.bytes),
                Ok(None) => return Err(self.finished()),
                Err(_) => return Err(End::Lost),
            }
        }
    }

    /// How the session ends when the client finished its stream: normally between frames,
    /// `MALFORMED_FRAME` inside one.
    fn finished(&self) -> End {
        match self.decoder.finish(&self.buf) {
            Ok(()) => End::Close(ErrorCode::Normal, "stream finished".into()),
            Err(e) => End::Close(e.code(), e.to_string()),
        }
    }

    async fn authenticate(&mut self, shared: &Shared) -> Result<Origin, End> {
        let first = tokio::time::timeout(self.router.limits.hello_timeout(), self.read_item())
            .await
            .map_err(|_| End::Close(ErrorCode::ProtocolViolation, "no HELLO in time".into()))??;
        let Decoded::Frame(Frame::Hello(wire::Hello { version, token })) = first else {
            return Err(End::Close(
                ErrorCode::ProtocolViolation,
                "first frame must be HELLO".into(),
            ));
        };
        if version != PROTOCOL_VERSION {
            let why = format!("protocol version {version} is not supported (1 is)");
            return Err(End::Close(ErrorCode::UnsupportedVersion, why));
        }
        let now = now_ms();
        let (claims, scope) = self
            .router
            .verifying_key
            .verify_scoped(&token, now / 1000)
            .map_err(|e| {
                let code = match e {
                    hearth_protocol::TokenError::Expired => ErrorCode::TokenExpired,
                    _ => ErrorCode::BadToken,
                };
                End::Close(code, e.to_string())
            })?;
        let privacy = &self.router.privacy;
        let network = match scope.network.as_str() {
            "" => privacy.default_network.clone(),
            n if privacy.networks.iter().any(|k| k == n) => n.to_string(),
            _ => return Err(End::Close(ErrorCode::BadToken, "unknown network".into())),
        };
        let zone = match scope.zone.as_str() {
            "" => shared.residency.default_zone.clone(),
            z => z.to_string(),
        };
        if !shared.residency.allows(&zone, &shared.region) {
            let why = format!(
                "zone {zone:?} may not be stored in region {:?}",
                shared.region
            );
            return Err(End::Close(ErrorCode::Residency, why));
        }
        let key = DeviceKey {
            account: claims.account,
            device: claims.device,
        };
        let storage_failure = |e: hearth_storage::StorageError| {
            tracing::error!(error = %e, "device registration failed");
            End::Close(ErrorCode::Internal, "storage failure".into())
        };
        self.router
            .store
            .ensure_account(key.account, &network, &zone, now)
            .await
            .map_err(storage_failure)?;
        self.router
            .store
            .register_device(key, now)
            .await
            .map_err(storage_failure)?;
        let l = &self.router.limits;
        let welcome = Frame::Welcome(wire::Welcome {
            account: key.account,
            device: key.device,
            server_time_ms: now,
            max_envelope: l.max_envelope_bytes as u32,
            max_inflight: l.max_inflight,
            idle_timeout_ms: crate::tls::IDLE_TIMEOUT.as_millis() as u32,
            max_pending_sends: u32::try_from(l.max_pending_sends).unwrap_or(u32::MAX),
        });
        encode(&welcome, &mut self.out);
        self.flush().await?;
        Ok(Origin {
            key,
            network: network.into(),
        })
    }

    async fn run(
        &mut self,
        origin: &Origin,
        handle: &SessionHandle,
        mut live_rx: mpsc::Receiver<Live>,
        mut shutdown: watch::Receiver<bool>,
    ) -> End {
        let key = handle.key;
        let mut state = DeliveryState::new(self.router.limits.max_inflight as usize);
        let mut pending = FuturesUnordered::new();
        let max_pending = self.router.limits.max_pending_sends;
        // Frames that arrived with HELLO (pipelined behind it) are handled now, in order, not
        // when the next bytes arrive.
        let mut first = self.on_input(origin, &mut state, &mut pending).err();
        let end = loop {
            if let Some(end) = first.take() {
                break end;
            }
            if let Err(end) = self.pump(key, &mut state) {
                break end;
            }
            if let Err(end) = self.flush().await {
                break end;
            }
            tokio::select! {
                biased;
                _ = handle.close_signal.notified() => {
                    if let Some((code, reason)) = handle.close_reason() {
                        break End::Close(code, reason.into());
                    }
                }
                _ = shutdown.changed() => {
                    break End::Close(ErrorCode::GoingAway, "node shutting down".into());
                }
                Some(answer) = pending.next(), if !pending.is_empty() => {
                    if let Ok(frame) = answer {
                        encode(&frame, &mut self.out);
                    }
                }
                Some(live) = live_rx.recv() => {
                    self.on_live(&mut state, live);
                    while let Ok(live) = live_rx.try_recv() {
                        self.on_live(&mut state, live);
                    }
                }
                _ = handle.wake.notified() => {}
                chunk = self.recv.read_chunk(READ_CHUNK, true), if pending.len() < max_pending => {
                    match chunk {
                        Ok(Some(c)) => self.buf.extend_from_slice(&c.bytes),
                        Ok(None) => break self.finished(),
                        Err(_) => break End::Lost,
                    }
                    if let Err(end) = self.on_input(origin, &mut state, &mut pending) {
                        break end;
                    }
                    if self.buf.is_empty() && self.buf.capacity() > IDLE_BUFFER {
                        self.buf = BytesMut::new();
                    }
                }
            }
            state.saw(handle.max_seen.load(std::sync::atomic::Ordering::Acquire));
        };
        if matches!(end, End::Lost) {
            return end;
        }
        // Answer the sends already taken: they are being made durable.
        let drain = async {
            while let Some(answer) = pending.next().await {
                if let Ok(frame) = answer {
                    encode(&frame, &mut self.out);
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
        end
    }

    /// Decode and handle every complete frame in the buffer.
    fn on_input(
        &mut self,
        origin: &Origin,
        state: &mut DeliveryState,
        pending: &mut FuturesUnordered<tokio::sync::oneshot::Receiver<Frame>>,
    ) -> Result<(), End> {
        let key = origin.key;
        loop {
            let item = match self.decoder.decode(&mut self.buf) {
                Ok(Some(item)) => item,
                Ok(None) => return Ok(()),
                Err(e) => return Err(End::Close(e.code(), e.to_string())),
            };
            let frame = match item {
                Decoded::Frame(f) => f,
                Decoded::OversizedSend { msg_id, .. } if msg_id.is_none() => {
                    Metrics::inc(&self.router.metrics.refused);
                    encode(&zero_id(true).answer(msg_id), &mut self.out);
                    continue;
                }
                Decoded::OversizedSend { msg_id, len } => {
                    Metrics::inc(&self.router.metrics.refused);
                    let message = format!(
                        "frame of {len} bytes exceeds the envelope limit of {} bytes",
                        self.router.limits.max_envelope_bytes
                    );
                    let refusal = Refusal::new(ErrorCode::EnvelopeTooLarge, message);
                    encode(&refusal.answer(msg_id), &mut self.out);
                    continue;
                }
            };
            if let Some(id) = frame.request_id().filter(|id| id.is_none()) {
                // Zero is the "no request" id of ERROR: refused, whatever the request.
                Metrics::inc(&self.router.metrics.refused);
                let send = matches!(
                    frame,
                    Frame::Send(_)
                        | Frame::SendGroup(_)
                        | Frame::SendMulti(_)
                        | Frame::SendSealed(_)
                );
                encode(&zero_id(send).answer(id), &mut self.out);
                continue;
            }
            match frame {
                Frame::Send(wire::Send {
                    msg_id,
                    to_account,
                    to_device,
                    ttl_secs,
                    flags,
                    payload,
                }) => {
                    let reply = self.router.send(
                        origin,
                        msg_id,
                        to_account,
                        to_device,
                        ttl_secs,
                        flags,
                        payload,
                        now_ms(),
                    );
                    Self::answer(reply, &mut self.out, pending);
                }
                Frame::SendGroup(wire::SendGroup {
                    msg_id,
                    group,
                    ttl_secs,
                    flags,
                    payload,
                }) => {
                    let reply = self.router.send_group(
                        origin,
                        msg_id,
                        group,
                        ttl_secs,
                        flags,
                        payload,
                        now_ms(),
                    );
                    Self::answer(reply, &mut self.out, pending);
                }
                Frame::SendMulti(wire::SendMulti {
                    msg_id,
                    ttl_secs,
                    flags,
                    recipients,
                    payload,
                }) => {
                    let reply = self.router.send_multi(
                        origin,
                        msg_id,
                        ttl_secs,
                        flags,
                        recipients,
                        payload,
                        now_ms(),
                    );
                    Self::answer(reply, &mut self.out, pending);
                }
                f @ (Frame::GroupCreate(_) | Frame::GroupUpdate(_) | Frame::GroupGet(_)) => {
                    let reply = self.router.group_request(key, f, now_ms());
                    Self::answer(reply, &mut self.out, pending);
                }
                Frame::SendSealed(wire::SendSealed {
                    msg_id,
                    to_account,
                    to_device,
                    ttl_secs,
                    flags,
                    access_key,
                    payload,
                }) => {
                    let reply = self.router.send_sealed(
                        origin,
                        msg_id,
                        to_account,
                        to_device,
                        ttl_secs,
                        flags,
                        access_key,
                        payload,
                        now_ms(),
                    );
                    Self::answer(reply, &mut self.out, pending);
                }
                Frame::PolicySet(wire::PolicySet { req_id, change }) => {
                    let reply = self.router.policy_set(origin, req_id, change, now_ms());
                    Self::answer(reply, &mut self.out, pending);
                }
                Frame::Report(wire::Report { req_id, account }) => {
                    let reply = self.router.report(origin, req_id, account, now_ms());
                    Self::answer(reply, &mut self.out, pending);
                }
                Frame::Ack(wire::Ack { seqs }) => {
                    state.on_ack(&seqs);
                    if !seqs.is_empty() {
                        self.acks.retain(|a| !a.is_finished());
                        self.acks.push(self.router.ack(key, seqs));
                    }
                }
                Frame::Ping(wire::Ping { nonce }) => {
                    let pong = Frame::Pong(wire::Pong { nonce });
                    self.acks.retain(|a| !a.is_finished());
                    if self.acks.is_empty() {
                        encode(&pong, &mut self.out);
                    } else {
                        // Answer once the ACKs read before this PING are applied; later PINGs
                        // wait for this one in turn.
                        let applying = std::mem::take(&mut self.acks);
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        self.acks.push(tokio::spawn(async move {
                            for a in applying {
                                let _ = a.await;
                            }
                            let _ = tx.send(pong);
                        }));
                        pending.push(rx);
                    }
                }
                other => {
                    let why = format!("frame type 0x{:02x} is not allowed here", other.type_byte());
                    return Err(End::Close(ErrorCode::ProtocolViolation, why));
                }
            }
        }
    }

    /// Write an immediate answer, or remember a pending one.
    fn answer(
        reply: SendReply,
        out: &mut BytesMut,
        pending: &mut FuturesUnordered<tokio::sync::oneshot::Receiver<Frame>>,
    ) {
        match reply {
            SendReply::Now(f) => encode(&f, out),
            SendReply::Later(rx) => pending.push(rx),
        }
    }

    fn on_live(&mut self, state: &mut DeliveryState, live: Live) {
        let m = &live.msg;
        if live.seq == 0 {
            Metrics::inc(&self.router.metrics.ephemeral_delivered);
            encode(&deliver(0, &m.env, m.group, &m.header), &mut self.out);
        } else if state.on_live(live.seq) {
            Metrics::inc(&self.router.metrics.delivered);
            encode(
                &deliver(live.seq, &m.env, m.group, &m.header),
                &mut self.out,
            );
        }
    }

    /// Read the queue while the window has room and the queue may hold undelivered entries.
    fn pump(&mut self, key: DeviceKey, state: &mut DeliveryState) -> Result<(), End> {
        while let Some(read) = state.want_read() {
            let entries = self
                .router
                .store
                .read_queue(key, read.from_seq, read.max)
                .map_err(|e| {
                    tracing::error!(error = %e, "queue read failed");
                    End::Close(ErrorCode::Internal, "storage failure".into())
                })?;
            let now = now_ms();
            let seqs: Vec<(u64, bool)> = entries
                .iter()
                .map(|e| (e.seq, e.envelope.expires_at_ms > now))
                .collect();
            let send = state.on_read(read.max, &seqs);
            let mut i = 0;
            for QueueEntry {
                seq,
                envelope,
                group,
                header,
            } in &entries
            {
                if send.get(i) == Some(seq) {
                    i += 1;
                    Metrics::inc(&self.router.metrics.delivered);
                    encode(&deliver(*seq, envelope, *group, header), &mut self.out);
                }
            }
            if entries.is_empty() {
                break;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        let chunk = self.out.split().freeze();
        if self.out.capacity() > IDLE_BUFFER {
            self.out = BytesMut::new();
        }
        self.out_tx.send(chunk).await.map_err(|_| End::Lost)
    }
}

/// The refusal of a send (`msg_id`) or request (`req_id`) whose id is all zero.
fn zero_id(send: bool) -> Refusal {
    let what = if send { "message" } else { "request" };
    Refusal::new(
        ErrorCode::InvalidMessageId,
        format!("the {what} id must not be zero"),
    )
}

/// The frame carrying a stored or live envelope: `DELIVER_SHARED` when it has a group or a
/// per-recipient header, else `DELIVER`.
fn deliver(seq: u64, e: &hearth_storage::StoredEnvelope, group: u64, header: &Bytes) -> Frame {
    let meta = wire::DeliverMeta {
        seq,
        msg_id: e.msg_id,
        from_account: e.from_account,
        from_device: e.from_device,
        accepted_at_ms: e.accepted_at_ms,
        expires_at_ms: e.expires_at_ms,
        flags: e.flags,
    };
    let payload = e.payload.clone();
    if group != 0 || !header.is_empty() {
        let header = header.clone();
        return Frame::DeliverShared(wire::DeliverShared {
            meta,
            group,
            header,
            payload,
        });
    }
    Frame::Deliver(wire::Deliver { meta, payload })
}

/// Write queued chunks to the stream, many per write; finish the stream when the session ends.
async fn write_loop(mut send: quinn::SendStream, mut rx: mpsc::Receiver<Bytes>) {
    let mut chunks = Vec::new();
    while let Some(first) = rx.recv().await {
        chunks.push(first);
        while chunks.len() < WRITER_QUEUE {
            match rx.try_recv() {
                Ok(c) => chunks.push(c),
                Err(_) => break,
            }
        }
        if send.write_all_chunks(&mut chunks).await.is_err() {
            return;
        }
        chunks.clear();
    }
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
}
