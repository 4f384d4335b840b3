//! Connecting simulated devices: a pool of client endpoints (UDP sockets with large buffers,
//! each with its own quinn driver task) spread over the `source_ips` loopback addresses, a
//! handshake pacer (`connect_rate`) and a bound on concurrent handshakes.

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hearth_client::{
    quic_client_config, quic_client_config_with_tickets, ClientConfig, ClientError, Connection,
    Deliveries,
};
use quinn::Endpoint;
use tokio::sync::Semaphore;

use crate::target::{issue_token, Prepared};

/// Most client endpoints (sockets) per source address.
const ENDPOINTS_PER_IP: usize = 8;
/// Concurrent handshakes.
const CONNECT_CONCURRENCY: usize = 128;
/// Socket buffers of the client endpoints.
const SOCKET_BUFFER: usize = 4 << 20;

/// Connects devices; shared by the setup, offline devices coming back and churn.
pub(crate) struct Connector {
    endpoints: Vec<Endpoint>,
    quic: quinn::ClientConfig,
    base: ClientConfig,
    key: hearth_protocol::SigningKey,
    pacer: Pacer,
    handshakes: Semaphore,
}

impl Connector {
    /// Endpoints for `connections` connections spread over `source_ips` loopback addresses.
    pub(crate) fn new(
        p: &Prepared,
        connections: usize,
        source_ips: u8,
        connect_rate: f64,
    ) -> anyhow::Result<Connector> {
        let base = ClientConfig::new(p.addr, p.server_name.clone(), p.ca_pem.clone(), "");
        let quic = quic_client_config(&base).context("client TLS configuration")?;
        let ips = usize::from(source_ips.max(1));
        // Several sockets per address so that quinn's per-endpoint driver is not one hot task;
        // one per 2,000 connections up to the cap, and at least one per source address.
        let per_ip = connections.div_ceil(2000).clamp(1, ENDPOINTS_PER_IP);
        let count = (ips * per_ip).max(ENDPOINTS_PER_IP.min(connections.max(1)));
        let endpoints = (0..count)
            .map(|e| {
                let bind = if ips > 1 {
                    SocketAddr::from(([127, 0, 0, 1 + (e % ips) as u8], 0))
                } else {
                    base.bind_addr()
                };
                endpoint(bind).with_context(|| format!("binding a client endpoint on {bind}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let key = hearth_protocol::SigningKey::from_pkcs8(p.key.to_pkcs8())
            .map_err(|e| anyhow::anyhow!("token key: {e}"))?;
        Ok(Connector {
            endpoints,
            quic,
            base,
            key,
            pacer: Pacer::new(connect_rate),
            handshakes: Semaphore::new(CONNECT_CONCURRENCY),
        })
    }

    /// Keep up to `tickets` TLS session tickets for reconnects (0: every handshake is a full
    /// one). The default keeps the client crate's few, shared by all connections.
    pub(crate) fn set_session_tickets(&mut self, tickets: usize) -> anyhow::Result<()> {
        self.quic = quic_client_config_with_tickets(&self.base, tickets)
            .context("client TLS configuration")?;
        Ok(())
    }

    /// Connects `account` (device 1) from endpoint `slot % endpoints`, paced. One attempt.
    pub(crate) async fn connect(
        &self,
        slot: usize,
        account: u64,
    ) -> Result<(Connection, Deliveries), ClientError> {
        let _permit = self.handshakes.acquire().await.expect("never closed");
        self.pacer.wait().await;
        let cc = ClientConfig {
            token: issue_token(&self.key, account),
            ..self.base.clone()
        };
        let ep = &self.endpoints[slot % self.endpoints.len()];
        Connection::connect_with_config(ep, &self.quic, &cc).await
    }

    /// Like [`Connector::connect`], retrying up to `attempts` times with a short backoff;
    /// `failures` counts the failed attempts.
    pub(crate) async fn connect_retry(
        &self,
        slot: usize,
        account: u64,
        attempts: u32,
        failures: &std::sync::atomic::AtomicU64,
    ) -> Result<(Connection, Deliveries), ClientError> {
        let mut delay = Duration::from_millis(50);
        let mut n = 0;
        loop {
            match self.connect(slot, account).await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    n += 1;
                    if n >= attempts || e.is_permanent() {
                        return Err(e);
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Waits (at most `limit`) until the endpoints have no connection left (the closes
    /// reached the node).
    pub(crate) async fn wait_idle(&self, limit: Duration) {
        let mut set = tokio::task::JoinSet::new();
        for e in &self.endpoints {
            let e = e.clone();
            set.spawn(async move { e.wait_idle().await });
        }
        let _ =
            tokio::time::timeout(limit, async { while set.join_next().await.is_some() {} }).await;
    }
}

/// Flushes and closes every connection (see [`Connection::shutdown`]), concurrently.
pub(crate) async fn shutdown_all(conns: impl IntoIterator<Item = Connection>) {
    let mut set = tokio::task::JoinSet::new();
    for c in conns {
        set.spawn(async move { c.shutdown().await });
    }
    while set.join_next().await.is_some() {}
}

/// A client endpoint on `bind` with large socket buffers.
fn endpoint(bind: SocketAddr) -> anyhow::Result<Endpoint> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(bind),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: the kernel caps them at net.core.{r,w}mem_max.
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    sock.bind(&bind.into())?;
    let sock: UdpSocket = sock.into();
    Ok(Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        sock,
        Arc::new(quinn::TokioRuntime),
    )?)
}

/// Spaces handshakes `1/rate` apart (no pacing when the rate is 0).
struct Pacer {
    gap: Option<Duration>,
    next: Mutex<Instant>,
}

impl Pacer {
    fn new(rate: f64) -> Pacer {
        Pacer {
            gap: (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate)),
            next: Mutex::new(Instant::now()),
        }
    }

    async fn wait(&self) {
        let Some(gap) = self.gap else { return };
        let at = {
            let mut next = self.next.lock().expect("pacer lock");
            let at = (*next).max(Instant::now());
            *next = at + gap;
            at
        };
        tokio::time::sleep_until(at.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pacer_spaces_handshakes() {
        let p = Pacer::new(100.0);
        let start = Instant::now();
        for _ in 0..5 {
            p.wait().await;
        }
        // 5 slots 10 ms apart: the last one is 40 ms after the first.
        assert!(start.elapsed() >= Duration::from_millis(40));
        let none = Pacer::new(0.0);
        assert!(none.gap.is_none());
    }
}
