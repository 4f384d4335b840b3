//! nats-server processes on loopback with TLS, and the certificate both sides present.

use std::fs;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A CA and a server certificate for `localhost` / 127.0.0.1 signed by it (ECDSA P-256), as
/// PEM files. Hearth and NATS present the same certificate.
pub(crate) struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca_pem: Vec<u8>,
}

/// Writes a fresh CA and server certificate into `dir`.
pub(crate) fn generate_tls(dir: &Path) -> anyhow::Result<TlsFiles> {
    fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "hearth-compare CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()])?;
    leaf.subject_alt_names
        .push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key)?;

    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        ca_pem: ca_cert.pem().into_bytes(),
    };
    fs::write(&files.ca, &files.ca_pem)?;
    fs::write(&files.cert, cert.pem())?;
    fs::write(&files.key, key.serialize_pem())?;
    Ok(files)
}

/// JetStream settings of a server.
pub(crate) struct JetStream {
    pub store_dir: PathBuf,
    /// `sync_interval: always` (fsync on every write; nats-server 2.10 and later).
    pub sync_always: bool,
}

/// A running nats-server, killed on drop.
pub(crate) struct NatsServer {
    child: Child,
    pub url: String,
    pub version: String,
    pub config: String,
}

impl NatsServer {
    /// Starts `bin` on a free loopback port with TLS, logging to `dir/<name>.log`, and waits
    /// until it accepts connections.
    pub(crate) fn start(
        bin: &Path,
        name: &str,
        dir: &Path,
        tls: &TlsFiles,
        js: Option<JetStream>,
    ) -> anyhow::Result<NatsServer> {
        let version = version(bin)?;
        let port = free_port()?;
        let mut config = format!(
            "server_name: {name}\nlisten: \"127.0.0.1:{port}\"\n\
             tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  timeout: 5\n}}\n",
            tls.cert, tls.key,
        );
        if let Some(js) = &js {
            fs::create_dir_all(&js.store_dir)?;
            config += &format!("jetstream {{\n  store_dir: {:?}\n", js.store_dir);
            if js.sync_always {
                config += "  sync_interval: always\n";
            }
            config += "}\n";
        }
        let conf_path = dir.join(format!("{name}.conf"));
        fs::write(&conf_path, &config)?;
        let log_path = dir.join(format!("{name}.log"));
        let check = Command::new(bin)
            .arg("-t")
            .arg("-c")
            .arg(&conf_path)
            .output()?;
        anyhow::ensure!(
            check.status.success(),
            "{} ({version}) rejects {}: {}{}",
            bin.display(),
            conf_path.display(),
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf_path)
            .arg("-l")
            .arg(&log_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut server = NatsServer {
            child,
            url: format!("tls://127.0.0.1:{port}"),
            version,
            config,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = server.child.try_wait()? {
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                anyhow::bail!("{name} exited with {status}:\n{log}");
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(server);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{name} did not listen within 15 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `nats-server --version`, e.g. `v2.9.10`.
pub(crate) fn version(bin: &Path) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.trim().trim_start_matches("nats-server: ").to_string())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
