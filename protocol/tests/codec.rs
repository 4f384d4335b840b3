//! Codec round trips: every frame variant whole, in one-byte pieces, in random chunkings and back
//! to back in one buffer; text and `ACK` truncation; the size limits at their edges.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use hearth_protocol::{
    Decoded, Decoder, ErrorCode, Frame, MessageId, DEFAULT_MAX_ENVELOPE, DELIVER_FIXED_LEN,
    FRAME_HEADER_LEN, SEND_FIXED_LEN,
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
            Frame::Hello { .. } => 0x01,
            Frame::Send { .. } => 0x02,
            Frame::Ack { .. } => 0x03,
            Frame::Ping { .. } => 0x04,
            Frame::Welcome { .. } => 0x81,
            Frame::Accepted { .. } => 0x82,
            Frame::Deliver { .. } => 0x83,
            Frame::Error { .. } => 0x84,
            Frame::Pong { .. } => 0x85,
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
            Frame::Hello { token, .. } => 1 + 2 + token.len(),
            Frame::Send { payload, .. } => SEND_FIXED_LEN + payload.len(),
            Frame::Ack { seqs } => 2 + 8 * seqs.len(),
            Frame::Ping { .. } | Frame::Pong { .. } => 8,
            Frame::Welcome { .. } => 28,
            Frame::Accepted { .. } => 28,
            Frame::Deliver { payload, .. } => DELIVER_FIXED_LEN + payload.len(),
            Frame::Error { message, .. } => 16 + 2 + 4 + 2 + message.len(),
        };
        assert_eq!(body_len(&f), expected, "{f:?}");
    }
    assert_eq!(SEND_FIXED_LEN, 33);
    assert_eq!(DELIVER_FIXED_LEN, 53);
    assert_eq!(FRAME_HEADER_LEN, 5);
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
        let err = Frame::Error {
            msg_id: id(),
            code: ErrorCode::Internal,
            retry_after_ms: 7,
            message: text.clone(),
        };
        let hello = Frame::Hello {
            version: 1,
            token: text.clone(),
        };
        for (f, kind) in [(err, "ERROR"), (hello, "HELLO")] {
            let mut buf = enc(&f);
            let got = match Decoder::new(CLIENT_LIMIT).decode(&mut buf).unwrap() {
                Some(Decoded::Frame(Frame::Error { message, .. })) => message,
                Some(Decoded::Frame(Frame::Hello { token, .. })) => token,
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
    let mut buf = enc(&Frame::Ack { seqs: seqs.clone() });
    assert_eq!(buf.len(), FRAME_HEADER_LEN + 2 + 8 * 65_535);
    let got = Decoder::new(buf.len()).decode(&mut buf).unwrap();
    assert_eq!(
        got,
        Some(Decoded::Frame(Frame::Ack {
            seqs: seqs[..65_535].to_vec()
        }))
    );
}

/// The frame limit also bounds `ACK`: with the default limit a node takes at most 32771 seqs in
/// one `ACK` (PROTOCOL.md says so); one more is a fatal `TooLong`.
#[test]
fn ack_must_also_fit_the_frame_limit() {
    let max_seqs = (NODE_LIMIT - 3) / 8;
    assert_eq!(max_seqs, 32_771);
    let mut fits = enc(&Frame::Ack {
        seqs: vec![5; max_seqs],
    });
    let got = Decoder::new(NODE_LIMIT).decode(&mut fits).unwrap();
    assert_eq!(
        got,
        Some(Decoded::Frame(Frame::Ack {
            seqs: vec![5; max_seqs]
        }))
    );
    let mut over = enc(&Frame::Ack {
        seqs: vec![5; max_seqs + 1],
    });
    assert_eq!(
        Decoder::new(NODE_LIMIT).decode(&mut over),
        Err(hearth_protocol::DecodeError::TooLong {
            len: 3 + 8 * (max_seqs + 1),
            max: NODE_LIMIT
        })
    );
}

#[test]
fn largest_send_and_deliver_fit_their_limits() {
    let payload = Bytes::from(vec![7u8; DEFAULT_MAX_ENVELOPE]);
    let send = Frame::Send {
        msg_id: id(),
        to_account: 1,
        to_device: 2,
        ttl_secs: 0,
        flags: 0,
        payload: payload.clone(),
    };
    let mut buf = enc(&send);
    assert_eq!(buf.len() - 4, NODE_LIMIT);
    assert_eq!(NODE_LIMIT, 262_178);
    let got = Decoder::new(NODE_LIMIT).decode(&mut buf).unwrap();
    assert_eq!(got, Some(Decoded::Frame(send)));

    let deliver = Frame::Deliver {
        seq: 9,
        msg_id: id(),
        from_account: 1,
        from_device: 2,
        accepted_at_ms: 3,
        expires_at_ms: 4,
        flags: 0,
        payload,
    };
    let mut buf = enc(&deliver);
    assert_eq!(buf.len() - 4, CLIENT_LIMIT);
    assert_eq!(CLIENT_LIMIT, 262_198);
    let got = Decoder::new(CLIENT_LIMIT).decode(&mut buf).unwrap();
    assert_eq!(got, Some(Decoded::Frame(deliver)));
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
        Frame::Error {
            msg_id: MessageId::NONE,
            retry_after_ms: 0,
            ..
        }
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
