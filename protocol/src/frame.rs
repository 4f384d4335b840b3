//! The frames exchanged on a Hearth stream.

use bytes::Bytes;

use crate::ErrorCode;

/// A sender-chosen 16-byte message id: the key of idempotent retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// The all-zero id, used in `ERROR` frames that answer no particular `SEND`.
    pub const NONE: MessageId = MessageId([0; 16]);

    /// An id from two 64-bit halves (big-endian), handy for counters.
    pub fn from_u128(v: u128) -> MessageId {
        MessageId(v.to_be_bytes())
    }

    /// The id as a number.
    pub fn as_u128(self) -> u128 {
        u128::from_be_bytes(self.0)
    }
}

/// Bits of the `flags` byte of `SEND` and `DELIVER`.
pub mod flags {
    /// Ephemeral: deliver only to connected devices, never store, never acknowledge.
    pub const EPHEMERAL: u8 = 0x01;
    /// All bits a client may set in version 1.
    pub const KNOWN: u8 = EPHEMERAL;
}

/// One protocol frame. Client-to-node frames have types below 0x80, node-to-client above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `HELLO` (0x01): first frame of a connection, authenticates the device.
    Hello {
        /// Protocol version the client speaks.
        version: u8,
        /// The device token as text (`ht1.` + base64url).
        token: String,
    },
    /// `SEND` (0x02): one opaque envelope for an account or one of its devices.
    Send {
        /// Sender-chosen id; retries with the same id are stored once.
        msg_id: MessageId,
        /// Recipient account.
        to_account: u64,
        /// Recipient device, or 0 for every device of the account (except the sender's own).
        to_device: u32,
        /// Time to live in seconds; 0 means the node's default.
        ttl_secs: u32,
        /// See [`flags`].
        flags: u8,
        /// Ciphertext, never inspected by the node.
        payload: Bytes,
    },
    /// `ACK` (0x03): the device has durably processed these queue sequence numbers.
    Ack {
        /// Queue sequence numbers from `DELIVER` frames.
        seqs: Vec<u64>,
    },
    /// `PING` (0x04): liveness probe; answered by `PONG` with the same nonce.
    Ping {
        /// Echoed in the `PONG`.
        nonce: u64,
    },
    /// `WELCOME` (0x81): the token was accepted.
    Welcome {
        /// Authenticated account.
        account: u64,
        /// Authenticated device.
        device: u32,
        /// The node's clock, milliseconds since the Unix epoch.
        server_time_ms: u64,
        /// Largest payload the node accepts in a `SEND`.
        max_envelope: u32,
        /// How many unacknowledged `DELIVER`s the node keeps in flight to this device.
        max_inflight: u32,
    },
    /// `ACCEPTED` (0x82): the envelope is durable (or, if ephemeral, was handed to live devices).
    Accepted {
        /// The `SEND`'s message id.
        msg_id: MessageId,
        /// Acceptance time, milliseconds since the Unix epoch.
        accepted_at_ms: u64,
        /// Device queues the envelope was stored in (ephemeral: devices it was pushed to).
        recipients: u32,
    },
    /// `DELIVER` (0x83): an envelope for this device.
    Deliver {
        /// Queue sequence number to `ACK`; 0 for ephemeral envelopes (never acknowledged).
        seq: u64,
        /// The sender's message id.
        msg_id: MessageId,
        /// Sending account.
        from_account: u64,
        /// Sending device.
        from_device: u32,
        /// Acceptance time, milliseconds since the Unix epoch.
        accepted_at_ms: u64,
        /// Expiry time, milliseconds since the Unix epoch.
        expires_at_ms: u64,
        /// See [`flags`].
        flags: u8,
        /// The sender's ciphertext.
        payload: Bytes,
    },
    /// `ERROR` (0x84): a refusal; fatal codes are followed by the connection closing.
    Error {
        /// The refused `SEND`'s id, or [`MessageId::NONE`].
        msg_id: MessageId,
        /// Why.
        code: ErrorCode,
        /// When to retry, in milliseconds; 0 when retrying will not help.
        retry_after_ms: u32,
        /// Human-readable detail (UTF-8, at most 1024 bytes).
        message: String,
    },
    /// `PONG` (0x85): answer to `PING`.
    Pong {
        /// The `PING`'s nonce.
        nonce: u64,
    },
}

impl Frame {
    /// The frame's type byte.
    pub fn type_byte(&self) -> u8 {
        match self {
            Frame::Hello { .. } => 0x01,
            Frame::Send { .. } => 0x02,
            Frame::Ack { .. } => 0x03,
            Frame::Ping { .. } => 0x04,
            Frame::Welcome { .. } => 0x81,
            Frame::Accepted { .. } => 0x82,
            Frame::Deliver { .. } => 0x83,
            Frame::Error { .. } => 0x84,
            Frame::Pong { .. } => 0x85,
        }
    }

    /// An `ERROR` frame not tied to a `SEND`.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Frame {
        Frame::Error { msg_id: MessageId::NONE, code, retry_after_ms: 0, message: message.into() }
    }
}
