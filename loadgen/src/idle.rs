//! `hearth-loadgen connections`: open many idle device connections (a paced connect ramp over
//! several loopback source addresses), hold them, optionally churn a share of them each second,
//! and report what they cost: the node's RSS per connection from `/v1/status`, and the
//! generator's own.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hearth_client::{Connection, Deliveries};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use crate::config::Target;
use crate::connect::Connector;
use crate::slo::{Slo, SloResult};
use crate::target::{self, node_status, NodeStatus, Prepared};

/// What to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleConfig {
    /// Where the connections go.
    pub target: Target,
    /// Connections to open (one device each, accounts from `account_base`).
    pub connections: u32,
    /// Handshakes per second (0 = as fast as possible).
    pub connect_rate: f64,
    /// Source addresses 127.0.0.1..=127.0.0.N.
    pub source_ips: u8,
    /// How long to hold them once all are open.
    pub hold: Duration,
    /// Share of the connections reconnecting each second while holding.
    pub churn: f64,
    /// Account id of the first device.
    pub account_base: u64,
    /// Objectives (`rss_per_connection`, `connect_failures`, `connected`, `handshakes_per_s`).
    pub slos: Vec<Slo>,
    /// Keep a TLS session ticket per connection, so reconnects resume (false: every handshake
    /// is a full one).
    pub resumption: bool,
    /// After the hold, close every connection and reconnect them all at once (a reconnect
    /// storm), measuring its handshakes per second.
    pub reconnect_all: bool,
    /// Print progress on stderr.
    pub progress: bool,
}

/// What holding the connections cost.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleReport {
    /// `embedded` or the node's address.
    pub target: String,
    /// Connections asked for.
    pub requested: u32,
    /// Connections open at the peak (as the generator counts them).
    pub connected: u64,
    /// Connections that could not be opened (after retries).
    pub failed: u64,
    /// Failed attempts, retried.
    pub failed_attempts: u64,
    /// Time to open them all, seconds.
    pub connect_s: f64,
    /// Achieved handshakes per second during the ramp.
    pub handshakes_per_s: f64,
    /// Seconds held after the ramp.
    pub held_s: f64,
    /// Reconnects made for churn while holding.
    pub reconnects: u64,
    /// Whether connections kept session tickets (`--resumption`).
    #[serde(default)]
    pub resumption: bool,
    /// The reconnect storm (`--reconnect-all`), if one was run.
    #[serde(default)]
    pub storm: Option<StormReport>,
    /// Source addresses used.
    pub source_ips: u8,
    /// Node status before connecting.
    pub node_before: Option<NodeStatus>,
    /// Node status at the end of the hold (all connections open).
    pub node_held: Option<NodeStatus>,
    /// (node RSS held − before) / connections, bytes.
    pub node_rss_per_connection_bytes: Option<u64>,
    /// The node runs inside this process: its RSS includes the generator's side.
    pub node_includes_generator: bool,
    /// The generator process's RSS before and while holding, bytes.
    pub generator_rss_before_bytes: u64,
    /// The generator process's RSS while holding, bytes.
    pub generator_rss_held_bytes: u64,
    /// (generator RSS held − before) / connections, bytes (client side of a connection).
    pub generator_rss_per_connection_bytes: Option<u64>,
    /// Objectives, evaluated.
    pub slo: Vec<SloResult>,
    /// Every objective held (and no connection failed).
    pub passed: bool,
}

/// Every connection closed and reconnected at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StormReport {
    /// Connections reconnected.
    pub reconnected: u64,
    /// Connections that could not reconnect (after retries).
    pub failed: u64,
    /// Time to reconnect them all, seconds.
    pub seconds: f64,
    /// Reconnects per second.
    pub handshakes_per_s: f64,
    /// Handshakes the node resumed from a session ticket meanwhile (None: no admin address).
    pub node_resumed: Option<u64>,
    /// Handshakes the node sent a Retry meanwhile (None: no admin address).
    pub node_retries: Option<u64>,
}

impl IdleReport {
    /// Exit code: 0 when everything held, 2 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.passed {
            0
        } else {
            2
        }
    }

    /// One JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("report serializes")
    }

    /// A short table.
    pub fn to_table(&self) -> String {
        let kib =
            |b: Option<u64>| b.map_or("n/a".into(), |b| format!("{:.1} KiB", b as f64 / 1024.0));
        let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
        let mut s = format!(
            "hearth-loadgen connections: {} idle connections to {} over {} source address(es)\n",
            self.requested, self.target, self.source_ips
        );
        let mut row = |k: &str, v: String| s.push_str(&format!("  {k:<28} {v}\n"));
        row(
            "connected",
            format!(
                "{} ({} failed, {} failed attempts retried)",
                self.connected, self.failed, self.failed_attempts
            ),
        );
        row(
            "connect ramp",
            format!(
                "{:.1} s, {:.0} handshakes/s",
                self.connect_s, self.handshakes_per_s
            ),
        );
        row(
            "held",
            format!("{:.1} s, {} churn reconnects", self.held_s, self.reconnects),
        );
        if let Some(st) = &self.storm {
            let opt = |v: Option<u64>| v.map_or("n/a".into(), |v| v.to_string());
            row(
                "reconnect storm",
                format!(
                    "{} in {:.1} s, {:.0} handshakes/s, {} failed (resumption {}; node: {} \
                     resumed, {} Retry)",
                    st.reconnected,
                    st.seconds,
                    st.handshakes_per_s,
                    st.failed,
                    if self.resumption { "on" } else { "off" },
                    opt(st.node_resumed),
                    opt(st.node_retries),
                ),
            );
        }
        if let (Some(b), Some(h)) = (self.node_before, self.node_held) {
            row(
                "node",
                format!(
                    "{} connections, RSS {} -> {}{}",
                    h.connections,
                    mib(b.rss_bytes),
                    mib(h.rss_bytes),
                    if self.node_includes_generator {
                        " (embedded: includes the generator)"
                    } else {
                        ""
                    }
                ),
            );
        }
        row(
            "node RSS per connection",
            kib(self.node_rss_per_connection_bytes),
        );
        row(
            "generator RSS",
            format!(
                "{} -> {}, {} per connection",
                mib(self.generator_rss_before_bytes),
                mib(self.generator_rss_held_bytes),
                kib(self.generator_rss_per_connection_bytes)
            ),
        );
        for r in &self.slo {
            row(
                "slo",
                format!(
                    "{} {} (actual {})",
                    if r.passed { "PASS" } else { "FAIL" },
                    r.slo,
                    r.actual.map_or("n/a".into(), |a| format!("{a:.0}"))
                ),
            );
        }
        row(
            "result",
            if self.passed { "PASS" } else { "FAIL (exit 2)" }.into(),
        );
        s
    }
}

/// This process's resident set size, bytes (0 if unknown).
pub(crate) fn own_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        })
        .unwrap_or(0)
}

type Held = Vec<Mutex<Option<(Connection, Deliveries)>>>;

/// Opens, holds, churns and closes the connections.
pub async fn run_connections(cfg: IdleConfig) -> anyhow::Result<IdleReport> {
    anyhow::ensure!(cfg.connections >= 1, "--connections must be at least 1");
    anyhow::ensure!(
        (0.0..=1.0).contains(&cfg.churn),
        "--churn must be in [0, 1]"
    );
    let p = target::prepare(&cfg.target).await?;
    let result = run_on(&cfg, &p).await;
    p.shutdown().await;
    result
}

async fn status(p: &Prepared) -> Option<NodeStatus> {
    node_status(p.admin?).await.ok()
}

async fn run_on(cfg: &IdleConfig, p: &Prepared) -> anyhow::Result<IdleReport> {
    let node_before = status(p).await;
    let gen_before = own_rss();
    let n = cfg.connections as usize;
    let mut connector = Connector::new(p, n, cfg.source_ips, cfg.connect_rate)?;
    // One ticket per connection (each reconnect takes one; the node sends two per handshake).
    connector.set_session_tickets(if cfg.resumption { 2 * n } else { 0 })?;
    let connector = Arc::new(connector);
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let held: Arc<Held> = Arc::new((0..n).map(|_| Mutex::new(None)).collect());
    let mut set = JoinSet::new();
    for i in 0..n {
        let (connector, held, failures, failed, done) = (
            connector.clone(),
            held.clone(),
            failures.clone(),
            failed.clone(),
            done.clone(),
        );
        let (account, progress) = (cfg.account_base + i as u64, cfg.progress);
        set.spawn(async move {
            match connector.connect_retry(i, account, 5, &failures).await {
                Ok(c) => *held[i].lock().await = Some(c),
                Err(e) => {
                    if failed.fetch_add(1, Relaxed) < 5 {
                        tracing::warn!("connection {i} failed: {e}");
                    }
                }
            }
            let d = done.fetch_add(1, Relaxed) + 1;
            if progress && (d % 1000 == 0 || d as usize == n) {
                eprint!(
                    "\r\x1b[2Kconnected {d}/{n} in {:.1} s",
                    start.elapsed().as_secs_f64()
                );
            }
        });
    }
    while set.join_next().await.is_some() {}
    if cfg.progress {
        eprintln!();
    }
    let connect_s = start.elapsed().as_secs_f64();
    let connected = (n as u64).saturating_sub(failed.load(Relaxed));

    // Hold (and churn); sample the node meanwhile, keeping the last status.
    let hold_start = Instant::now();
    let reconnects = Arc::new(AtomicU64::new(0));
    let mut node_held = status(p).await;
    let mut rng = SmallRng::from_entropy();
    let mut carry = 0.0;
    while hold_start.elapsed() < cfg.hold {
        let tick = Instant::now();
        carry += cfg.churn * connected as f64;
        let k = carry.floor() as usize;
        carry -= k as f64;
        let mut set = JoinSet::new();
        for _ in 0..k {
            let i = rng.gen_range(0..n);
            let (connector, held, reconnects, failures) = (
                connector.clone(),
                held.clone(),
                reconnects.clone(),
                failures.clone(),
            );
            let account = cfg.account_base + i as u64;
            set.spawn(async move {
                let mut slot = held[i].lock().await;
                if let Some((c, _)) = slot.take() {
                    c.close();
                    if let Ok(c) = connector.connect_retry(i, account, 5, &failures).await {
                        *slot = Some(c);
                        reconnects.fetch_add(1, Relaxed);
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
        if let Some(s) = status(p).await {
            node_held = Some(s);
        }
        if cfg.progress {
            if let Some(s) = node_held {
                eprint!(
                    "\r\x1b[2Kholding {:.0}/{:.0} s: node {} connections, RSS {:.1} MiB",
                    hold_start.elapsed().as_secs_f64(),
                    cfg.hold.as_secs_f64(),
                    s.connections,
                    s.rss_bytes as f64 / 1048576.0
                );
            }
        }
        let next = tick + Duration::from_secs(1);
        tokio::time::sleep_until(next.into()).await;
    }
    if cfg.progress {
        eprintln!();
    }
    let held_s = hold_start.elapsed().as_secs_f64();
    let gen_held = own_rss();
    let storm = if cfg.reconnect_all {
        Some(reconnect_storm(cfg, p, &connector, &held, &failures).await)
    } else {
        None
    };
    for slot in held.iter() {
        if let Some((c, _)) = slot.lock().await.take() {
            c.close();
        }
    }
    connector.wait_idle(Duration::from_secs(5)).await;

    let per = |before: u64, after: u64, conns: u64| {
        (conns > 0).then(|| after.saturating_sub(before) / conns)
    };
    let node_rss_per_connection_bytes = match (node_before, node_held) {
        (Some(b), Some(h)) => per(b.rss_bytes, h.rss_bytes, h.connections.max(1)),
        _ => None,
    };
    let failed_n = failed.load(Relaxed);
    let reconnects = reconnects.load(Relaxed);
    let failures = failures.load(Relaxed);
    let mut r = IdleReport {
        target: match &cfg.target {
            Target::Embedded { .. } => "embedded".into(),
            Target::Remote { addr, .. } => addr.to_string(),
        },
        requested: cfg.connections,
        connected,
        failed: failed_n,
        failed_attempts: failures,
        connect_s,
        handshakes_per_s: connected as f64 / connect_s.max(1e-3),
        held_s,
        reconnects,
        resumption: cfg.resumption,
        storm,
        source_ips: cfg.source_ips,
        node_before,
        node_held,
        node_rss_per_connection_bytes,
        node_includes_generator: p.is_embedded(),
        generator_rss_before_bytes: gen_before,
        generator_rss_held_bytes: gen_held,
        generator_rss_per_connection_bytes: per(gen_before, gen_held, connected),
        slo: Vec::new(),
        passed: true,
    };
    r.slo = cfg
        .slos
        .iter()
        .map(|s| {
            s.evaluate_with(|m| match m {
                "rss_per_connection" => r.node_rss_per_connection_bytes.map(|b| b as f64),
                "connect_failures" => Some(r.failed as f64),
                _ => None,
            })
        })
        .collect();
    r.passed = failed_n == 0
        && r.storm.as_ref().is_none_or(|s| s.failed == 0)
        && r.slo.iter().all(|s| s.passed);
    Ok(r)
}

/// Close every held connection, wait until the node has seen the closes, then reconnect all of
/// them at once (paced by `connect_rate`, bounded concurrency).
async fn reconnect_storm(
    cfg: &IdleConfig,
    p: &Prepared,
    connector: &Arc<Connector>,
    held: &Arc<Held>,
    failures: &Arc<AtomicU64>,
) -> StormReport {
    for slot in held.iter() {
        if let Some((c, _)) = slot.lock().await.take() {
            c.close();
        }
    }
    connector.wait_idle(Duration::from_secs(10)).await;
    let before = status(p).await;
    let start = Instant::now();
    let failed = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for i in 0..held.len() {
        let (connector, held, failures, failed) = (
            connector.clone(),
            held.clone(),
            failures.clone(),
            failed.clone(),
        );
        let account = cfg.account_base + i as u64;
        set.spawn(async move {
            match connector.connect_retry(i, account, 5, &failures).await {
                Ok(c) => *held[i].lock().await = Some(c),
                Err(_) => {
                    failed.fetch_add(1, Relaxed);
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    let seconds = start.elapsed().as_secs_f64();
    let after = status(p).await;
    let failed = failed.load(Relaxed);
    let reconnected = held.len() as u64 - failed;
    let delta = |f: fn(&NodeStatus) -> u64| match (&before, &after) {
        (Some(b), Some(a)) => Some(f(a).saturating_sub(f(b))),
        _ => None,
    };
    StormReport {
        reconnected,
        failed,
        seconds,
        handshakes_per_s: reconnected as f64 / seconds.max(1e-3),
        node_resumed: delta(|s| s.tls_resumed),
        node_retries: delta(|s| s.quic_retries),
    }
}

/// Flags of `hearth-loadgen connections`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "hearth-loadgen connections",
    about = "Open many idle connections (paced, over several source addresses), hold them, \
             and report the node's RSS per connection from /v1/status."
)]
pub struct IdleArgs {
    /// Where the connections go (a separate node with --admin gives a clean RSS figure).
    #[command(flatten)]
    pub target: crate::cli::TargetArgs,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: u32,
    /// Handshakes per second (0 = as fast as possible).
    #[arg(long, value_name = "N/s", default_value = "2000", value_parser = crate::cli::parse_rate)]
    pub connect_rate: f64,
    /// Spread sockets over 127.0.0.1..=127.0.0.N.
    #[arg(long, default_value_t = 4)]
    pub source_ips: u8,
    /// How long to hold the connections once open.
    #[arg(long, default_value = "10s", value_parser = crate::cli::parse_duration)]
    pub hold: Duration,
    /// Share reconnecting each second while holding (e.g. 0.01).
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
    /// Account id of the first device.
    #[arg(long, default_value_t = 50_000_000)]
    pub account_base: u64,
    /// Objective, e.g. 'rss_per_connection<20KiB', 'connect_failures==0' (repeatable).
    #[arg(long = "slo", value_name = "EXPR", value_parser = crate::cli::parse_slo)]
    pub slos: Vec<Slo>,
    /// Session resumption: `on` keeps a TLS session ticket per connection so reconnects
    /// resume; `off` makes every handshake a full one (to measure the difference).
    #[arg(long, default_value = "on", value_name = "on|off", action = clap::ArgAction::Set, value_parser = parse_on_off)]
    pub resumption: bool,
    /// After the hold, close every connection and reconnect them all at once (a reconnect
    /// storm, paced by --connect-rate; 0 = as fast as possible) and report its handshakes/s.
    #[arg(long)]
    pub reconnect_all: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("expected on or off, got {s:?}")),
    }
}

impl IdleArgs {
    /// The configuration these flags describe.
    pub fn to_config(&self) -> anyhow::Result<IdleConfig> {
        Ok(IdleConfig {
            target: self.target.to_target().context("target")?,
            connections: self.connections,
            connect_rate: self.connect_rate,
            source_ips: self.source_ips.max(1),
            hold: self.hold,
            churn: self.churn,
            account_base: self.account_base,
            slos: self.slos.clone(),
            resumption: self.resumption,
            reconnect_all: self.reconnect_all,
            progress: !self.json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        })
    }
}
