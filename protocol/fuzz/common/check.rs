// The decoder check shared by the fuzz target (`fuzz_targets/decode.rs`) and by
// `protocol/tests/fuzz_corpus.rs`, which replays the corpus under `cargo test`. Both `include!`
// this file, so it must compile on its own with only `bytes` and `hearth_protocol` in scope.
//
// Input layout: byte 0 picks the decoder's frame limit, byte 1 where the rest is cut in two
// chunks, bytes 2.. are the stream.

/// Frame limits the fuzzer chooses from: tiny (oversize paths), small, and the node's default
/// (PROTOCOL.md §4: the largest envelope, 64 bytes, and room for 1000 `SEND_MULTI` recipients
/// with 256-byte headers).
pub const FUZZ_LIMITS: [usize; 3] = [
    24,
    4096,
    hearth_protocol::DEFAULT_MAX_ENVELOPE + 64 + 1000 * (8 + 4 + 2 + 256),
];

/// Type bytes of the frames a decoder reads with trailing bytes ignored: `WELCOME`,
/// `ACCEPTED`, `ERROR`, `PONG`, `GROUP_OK`, `OK`.
pub const GROWING: [u8; 6] = [0x81, 0x82, 0x84, 0x85, 0x86, 0x89];

/// What one decode call produced, with the stream offsets the checks need.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// A frame and the offset just past its last byte.
    Frame(hearth_protocol::Frame, usize),
    /// An oversized `SEND`, `SEND_GROUP`, `SEND_MULTI` or `SEND_SEALED` being skipped.
    Oversized(hearth_protocol::MessageId, usize),
    /// A fatal error; decoding stops.
    Error(hearth_protocol::DecodeError),
}

/// Decode `stream` fed in the given chunks; every `Some` and the first error, in order.
pub fn decode_chunked(max_frame: usize, stream: &[u8], cuts: &[usize]) -> Vec<Step> {
    use hearth_protocol::{Decoded, Decoder};
    let mut dec = Decoder::new(max_frame);
    let mut buf = bytes::BytesMut::new();
    let mut steps = Vec::new();
    let mut fed = 0;
    let mut bounds: Vec<usize> = cuts.iter().map(|c| (*c).min(stream.len())).collect();
    bounds.push(stream.len());
    for end in bounds {
        if end < fed {
            continue;
        }
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        loop {
            match dec.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(Decoded::Frame(f))) => steps.push(Step::Frame(f, fed - buf.len())),
                Ok(Some(Decoded::OversizedSend { msg_id, len })) => {
                    steps.push(Step::Oversized(msg_id, len))
                }
                Err(e) => {
                    steps.push(Step::Error(e));
                    return steps;
                }
            }
        }
    }
    steps
}

/// The fuzz property. Panics on any violation.
///
/// - Decoding is independent of how the stream is chunked.
/// - Every decoded frame re-encodes to exactly the bytes it was decoded from (the encoding is
///   canonical), starting where the previous frame (or skipped `SEND`) ended. The exception
///   are the node → client frames that may grow trailing fields (PROTOCOL.md §2, [`GROWING`]):
///   their decoder ignores bytes after the fields it knows and reads absent (or partial)
///   trailing fields as 0, so their re-encoding agrees with the input's complete fields and
///   is 0 beyond.
/// - Re-encoded frames decode to the same frame: `decode(encode(f)) == f`.
/// - An oversized send is reported only for a type byte 0x02 (`SEND`), 0x08 (`SEND_GROUP`),
///   0x09 (`SEND_MULTI`) or 0x0C (`SEND_SEALED`) whose length exceeds the limit, with the
///   message id from its first 16 body bytes, and exactly its bytes are skipped.
pub fn check(data: &[u8]) {
    use hearth_protocol::{encode, Decoded, Decoder};
    if data.len() < 2 {
        return;
    }
    let max_frame = FUZZ_LIMITS[data[0] as usize % FUZZ_LIMITS.len()];
    let stream = &data[2..];
    let cut = data[1] as usize * stream.len() / 255;

    let two = decode_chunked(max_frame, stream, &[cut]);
    let one = decode_chunked(max_frame, stream, &[]);
    assert_eq!(one, two, "decoding depends on chunking (cut at {cut})");

    let mut start = 0;
    for step in &two {
        match step {
            Step::Frame(f, end) => {
                let mut enc = bytes::BytesMut::new();
                encode(f, &mut enc);
                let input = &stream[start..*end];
                if GROWING.contains(&f.type_byte()) {
                    let mut n = input.len().min(enc.len());
                    if f.type_byte() == 0x81 && n > 33 {
                        // WELCOME's added fields are u32s after 33 bytes; a partial one is
                        // ignored.
                        n = 33 + (n - 33) / 4 * 4;
                    }
                    assert_eq!(&input[4..n], &enc[4..n], "{f:?} does not re-encode its fields");
                    assert!(
                        enc[n..].iter().all(|b| *b == 0),
                        "{f:?}: absent trailing fields are not 0"
                    );
                } else {
                    assert_eq!(
                        input.len(),
                        enc.len(),
                        "{f:?} re-encodes to a different length"
                    );
                    assert_eq!(input, &enc[..], "{f:?} is not canonical");
                }
                let mut again = Decoder::new(max_frame);
                match again.decode(&mut enc) {
                    Ok(Some(Decoded::Frame(g))) => assert_eq!(&g, f),
                    other => panic!("re-encoded {f:?} decodes to {other:?}"),
                }
                assert!(enc.is_empty());
                start = *end;
            }
            Step::Oversized(id, len) => {
                let head = &stream[start..];
                let claimed = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
                assert_eq!(*len, claimed);
                assert!(*len > max_frame);
                assert!(
                    matches!(head[4], 0x02 | 0x08 | 0x09 | 0x0C),
                    "type 0x{:02x}",
                    head[4]
                );
                assert_eq!(&head[5..21], &id.0[..]);
                start += 4 + len;
            }
            Step::Error(_) => {}
        }
    }
}
