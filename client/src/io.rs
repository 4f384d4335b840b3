//! The two tasks that move a connection's bytes: the writer coalesces queued frames into few
//! stream writes, the reader decodes frames and hands them to waiters and the delivery channel.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use hearth_protocol::{self as wire, encode, Decoded, Decoder, ErrorCode, Frame, MessageId};
use quinn::{RecvStream, SendStream, VarInt};
use tokio::sync::{mpsc, oneshot};

use crate::shared::Shared;
use crate::types::{GroupInfo, GroupOk, GroupReply};
use crate::{Accepted, ClientError, Delivery};

/// Most sequence numbers in one `ACK` frame (8 KiB of body: far below any node's frame limit).
pub(crate) const MAX_ACK_SEQS: usize = 1024;
/// Stop adding frames to a write once it holds this many bytes.
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Largest chunk taken from the receive stream at once.
const READ_CHUNK: usize = 64 * 1024;
/// A larger empty write buffer is released after each write, so idle connections hold none.
const IDLE_BUFFER: usize = 2 * 1024;

/// What the writer task is asked to write (acknowledgements travel through [`Shared`]).
pub(crate) enum Out {
    /// A frame to encode.
    Frame(Frame),
    /// Raw bytes; the sender learns when they were handed to QUIC.
    Raw(Bytes, oneshot::Sender<()>),
}

/// Appends `ACK` frames carrying `seqs` (at most [`MAX_ACK_SEQS`] each) to `buf`.
pub(crate) fn encode_acks(seqs: &[u64], buf: &mut BytesMut) {
    for chunk in seqs.chunks(MAX_ACK_SEQS) {
        encode(
            &Frame::Ack(wire::Ack {
                seqs: chunk.to_vec(),
            }),
            buf,
        );
    }
}

fn push(item: Out, buf: &mut BytesMut, done: &mut Vec<oneshot::Sender<()>>) {
    match item {
        Out::Frame(frame) => encode(&frame, buf),
        Out::Raw(bytes, tx) => {
            buf.extend_from_slice(&bytes);
            done.push(tx);
        }
    }
}

/// Writes everything queued: all pending acknowledgements first (they free the node's
/// in-flight window), then as many queued frames as fit in one batch, in one stream write.
pub(crate) async fn writer(
    mut send: SendStream,
    mut rx: mpsc::Receiver<Out>,
    shared: Arc<Shared>,
    quic: quinn::Connection,
) {
    let mut buf = BytesMut::new();
    let mut done = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            item = rx.recv() => match item {
                Some(item) => Some(item),
                None => break, // every handle is gone; the connection was closed
            },
            _ = shared.wake_writer.notified() => None,
        };
        if shared.close_error().is_some() {
            break;
        }
        encode_acks(&shared.take_acks(), &mut buf);
        if let Some(item) = first {
            push(item, &mut buf, &mut done);
            while buf.len() < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(item) => push(item, &mut buf, &mut done),
                    Err(_) => break,
                }
            }
        }
        if buf.is_empty() {
            continue;
        }
        let chunk = buf.split().freeze();
        if buf.capacity() > IDLE_BUFFER {
            // An idle connection keeps no write buffer.
            buf = BytesMut::new();
        }
        if let Err(e) = send.write_chunk(chunk).await {
            // A lost connection is reported by the reader, which also sees it.
            if !matches!(e, quinn::WriteError::ConnectionLost(_)) {
                let err = ClientError::from(e);
                quic.close(
                    VarInt::from_u32(ErrorCode::Normal.as_u16().into()),
                    b"write failed",
                );
                shared.fail(err);
            }
            break;
        }
        for tx in done.drain(..) {
            let _ = tx.send(());
        }
    }
    let _ = send.finish();
}

/// Reads one more chunk of the stream into `buf`; false at the end of the stream.
pub(crate) async fn read_more(
    recv: &mut RecvStream,
    buf: &mut BytesMut,
) -> Result<bool, quinn::ReadError> {
    match recv.read_chunk(READ_CHUNK, true).await? {
        Some(chunk) => {
            buf.extend_from_slice(&chunk.bytes);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Decodes frames until the stream ends, then records why the connection ended.
/// `buf` may already hold bytes received with `WELCOME`.
pub(crate) async fn reader(
    mut recv: RecvStream,
    mut buf: BytesMut,
    mut decoder: Decoder,
    shared: Arc<Shared>,
    deliveries: mpsc::UnboundedSender<Delivery>,
    quic: quinn::Connection,
) {
    let err = 'read: loop {
        loop {
            let frame = match decoder.decode(&mut buf) {
                Ok(Some(Decoded::Frame(frame))) => frame,
                Ok(Some(Decoded::OversizedSend { .. })) => {
                    break 'read protocol_error(&quic, ErrorCode::ProtocolViolation, "SEND frame");
                }
                Ok(None) => break,
                Err(e) => break 'read protocol_error(&quic, e.code(), &e.to_string()),
            };
            if let Err(what) = on_frame(frame, &shared, &deliveries) {
                break 'read protocol_error(&quic, ErrorCode::ProtocolViolation, what);
            }
        }
        match read_more(&mut recv, &mut buf).await {
            Ok(true) => {}
            Ok(false) => {
                quic.close(
                    VarInt::from_u32(ErrorCode::Normal.as_u16().into()),
                    b"stream ended",
                );
                break ClientError::Closed {
                    code: None,
                    reason: "node ended the stream".into(),
                };
            }
            Err(e) => break e.into(),
        }
    };
    shared.fail(err);
}

fn protocol_error(quic: &quinn::Connection, code: ErrorCode, what: &str) -> ClientError {
    let reason = format!("unexpected data from node: {what}");
    tracing::warn!(%reason, "closing connection");
    quic.close(VarInt::from_u32(code.as_u16().into()), reason.as_bytes());
    ClientError::Protocol(reason)
}

/// Dispatches one frame from the node; `Err` names a frame the node must not send.
fn on_frame(
    frame: Frame,
    shared: &Shared,
    deliveries: &mpsc::UnboundedSender<Delivery>,
) -> Result<(), &'static str> {
    match frame {
        // If the application dropped its Deliveries, the envelope stays unacknowledged and the
        // node redelivers it later.
        Frame::Deliver(d) => {
            let _ = deliveries.send(Delivery::new(d.meta, 0, Bytes::new(), d.payload));
        }
        Frame::DeliverShared(d) => {
            let _ = deliveries.send(Delivery::new(d.meta, d.group, d.header, d.payload));
        }
        Frame::Ok(wire::RequestOk { req_id }) => {
            if !shared.resolve_request(req_id, Ok(GroupReply::Done)) {
                tracing::debug!(?req_id, "OK for no outstanding request");
            }
        }
        Frame::GroupOk(wire::GroupOk {
            req_id,
            group,
            version,
            members,
        }) => {
            let ok = GroupReply::Ok(GroupOk {
                group,
                version,
                members,
            });
            if !shared.resolve_request(req_id, Ok(ok)) {
                tracing::debug!(?req_id, "GROUP_OK for no outstanding request");
            }
        }
        Frame::GroupInfo(wire::GroupInfo {
            req_id,
            group,
            version,
            creator,
            total,
            offset,
            members,
        }) => {
            let info = GroupInfo {
                group,
                version,
                creator,
                total,
                offset,
                members,
            };
            if !shared.resolve_request(req_id, Ok(GroupReply::Info(info))) {
                tracing::debug!(?req_id, "GROUP_INFO for no outstanding request");
            }
        }
        Frame::Accepted(wire::Accepted {
            msg_id,
            accepted_at_ms,
            recipients,
        }) => {
            let accepted = Accepted {
                msg_id,
                accepted_at_ms,
                recipients,
            };
            if !shared.resolve_send(msg_id, Ok(accepted)) {
                tracing::debug!(?msg_id, "ACCEPTED for no outstanding SEND");
            }
        }
        Frame::Error(wire::Refused { msg_id, refusal }) => {
            let wire::Refusal {
                code,
                retry_after_ms,
                message,
            } = refusal;
            let message = message.into_owned();
            if msg_id != MessageId::NONE {
                let refused = ClientError::Refused {
                    code,
                    retry_after_ms,
                    message,
                };
                let answered = shared.resolve_send(msg_id, Err(refused.clone()))
                    || shared.resolve_request(msg_id, Err(refused));
                if !answered {
                    tracing::debug!(?msg_id, %code, "ERROR for no outstanding SEND");
                }
            } else if code.is_fatal() {
                // The node closes the connection next; this is the better reason. (A code this
                // version does not know is fatal by its range, PROTOCOL.md §3.)
                shared.fail(ClientError::Closed {
                    code: Some(code),
                    reason: message,
                });
            } else {
                tracing::warn!(%code, %message, "error from node");
            }
        }
        Frame::Pong(wire::Pong { nonce }) => {
            shared.resolve_ping(nonce);
        }
        Frame::Welcome(_) => return Err("second WELCOME"),
        // After WELCOME (the account's slot moved): the close with REDIRECTED follows, and
        // the next HELLO is redirected to the new owner.
        Frame::Redirect(_) => {}
        Frame::Hello(_)
        | Frame::Send(_)
        | Frame::Ack(_)
        | Frame::Ping(_)
        | Frame::GroupCreate(_)
        | Frame::GroupUpdate(_)
        | Frame::GroupGet(_)
        | Frame::SendGroup(_)
        | Frame::SendMulti(_)
        | Frame::PolicySet(_)
        | Frame::Report(_)
        | Frame::SendSealed(_) => {
            return Err("client frame type");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(mut buf: BytesMut) -> Vec<Frame> {
        let mut d = Decoder::new(1 << 20);
        let mut out = Vec::new();
        while let Some(Decoded::Frame(f)) = d.decode(&mut buf).unwrap() {
            out.push(f);
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn acks_split_into_bounded_frames() {
        let seqs: Vec<u64> = (1..=2500).collect();
        let mut buf = BytesMut::new();
        encode_acks(&seqs, &mut buf);
        let frames = decode_all(buf);
        let sizes: Vec<usize> = frames
            .iter()
            .map(|f| match f {
                Frame::Ack(a) => a.seqs.len(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(sizes, vec![1024, 1024, 452]);
        let back: Vec<u64> = frames
            .into_iter()
            .flat_map(|f| match f {
                Frame::Ack(a) => a.seqs,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(back, seqs);
    }

    #[test]
    fn no_acks_no_bytes() {
        let mut buf = BytesMut::new();
        encode_acks(&[], &mut buf);
        assert!(buf.is_empty());
    }

    #[test]
    fn frames_dispatch_to_waiters_and_deliveries() {
        let shared = Shared::new();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let id = MessageId::from_u128(9);
        let (_, mut waiter) = shared.add_send(id).unwrap();
        let (nonce, mut pong) = shared.add_ping().unwrap();
        on_frame(
            Frame::Accepted(wire::Accepted {
                msg_id: id,
                accepted_at_ms: 3,
                recipients: 2,
            }),
            &shared,
            &tx,
        )
        .unwrap();
        assert_eq!(waiter.try_recv().unwrap().unwrap().recipients, 2);
        on_frame(Frame::Pong(wire::Pong { nonce }), &shared, &tx).unwrap();
        pong.try_recv().unwrap();
        let deliver = Frame::Deliver(wire::Deliver {
            meta: wire::DeliverMeta {
                seq: 4,
                msg_id: id,
                from_account: 1,
                from_device: 2,
                accepted_at_ms: 3,
                expires_at_ms: 5,
                flags: 0,
            },
            payload: Bytes::from_static(b"x"),
        });
        on_frame(deliver, &shared, &tx).unwrap();
        assert_eq!(rx.try_recv().unwrap().seq, 4);
        // A non-fatal ERROR not tied to a SEND changes nothing; a fatal one ends the connection.
        on_frame(Frame::error(ErrorCode::Overloaded, "busy"), &shared, &tx).unwrap();
        assert!(shared.close_error().is_none());
        on_frame(Frame::error(ErrorCode::Replaced, "replaced"), &shared, &tx).unwrap();
        let err = shared.close_error().unwrap();
        assert_eq!(err.code(), Some(ErrorCode::Replaced));
        assert!(err.to_string().contains("replaced"));
        assert!(on_frame(Frame::Ping(wire::Ping { nonce: 1 }), &shared, &tx).is_err());
    }
}
