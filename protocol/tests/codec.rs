//! Codec round trips: every frame variant whole, in one-byte pieces, in random chunkings and back
//! to back in one buffer; text, `ACK`, recipient and header truncation; the size limits at their
//! edges (PROTOCOL.md §4).

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use hearth_protocol::{
    flags, group_op, reach, role, Ack, DecodeError, Decoded, Decoder, Deliver, DeliverMeta,
    DeliverShared, ErrorCode, Frame, GroupCreate, GroupInfo, GroupUpdate, Hello, MessageId,
    PolicyChange, PolicySet, Refusal, Refused, Send, SendGroup, SendMulti, SendSealed,
    DEFAULT_MAX_ENVELOPE, DELIVER_FIXED_LEN, FRAME_HEADER_LEN, SEND_FIXED_LEN,
};
use proptest::prelude::*;

/// Feed `stream` to a fresh decoder in pieces ending at `cuts` (then the rest) and collect the
/// frames. Checks that a partial frame is kept and reported as incomplete, never as an error.
fn decode_in_pieces(stream: &[u8], cuts: &[usize]) -> Vec<Frame> {
    let mut dec = Decoder::new(CLIENT_LIMIT);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut fed = 0;
    let mut ends: Vec<usize> = cuts.iter().map(|c| (*c).min(stream.len())).collect();
    ends.sort_unstable();
    ends.push(stream.len());
    for end in ends {
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        while let Some(d) = dec.decode(&mut buf).expect("valid stream") {
            match d {
                Decoded::Frame(f) => frames.push(f),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    frames
}

fn one_byte_cuts(len: usize) -> Vec<usize> {
    (1..len).collect()
}

/// The samples cover every variant (the match fails to compile when a variant is added).
#[test]
fn samples_cover_every_variant() {
    let mut seen = std::collections::BTreeSet::new();
    for f in samples() {
        let ty = match &f {
            Frame::Hello(_) => 0x01,
            Frame::Send(_) => 0x02,
            Frame::Ack(_) => 0x03,
            Frame::Ping(_) => 0x04,
            Frame::Welcome(_) => 0x81,
            Frame::Accepted(_) => 0x82,
            Frame::Deliver(_) => 0x83,
            Frame::Error(_) => 0x84,
            Frame::Pong(_) => 0x85,
            Frame::GroupCreate(_) => 0x05,
            Frame::GroupUpdate(_) => 0x06,
            Frame::GroupGet(_) => 0x07,
            Frame::SendGroup(_) => 0x08,
            Frame::SendMulti(_) => 0x09,
            Frame::GroupOk(_) => 0x86,
            Frame::GroupInfo(_) => 0x87,
            Frame::DeliverShared(_) => 0x88,
            Frame::PolicySet(_) => 0x0A,
            Frame::Report(_) => 0x0B,
            Frame::SendSealed(_) => 0x0C,
            Frame::Ok(_) => 0x89,
            Frame::Redirect(_) => 0x8A,
        };
        assert_eq!(f.type_byte(), ty);
        seen.insert(ty);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), TYPES.to_vec());
}

#[test]
fn every_variant_round_trips_whole() {
    for f in samples() {
        let mut buf = enc(&f);
        let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
        assert_eq!(len, buf.len() - 4, "length field of {f:?}");
        assert_eq!(buf[4], f.type_byte());
        let got = Decoder::new(CLIENT_LIMIT).decode(&mut buf).unwrap();
        assert_eq!(got, Some(Decoded::Frame(f.clone())));
        assert!(buf.is_empty());
    }
}

#[test]
fn every_variant_round_trips_in_one_byte_pieces() {
    for f in samples() {
        let bytes = enc(&f);
        let mut dec = Decoder::new(CLIENT_LIMIT);
        let mut buf = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let got = dec.decode(&mut buf).unwrap();
            if i + 1 < bytes.len() {
                assert_eq!(got, None, "{f:?} decoded early at byte {i}");
                assert_eq!(buf.len(), i + 1, "partial frame must be kept");
            } else {
                assert_eq!(got, Some(Decoded::Frame(f.clone())));
            }
        }
        assert!(buf.is_empty());
    }
}

#[test]
fn frames_back_to_back_in_one_buffer() {
    let frames: Vec<Frame> = samples()
        .into_iter()
        .cycle()
        .take(samples().len() * 3)
        .collect();
    let mut stream = BytesMut::new();
    for f in &frames {
        stream.extend_from_slice(&enc(f));
    }
    assert_eq!(decode_in_pieces(&stream, &[]), frames);
    assert_eq!(
        decode_in_pieces(&stream, &one_byte_cuts(stream.len())),
        frames
    );
    // Cut just before and just after every frame boundary and inside every header.
    let mut cuts = Vec::new();
    let mut at = 0;
    for f in &frames {
        for d in [1, 3, 4, 5, 6] {
            cuts.push(at + d);
        }
        at += enc(f).len();
        cuts.push(at - 1);
    }
    assert_eq!(decode_in_pieces(&stream, &cuts), frames);
}

#[test]
fn encoded_sizes_follow_the_layout() {
    let body_len = |f: &Frame| enc(f).len() - FRAME_HEADER_LEN;
    for f in samples() {
        let expected = match &f {
            Frame::Hello(Hello { token, .. }) => 1 + 2 + token.len(),
            Frame::Send(Send { payload, .. }) => SEND_FIXED_LEN + payload.len(),
            Frame::Ack(Ack { seqs }) => 2 + 8 * seqs.len(),
            Frame::Ping(_) | Frame::Pong(_) => 8,
            Frame::Welcome(_) => 36,
            Frame::Accepted(_) => 28,
            Frame::Deliver(Deliver { payload, .. }) => DELIVER_FIXED_LEN + payload.len(),
            Frame::Error(Refused {
                refusal: Refusal { message, .. },
                ..
            }) => 16 + 2 + 4 + 2 + message.len(),
            Frame::GroupCreate(GroupCreate { members, .. }) => {
                GROUP_CREATE_FIXED_LEN + 8 * members.len()
            }
            Frame::GroupUpdate(GroupUpdate { accounts, .. }) => {
                GROUP_UPDATE_FIXED_LEN + 8 * accounts.len()
            }
            Frame::GroupGet(_) => GROUP_GET_LEN,
            Frame::SendGroup(SendGroup { payload, .. }) => SEND_GROUP_FIXED_LEN + payload.len(),
            Frame::SendMulti(SendMulti {
                recipients,
                payload,
                ..
            }) => {
                SEND_MULTI_FIXED_LEN
                    + recipients
                        .iter()
                        .map(|r| RECIPIENT_FIXED_LEN + r.header.len())
                        .sum::<usize>()
                    + payload.len()
            }
            Frame::GroupOk(_) => GROUP_OK_LEN,
            Frame::GroupInfo(GroupInfo { members, .. }) => {
                GROUP_INFO_FIXED_LEN + GROUP_INFO_ENTRY_LEN * members.len()
            }
            Frame::DeliverShared(DeliverShared {
                header, payload, ..
            }) => DELIVER_SHARED_FIXED_LEN + header.len() + payload.len(),
            Frame::PolicySet(PolicySet { change, .. }) => {
                POLICY_SET_FIXED_LEN
                    + match change {
                        PolicyChange::Reach(_) => 1,
                        PolicyChange::Allow { accounts, .. }
                        | PolicyChange::Block { accounts, .. } => 4 + 8 * accounts.len(),
                        PolicyChange::Networks(names) => {
                            1 + names.iter().map(|n| 1 + n.len()).sum::<usize>()
                        }
                        PolicyChange::AccessKey(k) => 1 + k.len(),
                        PolicyChange::PushToken(t) => 2 + t.len(),
                    }
            }
            Frame::Report(_) => REPORT_LEN,
            Frame::SendSealed(SendSealed {
                access_key,
                payload,
                ..
            }) => SEND_SEALED_FIXED_LEN + access_key.len() + payload.len(),
            Frame::Ok(_) => OK_LEN,
            // epoch, then the address as text (PROTOCOL.md: length 11 + n).
            Frame::Redirect(r) => 8 + 2 + r.addr.len(),
        };
        assert_eq!(body_len(&f), expected, "{f:?}");
    }
    // The figures PROTOCOL.md's tables state.
    assert_eq!(SEND_FIXED_LEN, 33);
    assert_eq!(DELIVER_FIXED_LEN, 53);
    assert_eq!(FRAME_HEADER_LEN, 5);
    assert_eq!(GROUP_CREATE_FIXED_LEN, 28);
    assert_eq!(GROUP_UPDATE_FIXED_LEN, 29);
    assert_eq!(GROUP_GET_LEN, 32);
    assert_eq!(SEND_GROUP_FIXED_LEN, 29);
    assert_eq!(SEND_MULTI_FIXED_LEN, 23);
    assert_eq!(RECIPIENT_FIXED_LEN, 14);
    assert_eq!(GROUP_OK_LEN, 36);
    assert_eq!(GROUP_INFO_FIXED_LEN, 52);
    assert_eq!(DELIVER_SHARED_FIXED_LEN, 63);
    assert_eq!(POLICY_SET_FIXED_LEN, 17);
    assert_eq!(REPORT_LEN, 24);
    assert_eq!(SEND_SEALED_FIXED_LEN, 34);
    assert_eq!(OK_LEN, 16);
}

#[test]
fn group_constants_have_their_wire_values() {
    assert_eq!(
        [
            group_op::ADD_MEMBERS,
            group_op::REMOVE_MEMBERS,
            group_op::ADD_ADMINS,
            group_op::REMOVE_ADMINS,
            group_op::DELETE
        ],
        [1, 2, 3, 4, 5]
    );
    assert_eq!([role::MEMBER, role::ADMIN], [1, 2]);
}

#[test]
fn privacy_constants_have_their_wire_values() {
    assert_eq!([reach::EVERYONE, reach::CONTACTS, reach::NOBODY], [0, 1, 2]);
    assert_eq!([flags::EPHEMERAL, flags::URGENT], [0x01, 0x02]);
    assert_eq!(flags::KNOWN, 0x03);
    // The kind byte of each change, at offset 16 of the body.
    let kinds = [
        (PolicyChange::Reach(reach::NOBODY), 1),
        (
            PolicyChange::Allow {
                add: true,
                accounts: vec![],
            },
            2,
        ),
        (
            PolicyChange::Allow {
                add: false,
                accounts: vec![],
            },
            3,
        ),
        (
            PolicyChange::Block {
                add: true,
                accounts: vec![],
            },
            4,
        ),
        (
            PolicyChange::Block {
                add: false,
                accounts: vec![],
            },
            5,
        ),
        (PolicyChange::Networks(vec![]), 6),
        (PolicyChange::AccessKey(Bytes::new()), 7),
        (PolicyChange::PushToken(Bytes::new()), 8),
    ];
    for (change, kind) in kinds {
        let bytes = enc(&policy(change.clone()));
        assert_eq!(bytes[FRAME_HEADER_LEN + 16], kind, "{change:?}");
    }
    let codes = [
        (ErrorCode::RecipientUnreachable, 29, false),
        (ErrorCode::RateLimited, 30, false),
        (ErrorCode::Residency, 31, true),
        (ErrorCode::BadAccessKey, 37, false),
    ];
    for (code, value, fatal) in codes {
        assert_eq!((code.as_u16(), code.is_fatal()), (value, fatal), "{code}");
    }
}

/// Network names, access keys and push tokens have u8/u16 length fields (and networks a u8
/// count): the encoder cuts them (names on a character boundary) and the decoder yields the
/// cut frame.
#[test]
fn policy_values_and_sealed_keys_are_truncated_to_their_length_fields() {
    let names: Vec<String> = (0..300).map(|i| format!("net-{i}")).collect();
    let cases = [
        policy(PolicyChange::Networks(names.clone())),
        policy(PolicyChange::Networks(vec![
            "a".repeat(254) + "é",
            "b".repeat(300),
        ])),
        policy(PolicyChange::AccessKey(Bytes::from(vec![1; 256]))),
        policy(PolicyChange::PushToken(Bytes::from(vec![2; 70_000]))),
        Frame::SendSealed(SendSealed {
            msg_id: id(),
            to_account: 1,
            to_device: 0,
            ttl_secs: 0,
            flags: 0,
            access_key: Bytes::from(vec![3; 300]),
            payload: Bytes::from_static(b"pay"),
        }),
    ];
    for f in cases {
        let want = normalized(&f);
        assert_ne!(want, f, "the case must exercise truncation");
        let mut buf = enc(&f);
        let got = Decoder::new(buf.len()).decode(&mut buf).unwrap();
        assert_eq!(got, Some(Decoded::Frame(want.clone())));
        assert!(buf.is_empty());
        match want {
            Frame::PolicySet(PolicySet {
                change: PolicyChange::Networks(n),
                ..
            }) if n.len() == 255 => assert_eq!(n[..], names[..255]),
            Frame::PolicySet(PolicySet {
                change: PolicyChange::Networks(n),
                ..
            }) => {
                // 'é' would end at byte 256: the name stops before it.
                assert_eq!((n[0].len(), n[1].len()), (254, 255));
            }
            Frame::PolicySet(PolicySet {
                change: PolicyChange::AccessKey(k),
                ..
            }) => assert_eq!(k.len(), 255),
            Frame::PolicySet(PolicySet {
                change: PolicyChange::PushToken(t),
                ..
            }) => assert_eq!(t.len(), 65_535),
            Frame::SendSealed(SendSealed {
                access_key,
                payload,
                ..
            }) => assert_eq!((access_key.len(), &payload[..]), (255, &b"pay"[..])),
            other => panic!("{other:?}"),
        }
    }
}

/// The largest `SEND_SEALED` the node accepts (64-byte key, 256 KiB payload: 262 243 bytes)
/// fits the node limit; an oversized one is skipped like a `SEND`.
#[test]
fn largest_send_sealed_fits_the_node_limit() {
    let sealed = |key: usize, payload: usize| {
        Frame::SendSealed(SendSealed {
            msg_id: id(),
            to_account: 43,
            to_device: 0,
            ttl_secs: 0,
            flags: 0,
            access_key: Bytes::from(vec![9; key]),
            payload: Bytes::from(vec![7; payload]),
        })
    };
    let f = sealed(MAX_ACCESS_KEY, DEFAULT_MAX_ENVELOPE);
    let mut buf = enc(&f);
    assert_eq!(buf.len() - 4, LARGEST_SEND_SEALED);
    assert_eq!(LARGEST_SEND_SEALED, 262_243);
    assert_eq!(
        Decoder::new(NODE_LIMIT).decode(&mut buf),
        Ok(Some(Decoded::Frame(f)))
    );
    let mut over = enc(&sealed(255, NODE_LIMIT));
    let len = over.len() - 4;
    assert_eq!(
        Decoder::new(NODE_LIMIT).decode(&mut over),
        Ok(Some(Decoded::OversizedSend { msg_id: id(), len }))
    );
    assert!(over.is_empty());
}

/// The allow and block lists of one `POLICY_SET` are bounded by the node's frame limit:
/// 66 523 accounts by default (PROTOCOL.md §4); one more is a fatal `TooLong`.
#[test]
fn policy_account_lists_are_bounded_by_the_frame_limit() {
    let max = (NODE_LIMIT - 1 - POLICY_LIST_FIXED_LEN) / 8;
    assert_eq!(max, 66_523);
    for (add, block) in [(true, false), (false, true)] {
        let list = |n: usize| {
            let accounts: Vec<u64> = (1..=n as u64).collect();
            policy(if block {
                PolicyChange::Block { add, accounts }
            } else {
                PolicyChange::Allow { add, accounts }
            })
        };
        let f = list(max);
        let mut buf = enc(&f);
        assert!(buf.len() - 4 <= NODE_LIMIT);
        assert_eq!(
            Decoder::new(NODE_LIMIT).decode(&mut buf),
            Ok(Some(Decoded::Frame(f)))
        );
        let mut buf = enc(&list(max + 1));
        let len = buf.len() - 4;
        assert_eq!(
            Decoder::new(NODE_LIMIT).decode(&mut buf),
            Err(DecodeError::TooLong {
                len,
                max: NODE_LIMIT
            })
        );
    }
}

#[test]
fn error_text_is_truncated_at_1024_bytes_on_a_char_boundary() {
    let cases = [
        ("a".repeat(1024), 1024),
        ("a".repeat(1025), 1024),
        ("a".repeat(1023) + "é", 1023), // 'é' (2 bytes) would end at 1025
        ("€".repeat(400), 1023),        // 3-byte chars: 341 of them fit
        ("a".repeat(1022) + "😀", 1022), // 4-byte char straddling the limit
        ("a".repeat(1020) + "😀", 1024), // ... or ending exactly on it
        ("x".repeat(70_000), 1024),     // longer than a u16 could even say
        (String::new(), 0),
    ];
    for (text, want) in cases {
        let err = Frame::Error(Refused {
            msg_id: id(),
            refusal: Refusal {
                code: ErrorCode::Internal,
                retry_after_ms: 7,
                message: text.clone().into(),
            },
        });
        let hello = Frame::Hello(Hello {
            version: 1,
            token: text.clone(),
        });
        for (f, kind) in [(err, "ERROR"), (hello, "HELLO")] {
            let mut buf = enc(&f);
            let got = match Decoder::new(CLIENT_LIMIT).decode(&mut buf).unwrap() {
                Some(Decoded::Frame(Frame::Error(Refused {
                    refusal: Refusal { message, .. },
                    ..
                }))) => message.into_owned(),
                Some(Decoded::Frame(Frame::Hello(Hello { token, .. }))) => token,
                other => panic!("{kind}: {other:?}"),
            };
            assert_eq!(got.len(), want, "{kind} text of {} bytes", text.len());
            assert!(text.starts_with(&got));
            assert_eq!(got, truncated(&text));
        }
    }
}

#[test]
fn ack_is_truncated_to_65535_seqs() {
    let seqs: Vec<u64> = (1..=70_000).collect();
    let mut buf = enc(&Frame::Ack(Ack { seqs: seqs.clone() }));
    assert_eq!(buf.len(), FRAME_HEADER_LEN + 2 + 8 * 65_535);
    let got = Decoder::new(buf.len()).decode(&mut buf).unwrap();
    assert_eq!(
        got,
        Some(Decoded::Frame(Frame::Ack(Ack {
            seqs: seqs[..65_535].to_vec()
        })))
    );
}

/// With the default node limit the u16 count is what bounds an `ACK`: the longest `ACK` the
/// encoder can produce (65535 seqs) fits (PROTOCOL.md §4).
#[test]
fn every_encodable_ack_fits_the_node_limit() {
    assert!((NODE_LIMIT - 3) / 8 >= u16::MAX as usize);
    let seqs = vec![5; u16::MAX as usize];
    let mut buf = enc(&Frame::Ack(Ack { seqs: seqs.clone() }));
    let got = Decoder::new(NODE_LIMIT).decode(&mut buf).unwrap();
    assert_eq!(got, Some(Decoded::Frame(Frame::Ack(Ack { seqs }))));
}

/// The largest `GROUP_CREATE` / `GROUP_UPDATE` the default node limit admits (PROTOCOL.md says
/// 66 522 accounts); one account more is a fatal `TooLong`, not a skip.
#[test]
fn group_member_lists_are_bounded_by_the_frame_limit() {
    let create = |n: usize| {
        Frame::GroupCreate(GroupCreate {
            req_id: id(),
            group: 7,
            members: (1..=n as u64).collect(),
        })
    };
    let update = |n: usize| {
        Frame::GroupUpdate(GroupUpdate {
            req_id: id(),
            group: 7,
            op: group_op::ADD_MEMBERS,
            accounts: (1..=n as u64).collect(),
        })
    };
    let max_create = (NODE_LIMIT - 1 - GROUP_CREATE_FIXED_LEN) / 8;
    let max_update = (NODE_LIMIT - 1 - GROUP_UPDATE_FIXED_LEN) / 8;
    assert_eq!((max_create, max_update), (66_522, 66_522));
    for (f, over) in [
        (create(max_create), create(max_create + 1)),
        (update(max_update), update(max_update + 1)),
    ] {
        let mut buf = enc(&f);
        assert!(buf.len() - 4 <= NODE_LIMIT);
        let got = Decoder::new(NODE_LIMIT).decode(&mut buf).unwrap();
        assert_eq!(got, Some(Decoded::Frame(f)));
        let mut buf = enc(&over);
        let len = buf.len() - 4;
        assert!(len > NODE_LIMIT);
        assert_eq!(
            Decoder::new(NODE_LIMIT).decode(&mut buf),
            Err(DecodeError::TooLong {
                len,
                max: NODE_LIMIT
            })
        );
    }
}

#[test]
fn largest_send_and_deliver_fit_their_limits() {
    let payload = Bytes::from(vec![7u8; DEFAULT_MAX_ENVELOPE]);
    let send = Frame::Send(Send {
        msg_id: id(),
        to_account: 1,
        to_device: 2,
        ttl_secs: 0,
        flags: 0,
        payload: payload.clone(),
    });
    let mut buf = enc(&send);
    assert_eq!(buf.len() - 4, SEND_LIMIT);
    assert_eq!(SEND_LIMIT, 262_178);
    let got = Decoder::new(NODE_LIMIT).decode(&mut buf).unwrap();
    assert_eq!(got, Some(Decoded::Frame(send)));

    let send_group = Frame::SendGroup(SendGroup {
        msg_id: id(),
        group: 1,
        ttl_secs: 0,
        flags: 0,
        payload: payload.clone(),
    });
    let mut buf = enc(&send_group);
    assert_eq!(
        buf.len() - 4,
        1 + SEND_GROUP_FIXED_LEN + DEFAULT_MAX_ENVELOPE
    );
    assert!(buf.len() - 4 < SEND_LIMIT);
    let got = Decoder::new(NODE_LIMIT).decode(&mut buf).unwrap();
    assert_eq!(got, Some(Decoded::Frame(send_group)));

    let deliver = Frame::Deliver(Deliver {
        meta: DeliverMeta {
            seq: 9,
            msg_id: id(),
            from_account: 1,
            from_device: 2,
            accepted_at_ms: 3,
            expires_at_ms: 4,
            flags: 0,
        },
        payload,
    });
    let mut buf = enc(&deliver);
    assert_eq!(buf.len() - 4, DELIVER_LIMIT);
    assert_eq!(DELIVER_LIMIT, 262_198);
    let got = Decoder::new(CLIENT_LIMIT).decode(&mut buf).unwrap();
    assert_eq!(got, Some(Decoded::Frame(deliver)));
}

fn largest_send_multi(payload_len: usize) -> Frame {
    Frame::SendMulti(SendMulti {
        msg_id: id(),
        ttl_secs: 0,
        flags: 0,
        recipients: (0..DEFAULT_MAX_MULTI_RECIPIENTS as u64)
            .map(|a| rcpt(a, 0, &[0xee; DEFAULT_MAX_HEADER]))
            .collect(),
        payload: Bytes::from(vec![7u8; payload_len]),
    })
}

/// The node's default frame limit admits the largest `SEND_MULTI` it accepts (1000 recipients
/// with 256-byte headers and a 256 KiB payload: 532 168 bytes) with 40 bytes to spare
/// (PROTOCOL.md §4: 532 208); a longer one is skipped as oversized.
#[test]
fn largest_send_multi_fits_the_node_limit() {
    let f = largest_send_multi(DEFAULT_MAX_ENVELOPE);
    let mut buf = enc(&f);
    assert_eq!(buf.len() - 4, LARGEST_SEND_MULTI);
    assert_eq!(LARGEST_SEND_MULTI, 532_168);
    assert_eq!(NODE_LIMIT, 532_208);
    let got = Decoder::new(NODE_LIMIT).decode(&mut buf).unwrap();
    assert_eq!(got, Some(Decoded::Frame(f)));
    assert!(buf.is_empty());

    let spare = NODE_LIMIT - LARGEST_SEND_MULTI;
    let mut at = enc(&largest_send_multi(DEFAULT_MAX_ENVELOPE + spare));
    assert!(matches!(
        Decoder::new(NODE_LIMIT).decode(&mut at),
        Ok(Some(Decoded::Frame(Frame::SendMulti(_))))
    ));
    let mut over = enc(&largest_send_multi(DEFAULT_MAX_ENVELOPE + spare + 1));
    assert_eq!(
        Decoder::new(NODE_LIMIT).decode(&mut over),
        Ok(Some(Decoded::OversizedSend {
            msg_id: id(),
            len: NODE_LIMIT + 1
        }))
    );
    assert!(over.is_empty());
}

/// A client's limit is the largest `DELIVER_SHARED` (256-byte header, 256 KiB payload):
/// 262 464 bytes (PROTOCOL.md §4).
#[test]
fn largest_deliver_shared_is_the_client_limit() {
    let f = Frame::DeliverShared(DeliverShared {
        meta: DeliverMeta {
            seq: 1,
            msg_id: id(),
            from_account: 1,
            from_device: 2,
            accepted_at_ms: 3,
            expires_at_ms: 4,
            flags: 0,
        },
        group: 0,
        header: Bytes::from(vec![1u8; DEFAULT_MAX_HEADER]),
        payload: Bytes::from(vec![2u8; DEFAULT_MAX_ENVELOPE]),
    });
    let mut buf = enc(&f);
    assert_eq!(buf.len() - 4, CLIENT_LIMIT);
    assert_eq!(CLIENT_LIMIT, 262_464);
    let got = Decoder::new(CLIENT_LIMIT).decode(&mut buf).unwrap();
    assert_eq!(got, Some(Decoded::Frame(f)));
}

/// A `GROUP_INFO` page of at most 29 127 members is no longer than the largest `DELIVER`, the
/// bound PROTOCOL.md gives for the node's page cap.
#[test]
fn largest_group_info_page_fits_a_deliver() {
    assert_eq!(MAX_PAGE, 29_127);
    let page = |n: usize| {
        Frame::GroupInfo(GroupInfo {
            req_id: id(),
            group: 7,
            version: 1,
            creator: 42,
            total: 100_000,
            offset: 0,
            members: (0..n as u64).map(|a| (a, role::MEMBER)).collect(),
        })
    };
    let f = page(MAX_PAGE);
    let mut buf = enc(&f);
    assert!(buf.len() - 4 <= DELIVER_LIMIT);
    assert!(enc(&page(MAX_PAGE + 1)).len() - 4 > DELIVER_LIMIT);
    let got = Decoder::new(CLIENT_LIMIT).decode(&mut buf).unwrap();
    assert_eq!(got, Some(Decoded::Frame(f)));
}

/// Like `ACK` seqs, `SEND_MULTI` recipients and headers have u16 counts: the encoder truncates
/// at 65535 and the decoder yields the truncated frame.
#[test]
fn recipients_and_headers_are_truncated_to_65535() {
    let many = Frame::SendMulti(SendMulti {
        msg_id: id(),
        ttl_secs: 1,
        flags: 0,
        recipients: (0..70_000u64).map(|a| rcpt(a, 1, b"")).collect(),
        payload: Bytes::from_static(b"pay"),
    });
    let long_header = Frame::SendMulti(SendMulti {
        msg_id: id(),
        ttl_secs: 1,
        flags: 0,
        recipients: vec![rcpt(1, 0, &[9; 70_000]), rcpt(2, 0, b"x")],
        payload: Bytes::from_static(b"pay"),
    });
    let shared = Frame::DeliverShared(DeliverShared {
        meta: DeliverMeta {
            seq: 1,
            msg_id: id(),
            from_account: 1,
            from_device: 1,
            accepted_at_ms: 1,
            expires_at_ms: 2,
            flags: 0,
        },
        group: 0,
        header: Bytes::from(vec![9; 70_000]),
        payload: Bytes::from_static(b"pay"),
    });
    for f in [many, long_header, shared] {
        let mut buf = enc(&f);
        let want = normalized(&f);
        assert_ne!(want, f, "the case must exercise truncation");
        let got = Decoder::new(buf.len()).decode(&mut buf).unwrap();
        assert_eq!(got, Some(Decoded::Frame(want)));
        assert!(buf.is_empty());
    }
}

/// Decoded payloads, headers, access keys and push tokens are slices of the read buffer, not
/// copies: a fan-out can pass them on without copying.
#[test]
fn payloads_and_headers_are_not_copied() {
    let frames = [
        Frame::SendMulti(SendMulti {
            msg_id: id(),
            ttl_secs: 1,
            flags: 0,
            recipients: vec![rcpt(1, 0, &[1; 40]), rcpt(2, 3, &[2; 40])],
            payload: Bytes::from(vec![3; 500]),
        }),
        Frame::DeliverShared(DeliverShared {
            meta: DeliverMeta {
                seq: 1,
                msg_id: id(),
                from_account: 1,
                from_device: 1,
                accepted_at_ms: 1,
                expires_at_ms: 2,
                flags: 0,
            },
            group: 0,
            header: Bytes::from(vec![4; 40]),
            payload: Bytes::from(vec![5; 500]),
        }),
        Frame::SendSealed(SendSealed {
            msg_id: id(),
            to_account: 1,
            to_device: 0,
            ttl_secs: 1,
            flags: 0,
            access_key: Bytes::from(vec![6; 32]),
            payload: Bytes::from(vec![7; 500]),
        }),
        policy(PolicyChange::AccessKey(Bytes::from(vec![8; 32]))),
        policy(PolicyChange::PushToken(Bytes::from(vec![9; 200]))),
    ];
    for f in frames {
        let mut buf = enc(&f);
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        let inside = |b: &Bytes| {
            range.contains(&(b.as_ptr() as usize))
                && range.contains(&(b.as_ptr() as usize + b.len() - 1))
        };
        let got = match Decoder::new(CLIENT_LIMIT).decode(&mut buf).unwrap() {
            Some(Decoded::Frame(g)) => g,
            other => panic!("{other:?}"),
        };
        assert_eq!(got, f);
        match got {
            Frame::SendMulti(SendMulti {
                recipients,
                payload,
                ..
            }) => {
                assert!(inside(&payload));
                assert!(recipients.iter().all(|r| inside(&r.header)));
            }
            Frame::DeliverShared(DeliverShared {
                header, payload, ..
            }) => assert!(inside(&header) && inside(&payload)),
            Frame::SendSealed(SendSealed {
                access_key,
                payload,
                ..
            }) => assert!(inside(&access_key) && inside(&payload)),
            Frame::PolicySet(PolicySet {
                change: PolicyChange::AccessKey(b) | PolicyChange::PushToken(b),
                ..
            }) => assert!(inside(&b)),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn message_id_is_big_endian() {
    let id = MessageId::from_u128(0x0102);
    assert_eq!(id.0[14..], [0x01, 0x02]);
    assert_eq!(id.as_u128(), 0x0102);
    assert_eq!(MessageId::NONE.as_u128(), 0);
    let e = Frame::error(ErrorCode::ProtocolViolation, "x");
    assert!(matches!(
        e,
        Frame::Error(Refused {
            msg_id: MessageId::NONE,
            refusal: Refusal {
                retry_after_ms: 0,
                ..
            },
            ..
        })
    ));
}

proptest! {
    #[test]
    fn any_frame_round_trips(f in arb_frame()) {
        let mut buf = enc(&f);
        let got = Decoder::new(CLIENT_LIMIT).decode(&mut buf).unwrap();
        prop_assert_eq!(got, Some(Decoded::Frame(normalized(&f))));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn any_frame_round_trips_in_one_byte_pieces(f in arb_frame()) {
        let bytes = enc(&f);
        prop_assert_eq!(
            decode_in_pieces(&bytes, &one_byte_cuts(bytes.len())),
            vec![normalized(&f)]
        );
    }

    #[test]
    fn frame_sequences_survive_any_chunking(
        frames in prop::collection::vec(arb_frame(), 1..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut stream = BytesMut::new();
        for f in &frames {
            stream.extend_from_slice(&enc(f));
        }
        let cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        let want: Vec<Frame> = frames.iter().map(normalized).collect();
        prop_assert_eq!(decode_in_pieces(&stream, &cuts), want);
    }
}

/// A stream may end only between frames: `Decoder::finish` tells a peer that finished its
/// stream inside one (the node answers MALFORMED_FRAME, PROTOCOL.md §1).
#[test]
fn a_stream_may_end_only_between_frames() {
    for f in samples() {
        let bytes = enc(&f);
        for cut in 0..=bytes.len() {
            let mut d = Decoder::new(NODE_LIMIT);
            let mut buf = BytesMut::from(&bytes[..cut]);
            while d.decode(&mut buf).unwrap().is_some() {}
            let whole = cut == 0 || cut == bytes.len();
            assert_eq!(d.is_mid_frame(&buf), !whole, "{f:?} cut {cut}");
            let want = if whole {
                Ok(())
            } else {
                Err(DecodeError::Unfinished)
            };
            assert_eq!(d.finish(&buf), want, "{f:?} cut {cut}");
        }
    }
    // Inside an oversized SEND being skipped, the buffer is empty but the frame is not over.
    let big = enc(&Frame::Send(Send {
        msg_id: id(),
        to_account: 1,
        to_device: 0,
        ttl_secs: 0,
        flags: 0,
        payload: Bytes::from(vec![7u8; 100]),
    }));
    let mut d = Decoder::new(64);
    let mut buf = BytesMut::from(&big[..80]);
    assert!(matches!(
        d.decode(&mut buf),
        Ok(Some(Decoded::OversizedSend { .. }))
    ));
    assert!(buf.is_empty());
    assert_eq!(d.finish(&buf), Err(DecodeError::Unfinished));
    buf.extend_from_slice(&big[80..]);
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert_eq!(d.finish(&buf), Ok(()));
    assert_eq!(
        DecodeError::Unfinished.to_string(),
        "stream finished inside a frame"
    );
    assert_eq!(DecodeError::Unfinished.code(), ErrorCode::MalformedFrame);
}

/// `Frame::request_id` names the id every client request carries and its answer echoes.
#[test]
fn request_ids_of_client_frames() {
    for f in samples() {
        let want = match &f {
            Frame::Send(x) => Some(x.msg_id),
            Frame::SendGroup(x) => Some(x.msg_id),
            Frame::SendMulti(x) => Some(x.msg_id),
            Frame::SendSealed(x) => Some(x.msg_id),
            Frame::GroupCreate(x) => Some(x.req_id),
            Frame::GroupUpdate(x) => Some(x.req_id),
            Frame::GroupGet(x) => Some(x.req_id),
            Frame::PolicySet(x) => Some(x.req_id),
            Frame::Report(x) => Some(x.req_id),
            _ => None,
        };
        assert_eq!(f.request_id(), want, "{f:?}");
        if f.type_byte() < 0x80 && !matches!(f, Frame::Hello(_) | Frame::Ack(_) | Frame::Ping(_)) {
            assert!(want.is_some(), "{f:?}");
        }
    }
    assert!(MessageId::NONE.is_none());
    assert!(!MessageId::from_u128(1).is_none());
}
