//! Replays the cargo-fuzz corpus (`protocol/fuzz/corpus/decode/`) through the fuzz target's own
//! check, so `cargo test` covers every input the fuzzer has kept, on stable Rust.
//!
//! The named seed files are generated here. After a codec change, regenerate them with
//! `HEARTH_WRITE_CORPUS=1 cargo test -p hearth-protocol --test fuzz_corpus`.

mod common;

use std::path::PathBuf;

use bytes::Bytes;
use common::*;
use hearth_protocol::{Frame, MessageId, SEND_FIXED_LEN};

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
        Frame::Hello { .. } => "hello",
        Frame::Send { .. } => "send",
        Frame::Ack { .. } => "ack",
        Frame::Ping { .. } => "ping",
        Frame::Welcome { .. } => "welcome",
        Frame::Accepted { .. } => "accepted",
        Frame::Deliver { .. } => "deliver",
        Frame::Error { .. } => "error",
        Frame::Pong { .. } => "pong",
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

    let ping = enc(&Frame::Ping { nonce: 9 });
    let big_send = enc(&Frame::Send {
        msg_id: id(),
        to_account: 5,
        to_device: 1,
        ttl_secs: 60,
        flags: 0,
        payload: Bytes::from(vec![0xab; 40]),
    });
    let mut oversized_then_ping = big_send.to_vec();
    oversized_then_ping.extend_from_slice(&ping);
    out.push((
        "oversized-send-then-ping".into(),
        seed(TINY_LIMIT, 100, &oversized_then_ping),
    ));

    let mut huge_send = vec![0xff, 0xff, 0xff, 0xff, 0x02];
    huge_send.extend_from_slice(&id().0);
    huge_send.extend_from_slice(&[0; 32]);
    out.push(("huge-send".into(), seed(DEFAULT_LIMIT, 10, &huge_send)));

    let welcome = samples()
        .into_iter()
        .find(|f| matches!(f, Frame::Welcome { .. }))
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
    out.push((
        "error-unknown-code".into(),
        seed(DEFAULT_LIMIT, 9, &raw(0x84, &bad_code)),
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
    out
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

#[test]
fn seeds_reach_every_frame_type_and_every_outcome() {
    let mut types = std::collections::BTreeSet::new();
    let (mut oversized, mut errors) = (0, 0);
    for (_, data) in seeds() {
        let limit = FUZZ_LIMITS[data[0] as usize % FUZZ_LIMITS.len()];
        for step in decode_chunked(limit, &data[2..], &[]) {
            match step {
                Step::Frame(f, _) => {
                    types.insert(f.type_byte());
                }
                Step::Oversized(..) => oversized += 1,
                Step::Error(_) => errors += 1,
            }
        }
    }
    assert_eq!(types.into_iter().collect::<Vec<_>>(), TYPES.to_vec());
    assert_eq!(oversized, 2);
    assert_eq!(errors, 9);
}

#[test]
fn the_check_sees_oversized_sends_and_the_frame_after() {
    let (_, data) = seeds()
        .into_iter()
        .find(|(n, _)| n == "oversized-send-then-ping")
        .unwrap();
    let stream = &data[2..];
    let steps = decode_chunked(FUZZ_LIMITS[0], stream, &[50]);
    assert_eq!(
        steps,
        vec![
            Step::Oversized(id(), 1 + SEND_FIXED_LEN + 40),
            Step::Frame(Frame::Ping { nonce: 9 }, stream.len()),
        ]
    );
}
