//! Codec micro-benchmarks: encode and decode of `SEND` and `DELIVER` with 512-byte payloads,
//! decoding 64 `DELIVER` frames coalesced in one buffer (what one stream read may hold), and the
//! groups frames: a `SEND_MULTI` to 100 recipients (48-byte headers, the size of a wrapped
//! message key) and a `DELIVER_SHARED` with such a header; and a `POLICY_SET` adding 100
//! accounts to the block list.
//!
//! Run: `cargo bench -p hearth-benches --bench codec`.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hearth_protocol::{
    encode, Decoded, Decoder, Deliver, DeliverMeta, DeliverShared, Frame, MessageId,
    MultiRecipient, PolicyChange, PolicySet, Send, SendMulti, DEFAULT_MAX_ENVELOPE,
};

const PAYLOAD: usize = 512;
const COALESCED: usize = 64;
/// Recipients of the benchmarked `SEND_MULTI`.
const MULTI_RECIPIENTS: usize = 100;
/// Accounts in the benchmarked `POLICY_SET`.
const POLICY_ACCOUNTS: u64 = 100;
/// Per-recipient header: a 32-byte key wrapped with a 16-byte tag.
const HEADER: usize = 48;
/// The node's default frame limit (PROTOCOL.md §4: the largest envelope, 64 bytes, and room for
/// 1000 recipients with 256-byte headers), which admits every frame benchmarked here.
const LIMIT: usize = DEFAULT_MAX_ENVELOPE + 64 + 1000 * (14 + 256);

fn send() -> Frame {
    Frame::Send(Send {
        msg_id: MessageId::from_u128(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff),
        to_account: 43,
        to_device: 0,
        ttl_secs: 3600,
        flags: 0,
        payload: Bytes::from(vec![0xa5; PAYLOAD]),
    })
}

fn deliver(seq: u64) -> Frame {
    Frame::Deliver(Deliver {
        meta: DeliverMeta {
            seq,
            msg_id: MessageId::from_u128(seq as u128),
            from_account: 42,
            from_device: 7,
            accepted_at_ms: 1_700_000_000_123,
            expires_at_ms: 1_700_003_600_123,
            flags: 0,
        },
        payload: Bytes::from(vec![0x5a; PAYLOAD]),
    })
}

fn send_multi() -> Frame {
    Frame::SendMulti(SendMulti {
        msg_id: MessageId::from_u128(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff),
        ttl_secs: 3600,
        flags: 0,
        recipients: (0..MULTI_RECIPIENTS as u64)
            .map(|i| MultiRecipient {
                account: 1000 + i,
                device: (i % 3) as u32,
                header: Bytes::from(vec![i as u8; HEADER]),
            })
            .collect(),
        payload: Bytes::from(vec![0xa5; PAYLOAD]),
    })
}

fn deliver_shared(seq: u64) -> Frame {
    Frame::DeliverShared(DeliverShared {
        meta: DeliverMeta {
            seq,
            msg_id: MessageId::from_u128(seq as u128),
            from_account: 42,
            from_device: 7,
            accepted_at_ms: 1_700_000_000_123,
            expires_at_ms: 1_700_003_600_123,
            flags: 0,
        },
        group: 0,
        header: Bytes::from(vec![0x3c; HEADER]),
        payload: Bytes::from(vec![0x5a; PAYLOAD]),
    })
}

fn policy_set() -> Frame {
    Frame::PolicySet(PolicySet {
        req_id: MessageId::from_u128(7),
        change: PolicyChange::Block {
            add: true,
            accounts: (0..POLICY_ACCOUNTS).map(|i| 1_000_000 + i * 7).collect(),
        },
    })
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
    bench_frame(c, "send_multi_100x48B_512B", send_multi());
    bench_frame(c, "deliver_shared_48B_512B", deliver_shared(1));
    bench_frame(c, "policy_set_block_100", policy_set());

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
