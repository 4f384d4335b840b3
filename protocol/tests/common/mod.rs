//! Helpers shared by the protocol's integration tests.

#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use hearth_protocol::{
    encode, flags, ErrorCode, Frame, MessageId, DEFAULT_MAX_ENVELOPE, DELIVER_FIXED_LEN,
    SEND_FIXED_LEN,
};
use proptest::prelude::*;

/// Longest `HELLO` token and `ERROR` message on the wire.
pub const MAX_TEXT: usize = 1024;

/// The node's frame limit: the largest `SEND` it accepts.
pub const NODE_LIMIT: usize = 1 + SEND_FIXED_LEN + DEFAULT_MAX_ENVELOPE;

/// A client's frame limit: the largest `DELIVER` it can receive.
pub const CLIENT_LIMIT: usize = 1 + DELIVER_FIXED_LEN + DEFAULT_MAX_ENVELOPE;

/// Every type byte of protocol version 1.
pub const TYPES: [u8; 9] = [0x01, 0x02, 0x03, 0x04, 0x81, 0x82, 0x83, 0x84, 0x85];

/// The encoding of one frame.
pub fn enc(f: &Frame) -> BytesMut {
    let mut out = BytesMut::new();
    encode(f, &mut out);
    out
}

/// A raw frame: length prefix, type byte, body, with no validation.
pub fn raw(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(ty);
    v.extend_from_slice(body);
    v
}

/// A distinctive message id.
pub fn id() -> MessageId {
    MessageId::from_u128(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff)
}

/// At least one frame of every variant, with edge values (empty and full-width fields).
pub fn samples() -> Vec<Frame> {
    vec![
        Frame::Hello {
            version: 1,
            token: "ht1.AAAA".into(),
        },
        Frame::Hello {
            version: 0xff,
            token: String::new(),
        },
        Frame::Send {
            msg_id: id(),
            to_account: 43,
            to_device: 0,
            ttl_secs: 3600,
            flags: 0,
            payload: Bytes::from_static(b"\xde\xad\xbe\xef"),
        },
        Frame::Send {
            msg_id: MessageId([0xff; 16]),
            to_account: u64::MAX,
            to_device: u32::MAX,
            ttl_secs: u32::MAX,
            flags: flags::EPHEMERAL,
            payload: Bytes::new(),
        },
        Frame::Ack {
            seqs: vec![1, 2, u64::MAX],
        },
        Frame::Ack { seqs: vec![] },
        Frame::Ping {
            nonce: 0x0102_0304_0506_0708,
        },
        Frame::Welcome {
            account: 42,
            device: 7,
            server_time_ms: 1_700_000_000_000,
            max_envelope: DEFAULT_MAX_ENVELOPE as u32,
            max_inflight: 256,
        },
        Frame::Accepted {
            msg_id: id(),
            accepted_at_ms: 1_700_000_000_123,
            recipients: 2,
        },
        Frame::Deliver {
            seq: 1,
            msg_id: id(),
            from_account: 42,
            from_device: 7,
            accepted_at_ms: 1_700_000_000_123,
            expires_at_ms: 1_700_003_600_123,
            flags: 0,
            payload: Bytes::from(vec![0x5a; 300]),
        },
        Frame::Deliver {
            seq: 0,
            msg_id: MessageId::NONE,
            from_account: 0,
            from_device: 0,
            accepted_at_ms: 0,
            expires_at_ms: u64::MAX,
            flags: flags::EPHEMERAL,
            payload: Bytes::new(),
        },
        Frame::Error {
            msg_id: id(),
            code: ErrorCode::Overloaded,
            retry_after_ms: 500,
            message: "overloaded".into(),
        },
        Frame::error(ErrorCode::BadToken, "token signature is invalid: ünïcödé ✓"),
        Frame::Pong { nonce: u64::MAX },
    ]
}

/// `s` cut to at most 1024 bytes on a character boundary, as the encoder does.
pub fn truncated(s: &str) -> String {
    let mut n = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    s[..n].to_string()
}

/// The frame a decoder yields after `f` is encoded: text truncated, at most 65535 seqs.
pub fn normalized(f: &Frame) -> Frame {
    match f.clone() {
        Frame::Hello { version, token } => Frame::Hello {
            version,
            token: truncated(&token),
        },
        Frame::Error {
            msg_id,
            code,
            retry_after_ms,
            message,
        } => Frame::Error {
            msg_id,
            code,
            retry_after_ms,
            message: truncated(&message),
        },
        Frame::Ack { mut seqs } => {
            seqs.truncate(u16::MAX as usize);
            Frame::Ack { seqs }
        }
        other => other,
    }
}

fn arb_id() -> impl Strategy<Value = MessageId> {
    any::<[u8; 16]>().prop_map(MessageId)
}

fn arb_payload() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..600).prop_map(Bytes::from)
}

fn arb_text() -> impl Strategy<Value = String> {
    // Up to 400 chars of any width: sometimes over 1024 bytes, so truncation is exercised.
    prop_oneof![".{0,40}", ".{0,400}"]
}

/// Any frame, with fields over their whole range.
pub fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u8>(), arb_text()).prop_map(|(version, token)| Frame::Hello { version, token }),
        (
            arb_id(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u8>(),
            arb_payload()
        )
            .prop_map(
                |(msg_id, to_account, to_device, ttl_secs, flags, payload)| Frame::Send {
                    msg_id,
                    to_account,
                    to_device,
                    ttl_secs,
                    flags,
                    payload
                }
            ),
        prop::collection::vec(any::<u64>(), 0..100).prop_map(|seqs| Frame::Ack { seqs }),
        any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
        (
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(
                |(account, device, server_time_ms, max_envelope, max_inflight)| Frame::Welcome {
                    account,
                    device,
                    server_time_ms,
                    max_envelope,
                    max_inflight
                }
            ),
        (arb_id(), any::<u64>(), any::<u32>()).prop_map(|(msg_id, accepted_at_ms, recipients)| {
            Frame::Accepted {
                msg_id,
                accepted_at_ms,
                recipients,
            }
        }),
        (
            (any::<u64>(), arb_id(), any::<u64>(), any::<u32>()),
            (any::<u64>(), any::<u64>(), any::<u8>(), arb_payload())
        )
            .prop_map(
                |(
                    (seq, msg_id, from_account, from_device),
                    (accepted_at_ms, expires_at_ms, flags, payload),
                )| Frame::Deliver {
                    seq,
                    msg_id,
                    from_account,
                    from_device,
                    accepted_at_ms,
                    expires_at_ms,
                    flags,
                    payload
                }
            ),
        (
            arb_id(),
            prop::sample::select(ErrorCode::ALL.to_vec()),
            any::<u32>(),
            arb_text()
        )
            .prop_map(|(msg_id, code, retry_after_ms, message)| Frame::Error {
                msg_id,
                code,
                retry_after_ms,
                message
            }),
        any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
    ]
}
