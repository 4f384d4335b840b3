//! What one load run does: the target and the scenario, plus reporting settings. Built by the
//! CLI, by tests, or received by an agent from its coordinator (it is serializable).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::scenario::Scenario;
use crate::slo::Slo;

/// Smallest payload: the header every load envelope carries (see `payload.rs`).
pub const MIN_SIZE: usize = crate::payload::HEADER_LEN;

/// Where the load goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Target {
    /// Start a node in-process (on its own runtime threads) on a temporary data directory,
    /// listening on 127.0.0.1:0.
    Embedded {
        /// Durability of the embedded node's store.
        durability: EmbeddedDurability,
        /// hearthd TOML for the embedded node (limits etc.); addresses, data dir and
        /// durability are set by the load generator.
        node_config: Option<String>,
    },
    /// A running node.
    Remote {
        /// The node's QUIC address.
        addr: SocketAddr,
        /// PEM of the certificate (or CA) the node's certificate is verified against.
        ca_pem: Vec<u8>,
        /// TLS server name to verify.
        server_name: String,
        /// PKCS#8 DER of the node's token signing key, to mint device tokens.
        key_pkcs8: Vec<u8>,
        /// The node's admin HTTP address, for `/v1/status` (connections, RSS).
        admin: Option<SocketAddr>,
    },
}

/// Durability of an embedded node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EmbeddedDurability {
    /// fsync before `ACCEPTED` (the default, what production does).
    Sync,
    /// No fsync: UNSAFE, measures everything but the disk.
    None,
}

impl EmbeddedDurability {
    /// How reports name it.
    pub fn label(self) -> &'static str {
        match self {
            EmbeddedDurability::Sync => "sync",
            EmbeddedDurability::None => "none (UNSAFE: no fsync)",
        }
    }
}

/// One load run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    /// Where the load goes.
    pub target: Target,
    /// The traffic.
    pub scenario: Scenario,
    /// Account id of device 0 (device `i` is account `account_base + i`).
    pub account_base: u64,
    /// Length of one timeline interval (progress line, HTML charts, interval log).
    #[serde(with = "millis")]
    pub interval: Duration,
    /// Print a live progress line on stderr.
    pub progress: bool,
    /// Objectives to evaluate (exit code 2 when one fails).
    #[serde(default)]
    pub slos: Vec<Slo>,
    /// Also apply the integrity checks (lost, unanswered, reordered, fan-out == 0).
    #[serde(default = "yes")]
    pub checks: bool,
}

fn yes() -> bool {
    true
}

impl RunConfig {
    /// A small open-loop 1:1 run against an embedded node with durability sync, no warm-up.
    pub fn embedded(devices: u32, rate: f64, duration: Duration) -> RunConfig {
        let mut scenario = Scenario {
            devices,
            ..Scenario::default()
        };
        scenario.load.rate = Some(rate);
        scenario.phases.warmup = Duration::ZERO;
        scenario.phases.steady = duration;
        RunConfig {
            target: Target::Embedded {
                durability: EmbeddedDurability::Sync,
                node_config: None,
            },
            scenario,
            account_base: 1_000_000,
            interval: Duration::from_secs(1),
            progress: false,
            slos: Vec::new(),
            checks: true,
        }
    }

    /// Checks the combination; the error says what to change.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.scenario.validate()?;
        anyhow::ensure!(
            self.interval >= Duration::from_millis(10),
            "--interval must be at least 10ms"
        );
        anyhow::ensure!(
            self.account_base
                .checked_add(u64::from(self.scenario.devices) + 2)
                .is_some(),
            "--account-base + --devices overflows u64"
        );
        if let Target::Remote { addr, .. } = &self.target {
            anyhow::ensure!(
                self.scenario.connections.source_ips == 1 || addr.ip().is_loopback(),
                "--source-ips > 1 needs a loopback --addr"
            );
        }
        Ok(())
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}
