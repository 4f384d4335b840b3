//! Hearth inter-node links: one QUIC connection per node pair, mutual TLS under the cluster
//! CA, opaque messages (`Bytes`) batched per destination and carried on a fixed number of
//! streams per peer chosen by a key (the slot), so messages with one key stay in order.
//!
//! - [`Link::bind`] starts the endpoint; [`Link::set_peer`] tells it where a node is (from the
//!   membership); [`Link::send`] queues a message for a peer; [`Incoming`] yields what peers
//!   sent, as [`Delivery`] batches.
//! - One connection per pair: the node with the lower id dials, the other accepts; both send
//!   on it. The dialer reconnects with backoff after a loss.
//! - Per-peer outbox, bounded in bytes ([`LinkConfig::max_outbox_bytes`]): [`Link::send`]
//!   waits while it is full, [`Link::try_send`] refuses. Each stream's writer takes whatever
//!   is queued when it is free (the link is idle) into one frame of at most
//!   [`LinkConfig::flush_bytes`], so batches grow under load and cost nothing when idle.
//! - Delivery is in order per key while a connection lasts. Queued messages wait for the
//!   next connection; a frame being written when a connection fails may be lost (counted in
//!   [`PeerStats::dropped`]): the router's own answers (`ACCEPTED` after the owner's commit)
//!   and retries cover it.

mod frame;
mod link;
mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

pub use link::{Incoming, Link};
pub use tls::{node_name, verify_node_cert};

/// Configuration of a node's link endpoint.
#[derive(Clone)]
pub struct LinkConfig {
    /// This node's id (1 or more).
    pub node_id: u32,
    /// Cluster name (certificates name nodes `n<id>.<cluster>`).
    pub cluster: String,
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Cluster CA certificate, PEM.
    pub ca_pem: Vec<u8>,
    /// This node's certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// This node's private key, PEM.
    pub key_pem: Vec<u8>,
    /// Streams per peer (the key picks one: `key % streams_per_peer`).
    pub streams_per_peer: u16,
    /// Most message bytes in one frame (a batch); a backlog goes as several frames.
    pub flush_bytes: usize,
    /// Bytes queued for one peer before `send` waits (and `try_send` refuses).
    pub max_outbox_bytes: usize,
    /// Longest frame accepted from a peer (and longest message accepted by `send`).
    pub max_frame_bytes: usize,
    /// Batches received and not yet taken from [`Incoming`] before reading stops (QUIC
    /// flow control then holds the peers back).
    pub incoming_capacity: usize,
}

impl LinkConfig {
    /// A configuration with the default sizes: 8 streams per peer, 64 KiB batches, 8 MiB
    /// outbox per peer, 4 MiB frames.
    pub fn new(node_id: u32, cluster: &str, listen: SocketAddr) -> LinkConfig {
        LinkConfig {
            node_id,
            cluster: cluster.to_owned(),
            listen,
            ca_pem: Vec::new(),
            cert_pem: Vec::new(),
            key_pem: Vec::new(),
            streams_per_peer: 8,
            flush_bytes: 64 * 1024,
            max_outbox_bytes: 8 * 1024 * 1024,
            max_frame_bytes: 4 * 1024 * 1024,
            incoming_capacity: 1024,
        }
    }
}

/// Messages received from one peer on one stream, in the order it sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The sending node (authenticated by its certificate).
    pub from: u32,
    /// The stream index (`key % streams_per_peer` at the sender).
    pub stream: u16,
    /// The messages of one frame.
    pub messages: Vec<Bytes>,
}

/// Counters of one peer, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer's node id.
    pub peer: u32,
    /// A connection is up.
    pub connected: bool,
    /// Frames (batches) written.
    pub batches_sent: u64,
    /// Messages written.
    pub messages_sent: u64,
    /// Message bytes written.
    pub bytes_sent: u64,
    /// Frames received.
    pub batches_received: u64,
    /// Message bytes received.
    pub bytes_received: u64,
    /// Message bytes queued now (the outbox depth).
    pub queued_bytes: u64,
    /// Messages lost with a failed connection.
    pub dropped: u64,
    /// Connections established (1 + reconnects).
    pub connects: u64,
    /// Round-trip time of the current connection.
    pub rtt: Option<Duration>,
}

/// Errors of the link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Certificates or keys could not be used.
    #[error("tls: {0}")]
    Tls(String),
    /// The endpoint could not be bound.
    #[error("bind: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a message was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Longer than the frame cap.
    #[error("message of {0} bytes is over the link's frame cap")]
    TooLarge(usize),
    /// The peer's outbox is full (`try_send` only).
    #[error("outbox of node {0} is full")]
    Full(u32),
    /// Sending to this node itself.
    #[error("node {0} is this node")]
    ToSelf(u32),
    /// The link is closed.
    #[error("the link is closed")]
    Closed,
}
