//! Malformed input: every way a peer can get a frame wrong is an error (or, for an oversized
//! `SEND`, a skip), never a panic, and nothing is allocated from a length the peer claims.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use hearth_protocol::{
    DecodeError, Decoded, Decoder, ErrorCode, Frame, MessageId, DELIVER_FIXED_LEN, SEND_FIXED_LEN,
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

fn kind(ty: u8) -> &'static str {
    match ty {
        0x01 => "HELLO",
        0x02 => "SEND",
        0x03 => "ACK",
        0x04 => "PING",
        0x81 => "WELCOME",
        0x82 => "ACCEPTED",
        0x83 => "DELIVER",
        0x84 => "ERROR",
        0x85 => "PONG",
        _ => unreachable!(),
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
            match ty {
                // The payload has no length of its own: a shorter body is a shorter payload.
                0x02 | 0x83 => {
                    let fixed = if ty == 0x02 {
                        SEND_FIXED_LEN
                    } else {
                        DELIVER_FIXED_LEN
                    };
                    if cut < fixed {
                        assert_eq!(got, malformed(kind(ty), "body too short"), "cut {cut}");
                    } else {
                        match got {
                            Ok(Some(Decoded::Frame(
                                Frame::Send { payload, .. } | Frame::Deliver { payload, .. },
                            ))) => assert_eq!(payload.len(), cut - fixed),
                            other => panic!("cut {cut}: {other:?}"),
                        }
                    }
                }
                0x03 if cut >= 2 => {
                    assert_eq!(
                        got,
                        malformed("ACK", "count does not match length"),
                        "cut {cut}"
                    )
                }
                _ => assert_eq!(
                    got,
                    malformed(kind(ty), "body too short"),
                    "{f:?} cut {cut}"
                ),
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
        match ty {
            0x02 | 0x83 => match got {
                // Extra bytes of a SEND or DELIVER are payload.
                Ok(Some(Decoded::Frame(
                    Frame::Send { payload, .. } | Frame::Deliver { payload, .. },
                ))) => assert_eq!(payload.last(), Some(&0)),
                other => panic!("{other:?}"),
            },
            0x03 => assert_eq!(got, malformed("ACK", "count does not match length")),
            _ => assert_eq!(got, malformed(kind(ty), "trailing bytes"), "{f:?}"),
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
        Ok(Some(Decoded::Frame(Frame::Ack { seqs: vec![] })))
    );
    assert_eq!(
        ack(2, &[5, 6], &[]),
        Ok(Some(Decoded::Frame(Frame::Ack { seqs: vec![5, 6] })))
    );
    assert_eq!(decode(&raw(0x03, &[0])), malformed("ACK", "body too short"));
}

#[test]
fn huge_length_of_a_non_send_fails_at_once_without_allocating() {
    for ty in (0..=255u8).filter(|t| *t != 0x02) {
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

/// A SEND claiming 4 GiB is reported once and exactly its bytes are skipped, in bounded memory;
/// the frame after it decodes.
#[test]
fn huge_send_is_skipped_exactly_then_the_next_frame_decodes() {
    let len = u32::MAX as usize;
    let mut dec = Decoder::new(NODE_LIMIT);
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x02]);
    buf.extend_from_slice(&id().0[..15]);
    assert_eq!(dec.decode(&mut buf), Ok(None), "needs the whole message id");
    buf.extend_from_slice(&id().0[15..]);
    assert_eq!(
        dec.decode(&mut buf),
        Ok(Some(Decoded::OversizedSend { msg_id: id(), len }))
    );
    assert!(buf.is_empty());

    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK];
    let mut left = len - 1 - 16; // type byte and msg_id are consumed
    while left > CHUNK {
        buf.extend_from_slice(&zeros);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        assert!(buf.is_empty());
        left -= CHUNK;
    }
    buf.extend_from_slice(&zeros[..left]);
    buf.extend_from_slice(&enc(&Frame::Ping { nonce: 77 }));
    assert_eq!(
        dec.decode(&mut buf),
        Ok(Some(Decoded::Frame(Frame::Ping { nonce: 77 })))
    );
    assert!(buf.is_empty());
    assert!(
        buf.capacity() <= 2 * CHUNK,
        "buffer grew to {}",
        buf.capacity()
    );
}

#[test]
fn oversized_send_fed_byte_by_byte_is_reported_once() {
    let send = Frame::Send {
        msg_id: id(),
        to_account: 1,
        to_device: 0,
        ttl_secs: 0,
        flags: 0,
        payload: Bytes::from(vec![1u8; 200]),
    };
    let limit = 100;
    let mut stream = enc(&send).to_vec();
    stream.extend_from_slice(&enc(&Frame::Ack { seqs: vec![3] }));
    stream.extend_from_slice(&enc(&send)); // oversized again, now all in one buffer
    stream.extend_from_slice(&enc(&Frame::Ping { nonce: 1 }));
    let oversized = Decoded::OversizedSend {
        msg_id: id(),
        len: 1 + SEND_FIXED_LEN + 200,
    };
    let want = vec![
        oversized.clone(),
        Decoded::Frame(Frame::Ack { seqs: vec![3] }),
        oversized,
        Decoded::Frame(Frame::Ping { nonce: 1 }),
    ];

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
fn send_at_the_limit_is_a_frame_and_one_more_byte_is_oversized() {
    let mk = |n: usize| {
        enc(&Frame::Send {
            msg_id: id(),
            to_account: 1,
            to_device: 0,
            ttl_secs: 0,
            flags: 0,
            payload: Bytes::from(vec![0u8; n]),
        })
    };
    let limit = 1 + SEND_FIXED_LEN + 64;
    let mut at = mk(64);
    assert!(matches!(
        Decoder::new(limit).decode(&mut at),
        Ok(Some(Decoded::Frame(_)))
    ));
    let mut over = mk(65);
    assert_eq!(
        Decoder::new(limit).decode(&mut over),
        Ok(Some(Decoded::OversizedSend {
            msg_id: id(),
            len: limit + 1
        }))
    );
    assert!(over.is_empty());
}

#[test]
fn oversized_send_too_short_to_hold_an_id_is_too_long() {
    // With a limit below 17 bytes, a "SEND" cannot even carry its message id.
    let mut buf = BytesMut::from(&raw(0x02, &[0u8; 12])[..]);
    assert_eq!(
        Decoder::new(8).decode(&mut buf),
        Err(DecodeError::TooLong { len: 13, max: 8 })
    );
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
        Frame::Hello {
            version: 1,
            token: "z".repeat(1024)
        }
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
        Ok(Some(Decoded::Frame(Frame::Error { .. })))
    ));
}

#[test]
fn unknown_error_codes_are_malformed() {
    let mut known = 0;
    for code in 0..=u16::MAX {
        let mut body = MessageId::NONE.0.to_vec();
        body.extend_from_slice(&code.to_be_bytes());
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let got = decode(&raw(0x84, &body));
        match ErrorCode::from_u16(code) {
            Some(c) => {
                known += 1;
                assert_eq!(got, Ok(Some(Decoded::Frame(Frame::error(c, "")))));
            }
            None => assert_eq!(got, malformed("ERROR", "unknown error code"), "code {code}"),
        }
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

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
