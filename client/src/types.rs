//! Plain data exchanged with the client: what the node said at login, what to send, what was
//! accepted, what was delivered.

use bytes::Bytes;
use hearth_protocol::{flags, DeliverMeta, MessageId, MultiRecipient};
use tokio::sync::mpsc;

/// The node's `WELCOME`: who we are and the limits of this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Authenticated account.
    pub account: u64,
    /// Authenticated device.
    pub device: u32,
    /// The node's clock at login, milliseconds since the Unix epoch.
    pub server_time_ms: u64,
    /// Largest payload the node accepts in a `SEND`.
    pub max_envelope: u32,
    /// Unacknowledged `DELIVER`s the node keeps in flight to this device.
    pub max_inflight: u32,
    /// The node's QUIC idle timeout in milliseconds: without traffic for this long the
    /// connection ends (the smaller of both sides' timeouts applies). 0: not announced (an
    /// older node).
    pub idle_timeout_ms: u32,
    /// Unanswered sends (of all kinds) after which the node stops reading this connection
    /// until it answers some; keep fewer outstanding. 0: not announced (an older node).
    pub max_pending_sends: u32,
}

impl From<hearth_protocol::Welcome> for Welcome {
    fn from(w: hearth_protocol::Welcome) -> Welcome {
        let hearth_protocol::Welcome {
            account,
            device,
            server_time_ms,
            max_envelope,
            max_inflight,
            idle_timeout_ms,
            max_pending_sends,
        } = w;
        Welcome {
            account,
            device,
            server_time_ms,
            max_envelope,
            max_inflight,
            idle_timeout_ms,
            max_pending_sends,
        }
    }
}

/// One envelope to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Sender-chosen id; a retry with the same id is stored once (idempotent).
    pub msg_id: MessageId,
    /// Recipient account.
    pub to_account: u64,
    /// Recipient device, or 0 for every device of the account (except this one).
    pub to_device: u32,
    /// Time to live in seconds; 0 = the node's default.
    pub ttl_secs: u32,
    /// Deliver only to connected devices, never store.
    pub ephemeral: bool,
    /// Ciphertext.
    pub payload: Bytes,
}

impl Outgoing {
    /// A stored envelope for every device of `to_account`, with a random id and default TTL.
    pub fn new(to_account: u64, payload: impl Into<Bytes>) -> Outgoing {
        Outgoing {
            msg_id: random_message_id(),
            to_account,
            to_device: 0,
            ttl_secs: 0,
            ephemeral: false,
            payload: payload.into(),
        }
    }

    /// The `flags` byte of the `SEND` frame.
    pub fn flags(&self) -> u8 {
        flag_byte(self.ephemeral)
    }
}

/// One envelope for every member of a server-managed group (`SEND_GROUP`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingGroup {
    /// Sender-chosen id; a retry with the same id is stored once.
    pub msg_id: MessageId,
    /// The group.
    pub group: u64,
    /// Time to live in seconds; 0 = the node's default.
    pub ttl_secs: u32,
    /// Deliver only to connected devices, never store.
    pub ephemeral: bool,
    /// Ciphertext (sender-key encrypted), stored once by the node.
    pub payload: Bytes,
}

/// One payload for a client-kept list of recipients (`SEND_MULTI`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMulti {
    /// Sender-chosen id; a retry with the same id is stored once.
    pub msg_id: MessageId,
    /// Time to live in seconds; 0 = the node's default.
    pub ttl_secs: u32,
    /// Deliver only to connected devices, never store.
    pub ephemeral: bool,
    /// Recipients with their opaque headers.
    pub recipients: Vec<MultiRecipient>,
    /// Ciphertext shared by all recipients.
    pub payload: Bytes,
}

/// The node's `GROUP_OK`: a group request took effect (or changed nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupOk {
    /// The group.
    pub group: u64,
    /// Membership version after the request.
    pub version: u64,
    /// Member count.
    pub members: u32,
}

/// The node's `GROUP_INFO`: one page of a group's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The group.
    pub group: u64,
    /// Membership version.
    pub version: u64,
    /// The creator's account.
    pub creator: u64,
    /// Member count.
    pub total: u32,
    /// Index of the first member of this page.
    pub offset: u32,
    /// (account, role) pairs; see `hearth_protocol::role`.
    pub members: Vec<(u64, u8)>,
}

/// Answer to a group, policy or report request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GroupReply {
    Ok(GroupOk),
    Info(GroupInfo),
    /// `OK` to a `POLICY_SET` or `REPORT`.
    Done,
}

/// An envelope that does not reveal its sender (`SEND_SEALED`), authorised by the recipient's
/// delivery access key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingSealed {
    /// Sender-chosen id (use random ids: sealed sends are deduplicated by id alone).
    pub msg_id: MessageId,
    /// Recipient account.
    pub to_account: u64,
    /// Recipient device, or 0 for every device of the account.
    pub to_device: u32,
    /// Time to live in seconds; 0 = the node's default.
    pub ttl_secs: u32,
    /// The recipient's delivery access key.
    pub access_key: Bytes,
    /// Ciphertext.
    pub payload: Bytes,
}

fn flag_byte(ephemeral: bool) -> u8 {
    if ephemeral {
        flags::EPHEMERAL
    } else {
        0
    }
}

impl OutgoingGroup {
    /// The `flags` byte of the frame.
    pub fn flags(&self) -> u8 {
        flag_byte(self.ephemeral)
    }
}

impl OutgoingMulti {
    /// The `flags` byte of the frame.
    pub fn flags(&self) -> u8 {
        flag_byte(self.ephemeral)
    }
}

/// A random (v4-style) message id.
pub fn random_message_id() -> MessageId {
    MessageId(rand::random())
}

/// The node's `ACCEPTED`: the envelope is durable (or, if ephemeral, was pushed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The `SEND`'s message id.
    pub msg_id: MessageId,
    /// Acceptance time, milliseconds since the Unix epoch.
    pub accepted_at_ms: u64,
    /// Device queues it was stored in (ephemeral: devices it was pushed to).
    pub recipients: u32,
}

/// An envelope delivered to this device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Queue sequence number to acknowledge; 0 for ephemeral envelopes (never acknowledged).
    pub seq: u64,
    /// The sender's message id.
    pub msg_id: MessageId,
    /// Sending account.
    pub from_account: u64,
    /// Sending device.
    pub from_device: u32,
    /// Acceptance time, milliseconds since the Unix epoch.
    pub accepted_at_ms: u64,
    /// Expiry time, milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    /// The `flags` byte (see `hearth_protocol::flags`).
    pub flags: u8,
    /// The group of a `SEND_GROUP` envelope; 0 for 1:1 and multi-recipient envelopes.
    pub group: u64,
    /// This device's opaque header of a `SEND_MULTI` envelope; empty otherwise.
    pub header: Bytes,
    /// The sender's ciphertext.
    pub payload: Bytes,
}

impl Delivery {
    /// The delivery of a `DELIVER` (group 0, no header) or `DELIVER_SHARED`.
    pub(crate) fn new(meta: DeliverMeta, group: u64, header: Bytes, payload: Bytes) -> Delivery {
        let DeliverMeta {
            seq,
            msg_id,
            from_account,
            from_device,
            accepted_at_ms,
            expires_at_ms,
            flags,
        } = meta;
        Delivery {
            seq,
            msg_id,
            from_account,
            from_device,
            accepted_at_ms,
            expires_at_ms,
            flags,
            group,
            header,
            payload,
        }
    }

    /// Whether this is an ephemeral envelope (seq 0, not to be acknowledged).
    pub fn is_ephemeral(&self) -> bool {
        self.flags & flags::EPHEMERAL != 0
    }
}

/// The stream of envelopes delivered to this device, in the order the node sent them.
///
/// The channel behind it is unbounded: the node keeps at most `max_inflight` (see [`Welcome`])
/// unacknowledged stored envelopes in flight, so an application that acknowledges what it has
/// processed bounds it. Ephemeral envelopes are not counted by the node: consume promptly.
#[derive(Debug)]
pub struct Deliveries {
    rx: mpsc::UnboundedReceiver<Delivery>,
}

impl Deliveries {
    pub(crate) fn channel() -> (mpsc::UnboundedSender<Delivery>, Deliveries) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, Deliveries { rx })
    }

    /// The next delivery; `None` once the connection (or the [`Client`](crate::Client)) has
    /// ended and everything received before was returned.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// Waits for at least one delivery, then appends up to `limit` of those already received
    /// to `out`; returns how many were added (0 = ended). Handy to acknowledge in batches.
    pub async fn next_batch(&mut self, out: &mut Vec<Delivery>, limit: usize) -> usize {
        self.rx.recv_many(out, limit).await
    }

    /// A delivery already received, without waiting.
    pub fn try_next(&mut self) -> Option<Delivery> {
        self.rx.try_recv().ok()
    }
}
