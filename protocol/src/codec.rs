//! Length-prefixed frame codec: partial input is kept, lengths are capped, nothing is allocated
//! from a length the peer claims before the bytes are present.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::frame::{
    Accepted, Ack, Deliver, DeliverMeta, DeliverShared, GroupCreate, GroupGet, GroupInfo, GroupOk,
    GroupUpdate, Hello, Ping, PolicySet, Pong, Redirect, Refusal, Refused, Report, RequestOk, Send,
    SendGroup, SendMulti, SendSealed, Welcome,
};
use crate::{
    ErrorCode, Frame, MessageId, MultiRecipient, PolicyChange, DELIVER_FIXED_LEN, SEND_FIXED_LEN,
};

/// Longest `HELLO` token and `ERROR` message, in bytes.
pub(crate) const MAX_TEXT: usize = 1024;

/// Why a byte stream is not a valid frame sequence. Every case is fatal for the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length field is zero.
    #[error("frame length is zero")]
    EmptyFrame,
    /// The length field exceeds the limit and the frame is not a `SEND`.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLong {
        /// Declared length.
        len: usize,
        /// The decoder's limit.
        max: usize,
    },
    /// Unknown frame type byte.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// The body does not match the frame type's layout.
    #[error("malformed {kind} frame: {why}")]
    Malformed {
        /// Frame name.
        kind: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// The stream ended inside a frame (see [`Decoder::finish`]).
    #[error("stream finished inside a frame")]
    Unfinished,
}

impl DecodeError {
    /// The error code a node reports for this error.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::MalformedFrame
    }
}

/// What [`Decoder::decode`] found at the front of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A complete frame.
    Frame(Frame),
    /// A `SEND`, `SEND_GROUP`, `SEND_MULTI` or `SEND_SEALED` longer than the limit. Its bytes
    /// are being skipped; the connection may go on.
    OversizedSend {
        /// The `SEND`'s message id.
        msg_id: MessageId,
        /// Its declared frame length.
        len: usize,
    },
}

/// Incremental frame decoder for one direction of one stream.
#[derive(Debug, Clone)]
pub struct Decoder {
    max_frame: usize,
    skip: usize,
}

impl Decoder {
    /// A decoder that accepts frames whose length field is at most `max_frame`.
    pub fn new(max_frame: usize) -> Decoder {
        Decoder { max_frame, skip: 0 }
    }

    /// Decode one frame from the front of `buf`, consuming its bytes.
    ///
    /// Returns `Ok(None)` when more bytes are needed; the partial frame stays in `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, DecodeError> {
        if self.skip > 0 {
            let n = self.skip.min(buf.len());
            buf.advance(n);
            self.skip -= n;
            if self.skip > 0 {
                return Ok(None);
            }
        }
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len == 0 {
            return Err(DecodeError::EmptyFrame);
        }
        if len > self.max_frame {
            if buf.len() < 5 {
                return Ok(None);
            }
            if !matches!(buf[4], 0x02 | 0x08 | 0x09 | 0x0C) {
                return Err(DecodeError::TooLong {
                    len,
                    max: self.max_frame,
                });
            }
            if len < 1 + 16 {
                // Unreachable with any sane limit, but never trust the peer.
                return Err(DecodeError::TooLong {
                    len,
                    max: self.max_frame,
                });
            }
            if buf.len() < 4 + 1 + 16 {
                return Ok(None);
            }
            let mut id = [0u8; 16];
            id.copy_from_slice(&buf[5..21]);
            buf.advance(4);
            self.skip = len;
            let out = Decoded::OversizedSend {
                msg_id: MessageId(id),
                len,
            };
            // Consume what is already here of the oversized frame.
            let n = self.skip.min(buf.len());
            buf.advance(n);
            self.skip -= n;
            return Ok(Some(out));
        }
        if buf.len() < 4 + len {
            // No reserve from the claimed length: a peer's 5 bytes must not pin a whole frame.
            return Ok(None);
        }
        buf.advance(4);
        let body = buf.split_to(len).freeze();
        parse(body).map(|f| Some(Decoded::Frame(f)))
    }

    /// Whether the bytes seen so far end inside a frame: `buf` (what [`Decoder::decode`] left)
    /// holds part of one, or an oversized send is still being skipped. Meaningful after
    /// `decode` returned `Ok(None)`.
    pub fn is_mid_frame(&self, buf: &[u8]) -> bool {
        self.skip > 0 || !buf.is_empty()
    }

    /// Check that the stream may end here (the peer finished it after `decode` returned
    /// `Ok(None)`): [`DecodeError::Unfinished`] if it ends inside a frame.
    pub fn finish(&self, buf: &[u8]) -> Result<(), DecodeError> {
        if self.is_mid_frame(buf) {
            Err(DecodeError::Unfinished)
        } else {
            Ok(())
        }
    }
}

fn parse(mut b: Bytes) -> Result<Frame, DecodeError> {
    let ty = b.get_u8();
    let need = |b: &Bytes, n: usize, kind: &'static str| {
        if b.remaining() < n {
            Err(DecodeError::Malformed {
                kind,
                why: "body too short",
            })
        } else {
            Ok(())
        }
    };
    let end = |b: &Bytes, kind: &'static str| {
        if b.has_remaining() {
            Err(DecodeError::Malformed {
                kind,
                why: "trailing bytes",
            })
        } else {
            Ok(())
        }
    };
    let frame = match ty {
        0x01 => {
            let k = "HELLO";
            need(&b, 3, k)?;
            let version = b.get_u8();
            let n = b.get_u16() as usize;
            if n > MAX_TEXT {
                return Err(DecodeError::Malformed {
                    kind: k,
                    why: "token too long",
                });
            }
            need(&b, n, k)?;
            let token = text(b.split_to(n), k)?;
            end(&b, k)?;
            Frame::Hello(Hello { version, token })
        }
        0x02 => {
            need(&b, SEND_FIXED_LEN, "SEND")?;
            Frame::Send(Send {
                msg_id: id(&mut b),
                to_account: b.get_u64(),
                to_device: b.get_u32(),
                ttl_secs: b.get_u32(),
                flags: b.get_u8(),
                payload: b,
            })
        }
        0x03 => {
            let k = "ACK";
            need(&b, 2, k)?;
            let n = b.get_u16() as usize;
            if b.remaining() != n * 8 {
                return Err(DecodeError::Malformed {
                    kind: k,
                    why: "count does not match length",
                });
            }
            let mut seqs = Vec::with_capacity(n);
            for _ in 0..n {
                seqs.push(b.get_u64());
            }
            Frame::Ack(Ack { seqs })
        }
        0x04 => {
            let k = "PING";
            need(&b, 8, k)?;
            let nonce = b.get_u64();
            end(&b, k)?;
            Frame::Ping(Ping { nonce })
        }
        0x05 | 0x06 => {
            let k = if ty == 0x05 {
                "GROUP_CREATE"
            } else {
                "GROUP_UPDATE"
            };
            need(&b, 16 + 8 + if ty == 0x06 { 1 } else { 0 } + 4, k)?;
            let req_id = id(&mut b);
            let group = b.get_u64();
            let op = if ty == 0x06 { b.get_u8() } else { 0 };
            let n = b.get_u32() as usize;
            if b.remaining() / 8 != n || b.remaining() % 8 != 0 {
                return Err(DecodeError::Malformed {
                    kind: k,
                    why: "count does not match length",
                });
            }
            let accounts: Vec<u64> = (0..n).map(|_| b.get_u64()).collect();
            if ty == 0x05 {
                Frame::GroupCreate(GroupCreate {
                    req_id,
                    group,
                    members: accounts,
                })
            } else {
                Frame::GroupUpdate(GroupUpdate {
                    req_id,
                    group,
                    op,
                    accounts,
                })
            }
        }
        0x07 => {
            let k = "GROUP_GET";
            need(&b, 16 + 8 + 4 + 4, k)?;
            let f = GroupGet {
                req_id: id(&mut b),
                group: b.get_u64(),
                offset: b.get_u32(),
                limit: b.get_u32(),
            };
            end(&b, k)?;
            Frame::GroupGet(f)
        }
        0x08 => {
            need(&b, 16 + 8 + 4 + 1, "SEND_GROUP")?;
            Frame::SendGroup(SendGroup {
                msg_id: id(&mut b),
                group: b.get_u64(),
                ttl_secs: b.get_u32(),
                flags: b.get_u8(),
                payload: b,
            })
        }
        0x09 => {
            let k = "SEND_MULTI";
            need(&b, 16 + 4 + 1 + 2, k)?;
            let msg_id = id(&mut b);
            let ttl_secs = b.get_u32();
            let flags = b.get_u8();
            let n = b.get_u16() as usize;
            // Each recipient takes at least 14 bytes: cap the allocation by what is present.
            let mut recipients = Vec::with_capacity(n.min(b.remaining() / 14));
            for _ in 0..n {
                need(&b, 8 + 4 + 2, k)?;
                let account = b.get_u64();
                let device = b.get_u32();
                let h = b.get_u16() as usize;
                need(&b, h, k)?;
                recipients.push(MultiRecipient {
                    account,
                    device,
                    header: b.split_to(h),
                });
            }
            Frame::SendMulti(SendMulti {
                msg_id,
                ttl_secs,
                flags,
                recipients,
                payload: b,
            })
        }
        0x0A => {
            let k = "POLICY_SET";
            need(&b, 16 + 1, k)?;
            let req_id = id(&mut b);
            let kind = b.get_u8();
            let accounts = |b: &mut Bytes| -> Result<Vec<u64>, DecodeError> {
                need(b, 4, k)?;
                let n = b.get_u32() as usize;
                if b.remaining() / 8 != n || b.remaining() % 8 != 0 {
                    return Err(DecodeError::Malformed {
                        kind: k,
                        why: "count does not match length",
                    });
                }
                Ok((0..n).map(|_| b.get_u64()).collect())
            };
            let change = match kind {
                1 => {
                    need(&b, 1, k)?;
                    PolicyChange::Reach(b.get_u8())
                }
                2 | 3 => PolicyChange::Allow {
                    add: kind == 2,
                    accounts: accounts(&mut b)?,
                },
                4 | 5 => PolicyChange::Block {
                    add: kind == 4,
                    accounts: accounts(&mut b)?,
                },
                6 => {
                    need(&b, 1, k)?;
                    let n = b.get_u8() as usize;
                    let mut names = Vec::with_capacity(n.min(b.remaining()));
                    for _ in 0..n {
                        need(&b, 1, k)?;
                        let len = b.get_u8() as usize;
                        need(&b, len, k)?;
                        names.push(text(b.split_to(len), k)?);
                    }
                    PolicyChange::Networks(names)
                }
                7 => {
                    need(&b, 1, k)?;
                    let len = b.get_u8() as usize;
                    need(&b, len, k)?;
                    PolicyChange::AccessKey(b.split_to(len))
                }
                8 => {
                    need(&b, 2, k)?;
                    let len = b.get_u16() as usize;
                    need(&b, len, k)?;
                    PolicyChange::PushToken(b.split_to(len))
                }
                _ => {
                    return Err(DecodeError::Malformed {
                        kind: k,
                        why: "unknown policy kind",
                    })
                }
            };
            end(&b, k)?;
            Frame::PolicySet(PolicySet { req_id, change })
        }
        0x0B => {
            let k = "REPORT";
            need(&b, 16 + 8, k)?;
            let f = Report {
                req_id: id(&mut b),
                account: b.get_u64(),
            };
            end(&b, k)?;
            Frame::Report(f)
        }
        0x0C => {
            let k = "SEND_SEALED";
            need(&b, 16 + 8 + 4 + 4 + 1 + 1, k)?;
            let msg_id = id(&mut b);
            let to_account = b.get_u64();
            let to_device = b.get_u32();
            let ttl_secs = b.get_u32();
            let flags = b.get_u8();
            let n = b.get_u8() as usize;
            need(&b, n, k)?;
            let access_key = b.split_to(n);
            Frame::SendSealed(SendSealed {
                msg_id,
                to_account,
                to_device,
                ttl_secs,
                flags,
                access_key,
                payload: b,
            })
        }
        // Node → client frames of fixed size may grow trailing fields (PROTOCOL.md §2):
        // bytes after the fields known here are ignored.
        0x81 => {
            need(&b, 8 + 4 + 8 + 4 + 4, "WELCOME")?;
            let mut f = Welcome {
                account: b.get_u64(),
                device: b.get_u32(),
                server_time_ms: b.get_u64(),
                max_envelope: b.get_u32(),
                max_inflight: b.get_u32(),
                idle_timeout_ms: 0,
                max_pending_sends: 0,
            };
            // Added in revision 1.1; absent (0) from an older node.
            if b.remaining() >= 4 {
                f.idle_timeout_ms = b.get_u32();
            }
            if b.remaining() >= 4 {
                f.max_pending_sends = b.get_u32();
            }
            Frame::Welcome(f)
        }
        0x82 => {
            need(&b, 16 + 8 + 4, "ACCEPTED")?;
            Frame::Accepted(Accepted {
                msg_id: id(&mut b),
                accepted_at_ms: b.get_u64(),
                recipients: b.get_u32(),
            })
        }
        0x83 => {
            need(&b, DELIVER_FIXED_LEN, "DELIVER")?;
            Frame::Deliver(Deliver {
                meta: meta(&mut b),
                payload: b,
            })
        }
        0x84 => {
            let k = "ERROR";
            need(&b, 16 + 2 + 4 + 2, k)?;
            let msg_id = id(&mut b);
            let code = ErrorCode::from_u16(b.get_u16());
            let retry_after_ms = b.get_u32();
            let n = b.get_u16() as usize;
            if n > MAX_TEXT {
                return Err(DecodeError::Malformed {
                    kind: k,
                    why: "message too long",
                });
            }
            need(&b, n, k)?;
            let message = text(b.split_to(n), k)?;
            Frame::Error(Refused {
                msg_id,
                refusal: Refusal {
                    code,
                    retry_after_ms,
                    message: message.into(),
                },
            })
        }
        0x85 => {
            need(&b, 8, "PONG")?;
            Frame::Pong(Pong { nonce: b.get_u64() })
        }
        0x89 => {
            need(&b, 16, "OK")?;
            Frame::Ok(RequestOk { req_id: id(&mut b) })
        }
        0x86 => {
            need(&b, 16 + 8 + 8 + 4, "GROUP_OK")?;
            Frame::GroupOk(GroupOk {
                req_id: id(&mut b),
                group: b.get_u64(),
                version: b.get_u64(),
                members: b.get_u32(),
            })
        }
        0x87 => {
            let k = "GROUP_INFO";
            need(&b, 16 + 8 + 8 + 8 + 4 + 4 + 4, k)?;
            let req_id = id(&mut b);
            let group = b.get_u64();
            let version = b.get_u64();
            let creator = b.get_u64();
            let total = b.get_u32();
            let offset = b.get_u32();
            let n = b.get_u32() as usize;
            if b.remaining() / 9 != n || b.remaining() % 9 != 0 {
                return Err(DecodeError::Malformed {
                    kind: k,
                    why: "count does not match length",
                });
            }
            let members = (0..n).map(|_| (b.get_u64(), b.get_u8())).collect();
            Frame::GroupInfo(GroupInfo {
                req_id,
                group,
                version,
                creator,
                total,
                offset,
                members,
            })
        }
        0x88 => {
            let k = "DELIVER_SHARED";
            need(&b, DELIVER_FIXED_LEN + 8 + 2, k)?;
            let meta = meta(&mut b);
            let group = b.get_u64();
            let h = b.get_u16() as usize;
            need(&b, h, k)?;
            let header = b.split_to(h);
            Frame::DeliverShared(DeliverShared {
                meta,
                group,
                header,
                payload: b,
            })
        }
        0x8A => {
            let k = "REDIRECT";
            need(&b, 8 + 2, k)?;
            let epoch = b.get_u64();
            let n = b.get_u16() as usize;
            if n > MAX_TEXT {
                return Err(DecodeError::Malformed {
                    kind: k,
                    why: "address too long",
                });
            }
            need(&b, n, k)?;
            let addr = text(b.split_to(n), k)?;
            end(&b, k)?;
            Frame::Redirect(Redirect { epoch, addr })
        }
        other => return Err(DecodeError::UnknownType(other)),
    };
    Ok(frame)
}

fn id(b: &mut Bytes) -> MessageId {
    let mut id = [0u8; 16];
    b.copy_to_slice(&mut id);
    MessageId(id)
}

/// The fields `DELIVER` and `DELIVER_SHARED` share (the caller checked their length).
fn meta(b: &mut Bytes) -> DeliverMeta {
    DeliverMeta {
        seq: b.get_u64(),
        msg_id: id(b),
        from_account: b.get_u64(),
        from_device: b.get_u32(),
        accepted_at_ms: b.get_u64(),
        expires_at_ms: b.get_u64(),
        flags: b.get_u8(),
    }
}

fn put_meta(out: &mut BytesMut, m: &DeliverMeta) {
    out.put_u64(m.seq);
    out.put_slice(&m.msg_id.0);
    out.put_u64(m.from_account);
    out.put_u32(m.from_device);
    out.put_u64(m.accepted_at_ms);
    out.put_u64(m.expires_at_ms);
    out.put_u8(m.flags);
}

fn text(b: Bytes, kind: &'static str) -> Result<String, DecodeError> {
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Malformed {
        kind,
        why: "not UTF-8",
    })
}

/// Append the encoding of `frame` to `out`.
///
/// Text longer than 1024 bytes (token, error message) is truncated at a character boundary;
/// lists and headers are cut at their length fields' maximum (65,535 `SEND_MULTI` recipients,
/// 65,535-byte headers, 65,535 `ACK` seqs). Callers keep within the documented limits.
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    let start = out.len();
    out.put_u32(0); // patched below
    out.put_u8(frame.type_byte());
    match frame {
        Frame::Hello(f) => {
            out.put_u8(f.version);
            put_text(out, &f.token);
        }
        Frame::Send(f) => {
            out.reserve(SEND_FIXED_LEN + f.payload.len());
            out.put_slice(&f.msg_id.0);
            out.put_u64(f.to_account);
            out.put_u32(f.to_device);
            out.put_u32(f.ttl_secs);
            out.put_u8(f.flags);
            out.put_slice(&f.payload);
        }
        Frame::Ack(f) => {
            let n = f.seqs.len().min(u16::MAX as usize);
            out.put_u16(n as u16);
            for s in &f.seqs[..n] {
                out.put_u64(*s);
            }
        }
        Frame::Ping(Ping { nonce }) | Frame::Pong(Pong { nonce }) => out.put_u64(*nonce),
        Frame::GroupCreate(GroupCreate {
            req_id,
            group,
            members: accounts,
        })
        | Frame::GroupUpdate(GroupUpdate {
            req_id,
            group,
            accounts,
            ..
        }) => {
            out.put_slice(&req_id.0);
            out.put_u64(*group);
            if let Frame::GroupUpdate(f) = frame {
                out.put_u8(f.op);
            }
            out.put_u32(accounts.len() as u32);
            for a in accounts {
                out.put_u64(*a);
            }
        }
        Frame::GroupGet(f) => {
            out.put_slice(&f.req_id.0);
            out.put_u64(f.group);
            out.put_u32(f.offset);
            out.put_u32(f.limit);
        }
        Frame::SendGroup(f) => {
            out.reserve(16 + 8 + 4 + 1 + f.payload.len());
            out.put_slice(&f.msg_id.0);
            out.put_u64(f.group);
            out.put_u32(f.ttl_secs);
            out.put_u8(f.flags);
            out.put_slice(&f.payload);
        }
        Frame::SendMulti(f) => {
            out.put_slice(&f.msg_id.0);
            out.put_u32(f.ttl_secs);
            out.put_u8(f.flags);
            let n = f.recipients.len().min(u16::MAX as usize);
            out.put_u16(n as u16);
            for r in &f.recipients[..n] {
                out.put_u64(r.account);
                out.put_u32(r.device);
                let h = r.header.len().min(u16::MAX as usize);
                out.put_u16(h as u16);
                out.put_slice(&r.header[..h]);
            }
            out.put_slice(&f.payload);
        }
        Frame::PolicySet(f) => {
            out.put_slice(&f.req_id.0);
            let put_accounts = |out: &mut BytesMut, kind: u8, accounts: &[u64]| {
                out.put_u8(kind);
                out.put_u32(accounts.len() as u32);
                for a in accounts {
                    out.put_u64(*a);
                }
            };
            match &f.change {
                PolicyChange::Reach(mode) => {
                    out.put_u8(1);
                    out.put_u8(*mode);
                }
                PolicyChange::Allow { add, accounts } => {
                    put_accounts(out, if *add { 2 } else { 3 }, accounts)
                }
                PolicyChange::Block { add, accounts } => {
                    put_accounts(out, if *add { 4 } else { 5 }, accounts)
                }
                PolicyChange::Networks(names) => {
                    out.put_u8(6);
                    let n = names.len().min(u8::MAX as usize);
                    out.put_u8(n as u8);
                    for name in &names[..n] {
                        let mut len = name.len().min(u8::MAX as usize);
                        while !name.is_char_boundary(len) {
                            len -= 1;
                        }
                        out.put_u8(len as u8);
                        out.put_slice(&name.as_bytes()[..len]);
                    }
                }
                PolicyChange::AccessKey(key) => {
                    out.put_u8(7);
                    let len = key.len().min(u8::MAX as usize);
                    out.put_u8(len as u8);
                    out.put_slice(&key[..len]);
                }
                PolicyChange::PushToken(token) => {
                    out.put_u8(8);
                    let len = token.len().min(u16::MAX as usize);
                    out.put_u16(len as u16);
                    out.put_slice(&token[..len]);
                }
            }
        }
        Frame::Report(f) => {
            out.put_slice(&f.req_id.0);
            out.put_u64(f.account);
        }
        Frame::SendSealed(f) => {
            out.reserve(16 + 8 + 4 + 4 + 2 + f.access_key.len() + f.payload.len());
            out.put_slice(&f.msg_id.0);
            out.put_u64(f.to_account);
            out.put_u32(f.to_device);
            out.put_u32(f.ttl_secs);
            out.put_u8(f.flags);
            let len = f.access_key.len().min(u8::MAX as usize);
            out.put_u8(len as u8);
            out.put_slice(&f.access_key[..len]);
            out.put_slice(&f.payload);
        }
        Frame::Ok(f) => out.put_slice(&f.req_id.0),
        Frame::GroupOk(f) => {
            out.put_slice(&f.req_id.0);
            out.put_u64(f.group);
            out.put_u64(f.version);
            out.put_u32(f.members);
        }
        Frame::GroupInfo(f) => {
            out.put_slice(&f.req_id.0);
            out.put_u64(f.group);
            out.put_u64(f.version);
            out.put_u64(f.creator);
            out.put_u32(f.total);
            out.put_u32(f.offset);
            out.put_u32(f.members.len() as u32);
            for (a, r) in &f.members {
                out.put_u64(*a);
                out.put_u8(*r);
            }
        }
        Frame::DeliverShared(f) => {
            out.reserve(DELIVER_FIXED_LEN + 10 + f.header.len() + f.payload.len());
            put_meta(out, &f.meta);
            out.put_u64(f.group);
            let h = f.header.len().min(u16::MAX as usize);
            out.put_u16(h as u16);
            out.put_slice(&f.header[..h]);
            out.put_slice(&f.payload);
        }
        Frame::Welcome(f) => {
            out.put_u64(f.account);
            out.put_u32(f.device);
            out.put_u64(f.server_time_ms);
            out.put_u32(f.max_envelope);
            out.put_u32(f.max_inflight);
            out.put_u32(f.idle_timeout_ms);
            out.put_u32(f.max_pending_sends);
        }
        Frame::Accepted(f) => {
            out.put_slice(&f.msg_id.0);
            out.put_u64(f.accepted_at_ms);
            out.put_u32(f.recipients);
        }
        Frame::Deliver(f) => {
            out.reserve(DELIVER_FIXED_LEN + f.payload.len());
            put_meta(out, &f.meta);
            out.put_slice(&f.payload);
        }
        Frame::Error(f) => {
            out.put_slice(&f.msg_id.0);
            out.put_u16(f.refusal.code.as_u16());
            out.put_u32(f.refusal.retry_after_ms);
            put_text(out, &f.refusal.message);
        }
        Frame::Redirect(f) => {
            out.put_u64(f.epoch);
            put_text(out, &f.addr);
        }
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_text(out: &mut BytesMut, s: &str) {
    let mut n = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    out.put_u16(n as u16);
    out.put_slice(&s.as_bytes()[..n]);
}
