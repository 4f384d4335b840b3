//! The Hearth wire protocol: frames, their codec, error codes, device tokens and slot hashing.
//!
//! This crate does no I/O. `PROTOCOL.md` at the repository root is the normative description;
//! the code here follows it byte for byte.

mod codec;
mod error;
mod frame;
mod slot;
mod token;

pub use codec::{encode, DecodeError, Decoded, Decoder};
pub use error::ErrorCode;
pub use frame::{
    flags, group_op, reach, role, Accepted, Ack, Deliver, DeliverMeta, DeliverShared, Frame,
    GroupCreate, GroupGet, GroupInfo, GroupOk, GroupUpdate, Hello, MessageId, MultiRecipient, Ping,
    PolicyChange, PolicySet, Pong, Redirect, Refusal, Refused, Report, RequestOk, Send, SendGroup,
    SendMulti, SendSealed, Welcome,
};
pub use slot::{slot_of, SLOT_COUNT};
pub use token::{Scope, SigningKey, TokenClaims, TokenError, VerifyingKey, MAX_SCOPE_NAME};

/// ALPN protocol name negotiated on every Hearth QUIC connection.
pub const ALPN: &[u8] = b"hearth/1";

/// Protocol version carried in `HELLO`.
pub const PROTOCOL_VERSION: u8 = 1;

/// Bytes of the frame header: a 4-byte length followed by a 1-byte type.
pub const FRAME_HEADER_LEN: usize = 5;

/// Fixed bytes of a `SEND` body before its payload (message id, account, device, ttl, flags).
pub const SEND_FIXED_LEN: usize = 16 + 8 + 4 + 4 + 1;

/// Fixed bytes of a `DELIVER` body before its payload.
pub const DELIVER_FIXED_LEN: usize = 8 + 16 + 8 + 4 + 8 + 8 + 1;

/// Default maximum envelope payload size (256 KiB).
pub const DEFAULT_MAX_ENVELOPE: usize = 256 * 1024;
