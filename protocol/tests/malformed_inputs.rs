//! Malformed input: every way a peer can get a frame wrong is an error (or, for an oversized
//! `SEND`, `SEND_GROUP`, `SEND_MULTI` or `SEND_SEALED`, a skip), never a panic, and nothing is
//! allocated from a length the peer claims (`allocation.rs` measures that).

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use hearth_protocol::{
    flags, Ack, DecodeError, Decoded, Decoder, Deliver, DeliverMeta, DeliverShared, ErrorCode,
    Frame, GroupCreate, GroupInfo, GroupUpdate, Hello, MessageId, Ping, PolicyChange, PolicySet,
    Send, SendGroup, SendMulti, SendSealed, Welcome, DELIVER_FIXED_LEN, SEND_FIXED_LEN,
};
use proptest::prelude::*;

include!("../fuzz/common/check.rs");

fn decode(bytes: &[u8]) -> Result<Option<Decoded>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    Decoder::new(NODE_LIMIT).decode(&mut buf)
}

fn malformed(kind: &'static str, why: &'static str) -> Result<Option<Decoded>, DecodeError> {
    Err(DecodeError::Malformed { kind, why })
}

fn frame_of(bytes: &[u8]) -> Frame {
    match decode(bytes) {
        Ok(Some(Decoded::Frame(f))) => f,
        other => panic!("expected a frame, got {other:?}"),
    }
}

/// Bytes of `f`'s body before its payload, for the frames whose payload is the rest of the
/// frame; `None` for the others.
fn payload_offset(f: &Frame) -> Option<usize> {
    match f {
        Frame::Send(_) => Some(SEND_FIXED_LEN),
        Frame::Deliver(_) => Some(DELIVER_FIXED_LEN),
        Frame::SendGroup(_) => Some(SEND_GROUP_FIXED_LEN),
        Frame::SendMulti(SendMulti { recipients, .. }) => Some(
            SEND_MULTI_FIXED_LEN
                + recipients
                    .iter()
                    .map(|r| RECIPIENT_FIXED_LEN + r.header.len())
                    .sum::<usize>(),
        ),
        Frame::DeliverShared(DeliverShared { header, .. }) => {
            Some(DELIVER_SHARED_FIXED_LEN + header.len())
        }
        Frame::SendSealed(SendSealed { access_key, .. }) => {
            Some(SEND_SEALED_FIXED_LEN + access_key.len())
        }
        _ => None,
    }
}

fn payload_of(f: &Frame) -> &Bytes {
    match f {
        Frame::Send(Send { payload, .. })
        | Frame::Deliver(Deliver { payload, .. })
        | Frame::SendGroup(SendGroup { payload, .. })
        | Frame::SendMulti(SendMulti { payload, .. })
        | Frame::DeliverShared(DeliverShared { payload, .. })
        | Frame::SendSealed(SendSealed { payload, .. }) => payload,
        other => panic!("{other:?} has no payload"),
    }
}

/// Body bytes up to and including the count of the frames with a u32/u16 count that must match
/// the length exactly (`ACK`, `GROUP_CREATE`, `GROUP_UPDATE`, `GROUP_INFO`, the account lists of
/// `POLICY_SET`).
fn counted_list_offset(f: &Frame) -> Option<usize> {
    match f {
        Frame::Ack(_) => Some(2),
        Frame::GroupCreate(_) => Some(GROUP_CREATE_FIXED_LEN),
        Frame::GroupUpdate(_) => Some(GROUP_UPDATE_FIXED_LEN),
        Frame::GroupInfo(_) => Some(GROUP_INFO_FIXED_LEN),
        Frame::PolicySet(PolicySet {
            change: PolicyChange::Allow { .. } | PolicyChange::Block { .. },
            ..
        }) => Some(POLICY_LIST_FIXED_LEN),
        _ => None,
    }
}

#[test]
fn zero_length_is_an_error() {
    assert_eq!(decode(&[0, 0, 0, 0]), Err(DecodeError::EmptyFrame));
    assert_eq!(
        decode(&[0, 0, 0, 0, 0x04, 1, 2]),
        Err(DecodeError::EmptyFrame)
    );
    // Fewer than four bytes: not an error yet, just incomplete.
    assert_eq!(decode(&[0, 0, 0]), Ok(None));
}

#[test]
fn unknown_types_are_errors() {
    for ty in 0..=255u8 {
        if TYPES.contains(&ty) {
            continue;
        }
        assert_eq!(decode(&raw(ty, &[])), Err(DecodeError::UnknownType(ty)));
        assert_eq!(
            decode(&raw(ty, &[0; 40])),
            Err(DecodeError::UnknownType(ty))
        );
    }
}

#[test]
fn truncated_bodies_are_errors() {
    let mut checked = std::collections::BTreeSet::new();
    for f in samples() {
        let bytes = enc(&f);
        let (ty, body) = (bytes[4], &bytes[5..]);
        for cut in 0..body.len() {
            let got = decode(&raw(ty, &body[..cut]));
            if let Some(fixed) = payload_offset(&f) {
                // The payload has no length of its own: a shorter body is a shorter payload,
                // once everything before it (for SEND_MULTI the whole recipient list, for
                // DELIVER_SHARED the header) is present.
                if cut < fixed {
                    assert_eq!(
                        got,
                        malformed(kind(ty), "body too short"),
                        "{f:?} cut {cut}"
                    );
                } else {
                    match got {
                        Ok(Some(Decoded::Frame(g))) => {
                            assert_eq!(payload_of(&g)[..], payload_of(&f)[..cut - fixed]);
                        }
                        other => panic!("cut {cut}: {other:?}"),
                    }
                }
            } else if counted_list_offset(&f).is_some_and(|n| cut >= n) {
                assert_eq!(
                    got,
                    malformed(kind(ty), "count does not match length"),
                    "{f:?} cut {cut}"
                )
            } else if let (Frame::Welcome(w), true) = (&f, cut >= WELCOME_V1_0_LEN) {
                // A WELCOME of an older node (revision 1.0) ends after max_inflight: the
                // fields added later read as 0 (PROTOCOL.md §2).
                let want = Welcome {
                    idle_timeout_ms: if cut >= WELCOME_V1_0_LEN + 4 {
                        w.idle_timeout_ms
                    } else {
                        0
                    },
                    max_pending_sends: 0,
                    ..*w
                };
                assert_eq!(got, Ok(Some(Decoded::Frame(want.into()))), "cut {cut}");
            } else {
                assert_eq!(
                    got,
                    malformed(kind(ty), "body too short"),
                    "{f:?} cut {cut}"
                )
            }
        }
        checked.insert(ty);
    }
    assert_eq!(checked.len(), TYPES.len());
}

#[test]
fn incomplete_frames_wait_for_more_bytes() {
    for f in samples() {
        let bytes = enc(&f);
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(
                Decoder::new(NODE_LIMIT).decode(&mut buf),
                Ok(None),
                "{f:?} cut {cut}"
            );
            assert_eq!(&buf[..], &bytes[..cut], "partial frame must be kept intact");
        }
    }
}

#[test]
fn trailing_bytes_are_errors() {
    for f in samples() {
        let bytes = enc(&f);
        let (ty, mut body) = (bytes[4], bytes[5..].to_vec());
        body.push(0);
        let got = decode(&raw(ty, &body));
        if GROWING.contains(&ty) {
            // Node → client frames that may grow trailing fields: extra bytes are ignored.
            assert_eq!(got, Ok(Some(Decoded::Frame(f.clone()))), "{f:?}");
        } else if payload_offset(&f).is_some() {
            // Extra bytes of a frame that ends with its payload are payload.
            match got {
                Ok(Some(Decoded::Frame(g))) => {
                    assert_eq!(payload_of(&g).len(), payload_of(&f).len() + 1);
                    assert_eq!(payload_of(&g).last(), Some(&0));
                }
                other => panic!("{other:?}"),
            }
        } else if counted_list_offset(&f).is_some() {
            assert_eq!(got, malformed(kind(ty), "count does not match length"));
        } else {
            assert_eq!(got, malformed(kind(ty), "trailing bytes"), "{f:?}");
        }
    }
}

#[test]
fn ack_count_must_match_length() {
    let ack = |count: u16, seqs: &[u64], extra: &[u8]| {
        let mut body = count.to_be_bytes().to_vec();
        for s in seqs {
            body.extend_from_slice(&s.to_be_bytes());
        }
        body.extend_from_slice(extra);
        decode(&raw(0x03, &body))
    };
    let bad = malformed("ACK", "count does not match length");
    assert_eq!(ack(2, &[1], &[]), bad);
    assert_eq!(ack(1, &[1, 2], &[]), bad);
    assert_eq!(ack(0, &[1], &[]), bad);
    assert_eq!(ack(1, &[1], &[0, 0, 0]), bad);
    // A huge count with no seqs behind it must not allocate room for 65535 seqs first.
    assert_eq!(ack(u16::MAX, &[], &[]), bad);
    assert_eq!(
        ack(0, &[], &[]),
        Ok(Some(Decoded::Frame(Frame::Ack(Ack { seqs: vec![] }))))
    );
    assert_eq!(
        ack(2, &[5, 6], &[]),
        Ok(Some(Decoded::Frame(Frame::Ack(Ack { seqs: vec![5, 6] }))))
    );
    assert_eq!(decode(&raw(0x03, &[0])), malformed("ACK", "body too short"));
}

/// `GROUP_CREATE` / `GROUP_UPDATE` body: req_id, group, [op,] count, then `accounts` and
/// `extra` raw bytes.
fn group_change(ty: u8, count: u32, accounts: &[u64], extra: &[u8]) -> Vec<u8> {
    let mut body = id().0.to_vec();
    body.extend_from_slice(&7u64.to_be_bytes());
    if ty == 0x06 {
        body.push(hearth_protocol::group_op::REMOVE_MEMBERS);
    }
    body.extend_from_slice(&count.to_be_bytes());
    for a in accounts {
        body.extend_from_slice(&a.to_be_bytes());
    }
    body.extend_from_slice(extra);
    raw(ty, &body)
}

#[test]
fn group_create_and_update_counts_must_match_length() {
    for ty in [0x05, 0x06] {
        let bad = malformed(kind(ty), "count does not match length");
        let go = |count, accounts: &[u64], extra: &[u8]| {
            decode(&group_change(ty, count, accounts, extra))
        };
        assert_eq!(go(2, &[1], &[]), bad);
        assert_eq!(go(1, &[1, 2], &[]), bad);
        assert_eq!(go(0, &[1], &[]), bad);
        assert_eq!(go(1, &[1], &[0, 0, 0]), bad);
        assert_eq!(go(0, &[], &[0]), bad);
        // A count of 4 billion with nothing behind it is refused before anything is allocated.
        assert_eq!(go(u32::MAX, &[], &[]), bad);
        assert_eq!(go(u32::MAX, &[1, 2], &[]), bad);
        // The count is of accounts, not bytes.
        assert_eq!(go(16, &[1, 2], &[]), bad);
        let want = |accounts: Vec<u64>| {
            Ok(Some(Decoded::Frame(if ty == 0x05 {
                Frame::GroupCreate(GroupCreate {
                    req_id: id(),
                    group: 7,
                    members: accounts,
                })
            } else {
                Frame::GroupUpdate(GroupUpdate {
                    req_id: id(),
                    group: 7,
                    op: hearth_protocol::group_op::REMOVE_MEMBERS,
                    accounts,
                })
            })))
        };
        assert_eq!(go(0, &[], &[]), want(vec![]));
        assert_eq!(go(2, &[5, u64::MAX], &[]), want(vec![5, u64::MAX]));
        // One byte short of the fixed part.
        let short = group_change(ty, 0, &[], &[]);
        assert_eq!(
            decode(&raw(ty, &short[5..short.len() - 1])),
            malformed(kind(ty), "body too short")
        );
    }
}

fn group_info(count: u32, members: &[(u64, u8)], extra: &[u8]) -> Vec<u8> {
    let mut body = id().0.to_vec();
    for v in [7u64, 3, 42] {
        body.extend_from_slice(&v.to_be_bytes()); // group, version, creator
    }
    body.extend_from_slice(&10u32.to_be_bytes()); // total
    body.extend_from_slice(&0u32.to_be_bytes()); // offset
    body.extend_from_slice(&count.to_be_bytes());
    for (a, r) in members {
        body.extend_from_slice(&a.to_be_bytes());
        body.push(*r);
    }
    body.extend_from_slice(extra);
    raw(0x87, &body)
}

#[test]
fn group_info_count_must_match_length() {
    let bad = malformed("GROUP_INFO", "count does not match length");
    assert_eq!(decode(&group_info(2, &[(1, 1)], &[])), bad);
    assert_eq!(decode(&group_info(1, &[(1, 1), (2, 2)], &[])), bad);
    assert_eq!(decode(&group_info(1, &[(1, 1)], &[0])), bad);
    assert_eq!(decode(&group_info(1, &[], &[0; 8])), bad); // an entry is 9 bytes
    assert_eq!(decode(&group_info(u32::MAX, &[], &[])), bad);
    // 8 entries are 72 bytes, which is also 9 u64s: a count of 9 must not be taken.
    let eight: Vec<(u64, u8)> = (0..8).map(|a| (a, 1)).collect();
    assert_eq!(decode(&group_info(9, &eight, &[])), bad);
    assert_eq!(
        decode(&group_info(2, &[(1, 1), (2, 2)], &[])),
        Ok(Some(Decoded::Frame(Frame::GroupInfo(GroupInfo {
            req_id: id(),
            group: 7,
            version: 3,
            creator: 42,
            total: 10,
            offset: 0,
            members: vec![(1, 1), (2, 2)],
        }))))
    );
}

/// A `SEND_MULTI` body: fixed part with `count`, then `tail` raw bytes.
fn send_multi(count: u16, tail: &[u8]) -> Vec<u8> {
    let mut body = id().0.to_vec();
    body.extend_from_slice(&60u32.to_be_bytes());
    body.push(0);
    body.extend_from_slice(&count.to_be_bytes());
    body.extend_from_slice(tail);
    raw(0x09, &body)
}

/// One encoded recipient entry.
fn recipient_bytes(account: u64, device: u32, header: &[u8]) -> Vec<u8> {
    let mut v = account.to_be_bytes().to_vec();
    v.extend_from_slice(&device.to_be_bytes());
    v.extend_from_slice(&(header.len() as u16).to_be_bytes());
    v.extend_from_slice(header);
    v
}

#[test]
fn send_multi_recipient_list_must_be_complete() {
    let short = malformed("SEND_MULTI", "body too short");
    let r1 = recipient_bytes(43, 0, b"key-43");
    let r2 = recipient_bytes(44, 2, b"");
    let both = [r1.clone(), r2.clone()].concat();
    // The fixed part cut anywhere, including inside the count.
    let whole = send_multi(2, &both);
    for cut in 0..SEND_MULTI_FIXED_LEN {
        assert_eq!(decode(&raw(0x09, &whole[5..5 + cut])), short, "cut {cut}");
    }
    // Fewer recipients than counted, and a count with nothing behind it.
    assert_eq!(decode(&send_multi(3, &both)), short);
    assert_eq!(decode(&send_multi(1, &[])), short);
    assert_eq!(decode(&send_multi(u16::MAX, &both)), short);
    // A recipient cut inside its fixed part or inside its header.
    for cut in 1..r2.len() {
        let tail = [&r1[..], &r2[..cut]].concat();
        assert_eq!(
            decode(&send_multi(2, &tail)),
            short,
            "second recipient cut at {cut}"
        );
    }
    for cut in 0..r1.len() {
        assert_eq!(
            decode(&send_multi(1, &r1[..cut])),
            short,
            "header cut at {cut}"
        );
    }
    // A header length pointing past the end of the frame.
    let mut liar = recipient_bytes(43, 0, b"abc");
    liar[12..14].copy_from_slice(&4u16.to_be_bytes());
    assert_eq!(decode(&send_multi(1, &liar)), short);
    let mut huge = recipient_bytes(43, 0, b"");
    huge[12..14].copy_from_slice(&u16::MAX.to_be_bytes());
    assert_eq!(decode(&send_multi(1, &huge)), short);
    // Complete lists decode; what follows the last recipient is the payload.
    assert_eq!(
        frame_of(&send_multi(2, &[&both[..], b"pay"].concat())),
        Frame::SendMulti(SendMulti {
            msg_id: id(),
            ttl_secs: 60,
            flags: 0,
            recipients: vec![rcpt(43, 0, b"key-43"), rcpt(44, 2, b"")],
            payload: Bytes::from_static(b"pay"),
        })
    );
    // With a count of 1 the second entry is just payload bytes.
    assert_eq!(
        frame_of(&send_multi(1, &both)),
        Frame::SendMulti(SendMulti {
            msg_id: id(),
            ttl_secs: 60,
            flags: 0,
            recipients: vec![rcpt(43, 0, b"key-43")],
            payload: Bytes::from(r2),
        })
    );
    assert_eq!(
        frame_of(&send_multi(0, &[])),
        Frame::SendMulti(SendMulti {
            msg_id: id(),
            ttl_secs: 60,
            flags: 0,
            recipients: vec![],
            payload: Bytes::new(),
        })
    );
}

/// A `DELIVER_SHARED` body with a header length field of `header_len` followed by `rest`.
fn deliver_shared(header_len: u16, rest: &[u8]) -> Vec<u8> {
    let mut body = vec![0u8; DELIVER_FIXED_LEN];
    body[..8].copy_from_slice(&5u64.to_be_bytes()); // seq
    body.extend_from_slice(&7u64.to_be_bytes()); // group
    body.extend_from_slice(&header_len.to_be_bytes());
    body.extend_from_slice(rest);
    raw(0x88, &body)
}

#[test]
fn deliver_shared_header_must_fit_the_body() {
    let short = malformed("DELIVER_SHARED", "body too short");
    assert_eq!(decode(&deliver_shared(1, &[])), short);
    assert_eq!(decode(&deliver_shared(5, b"abcd")), short);
    assert_eq!(decode(&deliver_shared(u16::MAX, b"abcd")), short);
    let fixed = deliver_shared(0, &[]);
    for cut in 0..DELIVER_SHARED_FIXED_LEN {
        assert_eq!(decode(&raw(0x88, &fixed[5..5 + cut])), short, "cut {cut}");
    }
    let parts = |bytes: &[u8]| match frame_of(bytes) {
        Frame::DeliverShared(DeliverShared {
            meta: DeliverMeta { seq, .. },
            group,
            header,
            payload,
            ..
        }) => (seq, group, header, payload),
        other => panic!("{other:?}"),
    };
    let b = Bytes::from_static;
    assert_eq!(
        parts(&deliver_shared(4, b"abcd")),
        (5, 7, b(b"abcd"), b(b""))
    );
    assert_eq!(
        parts(&deliver_shared(2, b"abcd")),
        (5, 7, b(b"ab"), b(b"cd"))
    );
    assert_eq!(
        parts(&deliver_shared(0, b"abcd")),
        (5, 7, b(b""), b(b"abcd"))
    );
    assert_eq!(parts(&deliver_shared(0, b"")), (5, 7, b(b""), b(b"")));
}

#[test]
fn fixed_size_group_and_privacy_frames_must_be_exact() {
    for (ty, len) in [
        (0x07, GROUP_GET_LEN),
        (0x86, GROUP_OK_LEN),
        (0x0B, REPORT_LEN),
        (0x89, OK_LEN),
    ] {
        assert!(matches!(
            decode(&raw(ty, &vec![0; len])),
            Ok(Some(Decoded::Frame(_)))
        ));
        assert_eq!(
            decode(&raw(ty, &vec![0; len - 1])),
            malformed(kind(ty), "body too short")
        );
        if GROWING.contains(&ty) {
            // A later revision may add fields at the end: ignored.
            assert_eq!(
                decode(&raw(ty, &vec![0; len + 1])),
                decode(&raw(ty, &vec![0; len]))
            );
        } else {
            assert_eq!(
                decode(&raw(ty, &vec![0; len + 1])),
                malformed(kind(ty), "trailing bytes")
            );
        }
    }
}

#[test]
fn huge_length_of_a_non_send_fails_at_once_without_allocating() {
    for ty in (0..=255u8).filter(|t| !SEND_TYPES.contains(t)) {
        let mut buf = BytesMut::with_capacity(8);
        buf.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        let mut dec = Decoder::new(NODE_LIMIT);
        // Four bytes: the decoder must see the type byte before it decides.
        assert_eq!(dec.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&[ty]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(DecodeError::TooLong {
                len: u32::MAX as usize,
                max: NODE_LIMIT
            })
        );
        assert!(buf.capacity() < 64, "allocated {} bytes", buf.capacity());
    }
    // One past the limit is already too long.
    let mut over = ((NODE_LIMIT + 1) as u32).to_be_bytes().to_vec();
    over.push(0x83);
    assert_eq!(
        decode(&over),
        Err(DecodeError::TooLong {
            len: NODE_LIMIT + 1,
            max: NODE_LIMIT
        })
    );
}

#[test]
fn pending_frame_reserves_at_most_the_limit() {
    let mut buf = BytesMut::from(&(NODE_LIMIT as u32).to_be_bytes()[..]);
    buf.extend_from_slice(&[0x02]);
    assert_eq!(Decoder::new(NODE_LIMIT).decode(&mut buf), Ok(None));
    assert!(
        buf.capacity() <= 2 * (4 + NODE_LIMIT),
        "reserved {}",
        buf.capacity()
    );
}

/// A frame of type `ty` (one of `SEND_TYPES`) with message id `id()` and `payload_len` payload
/// bytes; for `SEND_MULTI`, two recipients.
fn send_of_type(ty: u8, payload_len: usize) -> Frame {
    let payload = Bytes::from(vec![1u8; payload_len]);
    match ty {
        0x02 => Frame::Send(Send {
            msg_id: id(),
            to_account: 1,
            to_device: 0,
            ttl_secs: 0,
            flags: 0,
            payload,
        }),
        0x08 => Frame::SendGroup(SendGroup {
            msg_id: id(),
            group: 1,
            ttl_secs: 0,
            flags: 0,
            payload,
        }),
        0x09 => Frame::SendMulti(SendMulti {
            msg_id: id(),
            ttl_secs: 0,
            flags: 0,
            recipients: vec![rcpt(1, 0, b"k1"), rcpt(2, 3, b"k2")],
            payload,
        }),
        0x0C => Frame::SendSealed(SendSealed {
            msg_id: id(),
            to_account: 1,
            to_device: 0,
            ttl_secs: 0,
            flags: 0,
            access_key: Bytes::from_static(b"access-key"),
            payload,
        }),
        _ => unreachable!(),
    }
}

/// A SEND, SEND_GROUP, SEND_MULTI or SEND_SEALED claiming 4 GiB is reported once and exactly its bytes are
/// skipped, in bounded memory; the frame after it decodes.
#[test]
fn huge_sends_are_skipped_exactly_then_the_next_frame_decodes() {
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK];
    for ty in SEND_TYPES {
        let len = u32::MAX as usize;
        let mut dec = Decoder::new(NODE_LIMIT);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, ty]);
        buf.extend_from_slice(&id().0[..15]);
        assert_eq!(dec.decode(&mut buf), Ok(None), "needs the whole message id");
        buf.extend_from_slice(&id().0[15..]);
        assert_eq!(
            dec.decode(&mut buf),
            Ok(Some(Decoded::OversizedSend { msg_id: id(), len })),
            "type 0x{ty:02x}"
        );
        assert!(buf.is_empty());

        let mut left = len - 1 - 16; // type byte and msg_id are consumed
        while left > CHUNK {
            buf.extend_from_slice(&zeros);
            assert_eq!(dec.decode(&mut buf), Ok(None));
            assert!(buf.is_empty());
            left -= CHUNK;
        }
        buf.extend_from_slice(&zeros[..left]);
        buf.extend_from_slice(&enc(&Frame::Ping(Ping { nonce: 77 })));
        assert_eq!(
            dec.decode(&mut buf),
            Ok(Some(Decoded::Frame(Frame::Ping(Ping { nonce: 77 }))))
        );
        assert!(buf.is_empty());
        assert!(
            buf.capacity() <= 2 * CHUNK,
            "buffer grew to {}",
            buf.capacity()
        );
    }
}

#[test]
fn oversized_sends_fed_byte_by_byte_are_reported_once() {
    let limit = 100;
    let mut stream = Vec::new();
    let mut want = Vec::new();
    for ty in SEND_TYPES {
        let bytes = enc(&send_of_type(ty, 200));
        stream.extend_from_slice(&bytes);
        want.push(Decoded::OversizedSend {
            msg_id: id(),
            len: bytes.len() - 4,
        });
        stream.extend_from_slice(&enc(&Frame::Ack(Ack { seqs: vec![3] })));
        want.push(Decoded::Frame(Frame::Ack(Ack { seqs: vec![3] })));
        stream.extend_from_slice(&bytes); // oversized again, right after the ACK
        want.push(want[want.len() - 2].clone());
    }
    stream.extend_from_slice(&enc(&Frame::Ping(Ping { nonce: 1 })));
    want.push(Decoded::Frame(Frame::Ping(Ping { nonce: 1 })));
    assert_eq!(want.len(), 3 * SEND_TYPES.len() + 1);

    let mut dec = Decoder::new(limit);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for b in &stream {
        buf.extend_from_slice(&[*b]);
        while let Some(d) = dec.decode(&mut buf).unwrap() {
            got.push(d);
        }
    }
    assert_eq!(got, want);
    assert!(buf.is_empty());

    let mut dec = Decoder::new(limit);
    let mut buf = BytesMut::from(&stream[..]);
    let mut got = Vec::new();
    while let Some(d) = dec.decode(&mut buf).unwrap() {
        got.push(d);
    }
    assert_eq!(got, want);
}

#[test]
fn sends_at_the_limit_are_frames_and_one_more_byte_is_oversized() {
    for ty in SEND_TYPES {
        let at = enc(&send_of_type(ty, 64));
        let limit = at.len() - 4;
        let mut at = at;
        assert!(matches!(
            Decoder::new(limit).decode(&mut at),
            Ok(Some(Decoded::Frame(f))) if f.type_byte() == ty
        ));
        let mut over = enc(&send_of_type(ty, 65));
        assert_eq!(
            Decoder::new(limit).decode(&mut over),
            Ok(Some(Decoded::OversizedSend {
                msg_id: id(),
                len: limit + 1
            }))
        );
        assert!(over.is_empty());
    }
}

/// An oversized `SEND_MULTI` is skipped whatever its recipient list claims: the decoder reads
/// only its message id, even when the list is malformed.
#[test]
fn oversized_send_multi_is_skipped_without_reading_the_list() {
    let mut bytes = send_multi(u16::MAX, &[0xff; 300]);
    bytes.extend_from_slice(&enc(&Frame::Ping(Ping { nonce: 5 })));
    let mut dec = Decoder::new(100);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        dec.decode(&mut buf),
        Ok(Some(Decoded::OversizedSend {
            msg_id: id(),
            len: 1 + SEND_MULTI_FIXED_LEN + 300
        }))
    );
    assert_eq!(
        dec.decode(&mut buf),
        Ok(Some(Decoded::Frame(Frame::Ping(Ping { nonce: 5 }))))
    );
}

#[test]
fn oversized_sends_too_short_to_hold_an_id_are_too_long() {
    // With a limit below 17 bytes, a "SEND" cannot even carry its message id.
    for ty in SEND_TYPES {
        let mut buf = BytesMut::from(&raw(ty, &[0u8; 12])[..]);
        assert_eq!(
            Decoder::new(8).decode(&mut buf),
            Err(DecodeError::TooLong { len: 13, max: 8 })
        );
    }
}

/// Frames other than sends are fatal when too long, whatever their type: only the four send
/// types are skipped.
#[test]
fn oversized_frames_other_than_sends_are_fatal() {
    for f in samples() {
        let bytes = enc(&f);
        let len = bytes.len() - 4;
        let ty = bytes[4];
        let got = Decoder::new(len - 1).decode(&mut BytesMut::from(&bytes[..]));
        if SEND_TYPES.contains(&ty) {
            assert!(
                matches!(got, Ok(Some(Decoded::OversizedSend { len: l, .. })) if l == len),
                "{f:?}: {got:?}"
            );
        } else {
            assert_eq!(
                got,
                Err(DecodeError::TooLong { len, max: len - 1 }),
                "{f:?}"
            );
        }
    }
}

/// A `POLICY_SET` body: req_id, `kind`, then `rest` raw bytes.
fn policy_set(kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut body = id().0.to_vec();
    body.push(kind);
    body.extend_from_slice(rest);
    raw(0x0A, &body)
}

fn decoded_policy(change: PolicyChange) -> Result<Option<Decoded>, DecodeError> {
    Ok(Some(Decoded::Frame(policy(change))))
}

#[test]
fn unknown_policy_kinds_are_malformed() {
    for kind in (0..=255u8).filter(|k| !(1..=8).contains(k)) {
        for rest in [&[][..], &[0][..], &[0; 40][..]] {
            assert_eq!(
                decode(&policy_set(kind, rest)),
                malformed("POLICY_SET", "unknown policy kind"),
                "kind {kind}"
            );
        }
    }
    // No kind byte at all.
    assert_eq!(
        decode(&raw(0x0A, &id().0)),
        malformed("POLICY_SET", "body too short")
    );
}

/// Any reach mode decodes (the node, not the codec, refuses unknown modes with
/// `INVALID_REQUEST`); the mode is exactly one byte.
#[test]
fn reach_changes_carry_exactly_one_mode_byte() {
    for mode in 0..=255u8 {
        assert_eq!(
            decode(&policy_set(1, &[mode])),
            decoded_policy(PolicyChange::Reach(mode))
        );
    }
    assert_eq!(
        decode(&policy_set(1, &[])),
        malformed("POLICY_SET", "body too short")
    );
    assert_eq!(
        decode(&policy_set(1, &[0, 0])),
        malformed("POLICY_SET", "trailing bytes")
    );
}

#[test]
fn policy_account_counts_must_match_length() {
    let bad = malformed("POLICY_SET", "count does not match length");
    for kind in 2..=5u8 {
        let go = |count: u32, accounts: &[u64], extra: &[u8]| {
            let mut rest = count.to_be_bytes().to_vec();
            for a in accounts {
                rest.extend_from_slice(&a.to_be_bytes());
            }
            rest.extend_from_slice(extra);
            decode(&policy_set(kind, &rest))
        };
        let want = |accounts: Vec<u64>| {
            decoded_policy(match kind {
                2 | 3 => PolicyChange::Allow {
                    add: kind == 2,
                    accounts,
                },
                _ => PolicyChange::Block {
                    add: kind == 4,
                    accounts,
                },
            })
        };
        assert_eq!(go(2, &[1], &[]), bad, "kind {kind}");
        assert_eq!(go(1, &[1, 2], &[]), bad);
        assert_eq!(go(0, &[1], &[]), bad);
        assert_eq!(go(1, &[1], &[0, 0, 0]), bad);
        assert_eq!(go(0, &[], &[0]), bad);
        // A count of 4 billion with nothing (or little) behind it: refused, nothing reserved.
        assert_eq!(go(u32::MAX, &[], &[]), bad);
        assert_eq!(go(u32::MAX, &[1, 2], &[]), bad);
        // The count is of accounts, not bytes.
        assert_eq!(go(16, &[1, 2], &[]), bad);
        assert_eq!(go(0, &[], &[]), want(vec![]));
        assert_eq!(go(2, &[5, u64::MAX], &[]), want(vec![5, u64::MAX]));
        // The count itself cut short.
        for cut in 0..4 {
            assert_eq!(
                decode(&policy_set(kind, &[0; 4][..cut])),
                malformed("POLICY_SET", "body too short"),
                "kind {kind}, count cut at {cut}"
            );
        }
    }
}

/// One network name entry: a length byte (which may lie) and the name's bytes.
fn name_entry(len: u8, name: &[u8]) -> Vec<u8> {
    [&[len][..], name].concat()
}

/// A kind-6 change: `count`, then the entries back to back.
fn network_list(count: u8, entries: &[Vec<u8>]) -> Vec<u8> {
    policy_set(6, &[vec![count], entries.concat()].concat())
}

#[test]
fn network_names_must_be_complete_utf8_and_fill_the_body() {
    let short = malformed("POLICY_SET", "body too short");
    let not_utf8 = malformed("POLICY_SET", "not UTF-8");
    let chat = name_entry(4, b"chat");
    let photos = name_entry(6, b"photos");
    // No count; fewer names than counted; a count with nothing behind it.
    assert_eq!(decode(&policy_set(6, &[])), short);
    assert_eq!(
        decode(&network_list(3, &[chat.clone(), photos.clone()])),
        short
    );
    assert_eq!(decode(&network_list(1, &[])), short);
    assert_eq!(
        decode(&network_list(255, std::slice::from_ref(&chat))),
        short
    );
    // The second name cut anywhere, including before its length byte.
    for cut in 0..photos.len() {
        let cut_photos = photos[..cut].to_vec();
        assert_eq!(
            decode(&network_list(2, &[chat.clone(), cut_photos])),
            short,
            "second name cut at {cut}"
        );
    }
    // A name length past the end of the frame.
    assert_eq!(decode(&network_list(1, &[name_entry(5, b"chat")])), short);
    assert_eq!(decode(&network_list(1, &[name_entry(255, b"chat")])), short);
    // Invalid UTF-8, in the first or a later name; each name is checked on its own, so a
    // character split across two names is invalid too.
    for bad in [
        &[0xff, 0xfe][..],
        &[0xc3, 0x28],
        &[0xed, 0xa0, 0x80],
        &[b'a', 0x80],
    ] {
        let e = name_entry(bad.len() as u8, bad);
        assert_eq!(
            decode(&network_list(1, std::slice::from_ref(&e))),
            not_utf8,
            "{bad:?}"
        );
        assert_eq!(decode(&network_list(2, &[chat.clone(), e])), not_utf8);
    }
    let split = [name_entry(1, &[0xc3]), name_entry(1, &[0xa9])];
    assert_eq!(decode(&network_list(2, &split)), not_utf8);
    assert_eq!(
        decode(&network_list(1, &[name_entry(2, &[0xc3, 0xa9])])),
        decoded_policy(PolicyChange::Networks(vec!["é".into()]))
    );
    // Bytes after the last counted name.
    assert_eq!(
        decode(&network_list(1, &[chat.clone(), photos.clone()])),
        malformed("POLICY_SET", "trailing bytes")
    );
    assert_eq!(
        decode(&network_list(0, std::slice::from_ref(&chat))),
        malformed("POLICY_SET", "trailing bytes")
    );
    // Complete lists.
    assert_eq!(
        decode(&network_list(2, &[chat, photos])),
        decoded_policy(PolicyChange::Networks(vec!["chat".into(), "photos".into()]))
    );
    assert_eq!(
        decode(&network_list(0, &[])),
        decoded_policy(PolicyChange::Networks(vec![]))
    );
    assert_eq!(
        decode(&network_list(2, &[name_entry(0, b""), name_entry(0, b"")])),
        decoded_policy(PolicyChange::Networks(vec![String::new(), String::new()]))
    );
}

#[test]
fn access_keys_and_push_tokens_must_fit_the_body() {
    let short = malformed("POLICY_SET", "body too short");
    let trailing = malformed("POLICY_SET", "trailing bytes");
    let b = Bytes::copy_from_slice;
    // Kind 7: u8 length.
    assert_eq!(decode(&policy_set(7, &[])), short);
    assert_eq!(decode(&policy_set(7, &[5, 1, 2, 3, 4])), short);
    assert_eq!(decode(&policy_set(7, &[255, 1, 2, 3, 4])), short);
    assert_eq!(decode(&policy_set(7, &[4, 1, 2, 3, 4, 0])), trailing);
    assert_eq!(
        decode(&policy_set(7, &[0])),
        decoded_policy(PolicyChange::AccessKey(Bytes::new()))
    );
    assert_eq!(
        decode(&policy_set(7, &[4, 1, 2, 3, 4])),
        decoded_policy(PolicyChange::AccessKey(b(&[1, 2, 3, 4])))
    );
    // Kind 8: u16 length, big-endian.
    assert_eq!(decode(&policy_set(8, &[])), short);
    assert_eq!(decode(&policy_set(8, &[0])), short);
    assert_eq!(decode(&policy_set(8, &[0, 5, 1, 2, 3, 4])), short);
    assert_eq!(decode(&policy_set(8, &[0xff, 0xff, 1, 2])), short);
    assert_eq!(decode(&policy_set(8, &[0, 1, 9, 9])), trailing);
    assert_eq!(
        decode(&policy_set(8, &[0, 0])),
        decoded_policy(PolicyChange::PushToken(Bytes::new()))
    );
    let token = [[1u8, 0].as_slice(), &[7; 256]].concat();
    assert_eq!(
        decode(&policy_set(8, &token)),
        decoded_policy(PolicyChange::PushToken(b(&[7; 256])))
    );
}

/// A `SEND_SEALED` body: msg_id, account 43, device 2, ttl 60, flags `URGENT`, the key length
/// byte `key_len`, then `rest` (key and payload).
fn send_sealed(key_len: u8, rest: &[u8]) -> Vec<u8> {
    let mut body = id().0.to_vec();
    body.extend_from_slice(&43u64.to_be_bytes());
    body.extend_from_slice(&2u32.to_be_bytes());
    body.extend_from_slice(&60u32.to_be_bytes());
    body.push(flags::URGENT);
    body.push(key_len);
    body.extend_from_slice(rest);
    raw(0x0C, &body)
}

#[test]
fn sealed_access_key_must_fit_the_body() {
    let short = malformed("SEND_SEALED", "body too short");
    // An access key longer than the rest of the body.
    assert_eq!(decode(&send_sealed(5, b"abcd")), short);
    assert_eq!(decode(&send_sealed(255, b"abcd")), short);
    assert_eq!(decode(&send_sealed(1, b"")), short);
    // The fixed part cut anywhere, including before the key length.
    let whole = send_sealed(0, &[]);
    for cut in 0..SEND_SEALED_FIXED_LEN {
        assert_eq!(decode(&raw(0x0C, &whole[5..5 + cut])), short, "cut {cut}");
    }
    let parts = |bytes: &[u8]| match frame_of(bytes) {
        Frame::SendSealed(SendSealed {
            msg_id,
            to_account,
            to_device,
            ttl_secs,
            flags,
            access_key,
            payload,
        }) => {
            assert_eq!(
                (msg_id, to_account, to_device, ttl_secs, flags),
                (id(), 43, 2, 60, flags::URGENT)
            );
            (access_key, payload)
        }
        other => panic!("{other:?}"),
    };
    let b = Bytes::from_static;
    // The key is exactly `key_len` bytes; the payload is the rest of the frame.
    assert_eq!(parts(&send_sealed(4, b"abcd")), (b(b"abcd"), b(b"")));
    assert_eq!(parts(&send_sealed(2, b"abcd")), (b(b"ab"), b(b"cd")));
    assert_eq!(parts(&send_sealed(0, b"abcd")), (b(b""), b(b"abcd")));
    assert_eq!(parts(&send_sealed(0, b"")), (b(b""), b(b"")));
}

/// An oversized `SEND_SEALED` is skipped whatever its key length claims: the decoder reads only
/// its message id.
#[test]
fn oversized_send_sealed_is_skipped_without_reading_the_key() {
    let mut bytes = send_sealed(255, &[0xff; 10]);
    bytes.extend_from_slice(&enc(&Frame::Ping(Ping { nonce: 5 })));
    let mut dec = Decoder::new(30);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        dec.decode(&mut buf),
        Ok(Some(Decoded::OversizedSend {
            msg_id: id(),
            len: 1 + SEND_SEALED_FIXED_LEN + 10
        }))
    );
    assert_eq!(
        dec.decode(&mut buf),
        Ok(Some(Decoded::Frame(Frame::Ping(Ping { nonce: 5 }))))
    );
    assert!(buf.is_empty());
}

#[test]
fn text_must_be_utf8_and_at_most_1024_bytes() {
    let hello = |len: u16, text: &[u8]| {
        let mut body = vec![1];
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(text);
        decode(&raw(0x01, &body))
    };
    assert_eq!(hello(2, &[0xff, 0xfe]), malformed("HELLO", "not UTF-8"));
    assert_eq!(hello(2, &[0xc3, 0x28]), malformed("HELLO", "not UTF-8"));
    assert_eq!(hello(3, b"ab"), malformed("HELLO", "body too short"));
    assert_eq!(
        hello(1025, &[b'a'; 1025]),
        malformed("HELLO", "token too long")
    );
    // Claimed, not present: refused before waiting for (or allocating) the bytes.
    assert_eq!(hello(u16::MAX, &[]), malformed("HELLO", "token too long"));
    assert_eq!(
        frame_of(&raw(
            0x01,
            &[1, 0x04, 0x00]
                .iter()
                .chain(&[b'z'; 1024])
                .copied()
                .collect::<Vec<_>>()
        )),
        Frame::Hello(Hello {
            version: 1,
            token: "z".repeat(1024)
        })
    );

    let error = |len: u16, text: &[u8]| {
        let mut body = id().0.to_vec();
        body.extend_from_slice(&ErrorCode::QueueFull.as_u16().to_be_bytes());
        body.extend_from_slice(&0u32.to_be_bytes());
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(text);
        decode(&raw(0x84, &body))
    };
    assert_eq!(error(1, &[0x80]), malformed("ERROR", "not UTF-8"));
    assert_eq!(
        error(1025, &[b'a'; 1025]),
        malformed("ERROR", "message too long")
    );
    assert_eq!(error(u16::MAX, &[]), malformed("ERROR", "message too long"));
    assert_eq!(error(5, b"full"), malformed("ERROR", "body too short"));
    assert!(matches!(
        error(4, b"full"),
        Ok(Some(Decoded::Frame(Frame::Error(_))))
    ));
}

#[test]
fn every_error_code_decodes_and_unknown_ones_keep_their_value() {
    let mut known = 0;
    for code in 0..=u16::MAX {
        let mut body = MessageId::NONE.0.to_vec();
        body.extend_from_slice(&code.to_be_bytes());
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let got = decode(&raw(0x84, &body));
        let c = ErrorCode::from_u16(code);
        assert_eq!(c.as_u16(), code);
        if c.is_known() {
            known += 1;
        } else {
            assert_eq!(c, ErrorCode::Unknown(code));
        }
        assert_eq!(
            got,
            Ok(Some(Decoded::Frame(Frame::error(c, "")))),
            "code {code}"
        );
    }
    assert_eq!(known, ErrorCode::ALL.len());
}

#[test]
fn every_decode_error_maps_to_malformed_frame() {
    let errors = [
        DecodeError::EmptyFrame,
        DecodeError::TooLong { len: 1, max: 0 },
        DecodeError::UnknownType(0x7f),
        DecodeError::Malformed {
            kind: "ACK",
            why: "x",
        },
    ];
    for e in errors {
        assert_eq!(e.code(), ErrorCode::MalformedFrame);
        assert!(!e.to_string().is_empty());
    }
}

/// Random bytes shaped like frames (a plausible length and a known type) reach deeper than
/// uniformly random ones.
fn framish() -> impl Strategy<Value = Vec<u8>> {
    let one = (
        prop::sample::select(TYPES.to_vec()),
        prop::collection::vec(any::<u8>(), 0..80),
        0..3u8,
    )
        .prop_map(|(ty, body, fudge)| {
            let mut v = raw(ty, &body);
            // Sometimes claim one byte more or less than is there.
            let len = u32::from_be_bytes(v[..4].try_into().unwrap());
            let len = match fudge {
                0 => len,
                1 => len + 1,
                _ => len.saturating_sub(1),
            };
            v[..4].copy_from_slice(&len.to_be_bytes());
            v
        });
    prop::collection::vec(one, 1..6).prop_map(|v| v.concat())
}

/// A length field that is right, or off by a little, or anything.
fn fudged(actual: usize) -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => Just(actual),
        1 => Just(actual + 1),
        1 => Just(actual.saturating_sub(1)),
        1 => any::<u16>().prop_map(usize::from),
    ]
}

/// Structured but possibly inconsistent bodies of the frames with inner lengths and counts:
/// `SEND_MULTI` recipient lists, `DELIVER_SHARED` headers, the account lists of
/// `GROUP_CREATE`, `GROUP_UPDATE` and `GROUP_INFO`, and the privacy frames
/// ([`privacy_framish`]). Uniformly random bytes almost never get
/// past their fixed parts.
fn inner_lengths_framish() -> impl Strategy<Value = Vec<u8>> {
    let header =
        prop::collection::vec(any::<u8>(), 0..24).prop_flat_map(|h| (fudged(h.len()), Just(h)));
    let entry = (any::<u64>(), any::<u32>(), header).prop_map(|(a, d, (hl, h))| {
        let mut v = a.to_be_bytes().to_vec();
        v.extend_from_slice(&d.to_be_bytes());
        v.extend_from_slice(&(hl as u16).to_be_bytes());
        v.extend_from_slice(&h);
        v
    });
    let multi = prop::collection::vec(entry, 0..5)
        .prop_flat_map(|e| (fudged(e.len()), Just(e)))
        .prop_map(|(n, entries)| (n as u16, entries.concat()));
    let send_multi = (
        any::<[u8; 21]>(),
        multi,
        prop::collection::vec(any::<u8>(), 0..24),
    )
        .prop_map(|(fixed, (n, list), payload)| {
            raw(
                0x09,
                &[&fixed[..], &n.to_be_bytes(), &list, &payload].concat(),
            )
        });
    let shared = (
        any::<[u8; 61]>(),
        prop::collection::vec(any::<u8>(), 0..40).prop_flat_map(|h| (fudged(h.len()), Just(h))),
        prop::collection::vec(any::<u8>(), 0..24),
    )
        .prop_map(|(fixed, (hl, h), payload)| {
            raw(
                0x88,
                &[&fixed[..], &(hl as u16).to_be_bytes(), &h, &payload].concat(),
            )
        });
    let list = (
        prop::sample::select(vec![
            (0x05u8, 24usize, 8usize),
            (0x06, 25, 8),
            (0x87, 48, 9),
        ]),
        0..8usize,
    )
        .prop_flat_map(|((ty, fixed, entry), n)| {
            (
                Just((ty, fixed)),
                fudged(n),
                prop::collection::vec(any::<u8>(), fixed + n * entry..=fixed + n * entry + 2),
            )
        })
        .prop_map(|((ty, fixed), count, mut body)| {
            body.splice(fixed..fixed, (count as u32).to_be_bytes());
            raw(ty, &body)
        });
    prop::collection::vec(
        prop_oneof![send_multi, shared, list, privacy_framish()],
        1..5,
    )
    .prop_map(|v| v.concat())
}

/// Structured but possibly inconsistent `POLICY_SET` and `SEND_SEALED` bodies: account counts,
/// network name counts and lengths (names mostly ASCII, sometimes not UTF-8), access key and
/// push token lengths, sealed key lengths, each right or a little off.
fn privacy_framish() -> impl Strategy<Value = Vec<u8>> {
    let lists = (any::<[u8; 16]>(), 2..=5u8, 0..8usize)
        .prop_flat_map(|(req, kind, n)| {
            (
                Just((req, kind)),
                fudged(n),
                prop::collection::vec(any::<u8>(), 8 * n..=8 * n + 2),
            )
        })
        .prop_map(|((req, kind), count, accounts)| {
            let body = [&req[..], &[kind], &(count as u32).to_be_bytes(), &accounts].concat();
            raw(0x0A, &body)
        });
    let name = prop_oneof![
        4 => "[a-z]{0,12}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..12),
    ]
    .prop_flat_map(|n| (fudged(n.len()), Just(n)))
    .prop_map(|(len, n)| name_entry(len as u8, &n));
    let networks = (
        any::<[u8; 16]>(),
        prop::collection::vec(name, 0..5).prop_flat_map(|e| (fudged(e.len()), Just(e))),
        prop::collection::vec(any::<u8>(), 0..2),
    )
        .prop_map(|(req, (count, entries), extra)| {
            let body = [&req[..], &[6, count as u8], &entries.concat(), &extra].concat();
            raw(0x0A, &body)
        });
    let value = (
        any::<[u8; 16]>(),
        7..=8u8,
        prop::collection::vec(any::<u8>(), 0..40).prop_flat_map(|v| (fudged(v.len()), Just(v))),
    )
        .prop_map(|(req, kind, (len, v))| {
            let len = if kind == 7 {
                vec![len as u8]
            } else {
                (len as u16).to_be_bytes().to_vec()
            };
            raw(0x0A, &[&req[..], &[kind], &len, &v].concat())
        });
    let sealed = (
        any::<[u8; 33]>(),
        prop::collection::vec(any::<u8>(), 0..40).prop_flat_map(|k| (fudged(k.len()), Just(k))),
        prop::collection::vec(any::<u8>(), 0..24),
    )
        .prop_map(|(fixed, (kl, key), payload)| {
            raw(0x0C, &[&fixed[..], &[kl as u8], &key, &payload].concat())
        });
    prop_oneof![lists, networks, value, sealed]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn inner_length_bytes_never_panic(
        control in any::<[u8; 2]>(),
        stream in inner_lengths_framish(),
    ) {
        let mut data = control.to_vec();
        data.extend_from_slice(&stream);
        check(&data);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&data);
    }

    #[test]
    fn framish_bytes_never_panic(
        control in any::<[u8; 2]>(),
        stream in framish(),
    ) {
        let mut data = control.to_vec();
        data.extend_from_slice(&stream);
        check(&data);
    }

    #[test]
    fn mutated_valid_streams_never_panic(
        frames in prop::collection::vec(arb_frame(), 1..4),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        control in any::<[u8; 2]>(),
    ) {
        let mut data = control.to_vec();
        for f in &frames {
            data.extend_from_slice(&enc(f));
        }
        for (at, byte) in flips {
            let i = at.index(data.len());
            data[i] = byte;
        }
        check(&data);
    }
}
