//! Mutual TLS under the cluster CA: every node presents a certificate for `n<id>.<cluster>`
//! signed by the CA; the dialer checks the server's name, the acceptor checks the client's
//! chain and then that its certificate names the node id the hello claims.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::LinkError;

/// ALPN of the inter-node link.
pub(crate) const ALPN: &[u8] = b"hearth-link/1";

/// The DNS name a node's certificate carries: `n<id>.<cluster>`.
pub fn node_name(cluster: &str, id: u32) -> String {
    format!("n{id}.{cluster}")
}

pub(crate) struct Material {
    roots: Arc<rustls::RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn bad(what: &str, e: impl std::fmt::Display) -> LinkError {
    LinkError::Tls(format!("{what}: {e}"))
}

impl Material {
    pub(crate) fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Material, LinkError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut &ca[..]) {
            roots
                .add(c.map_err(|e| bad("CA", e))?)
                .map_err(|e| bad("CA", e))?;
        }
        if roots.is_empty() {
            return Err(LinkError::Tls("no CA certificate".into()));
        }
        let chain = rustls_pemfile::certs(&mut &cert[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("node certificate", e))?;
        if chain.is_empty() {
            return Err(LinkError::Tls("no node certificate".into()));
        }
        let key = rustls_pemfile::private_key(&mut &key[..])
            .map_err(|e| bad("node key", e))?
            .ok_or_else(|| LinkError::Tls("no node key".into()))?;
        Ok(Material {
            roots: Arc::new(roots),
            chain,
            key,
        })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    use rustls::crypto::ring::cipher_suite as cs;
    p.cipher_suites = vec![cs::TLS13_AES_128_GCM_SHA256, cs::TLS13_AES_256_GCM_SHA384];
    Arc::new(p)
}

fn transport(streams: u16) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams((u32::from(streams) + 4).into())
        .stream_receive_window((1024u32 * 1024).into())
        .receive_window((8u32 * 1024 * 1024).into())
        .send_window(8 * 1024 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(1)))
        .max_idle_timeout(Some(
            Duration::from_secs(5).try_into().expect("a small timeout"),
        ));
    Arc::new(t)
}

pub(crate) fn server_config(m: &Material, streams: u16) -> Result<quinn::ServerConfig, LinkError> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(m.roots.clone(), provider())
            .build()
            .map_err(|e| bad("client verifier", e))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad("tls", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(m.chain.clone(), m.key.clone_key())
        .map_err(|e| bad("node certificate", e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| bad("quic", e))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    sc.transport_config(transport(streams));
    Ok(sc)
}

pub(crate) fn client_config(m: &Material, streams: u16) -> Result<quinn::ClientConfig, LinkError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad("tls", e))?
        .with_root_certificates(m.roots.clone())
        .with_client_auth_cert(m.chain.clone(), m.key.clone_key())
        .map_err(|e| bad("node certificate", e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| bad("quic", e))?;
    let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
    cc.transport_config(transport(streams));
    Ok(cc)
}

/// Whether the (already CA-verified) peer certificate of `conn` names node `id`.
pub(crate) fn peer_is(conn: &quinn::Connection, cluster: &str, id: u32) -> bool {
    let Some(identity) = conn.peer_identity() else {
        return false;
    };
    let Ok(chain) = identity.downcast::<Vec<CertificateDer<'static>>>() else {
        return false;
    };
    let Some(leaf) = chain.first() else {
        return false;
    };
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(leaf) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(node_name(cluster, id)) else {
        return false;
    };
    rustls::client::verify_server_name(&parsed, &name).is_ok()
}

/// Check that `cert_pem` (a node certificate chain) is signed by the CA in `ca_pem` and
/// names node `id` of `cluster`: what a peer's link will check. For `hearthctl`.
pub fn verify_node_cert(
    ca_pem: &[u8],
    cert_pem: &[u8],
    cluster: &str,
    id: u32,
) -> Result<(), LinkError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots
            .add(c.map_err(|e| bad("CA", e))?)
            .map_err(|e| bad("CA", e))?;
    }
    let chain = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("node certificate", e))?;
    let (leaf, rest) = chain
        .split_first()
        .ok_or_else(|| LinkError::Tls("no node certificate".into()))?;
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| bad("verifier", e))?;
    let name = ServerName::try_from(node_name(cluster, id)).map_err(|e| bad("node name", e))?;
    verifier
        .verify_server_cert(leaf, rest, &name, &[], rustls::pki_types::UnixTime::now())
        .map_err(|e| bad("node certificate", e))?;
    Ok(())
}
