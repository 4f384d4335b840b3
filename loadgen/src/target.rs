//! Setting up the target: an embedded node on a temp dir (on runtime threads of its own, so the
//! self-check can tell its CPU from the generator's), or a remote node; device tokens; the
//! node's `/v1/status`.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hearth_protocol::{SigningKey, TokenClaims};
use serde::{Deserialize, Serialize};

use crate::config::{EmbeddedDurability, Target};
use crate::plan::DEVICE_ID;

/// Tokens stay valid this long (setup, warm-up, run and settle fit easily).
const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Name prefix of the embedded node's runtime threads.
pub(crate) const NODE_THREAD: &str = "hearth-node";

/// Everything needed to connect simulated devices.
pub(crate) struct Prepared {
    pub addr: SocketAddr,
    pub ca_pem: Vec<u8>,
    pub server_name: String,
    pub key: SigningKey,
    /// The node's admin HTTP address, if known.
    pub admin: Option<SocketAddr>,
    embedded: Option<Embedded>,
}

struct Embedded {
    rt: tokio::runtime::Runtime,
    node: hearth_router::Node,
    _dir: tempfile::TempDir,
}

impl Prepared {
    /// Whether the node runs in this process.
    pub(crate) fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// The target as a remote one (for agents of a coordinator that started an embedded node).
    pub(crate) fn as_remote(&self) -> Target {
        Target::Remote {
            addr: self.addr,
            ca_pem: self.ca_pem.clone(),
            server_name: self.server_name.clone(),
            key_pkcs8: self.key.to_pkcs8().to_vec(),
            admin: self.admin,
        }
    }

    /// Shuts the embedded node down (if any) and removes its data dir.
    pub(crate) async fn shutdown(self) {
        if let Some(e) = self.embedded {
            let Embedded { rt, node, _dir } = e;
            let _ = rt.spawn(node.shutdown()).await;
            let _ = tokio::task::spawn_blocking(move || {
                rt.shutdown_timeout(Duration::from_secs(5));
                drop(_dir);
            })
            .await;
        }
    }
}

/// A device token for `account` (device 1), valid for a day.
pub(crate) fn issue_token(key: &SigningKey, account: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    key.issue(&TokenClaims {
        account,
        device: DEVICE_ID,
        expires_at: now + TOKEN_TTL.as_secs(),
    })
}

pub(crate) async fn prepare(target: &Target) -> anyhow::Result<Prepared> {
    match target {
        Target::Embedded {
            durability,
            node_config,
        } => {
            let dir = tempfile::tempdir().context("creating a temp data dir")?;
            let base = embedded_config(node_config.as_deref())?;
            let node_cfg = hearth_router::Config {
                listen: "127.0.0.1:0".parse().expect("valid address"),
                admin_listen: "127.0.0.1:0".parse().expect("valid address"),
                data_dir: dir.path().to_path_buf(),
                durability: match durability {
                    EmbeddedDurability::Sync => hearth_router::DurabilityMode::Sync,
                    EmbeddedDurability::None => hearth_router::DurabilityMode::None,
                },
                ..base
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name(NODE_THREAD)
                .enable_all()
                .build()
                .context("starting the embedded node's runtime")?;
            let node = rt
                .spawn(hearth_router::Node::start(node_cfg))
                .await
                .context("embedded node start task")?
                .context("starting the embedded node")?;
            let key = SigningKey::from_pkcs8(node.signing_key().to_pkcs8())
                .map_err(|e| anyhow::anyhow!("the node's token key: {e}"))?;
            Ok(Prepared {
                addr: node.quic_addr(),
                ca_pem: node.ca_pem(),
                server_name: node.server_name().to_string(),
                key,
                admin: Some(node.admin_addr()),
                embedded: Some(Embedded {
                    rt,
                    node,
                    _dir: dir,
                }),
            })
        }
        Target::Remote {
            addr,
            ca_pem,
            server_name,
            key_pkcs8,
            admin,
        } => {
            let key = SigningKey::from_pkcs8(key_pkcs8)
                .map_err(|e| anyhow::anyhow!("token key (expected PKCS#8 DER): {e}"))?;
            Ok(Prepared {
                addr: *addr,
                ca_pem: ca_pem.clone(),
                server_name: server_name.clone(),
                key,
                admin: *admin,
                embedded: None,
            })
        }
    }
}

/// The embedded node's configuration: the defaults with every rate limit off (a load test
/// sends far more than one device would; `rate 0` turns a limit off), then the user's
/// `--node-config` TOML on top.
pub(crate) fn embedded_config(user: Option<&str>) -> anyhow::Result<hearth_router::Config> {
    let mut v = toml::Value::try_from(hearth_router::Config::default())
        .context("serializing the default node configuration")?;
    if let Some(t) = v.get_mut("safety").and_then(|s| s.as_table_mut()) {
        for (k, val) in t.iter_mut() {
            if k.contains("per_sec") {
                *val = toml::Value::Integer(0);
            }
        }
    }
    if let Some(text) = user {
        let over: toml::Value = toml::from_str(text).context("--node-config is not TOML")?;
        merge(&mut v, over);
    }
    let cfg: hearth_router::Config = v.try_into().context("--node-config")?;
    cfg.validate().context("--node-config")?;
    Ok(cfg)
}

/// Deep-merges `over` into `base` (tables key by key, anything else replaced).
fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// What the load generator reads from the node's `/v1/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Open device connections.
    pub connections: u64,
    /// Resident set size of the node process, bytes.
    pub rss_bytes: u64,
    /// Handshakes resumed from a TLS session ticket, since the node started.
    #[serde(default)]
    pub tls_resumed: u64,
    /// Handshakes sent a QUIC Retry, since the node started.
    #[serde(default)]
    pub quic_retries: u64,
}

/// `GET /v1/status` of the node's admin server.
pub(crate) async fn node_status(admin: SocketAddr) -> anyhow::Result<NodeStatus> {
    tokio::task::spawn_blocking(move || {
        let v: serde_json::Value = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(5))
            .build()
            .get(&format!("http://{admin}/v1/status"))
            .call()
            .with_context(|| format!("GET http://{admin}/v1/status"))?
            .into_json()
            .context("reading /v1/status")?;
        Ok(NodeStatus {
            connections: v["connections"].as_u64().unwrap_or(0),
            rss_bytes: v["rss_bytes"].as_u64().unwrap_or(0),
            tls_resumed: v["quic"]["tls_resumed"].as_u64().unwrap_or(0),
            quic_retries: v["quic"]["retries"].as_u64().unwrap_or(0),
        })
    })
    .await
    .context("status task")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_node_has_rate_limits_off_and_takes_overrides() {
        let c = embedded_config(None).unwrap();
        let v = toml::Value::try_from(&c).unwrap();
        if let Some(t) = v.get("safety").and_then(|s| s.as_table()) {
            for (k, val) in t {
                if k.contains("per_sec") {
                    assert_eq!(val.as_integer(), Some(0), "{k}");
                }
            }
        }
        let c = embedded_config(Some("[limits]\nmax_queue_len = 123\n")).unwrap();
        assert_eq!(c.limits.max_queue_len, 123);
        assert_eq!(
            c.limits.max_group_size,
            hearth_router::Limits::default().max_group_size
        );
        assert!(embedded_config(Some("[limits]\nbogus = 1\n")).is_err());
    }
}
