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
    /// Urgent: wake an offline recipient device through its push token even if it was woken
    /// recently (calls, not chatter).
    pub const URGENT: u8 = 0x02;
    /// All bits a client may set in version 1.
    pub const KNOWN: u8 = EPHEMERAL | URGENT;
}

/// One recipient of a `SEND_MULTI`: an account (device 0 = all its devices) or one device, with
/// a small header the node passes through untouched (e.g. the recipient's wrapped message key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiRecipient {
    /// Recipient account.
    pub account: u64,
    /// Recipient device, or 0 for every device of the account.
    pub device: u32,
    /// Opaque per-recipient header.
    pub header: Bytes,
}

/// Operations of `GROUP_UPDATE`.
pub mod group_op {
    /// Add the listed accounts as members.
    pub const ADD_MEMBERS: u8 = 1;
    /// Remove the listed accounts (a non-admin may remove only itself: leave).
    pub const REMOVE_MEMBERS: u8 = 2;
    /// Make the listed members admins.
    pub const ADD_ADMINS: u8 = 3;
    /// Make the listed admins plain members (never the creator).
    pub const REMOVE_ADMINS: u8 = 4;
    /// Delete the group (no accounts listed).
    pub const DELETE: u8 = 5;
}

/// Reachability modes of `POLICY_SET` [`PolicyChange::Reach`].
pub mod reach {
    /// Anyone may send to the account (blocked senders excepted).
    pub const EVERYONE: u8 = 0;
    /// Only accounts on the allow list (contacts) may send.
    pub const CONTACTS: u8 = 1;
    /// Nobody may send (sealed sends included).
    pub const NOBODY: u8 = 2;
}

/// One change of an account's privacy settings, carried by `POLICY_SET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyChange {
    /// Kind 1: who may reach the account; see [`reach`].
    Reach(u8),
    /// Kinds 2 (add) and 3 (remove): the allow list (contacts).
    Allow {
        /// Add (true) or remove (false).
        add: bool,
        /// Accounts.
        accounts: Vec<u64>,
    },
    /// Kinds 4 (add) and 5 (remove): the block list.
    Block {
        /// Add (true) or remove (false).
        add: bool,
        /// Accounts.
        accounts: Vec<u64>,
    },
    /// Kind 6: the other networks (apps) the account accepts envelopes from (replaces the set).
    Networks(Vec<String>),
    /// Kind 7: the delivery access key for sealed sends (empty removes it); the node keeps only
    /// its SHA-256.
    AccessKey(Bytes),
    /// Kind 8: this device's push token for wake-ups (empty removes it).
    PushToken(Bytes),
}

/// Roles in `GROUP_INFO`.
pub mod role {
    /// A plain member.
    pub const MEMBER: u8 = 1;
    /// An admin (may change membership).
    pub const ADMIN: u8 = 2;
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
    /// `GROUP_CREATE` (0x05): create a server-managed group; the sender becomes creator and admin.
    GroupCreate {
        /// Request id, echoed in the answer.
        req_id: MessageId,
        /// Client-chosen group id, never 0.
        group: u64,
        /// Initial members besides the creator.
        members: Vec<u64>,
    },
    /// `GROUP_UPDATE` (0x06): change membership; see [`group_op`].
    GroupUpdate {
        /// Request id, echoed in the answer.
        req_id: MessageId,
        /// The group.
        group: u64,
        /// One of [`group_op`].
        op: u8,
        /// Accounts the operation applies to.
        accounts: Vec<u64>,
    },
    /// `GROUP_GET` (0x07): read a page of a group's members (members only).
    GroupGet {
        /// Request id, echoed in the answer.
        req_id: MessageId,
        /// The group.
        group: u64,
        /// First member index of the page.
        offset: u32,
        /// Most members in the page (the node may cap it).
        limit: u32,
    },
    /// `SEND_GROUP` (0x08): one envelope to every device of every member but the sending device.
    SendGroup {
        /// Sender-chosen id; retries with the same id are stored once.
        msg_id: MessageId,
        /// The group.
        group: u64,
        /// Time to live in seconds; 0 means the node's default.
        ttl_secs: u32,
        /// See [`flags`].
        flags: u8,
        /// Ciphertext, stored once however many recipients.
        payload: Bytes,
    },
    /// `SEND_MULTI` (0x09): one payload to a client-kept list of recipients.
    SendMulti {
        /// Sender-chosen id; retries with the same id are stored once.
        msg_id: MessageId,
        /// Time to live in seconds; 0 means the node's default.
        ttl_secs: u32,
        /// See [`flags`].
        flags: u8,
        /// The recipients and their opaque headers.
        recipients: Vec<MultiRecipient>,
        /// Ciphertext shared by all recipients, stored once.
        payload: Bytes,
    },
    /// `POLICY_SET` (0x0A): change the sending account's privacy settings; answered `OK`.
    PolicySet {
        /// Request id, echoed in the answer.
        req_id: MessageId,
        /// The change.
        change: PolicyChange,
    },
    /// `REPORT` (0x0B): report an account as abusive (metadata only; answered `OK`).
    Report {
        /// Request id, echoed in the answer.
        req_id: MessageId,
        /// The reported account.
        account: u64,
    },
    /// `SEND_SEALED` (0x0C): a `SEND` that does not reveal the sender, authorised by the
    /// recipient's delivery access key.
    SendSealed {
        /// Sender-chosen id.
        msg_id: MessageId,
        /// Recipient account.
        to_account: u64,
        /// Recipient device, or 0 for every device of the account.
        to_device: u32,
        /// Time to live in seconds; 0 means the node's default.
        ttl_secs: u32,
        /// See [`flags`].
        flags: u8,
        /// The recipient's delivery access key (1 to 64 bytes).
        access_key: Bytes,
        /// Ciphertext.
        payload: Bytes,
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
    /// `OK` (0x89): a `POLICY_SET` or `REPORT` took effect.
    Ok {
        /// The request's id.
        req_id: MessageId,
    },
    /// `GROUP_OK` (0x86): a group request succeeded.
    GroupOk {
        /// The request's id.
        req_id: MessageId,
        /// The group.
        group: u64,
        /// Membership version after the request (bumps only on change).
        version: u64,
        /// Member count.
        members: u32,
    },
    /// `GROUP_INFO` (0x87): a page of a group's members.
    GroupInfo {
        /// The request's id.
        req_id: MessageId,
        /// The group.
        group: u64,
        /// Membership version.
        version: u64,
        /// The creator's account.
        creator: u64,
        /// Member count.
        total: u32,
        /// Index of the first member in this page.
        offset: u32,
        /// (account, role) pairs in account order; see [`role`].
        members: Vec<(u64, u8)>,
    },
    /// `DELIVER_SHARED` (0x88): a group or multi-recipient envelope for this device.
    DeliverShared {
        /// Queue sequence number to `ACK` (0 for ephemeral).
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
        /// The group, or 0 for a `SEND_MULTI`.
        group: u64,
        /// This recipient's opaque header (empty for groups).
        header: Bytes,
        /// The shared ciphertext.
        payload: Bytes,
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
            Frame::GroupCreate { .. } => 0x05,
            Frame::GroupUpdate { .. } => 0x06,
            Frame::GroupGet { .. } => 0x07,
            Frame::SendGroup { .. } => 0x08,
            Frame::SendMulti { .. } => 0x09,
            Frame::PolicySet { .. } => 0x0A,
            Frame::Report { .. } => 0x0B,
            Frame::SendSealed { .. } => 0x0C,
            Frame::Welcome { .. } => 0x81,
            Frame::Accepted { .. } => 0x82,
            Frame::Deliver { .. } => 0x83,
            Frame::Error { .. } => 0x84,
            Frame::Pong { .. } => 0x85,
            Frame::GroupOk { .. } => 0x86,
            Frame::GroupInfo { .. } => 0x87,
            Frame::DeliverShared { .. } => 0x88,
            Frame::Ok { .. } => 0x89,
        }
    }

    /// An `ERROR` frame not tied to a `SEND`.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Frame {
        Frame::Error {
            msg_id: MessageId::NONE,
            code,
            retry_after_ms: 0,
            message: message.into(),
        }
    }
}
