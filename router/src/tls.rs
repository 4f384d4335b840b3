//! TLS material: the operator's certificate, or a generated development certificate.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::Config;

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
    let cert_pem = std::fs::read(&cert_path)
        .with_context(|| format!("reading TLS certificate {}", cert_path.display()))?;
    let key_pem = std::fs::read(&key_path)
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

/// The node's QUIC idle timeout (announced in `WELCOME`).
pub(crate) const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The QUIC server configuration: TLS 1.3 only, ALPN `hearth/1`, bounded windows.
pub(crate) fn server_config(m: &TlsMaterial) -> anyhow::Result<quinn::ServerConfig> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(m.certs.clone(), m.key.clone_key())?;
    tls.alpn_protocols = vec![hearth_protocol::ALPN.to_vec()];
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
    Ok(sc)
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
