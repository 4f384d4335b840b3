//! Setting up the target: an embedded node on a temp dir, or a remote node; device tokens.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hearth_protocol::{SigningKey, TokenClaims};

use crate::config::{EmbeddedDurability, RunConfig, Target};
use crate::scenario::Devices;

/// Tokens stay valid this long after the run starts (setup, warm-up, run and settle fit easily).
const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Everything needed to connect the simulated devices.
pub(crate) struct Prepared {
    pub addr: SocketAddr,
    pub ca_pem: Vec<u8>,
    pub server_name: String,
    /// Token of device `i`.
    pub tokens: Vec<String>,
    /// The embedded node and its data dir, kept alive for the run.
    pub embedded: Option<(hearth_router::Node, tempfile::TempDir)>,
}

impl Prepared {
    /// Shut the embedded node down (if any) and remove its data dir.
    pub async fn shutdown(self) {
        if let Some((node, dir)) = self.embedded {
            node.shutdown().await;
            drop(dir);
        }
    }
}

pub(crate) async fn prepare(cfg: &RunConfig, devices: Devices) -> anyhow::Result<Prepared> {
    match &cfg.target {
        Target::Embedded { durability } => {
            let dir = tempfile::tempdir().context("creating a temp data dir")?;
            let node_cfg = hearth_router::Config {
                listen: "127.0.0.1:0".parse().expect("valid address"),
                admin_listen: "127.0.0.1:0".parse().expect("valid address"),
                data_dir: dir.path().to_path_buf(),
                durability: match durability {
                    EmbeddedDurability::Sync => hearth_router::DurabilityMode::Sync,
                    EmbeddedDurability::None => hearth_router::DurabilityMode::None,
                },
                ..hearth_router::Config::default()
            };
            let node = hearth_router::Node::start(node_cfg)
                .await
                .context("starting the embedded node")?;
            let tokens = mint(node.signing_key(), devices);
            Ok(Prepared {
                addr: node.quic_addr(),
                ca_pem: node.ca_pem(),
                server_name: node.server_name().to_string(),
                tokens,
                embedded: Some((node, dir)),
            })
        }
        Target::Remote {
            addr,
            ca_pem,
            server_name,
            key_pkcs8,
        } => {
            let key = SigningKey::from_pkcs8(key_pkcs8)
                .map_err(|e| anyhow::anyhow!("token key (expected PKCS#8 DER): {e}"))?;
            Ok(Prepared {
                addr: *addr,
                ca_pem: ca_pem.clone(),
                server_name: server_name.clone(),
                tokens: mint(&key, devices),
                embedded: None,
            })
        }
    }
}

fn mint(key: &SigningKey, devices: Devices) -> Vec<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    (0..devices.count)
        .map(|i| {
            key.issue(&TokenClaims {
                account: devices.account(i),
                device: Devices::DEVICE_ID,
                expires_at: now + TOKEN_TTL.as_secs(),
            })
        })
        .collect()
}
