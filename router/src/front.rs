//! The QUIC front: endpoints sharing one port, the accept loop (address validation under a
//! handshake flood) and the connection limit.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use hearth_protocol::ErrorCode;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::Shared;

const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// Shortest interval between two stateless resets of one endpoint (quinn's default is 20 ms):
/// after a restart every client still talking to the old node should hear one promptly. A reset
/// is always smaller than the packet that caused it, so it amplifies nothing.
const MIN_RESET_INTERVAL: Duration = Duration::from_micros(100);

/// Counters of the QUIC front.
#[derive(Debug, Default)]
pub(crate) struct FrontMetrics {
    /// Incoming handshakes seen.
    pub handshakes: AtomicU64,
    /// Handshakes answered with a Retry (address validation).
    pub retries: AtomicU64,
    /// Handshakes resumed from a TLS session ticket.
    pub resumed: Arc<AtomicU64>,
}

/// Decides which new handshakes must validate their address first.
pub(crate) struct HandshakeGate {
    /// Admits `retry_above_handshakes_per_sec` unvalidated handshakes per second; `None`: never
    /// ask for a Retry.
    limiter: Option<governor::DefaultDirectRateLimiter>,
}

impl HandshakeGate {
    pub(crate) fn new(per_sec: u32) -> HandshakeGate {
        HandshakeGate {
            limiter: NonZeroU32::new(per_sec)
                .map(|r| governor::RateLimiter::direct(governor::Quota::per_second(r))),
        }
    }

    /// Whether `incoming` should be sent a Retry instead of being accepted.
    fn wants_retry(&self, incoming: &quinn::Incoming) -> bool {
        match &self.limiter {
            Some(l) if !incoming.remote_address_validated() && incoming.may_retry() => {
                l.check().is_err()
            }
            _ => false,
        }
    }
}

/// Bind `count` endpoints on `addr` with `SO_REUSEPORT` (the first resolves port 0).
///
/// `secret` is kept across restarts, so that a restarted node resets the connections of its
/// previous run at their next packet: it keys the stateless reset tokens, and the checksum that
/// connection ids carry (quinn drops packets whose id fails it, without a reset).
pub(crate) fn bind(
    addr: SocketAddr,
    count: usize,
    server_config: quinn::ServerConfig,
    secret: &[u8],
) -> anyhow::Result<Vec<quinn::Endpoint>> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let cid_tag = ring::hmac::sign(&key, b"hearth connection id key");
    let cid_key = u64::from_le_bytes(cid_tag.as_ref()[..8].try_into().expect("8 bytes"));
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(key));
    endpoint_config
        .cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        })
        .min_reset_interval(MIN_RESET_INTERVAL);
    let mut endpoints = Vec::with_capacity(count);
    let mut bind_to = addr;
    for _ in 0..count {
        let socket = udp_socket(bind_to, count > 1)?;
        let ep = quinn::Endpoint::new(
            endpoint_config.clone(),
            Some(server_config.clone()),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        bind_to = ep.local_addr()?;
        endpoints.push(ep);
    }
    Ok(endpoints)
}

fn udp_socket(addr: SocketAddr, reuse_port: bool) -> anyhow::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    // Best effort: the kernel caps these at net.core.[rw]mem_max.
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Accept connections until shutdown; each is served on its own task.
pub(crate) async fn accept_loop(ep: quinn::Endpoint, shared: Arc<Shared>, sessions: TaskTracker) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let incoming = tokio::select! {
            i = ep.accept() => match i { Some(i) => i, None => return },
            _ = crate::stopped(&mut shutdown) => return,
        };
        Metrics::inc(&shared.front.handshakes);
        let incoming = if shared.handshake_gate.wants_retry(&incoming) {
            match incoming.retry() {
                Ok(()) => {
                    Metrics::inc(&shared.front.retries);
                    continue;
                }
                Err(e) => e.into_incoming(),
            }
        } else {
            incoming
        };
        let shared = shared.clone();
        sessions.spawn(async move {
            let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(10), incoming).await else {
                return;
            };
            let m = shared.driver.metrics();
            let ip = conn.remote_address().ip();
            if let Err(r) = shared
                .driver
                .with(|c| c.check_new_connection(ip, crate::now_ms()))
            {
                let reason = format!("too many new connections; retry in {} ms", r.retry_after_ms);
                conn.close(ErrorCode::RateLimited.as_u16().into(), reason.as_bytes());
                return;
            }
            if Metrics::get(&m.connections) >= shared.max_connections as u64 {
                let code = ErrorCode::TooManyConnections;
                conn.close(code.as_u16().into(), b"the node is at its connection limit");
                return;
            }
            Metrics::inc(&m.connections);
            Metrics::inc(&m.connections_total);
            crate::session::serve(shared.clone(), conn).await;
            m.connections
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
}
