//! The Hearth node: a QUIC front over a routing core and durable per-device queues.
//!
//! [`Node::start`] runs a node from a [`Config`]; the `hearthd` binary is a thin wrapper over it.

mod admin;
mod cluster;
mod config;
mod core;
mod driver;
mod front;
#[cfg(test)]
mod fuzz_corpus;
mod metrics;
mod push;
mod safety;
mod session;
mod tls;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hearth_protocol::{ErrorCode, SigningKey};
use hearth_storage::{Durability, Store, StoreOptions};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// The routing core's fuzz entry point (the `fuzzing` feature, for router/fuzz).
#[cfg(feature = "fuzzing")]
pub use crate::core::testing::props::fuzz_case;
pub use config::{Config, DurabilityMode, Limits, Privacy, Residency};
pub use push::PushConfig;
pub use safety::SafetyConfig;

use crate::core::{CoreConfig, Router, SlotMap};
use crate::driver::Driver;
use crate::metrics::Metrics;
use crate::safety::Safety;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Resolves once shutdown has been asked for, even if that happened before the call.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// State shared by the node's tasks.
pub(crate) struct Shared {
    /// The routing core and what performs its actions.
    pub driver: Arc<Driver>,
    /// Largest frame a connection may send.
    pub max_frame: usize,
    /// Most connections at once.
    pub max_connections: usize,
    /// How long a connection may take to open its stream and send HELLO.
    pub hello_timeout: Duration,
    pub shutdown: watch::Sender<bool>,
    pub ready: AtomicBool,
    /// Whether the node may serve its slots (always on a single node; in a cluster, while
    /// its lease is live and its map current). `/readyz` fails while it may not.
    pub serving: Arc<AtomicBool>,
    pub started: Instant,
    pub quic_addr: SocketAddr,
    pub durability: DurabilityMode,
    /// Counters of the QUIC front.
    pub front: front::FrontMetrics,
    /// Which new handshakes must first validate their address (Retry).
    pub handshake_gate: front::HandshakeGate,
    /// The admin API's token and which endpoints are open.
    pub admin: admin::AdminAuth,
}

/// A running node.
pub struct Node {
    shared: Arc<Shared>,
    endpoints: Vec<quinn::Endpoint>,
    sessions: TaskTracker,
    background: TaskTracker,
    admin_addr: SocketAddr,
    admin_https: bool,
    ca_pem: Vec<u8>,
    signing_key: SigningKey,
    server_name: String,
    cluster: Option<cluster::Cluster>,
}

impl Node {
    /// Open the data directory and start serving QUIC and admin HTTP.
    pub async fn start(cfg: Config) -> anyhow::Result<Node> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
        let tls = tls::load(&cfg)?;
        let signing_key = tls::load_or_create_token_key(&cfg.token_key_path())?;
        let reset_key = tls::load_or_create_secret(&cfg.data_dir.join("quic-reset.key"), 32)?;
        let admin_token = tls::load_or_create_admin_token(&cfg.admin_token_path())?;
        let admin_tls = match (&cfg.admin_tls_cert, &cfg.admin_tls_key) {
            (Some(c), Some(k)) => Some(tls::admin_acceptor(c, k)?),
            _ => None,
        };
        if cfg.durability == DurabilityMode::None {
            tracing::warn!(
                "durability = none: accepted envelopes are NOT fsync'd (benchmarks only)"
            );
        }
        let store = Store::open(
            &cfg.data_dir.join("db"),
            StoreOptions {
                durability: match cfg.durability {
                    DurabilityMode::Sync => Durability::Sync,
                    DurabilityMode::None => Durability::None,
                },
                max_queue_len: cfg.limits.max_queue_len,
                max_queue_bytes: cfg.limits.max_queue_bytes,
                dedup_window_ms: cfg.limits.dedup_window_secs * 1000,
            },
        )
        .context("opening the store")?;
        let pusher = push::Pusher::spawn(cfg.push.clone())?;
        let metrics = Arc::new(Metrics::default());
        let safety = Arc::new(Safety::new(cfg.safety.clone()));
        let local = cfg.cluster.as_ref().map_or(0, |c| c.node_id);
        let mut core = Router::new(
            CoreConfig {
                limits: cfg.limits.clone(),
                privacy: cfg.privacy.clone(),
                residency: cfg.residency.clone(),
                region: cfg.node_region().to_owned(),
                idle_timeout_ms: tls::IDLE_TIMEOUT.as_millis() as u32,
                retention_ms: cfg.safety.retention_secs * 1000,
            },
            Arc::new(store.clone()),
            signing_key.verifying_key(),
            SlotMap::single(local),
            safety.clone(),
            metrics.clone(),
        );
        // A cluster member serves nothing until it holds a current map under a live lease.
        let serving = Arc::new(AtomicBool::new(cfg.cluster.is_none()));
        core.set_serving(cfg.cluster.is_none());
        let driver = Driver::start(core, store, pusher, metrics, safety);
        let cluster = match &cfg.cluster {
            Some(c) => Some(
                cluster::Cluster::start(
                    c,
                    cfg.node_region(),
                    &cfg.residency,
                    driver.clone(),
                    serving.clone(),
                )
                .await?,
            ),
            None => None,
        };
        let front_metrics = front::FrontMetrics::default();
        let server_config = tls::server_config(&tls, &cfg.limits, front_metrics.resumed.clone())?;
        let endpoints = front::bind(cfg.listen, cfg.quic_endpoints, server_config, &reset_key)?;
        let quic_addr = endpoints[0].local_addr()?;
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            driver,
            max_frame: cfg.limits.max_frame(),
            max_connections: cfg.limits.max_connections,
            hello_timeout: cfg.limits.hello_timeout(),
            shutdown,
            ready: AtomicBool::new(true),
            serving,
            started: Instant::now(),
            quic_addr,
            durability: cfg.durability,
            front: front_metrics,
            handshake_gate: front::HandshakeGate::new(cfg.limits.retry_above_handshakes_per_sec),
            admin: admin::AdminAuth {
                token: admin_token,
                open_metrics: cfg.admin_open_metrics,
            },
        });
        let sessions = TaskTracker::new();
        let background = TaskTracker::new();
        for ep in &endpoints {
            background.spawn(front::accept_loop(
                ep.clone(),
                shared.clone(),
                sessions.clone(),
            ));
        }
        background.spawn(sweep_loop(
            shared.clone(),
            Duration::from_millis(cfg.sweep_interval_ms),
        ));
        let listener = tokio::net::TcpListener::bind(cfg.admin_listen)
            .await
            .with_context(|| format!("binding admin HTTP on {}", cfg.admin_listen))?;
        let admin_addr = listener.local_addr()?;
        let admin_https = admin_tls.is_some();
        background.spawn(admin::serve(listener, shared.clone(), admin_tls));
        tracing::info!(
            %quic_addr, %admin_addr, admin_https, data_dir = %cfg.data_dir.display(), "node started"
        );
        Ok(Node {
            shared,
            endpoints,
            sessions,
            background,
            admin_addr,
            admin_https,
            ca_pem: tls.ca_pem,
            signing_key,
            server_name: cfg.server_name,
            cluster,
        })
    }

    /// The bound QUIC (UDP) address.
    pub fn quic_addr(&self) -> SocketAddr {
        self.shared.quic_addr
    }

    /// The bound admin HTTP address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Base URL of the admin API: `http://` or, with `admin_tls_cert`, `https://`.
    pub fn admin_url(&self) -> String {
        let scheme = if self.admin_https { "https" } else { "http" };
        format!("{scheme}://{}", self.admin_addr)
    }

    /// The admin API's bearer token (`Authorization: Bearer <token>`).
    pub fn admin_token(&self) -> &str {
        &self.shared.admin.token
    }

    /// PEM of the last certificate of the presented chain: the development certificate, or the
    /// chain's root when the configured chain includes it (otherwise give clients your CA's PEM).
    pub fn ca_pem(&self) -> Vec<u8> {
        self.ca_pem.clone()
    }

    /// The key that signs this node's device tokens.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }

    /// The name clients verify in the certificate.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// Graceful shutdown: stop accepting, answer the sends already taken (they become durable),
    /// close every connection with `GOING_AWAY`, then flush and close the store.
    pub async fn shutdown(mut self) {
        use std::sync::atomic::Ordering;
        self.shared.ready.store(false, Ordering::SeqCst);
        // send_replace: stored even while no task has subscribed yet (a node stopped at once).
        self.shared.shutdown.send_replace(true);
        self.shared
            .driver
            .with(|c| c.close_all(ErrorCode::GoingAway, "node shutting down"));
        self.sessions.close();
        if tokio::time::timeout(Duration::from_secs(10), self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("sessions did not finish within 10 s");
        }
        for ep in &self.endpoints {
            ep.close(ErrorCode::GoingAway.as_u16().into(), b"node shutting down");
        }
        for ep in &self.endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
        }
        if let Some(c) = self.cluster.take() {
            c.shutdown().await;
        }
        self.background.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.background.wait()).await;
        let pusher = self.shared.driver.pusher().clone();
        let _ = tokio::time::timeout(Duration::from_secs(5), pusher.shutdown()).await;
        tracing::info!("node stopped");
    }
}

/// Remove expired envelopes from disk at a steady pace.
async fn sweep_loop(shared: Arc<Shared>, every: Duration) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
        shared.driver.with(|c| c.tick(now_ms()));
        loop {
            match shared.driver.store().sweep_expired(now_ms(), 10_000).await {
                Ok(s) => {
                    Metrics::add(&shared.driver.metrics().expired, s.expired.len() as u64);
                    if s.scanned < 10_000 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "expiry sweep failed");
                    break;
                }
            }
        }
    }
}
