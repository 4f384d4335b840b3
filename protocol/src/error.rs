//! Error codes carried in `ERROR` frames and as QUIC application close codes.

/// Why a request was refused or a connection closed. Values are stable wire constants.
///
/// A code this version does not know (a later revision may add codes) is kept as
/// [`ErrorCode::Unknown`] and classified by its range (PROTOCOL.md §3): see
/// [`ErrorCode::is_fatal`], [`ErrorCode::is_retryable`] and [`ErrorCode::is_permanent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A frame could not be parsed. Fatal: the connection closes.
    MalformedFrame,
    /// A well-formed frame arrived where it is not allowed (e.g. before `HELLO`). Fatal.
    ProtocolViolation,
    /// The token is malformed, forged, or names an invalid device. Fatal.
    BadToken,
    /// The token's expiry has passed. Fatal.
    TokenExpired,
    /// The client speaks a protocol version the node does not. Fatal.
    UnsupportedVersion,
    /// The envelope's payload exceeds the node's maximum envelope size.
    EnvelopeTooLarge,
    /// A recipient device's queue is at its length or byte limit; nothing was stored.
    QueueFull,
    /// The recipient account has no registered device, or the named device does not exist.
    NoSuchRecipient,
    /// The `SEND` fields are invalid (a reserved flag bit is set).
    InvalidSend,
    /// A send's `msg_id` or a request's `req_id` is all zero.
    InvalidMessageId,
    /// The node is saturated; retry after `retry_after_ms`.
    Overloaded,
    /// The sender is not a member of the group.
    NotAMember,
    /// The recipient's settings (reachability, network opt-in) do not accept this sender.
    RecipientUnreachable,
    /// A rate limit refused the request; retry after `retry_after_ms`.
    RateLimited,
    /// The account's residency zone does not allow its data on this node's region.
    Residency,
    /// A sealed send's delivery access key does not match the recipient's.
    BadAccessKey,
    /// The operation needs a group admin.
    NotAdmin,
    /// The group does not exist.
    NoSuchGroup,
    /// A group with that id exists (and was created by someone else).
    GroupExists,
    /// The group would exceed the node's maximum group size.
    GroupTooLarge,
    /// A `SEND_MULTI` lists more recipients than the node allows (or a header is too long).
    TooManyRecipients,
    /// A group request is invalid (unknown op, group 0, an admin who is not a member...).
    InvalidRequest,
    /// The connection was replaced by a newer connection of the same device. Close code.
    Replaced,
    /// The node is shutting down; reconnect (to it later, or elsewhere). Close code.
    GoingAway,
    /// The node is at its connection limit. Close code.
    TooManyConnections,
    /// The device was unregistered by an operator; its queue is gone. Close code.
    DeviceRemoved,
    /// The client closed the connection normally. Close code.
    Normal,
    /// An unexpected failure inside the node (for example a storage error).
    Internal,
    /// The account's slot is owned by another node (after a move), or is moving: resend the
    /// same request later (its message id makes the resend safe).
    Moved,
    /// The account is served by another node: the preceding `REDIRECT` names it. Close code.
    Redirected,
    /// A code not in this version's table, kept as its wire value (never a known value).
    Unknown(u16),
}

impl ErrorCode {
    /// Every code of this version's table, in increasing value.
    pub const ALL: [ErrorCode; 30] = [
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
        ErrorCode::InvalidMessageId,
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
        ErrorCode::Replaced,
        ErrorCode::GoingAway,
        ErrorCode::TooManyConnections,
        ErrorCode::DeviceRemoved,
        ErrorCode::Normal,
        ErrorCode::BadAccessKey,
        ErrorCode::Redirected,
        ErrorCode::Internal,
        ErrorCode::Moved,
    ];

    /// The code of a wire value; values not in the table become [`ErrorCode::Unknown`].
    pub fn from_u16(v: u16) -> ErrorCode {
        match v {
            1 => ErrorCode::MalformedFrame,
            2 => ErrorCode::ProtocolViolation,
            3 => ErrorCode::BadToken,
            4 => ErrorCode::TokenExpired,
            5 => ErrorCode::UnsupportedVersion,
            16 => ErrorCode::EnvelopeTooLarge,
            17 => ErrorCode::QueueFull,
            18 => ErrorCode::NoSuchRecipient,
            19 => ErrorCode::InvalidSend,
            20 => ErrorCode::Overloaded,
            21 => ErrorCode::InvalidMessageId,
            22 => ErrorCode::NotAMember,
            23 => ErrorCode::NotAdmin,
            24 => ErrorCode::NoSuchGroup,
            25 => ErrorCode::GroupExists,
            26 => ErrorCode::GroupTooLarge,
            27 => ErrorCode::TooManyRecipients,
            28 => ErrorCode::InvalidRequest,
            29 => ErrorCode::RecipientUnreachable,
            30 => ErrorCode::RateLimited,
            31 => ErrorCode::Residency,
            32 => ErrorCode::Replaced,
            33 => ErrorCode::GoingAway,
            34 => ErrorCode::TooManyConnections,
            35 => ErrorCode::DeviceRemoved,
            36 => ErrorCode::Normal,
            37 => ErrorCode::BadAccessKey,
            39 => ErrorCode::Redirected,
            48 => ErrorCode::Internal,
            50 => ErrorCode::Moved,
            other => ErrorCode::Unknown(other),
        }
    }

    /// The wire value.
    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::MalformedFrame => 1,
            ErrorCode::ProtocolViolation => 2,
            ErrorCode::BadToken => 3,
            ErrorCode::TokenExpired => 4,
            ErrorCode::UnsupportedVersion => 5,
            ErrorCode::EnvelopeTooLarge => 16,
            ErrorCode::QueueFull => 17,
            ErrorCode::NoSuchRecipient => 18,
            ErrorCode::InvalidSend => 19,
            ErrorCode::Overloaded => 20,
            ErrorCode::InvalidMessageId => 21,
            ErrorCode::NotAMember => 22,
            ErrorCode::NotAdmin => 23,
            ErrorCode::NoSuchGroup => 24,
            ErrorCode::GroupExists => 25,
            ErrorCode::GroupTooLarge => 26,
            ErrorCode::TooManyRecipients => 27,
            ErrorCode::InvalidRequest => 28,
            ErrorCode::RecipientUnreachable => 29,
            ErrorCode::RateLimited => 30,
            ErrorCode::Residency => 31,
            ErrorCode::Replaced => 32,
            ErrorCode::GoingAway => 33,
            ErrorCode::TooManyConnections => 34,
            ErrorCode::DeviceRemoved => 35,
            ErrorCode::Normal => 36,
            ErrorCode::BadAccessKey => 37,
            ErrorCode::Redirected => 39,
            ErrorCode::Internal => 48,
            ErrorCode::Moved => 50,
            ErrorCode::Unknown(v) => v,
        }
    }

    /// Whether the code is in this version's table.
    pub fn is_known(self) -> bool {
        !matches!(ErrorCode::from_u16(self.as_u16()), ErrorCode::Unknown(_))
    }

    /// The range an unknown code falls into (PROTOCOL.md §3): bits 4 and 5 of the value.
    fn class(self) -> Class {
        match (self.as_u16() >> 4) & 3 {
            0 => Class::FatalPermanent,
            1 => Class::Final,
            2 => Class::FatalTransient,
            _ => Class::Retryable,
        }
    }

    /// Whether the node closes the connection after sending this code (for a close code:
    /// always true). Unknown codes: values whose range (value mod 64) is 0–15 or 32–47.
    pub fn is_fatal(self) -> bool {
        match self {
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
            | ErrorCode::Redirected
            | ErrorCode::Normal => true,
            ErrorCode::Unknown(_) => {
                matches!(self.class(), Class::FatalPermanent | Class::FatalTransient)
            }
            _ => false,
        }
    }

    /// For a refusal that is not fatal: whether sending the same request again later (after
    /// `retry_after_ms`, or a backoff) may succeed. Unknown codes: range 48–63 (mod 64).
    pub fn is_retryable(self) -> bool {
        match self {
            ErrorCode::Overloaded
            | ErrorCode::RateLimited
            | ErrorCode::Internal
            | ErrorCode::Moved => true,
            ErrorCode::Unknown(_) => self.class() == Class::Retryable,
            _ => false,
        }
    }

    /// For a fatal or close code: whether reconnecting cannot help without a change on the
    /// client's side (a new token, a newer client, another node). Unknown codes: range 0–15
    /// (mod 64). `REPLACED` is not permanent: another connection of the device holds it.
    pub fn is_permanent(self) -> bool {
        match self {
            ErrorCode::BadToken
            | ErrorCode::TokenExpired
            | ErrorCode::UnsupportedVersion
            | ErrorCode::Residency
            | ErrorCode::DeviceRemoved => true,
            ErrorCode::Unknown(_) => self.class() == Class::FatalPermanent,
            _ => false,
        }
    }

    /// A short upper-case name, as used in PROTOCOL.md and logs (`UNKNOWN` for unknown codes).
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
            ErrorCode::InvalidMessageId => "INVALID_MESSAGE_ID",
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
            ErrorCode::Replaced => "REPLACED",
            ErrorCode::GoingAway => "GOING_AWAY",
            ErrorCode::TooManyConnections => "TOO_MANY_CONNECTIONS",
            ErrorCode::DeviceRemoved => "DEVICE_REMOVED",
            ErrorCode::Normal => "NORMAL",
            ErrorCode::BadAccessKey => "BAD_ACCESS_KEY",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Moved => "MOVED",
            ErrorCode::Redirected => "REDIRECTED",
            ErrorCode::Unknown(_) => "UNKNOWN",
        }
    }
}

/// The four ranges of PROTOCOL.md §3 that classify codes unknown to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// 0–15: fatal, reconnecting does not help.
    FatalPermanent,
    /// 16–31: the request was refused; resending it unchanged does not help.
    Final,
    /// 32–47: fatal, reconnect with backoff.
    FatalTransient,
    /// 48–63: the request was refused; resend it later.
    Retryable,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({})", self.name(), self.as_u16())
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
            assert_eq!(ErrorCode::from_u16(c.as_u16()), c);
            assert!(c.is_known());
        }
        assert_eq!(ErrorCode::from_u16(999), ErrorCode::Unknown(999));
        assert_eq!(ErrorCode::Unknown(999).as_u16(), 999);
        assert!(!ErrorCode::Unknown(999).is_known());
    }

    #[test]
    fn unknown_codes_are_classified_by_range() {
        let u = ErrorCode::Unknown;
        assert!(u(6).is_fatal() && u(6).is_permanent());
        assert!(u(38).is_fatal() && !u(38).is_permanent());
        assert!(!u(49).is_fatal() && u(49).is_retryable());
        for v in [21u16, 38, 49, 64, 100, 1000, u16::MAX] {
            let c = ErrorCode::from_u16(v);
            if c.is_known() {
                continue;
            }
            let class = (v % 64) / 16;
            assert_eq!(c.is_fatal(), class == 0 || class == 2, "{v}");
            assert_eq!(c.is_permanent(), class == 0, "{v}");
            assert_eq!(c.is_retryable(), class == 3, "{v}");
        }
        // The ranges agree with most of the table; the exceptions are listed in PROTOCOL.md.
        let exceptions = [
            ErrorCode::MalformedFrame,
            ErrorCode::ProtocolViolation,
            ErrorCode::Overloaded,
            ErrorCode::RateLimited,
            ErrorCode::Residency,
            ErrorCode::DeviceRemoved,
            ErrorCode::BadAccessKey,
        ];
        for c in ErrorCode::ALL {
            let as_unknown = ErrorCode::Unknown(c.as_u16());
            let same = c.is_fatal() == as_unknown.is_fatal()
                && c.is_retryable() == as_unknown.is_retryable()
                && c.is_permanent() == as_unknown.is_permanent();
            assert_eq!(same, !exceptions.contains(&c), "{c}");
        }
    }
}
