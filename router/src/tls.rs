//! TLS material: the operator's certificate, or a generated development certificate; the QUIC
//! server configuration (session tickets, no 0-RTT); the node's secrets kept in the data dir.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::Config;

/// How long a connection may stay silent before the node drops it (told to clients in WELCOME).
pub(crate) const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The certificate chain and key the QUIC front presents.
pub(crate) struct TlsMaterial {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// PEM of the certificate clients should trust (the chain's root or the self-signed cert).
    pub ca_pem: Vec<u8>,
}

/// Load `tls_cert`/`tls_key`, or create (once) a self-signed development certificate in the data dir.
pub(crate) fn load(cfg: &Config) -> anyhow::Result<TlsMaterial> {
    let (cert_path, key_path) = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let c = cfg.data_dir.join("dev-cert.pem");
            let k = cfg.data_dir.join("dev-key.pem");
            if !c.exists() || !k.exists() {
                let mut names = vec![cfg.server_name.clone(), "localhost".to_string()];
                names.push("127.0.0.1".into());
                names.dedup();
                let ck = rcgen::generate_simple_self_signed(names)
                    .context("generating the development certificate")?;
                write_private(&k, ck.key_pair.serialize_pem().as_bytes())?;
                std::fs::write(&c, ck.cert.pem())?;
            }
            tracing::warn!(
                cert = %c.display(),
                "USING A SELF-SIGNED DEVELOPMENT CERTIFICATE: clients must trust this file; \
                 set tls_cert and tls_key for any real deployment"
            );
            (c, k)
        }
    };
    let (certs, key) = read_pair(&cert_path, &key_path)?;
    // Clients trust the last certificate of the chain (the root, or the self-signed cert).
    let last = certs.last().expect("non-empty");
    let ca_pem = pem_of(last);
    Ok(TlsMaterial { certs, key, ca_pem })
}

fn pem_of(cert: &CertificateDer<'_>) -> Vec<u8> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out.into_bytes()
}

/// rustls crypto provider: ring, AES-GCM suites first (ChaCha20 is 3x slower here).
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    use rustls::crypto::ring::cipher_suite as cs;
    p.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

/// The QUIC server configuration: TLS 1.3 only, ALPN `hearth/1`, bounded windows, stateless
/// session tickets (a reconnect resumes and skips the certificate signature; `resumed` counts
/// the tickets accepted), no 0-RTT (see PROTOCOL.md §1), bounded handshake queue.
pub(crate) fn server_config(
    m: &TlsMaterial,
    limits: &crate::Limits,
    resumed: Arc<AtomicU64>,
) -> anyhow::Result<quinn::ServerConfig> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(m.certs.clone(), m.key.clone_key())?;
    tls.alpn_protocols = vec![hearth_protocol::ALPN.to_vec()];
    // Stateless tickets (keys rotate every 6 h, in memory): no per-session state on the node.
    tls.ticketer = Arc::new(CountingTicketer {
        inner: rustls::crypto::ring::Ticketer::new()?,
        resumed,
    });
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    // 0-RTT data can be replayed: a replayed SEND would be stored twice. QUIC allows only
    // "none" (0) or "unlimited", so it is off.
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((256u32 * 1024).into())
        .receive_window((512u32 * 1024).into())
        .send_window(1024 * 1024)
        .max_idle_timeout(Some(IDLE_TIMEOUT.try_into()?));
    sc.transport_config(Arc::new(t));
    sc.max_incoming(limits.max_incoming)
        .incoming_buffer_size(limits.incoming_buffer_bytes.min(64 * 1024))
        .incoming_buffer_size_total(limits.incoming_buffer_bytes);
    Ok(sc)
}

/// rustls' ticketer, counting the tickets it could decrypt (resumed handshakes).
#[derive(Debug)]
struct CountingTicketer {
    inner: Arc<dyn rustls::server::ProducesTickets>,
    resumed: Arc<AtomicU64>,
}

impl rustls::server::ProducesTickets for CountingTicketer {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.inner.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let plain = self.inner.decrypt(cipher);
        if plain.is_some() {
            crate::metrics::Metrics::inc(&self.resumed);
        }
        plain
    }
}

/// Admin HTTPS: the operator's certificate and key for the admin port.
pub(crate) fn admin_acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let (certs, key) = read_pair(cert, key)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| format!("admin TLS certificate {}", cert.display()))?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
}

/// Read a PEM certificate chain and private key.
fn read_pair(
    cert_path: &Path,
    key_path: &Path,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let cert_pem = std::fs::read(cert_path)
        .with_context(|| format!("reading TLS certificate {}", cert_path.display()))?;
    let key_pem = std::fs::read(key_path)
        .with_context(|| format!("reading TLS key {}", key_path.display()))?;
    let certs = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert_path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "no certificate in {}",
        cert_path.display()
    );
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .with_context(|| format!("parsing {}", key_path.display()))?
        .with_context(|| format!("no private key in {}", key_path.display()))?;
    Ok((certs, key))
}

/// Load a secret of `len` random bytes from `path`, creating it (mode 0600) when missing.
pub(crate) fn load_or_create_secret(path: &Path, len: usize) -> anyhow::Result<Vec<u8>> {
    if path.exists() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        anyhow::ensure!(
            bytes.len() == len,
            "{} must hold {len} bytes (it holds {}); delete it to make a new one",
            path.display(),
            bytes.len()
        );
        return Ok(bytes);
    }
    let bytes = random_bytes(len)?;
    write_private(path, &bytes)?;
    tracing::info!(path = %path.display(), "created a new secret");
    Ok(bytes)
}

/// Load the admin API token (the file's text, trimmed), creating a random one (mode 0600) when
/// the file is missing.
pub(crate) fn load_or_create_admin_token(path: &Path) -> anyhow::Result<String> {
    if !path.exists() {
        use base64::Engine;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(32)?);
        write_private(path, format!("{token}\n").as_bytes())?;
        tracing::info!(path = %path.display(), "created the admin API token");
        return Ok(token);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let token = text.trim();
    anyhow::ensure!(
        token.len() >= 16 && token.bytes().all(|b| b.is_ascii_graphic()),
        "admin token in {} must be at least 16 printable characters without spaces",
        path.display()
    );
    Ok(token.to_owned())
}

fn random_bytes(len: usize) -> anyhow::Result<Vec<u8>> {
    use ring::rand::SecureRandom;
    let mut bytes = vec![0u8; len];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    Ok(bytes)
}

/// Load the token signing key, creating it (mode 0600) when missing.
pub(crate) fn load_or_create_token_key(path: &Path) -> anyhow::Result<hearth_protocol::SigningKey> {
    if path.exists() {
        let der = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        return hearth_protocol::SigningKey::from_pkcs8(&der)
            .map_err(|e| anyhow::anyhow!("token key {}: {e}", path.display()));
    }
    let key = hearth_protocol::SigningKey::generate();
    write_private(path, key.to_pkcs8())?;
    tracing::info!(path = %path.display(), "created a new token signing key");
    Ok(key)
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node writes its token key as PKCS#8 v1 (RFC 5208), which OpenSSL 3 reads; a v2 file
    /// (RFC 5958, as earlier versions wrote it) still loads, and is left as it is.
    #[test]
    fn token_key_files_are_pkcs8_v1_and_v2_files_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        let key = load_or_create_token_key(&path).unwrap();
        let der = std::fs::read(&path).unwrap();
        assert_eq!(der.len(), 48, "PKCS#8 v1: 16-byte prefix and the seed");
        assert_eq!(der[..16], hex("302e020100300506032b657004220420")[..]);
        match std::process::Command::new("openssl")
            .args(["pkey", "-inform", "DER", "-noout", "-in"])
            .arg(&path)
            .output()
        {
            Err(e) => eprintln!("skipping the openssl check: openssl is not installed ({e})"),
            Ok(o) => assert!(
                o.status.success(),
                "openssl pkey refused the node's key: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
        }
        let again = load_or_create_token_key(&path).unwrap();
        assert_eq!(again.verifying_key(), key.verifying_key());

        // RFC 8032 7.1 TEST 1 as a v2 document.
        let v2 = hex(concat!(
            "3053020101300506032b657004220420",
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "a123032100",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        ));
        let v2_path = dir.path().join("v2.key");
        std::fs::write(&v2_path, &v2).unwrap();
        let key = load_or_create_token_key(&v2_path).unwrap();
        assert_eq!(
            key.verifying_key().0[..],
            hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")[..]
        );
        assert_eq!(
            std::fs::read(&v2_path).unwrap(),
            v2,
            "an existing file is not rewritten"
        );
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
