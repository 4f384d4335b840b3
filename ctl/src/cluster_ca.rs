//! `hearthctl cluster ca`: the cluster CA and node certificates of the inter-node link
//! (rcgen). Offline; keys are written mode 0600 and never overwritten.
//!
//! - `init --dir D --cluster NAME`: `D/ca.pem` (certificate, give it to every node) and
//!   `D/ca.key` (keep it off the nodes).
//! - `node --dir D --cluster NAME --id N`: `D/n<N>.pem` and `D/n<N>.key`, a certificate for
//!   the DNS name `n<N>.<NAME>` usable as TLS server and client, signed by the CA. The
//!   issued chain is checked against `ca.pem` the way a peer's link checks it.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// `hearthctl cluster ...`
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The cluster CA and the node certificates of the inter-node link.
    #[command(subcommand)]
    Ca(CaCommand),
}

/// `hearthctl cluster ca ...`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the cluster CA: DIR/ca.pem and DIR/ca.key (0600).
    Init(CaInitArgs),
    /// Issue a node certificate: DIR/n<ID>.pem and DIR/n<ID>.key (0600).
    Node(CaNodeArgs),
}

/// Arguments of `hearthctl cluster ca init`.
#[derive(Debug, Clone, Args)]
pub struct CaInitArgs {
    /// Directory for the CA files (created if missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// Cluster name (the `[cluster] name` of the nodes).
    #[arg(long)]
    pub cluster: String,
    /// Validity in days.
    #[arg(long, default_value_t = 3650)]
    pub days: u32,
}

/// Arguments of `hearthctl cluster ca node`.
#[derive(Debug, Clone, Args)]
pub struct CaNodeArgs {
    /// Directory holding ca.pem and ca.key; the node files are written there too.
    #[arg(long)]
    pub dir: PathBuf,
    /// Cluster name (must be the one the CA was created for).
    #[arg(long)]
    pub cluster: String,
    /// Node id (the node's `[cluster] node_id`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub id: u32,
    /// Validity in days.
    #[arg(long, default_value_t = 825)]
    pub days: u32,
}

/// Run a `hearthctl cluster` command.
pub fn run_cluster(cmd: &ClusterCommand, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Ca(CaCommand::Init(a)) => ca_init(&a.dir, &a.cluster, a.days, json, out),
        ClusterCommand::Ca(CaCommand::Node(a)) => {
            ca_node(&a.dir, &a.cluster, a.id, a.days, json, out)
        }
    }
}

fn ca_params(cluster: &str, days: u32) -> anyhow::Result<CertificateParams> {
    check_cluster(cluster)?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("hearth cluster CA {cluster}"));
    dn.push(DnType::OrganizationName, "hearth");
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut p, days);
    Ok(p)
}

fn validity(p: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(i64::from(days.max(1)));
}

fn check_cluster(cluster: &str) -> anyhow::Result<()> {
    if cluster.is_empty()
        || !cluster
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        bail!("--cluster must be lowercase letters, digits and '-' (the nodes' [cluster] name)");
    }
    Ok(())
}

/// Create the cluster CA in `dir`.
pub fn ca_init(
    dir: &Path,
    cluster: &str,
    days: u32,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let params = ca_params(cluster, days)?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    if let Err(e) = write_new(&cert_path, cert.pem().as_bytes(), 0o644) {
        let _ = std::fs::remove_file(&key_path);
        return Err(e);
    }
    report(json, out, "CA", &cert_path, &key_path)
}

/// Issue node `id`'s link certificate from the CA in `dir`.
pub fn ca_node(
    dir: &Path,
    cluster: &str,
    id: u32,
    days: u32,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if id == 0 {
        bail!("--id must be 1 or more");
    }
    let ca_pem = std::fs::read(dir.join("ca.pem")).with_context(|| {
        format!(
            "reading {}/ca.pem (run `hearthctl cluster ca init`)",
            dir.display()
        )
    })?;
    let ca_key_pem = std::fs::read_to_string(dir.join("ca.key"))
        .with_context(|| format!("reading {}/ca.key", dir.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).context("ca.key is not a private key")?;
    // The issuer: the CA's name and key (the signature is checked against ca.pem below).
    let issuer = ca_params(cluster, 1)?.self_signed(&ca_key)?;
    let name = hearth_link::node_name(cluster, id);
    let mut p = CertificateParams::new(vec![name.clone()])?;
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name.clone());
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut p, days);
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer, &ca_key)?;
    let pem = cert.pem();
    hearth_link::verify_node_cert(&ca_pem, pem.as_bytes(), cluster, id).map_err(|e| {
        anyhow::anyhow!(
            "the issued certificate does not verify against {}/ca.pem ({e}); was the CA \
             created for another --cluster?",
            dir.display()
        )
    })?;
    let (cert_path, key_path) = (
        dir.join(format!("n{id}.pem")),
        dir.join(format!("n{id}.key")),
    );
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    if let Err(e) = write_new(&cert_path, pem.as_bytes(), 0o644) {
        let _ = std::fs::remove_file(&key_path);
        return Err(e);
    }
    report(json, out, &name, &cert_path, &key_path)
}

fn report(
    json: bool,
    out: &mut dyn Write,
    what: &str,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<()> {
    if json {
        let v = serde_json::json!({ "name": what, "cert": cert, "key": key });
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{what}: wrote {} and {} (mode 0600)",
            cert.display(),
            key.display()
        )?;
    }
    Ok(())
}

/// Create `path` with `mode`, refusing to overwrite.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(path).map_err(|e| match e.kind() {
        ErrorKind::AlreadyExists => {
            anyhow::anyhow!(
                "{} already exists; refusing to overwrite it",
                path.display()
            )
        }
        _ => anyhow::anyhow!("cannot create {}: {e}", path.display()),
    })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
