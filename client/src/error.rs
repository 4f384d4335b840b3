//! The one error type of the client, and how QUIC failures map onto it.

use std::sync::Arc;

use hearth_protocol::ErrorCode;

/// Why a client operation failed. Cheap to clone: every waiter of a dead connection gets a copy.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The node answered with an `ERROR` frame (to `HELLO` or to a request). A send with an
    /// all-zero `msg_id` is refused by the client itself, with `INVALID_MESSAGE_ID`.
    #[error("refused by node: {code}: {message}")]
    Refused {
        /// The node's error code.
        code: ErrorCode,
        /// When to retry, in milliseconds; 0 when retrying will not help.
        retry_after_ms: u32,
        /// The node's explanation.
        message: String,
    },
    /// The connection ended. `code` is the node's close code (or the fatal `ERROR` code sent
    /// before it; a code unknown to this version is [`ErrorCode::Unknown`]); `None` when the
    /// connection was lost without one (timeout, reset, transport error) or the close code
    /// does not fit in a `u16`.
    #[error("connection closed ({}): {reason}", .code.map_or("no code".to_string(), |c| c.to_string()))]
    Closed {
        /// The Hearth close code, if any.
        code: Option<ErrorCode>,
        /// The close reason or a description of the failure.
        reason: String,
    },
    /// A local I/O failure (binding the UDP socket).
    #[error("I/O error: {0}")]
    Io(Arc<std::io::Error>),
    /// The TLS configuration is unusable (no certificate in the CA PEM, ...) or the TLS
    /// handshake failed (certificate not trusted, ALPN refused).
    #[error("TLS: {0}")]
    Tls(String),
    /// quinn refused to start the connection (bad server name or address).
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The node sent something that does not follow the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The nodes redirected this device (`REDIRECT`, a cluster) more than
    /// [`MAX_REDIRECTS`](crate::MAX_REDIRECTS) times in a row, or to an address that cannot
    /// be used. Transient: the cluster map may be changing; reconnect with backoff.
    #[error("redirect not followed: {0}")]
    Redirected(String),
    /// [`Client`](crate::Client) had no live connection within its wait.
    #[error("not connected: {0}")]
    NotConnected(String),
}

impl ClientError {
    /// The Hearth error code carried by this error, whether it came as an `ERROR` frame or as
    /// the QUIC close code (a refused `HELLO` may surface as either).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            ClientError::Closed { code, .. } => *code,
            ClientError::Redirected(_) => Some(ErrorCode::Redirected),
            _ => None,
        }
    }

    /// Whether reconnecting cannot help: the token or the device is no longer valid, the
    /// node does not speak our protocol version or may not hold the account
    /// ([`ErrorCode::is_permanent`]; codes unknown to this version by their range, PROTOCOL.md
    /// §3).
    pub fn is_permanent(&self) -> bool {
        self.code().is_some_and(ErrorCode::is_permanent)
    }

    /// Whether sending the same request again may succeed: the node refused it with a
    /// retryable code (`OVERLOADED`, `RATE_LIMITED`, `INTERNAL`, or an unknown code of the
    /// retryable range; wait [`ClientError::retry_after_ms`] first), or the connection ended
    /// before the answer and not for good (resend on the next connection, same `msg_id`).
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Refused { code, .. } => code.is_retryable(),
            ClientError::Closed { .. }
            | ClientError::NotConnected(_)
            | ClientError::Redirected(_) => !self.is_permanent(),
            _ => false,
        }
    }

    /// The node's `retry_after_ms` hint, if it gave one.
    pub fn retry_after_ms(&self) -> u32 {
        match self {
            ClientError::Refused { retry_after_ms, .. } => *retry_after_ms,
            _ => 0,
        }
    }

    pub(crate) fn closed(code: ErrorCode, reason: impl Into<String>) -> ClientError {
        ClientError::Closed {
            code: Some(code),
            reason: reason.into(),
        }
    }
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(Arc::new(e))
    }
}

/// TLS alerts travel as QUIC transport error codes 0x100..=0x1ff.
fn is_crypto(code: u64) -> bool {
    (0x100..=0x1ff).contains(&code)
}

impl From<&quinn::ConnectionError> for ClientError {
    fn from(e: &quinn::ConnectionError) -> Self {
        use quinn::ConnectionError as E;
        match e {
            E::ApplicationClosed(close) => {
                let raw = close.error_code.into_inner();
                let code = u16::try_from(raw).ok().map(ErrorCode::from_u16);
                let text = String::from_utf8_lossy(&close.reason).into_owned();
                let reason = match code {
                    Some(c) if c.is_known() => text,
                    _ => format!("unknown close code {raw}: {text}"),
                };
                ClientError::Closed { code, reason }
            }
            E::LocallyClosed => ClientError::closed(ErrorCode::Normal, "closed locally"),
            E::TransportError(t) if is_crypto(u64::from(t.code)) => ClientError::Tls(t.to_string()),
            E::ConnectionClosed(c) if is_crypto(u64::from(c.error_code)) => {
                ClientError::Tls(c.to_string())
            }
            other => ClientError::Closed {
                code: None,
                reason: other.to_string(),
            },
        }
    }
}

impl From<quinn::ConnectionError> for ClientError {
    fn from(e: quinn::ConnectionError) -> Self {
        ClientError::from(&e)
    }
}

impl From<quinn::ReadError> for ClientError {
    fn from(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::ConnectionLost(c) => c.into(),
            quinn::ReadError::Reset(code) => ClientError::Closed {
                code: u16::try_from(code.into_inner())
                    .ok()
                    .map(ErrorCode::from_u16),
                reason: "stream reset by node".into(),
            },
            other => ClientError::Protocol(other.to_string()),
        }
    }
}

impl From<quinn::WriteError> for ClientError {
    fn from(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::ConnectionLost(c) => c.into(),
            quinn::WriteError::Stopped(code) => ClientError::Closed {
                code: u16::try_from(code.into_inner())
                    .ok()
                    .map(ErrorCode::from_u16),
                reason: "stream stopped by node".into(),
            },
            other => ClientError::Protocol(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use quinn::{ApplicationClose, ConnectionError, VarInt};

    fn app_close(code: u32, reason: &'static str) -> ConnectionError {
        ConnectionError::ApplicationClosed(ApplicationClose {
            error_code: VarInt::from_u32(code),
            reason: Bytes::from_static(reason.as_bytes()),
        })
    }

    #[test]
    fn application_close_maps_to_hearth_code() {
        let e = ClientError::from(app_close(3, "bad signature"));
        match &e {
            ClientError::Closed { code, reason } => {
                assert_eq!(*code, Some(ErrorCode::BadToken));
                assert_eq!(reason, "bad signature");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(e.is_permanent());
        let e = ClientError::from(app_close(33, "shutting down"));
        assert_eq!(e.code(), Some(ErrorCode::GoingAway));
        assert!(!e.is_permanent());
    }

    #[test]
    fn unknown_close_codes_keep_the_number_and_are_classified_by_range() {
        let e = ClientError::from(app_close(999, "what"));
        match &e {
            ClientError::Closed { code, reason } => {
                assert_eq!(*code, Some(ErrorCode::Unknown(999)));
                assert!(reason.contains("999"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
        // 999 % 64 = 39: fatal, reconnect with backoff.
        assert!(!e.is_permanent());
        // 6..=15: fatal, reconnecting does not help.
        assert!(ClientError::from(app_close(12, "new auth failure")).is_permanent());
        let e = ClientError::from(app_close(70_000, "beyond u16"));
        assert_eq!(e.code(), None);
        assert!(!e.is_permanent());
    }

    #[test]
    fn unknown_refusal_codes_are_classified_by_range() {
        let refused = |v: u16| ClientError::Refused {
            code: ErrorCode::from_u16(v),
            retry_after_ms: 0,
            message: String::new(),
        };
        assert!(refused(50).is_retryable()); // 48..=63: retryable
        assert!(!refused(40 + 64).is_retryable()); // 32..=47 (mod 64)
        assert!(!refused(21).is_retryable()); // INVALID_MESSAGE_ID
        assert!(!refused(16 + 64).is_retryable()); // 16..=31 (mod 64): final
        assert!(refused(20).is_retryable()); // OVERLOADED
    }

    #[test]
    fn timeouts_and_local_close() {
        let e = ClientError::from(ConnectionError::TimedOut);
        assert!(matches!(e, ClientError::Closed { code: None, .. }));
        assert_eq!(
            ClientError::from(ConnectionError::LocallyClosed).code(),
            Some(ErrorCode::Normal)
        );
    }

    #[test]
    fn refused_exposes_code_and_retry() {
        let e = ClientError::Refused {
            code: ErrorCode::Overloaded,
            retry_after_ms: 250,
            message: "busy".into(),
        };
        assert_eq!(e.code(), Some(ErrorCode::Overloaded));
        assert_eq!(e.retry_after_ms(), 250);
        assert!(!e.is_permanent());
        assert!(e.to_string().contains("OVERLOADED"));
    }
}
