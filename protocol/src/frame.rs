//! The frames exchanged on a Hearth stream.

use std::borrow::Cow;

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

    /// Whether this is the all-zero id, which no request may carry.
    pub fn is_none(self) -> bool {
        self == MessageId::NONE
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

/// `HELLO` (0x01): first frame of a connection, authenticates the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version the client speaks.
    pub version: u8,
    /// The device token as text (`ht1.` or `ht2.` + base64url).
    pub token: String,
}

/// `SEND` (0x02): one opaque envelope for an account or one of its devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    /// Sender-chosen id, never all zero; retries with the same id are stored once.
    pub msg_id: MessageId,
    /// Recipient account.
    pub to_account: u64,
    /// Recipient device, or 0 for every device of the account (except the sender's own).
    pub to_device: u32,
    /// Time to live in seconds; 0 means the node's default.
    pub ttl_secs: u32,
    /// See [`flags`].
    pub flags: u8,
    /// Ciphertext, never inspected by the node.
    pub payload: Bytes,
}

/// `ACK` (0x03): the device has durably processed these queue sequence numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Queue sequence numbers from `DELIVER` and `DELIVER_SHARED` frames.
    pub seqs: Vec<u64>,
}

/// `PING` (0x04): liveness probe and flush; answered by `PONG` with the same nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ping {
    /// Echoed in the `PONG`.
    pub nonce: u64,
}

/// `PONG` (0x85): answer to `PING`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pong {
    /// The `PING`'s nonce.
    pub nonce: u64,
}

/// `GROUP_CREATE` (0x05): create a server-managed group; the sender becomes creator and admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCreate {
    /// Request id, never all zero, echoed in the answer.
    pub req_id: MessageId,
    /// Client-chosen group id, never 0.
    pub group: u64,
    /// Initial members besides the creator.
    pub members: Vec<u64>,
}

/// `GROUP_UPDATE` (0x06): change membership; see [`group_op`](crate::group_op).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupUpdate {
    /// Request id, never all zero, echoed in the answer.
    pub req_id: MessageId,
    /// The group.
    pub group: u64,
    /// One of [`group_op`](crate::group_op).
    pub op: u8,
    /// Accounts the operation applies to.
    pub accounts: Vec<u64>,
}

/// `GROUP_GET` (0x07): read a page of a group's members (members only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupGet {
    /// Request id, never all zero, echoed in the answer.
    pub req_id: MessageId,
    /// The group.
    pub group: u64,
    /// First member index of the page.
    pub offset: u32,
    /// Most members in the page (the node may cap it).
    pub limit: u32,
}

/// `SEND_GROUP` (0x08): one envelope to every device of every member but the sending device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendGroup {
    /// Sender-chosen id, never all zero; retries with the same id are stored once.
    pub msg_id: MessageId,
    /// The group.
    pub group: u64,
    /// Time to live in seconds; 0 means the node's default.
    pub ttl_secs: u32,
    /// See [`flags`].
    pub flags: u8,
    /// Ciphertext, stored once however many recipients.
    pub payload: Bytes,
}

/// `SEND_MULTI` (0x09): one payload to a client-kept list of recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendMulti {
    /// Sender-chosen id, never all zero; retries with the same id are stored once.
    pub msg_id: MessageId,
    /// Time to live in seconds; 0 means the node's default.
    pub ttl_secs: u32,
    /// See [`flags`].
    pub flags: u8,
    /// The recipients and their opaque headers.
    pub recipients: Vec<MultiRecipient>,
    /// Ciphertext shared by all recipients, stored once.
    pub payload: Bytes,
}

/// `POLICY_SET` (0x0A): change the sending account's privacy settings; answered `OK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySet {
    /// Request id, never all zero, echoed in the answer.
    pub req_id: MessageId,
    /// The change.
    pub change: PolicyChange,
}

/// `REPORT` (0x0B): report an account as abusive (metadata only; answered `OK`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Request id, never all zero, echoed in the answer.
    pub req_id: MessageId,
    /// The reported account.
    pub account: u64,
}

/// `SEND_SEALED` (0x0C): a `SEND` that does not reveal the sender, authorised by the
/// recipient's delivery access key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendSealed {
    /// Sender-chosen id, never all zero.
    pub msg_id: MessageId,
    /// Recipient account.
    pub to_account: u64,
    /// Recipient device, or 0 for every device of the account.
    pub to_device: u32,
    /// Time to live in seconds; 0 means the node's default.
    pub ttl_secs: u32,
    /// See [`flags`].
    pub flags: u8,
    /// The recipient's delivery access key (1 to 64 bytes).
    pub access_key: Bytes,
    /// Ciphertext.
    pub payload: Bytes,
}

/// `REDIRECT` (0x8A): another node of the cluster serves this account; connect there. The
/// node then closes the connection with `REDIRECTED`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// The cluster map epoch the node decided under (for logs and tooling; 0: unknown).
    pub epoch: u64,
    /// The owner's client address, `host:port` (UTF-8 text, at most 1024 bytes).
    pub addr: String,
}

/// `WELCOME` (0x81): the token was accepted; the session's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    /// Authenticated account.
    pub account: u64,
    /// Authenticated device.
    pub device: u32,
    /// The node's clock, milliseconds since the Unix epoch.
    pub server_time_ms: u64,
    /// Largest payload the node accepts in a `SEND`.
    pub max_envelope: u32,
    /// How many unacknowledged `DELIVER`s the node keeps in flight to this device.
    pub max_inflight: u32,
    /// The node's QUIC idle timeout in milliseconds (0: not announced, e.g. an older node).
    pub idle_timeout_ms: u32,
    /// Unanswered sends after which the node stops reading the stream (0: not announced).
    pub max_pending_sends: u32,
}

/// `ACCEPTED` (0x82): the envelope is durable (or, if ephemeral, was handed to live devices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The send's message id.
    pub msg_id: MessageId,
    /// Acceptance time, milliseconds since the Unix epoch.
    pub accepted_at_ms: u64,
    /// Device queues the envelope was stored in (ephemeral: devices it was pushed to).
    pub recipients: u32,
}

/// The fields `DELIVER` and `DELIVER_SHARED` share, in their wire order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliverMeta {
    /// Queue sequence number to `ACK`; 0 for ephemeral envelopes (never acknowledged).
    pub seq: u64,
    /// The sender's message id.
    pub msg_id: MessageId,
    /// Sending account (0 for a sealed send).
    pub from_account: u64,
    /// Sending device (0 for a sealed send).
    pub from_device: u32,
    /// Acceptance time, milliseconds since the Unix epoch.
    pub accepted_at_ms: u64,
    /// Expiry time, milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    /// See [`flags`].
    pub flags: u8,
}

/// `DELIVER` (0x83): an envelope for this device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deliver {
    /// Sequence number, sender, times and flags.
    pub meta: DeliverMeta,
    /// The sender's ciphertext.
    pub payload: Bytes,
}

/// `DELIVER_SHARED` (0x88): a group or multi-recipient envelope for this device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverShared {
    /// Sequence number, sender, times and flags, as in `DELIVER`.
    pub meta: DeliverMeta,
    /// The group, or 0 for a `SEND_MULTI`.
    pub group: u64,
    /// This recipient's opaque header (empty for groups).
    pub header: Bytes,
    /// The shared ciphertext.
    pub payload: Bytes,
}

/// Why the node refused a request or closes a connection: the content of an `ERROR` frame
/// besides its message id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub code: ErrorCode,
    /// When to retry, in milliseconds; 0 when there is no hint.
    pub retry_after_ms: u32,
    /// Human-readable detail (UTF-8, at most 1024 bytes on the wire), for logs only.
    pub message: Cow<'static, str>,
}

impl Refusal {
    /// A refusal with `code` and no retry hint.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal {
            code,
            retry_after_ms: 0,
            message: message.into(),
        }
    }

    /// The same refusal with a retry hint of `ms` milliseconds.
    pub fn retry_after(self, ms: u32) -> Refusal {
        Refusal {
            retry_after_ms: ms,
            ..self
        }
    }

    /// A failure inside the node (e.g. storage): `INTERNAL`, "storage failure", retry after
    /// 100 ms. Log the real error where it happens; it never goes to the client.
    pub fn internal() -> Refusal {
        Refusal::new(ErrorCode::Internal, "storage failure").retry_after(100)
    }

    /// The `ERROR` frame answering the request `msg_id` (a `msg_id` or `req_id`) with this
    /// refusal.
    pub fn answer(self, msg_id: MessageId) -> Frame {
        Frame::Error(Refused {
            msg_id,
            refusal: self,
        })
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// `ERROR` (0x84): a refusal of one request, or (with [`MessageId::NONE`]) of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The refused request's `msg_id` or `req_id`, or [`MessageId::NONE`].
    pub msg_id: MessageId,
    /// Code, retry hint and message.
    pub refusal: Refusal,
}

/// `OK` (0x89): a `POLICY_SET` or `REPORT` took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestOk {
    /// The request's id.
    pub req_id: MessageId,
}

/// `GROUP_OK` (0x86): a group create or update succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupOk {
    /// The request's id.
    pub req_id: MessageId,
    /// The group.
    pub group: u64,
    /// Membership version after the request (bumps only on change).
    pub version: u64,
    /// Member count.
    pub members: u32,
}

/// `GROUP_INFO` (0x87): a page of a group's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The request's id.
    pub req_id: MessageId,
    /// The group.
    pub group: u64,
    /// Membership version.
    pub version: u64,
    /// The creator's account.
    pub creator: u64,
    /// Member count.
    pub total: u32,
    /// Index of the first member in this page.
    pub offset: u32,
    /// (account, role) pairs in account order; see [`role`](crate::role).
    pub members: Vec<(u64, u8)>,
}

/// One protocol frame. Client-to-node frames have types below 0x80, node-to-client above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `HELLO` (0x01).
    Hello(Hello),
    /// `SEND` (0x02).
    Send(Send),
    /// `ACK` (0x03).
    Ack(Ack),
    /// `PING` (0x04).
    Ping(Ping),
    /// `GROUP_CREATE` (0x05).
    GroupCreate(GroupCreate),
    /// `GROUP_UPDATE` (0x06).
    GroupUpdate(GroupUpdate),
    /// `GROUP_GET` (0x07).
    GroupGet(GroupGet),
    /// `SEND_GROUP` (0x08).
    SendGroup(SendGroup),
    /// `SEND_MULTI` (0x09).
    SendMulti(SendMulti),
    /// `POLICY_SET` (0x0A).
    PolicySet(PolicySet),
    /// `REPORT` (0x0B).
    Report(Report),
    /// `SEND_SEALED` (0x0C).
    SendSealed(SendSealed),
    /// `WELCOME` (0x81).
    Welcome(Welcome),
    /// `ACCEPTED` (0x82).
    Accepted(Accepted),
    /// `DELIVER` (0x83).
    Deliver(Deliver),
    /// `ERROR` (0x84): fatal codes are followed by the connection closing.
    Error(Refused),
    /// `PONG` (0x85).
    Pong(Pong),
    /// `GROUP_OK` (0x86).
    GroupOk(GroupOk),
    /// `GROUP_INFO` (0x87).
    GroupInfo(GroupInfo),
    /// `DELIVER_SHARED` (0x88).
    DeliverShared(DeliverShared),
    /// `REDIRECT` (0x8A): connect to another node instead (cluster).
    Redirect(Redirect),
    /// `OK` (0x89).
    Ok(RequestOk),
}

macro_rules! frame_from {
    ($($variant:ident($payload:ident)),* $(,)?) => {
        $(
            impl From<$payload> for Frame {
                fn from(p: $payload) -> Frame {
                    Frame::$variant(p)
                }
            }
        )*
    };
}

frame_from!(
    Hello(Hello),
    Send(Send),
    Ack(Ack),
    Ping(Ping),
    GroupCreate(GroupCreate),
    GroupUpdate(GroupUpdate),
    GroupGet(GroupGet),
    SendGroup(SendGroup),
    SendMulti(SendMulti),
    PolicySet(PolicySet),
    Report(Report),
    SendSealed(SendSealed),
    Welcome(Welcome),
    Accepted(Accepted),
    Deliver(Deliver),
    Error(Refused),
    Pong(Pong),
    GroupOk(GroupOk),
    GroupInfo(GroupInfo),
    DeliverShared(DeliverShared),
    Ok(RequestOk),
);

impl Frame {
    /// The frame's type byte.
    pub fn type_byte(&self) -> u8 {
        match self {
            Frame::Hello(_) => 0x01,
            Frame::Send(_) => 0x02,
            Frame::Ack(_) => 0x03,
            Frame::Ping(_) => 0x04,
            Frame::GroupCreate(_) => 0x05,
            Frame::GroupUpdate(_) => 0x06,
            Frame::GroupGet(_) => 0x07,
            Frame::SendGroup(_) => 0x08,
            Frame::SendMulti(_) => 0x09,
            Frame::PolicySet(_) => 0x0A,
            Frame::Report(_) => 0x0B,
            Frame::SendSealed(_) => 0x0C,
            Frame::Welcome(_) => 0x81,
            Frame::Accepted(_) => 0x82,
            Frame::Deliver(_) => 0x83,
            Frame::Error(_) => 0x84,
            Frame::Pong(_) => 0x85,
            Frame::GroupOk(_) => 0x86,
            Frame::GroupInfo(_) => 0x87,
            Frame::DeliverShared(_) => 0x88,
            Frame::Ok(_) => 0x89,
            Frame::Redirect(_) => 0x8A,
        }
    }

    /// The id a client → node request carries and its answer echoes: the `msg_id` of the four
    /// send kinds, the `req_id` of group requests, `POLICY_SET` and `REPORT`. `None` for
    /// `HELLO`, `ACK`, `PING` and node → client frames.
    pub fn request_id(&self) -> Option<MessageId> {
        match self {
            Frame::Send(Send { msg_id, .. })
            | Frame::SendGroup(SendGroup { msg_id, .. })
            | Frame::SendMulti(SendMulti { msg_id, .. })
            | Frame::SendSealed(SendSealed { msg_id, .. }) => Some(*msg_id),
            Frame::GroupCreate(GroupCreate { req_id, .. })
            | Frame::GroupUpdate(GroupUpdate { req_id, .. })
            | Frame::GroupGet(GroupGet { req_id, .. })
            | Frame::PolicySet(PolicySet { req_id, .. })
            | Frame::Report(Report { req_id, .. }) => Some(*req_id),
            _ => None,
        }
    }

    /// An `ERROR` frame not tied to a request (msg_id all zero).
    pub fn error(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Frame {
        Refusal::new(code, message).answer(MessageId::NONE)
    }
}
