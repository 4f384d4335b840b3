//! What travels between the nodes of a cluster: routed sends on their way to the owner of their
//! slot (`Forwarded`), and the answers coming back (`Returned`), with their byte encoding. The
//! encoding is this crate's own (both ends run the same build during a rolling upgrade only if
//! its first byte, the version, matches; a node refuses a version it does not know).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hearth_protocol::{encode, Decoded, Decoder, Frame, MessageId, MultiRecipient};
use hearth_storage::{DeviceKey, StoredEnvelope};

use super::routed::{Origin, Routed, Target};

/// Version of the encoding below.
const VERSION: u8 = 1;
/// Largest frame an answer may be (answers are small: ACCEPTED or ERROR).
const MAX_ANSWER: usize = 64 * 1024;

/// A routed send on its way to another node, with the token its answer comes back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Forwarded {
    /// Names the waiting answer at the origin node.
    pub token: u64,
    /// The send.
    pub routed: Routed,
}

/// An answer going back to the node a forwarded send came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Returned {
    /// The token of the forwarded send it answers.
    pub token: u64,
    /// `ACCEPTED` or `ERROR`.
    pub frame: Frame,
}

/// Why bytes from another node could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    /// The bytes end early or hold a value out of range.
    #[error("malformed inter-node message: {0}")]
    Malformed(&'static str),
    /// Another version of this encoding.
    #[error("inter-node message version {0} is not supported ({VERSION} is)")]
    Version(u8),
}

fn need(b: &Bytes, n: usize) -> Result<(), WireError> {
    if b.remaining() < n {
        return Err(WireError::Malformed("truncated"));
    }
    Ok(())
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

fn get_bytes(b: &mut Bytes) -> Result<Bytes, WireError> {
    need(b, 4)?;
    let n = b.get_u32() as usize;
    need(b, n)?;
    Ok(b.split_to(n))
}

fn get_id(b: &mut Bytes) -> Result<MessageId, WireError> {
    need(b, 16)?;
    let mut id = [0u8; 16];
    b.copy_to_slice(&mut id);
    Ok(MessageId(id))
}

impl Forwarded {
    /// Append the encoding of `self` to `out`.
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        let r = &self.routed;
        out.put_u8(VERSION);
        out.put_u64(self.token);
        out.put_u32(r.origin.node);
        out.put_u64(r.origin.conn);
        out.put_u64(r.origin.device.account);
        out.put_u32(r.origin.device.device);
        put_bytes(out, r.origin.network.as_bytes());
        out.put_u64(r.epoch);
        let e = &r.env;
        out.put_slice(&e.msg_id.0);
        out.put_u64(e.from_account);
        out.put_u32(e.from_device);
        out.put_u64(e.accepted_at_ms);
        out.put_u64(e.expires_at_ms);
        out.put_u8(e.flags);
        put_bytes(out, &e.payload);
        match &r.target {
            Target::Account { account, device } => {
                out.put_u8(1);
                out.put_u64(*account);
                out.put_u32(*device);
            }
            Target::Sealed {
                account,
                device,
                access_key,
            } => {
                out.put_u8(2);
                out.put_u64(*account);
                out.put_u32(*device);
                put_bytes(out, access_key);
            }
            Target::Group { group } => {
                out.put_u8(3);
                out.put_u64(*group);
            }
            Target::Members { group, accounts } => {
                out.put_u8(4);
                out.put_u64(*group);
                out.put_u32(accounts.len() as u32);
                for a in accounts {
                    out.put_u64(*a);
                }
            }
            Target::Multi { recipients } => {
                out.put_u8(5);
                out.put_u32(recipients.len() as u32);
                for m in recipients {
                    out.put_u64(m.account);
                    out.put_u32(m.device);
                    put_bytes(out, &m.header);
                }
            }
        }
    }

    /// Read one value from the front of `b`.
    pub(crate) fn decode(b: &mut Bytes) -> Result<Forwarded, WireError> {
        need(b, 1)?;
        let v = b.get_u8();
        if v != VERSION {
            return Err(WireError::Version(v));
        }
        need(b, 8 + 4 + 8 + 8 + 4)?;
        let token = b.get_u64();
        let node = b.get_u32();
        let conn = b.get_u64();
        let device = DeviceKey::new(b.get_u64(), b.get_u32());
        let network = get_bytes(b)?;
        let network = std::str::from_utf8(&network)
            .map_err(|_| WireError::Malformed("network name"))?
            .into();
        need(b, 8)?;
        let epoch = b.get_u64();
        let msg_id = get_id(b)?;
        need(b, 8 + 4 + 8 + 8 + 1)?;
        let from_account = b.get_u64();
        let from_device = b.get_u32();
        let accepted_at_ms = b.get_u64();
        let expires_at_ms = b.get_u64();
        let flags = b.get_u8();
        let payload = get_bytes(b)?;
        need(b, 1)?;
        let target = match b.get_u8() {
            1 => {
                need(b, 12)?;
                Target::Account {
                    account: b.get_u64(),
                    device: b.get_u32(),
                }
            }
            2 => {
                need(b, 12)?;
                let (account, device) = (b.get_u64(), b.get_u32());
                Target::Sealed {
                    account,
                    device,
                    access_key: get_bytes(b)?,
                }
            }
            3 => {
                need(b, 8)?;
                Target::Group { group: b.get_u64() }
            }
            4 => {
                need(b, 12)?;
                let group = b.get_u64();
                let n = b.get_u32() as usize;
                // Never allocate from a length the peer claims before the bytes are there.
                need(b, n.saturating_mul(8))?;
                let accounts = (0..n).map(|_| b.get_u64()).collect();
                Target::Members { group, accounts }
            }
            5 => {
                need(b, 4)?;
                let n = b.get_u32() as usize;
                need(b, n.saturating_mul(16))?;
                let mut recipients = Vec::with_capacity(n);
                for _ in 0..n {
                    need(b, 12)?;
                    let (account, device) = (b.get_u64(), b.get_u32());
                    recipients.push(MultiRecipient {
                        account,
                        device,
                        header: get_bytes(b)?,
                    });
                }
                Target::Multi { recipients }
            }
            _ => return Err(WireError::Malformed("target kind")),
        };
        Ok(Forwarded {
            token,
            routed: Routed {
                origin: Origin {
                    node,
                    conn,
                    device,
                    network,
                },
                epoch,
                env: StoredEnvelope {
                    msg_id,
                    from_account,
                    from_device,
                    accepted_at_ms,
                    expires_at_ms,
                    flags,
                    payload,
                },
                target,
            },
        })
    }
}

impl Returned {
    /// Append the encoding of `self` to `out`.
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        out.put_u8(VERSION);
        out.put_u64(self.token);
        let mut frame = BytesMut::new();
        encode(&self.frame, &mut frame);
        put_bytes(out, &frame);
    }

    /// Read one value from the front of `b`.
    pub(crate) fn decode(b: &mut Bytes) -> Result<Returned, WireError> {
        need(b, 1)?;
        let v = b.get_u8();
        if v != VERSION {
            return Err(WireError::Version(v));
        }
        need(b, 8)?;
        let token = b.get_u64();
        let bytes = get_bytes(b)?;
        let mut buf = BytesMut::from(&bytes[..]);
        match Decoder::new(MAX_ANSWER).decode(&mut buf) {
            Ok(Some(Decoded::Frame(frame))) if buf.is_empty() => Ok(Returned { token, frame }),
            _ => Err(WireError::Malformed("answer frame")),
        }
    }
}

#[cfg(test)]
mod tests {
    use hearth_protocol::{Accepted, ErrorCode, Refusal};

    use super::*;

    fn routed(target: Target) -> Routed {
        Routed {
            origin: Origin {
                node: 3,
                conn: 77,
                device: DeviceKey::new(10, 2),
                network: "chat".into(),
            },
            epoch: 912,
            env: StoredEnvelope {
                msg_id: MessageId::from_u128(0xfeed),
                from_account: 10,
                from_device: 2,
                accepted_at_ms: 1_700_000_000_000,
                expires_at_ms: 1_700_000_100_000,
                flags: 2,
                payload: Bytes::from_static(b"ciphertext"),
            },
            target,
        }
    }

    #[test]
    fn every_target_round_trips_and_truncation_is_refused() {
        let targets = vec![
            Target::Account {
                account: 5,
                device: 0,
            },
            Target::Sealed {
                account: 5,
                device: 1,
                access_key: Bytes::from_static(b"key"),
            },
            Target::Group { group: 9 },
            Target::Members {
                group: 9,
                accounts: vec![1, 2, 3],
            },
            Target::Multi {
                recipients: vec![MultiRecipient {
                    account: 4,
                    device: 0,
                    header: Bytes::from_static(b"h"),
                }],
            },
        ];
        for t in targets {
            let f = Forwarded {
                token: 42,
                routed: routed(t),
            };
            let mut out = BytesMut::new();
            f.encode(&mut out);
            let bytes = out.freeze();
            assert_eq!(Forwarded::decode(&mut bytes.clone()), Ok(f));
            for cut in 0..bytes.len() {
                assert!(
                    Forwarded::decode(&mut bytes.slice(..cut)).is_err(),
                    "cut {cut}"
                );
            }
        }
    }

    #[test]
    fn answers_round_trip_and_a_claimed_huge_list_allocates_nothing() {
        for frame in [
            Frame::Accepted(Accepted {
                msg_id: MessageId::from_u128(1),
                accepted_at_ms: 5,
                recipients: 2,
            }),
            Refusal::new(ErrorCode::QueueFull, "full").answer(MessageId::from_u128(2)),
        ] {
            let r = Returned { token: 7, frame };
            let mut out = BytesMut::new();
            r.encode(&mut out);
            assert_eq!(Returned::decode(&mut out.freeze()), Ok(r));
        }
        let mut out = BytesMut::new();
        Forwarded {
            token: 1,
            routed: routed(Target::Members {
                group: 1,
                accounts: vec![],
            }),
        }
        .encode(&mut out);
        // Claim 2^32-1 accounts with none present.
        let n = out.len();
        out[n - 4..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Forwarded::decode(&mut out.freeze()).is_err());
        let mut bad = Bytes::from_static(&[9, 0, 0]);
        assert_eq!(Forwarded::decode(&mut bad), Err(WireError::Version(9)));
    }
}
