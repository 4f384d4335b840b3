//! Async Rust client for Hearth nodes.
//!
//! [`Connection`] is one authenticated device connection (QUIC, TLS 1.3, ALPN `hearth/1`, one
//! bidirectional stream carrying every frame). [`Client`] wraps it with automatic reconnects.
//!
//! ```no_run
//! # async fn demo(cfg: hearth_client::ClientConfig) -> Result<(), hearth_client::ClientError> {
//! use hearth_client::{Connection, Outgoing};
//! let (conn, mut deliveries) = Connection::connect(&cfg).await?;
//! let accepted = conn.send(Outgoing::new(42, &b"ciphertext"[..])).await?;
//! println!("stored for {} devices", accepted.recipients);
//! while let Some(d) = deliveries.next().await {
//!     conn.ack(&[d.seq])?;
//! }
//! # Ok(()) }
//! ```

mod backoff;
mod client;
mod config;
mod connection;
mod error;
mod io;
mod shared;
mod types;

pub use client::{Client, CONNECT_WAIT};
pub use config::{
    client_endpoint, quic_client_config, quic_client_config_with_tickets, ClientConfig,
    CONNECTION_WINDOW, IDLE_TIMEOUT, KEEP_ALIVE, SESSION_TICKETS, STREAM_RECEIVE_WINDOW,
};
pub use connection::{Connection, MAX_REDIRECTS};
pub use error::ClientError;
pub use types::{
    random_message_id, Accepted, Deliveries, Delivery, GroupInfo, GroupOk, Outgoing, OutgoingGroup,
    OutgoingMulti, OutgoingSealed, Welcome,
};

/// Re-exported so users need not depend on the protocol crate for ids and codes.
pub use hearth_protocol::{
    group_op, reach, role, ErrorCode, MessageId, MultiRecipient, PolicyChange, Scope,
};
