//! Codec micro-benchmarks: encode and decode of `SEND` and `DELIVER` with 512-byte payloads,
//! and decoding 64 `DELIVER` frames coalesced in one buffer (what one stream read may hold).
//!
//! Run: `cargo bench -p hearth-benches --bench codec`.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hearth_protocol::{
    encode, Decoded, Decoder, Frame, MessageId, DEFAULT_MAX_ENVELOPE, DELIVER_FIXED_LEN,
};

const PAYLOAD: usize = 512;
const COALESCED: usize = 64;
/// A client's decoder limit: the largest `DELIVER` (and so also any `SEND`).
const LIMIT: usize = 1 + DELIVER_FIXED_LEN + DEFAULT_MAX_ENVELOPE;

fn send() -> Frame {
    Frame::Send {
        msg_id: MessageId::from_u128(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff),
        to_account: 43,
        to_device: 0,
        ttl_secs: 3600,
        flags: 0,
        payload: Bytes::from(vec![0xa5; PAYLOAD]),
    }
}

fn deliver(seq: u64) -> Frame {
    Frame::Deliver {
        seq,
        msg_id: MessageId::from_u128(seq as u128),
        from_account: 42,
        from_device: 7,
        accepted_at_ms: 1_700_000_000_123,
        expires_at_ms: 1_700_003_600_123,
        flags: 0,
        payload: Bytes::from(vec![0x5a; PAYLOAD]),
    }
}

fn encoded(frames: &[Frame]) -> BytesMut {
    let mut out = BytesMut::new();
    for f in frames {
        encode(f, &mut out);
    }
    out
}

fn bench_frame(c: &mut Criterion, name: &str, frame: Frame) {
    let bytes = encoded(std::slice::from_ref(&frame));
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("encode", |b| {
        let mut out = BytesMut::with_capacity(bytes.len());
        b.iter(|| {
            out.clear();
            encode(black_box(&frame), &mut out);
            black_box(&out);
        })
    });
    g.bench_function("decode", |b| {
        let mut dec = Decoder::new(LIMIT);
        b.iter_batched(
            || bytes.clone(),
            |mut buf| match dec.decode(&mut buf) {
                Ok(Some(Decoded::Frame(f))) => f,
                other => panic!("{other:?}"),
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn codec(c: &mut Criterion) {
    bench_frame(c, "send_512B", send());
    bench_frame(c, "deliver_512B", deliver(1));

    let frames: Vec<Frame> = (1..=COALESCED as u64).map(deliver).collect();
    let bytes = encoded(&frames);
    let mut g = c.benchmark_group("deliver_512B_x64");
    g.throughput(Throughput::Elements(COALESCED as u64));
    g.bench_function("decode_coalesced", |b| {
        let mut dec = Decoder::new(LIMIT);
        b.iter_batched(
            || bytes.clone(),
            |mut buf| {
                let mut n = 0;
                while let Some(Decoded::Frame(f)) = dec.decode(&mut buf).unwrap() {
                    black_box(f);
                    n += 1;
                }
                assert_eq!(n, COALESCED);
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The criterion group (criterion's macro generates an undocumented `pub fn`).
#[allow(missing_docs)]
mod group {
    use super::*;

    criterion_group! {
        name = benches;
        config = Criterion::default()
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .sample_size(30);
        targets = codec
    }
}

criterion_main!(group::benches);
