//! Replays the cargo-fuzz corpus (`protocol/fuzz/corpus/decode/`) through the fuzz target's own
//! check, so `cargo test` covers every input the fuzzer has kept, on stable Rust.
//!
//! The named seed files are generated here. After a codec change, regenerate them with
//! `HEARTH_WRITE_CORPUS=1 cargo test -p hearth-protocol --test fuzz_corpus`.

mod common;

use std::path::PathBuf;

use bytes::Bytes;
use common::*;
use hearth_protocol::{
    DecodeError, Frame, MessageId, Ping, PolicyChange, PolicySet, Send, SendGroup, SendMulti,
    SendSealed, SEND_FIXED_LEN,
};

include!("../fuzz/common/check.rs");

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode")
}

/// Control bytes for `check`: frame limit index and cut position.
const DEFAULT_LIMIT: u8 = 2;
const TINY_LIMIT: u8 = 0;

fn seed(limit: u8, cut: u8, stream: &[u8]) -> Vec<u8> {
    let mut v = vec![limit, cut];
    v.extend_from_slice(stream);
    v
}

fn name(f: &Frame) -> &'static str {
    match f {
        Frame::Hello(_) => "hello",
        Frame::Send(_) => "send",
        Frame::Ack(_) => "ack",
        Frame::Ping(_) => "ping",
        Frame::Welcome(_) => "welcome",
        Frame::Accepted(_) => "accepted",
        Frame::Deliver(_) => "deliver",
        Frame::Error(_) => "error",
        Frame::Pong(_) => "pong",
        Frame::GroupCreate(_) => "group-create",
        Frame::GroupUpdate(_) => "group-update",
        Frame::GroupGet(_) => "group-get",
        Frame::SendGroup(_) => "send-group",
        Frame::SendMulti(_) => "send-multi",
        Frame::GroupOk(_) => "group-ok",
        Frame::GroupInfo(_) => "group-info",
        Frame::DeliverShared(_) => "deliver-shared",
        Frame::PolicySet(PolicySet { change, .. }) => match change {
            PolicyChange::Reach(_) => "policy-reach",
            PolicyChange::Allow { .. } => "policy-allow",
            PolicyChange::Block { .. } => "policy-block",
            PolicyChange::Networks(_) => "policy-networks",
            PolicyChange::AccessKey(_) => "policy-access-key",
            PolicyChange::PushToken(_) => "policy-push-token",
        },
        Frame::Report(_) => "report",
        Frame::SendSealed(_) => "send-sealed",
        Frame::Ok(_) => "ok",
        Frame::Redirect(_) => "redirect",
    }
}

/// The seed corpus: every sample frame, all of them back to back, and malformed streams.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut all = Vec::new();
    let mut counts = std::collections::HashMap::new();
    for f in samples() {
        let n = counts.entry(name(&f)).or_insert(0);
        *n += 1;
        let bytes = enc(&f);
        out.push((
            format!("frame-{}-{}", name(&f), n),
            seed(DEFAULT_LIMIT, 128, &bytes),
        ));
        all.extend_from_slice(&bytes);
    }
    out.push(("frames-back-to-back".into(), seed(DEFAULT_LIMIT, 77, &all)));

    let ping = enc(&Frame::Ping(Ping { nonce: 9 }));
    for (name, big) in big_sends() {
        let mut oversized_then_ping = enc(&big).to_vec();
        oversized_then_ping.extend_from_slice(&ping);
        out.push((
            format!("oversized-{name}-then-ping"),
            seed(TINY_LIMIT, 100, &oversized_then_ping),
        ));
    }

    for (name, ty) in [
        ("huge-send", 0x02),
        ("huge-send-multi", 0x09),
        ("huge-send-sealed", 0x0C),
    ] {
        let mut huge = vec![0xff, 0xff, 0xff, 0xff, ty];
        huge.extend_from_slice(&id().0);
        huge.extend_from_slice(&[0; 32]);
        out.push((name.into(), seed(DEFAULT_LIMIT, 10, &huge)));
    }

    let welcome = samples()
        .into_iter()
        .find(|f| matches!(f, Frame::Welcome(_)))
        .unwrap();
    out.push((
        "too-long-welcome".into(),
        seed(TINY_LIMIT, 3, &enc(&welcome)),
    ));
    out.push((
        "huge-length-ping".into(),
        seed(DEFAULT_LIMIT, 2, &[0xff, 0xff, 0xff, 0xff, 0x04]),
    ));
    out.push((
        "zero-length".into(),
        seed(DEFAULT_LIMIT, 0, &[0, 0, 0, 0, 0x04]),
    ));
    out.push((
        "unknown-type".into(),
        seed(DEFAULT_LIMIT, 0, &raw(0x42, &[1, 2, 3])),
    ));
    out.push((
        "ack-count-mismatch".into(),
        seed(
            DEFAULT_LIMIT,
            200,
            &raw(0x03, &[0, 2, 0, 0, 0, 0, 0, 0, 0, 1]),
        ),
    ));
    out.push((
        "hello-not-utf8".into(),
        seed(DEFAULT_LIMIT, 5, &raw(0x01, &[1, 0, 2, 0xff, 0xfe])),
    ));
    let mut bad_code = MessageId::NONE.0.to_vec();
    bad_code.extend_from_slice(&[0x03, 0xe7, 0, 0, 0, 0, 0, 0]);
    // An error code a later revision may add: decoded, not malformed.
    out.push((
        "error-unknown-code".into(),
        seed(DEFAULT_LIMIT, 9, &raw(0x84, &bad_code)),
    ));
    // A WELCOME of revision 1.0 (without idle_timeout_ms and max_pending_sends), and one of a
    // later revision with a field this one does not know.
    out.push((
        "welcome-revision-1-0".into(),
        seed(DEFAULT_LIMIT, 7, &raw(0x81, &[1; WELCOME_V1_0_LEN])),
    ));
    out.push((
        "welcome-unknown-trailing-field".into(),
        seed(DEFAULT_LIMIT, 20, &raw(0x81, &[2; WELCOME_V1_0_LEN + 12])),
    ));
    let short_deliver = raw(0x83, &[0; DELIVER_FIXED_LEN_MINUS_ONE]);
    out.push((
        "deliver-body-too-short".into(),
        seed(DEFAULT_LIMIT, 60, &short_deliver),
    ));
    let mut trailing = raw(0x04, &[0; 9]);
    trailing.extend_from_slice(&ping);
    out.push((
        "ping-trailing-byte".into(),
        seed(DEFAULT_LIMIT, 1, &trailing),
    ));
    out.push((
        "huge-length-group-create".into(),
        seed(DEFAULT_LIMIT, 3, &[0xff, 0xff, 0xff, 0xff, 0x05]),
    ));

    // Count mismatches: count 2, one account (or member entry) present.
    let mut create = id().0.to_vec();
    create.extend_from_slice(&7u64.to_be_bytes());
    create.extend_from_slice(&2u32.to_be_bytes());
    create.extend_from_slice(&43u64.to_be_bytes());
    out.push((
        "group-create-count-mismatch".into(),
        seed(DEFAULT_LIMIT, 30, &raw(0x05, &create)),
    ));
    let mut update = id().0.to_vec();
    update.extend_from_slice(&7u64.to_be_bytes());
    update.push(hearth_protocol::group_op::ADD_MEMBERS);
    update.extend_from_slice(&2u32.to_be_bytes());
    update.extend_from_slice(&43u64.to_be_bytes());
    out.push((
        "group-update-count-mismatch".into(),
        seed(DEFAULT_LIMIT, 30, &raw(0x06, &update)),
    ));
    let mut info = id().0.to_vec();
    for v in [7u64, 1, 42] {
        info.extend_from_slice(&v.to_be_bytes());
    }
    info.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2]); // total, offset, count
    info.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 43, 1]);
    out.push((
        "group-info-count-mismatch".into(),
        seed(DEFAULT_LIMIT, 40, &raw(0x87, &info)),
    ));

    // SEND_MULTI: count 3 with two recipients; the fixed part cut inside the count; a header
    // length past the end of the frame.
    let multi = |count: u16, list: &[u8]| {
        let mut body = id().0.to_vec();
        body.extend_from_slice(&60u32.to_be_bytes());
        body.push(0);
        body.extend_from_slice(&count.to_be_bytes());
        body.extend_from_slice(list);
        body
    };
    let entry = |account: u64, header_len: u16, header: &[u8]| {
        let mut v = account.to_be_bytes().to_vec();
        v.extend_from_slice(&0u32.to_be_bytes());
        v.extend_from_slice(&header_len.to_be_bytes());
        v.extend_from_slice(header);
        v
    };
    let two = [entry(43, 2, b"k1"), entry(44, 2, b"k2")].concat();
    out.push((
        "send-multi-truncated-list".into(),
        seed(DEFAULT_LIMIT, 50, &raw(0x09, &multi(3, &two))),
    ));
    let whole = multi(1, &[]);
    out.push((
        "send-multi-truncated-header".into(),
        seed(DEFAULT_LIMIT, 20, &raw(0x09, &whole[..whole.len() - 1])),
    ));
    out.push((
        "send-multi-header-past-end".into(),
        seed(
            DEFAULT_LIMIT,
            60,
            &raw(0x09, &multi(1, &entry(43, 9, b"short"))),
        ),
    ));

    // DELIVER_SHARED whose header length exceeds what follows it.
    let mut shared = vec![0u8; hearth_protocol::DELIVER_FIXED_LEN];
    shared[7] = 1; // seq 1
    shared.extend_from_slice(&7u64.to_be_bytes());
    shared.extend_from_slice(&10u16.to_be_bytes());
    shared.extend_from_slice(b"only 9 by");
    out.push((
        "deliver-shared-header-past-end".into(),
        seed(DEFAULT_LIMIT, 70, &raw(0x88, &shared)),
    ));
    out.extend(privacy_seeds());
    out
}

/// Malformed `POLICY_SET`, `REPORT` and `SEND_SEALED` streams (see `malformed_seeds`).
fn privacy_seeds() -> Vec<(String, Vec<u8>)> {
    let policy = |kind: u8, rest: &[u8]| {
        let mut body = id().0.to_vec();
        body.push(kind);
        body.extend_from_slice(rest);
        raw(0x0A, &body)
    };
    let mut out = vec![
        ("policy-set-unknown-kind", policy(9, &[0, 0, 0, 0])),
        ("policy-set-no-kind", raw(0x0A, &id().0)),
        // Count 2, one account present.
        (
            "policy-set-count-mismatch",
            policy(4, &[0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 2, 0x9a]),
        ),
        // Two names counted; the second claims 6 bytes and has 3.
        (
            "policy-set-network-truncated",
            policy(6, &[2, 4, b'c', b'h', b'a', b't', 6, b'p', b'h', b'o']),
        ),
        (
            "policy-set-network-not-utf8",
            policy(6, &[1, 2, 0xc3, 0x28]),
        ),
        (
            "policy-set-network-trailing",
            policy(6, &[0, 4, b'c', b'h', b'a', b't']),
        ),
        ("policy-set-access-key-past-end", policy(7, &[9, 1, 2, 3])),
        (
            "policy-set-push-token-past-end",
            policy(8, &[1, 0, 1, 2, 3]),
        ),
        ("report-trailing-byte", raw(0x0B, &[0; 25])),
        ("ok-body-too-short", raw(0x89, &[0; 15])),
    ];
    // SEND_SEALED whose access key length exceeds what follows it.
    let mut sealed = id().0.to_vec();
    sealed.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 43, 0, 0, 0, 0, 0, 0, 0, 60, 0, 16]);
    sealed.extend_from_slice(b"only 9 by");
    out.push(("send-sealed-key-past-end", raw(0x0C, &sealed)));
    out.into_iter()
        .enumerate()
        .map(|(i, (name, bytes))| (name.to_string(), seed(DEFAULT_LIMIT, 40 + i as u8, &bytes)))
        .collect()
}

/// A `SEND`, `SEND_GROUP`, `SEND_MULTI` and `SEND_SEALED` too big for the tiny fuzz limit.
fn big_sends() -> Vec<(&'static str, Frame)> {
    let payload = Bytes::from(vec![0xab; 40]);
    vec![
        (
            "send",
            Frame::Send(Send {
                msg_id: id(),
                to_account: 5,
                to_device: 1,
                ttl_secs: 60,
                flags: 0,
                payload: payload.clone(),
            }),
        ),
        (
            "send-group",
            Frame::SendGroup(SendGroup {
                msg_id: id(),
                group: 7,
                ttl_secs: 60,
                flags: 0,
                payload: payload.clone(),
            }),
        ),
        (
            "send-multi",
            Frame::SendMulti(SendMulti {
                msg_id: id(),
                ttl_secs: 60,
                flags: 0,
                recipients: vec![rcpt(5, 0, b"k5"), rcpt(6, 1, b"k6")],
                payload: payload.clone(),
            }),
        ),
        (
            "send-sealed",
            Frame::SendSealed(SendSealed {
                msg_id: id(),
                to_account: 5,
                to_device: 0,
                ttl_secs: 60,
                flags: 0,
                access_key: Bytes::from_static(b"access-key-of-5"),
                payload,
            }),
        ),
    ]
}

/// Each malformed seed, and the error it must end with.
fn malformed_seeds() -> Vec<(&'static str, DecodeError)> {
    let short = |kind| DecodeError::Malformed {
        kind,
        why: "body too short",
    };
    let count = |kind| DecodeError::Malformed {
        kind,
        why: "count does not match length",
    };
    vec![
        (
            "too-long-welcome",
            DecodeError::TooLong { len: 37, max: 24 },
        ),
        (
            "huge-length-ping",
            DecodeError::TooLong {
                len: u32::MAX as usize,
                max: NODE_LIMIT,
            },
        ),
        (
            "huge-length-group-create",
            DecodeError::TooLong {
                len: u32::MAX as usize,
                max: NODE_LIMIT,
            },
        ),
        ("zero-length", DecodeError::EmptyFrame),
        ("unknown-type", DecodeError::UnknownType(0x42)),
        ("ack-count-mismatch", count("ACK")),
        (
            "hello-not-utf8",
            DecodeError::Malformed {
                kind: "HELLO",
                why: "not UTF-8",
            },
        ),
        ("deliver-body-too-short", short("DELIVER")),
        (
            "ping-trailing-byte",
            DecodeError::Malformed {
                kind: "PING",
                why: "trailing bytes",
            },
        ),
        ("group-create-count-mismatch", count("GROUP_CREATE")),
        ("group-update-count-mismatch", count("GROUP_UPDATE")),
        ("group-info-count-mismatch", count("GROUP_INFO")),
        ("send-multi-truncated-list", short("SEND_MULTI")),
        ("send-multi-truncated-header", short("SEND_MULTI")),
        ("send-multi-header-past-end", short("SEND_MULTI")),
        ("deliver-shared-header-past-end", short("DELIVER_SHARED")),
        (
            "policy-set-unknown-kind",
            DecodeError::Malformed {
                kind: "POLICY_SET",
                why: "unknown policy kind",
            },
        ),
        ("policy-set-no-kind", short("POLICY_SET")),
        ("policy-set-count-mismatch", count("POLICY_SET")),
        ("policy-set-network-truncated", short("POLICY_SET")),
        (
            "policy-set-network-not-utf8",
            DecodeError::Malformed {
                kind: "POLICY_SET",
                why: "not UTF-8",
            },
        ),
        (
            "policy-set-network-trailing",
            DecodeError::Malformed {
                kind: "POLICY_SET",
                why: "trailing bytes",
            },
        ),
        ("policy-set-access-key-past-end", short("POLICY_SET")),
        ("policy-set-push-token-past-end", short("POLICY_SET")),
        (
            "report-trailing-byte",
            DecodeError::Malformed {
                kind: "REPORT",
                why: "trailing bytes",
            },
        ),
        ("ok-body-too-short", short("OK")),
        ("send-sealed-key-past-end", short("SEND_SEALED")),
    ]
}

const DELIVER_FIXED_LEN_MINUS_ONE: usize = hearth_protocol::DELIVER_FIXED_LEN - 1;

#[test]
fn seed_corpus_is_up_to_date() {
    let dir = corpus_dir();
    let write = std::env::var_os("HEARTH_WRITE_CORPUS").is_some();
    if write {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, bytes) in seeds() {
        let path = dir.join(&name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        }
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (regenerate: see this file's header)",
                path.display()
            )
        });
        assert_eq!(
            on_disk, bytes,
            "{name} is stale (regenerate: see this file's header)"
        );
    }
}

#[test]
fn every_corpus_file_passes_the_fuzz_check() {
    let mut n = 0;
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("{} fails the fuzz check", path.display());
        }
        n += 1;
    }
    assert!(n >= seeds().len(), "only {n} corpus files");
}

fn steps_of(data: &[u8]) -> Vec<Step> {
    let limit = FUZZ_LIMITS[data[0] as usize % FUZZ_LIMITS.len()];
    decode_chunked(limit, &data[2..], &[])
}

#[test]
fn fuzz_limit_is_the_node_default() {
    assert_eq!(FUZZ_LIMITS[DEFAULT_LIMIT as usize], NODE_LIMIT);
    assert!(FUZZ_LIMITS[TINY_LIMIT as usize] < 1 + SEND_FIXED_LEN);
}

#[test]
fn seeds_reach_every_frame_type_and_every_outcome() {
    let mut types = std::collections::BTreeSet::new();
    let mut oversized = std::collections::BTreeSet::new();
    let mut errors = 0;
    for (_, data) in seeds() {
        for step in steps_of(&data) {
            match step {
                Step::Frame(f, _) => {
                    types.insert(f.type_byte());
                }
                Step::Oversized(_, len) => {
                    let at = data[2..]
                        .windows(4)
                        .position(|w| w == (len as u32).to_be_bytes())
                        .unwrap();
                    oversized.insert(data[2 + at + 4]);
                }
                Step::Error(_) => errors += 1,
            }
        }
    }
    assert_eq!(types.into_iter().collect::<Vec<_>>(), TYPES.to_vec());
    assert_eq!(
        oversized.into_iter().collect::<Vec<_>>(),
        SEND_TYPES.to_vec()
    );
    assert_eq!(errors, malformed_seeds().len());
}

#[test]
fn malformed_seeds_fail_for_the_intended_reason() {
    let seeds: std::collections::HashMap<String, Vec<u8>> = seeds().into_iter().collect();
    for (name, want) in malformed_seeds() {
        let steps = steps_of(&seeds[name]);
        assert_eq!(steps.last(), Some(&Step::Error(want)), "{name}: {steps:?}");
    }
}

#[test]
fn the_check_sees_oversized_sends_and_the_frame_after() {
    for (name, big) in big_sends() {
        let (_, data) = seeds()
            .into_iter()
            .find(|(n, _)| *n == format!("oversized-{name}-then-ping"))
            .unwrap();
        let stream = &data[2..];
        let len = enc(&big).len() - 4;
        let steps = decode_chunked(FUZZ_LIMITS[0], stream, &[50]);
        assert_eq!(
            steps,
            vec![
                Step::Oversized(id(), len),
                Step::Frame(Frame::Ping(Ping { nonce: 9 }), stream.len()),
            ],
            "{name}"
        );
    }
}
