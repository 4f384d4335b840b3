//! Connection settings, the TLS/QUIC client configuration and endpoints.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Endpoint, IdleTimeout, TransportConfig, VarInt};
use rustls::crypto::ring;

use crate::ClientError;

/// QUIC keep-alive interval: well under the idle timeout, so NATs and the node keep the path.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// QUIC idle timeout: a connection with no traffic (not even keep-alives) for this long is dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-stream receive window (bounded so that many connections cannot exhaust memory).
pub const STREAM_RECEIVE_WINDOW: u32 = 256 * 1024;
/// Connection receive window and send window.
pub const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// TLS 1.3 session tickets a [`quic_client_config`] keeps per node name: a reconnect presents
/// one (resumption: no certificate exchange, no signature) and the node sends fresh ones.
pub const SESSION_TICKETS: usize = 8;

/// Where and how to connect, as which device.
#[derive(Clone)]
pub struct ClientConfig {
    /// The node's QUIC (UDP) address.
    pub addr: SocketAddr,
    /// Name the node's certificate must carry (e.g. `localhost`).
    pub server_name: String,
    /// PEM with the CA certificate(s) (or the node's self-signed certificate) to trust.
    pub ca_pem: Vec<u8>,
    /// Device token text (`ht1.`...).
    pub token: String,
    /// Local address to bind the connection's own UDP socket to; `None` = any address, port 0.
    /// Ignored by [`Connection::connect_with`](crate::Connection::connect_with), which uses the
    /// given endpoint.
    pub local_addr: Option<SocketAddr>,
}

impl ClientConfig {
    /// A configuration with no `local_addr`.
    pub fn new(
        addr: SocketAddr,
        server_name: impl Into<String>,
        ca_pem: impl Into<Vec<u8>>,
        token: impl Into<String>,
    ) -> ClientConfig {
        ClientConfig {
            addr,
            server_name: server_name.into(),
            ca_pem: ca_pem.into(),
            token: token.into(),
            local_addr: None,
        }
    }

    /// The address a per-connection endpoint binds to: `local_addr`, or the unspecified
    /// address of the node address's family with port 0.
    pub fn bind_addr(&self) -> SocketAddr {
        self.local_addr.unwrap_or(match self.addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        })
    }
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a credential: never print it.
        f.debug_struct("ClientConfig")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// [`rustls_config_with_tickets`] with [`SESSION_TICKETS`].
#[cfg(test)]
pub(crate) fn rustls_config(ca_pem: &[u8]) -> Result<rustls::ClientConfig, ClientError> {
    rustls_config_with_tickets(ca_pem, SESSION_TICKETS)
}

/// The rustls configuration: ring provider, TLS 1.3 only, AES-GCM suites first, ALPN
/// `hearth/1`, trusting exactly the certificates in `ca_pem`, resuming sessions with up to
/// `tickets` tickets per node (0: never). Never 0-RTT (the node refuses it).
fn rustls_config_with_tickets(
    ca_pem: &[u8],
    tickets: usize,
) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        let cert = cert.map_err(|e| ClientError::Tls(format!("reading CA PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ClientError::Tls(format!("CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ClientError::Tls(
            "no certificate found in the CA PEM".into(),
        ));
    }
    let mut provider = ring::default_provider();
    // AES-GCM is about 3x cheaper than ChaCha20 here; QUIC needs AES-128-GCM-SHA256 anyway.
    provider.cipher_suites = vec![
        ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![hearth_protocol::ALPN.to_vec()];
    tls.resumption = if tickets == 0 {
        rustls::client::Resumption::disabled()
    } else {
        rustls::client::Resumption::store(Arc::new(TicketStore::new(tickets)))
    };
    tls.enable_early_data = false;
    Ok(tls)
}

/// Session tickets in memory, up to `per_server` per node name (rustls' own cache keeps 8,
/// too few for a configuration shared by thousands of connections, as in a load generator).
#[derive(Debug)]
struct TicketStore {
    per_server: usize,
    servers: std::sync::Mutex<
        std::collections::HashMap<rustls::pki_types::ServerName<'static>, ServerTickets>,
    >,
}

#[derive(Debug, Default)]
struct ServerTickets {
    kx_hint: Option<rustls::NamedGroup>,
    tls13: std::collections::VecDeque<rustls::client::Tls13ClientSessionValue>,
}

/// Node names remembered; the store is cleared when more turn up (a client talks to a few).
const TICKET_SERVERS: usize = 64;

impl TicketStore {
    fn new(per_server: usize) -> TicketStore {
        TicketStore {
            per_server,
            servers: Default::default(),
        }
    }

    fn with<R>(
        &self,
        server: &rustls::pki_types::ServerName<'_>,
        f: impl FnOnce(&mut ServerTickets) -> R,
    ) -> R {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        if !servers.contains_key(server) && servers.len() >= TICKET_SERVERS {
            servers.clear();
        }
        f(servers.entry(server.to_owned()).or_default())
    }
}

impl rustls::client::ClientSessionStore for TicketStore {
    fn set_kx_hint(
        &self,
        server: rustls::pki_types::ServerName<'static>,
        group: rustls::NamedGroup,
    ) {
        self.with(&server, |s| s.kx_hint = Some(group));
    }

    fn kx_hint(&self, server: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.with(server, |s| s.kx_hint)
    }

    // TLS 1.2 is never negotiated (TLS 1.3 only): nothing to keep.
    fn set_tls12_session(
        &self,
        _: rustls::pki_types::ServerName<'static>,
        _: rustls::client::Tls12ClientSessionValue,
    ) {
    }

    fn tls12_session(
        &self,
        _: &rustls::pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        None
    }

    fn remove_tls12_session(&self, _: &rustls::pki_types::ServerName<'static>) {}

    fn insert_tls13_ticket(
        &self,
        server: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        let cap = self.per_server;
        self.with(&server, |s| {
            if s.tls13.len() >= cap {
                s.tls13.pop_front();
            }
            s.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(
        &self,
        server: &rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.with(server, |s| s.tls13.pop_back())
    }
}

/// Transport settings for client connections (see the constants of this module).
pub(crate) fn transport_config() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(
            IDLE_TIMEOUT.as_millis() as u32,
        ))))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(CONNECTION_WINDOW as u64)
        // The node opens no streams and sends no datagrams: keep no state for them.
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None);
    t
}

/// The quinn client configuration for `cfg` (TLS from `cfg.ca_pem`, transport settings).
///
/// Build it once and pass it to [`Connection::connect_with_config`](crate::Connection::connect_with_config)
/// for many connections: besides saving the PEM parsing, its TLS session cache then allows
/// session resumption on reconnects.
pub fn quic_client_config(cfg: &ClientConfig) -> Result<quinn::ClientConfig, ClientError> {
    quic_client_config_with_tickets(cfg, SESSION_TICKETS)
}

/// Like [`quic_client_config`], keeping up to `tickets` session tickets for the node (0: no
/// resumption, every handshake is a full one). A configuration shared by many connections to
/// one node (a load generator) needs about one per connection to resume them all.
pub fn quic_client_config_with_tickets(
    cfg: &ClientConfig,
    tickets: usize,
) -> Result<quinn::ClientConfig, ClientError> {
    let tls = rustls_config_with_tickets(&cfg.ca_pem, tickets)?;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// A client-only QUIC endpoint (one UDP socket and its driver task) bound to `bind`, which
/// many connections may share. Must be called inside a tokio runtime.
pub fn client_endpoint(bind: SocketAddr) -> Result<Endpoint, ClientError> {
    Ok(Endpoint::client(bind)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed() -> String {
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .unwrap()
            .cert
            .pem()
    }

    #[test]
    fn tls_config_from_a_self_signed_pem() {
        let tls = rustls_config(self_signed().as_bytes()).unwrap();
        assert_eq!(tls.alpn_protocols, vec![b"hearth/1".to_vec()]);
        let suites = &tls.crypto_provider().cipher_suites;
        assert_eq!(
            suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        let cfg = ClientConfig::new(
            "127.0.0.1:4433".parse().unwrap(),
            "localhost",
            self_signed(),
            "ht1.x",
        );
        quic_client_config(&cfg).unwrap();
    }

    #[test]
    fn several_certificates_are_all_trusted() {
        let pem = format!("{}{}", self_signed(), self_signed());
        rustls_config(pem.as_bytes()).unwrap();
    }

    #[test]
    fn pem_without_certificate_is_a_tls_error() {
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        for pem in [&b""[..], b"not a pem at all", key.as_bytes()] {
            match rustls_config(pem) {
                Err(ClientError::Tls(msg)) => assert!(msg.contains("no certificate"), "{msg}"),
                other => panic!("expected a TLS error, got {:?}", other.map(|_| ())),
            }
        }
    }

    #[test]
    fn corrupt_certificate_is_a_tls_error() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            rustls_config(pem.as_bytes()),
            Err(ClientError::Tls(_))
        ));
    }

    #[test]
    fn debug_hides_the_token() {
        let cfg = ClientConfig::new(
            "127.0.0.1:1".parse().unwrap(),
            "localhost",
            "",
            "ht1.SECRET",
        );
        assert!(!format!("{cfg:?}").contains("SECRET"));
    }

    #[test]
    fn bind_addr_follows_the_node_family() {
        let mut cfg = ClientConfig::new("[::1]:1".parse().unwrap(), "localhost", "", "t");
        assert_eq!(cfg.bind_addr(), "[::]:0".parse().unwrap());
        cfg.addr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(cfg.bind_addr(), "0.0.0.0:0".parse().unwrap());
        cfg.local_addr = Some("127.0.0.7:0".parse().unwrap());
        assert_eq!(cfg.bind_addr(), "127.0.0.7:0".parse().unwrap());
    }
}
