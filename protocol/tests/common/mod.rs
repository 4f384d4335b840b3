//! Helpers shared by the protocol's integration tests.

#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use hearth_protocol::{
    encode, flags, group_op, reach, role, Accepted, Ack, Deliver, DeliverMeta, DeliverShared,
    ErrorCode, Frame, GroupCreate, GroupGet, GroupInfo, GroupOk, GroupUpdate, Hello, MessageId,
    MultiRecipient, Ping, PolicyChange, PolicySet, Pong, Redirect, Refusal, Refused, Report,
    RequestOk, Send, SendGroup, SendMulti, SendSealed, Welcome, DEFAULT_MAX_ENVELOPE,
    DELIVER_FIXED_LEN, SEND_FIXED_LEN,
};
use proptest::prelude::*;

/// Longest `HELLO` token and `ERROR` message on the wire.
pub(crate) const MAX_TEXT: usize = 1024;

/// Fixed bytes of a `GROUP_CREATE` body before its accounts (req_id, group, count).
pub(crate) const GROUP_CREATE_FIXED_LEN: usize = 16 + 8 + 4;
/// Fixed bytes of a `GROUP_UPDATE` body before its accounts (req_id, group, op, count).
pub(crate) const GROUP_UPDATE_FIXED_LEN: usize = 16 + 8 + 1 + 4;
/// Bytes of a `GROUP_GET` body.
pub(crate) const GROUP_GET_LEN: usize = 16 + 8 + 4 + 4;
/// Fixed bytes of a `SEND_GROUP` body before its payload (msg_id, group, ttl, flags).
pub(crate) const SEND_GROUP_FIXED_LEN: usize = 16 + 8 + 4 + 1;
/// Fixed bytes of a `SEND_MULTI` body before its recipients (msg_id, ttl, flags, count).
pub(crate) const SEND_MULTI_FIXED_LEN: usize = 16 + 4 + 1 + 2;
/// Fixed bytes of one `SEND_MULTI` recipient before its header (account, device, header_len).
pub(crate) const RECIPIENT_FIXED_LEN: usize = 8 + 4 + 2;
/// Bytes of a `GROUP_OK` body.
pub(crate) const GROUP_OK_LEN: usize = 16 + 8 + 8 + 4;
/// Fixed bytes of a `GROUP_INFO` body before its members.
pub(crate) const GROUP_INFO_FIXED_LEN: usize = 16 + 8 + 8 + 8 + 4 + 4 + 4;
/// Bytes of one `GROUP_INFO` member entry (account, role).
pub(crate) const GROUP_INFO_ENTRY_LEN: usize = 8 + 1;
/// Fixed bytes of a `DELIVER_SHARED` body before its header (the `DELIVER` fields, group,
/// header_len).
pub(crate) const DELIVER_SHARED_FIXED_LEN: usize = DELIVER_FIXED_LEN + 8 + 2;

/// Fixed bytes of a `POLICY_SET` body before its change (req_id, kind).
pub(crate) const POLICY_SET_FIXED_LEN: usize = 16 + 1;
/// Fixed bytes of a `POLICY_SET` body with an account list (kinds 2..=5) before the accounts.
pub(crate) const POLICY_LIST_FIXED_LEN: usize = POLICY_SET_FIXED_LEN + 4;
/// Bytes of a `REPORT` body (req_id, account).
pub(crate) const REPORT_LEN: usize = 16 + 8;
/// Fixed bytes of a `SEND_SEALED` body before its access key (msg_id, account, device, ttl,
/// flags, key_len).
pub(crate) const SEND_SEALED_FIXED_LEN: usize = 16 + 8 + 4 + 4 + 1 + 1;
/// Bytes of a `WELCOME` body of revision 1.0 (account, device, server time, max_envelope,
/// max_inflight); revision 1.1 adds idle_timeout_ms and max_pending_sends.
pub(crate) const WELCOME_V1_0_LEN: usize = 8 + 4 + 8 + 4 + 4;

/// Bytes of an `OK` body (req_id).
pub(crate) const OK_LEN: usize = 16;

/// The node's longest delivery access key (PROTOCOL.md §8).
pub(crate) const MAX_ACCESS_KEY: usize = 64;
/// The node's longest push token.
pub(crate) const MAX_PUSH_TOKEN: usize = 512;
/// Most networks one `POLICY_SET` kind 6 may name.
pub(crate) const MAX_NETWORKS: usize = 16;

/// The node's default `max_multi_recipients`.
pub(crate) const DEFAULT_MAX_MULTI_RECIPIENTS: usize = 1_000;
/// The node's default `max_header_bytes`.
pub(crate) const DEFAULT_MAX_HEADER: usize = 256;

/// The largest `SEND` the node accepts (`length` field value).
pub(crate) const SEND_LIMIT: usize = 1 + SEND_FIXED_LEN + DEFAULT_MAX_ENVELOPE;

/// The node's frame limit (PROTOCOL.md §4): the largest envelope, 64 bytes for the fixed parts
/// of a frame, and the largest `SEND_MULTI` recipient list (most recipients, each with the
/// longest header). As `hearth_router`'s `Limits::max_frame`.
pub(crate) const NODE_LIMIT: usize = DEFAULT_MAX_ENVELOPE
    + 64
    + DEFAULT_MAX_MULTI_RECIPIENTS * (RECIPIENT_FIXED_LEN + DEFAULT_MAX_HEADER);

/// The largest valid `SEND_MULTI` (most recipients, longest headers, largest payload).
pub(crate) const LARGEST_SEND_MULTI: usize = 1
    + SEND_MULTI_FIXED_LEN
    + DEFAULT_MAX_MULTI_RECIPIENTS * (RECIPIENT_FIXED_LEN + DEFAULT_MAX_HEADER)
    + DEFAULT_MAX_ENVELOPE;

/// The largest `DELIVER` a client receives.
pub(crate) const DELIVER_LIMIT: usize = 1 + DELIVER_FIXED_LEN + DEFAULT_MAX_ENVELOPE;

/// A client's frame limit: the largest `DELIVER_SHARED` it can receive (longest header, largest
/// payload). PROTOCOL.md §4.
pub(crate) const CLIENT_LIMIT: usize =
    1 + DELIVER_SHARED_FIXED_LEN + DEFAULT_MAX_HEADER + DEFAULT_MAX_ENVELOPE;

/// Most members in a `GROUP_INFO` page whose frame is no longer than the largest `DELIVER`.
pub(crate) const MAX_PAGE: usize =
    (DELIVER_LIMIT - 1 - GROUP_INFO_FIXED_LEN) / GROUP_INFO_ENTRY_LEN;

/// The largest `SEND_SEALED` the node accepts: the longest valid access key, the largest payload.
pub(crate) const LARGEST_SEND_SEALED: usize =
    1 + SEND_SEALED_FIXED_LEN + MAX_ACCESS_KEY + DEFAULT_MAX_ENVELOPE;

/// Every type byte of protocol version 1, in increasing order.
pub(crate) const TYPES: [u8; 22] = [
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x81, 0x82, 0x83, 0x84,
    0x85, 0x86, 0x87, 0x88, 0x89, 0x8A,
];

/// Type bytes whose oversized frames are skipped (answered `ENVELOPE_TOO_LARGE`), not fatal.
pub(crate) const SEND_TYPES: [u8; 4] = [0x02, 0x08, 0x09, 0x0C];

/// The frame name PROTOCOL.md and `DecodeError::Malformed` use for a type byte.
pub(crate) fn kind(ty: u8) -> &'static str {
    match ty {
        0x01 => "HELLO",
        0x02 => "SEND",
        0x03 => "ACK",
        0x04 => "PING",
        0x05 => "GROUP_CREATE",
        0x06 => "GROUP_UPDATE",
        0x07 => "GROUP_GET",
        0x08 => "SEND_GROUP",
        0x09 => "SEND_MULTI",
        0x0A => "POLICY_SET",
        0x0B => "REPORT",
        0x0C => "SEND_SEALED",
        0x81 => "WELCOME",
        0x82 => "ACCEPTED",
        0x83 => "DELIVER",
        0x84 => "ERROR",
        0x85 => "PONG",
        0x86 => "GROUP_OK",
        0x87 => "GROUP_INFO",
        0x88 => "DELIVER_SHARED",
        0x89 => "OK",
        0x8A => "REDIRECT",
        _ => unreachable!("type 0x{ty:02x}"),
    }
}

/// A `SEND_MULTI` recipient.
pub(crate) fn rcpt(account: u64, device: u32, header: &[u8]) -> MultiRecipient {
    MultiRecipient {
        account,
        device,
        header: Bytes::copy_from_slice(header),
    }
}

/// The encoding of one frame.
pub(crate) fn enc(f: &Frame) -> BytesMut {
    let mut out = BytesMut::new();
    encode(f, &mut out);
    out
}

/// A raw frame: length prefix, type byte, body, with no validation.
pub(crate) fn raw(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(ty);
    v.extend_from_slice(body);
    v
}

/// A distinctive message id.
pub(crate) fn id() -> MessageId {
    MessageId::from_u128(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff)
}

/// At least one frame of every variant, with edge values (empty and full-width fields).
pub(crate) fn samples() -> Vec<Frame> {
    let mut v = issue2_and_group_samples();
    v.extend(privacy_samples());
    v
}

fn issue2_and_group_samples() -> Vec<Frame> {
    vec![
        Frame::Hello(Hello {
            version: 1,
            token: "ht1.AAAA".into(),
        }),
        Frame::Hello(Hello {
            version: 0xff,
            token: String::new(),
        }),
        Frame::Send(Send {
            msg_id: id(),
            to_account: 43,
            to_device: 0,
            ttl_secs: 3600,
            flags: 0,
            payload: Bytes::from_static(b"\xde\xad\xbe\xef"),
        }),
        Frame::Send(Send {
            msg_id: MessageId([0xff; 16]),
            to_account: u64::MAX,
            to_device: u32::MAX,
            ttl_secs: u32::MAX,
            flags: flags::EPHEMERAL,
            payload: Bytes::new(),
        }),
        Frame::Ack(Ack {
            seqs: vec![1, 2, u64::MAX],
        }),
        Frame::Ack(Ack { seqs: vec![] }),
        Frame::Ping(Ping {
            nonce: 0x0102_0304_0506_0708,
        }),
        Frame::Welcome(Welcome {
            account: 42,
            device: 7,
            server_time_ms: 1_700_000_000_000,
            max_envelope: DEFAULT_MAX_ENVELOPE as u32,
            max_inflight: 256,
            idle_timeout_ms: 30_000,
            max_pending_sends: 1024,
        }),
        Frame::Accepted(Accepted {
            msg_id: id(),
            accepted_at_ms: 1_700_000_000_123,
            recipients: 2,
        }),
        Frame::Deliver(Deliver {
            meta: DeliverMeta {
                seq: 1,
                msg_id: id(),
                from_account: 42,
                from_device: 7,
                accepted_at_ms: 1_700_000_000_123,
                expires_at_ms: 1_700_003_600_123,
                flags: 0,
            },
            payload: Bytes::from(vec![0x5a; 300]),
        }),
        Frame::Deliver(Deliver {
            meta: DeliverMeta {
                seq: 0,
                msg_id: MessageId::NONE,
                from_account: 0,
                from_device: 0,
                accepted_at_ms: 0,
                expires_at_ms: u64::MAX,
                flags: flags::EPHEMERAL,
            },
            payload: Bytes::new(),
        }),
        Frame::Error(Refused {
            msg_id: id(),
            refusal: Refusal {
                code: ErrorCode::Overloaded,
                retry_after_ms: 500,
                message: "overloaded".into(),
            },
        }),
        Frame::error(ErrorCode::BadToken, "token signature is invalid: ünïcödé ✓"),
        Frame::Pong(Pong { nonce: u64::MAX }),
        Frame::GroupCreate(GroupCreate {
            req_id: id(),
            group: 7,
            members: vec![43, 44, u64::MAX],
        }),
        Frame::GroupCreate(GroupCreate {
            req_id: MessageId::NONE,
            group: 0,
            members: vec![],
        }),
        Frame::GroupUpdate(GroupUpdate {
            req_id: id(),
            group: 7,
            op: group_op::ADD_MEMBERS,
            accounts: vec![45],
        }),
        Frame::GroupUpdate(GroupUpdate {
            req_id: MessageId([0xff; 16]),
            group: u64::MAX,
            op: group_op::DELETE,
            accounts: vec![],
        }),
        Frame::GroupUpdate(GroupUpdate {
            // Unknown ops decode: the node, not the codec, refuses them (INVALID_REQUEST).
            req_id: id(),
            group: 1,
            op: 0xff,
            accounts: vec![0, 1, 2, 3],
        }),
        Frame::GroupGet(GroupGet {
            req_id: id(),
            group: 7,
            offset: 0,
            limit: 100,
        }),
        Frame::GroupGet(GroupGet {
            req_id: MessageId::NONE,
            group: u64::MAX,
            offset: u32::MAX,
            limit: u32::MAX,
        }),
        Frame::SendGroup(SendGroup {
            msg_id: id(),
            group: 7,
            ttl_secs: 3600,
            flags: 0,
            payload: Bytes::from_static(b"\xde\xad\xbe\xef"),
        }),
        Frame::SendGroup(SendGroup {
            msg_id: MessageId([0xff; 16]),
            group: u64::MAX,
            ttl_secs: u32::MAX,
            flags: flags::EPHEMERAL,
            payload: Bytes::new(),
        }),
        Frame::SendMulti(SendMulti {
            msg_id: id(),
            ttl_secs: 3600,
            flags: 0,
            recipients: vec![rcpt(43, 0, b"\x01\x02\x03"), rcpt(44, 2, b"")],
            payload: Bytes::from_static(b"\xde\xad\xbe\xef"),
        }),
        Frame::SendMulti(SendMulti {
            msg_id: MessageId([0xff; 16]),
            ttl_secs: u32::MAX,
            flags: flags::EPHEMERAL,
            recipients: vec![rcpt(u64::MAX, u32::MAX, &[0xee; 256])],
            payload: Bytes::new(),
        }),
        Frame::SendMulti(SendMulti {
            msg_id: id(),
            ttl_secs: 0,
            flags: 0,
            recipients: vec![],
            payload: Bytes::from_static(b"no recipients"),
        }),
        Frame::GroupOk(GroupOk {
            req_id: id(),
            group: 7,
            version: 3,
            members: 4,
        }),
        Frame::GroupOk(GroupOk {
            req_id: MessageId([0xff; 16]),
            group: u64::MAX,
            version: u64::MAX,
            members: u32::MAX,
        }),
        Frame::GroupInfo(GroupInfo {
            req_id: id(),
            group: 7,
            version: 3,
            creator: 42,
            total: 4,
            offset: 1,
            members: vec![(43, role::MEMBER), (44, role::ADMIN), (u64::MAX, 0xff)],
        }),
        Frame::GroupInfo(GroupInfo {
            req_id: MessageId::NONE,
            group: u64::MAX,
            version: u64::MAX,
            creator: u64::MAX,
            total: u32::MAX,
            offset: u32::MAX,
            members: vec![],
        }),
        Frame::DeliverShared(DeliverShared {
            meta: DeliverMeta {
                seq: 2,
                msg_id: id(),
                from_account: 42,
                from_device: 7,
                accepted_at_ms: 1_700_000_000_123,
                expires_at_ms: 1_700_003_600_123,
                flags: 0,
            },
            group: 7,
            header: Bytes::new(),
            payload: Bytes::from(vec![0x5a; 300]),
        }),
        Frame::DeliverShared(DeliverShared {
            meta: DeliverMeta {
                seq: u64::MAX,
                msg_id: id(),
                from_account: u64::MAX,
                from_device: u32::MAX,
                accepted_at_ms: u64::MAX,
                expires_at_ms: u64::MAX,
                flags: 0xff,
            },
            group: 0,
            header: Bytes::from(vec![0xee; 256]),
            payload: Bytes::new(),
        }),
        Frame::DeliverShared(DeliverShared {
            meta: DeliverMeta {
                seq: 0,
                msg_id: MessageId::NONE,
                from_account: 0,
                from_device: 0,
                accepted_at_ms: 0,
                expires_at_ms: 0,
                flags: flags::EPHEMERAL,
            },
            group: u64::MAX,
            header: Bytes::from_static(b"h"),
            payload: Bytes::from_static(b"p"),
        }),
    ]
}

/// A `POLICY_SET` with the sample request id.
pub(crate) fn policy(change: PolicyChange) -> Frame {
    Frame::PolicySet(PolicySet {
        req_id: id(),
        change,
    })
}

/// Frames of the privacy extension: every `POLICY_SET` kind (empty and full-width values, a
/// reach mode the node refuses but the codec passes through), `REPORT`, `SEND_SEALED`, `OK`.
pub(crate) fn privacy_samples() -> Vec<Frame> {
    vec![
        policy(PolicyChange::Reach(reach::CONTACTS)),
        Frame::PolicySet(PolicySet {
            req_id: MessageId([0xff; 16]),
            change: PolicyChange::Reach(0xff),
        }),
        policy(PolicyChange::Allow {
            add: true,
            accounts: vec![43, 44, u64::MAX],
        }),
        policy(PolicyChange::Allow {
            add: false,
            accounts: vec![],
        }),
        policy(PolicyChange::Block {
            add: true,
            accounts: vec![666],
        }),
        policy(PolicyChange::Block {
            add: false,
            accounts: vec![0, 666, u64::MAX],
        }),
        policy(PolicyChange::Networks(vec![
            "photos".into(),
            String::new(),
            "ünïcödé ✓".into(),
        ])),
        policy(PolicyChange::Networks(vec![])),
        policy(PolicyChange::Networks(vec!["n".repeat(255); 3])),
        policy(PolicyChange::AccessKey(Bytes::from(vec![
            0x11;
            MAX_ACCESS_KEY
        ]))),
        policy(PolicyChange::AccessKey(Bytes::new())),
        policy(PolicyChange::AccessKey(Bytes::from(vec![0x22; 255]))),
        policy(PolicyChange::PushToken(Bytes::from(vec![
            0x33;
            MAX_PUSH_TOKEN
        ]))),
        policy(PolicyChange::PushToken(Bytes::new())),
        Frame::Report(Report {
            req_id: id(),
            account: 666,
        }),
        Frame::Report(Report {
            req_id: MessageId::NONE,
            account: u64::MAX,
        }),
        Frame::SendSealed(SendSealed {
            msg_id: id(),
            to_account: 43,
            to_device: 0,
            ttl_secs: 3600,
            flags: flags::URGENT,
            access_key: Bytes::from(vec![0x44; 32]),
            payload: Bytes::from_static(b"\xde\xad\xbe\xef"),
        }),
        Frame::SendSealed(SendSealed {
            msg_id: MessageId([0xff; 16]),
            to_account: u64::MAX,
            to_device: u32::MAX,
            ttl_secs: u32::MAX,
            flags: 0xff,
            access_key: Bytes::from(vec![0x55; 255]),
            payload: Bytes::new(),
        }),
        Frame::SendSealed(SendSealed {
            // An empty key decodes; the node refuses it (BAD_ACCESS_KEY).
            msg_id: MessageId::NONE,
            to_account: 0,
            to_device: 0,
            ttl_secs: 0,
            flags: flags::EPHEMERAL,
            access_key: Bytes::new(),
            payload: Bytes::from(vec![0x5a; 300]),
        }),
        Frame::Ok(RequestOk { req_id: id() }),
        Frame::Ok(RequestOk {
            req_id: MessageId([0xff; 16]),
        }),
        Frame::Redirect(Redirect {
            epoch: 912,
            addr: "n2.example:4433".into(),
        }),
        Frame::Redirect(Redirect {
            epoch: 0,
            addr: String::new(),
        }),
    ]
}

/// `b` cut to at most `max` bytes, as the encoder does with u8/u16 length fields.
pub(crate) fn cut_bytes(b: &Bytes, max: usize) -> Bytes {
    b.slice(..b.len().min(max))
}

/// `s` cut to at most `max` bytes on a character boundary.
pub(crate) fn cut_text(s: &str, max: usize) -> String {
    let mut n = s.len().min(max);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    s[..n].to_string()
}

/// `b` cut to at most 65535 bytes, as the encoder does with headers (u16 length).
pub(crate) fn truncated_header(b: &Bytes) -> Bytes {
    cut_bytes(b, u16::MAX as usize)
}

/// `s` cut to at most 1024 bytes on a character boundary, as the encoder does.
pub(crate) fn truncated(s: &str) -> String {
    cut_text(s, MAX_TEXT)
}

/// The frame a decoder yields after `f` is encoded: text truncated, at most 65535 seqs,
/// recipients, and header bytes; at most 255 network names of at most 255 bytes, 255-byte
/// access keys and 65535-byte push tokens.
pub(crate) fn normalized(f: &Frame) -> Frame {
    match f.clone() {
        Frame::Hello(Hello { version, token }) => Frame::Hello(Hello {
            version,
            token: truncated(&token),
        }),
        Frame::Error(Refused {
            msg_id,
            refusal:
                Refusal {
                    code,
                    retry_after_ms,
                    message,
                },
        }) => Frame::Error(Refused {
            msg_id,
            refusal: Refusal {
                code,
                retry_after_ms,
                message: truncated(&message).into(),
            },
        }),
        Frame::Ack(Ack { mut seqs }) => {
            seqs.truncate(u16::MAX as usize);
            Frame::Ack(Ack { seqs })
        }
        Frame::SendMulti(SendMulti {
            msg_id,
            ttl_secs,
            flags,
            mut recipients,
            payload,
        }) => {
            recipients.truncate(u16::MAX as usize);
            for r in &mut recipients {
                r.header = truncated_header(&r.header);
            }
            Frame::SendMulti(SendMulti {
                msg_id,
                ttl_secs,
                flags,
                recipients,
                payload,
            })
        }
        Frame::DeliverShared(DeliverShared {
            meta:
                DeliverMeta {
                    seq,
                    msg_id,
                    from_account,
                    from_device,
                    accepted_at_ms,
                    expires_at_ms,
                    flags,
                },
            group,
            header,
            payload,
        }) => Frame::DeliverShared(DeliverShared {
            meta: DeliverMeta {
                seq,
                msg_id,
                from_account,
                from_device,
                accepted_at_ms,
                expires_at_ms,
                flags,
            },
            group,
            header: truncated_header(&header),
            payload,
        }),
        Frame::PolicySet(PolicySet { req_id, change }) => Frame::PolicySet(PolicySet {
            req_id,
            change: match change {
                PolicyChange::Networks(mut names) => {
                    names.truncate(u8::MAX as usize);
                    PolicyChange::Networks(
                        names
                            .iter()
                            .map(|n| cut_text(n, u8::MAX as usize))
                            .collect(),
                    )
                }
                PolicyChange::AccessKey(k) => {
                    PolicyChange::AccessKey(cut_bytes(&k, u8::MAX as usize))
                }
                PolicyChange::PushToken(t) => {
                    PolicyChange::PushToken(cut_bytes(&t, u16::MAX as usize))
                }
                other => other,
            },
        }),
        Frame::SendSealed(SendSealed {
            msg_id,
            to_account,
            to_device,
            ttl_secs,
            flags,
            access_key,
            payload,
        }) => Frame::SendSealed(SendSealed {
            msg_id,
            to_account,
            to_device,
            ttl_secs,
            flags,
            access_key: cut_bytes(&access_key, u8::MAX as usize),
            payload,
        }),
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

/// Any frame, with fields over their whole range; every variant about equally likely (every
/// `POLICY_SET` kind counting as one).
pub(crate) fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![9 => arb_v1_frame(), 8 => arb_group_frame(), 6 => arb_privacy_frame()]
}

/// Any frame of the issue-2 set (types 0x01..=0x04, 0x81..=0x85).
pub(crate) fn arb_v1_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u8>(), arb_text())
            .prop_map(|(version, token)| Frame::Hello(Hello { version, token })),
        (
            arb_id(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u8>(),
            arb_payload()
        )
            .prop_map(
                |(msg_id, to_account, to_device, ttl_secs, flags, payload)| Frame::Send(Send {
                    msg_id,
                    to_account,
                    to_device,
                    ttl_secs,
                    flags,
                    payload
                })
            ),
        prop::collection::vec(any::<u64>(), 0..100).prop_map(|seqs| Frame::Ack(Ack { seqs })),
        any::<u64>().prop_map(|nonce| Frame::Ping(Ping { nonce })),
        (
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(
                |(
                    account,
                    device,
                    server_time_ms,
                    max_envelope,
                    max_inflight,
                    idle_timeout_ms,
                    max_pending_sends,
                )| Frame::Welcome(Welcome {
                    account,
                    device,
                    server_time_ms,
                    max_envelope,
                    max_inflight,
                    idle_timeout_ms,
                    max_pending_sends,
                })
            ),
        (arb_id(), any::<u64>(), any::<u32>()).prop_map(|(msg_id, accepted_at_ms, recipients)| {
            Frame::Accepted(Accepted {
                msg_id,
                accepted_at_ms,
                recipients,
            })
        }),
        (
            (any::<u64>(), arb_id(), any::<u64>(), any::<u32>()),
            (any::<u64>(), any::<u64>(), any::<u8>(), arb_payload())
        )
            .prop_map(
                |(
                    (seq, msg_id, from_account, from_device),
                    (accepted_at_ms, expires_at_ms, flags, payload),
                )| Frame::Deliver(Deliver {
                    meta: DeliverMeta {
                        seq,
                        msg_id,
                        from_account,
                        from_device,
                        accepted_at_ms,
                        expires_at_ms,
                        flags
                    },
                    payload
                })
            ),
        (
            arb_id(),
            prop_oneof![
                prop::sample::select(ErrorCode::ALL.to_vec()),
                // Codes a later revision may add decode too.
                any::<u16>().prop_map(ErrorCode::from_u16),
            ],
            any::<u32>(),
            arb_text()
        )
            .prop_map(
                |(msg_id, code, retry_after_ms, message)| Frame::Error(Refused {
                    msg_id,
                    refusal: Refusal {
                        code,
                        retry_after_ms,
                        message: message.into(),
                    }
                })
            ),
        any::<u64>().prop_map(|nonce| Frame::Pong(Pong { nonce })),
    ]
}

fn arb_accounts() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(any::<u64>(), 0..40)
}

fn arb_header() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        Just(Bytes::new()),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from),
    ]
}

fn arb_recipient() -> impl Strategy<Value = MultiRecipient> {
    (any::<u64>(), any::<u32>(), arb_header()).prop_map(|(account, device, header)| {
        MultiRecipient {
            account,
            device,
            header,
        }
    })
}

/// Any frame of the groups extension (types 0x05..=0x09, 0x86..=0x88).
pub(crate) fn arb_group_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (arb_id(), any::<u64>(), arb_accounts()).prop_map(|(req_id, group, members)| {
            Frame::GroupCreate(GroupCreate {
                req_id,
                group,
                members,
            })
        }),
        (arb_id(), any::<u64>(), any::<u8>(), arb_accounts()).prop_map(
            |(req_id, group, op, accounts)| Frame::GroupUpdate(GroupUpdate {
                req_id,
                group,
                op,
                accounts
            })
        ),
        (arb_id(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(
            |(req_id, group, offset, limit)| Frame::GroupGet(GroupGet {
                req_id,
                group,
                offset,
                limit
            })
        ),
        (
            arb_id(),
            any::<u64>(),
            any::<u32>(),
            any::<u8>(),
            arb_payload()
        )
            .prop_map(
                |(msg_id, group, ttl_secs, flags, payload)| Frame::SendGroup(SendGroup {
                    msg_id,
                    group,
                    ttl_secs,
                    flags,
                    payload
                })
            ),
        (
            arb_id(),
            any::<u32>(),
            any::<u8>(),
            prop::collection::vec(arb_recipient(), 0..12),
            arb_payload()
        )
            .prop_map(
                |(msg_id, ttl_secs, flags, recipients, payload)| Frame::SendMulti(SendMulti {
                    msg_id,
                    ttl_secs,
                    flags,
                    recipients,
                    payload
                })
            ),
        (arb_id(), any::<u64>(), any::<u64>(), any::<u32>()).prop_map(
            |(req_id, group, version, members)| Frame::GroupOk(GroupOk {
                req_id,
                group,
                version,
                members
            })
        ),
        (
            (arb_id(), any::<u64>(), any::<u64>(), any::<u64>()),
            (
                any::<u32>(),
                any::<u32>(),
                prop::collection::vec((any::<u64>(), any::<u8>()), 0..40)
            )
        )
            .prop_map(
                |((req_id, group, version, creator), (total, offset, members))| {
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
            ),
        (
            (
                any::<u64>(),
                arb_id(),
                any::<u64>(),
                any::<u32>(),
                any::<u64>()
            ),
            (
                any::<u64>(),
                any::<u8>(),
                any::<u64>(),
                arb_header(),
                arb_payload()
            )
        )
            .prop_map(
                |(
                    (seq, msg_id, from_account, from_device, accepted_at_ms),
                    (expires_at_ms, flags, group, header, payload),
                )| Frame::DeliverShared(DeliverShared {
                    meta: DeliverMeta {
                        seq,
                        msg_id,
                        from_account,
                        from_device,
                        accepted_at_ms,
                        expires_at_ms,
                        flags
                    },
                    group,
                    header,
                    payload
                })
            ),
    ]
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

/// Any `POLICY_SET` change, every kind; lengths sometimes over the u8 fields' maximum so the
/// encoder's truncation is exercised.
pub(crate) fn arb_policy_change() -> impl Strategy<Value = PolicyChange> {
    prop_oneof![
        any::<u8>().prop_map(PolicyChange::Reach),
        (any::<bool>(), arb_accounts())
            .prop_map(|(add, accounts)| PolicyChange::Allow { add, accounts }),
        (any::<bool>(), arb_accounts())
            .prop_map(|(add, accounts)| PolicyChange::Block { add, accounts }),
        prop_oneof![
            4 => prop::collection::vec(".{0,20}", 0..20),
            1 => prop::collection::vec(".{0,100}", 250..260),
        ]
        .prop_map(PolicyChange::Networks),
        prop_oneof![arb_bytes(80), arb_bytes(300)].prop_map(PolicyChange::AccessKey),
        arb_bytes(600).prop_map(PolicyChange::PushToken),
    ]
}

/// Any frame of the privacy extension (types 0x0A..=0x0C, 0x89).
pub(crate) fn arb_privacy_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        3 => (arb_id(), arb_policy_change())
            .prop_map(|(req_id, change)| Frame::PolicySet(PolicySet { req_id, change })),
        1 => (arb_id(), any::<u64>()).prop_map(|(req_id, account)| Frame::Report(Report { req_id, account })),
        1 => (
            (arb_id(), any::<u64>(), any::<u32>(), any::<u32>()),
            (any::<u8>(), prop_oneof![arb_bytes(70), arb_bytes(300)], arb_payload())
        )
            .prop_map(
                |((msg_id, to_account, to_device, ttl_secs), (flags, access_key, payload))| {
                    Frame::SendSealed(SendSealed {
                        msg_id,
                        to_account,
                        to_device,
                        ttl_secs,
                        flags,
                        access_key,
                        payload,
                    })
                }
            ),
        1 => arb_id().prop_map(|req_id| Frame::Ok(RequestOk { req_id })),
    ]
}
