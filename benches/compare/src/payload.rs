//! The test message: a small header (sender, sequence number, intended send time) padded to
//! the payload size. Both transports carry it as opaque bytes.

use bytes::{BufMut, Bytes, BytesMut};

/// Header bytes: sender index u32, sequence number u64, intended send time u64 (ns since the
/// run's epoch), little-endian.
pub(crate) const HEADER_LEN: usize = 20;

/// One message of `size` bytes (at least the header).
pub(crate) fn make(size: usize, sender: u32, seq: u64, intended_ns: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(size.max(HEADER_LEN));
    b.put_u32_le(sender);
    b.put_u64_le(seq);
    b.put_u64_le(intended_ns);
    b.resize(size.max(HEADER_LEN), 0);
    b.freeze()
}

/// The header of a received message, or `None` if it is too short.
pub(crate) fn parse(p: &[u8]) -> Option<Header> {
    if p.len() < HEADER_LEN {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes(p[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(p[i..i + 8].try_into().expect("8 bytes"));
    Some(Header {
        sender: u32_at(0),
        seq: u64_at(4),
        intended_ns: u64_at(12),
    })
}

/// What a message says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub sender: u32,
    pub seq: u64,
    pub intended_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_size() {
        let m = make(512, 7, 99, 123_456_789);
        assert_eq!(m.len(), 512);
        assert_eq!(
            parse(&m),
            Some(Header {
                sender: 7,
                seq: 99,
                intended_ns: 123_456_789
            })
        );
        assert_eq!(make(4, 1, 2, 3).len(), HEADER_LEN);
        assert_eq!(parse(&m[..HEADER_LEN - 1]), None);
    }
}
