//! The load envelope's payload: what the receiver needs to measure latency, loss and order.
//!
//! Layout (big-endian): intended send time u64 (ns since run start) | global sequence u64 |
//! sender index u32 | sender sequence u64 (per connection, in the order sends were handed to the
//! client, hence on the wire) | kind u8 (0 1:1, 1 group, 2 ephemeral, 3 probe) | zero padding.

use bytes::{BufMut, Bytes, BytesMut};

use crate::scenario::Kind;

/// Bytes of the header at the front of every payload.
pub(crate) const HEADER_LEN: usize = 8 + 8 + 4 + 8 + 1;

/// The decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub intended_ns: u64,
    pub seq: u64,
    pub sender: u32,
    pub sender_seq: u64,
    pub kind: Kind,
}

impl Header {
    pub(crate) fn encode(&self, size: usize) -> Bytes {
        let mut b = BytesMut::with_capacity(size.max(HEADER_LEN));
        b.put_u64(self.intended_ns);
        b.put_u64(self.seq);
        b.put_u32(self.sender);
        b.put_u64(self.sender_seq);
        b.put_u8(self.kind as u8);
        b.resize(size.max(HEADER_LEN), 0);
        b.freeze()
    }

    pub(crate) fn decode(p: &[u8]) -> Option<Header> {
        if p.len() < HEADER_LEN {
            return None;
        }
        let u64_at = |i: usize| u64::from_be_bytes(p[i..i + 8].try_into().expect("8 bytes"));
        Some(Header {
            intended_ns: u64_at(0),
            seq: u64_at(8),
            sender: u32::from_be_bytes(p[16..20].try_into().expect("4 bytes")),
            sender_seq: u64_at(20),
            kind: Kind::from_u8(p[28])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_pads() {
        let h = Header {
            intended_ns: 123_456_789,
            seq: 42,
            sender: 7,
            sender_seq: 9,
            kind: Kind::Group,
        };
        let b = h.encode(512);
        assert_eq!(b.len(), 512);
        assert!(b[HEADER_LEN..].iter().all(|&x| x == 0));
        assert_eq!(Header::decode(&b), Some(h));
        assert_eq!(Header::decode(&b[..HEADER_LEN - 1]), None);
        let mut bad = b.to_vec();
        bad[28] = 9;
        assert_eq!(Header::decode(&bad), None);
    }
}
