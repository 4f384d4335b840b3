//! Error codes carried in `ERROR` frames and as QUIC application close codes.

/// Why a request was refused or a connection closed. Values are stable wire constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// A frame could not be parsed. Fatal: the connection closes.
    MalformedFrame = 1,
    /// A well-formed frame arrived where it is not allowed (e.g. before `HELLO`). Fatal.
    ProtocolViolation = 2,
    /// The token is malformed, forged, or names an invalid device. Fatal.
    BadToken = 3,
    /// The token's expiry has passed. Fatal.
    TokenExpired = 4,
    /// The client speaks a protocol version the node does not. Fatal.
    UnsupportedVersion = 5,
    /// The envelope's payload exceeds the node's maximum envelope size.
    EnvelopeTooLarge = 16,
    /// A recipient device's queue is at its length or byte limit; nothing was stored.
    QueueFull = 17,
    /// The recipient account has no registered device, or the named device does not exist.
    NoSuchRecipient = 18,
    /// The `SEND` fields are invalid (a reserved flag bit is set).
    InvalidSend = 19,
    /// The node is saturated; retry after `retry_after_ms`.
    Overloaded = 20,
    /// The sender is not a member of the group.
    NotAMember = 22,
    /// The recipient's settings (reachability, network opt-in) do not accept this sender.
    RecipientUnreachable = 29,
    /// A rate limit refused the request; retry after `retry_after_ms`.
    RateLimited = 30,
    /// The account's residency zone does not allow its data on this node's region.
    Residency = 31,
    /// A sealed send's delivery access key does not match the recipient's.
    BadAccessKey = 37,
    /// The operation needs a group admin.
    NotAdmin = 23,
    /// The group does not exist.
    NoSuchGroup = 24,
    /// A group with that id exists (and was created by someone else).
    GroupExists = 25,
    /// The group would exceed the node's maximum group size.
    GroupTooLarge = 26,
    /// A `SEND_MULTI` lists more recipients than the node allows (or a header is too long).
    TooManyRecipients = 27,
    /// A group request is invalid (unknown op, group 0, an admin who is not a member...).
    InvalidRequest = 28,
    /// The connection was replaced by a newer connection of the same device. Close code.
    Replaced = 32,
    /// The node is shutting down; reconnect (to it later, or elsewhere). Close code.
    GoingAway = 33,
    /// The node is at its connection limit. Close code.
    TooManyConnections = 34,
    /// The device was unregistered by an operator; its queue is gone. Close code.
    DeviceRemoved = 35,
    /// The client closed the connection normally. Close code.
    Normal = 36,
    /// An unexpected failure inside the node (for example a storage error).
    Internal = 48,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 27] = [
        ErrorCode::MalformedFrame,
        ErrorCode::ProtocolViolation,
        ErrorCode::BadToken,
        ErrorCode::TokenExpired,
        ErrorCode::UnsupportedVersion,
        ErrorCode::EnvelopeTooLarge,
        ErrorCode::QueueFull,
        ErrorCode::NoSuchRecipient,
        ErrorCode::InvalidSend,
        ErrorCode::Overloaded,
        ErrorCode::NotAMember,
        ErrorCode::NotAdmin,
        ErrorCode::NoSuchGroup,
        ErrorCode::GroupExists,
        ErrorCode::GroupTooLarge,
        ErrorCode::TooManyRecipients,
        ErrorCode::InvalidRequest,
        ErrorCode::RecipientUnreachable,
        ErrorCode::RateLimited,
        ErrorCode::Residency,
        ErrorCode::BadAccessKey,
        ErrorCode::Replaced,
        ErrorCode::GoingAway,
        ErrorCode::TooManyConnections,
        ErrorCode::DeviceRemoved,
        ErrorCode::Normal,
        ErrorCode::Internal,
    ];

    /// The code from its wire value, if known.
    pub fn from_u16(v: u16) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| *c as u16 == v)
    }

    /// The wire value.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// Whether the node closes the connection after sending this code.
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            ErrorCode::MalformedFrame
                | ErrorCode::ProtocolViolation
                | ErrorCode::BadToken
                | ErrorCode::TokenExpired
                | ErrorCode::UnsupportedVersion
                | ErrorCode::Residency
                | ErrorCode::Replaced
                | ErrorCode::GoingAway
                | ErrorCode::TooManyConnections
                | ErrorCode::DeviceRemoved
                | ErrorCode::Normal
        )
    }

    /// A short upper-case name, as used in PROTOCOL.md and logs.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::MalformedFrame => "MALFORMED_FRAME",
            ErrorCode::ProtocolViolation => "PROTOCOL_VIOLATION",
            ErrorCode::BadToken => "BAD_TOKEN",
            ErrorCode::TokenExpired => "TOKEN_EXPIRED",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::EnvelopeTooLarge => "ENVELOPE_TOO_LARGE",
            ErrorCode::QueueFull => "QUEUE_FULL",
            ErrorCode::NoSuchRecipient => "NO_SUCH_RECIPIENT",
            ErrorCode::InvalidSend => "INVALID_SEND",
            ErrorCode::Overloaded => "OVERLOADED",
            ErrorCode::NotAMember => "NOT_A_MEMBER",
            ErrorCode::NotAdmin => "NOT_ADMIN",
            ErrorCode::NoSuchGroup => "NO_SUCH_GROUP",
            ErrorCode::GroupExists => "GROUP_EXISTS",
            ErrorCode::GroupTooLarge => "GROUP_TOO_LARGE",
            ErrorCode::TooManyRecipients => "TOO_MANY_RECIPIENTS",
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::RecipientUnreachable => "RECIPIENT_UNREACHABLE",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Residency => "RESIDENCY",
            ErrorCode::BadAccessKey => "BAD_ACCESS_KEY",
            ErrorCode::Replaced => "REPLACED",
            ErrorCode::GoingAway => "GOING_AWAY",
            ErrorCode::TooManyConnections => "TOO_MANY_CONNECTIONS",
            ErrorCode::DeviceRemoved => "DEVICE_REMOVED",
            ErrorCode::Normal => "NORMAL",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({})", self.name(), *self as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_u16()));
            assert_eq!(ErrorCode::from_u16(c.as_u16()), Some(c));
        }
        assert_eq!(ErrorCode::from_u16(999), None);
    }
}
