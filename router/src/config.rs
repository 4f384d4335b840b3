//! Node configuration: a TOML file, overridable by flags; the default is the embedded single node.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything a node needs to run. `Config::default()` is the embedded single node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// UDP address of the QUIC front.
    pub listen: SocketAddr,
    /// TCP address of the admin HTTP server (`/metrics`, `/healthz`, `/readyz`, `/v1/...`).
    pub admin_listen: SocketAddr,
    /// File holding the admin API's bearer token; default `data_dir/admin.token`, created
    /// (mode 0600, random) when missing.
    pub admin_token_file: Option<PathBuf>,
    /// `/healthz`, `/readyz`, `/metrics` and `/v1/status` answer without the token (they name
    /// no account, device or group); `false` requires it there too.
    pub admin_open_metrics: bool,
    /// PEM certificate chain for HTTPS on the admin port; absent: plain HTTP.
    pub admin_tls_cert: Option<PathBuf>,
    /// PEM private key matching `admin_tls_cert`.
    pub admin_tls_key: Option<PathBuf>,
    /// Where RocksDB, the token key and the development certificate live.
    pub data_dir: PathBuf,
    /// PEM certificate chain; when absent a self-signed development certificate is generated.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key matching `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Ed25519 token key (PKCS#8 DER: written as v1, read as v1 or v2); default
    /// `data_dir/token.key`, created when missing.
    pub token_key: Option<PathBuf>,
    /// Name in the development certificate (clients verify it).
    pub server_name: String,
    /// `sync` (fsync before ACCEPTED, the default) or `none` (benchmarks only: unsafe).
    pub durability: DurabilityMode,
    /// QUIC endpoints sharing the port with `SO_REUSEPORT` (each has its own receive task).
    pub quic_endpoints: usize,
    /// How often expired envelopes are swept from disk, in milliseconds.
    pub sweep_interval_ms: u64,
    /// This node's region, matched against `residency.zones`.
    pub region: String,
    /// Limits.
    pub limits: Limits,
    /// Networks (apps) sharing the backbone.
    pub privacy: Privacy,
    /// Which regions may hold each zone's data.
    pub residency: Residency,
    /// Rate limits and abuse thresholds.
    pub safety: crate::safety::SafetyConfig,
    /// Push wake-ups through the operator's webhook.
    pub push: crate::push::PushConfig,
    /// Cluster membership on etcd and the inter-node links. Absent: a single node that owns
    /// every slot and talks to no etcd (the embedded default).
    pub cluster: Option<hearth_cluster::ClusterConfig>,
}

/// Networks (apps) that share this backbone.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Privacy {
    /// Known network names; tokens naming another network are refused.
    pub networks: Vec<String>,
    /// The network of v1 tokens and of v2 tokens that name none.
    pub default_network: String,
}

impl Default for Privacy {
    fn default() -> Privacy {
        Privacy {
            networks: vec!["chat".into()],
            default_network: "chat".into(),
        }
    }
}

/// Data residency: zones of accounts and the regions allowed to hold their data.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Residency {
    /// The zone of accounts whose token names none.
    pub default_zone: String,
    /// Zone name → regions allowed to store its accounts' data (`*` allows every region).
    pub zones: std::collections::BTreeMap<String, Vec<String>>,
}

impl Default for Residency {
    fn default() -> Residency {
        Residency {
            default_zone: "global".into(),
            zones: [("global".to_string(), vec!["*".to_string()])].into(),
        }
    }
}

impl Residency {
    /// Whether `region` may hold data of accounts in `zone` (unknown zones allow nothing).
    pub fn allows(&self, zone: &str, region: &str) -> bool {
        let zone = if zone.is_empty() {
            self.default_zone.as_str()
        } else {
            zone
        };
        self.zones
            .get(zone)
            .is_some_and(|r| r.iter().any(|r| r == "*" || r == region))
    }
}

/// Durability of accepted envelopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// fsync (group-committed) before `ACCEPTED`.
    Sync,
    /// No fsync: an OS crash loses accepted envelopes. For benchmarks only.
    None,
}

/// Resource limits; every one is enforced with a clear error code.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest envelope payload in bytes (`ENVELOPE_TOO_LARGE` above it).
    pub max_envelope_bytes: usize,
    /// Envelopes a device queue may hold (`QUEUE_FULL` above it).
    pub max_queue_len: u64,
    /// Bytes a device queue may hold (`QUEUE_FULL` above it).
    pub max_queue_bytes: u64,
    /// Concurrent connections (`TOO_MANY_CONNECTIONS` above it).
    pub max_connections: usize,
    /// Unacknowledged deliveries in flight per device.
    pub max_inflight: u32,
    /// TTL of envelopes that give none, in seconds.
    pub default_ttl_secs: u32,
    /// Longest TTL; longer requests are clamped to it.
    pub max_ttl_secs: u32,
    /// How long a message id is remembered for idempotent retries, in seconds.
    pub dedup_window_secs: u64,
    /// Unanswered `SEND`s per connection before the node stops reading it.
    pub max_pending_sends: usize,
    /// Bytes accepted but not yet durable, node-wide, before `OVERLOADED`.
    pub max_pending_bytes: u64,
    /// Members a group may have (`GROUP_TOO_LARGE` above it).
    pub max_group_size: u32,
    /// Recipients a `SEND_MULTI` may list (`TOO_MANY_RECIPIENTS` above it).
    pub max_multi_recipients: usize,
    /// Bytes of one `SEND_MULTI` per-recipient header.
    pub max_header_bytes: usize,
    /// How long an envelope whose every recipient device is online waits for their acks
    /// before it is written (0: written with the next group commit). Acked by all in time,
    /// it is never written.
    pub write_hold_ms: u64,
    /// Most payload bytes waiting that way; past it they are written at once.
    pub max_held_bytes: u64,
    /// A connection that has not sent `HELLO` this long after the QUIC handshake is closed,
    /// in milliseconds.
    pub hello_timeout_ms: u64,
    /// Above this many new QUIC handshakes per second (node-wide), a client whose address is
    /// not yet validated must first echo a Retry token (one round trip more; spoofed sources
    /// cannot). 0: never ask.
    pub retry_above_handshakes_per_sec: u32,
    /// QUIC handshakes waiting to be accepted; further Initial packets are dropped.
    pub max_incoming: usize,
    /// Bytes buffered for all handshakes waiting to be accepted (at most 64 KiB each).
    pub incoming_buffer_bytes: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: "127.0.0.1:4433".parse().expect("valid address"),
            admin_listen: "127.0.0.1:9090".parse().expect("valid address"),
            admin_token_file: None,
            admin_open_metrics: true,
            admin_tls_cert: None,
            admin_tls_key: None,
            data_dir: PathBuf::from("./hearth-data"),
            tls_cert: None,
            tls_key: None,
            token_key: None,
            server_name: "localhost".into(),
            durability: DurabilityMode::Sync,
            quic_endpoints: 1,
            sweep_interval_ms: 1000,
            region: "local".into(),
            limits: Limits::default(),
            privacy: Privacy::default(),
            residency: Residency::default(),
            safety: Default::default(),
            push: Default::default(),
            cluster: None,
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_envelope_bytes: hearth_protocol::DEFAULT_MAX_ENVELOPE,
            max_queue_len: 10_000,
            max_queue_bytes: 256 * 1024 * 1024,
            max_connections: 200_000,
            max_inflight: 256,
            default_ttl_secs: 30 * 24 * 3600,
            max_ttl_secs: 30 * 24 * 3600,
            dedup_window_secs: 3600,
            max_pending_sends: 1024,
            max_pending_bytes: 256 * 1024 * 1024,
            max_group_size: 100_000,
            max_multi_recipients: 1000,
            max_header_bytes: 256,
            write_hold_ms: 5,
            max_held_bytes: 64 * 1024 * 1024,
            hello_timeout_ms: 10_000,
            retry_above_handshakes_per_sec: 1000,
            max_incoming: 16_384,
            incoming_buffer_bytes: 32 * 1024 * 1024,
        }
    }
}

impl crate::safety::SafetyConfig {
    /// Limits and thresholds so high they never bind: for benchmarks and tests that measure
    /// something other than the limiter. Never for production.
    pub fn permissive() -> crate::safety::SafetyConfig {
        let big = u32::MAX / 4;
        crate::safety::SafetyConfig {
            per_device_per_sec: big,
            per_device_burst: big,
            per_pair_per_sec: big,
            per_pair_burst: big,
            recipient_bytes_per_sec: big,
            recipient_bytes_burst: big,
            new_connections_per_ip_per_sec: big,
            new_connections_per_ip_burst: big,
            group_fanout_per_sender_per_sec: big,
            group_fanout_burst: big,
            sealed_per_recipient_per_sec: big,
            sealed_per_recipient_burst: big,
            new_recipients_per_hour: big,
            blocks_received_per_window: big,
            reports_received_per_window: big,
            fanout_per_hour: u64::MAX / 4,
            ..Default::default()
        }
    }
}

impl Limits {
    /// The largest frame the node reads: an envelope plus a full `SEND_MULTI` recipient list.
    pub fn max_frame(&self) -> usize {
        self.max_envelope_bytes + 64 + self.max_multi_recipients * (14 + self.max_header_bytes)
    }

    /// `hello_timeout_ms` as a duration.
    pub fn hello_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.hello_timeout_ms)
    }
}

impl Config {
    /// Parse a TOML configuration; absent keys take their defaults.
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        let cfg: Config = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reject settings that cannot work.
    pub fn validate(&self) -> anyhow::Result<()> {
        let l = &self.limits;
        anyhow::ensure!(
            l.max_envelope_bytes > 0,
            "limits.max_envelope_bytes must be > 0"
        );
        anyhow::ensure!(
            l.max_envelope_bytes <= 16 * 1024 * 1024,
            "limits.max_envelope_bytes must be at most 16 MiB"
        );
        anyhow::ensure!(l.max_inflight > 0, "limits.max_inflight must be > 0");
        anyhow::ensure!(l.max_ttl_secs > 0, "limits.max_ttl_secs must be > 0");
        anyhow::ensure!(
            l.default_ttl_secs > 0 && l.default_ttl_secs <= l.max_ttl_secs,
            "limits.default_ttl_secs must be in 1..=max_ttl_secs"
        );
        anyhow::ensure!(
            l.max_pending_sends > 0,
            "limits.max_pending_sends must be > 0"
        );
        anyhow::ensure!(l.max_group_size >= 1, "limits.max_group_size must be >= 1");
        anyhow::ensure!(
            l.max_multi_recipients <= u16::MAX as usize,
            "limits.max_multi_recipients must be at most 65535"
        );
        // A DELIVER_SHARED must fit the client's frame limit (max envelope + 1 KiB).
        anyhow::ensure!(
            l.max_header_bytes <= 960,
            "limits.max_header_bytes must be at most 960"
        );
        anyhow::ensure!(
            (1..=600_000).contains(&l.hello_timeout_ms),
            "limits.hello_timeout_ms must be in 1..=600000"
        );
        anyhow::ensure!(l.max_incoming >= 1, "limits.max_incoming must be >= 1");
        anyhow::ensure!(
            l.incoming_buffer_bytes >= 64 * 1024,
            "limits.incoming_buffer_bytes must be at least 65536"
        );
        anyhow::ensure!(
            self.tls_cert.is_some() == self.tls_key.is_some(),
            "tls_cert and tls_key go together"
        );
        anyhow::ensure!(
            self.admin_tls_cert.is_some() == self.admin_tls_key.is_some(),
            "admin_tls_cert and admin_tls_key go together"
        );
        anyhow::ensure!(
            (1..=64).contains(&self.quic_endpoints),
            "quic_endpoints must be in 1..=64"
        );
        anyhow::ensure!(
            self.privacy
                .networks
                .contains(&self.privacy.default_network),
            "privacy.default_network must be one of privacy.networks"
        );
        anyhow::ensure!(
            self.residency
                .zones
                .contains_key(&self.residency.default_zone),
            "residency.default_zone must be a key of residency.zones"
        );
        anyhow::ensure!(
            self.safety.retention_secs > 0,
            "safety.retention_secs must be > 0"
        );
        self.push.validate()?;
        if let Some(c) = &self.cluster {
            c.validate().map_err(anyhow::Error::msg)?;
            for (key, v) in [
                ("ca_cert", &c.ca_cert),
                ("node_cert", &c.node_cert),
                ("node_key", &c.node_key),
            ] {
                anyhow::ensure!(
                    !v.is_empty(),
                    "cluster.{key} must name a PEM file (`hearthctl cluster ca` issues them)"
                );
            }
            c.link_listen
                .parse::<SocketAddr>()
                .map_err(|e| anyhow::anyhow!("cluster.link_listen {:?}: {e}", c.link_listen))?;
        }
        Ok(())
    }

    /// The region this node is in: `cluster.region` when set, else `region`.
    pub fn node_region(&self) -> &str {
        match &self.cluster {
            Some(c) if !c.region.is_empty() => &c.region,
            _ => &self.region,
        }
    }

    /// The admin token file in effect.
    pub fn admin_token_path(&self) -> PathBuf {
        self.admin_token_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin.token"))
    }

    /// The token key path in effect.
    pub fn token_key_path(&self) -> PathBuf {
        self.token_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("token.key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let c = Config::from_toml(
            "listen = \"0.0.0.0:5000\"\ndurability = \"none\"\n[limits]\nmax_inflight = 7\n",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 5000);
        assert_eq!(c.durability, DurabilityMode::None);
        assert_eq!(c.limits.max_inflight, 7);
        assert_eq!(c.limits.max_queue_len, Limits::default().max_queue_len);
        assert!(Config::from_toml("bogus = 1").is_err());
        assert!(Config::from_toml("[limits]\nmax_inflight = 0").is_err());
        let r = Config::from_toml(
            "region = \"eu-west\"\n[residency]\ndefault_zone = \"eu\"\n\
             [residency.zones]\neu = [\"eu-west\"]\nus = [\"us-east\"]\nany = [\"*\"]\n",
        )
        .unwrap();
        assert!(r.residency.allows("", "eu-west"));
        assert!(r.residency.allows("eu", "eu-west"));
        assert!(!r.residency.allows("us", "eu-west"));
        assert!(r.residency.allows("any", "eu-west"));
        assert!(!r.residency.allows("mars", "eu-west"));
    }

    #[test]
    fn a_cluster_section_is_optional_and_checked() {
        assert!(Config::from_toml("").unwrap().cluster.is_none());
        let ok = "[cluster]\nnode_id = 2\netcd_endpoints = [\"http://127.0.0.1:12379\"]\n\
                  advertise_client = \"127.0.0.2:4433\"\nlink_listen = \"127.0.0.2:4434\"\n\
                  advertise_link = \"127.0.0.2:4434\"\nregion = \"eu-west\"\n\
                  ca_cert = \"ca.pem\"\nnode_cert = \"n2.pem\"\nnode_key = \"n2.key\"\n";
        let c = Config::from_toml(ok).unwrap();
        let cl = c.cluster.as_ref().unwrap();
        assert_eq!(cl.node_id, 2);
        assert_eq!(cl.advertise_client, "127.0.0.2:4433");
        assert_eq!(c.node_region(), "eu-west");
        let no_certs = ok.replace("ca_cert = \"ca.pem\"\n", "");
        let e = Config::from_toml(&no_certs).unwrap_err().to_string();
        assert!(e.contains("cluster.ca_cert"), "{e}");
        let bad_id = ok.replace("node_id = 2", "node_id = 0");
        assert!(Config::from_toml(&bad_id).is_err());
        let bad_listen = ok.replace(
            "link_listen = \"127.0.0.2:4434\"",
            "link_listen = \"n2:4434\"",
        );
        assert!(Config::from_toml(&bad_listen).is_err());
        assert!(
            Config::from_toml("[cluster]\nnodeid = 2\n").is_err(),
            "typos refused"
        );
    }

    #[test]
    fn the_cluster_configs_in_deploy_are_valid_node_configs() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cluster");
        let mut files = vec![root.join("hearthd-cluster.toml")];
        files.extend((1..=3).map(|i| root.join(format!("compose/hearthd-{i}.toml"))));
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let c = Config::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
            assert!(
                c.cluster.is_some(),
                "{} has a [cluster] section",
                f.display()
            );
        }
    }
}
