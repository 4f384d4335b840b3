//! The worked examples of PROTOCOL.md, produced by the real encoder, signer and slot hash.
//!
//! Each example is rendered as the annotated hex dump that PROTOCOL.md shows, and the test fails
//! if the document does not contain it verbatim. `cargo test -p hearth-protocol --test
//! wire_examples -- --nocapture` prints them all.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use common::*;
use hearth_protocol::{
    flags, group_op, reach, role, slot_of, Accepted, Ack, Deliver, DeliverMeta, DeliverShared,
    ErrorCode, Frame, GroupCreate, GroupGet, GroupInfo, GroupOk, GroupUpdate, Hello, MessageId,
    Ping, PolicyChange, Pong, Refusal, Refused, Report, RequestOk, Scope, Send, SendGroup,
    SendMulti, SendSealed, SigningKey, TokenClaims, TokenError, Welcome,
};

fn protocol_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../PROTOCOL.md");
    std::fs::read_to_string(path).expect("PROTOCOL.md at the repository root")
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// `bytes` as lines of at most 16 bytes, each field starting a new line with its note.
fn dump(bytes: &[u8], fields: &[(usize, String)]) -> String {
    assert_eq!(
        fields.iter().map(|f| f.0).sum::<usize>(),
        bytes.len(),
        "fields cover the frame"
    );
    let mut out = String::new();
    let mut at = 0;
    for (size, note) in fields {
        let field = &bytes[at..at + size];
        at += size;
        if field.is_empty() {
            out.push_str(&format!("{:<47}  {note}\n", "(none)"));
        }
        for (i, line) in field.chunks(16).enumerate() {
            let note = if i == 0 { note.as_str() } else { "" };
            out.push_str(format!("{:<47}  {note}", hex(line)).trim_end());
            out.push('\n');
        }
    }
    out
}

fn header(bytes: &[u8], name: &str) -> Vec<(usize, String)> {
    vec![
        (4, format!("length = {}", bytes.len() - 4)),
        (1, format!("type = {name}")),
    ]
}

/// RFC 8032 section 7.1, TEST 1: a published Ed25519 key, so anyone can reproduce the token.
const SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

fn test_key() -> SigningKey {
    // PKCS#8 v2 (RFC 5958) wrapping of the seed and public key, as earlier versions wrote key
    // files: still accepted (keys are written as v1 now).
    let mut der = unhex("3053020101300506032b657004220420");
    der.extend_from_slice(&unhex(SEED));
    der.extend_from_slice(&unhex("a123032100"));
    der.extend_from_slice(&unhex(PUBLIC));
    SigningKey::from_pkcs8(&der).expect("valid PKCS#8")
}

/// Maps a frame's bytes to its fields: (size, note).
type Layout<'a> = dyn Fn(&[u8]) -> Vec<(usize, String)> + 'a;

const CLAIMS: TokenClaims = TokenClaims {
    account: 42,
    device: 7,
    expires_at: 2_000_000_000,
};

fn examples() -> Vec<(&'static str, String)> {
    let token = test_key().issue(&CLAIMS);
    let mut out = Vec::new();
    let mut add = |name: &'static str, f: Frame, fields: &Layout<'_>| {
        assert_eq!(
            hearth_protocol::Decoder::new(CLIENT_LIMIT).decode(&mut enc(&f)),
            Ok(Some(hearth_protocol::Decoded::Frame(f.clone()))),
            "{name} round-trips"
        );
        let bytes = enc(&f);
        out.push((name, dump(&bytes, &fields(&bytes))));
    };
    add(
        "HELLO",
        Frame::Hello(Hello {
            version: 1,
            token: token.clone(),
        }),
        &|b| {
            let mut v = header(b, "HELLO (0x01)");
            v.push((1, "version = 1".into()));
            v.push((2, format!("token_len = {}", token.len())));
            v.push((token.len(), "token (UTF-8 text)".into()));
            v
        },
    );
    add(
        "WELCOME",
        Frame::Welcome(Welcome {
            account: 42,
            device: 7,
            server_time_ms: 1_700_000_000_000,
            max_envelope: 262_144,
            max_inflight: 256,
            idle_timeout_ms: 30_000,
            max_pending_sends: 1024,
        }),
        &|b| {
            let mut v = header(b, "WELCOME (0x81)");
            v.push((8, "account = 42".into()));
            v.push((4, "device = 7".into()));
            v.push((8, "server_time_ms = 1700000000000".into()));
            v.push((4, "max_envelope = 262144".into()));
            v.push((4, "max_inflight = 256".into()));
            v.push((4, "idle_timeout_ms = 30000".into()));
            v.push((4, "max_pending_sends = 1024".into()));
            v
        },
    );
    add(
        "SEND",
        Frame::Send(Send {
            msg_id: id(),
            to_account: 43,
            to_device: 0,
            ttl_secs: 3600,
            flags: 0,
            payload: Bytes::from_static(b"\xde\xad\xbe\xef"),
        }),
        &|b| {
            let mut v = header(b, "SEND (0x02)");
            v.push((16, "msg_id".into()));
            v.push((8, "to_account = 43".into()));
            v.push((4, "to_device = 0 (every device of the account)".into()));
            v.push((4, "ttl_secs = 3600".into()));
            v.push((1, "flags = 0 (stored)".into()));
            v.push((4, "payload (4 bytes: the rest of the frame)".into()));
            v
        },
    );
    add(
        "ACCEPTED",
        Frame::Accepted(Accepted {
            msg_id: id(),
            accepted_at_ms: 1_700_000_000_123,
            recipients: 2,
        }),
        &|b| {
            let mut v = header(b, "ACCEPTED (0x82)");
            v.push((16, "msg_id (of the SEND)".into()));
            v.push((8, "accepted_at_ms = 1700000000123".into()));
            v.push((4, "recipients = 2".into()));
            v
        },
    );
    add(
        "DELIVER",
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
            payload: Bytes::from_static(b"\xde\xad\xbe\xef"),
        }),
        &|b| {
            let mut v = header(b, "DELIVER (0x83)");
            v.push((8, "seq = 1".into()));
            v.push((16, "msg_id".into()));
            v.push((8, "from_account = 42".into()));
            v.push((4, "from_device = 7".into()));
            v.push((8, "accepted_at_ms = 1700000000123".into()));
            v.push((8, "expires_at_ms = 1700003600123".into()));
            v.push((1, "flags = 0".into()));
            v.push((4, "payload (4 bytes: the rest of the frame)".into()));
            v
        },
    );
    add("ACK", Frame::Ack(Ack { seqs: vec![1, 2] }), &|b| {
        let mut v = header(b, "ACK (0x03)");
        v.push((2, "count = 2".into()));
        v.push((8, "seq = 1".into()));
        v.push((8, "seq = 2".into()));
        v
    });
    add(
        "ERROR",
        Frame::Error(Refused {
            msg_id: id(),
            refusal: Refusal {
                code: ErrorCode::Overloaded,
                retry_after_ms: 500,
                message: "overloaded".into(),
            },
        }),
        &|b| {
            let mut v = header(b, "ERROR (0x84)");
            v.push((16, "msg_id (of the refused SEND)".into()));
            v.push((2, "code = 20 (OVERLOADED)".into()));
            v.push((4, "retry_after_ms = 500".into()));
            v.push((2, "message_len = 10".into()));
            v.push((10, "message = \"overloaded\"".into()));
            v
        },
    );
    add(
        "ERROR (fatal)",
        Frame::error(ErrorCode::BadToken, "bad token"),
        &|b| {
            let mut v = header(b, "ERROR (0x84)");
            v.push((16, "msg_id = none (all zero)".into()));
            v.push((2, "code = 3 (BAD_TOKEN)".into()));
            v.push((4, "retry_after_ms = 0".into()));
            v.push((2, "message_len = 9".into()));
            v.push((9, "message = \"bad token\"".into()));
            v
        },
    );
    add(
        "ERROR (zero msg_id)",
        Refusal::new(ErrorCode::InvalidMessageId, "msg_id is all zero").answer(MessageId::NONE),
        &|b| {
            let mut v = header(b, "ERROR (0x84)");
            v.push((16, "msg_id = the refused SEND's (all zero)".into()));
            v.push((2, "code = 21 (INVALID_MESSAGE_ID)".into()));
            v.push((4, "retry_after_ms = 0".into()));
            v.push((2, "message_len = 18".into()));
            v.push((18, "message = \"msg_id is all zero\"".into()));
            v
        },
    );
    add("PING", Frame::Ping(Ping { nonce: 1 }), &|b| {
        let mut v = header(b, "PING (0x04)");
        v.push((8, "nonce = 1".into()));
        v
    });
    add("PONG", Frame::Pong(Pong { nonce: 1 }), &|b| {
        let mut v = header(b, "PONG (0x85)");
        v.push((8, "nonce = 1".into()));
        v
    });
    group_examples(&mut add);
    privacy_examples(&mut add);
    out
}

/// The group used by the examples of PROTOCOL.md §7.
const GROUP: u64 = 1001;

/// Examples of the groups extension: account 42 (device 7) creates group 1001 with 43 and 44,
/// adds 45, reads the members, sends to the group and to a recipient list.
fn group_examples(add: &mut dyn FnMut(&'static str, Frame, &Layout<'_>)) {
    add(
        "GROUP_CREATE",
        Frame::GroupCreate(GroupCreate {
            req_id: id(),
            group: GROUP,
            members: vec![43, 44],
        }),
        &|b| {
            let mut v = header(b, "GROUP_CREATE (0x05)");
            v.push((16, "req_id".into()));
            v.push((8, "group = 1001".into()));
            v.push((4, "count = 2".into()));
            v.push((8, "account = 43".into()));
            v.push((8, "account = 44".into()));
            v
        },
    );
    add(
        "GROUP_UPDATE",
        Frame::GroupUpdate(GroupUpdate {
            req_id: id(),
            group: GROUP,
            op: group_op::ADD_MEMBERS,
            accounts: vec![45],
        }),
        &|b| {
            let mut v = header(b, "GROUP_UPDATE (0x06)");
            v.push((16, "req_id".into()));
            v.push((8, "group = 1001".into()));
            v.push((1, "op = 1 (ADD_MEMBERS)".into()));
            v.push((4, "count = 1".into()));
            v.push((8, "account = 45".into()));
            v
        },
    );
    add(
        "GROUP_OK",
        Frame::GroupOk(GroupOk {
            req_id: id(),
            group: GROUP,
            version: 2,
            members: 4,
        }),
        &|b| {
            let mut v = header(b, "GROUP_OK (0x86)");
            v.push((16, "req_id (of the GROUP_UPDATE)".into()));
            v.push((8, "group = 1001".into()));
            v.push((8, "version = 2".into()));
            v.push((4, "members = 4".into()));
            v
        },
    );
    add(
        "GROUP_GET",
        Frame::GroupGet(GroupGet {
            req_id: id(),
            group: GROUP,
            offset: 0,
            limit: 100,
        }),
        &|b| {
            let mut v = header(b, "GROUP_GET (0x07)");
            v.push((16, "req_id".into()));
            v.push((8, "group = 1001".into()));
            v.push((4, "offset = 0".into()));
            v.push((4, "limit = 100".into()));
            v
        },
    );
    add(
        "GROUP_INFO",
        Frame::GroupInfo(GroupInfo {
            req_id: id(),
            group: GROUP,
            version: 2,
            creator: 42,
            total: 4,
            offset: 0,
            members: vec![
                (42, role::ADMIN),
                (43, role::MEMBER),
                (44, role::MEMBER),
                (45, role::MEMBER),
            ],
        }),
        &|b| {
            let mut v = header(b, "GROUP_INFO (0x87)");
            v.push((16, "req_id (of the GROUP_GET)".into()));
            v.push((8, "group = 1001".into()));
            v.push((8, "version = 2".into()));
            v.push((8, "creator = 42".into()));
            v.push((4, "total = 4".into()));
            v.push((4, "offset = 0".into()));
            v.push((4, "count = 4".into()));
            for (a, r) in [(42, "2 (admin)"), (43, "1"), (44, "1"), (45, "1")] {
                v.push((8, format!("account = {a}")));
                v.push((1, format!("role = {r}")));
            }
            v
        },
    );
    add(
        "SEND_GROUP",
        Frame::SendGroup(SendGroup {
            msg_id: id(),
            group: GROUP,
            ttl_secs: 3600,
            flags: 0,
            payload: Bytes::from_static(b"\xde\xad\xbe\xef"),
        }),
        &|b| {
            let mut v = header(b, "SEND_GROUP (0x08)");
            v.push((16, "msg_id".into()));
            v.push((8, "group = 1001".into()));
            v.push((4, "ttl_secs = 3600".into()));
            v.push((1, "flags = 0 (stored)".into()));
            v.push((4, "payload (4 bytes: the rest of the frame)".into()));
            v
        },
    );
    add(
        "DELIVER_SHARED (group)",
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
            group: GROUP,
            header: Bytes::new(),
            payload: Bytes::from_static(b"\xde\xad\xbe\xef"),
        }),
        &|b| {
            let mut v = header(b, "DELIVER_SHARED (0x88)");
            v.push((8, "seq = 2".into()));
            v.push((16, "msg_id".into()));
            v.push((8, "from_account = 42".into()));
            v.push((4, "from_device = 7".into()));
            v.push((8, "accepted_at_ms = 1700000000123".into()));
            v.push((8, "expires_at_ms = 1700003600123".into()));
            v.push((1, "flags = 0".into()));
            v.push((8, "group = 1001".into()));
            v.push((2, "header_len = 0".into()));
            v.push((0, "header (empty for a group)".into()));
            v.push((4, "payload (4 bytes: the rest of the frame)".into()));
            v
        },
    );
    add(
        "SEND_MULTI",
        Frame::SendMulti(SendMulti {
            msg_id: id(),
            ttl_secs: 3600,
            flags: 0,
            recipients: vec![rcpt(43, 0, b"\x0a\x0b\x0c\x0d"), rcpt(44, 2, b"\x1a\x1b")],
            payload: Bytes::from_static(b"\xde\xad\xbe\xef"),
        }),
        &|b| {
            let mut v = header(b, "SEND_MULTI (0x09)");
            v.push((16, "msg_id".into()));
            v.push((4, "ttl_secs = 3600".into()));
            v.push((1, "flags = 0 (stored)".into()));
            v.push((2, "count = 2".into()));
            v.push((8, "recipient 1: account = 43".into()));
            v.push((4, "recipient 1: device = 0 (every device)".into()));
            v.push((2, "recipient 1: header_len = 4".into()));
            v.push((4, "recipient 1: header".into()));
            v.push((8, "recipient 2: account = 44".into()));
            v.push((4, "recipient 2: device = 2".into()));
            v.push((2, "recipient 2: header_len = 2".into()));
            v.push((2, "recipient 2: header".into()));
            v.push((4, "payload (4 bytes: the rest of the frame)".into()));
            v
        },
    );
    add(
        "DELIVER_SHARED (multi)",
        Frame::DeliverShared(DeliverShared {
            meta: DeliverMeta {
                seq: 5,
                msg_id: id(),
                from_account: 42,
                from_device: 7,
                accepted_at_ms: 1_700_000_000_123,
                expires_at_ms: 1_700_003_600_123,
                flags: 0,
            },
            group: 0,
            header: Bytes::from_static(b"\x1a\x1b"),
            payload: Bytes::from_static(b"\xde\xad\xbe\xef"),
        }),
        &|b| {
            let mut v = header(b, "DELIVER_SHARED (0x88)");
            v.push((8, "seq = 5".into()));
            v.push((16, "msg_id".into()));
            v.push((8, "from_account = 42".into()));
            v.push((4, "from_device = 7".into()));
            v.push((8, "accepted_at_ms = 1700000000123".into()));
            v.push((8, "expires_at_ms = 1700003600123".into()));
            v.push((1, "flags = 0".into()));
            v.push((8, "group = 0 (SEND_MULTI)".into()));
            v.push((2, "header_len = 2".into()));
            v.push((2, "header (account 44's own)".into()));
            v.push((4, "payload (4 bytes: the rest of the frame)".into()));
            v
        },
    );
    add(
        "ERROR (group)",
        Frame::Error(Refused {
            msg_id: id(),
            refusal: Refusal {
                code: ErrorCode::NotAMember,
                retry_after_ms: 0,
                message: "not a member".into(),
            },
        }),
        &|b| {
            let mut v = header(b, "ERROR (0x84)");
            v.push((16, "msg_id (of the refused SEND_GROUP)".into()));
            v.push((2, "code = 22 (NOT_A_MEMBER)".into()));
            v.push((4, "retry_after_ms = 0".into()));
            v.push((2, "message_len = 12".into()));
            v.push((12, "message = \"not a member\"".into()));
            v
        },
    );
}

/// The delivery access key of the examples of PROTOCOL.md §8 (16 bytes; real keys should be
/// 32 random bytes).
const ACCESS_KEY: [u8; 16] = [
    0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf,
];

/// Examples of the privacy extension: account 43 (the recipient of §10's SEND) limits who may
/// reach it, opts in to two networks, sets an access key and a push token; account 42 reports
/// account 666 and sends sealed; the refusals a sender may see.
fn privacy_examples(add: &mut dyn FnMut(&'static str, Frame, &Layout<'_>)) {
    let policy_head = |b: &[u8], kind: &str| {
        let mut v = header(b, "POLICY_SET (0x0A)");
        v.push((16, "req_id".into()));
        v.push((1, format!("kind = {kind}")));
        v
    };
    add(
        "POLICY_SET (reach)",
        policy(PolicyChange::Reach(reach::CONTACTS)),
        &|b| {
            let mut v = policy_head(b, "1 (REACH)");
            v.push((1, "mode = 1 (CONTACTS)".into()));
            v
        },
    );
    add(
        "POLICY_SET (allow)",
        policy(PolicyChange::Allow {
            add: true,
            accounts: vec![42, 44],
        }),
        &|b| {
            let mut v = policy_head(b, "2 (ALLOW_ADD)");
            v.push((4, "count = 2".into()));
            v.push((8, "account = 42".into()));
            v.push((8, "account = 44".into()));
            v
        },
    );
    add(
        "POLICY_SET (block)",
        policy(PolicyChange::Block {
            add: true,
            accounts: vec![666],
        }),
        &|b| {
            let mut v = policy_head(b, "4 (BLOCK_ADD)");
            v.push((4, "count = 1".into()));
            v.push((8, "account = 666".into()));
            v
        },
    );
    add(
        "POLICY_SET (networks)",
        policy(PolicyChange::Networks(vec![
            "photos".into(),
            "social".into(),
        ])),
        &|b| {
            let mut v = policy_head(b, "6 (NETWORKS)");
            v.push((1, "count = 2".into()));
            v.push((1, "name_len = 6".into()));
            v.push((6, "name = \"photos\"".into()));
            v.push((1, "name_len = 6".into()));
            v.push((6, "name = \"social\"".into()));
            v
        },
    );
    add(
        "POLICY_SET (access key)",
        policy(PolicyChange::AccessKey(Bytes::from_static(&ACCESS_KEY))),
        &|b| {
            let mut v = policy_head(b, "7 (ACCESS_KEY)");
            v.push((1, "key_len = 16".into()));
            v.push((16, "key".into()));
            v
        },
    );
    add(
        "POLICY_SET (push token)",
        policy(PolicyChange::PushToken(Bytes::from_static(b"push:43/2"))),
        &|b| {
            let mut v = policy_head(b, "8 (PUSH_TOKEN)");
            v.push((2, "token_len = 9".into()));
            v.push((9, "token (opaque; here \"push:43/2\")".into()));
            v
        },
    );
    add("OK", Frame::Ok(RequestOk { req_id: id() }), &|b| {
        let mut v = header(b, "OK (0x89)");
        v.push((16, "req_id (of the POLICY_SET or REPORT)".into()));
        v
    });
    add(
        "REPORT",
        Frame::Report(Report {
            req_id: id(),
            account: 666,
        }),
        &|b| {
            let mut v = header(b, "REPORT (0x0B)");
            v.push((16, "req_id".into()));
            v.push((8, "account = 666 (the reported account)".into()));
            v
        },
    );
    add(
        "SEND_SEALED",
        Frame::SendSealed(SendSealed {
            msg_id: id(),
            to_account: 43,
            to_device: 0,
            ttl_secs: 3600,
            flags: flags::URGENT,
            access_key: Bytes::from_static(&ACCESS_KEY),
            payload: Bytes::from_static(b"\xde\xad\xbe\xef"),
        }),
        &|b| {
            let mut v = header(b, "SEND_SEALED (0x0C)");
            v.push((16, "msg_id (random)".into()));
            v.push((8, "to_account = 43".into()));
            v.push((4, "to_device = 0 (every device of the account)".into()));
            v.push((4, "ttl_secs = 3600".into()));
            v.push((1, "flags = 0x02 (URGENT)".into()));
            v.push((1, "key_len = 16".into()));
            v.push((16, "access_key (account 43's)".into()));
            v.push((4, "payload (4 bytes: the rest of the frame)".into()));
            v
        },
    );
    add(
        "DELIVER (sealed)",
        Frame::Deliver(Deliver {
            meta: DeliverMeta {
                seq: 3,
                msg_id: id(),
                from_account: 0,
                from_device: 0,
                accepted_at_ms: 1_700_000_000_123,
                expires_at_ms: 1_700_003_600_123,
                flags: flags::URGENT,
            },
            payload: Bytes::from_static(b"\xde\xad\xbe\xef"),
        }),
        &|b| {
            let mut v = header(b, "DELIVER (0x83)");
            v.push((8, "seq = 3".into()));
            v.push((16, "msg_id".into()));
            v.push((8, "from_account = 0 (sealed)".into()));
            v.push((4, "from_device = 0 (sealed)".into()));
            v.push((8, "accepted_at_ms = 1700000000123".into()));
            v.push((8, "expires_at_ms = 1700003600123".into()));
            v.push((1, "flags = 0x02 (URGENT)".into()));
            v.push((4, "payload (4 bytes: the rest of the frame)".into()));
            v
        },
    );
    add(
        "ERROR (unreachable)",
        Frame::Error(Refused {
            msg_id: id(),
            refusal: Refusal {
                code: ErrorCode::RecipientUnreachable,
                retry_after_ms: 0,
                message: "unreachable".into(),
            },
        }),
        &|b| {
            let mut v = header(b, "ERROR (0x84)");
            v.push((16, "msg_id (of the refused SEND)".into()));
            v.push((2, "code = 29 (RECIPIENT_UNREACHABLE)".into()));
            v.push((4, "retry_after_ms = 0".into()));
            v.push((2, "message_len = 11".into()));
            v.push((11, "message = \"unreachable\"".into()));
            v
        },
    );
    add(
        "ERROR (rate limited)",
        Frame::Error(Refused {
            msg_id: id(),
            refusal: Refusal {
                code: ErrorCode::RateLimited,
                retry_after_ms: 250,
                message: "rate limited".into(),
            },
        }),
        &|b| {
            let mut v = header(b, "ERROR (0x84)");
            v.push((16, "msg_id (of the refused SEND)".into()));
            v.push((2, "code = 30 (RATE_LIMITED)".into()));
            v.push((4, "retry_after_ms = 250".into()));
            v.push((2, "message_len = 12".into()));
            v.push((12, "message = \"rate limited\"".into()));
            v
        },
    );
    add(
        "ERROR (residency)",
        Frame::error(ErrorCode::Residency, "residency"),
        &|b| {
            let mut v = header(b, "ERROR (0x84)");
            v.push((16, "msg_id = none (all zero)".into()));
            v.push((2, "code = 31 (RESIDENCY)".into()));
            v.push((4, "retry_after_ms = 0".into()));
            v.push((2, "message_len = 9".into()));
            v.push((9, "message = \"residency\"".into()));
            v
        },
    );
}

/// The scope of the v2 token test vector.
fn vector_scope() -> Scope {
    Scope {
        network: "chat".into(),
        zone: "eu".into(),
    }
}

/// The v2 token test vector of PROTOCOL.md §5: the v1 key and claims, network `chat`, zone
/// `eu`. The token verifies with the published key, its raw bytes have the documented layout
/// (shown as an annotated dump), and its signed message is the documented one.
#[test]
fn protocol_md_token_v2_vector_verifies() {
    let key = test_key();
    let token = key.issue_scoped(&CLAIMS, &vector_scope()).unwrap();
    assert_eq!(token, key.issue_scoped(&CLAIMS, &vector_scope()).unwrap());
    let verifier = key.verifying_key();
    assert_eq!(
        verifier.verify_scoped(&token, 1_700_000_000),
        Ok((CLAIMS, vector_scope()))
    );
    assert_eq!(
        verifier.verify_scoped(&token, CLAIMS.expires_at),
        Err(TokenError::Expired)
    );
    // The v1 vector still verifies, with an empty scope; v1-only verification refuses v2.
    assert_eq!(
        verifier.verify_scoped(&key.issue(&CLAIMS), 0),
        Ok((CLAIMS, Scope::default()))
    );
    assert_eq!(verifier.verify(&token, 0), Err(TokenError::Malformed));

    let b64 = token.strip_prefix("ht2.").expect("ht2. prefix");
    let raw = URL_SAFE_NO_PAD.decode(b64).unwrap();
    assert_eq!(raw.len(), 87 + 4 + 2);
    assert_eq!(token.len(), 4 + (raw.len() * 4).div_ceil(3));
    let mut body = vec![2u8];
    body.extend_from_slice(&CLAIMS.account.to_be_bytes());
    body.extend_from_slice(&CLAIMS.device.to_be_bytes());
    body.extend_from_slice(&CLAIMS.expires_at.to_be_bytes());
    body.extend_from_slice(b"\x04chat\x02eu");
    assert_eq!(raw[..raw.len() - 64], body[..]);
    let signed = [&b"hearth-token-v2\0"[..], &body].concat();
    // The signature is plain Ed25519 over the signed message: check it with ring directly.
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, unhex(PUBLIC))
        .verify(&signed, &raw[raw.len() - 64..])
        .expect("signature over the documented message");
    // Any changed byte (here the zone) breaks it.
    let mut forged = raw.clone();
    forged[raw.len() - 65] = b'v';
    let forged = format!("ht2.{}", URL_SAFE_NO_PAD.encode(&forged));
    assert_eq!(
        verifier.verify_scoped(&forged, 0),
        Err(TokenError::BadSignature)
    );

    let dump_text = dump(
        &raw,
        &[
            (1, "version = 2".into()),
            (8, "account = 42".into()),
            (4, "device = 7".into()),
            (8, "expires_at = 2000000000".into()),
            (1, "network_len = 4".into()),
            (4, "network = \"chat\"".into()),
            (1, "zone_len = 2".into()),
            (2, "zone = \"eu\"".into()),
            (64, "signature".into()),
        ],
    );
    let lines = [
        format!("signed message  {}", hex(&signed).replace(' ', "")),
        format!("token           {token}"),
    ];
    println!("{dump_text}\n{}", lines.join("\n"));
    let doc = protocol_md();
    let mut missing: Vec<String> = lines
        .iter()
        .filter(|l| !doc.contains(l.as_str()))
        .cloned()
        .collect();
    if !doc.contains(&dump_text) {
        missing.push(dump_text);
    }
    assert!(missing.is_empty(), "PROTOCOL.md lacks: {missing:?}");
}

/// The flag bits, the reach modes and the `POLICY_SET` kinds appear in PROTOCOL.md's tables
/// with their values and names.
#[test]
fn protocol_md_lists_flags_reach_modes_and_policy_kinds() {
    let doc = protocol_md();
    let mut rows = vec![
        format!("| 0x{:02X} | `EPHEMERAL` |", flags::EPHEMERAL),
        format!("| 0x{:02X} | `URGENT` |", flags::URGENT),
        format!("| {} | `EVERYONE` |", reach::EVERYONE),
        format!("| {} | `CONTACTS` |", reach::CONTACTS),
        format!("| {} | `NOBODY` |", reach::NOBODY),
    ];
    let kinds = [
        (PolicyChange::Reach(0), "REACH"),
        (
            PolicyChange::Allow {
                add: true,
                accounts: vec![],
            },
            "ALLOW_ADD",
        ),
        (
            PolicyChange::Allow {
                add: false,
                accounts: vec![],
            },
            "ALLOW_REMOVE",
        ),
        (
            PolicyChange::Block {
                add: true,
                accounts: vec![],
            },
            "BLOCK_ADD",
        ),
        (
            PolicyChange::Block {
                add: false,
                accounts: vec![],
            },
            "BLOCK_REMOVE",
        ),
        (PolicyChange::Networks(vec![]), "NETWORKS"),
        (PolicyChange::AccessKey(Bytes::new()), "ACCESS_KEY"),
        (PolicyChange::PushToken(Bytes::new()), "PUSH_TOKEN"),
    ];
    for (change, name) in kinds {
        // The kind byte as the encoder writes it.
        let kind = enc(&policy(change))[5 + 16];
        rows.push(format!("| {kind} | `{name}` |"));
    }
    // Every known flag bit is documented; the reserved ones are said to be reserved.
    assert_eq!(flags::KNOWN, flags::EPHEMERAL | flags::URGENT);
    rows.push("| 0x04–0x80 | reserved |".into());
    for r in &rows {
        println!("{r}");
    }
    let missing: Vec<_> = rows.iter().filter(|r| !doc.contains(r.as_str())).collect();
    assert!(missing.is_empty(), "PROTOCOL.md lacks {missing:?}");
}

#[test]
fn protocol_md_shows_the_encoders_bytes() {
    let doc = protocol_md();
    let mut missing = Vec::new();
    for (name, dump) in examples() {
        println!("{name}:\n{dump}");
        if !doc.contains(&dump) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "PROTOCOL.md lacks the examples {missing:?} printed above"
    );
}

#[test]
fn protocol_md_token_vector_verifies() {
    let key = test_key();
    assert_eq!(hex(&key.verifying_key().0).replace(' ', ""), PUBLIC);
    let token = key.issue(&CLAIMS);
    assert_eq!(
        key.verifying_key().verify(&token, 1_700_000_000),
        Ok(CLAIMS)
    );
    // Ed25519 signatures are deterministic, so the token is a fixed test vector.
    assert_eq!(token, key.issue(&CLAIMS));
    let mut signed = b"hearth-token-v1\0".to_vec();
    signed.push(1);
    signed.extend_from_slice(&CLAIMS.account.to_be_bytes());
    signed.extend_from_slice(&CLAIMS.device.to_be_bytes());
    signed.extend_from_slice(&CLAIMS.expires_at.to_be_bytes());
    let lines = [
        format!("seed            {SEED}"),
        format!("public key      {PUBLIC}"),
        format!("signed message  {}", hex(&signed).replace(' ', "")),
        format!("token           {token}"),
    ];
    println!("{}", lines.join("\n"));
    let doc = protocol_md();
    let missing: Vec<_> = lines.iter().filter(|l| !doc.contains(l.as_str())).collect();
    assert!(missing.is_empty(), "PROTOCOL.md lacks: {missing:?}");
}

#[test]
fn protocol_md_slot_vectors_hold() {
    let doc = protocol_md();
    let mut missing = Vec::new();
    for (account, slot) in [
        (0u64, 14472u16),
        (1, 9282),
        (42, slot_of(42)),
        (u64::MAX, 14646),
    ] {
        assert_eq!(slot_of(account), slot);
        let row = format!("| {account} | {slot} |");
        println!("{row}");
        if !doc.contains(&row) {
            missing.push(row);
        }
    }
    assert!(
        missing.is_empty(),
        "PROTOCOL.md lacks the slot rows {missing:?}"
    );
}

/// Every frame type appears in §2's frame table with its name and direction.
#[test]
fn protocol_md_lists_every_frame_type() {
    let doc = protocol_md();
    let mut missing = Vec::new();
    for ty in TYPES {
        let dir = if ty < 0x80 {
            "client → node"
        } else {
            "node → client"
        };
        let row = format!("| 0x{ty:02X} | `{}` | {dir} |", kind(ty));
        println!("{row}");
        if !doc.contains(&row) {
            missing.push(row);
        }
        let heading = format!("### {} (0x{ty:02X}), {dir}", kind(ty));
        if !doc.contains(&heading) {
            missing.push(heading);
        }
    }
    assert!(missing.is_empty(), "PROTOCOL.md lacks {missing:?}");
}

/// Every error code appears in §3's table with its value, name and fatality.
#[test]
fn protocol_md_lists_every_error_code() {
    let doc = protocol_md();
    let mut missing = Vec::new();
    for code in ErrorCode::ALL {
        let fatal = if code.is_fatal() { "yes" } else { "no" };
        let row = format!("| {} | `{}` | {fatal} |", code.as_u16(), code.name());
        println!("{row}");
        if !doc.contains(&row) {
            missing.push(row);
        }
    }
    assert!(missing.is_empty(), "PROTOCOL.md lacks the rows {missing:?}");
}

/// The limits PROTOCOL.md §4 states, from the same constants the codec tests use.
#[test]
fn protocol_md_states_the_default_limits() {
    let doc = protocol_md();
    let group = |n: usize| {
        // 532168 -> "532 168", as the document writes numbers.
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(' ');
            }
            out.push(c);
        }
        out
    };
    let max_accounts = (NODE_LIMIT - 1 - GROUP_UPDATE_FIXED_LEN) / 8;
    let max_policy_accounts = (NODE_LIMIT - 1 - POLICY_LIST_FIXED_LEN) / 8;
    let figures = [
        ("node frame limit", NODE_LIMIT),
        ("largest SEND_SEALED", LARGEST_SEND_SEALED),
        ("accounts per POLICY_SET", max_policy_accounts),
        ("largest SEND", SEND_LIMIT),
        ("client frame limit", CLIENT_LIMIT),
        ("largest DELIVER", DELIVER_LIMIT),
        ("accounts per GROUP_CREATE/UPDATE", max_accounts),
        ("GROUP_INFO page", MAX_PAGE),
    ];
    let mut missing = Vec::new();
    for (what, n) in figures {
        let text = format!("**{}**", group(n));
        println!("{what}: {text}");
        if !doc.contains(&text) {
            missing.push((what, text));
        }
    }
    assert!(missing.is_empty(), "PROTOCOL.md lacks {missing:?}");
}
