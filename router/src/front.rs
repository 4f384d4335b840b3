//! The QUIC front: endpoints sharing one port, the accept loop and the connection limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hearth_protocol::ErrorCode;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::Shared;

const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// Bind `count` endpoints on `addr` with `SO_REUSEPORT` (the first resolves port 0).
pub(crate) fn bind(
    addr: SocketAddr,
    count: usize,
    server_config: quinn::ServerConfig,
) -> anyhow::Result<Vec<quinn::Endpoint>> {
    let mut endpoints = Vec::with_capacity(count);
    let mut bind_to = addr;
    for _ in 0..count {
        let socket = udp_socket(bind_to, count > 1)?;
        let ep = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
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
            _ = shutdown.changed() => return,
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
