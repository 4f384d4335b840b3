//! What one load run does: target, traffic shape, timing. Built by the CLI or by tests.

use std::net::SocketAddr;
use std::time::Duration;

/// Smallest payload: the header every load envelope carries (see `payload.rs`).
pub const MIN_SIZE: usize = crate::payload::HEADER_LEN;

/// Where the load goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// Start a node in-process on a temporary data directory, listening on 127.0.0.1:0.
    Embedded {
        /// Durability of the embedded node's store.
        durability: EmbeddedDurability,
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
    },
}

/// Durability of an embedded node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// How sends are generated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Open loop: `rate` envelopes/s at constant intervals, scheduled in advance; latency is
    /// measured from each send's intended time.
    OpenLoop {
        /// Offered envelopes per second (whole run, all connections).
        rate: f64,
    },
    /// Closed loop (saturation): `window` outstanding sends per connection, a new one as soon as
    /// one is answered. Latency is from the actual send time, so it hides queueing.
    ClosedLoop {
        /// Outstanding sends per connection.
        window: u32,
    },
}

/// One load run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Where the load goes.
    pub target: Target,
    /// Simulated devices; each is its own account (`account_base + i`, device 1).
    pub devices: u32,
    /// Connections; for now exactly one per device, so it must equal `devices`.
    pub connections: u32,
    /// Open or closed loop.
    pub mode: Mode,
    /// Warm-up before measuring (sends happen, nothing is counted in rates or latency).
    pub warmup: Duration,
    /// Measured period.
    pub duration: Duration,
    /// Longest wait after the last send for outstanding answers and deliveries.
    pub settle: Duration,
    /// Payload bytes per envelope (at least [`MIN_SIZE`]).
    pub size: usize,
    /// Account id of device 0.
    pub account_base: u64,
    /// Spread client sockets over 127.0.0.1..=127.0.0.N (loopback targets only); 1 = don't.
    pub source_ips: u8,
}

impl RunConfig {
    /// A small open-loop run against an embedded node with durability sync.
    pub fn embedded(devices: u32, rate: f64, duration: Duration) -> RunConfig {
        RunConfig {
            target: Target::Embedded {
                durability: EmbeddedDurability::Sync,
            },
            devices,
            connections: devices,
            mode: Mode::OpenLoop { rate },
            warmup: Duration::ZERO,
            duration,
            settle: Duration::from_secs(5),
            size: 512,
            account_base: 1_000_000,
            source_ips: 1,
        }
    }

    /// Checks the combination; the error says what to change.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.devices >= 2,
            "--devices must be at least 2 (1:1 traffic)"
        );
        anyhow::ensure!(
            self.connections == self.devices,
            "--connections must equal --devices for now: each connection is one device \
             (offline recipients are a later scenario)"
        );
        anyhow::ensure!(
            self.size >= MIN_SIZE,
            "--size must be at least {MIN_SIZE} bytes"
        );
        anyhow::ensure!(!self.duration.is_zero(), "--duration must be positive");
        anyhow::ensure!(self.source_ips >= 1, "--source-ips must be at least 1");
        anyhow::ensure!(
            self.account_base
                .checked_add(u64::from(self.devices))
                .is_some(),
            "--account-base + --devices overflows u64"
        );
        match self.mode {
            Mode::OpenLoop { rate } => {
                anyhow::ensure!(rate.is_finite() && rate > 0.0, "--rate must be positive")
            }
            Mode::ClosedLoop { window } => {
                anyhow::ensure!(
                    (1..=crate::runner::PIPELINE as u32).contains(&window),
                    "--closed-loop must be in 1..={}",
                    crate::runner::PIPELINE
                )
            }
        }
        if let Target::Remote { addr, .. } = &self.target {
            anyhow::ensure!(
                self.source_ips == 1 || addr.ip().is_loopback(),
                "--source-ips > 1 needs a loopback --addr"
            );
        }
        Ok(())
    }
}
