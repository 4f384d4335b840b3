//! "Never allocate from a length the peer claims", measured: a counting global allocator records
//! the largest single allocation made by this thread while one `decode` call runs. Counts and
//! lengths that claim far more than the bytes present must cost no more than the bytes present.
//!
//! The workspace denies `unsafe_code`; this file allows it for the one thing that needs it, a
//! `GlobalAlloc` that forwards every call unchanged to `System` and records sizes.

#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::BytesMut;
use common::*;
use hearth_protocol::{DecodeError, Decoded, Decoder};

struct Counting;

thread_local! {
    /// Largest allocation (bytes) of this thread since the last reset.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: allocations during thread teardown must not panic.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to the system allocator; we only record sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Decode `bytes` with the node's limit; the result and the largest allocation `decode` made.
fn decode_measured(bytes: &[u8]) -> (Result<Option<Decoded>, DecodeError>, usize) {
    let mut buf = BytesMut::from(bytes);
    let mut dec = Decoder::new(NODE_LIMIT);
    LARGEST.with(|l| l.set(0));
    let got = dec.decode(&mut buf);
    (got, LARGEST.with(|l| l.get()))
}

/// Bytes a decoder may allocate for a frame of `len` bytes: its parsed form is at most a few
/// times its wire form (a `SEND_MULTI` recipient of 14 wire bytes is a 48-byte struct). Network
/// names are the exception (see `network_names_allocate_per_name_present`).
fn budget(len: usize) -> usize {
    4 * len + 256
}

#[test]
fn the_allocator_sees_allocations() {
    LARGEST.with(|l| l.set(0));
    let v = std::hint::black_box(vec![0u8; 12_345]);
    assert!(LARGEST.with(|l| l.get()) >= 12_345);
    drop(v);
}

/// The start of a `POLICY_SET` body: a zero req_id, `kind`, then `rest`.
fn policy_head(kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 16];
    v.push(kind);
    v.extend_from_slice(rest);
    v
}

#[test]
fn claimed_counts_do_not_drive_allocation() {
    let big_count = |ty: u8, fixed: usize, count: &[u8], tail: usize| {
        let mut body = vec![0u8; fixed];
        body.extend_from_slice(count);
        body.extend_from_slice(&vec![0u8; tail]);
        raw(ty, &body)
    };
    let cases = [
        // ACK claiming 65535 seqs, 40 bytes present.
        (
            "ACK",
            raw(0x03, &[[0xff, 0xff].as_slice(), &[0; 40]].concat()),
        ),
        // GROUP_CREATE / GROUP_UPDATE / GROUP_INFO claiming 4 billion entries.
        ("GROUP_CREATE", big_count(0x05, 24, &[0xff; 4], 40)),
        ("GROUP_UPDATE", big_count(0x06, 25, &[0xff; 4], 40)),
        ("GROUP_INFO", big_count(0x87, 48, &[0xff; 4], 45)),
        // SEND_MULTI claiming 65535 recipients, enough bytes for 20 empty-header ones.
        (
            "SEND_MULTI",
            big_count(0x09, 21, &[0xff; 2], 20 * RECIPIENT_FIXED_LEN),
        ),
        // A header length of 65535 with 10 bytes behind it.
        (
            "SEND_MULTI header",
            big_count(0x09, 21, &[0, 1], 0)
                .into_iter()
                .skip(5)
                .chain([0; 12])
                .chain([0xff, 0xff])
                .chain([0; 10])
                .collect::<Vec<u8>>(),
        ),
        (
            "DELIVER_SHARED header",
            big_count(0x88, 61, &[0xff, 0xff], 10),
        ),
        // POLICY_SET allow / block lists claiming 4 billion accounts, 40 bytes present.
        (
            "POLICY_SET allow",
            big_count(0x0A, 0, &policy_head(2, &[0xff; 4]), 40),
        ),
        (
            "POLICY_SET block",
            big_count(0x0A, 0, &policy_head(5, &[0xff; 4]), 40),
        ),
        // 255 network names claimed, 3 present, the fourth missing.
        (
            "POLICY_SET networks",
            big_count(0x0A, 0, &policy_head(6, &[0xff, 0, 0, 0]), 0),
        ),
        // A network name claiming 255 bytes with 10 behind it.
        (
            "POLICY_SET network name",
            big_count(0x0A, 0, &policy_head(6, &[1, 0xff]), 10),
        ),
        // An access key claiming 255 bytes and a push token claiming 65535, 10 present.
        (
            "POLICY_SET access key",
            big_count(0x0A, 0, &policy_head(7, &[0xff]), 10),
        ),
        (
            "POLICY_SET push token",
            big_count(0x0A, 0, &policy_head(8, &[0xff, 0xff]), 10),
        ),
        // A SEND_SEALED access key claiming 255 bytes with 10 behind it.
        (
            "SEND_SEALED access key",
            big_count(0x0C, SEND_SEALED_FIXED_LEN - 1, &[0xff], 10),
        ),
    ];
    for (name, mut bytes) in cases {
        if name == "SEND_MULTI header" {
            bytes = raw(0x09, &bytes);
        }
        let (got, largest) = decode_measured(&bytes);
        assert!(
            matches!(got, Err(DecodeError::Malformed { .. })),
            "{name}: {got:?}"
        );
        assert!(
            largest <= budget(bytes.len()),
            "{name}: allocated {largest} bytes for a {}-byte frame",
            bytes.len()
        );
    }
}

#[test]
fn valid_frames_allocate_in_proportion_to_their_size() {
    for f in samples() {
        let bytes = enc(&f);
        let (got, largest) = decode_measured(&bytes);
        assert_eq!(got, Ok(Some(Decoded::Frame(f.clone()))));
        assert!(
            largest <= budget(bytes.len()),
            "{f:?}: allocated {largest} bytes for a {}-byte frame",
            bytes.len()
        );
    }
}

/// A frame announcing the node limit (or 4 GiB, for a send that will be skipped) with only its
/// first bytes present allocates nothing in proportion to the claim.
#[test]
fn claimed_frame_lengths_do_not_drive_allocation() {
    for ty in TYPES {
        for len in [NODE_LIMIT as u32, u32::MAX] {
            let mut head = len.to_be_bytes().to_vec();
            head.push(ty);
            head.extend_from_slice(&[0; 16]);
            let (got, largest) = decode_measured(&head);
            assert!(got.is_ok() || len == u32::MAX, "0x{ty:02x}: {got:?}");
            assert!(
                largest <= 1024,
                "0x{ty:02x} length {len}: allocated {largest} bytes"
            );
        }
    }
}

/// A `POLICY_SET` network list costs a `String` (24 bytes) per name, and a name can be a single
/// wire byte: the list's allocation is bounded by the names present (never by the claimed
/// count) and by the u8 count, at most 255 names.
#[test]
fn network_names_allocate_per_name_present() {
    let list = |count: u8, present: usize| {
        let mut body = vec![0u8; 16];
        body.extend_from_slice(&[6, count]);
        body.extend_from_slice(&vec![0u8; present]); // empty names
        raw(0x0A, &body)
    };
    let per_name = std::mem::size_of::<String>();
    for (count, present) in [(255u8, 0usize), (255, 3), (255, 254), (255, 255), (3, 3)] {
        let bytes = list(count, present);
        let (got, largest) = decode_measured(&bytes);
        assert_eq!(
            got.is_ok(),
            present == count as usize,
            "{count}/{present}: {got:?}"
        );
        assert!(
            largest <= budget(bytes.len()).max(per_name * present + 256),
            "{count} names claimed, {present} present: allocated {largest} bytes"
        );
    }
}
