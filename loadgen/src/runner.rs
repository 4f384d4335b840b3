//! Runs one load: connects the devices, drives senders (open-loop schedulers or closed-loop
//! pumps), receives and acknowledges, waits for stragglers, and builds the [`Report`].
//!
//! Open loop: a few scheduler threads each own an equal share of the rate. Send `j` (over all
//! schedulers) is due at `j / rate` seconds; a scheduler hands each due send to the sender
//! connection's pump and never waits for an answer. Each connection's pump gives sends to the
//! client in order (polling each new send once, so its frame is queued before the next one) and
//! collects the answers concurrently, so a slow `ACCEPTED` never delays a later send; only when
//! [`PIPELINE`] sends of one connection are unanswered do later ones wait in the pump (a
//! saturated node), and that wait is part of their latency.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use hearth_client::{
    client_endpoint, quic_client_config, Accepted, ClientConfig, ClientError, Connection,
    Deliveries, Delivery, Outgoing,
};
use hearth_protocol::MessageId;
use quinn::Endpoint;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use tokio::sync::{mpsc, watch};

use crate::config::{Mode, RunConfig, Target};
use crate::payload::Header;
use crate::report::{Latency, Report, CLOSED_LOOP_LABEL};
use crate::scenario::{Devices, OneToOne};
use crate::stats::{latency_histogram, AtomicBitmap, Counters, ErrorCounts};
use crate::target::{self, Prepared};

/// Open-loop scheduler threads; each owns `1/SCHEDULERS` of the rate.
const SCHEDULERS: u64 = 2;
/// A send issued later than this after its intended time counts as late.
const LATE_NS: u64 = 1_000_000;
/// Client endpoints (UDP sockets) the connections are spread over, at most.
const MAX_ENDPOINTS: usize = 8;
/// Most outstanding sends per connection. It keeps the client's outgoing queue from ever being
/// full, so each send's frame is queued on its first poll: sends reach the wire in the order the
/// pump starts them, which the receivers' reorder check relies on. (The client's queue holds
/// 1024 frames, and the node reads up to 1024 unanswered sends per connection by default.)
pub(crate) const PIPELINE: usize = 512;
/// Concurrent handshakes while connecting the devices.
const CONNECT_CONCURRENCY: usize = 32;
/// Most delivery sequence numbers acknowledged in one `ACK`.
const ACK_BATCH: usize = 256;
/// How often the settle phase checks whether everything arrived.
const SETTLE_POLL: Duration = Duration::from_millis(10);
/// Longest wait for the connection closes to reach the node at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// TTL of load envelopes (short: leftovers of an interrupted run expire soon).
const TTL_SECS: u32 = 3600;

/// Runs the load described by `cfg` and reports what happened. Errors are setup failures
/// (bad configuration, node that does not start, device that cannot connect).
pub async fn run(cfg: RunConfig) -> anyhow::Result<Report> {
    cfg.validate()?;
    let devices = Devices {
        count: cfg.devices,
        account_base: cfg.account_base,
    };
    let prepared = target::prepare(&cfg, devices).await?;
    let result = run_on(&cfg, OneToOne { devices }, &prepared).await;
    prepared.shutdown().await;
    result
}

/// One in-flight send, as the pump remembers it.
#[derive(Debug, Clone, Copy)]
struct SendReq {
    intended_ns: u64,
    seq: u64,
    to: u32,
}

type SendFuture = Pin<Box<dyn Future<Output = (SendReq, Result<Accepted, ClientError>)> + Send>>;

/// State shared by every task of a run.
struct Shared {
    epoch: Instant,
    warmup_ns: u64,
    end_ns: u64,
    run_id: u64,
    size: usize,
    devices: Devices,
    next_seq: AtomicU64,
    accepted: AtomicBitmap,
    delivered: AtomicBitmap,
    c: Counters,
    errors: ErrorCounts,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn at(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }

    /// In the measured window (warm-up excluded).
    fn measured(&self, ns: u64) -> bool {
        ns >= self.warmup_ns && ns < self.end_ns
    }

    /// A fresh global sequence number for a send due at `intended_ns`.
    fn allocate(&self, intended_ns: u64) -> u64 {
        if self.measured(intended_ns) {
            Counters::inc(&self.c.issued_measured);
        }
        self.next_seq.fetch_add(1, Relaxed)
    }

    fn msg_id(&self, seq: u64) -> MessageId {
        MessageId::from_u128((u128::from(self.run_id) << 64) | u128::from(seq))
    }

    fn record_answer(&self, req: SendReq, res: Result<Accepted, ClientError>) {
        let now = self.now_ns();
        Counters::inc(&self.c.answered);
        match res {
            Ok(_) => {
                self.accepted.set(req.seq);
                Counters::inc(&self.c.accepted);
                if self.measured(req.intended_ns) {
                    Counters::inc(&self.c.accepted_measured);
                }
                if self.measured(now) {
                    Counters::inc(&self.c.accepted_in_window);
                }
            }
            Err(e) => self.errors.add(&error_name(&e)),
        }
    }
}

fn error_name(e: &ClientError) -> String {
    match e {
        ClientError::Refused { code, .. } => code.name().to_string(),
        ClientError::Closed {
            code: Some(code), ..
        } => format!("closed:{}", code.name()),
        ClientError::Closed { code: None, .. } => "closed".to_string(),
        other => format!("client:{other}"),
    }
}

async fn run_on(cfg: &RunConfig, scenario: OneToOne, p: &Prepared) -> anyhow::Result<Report> {
    let Connected { conns, endpoints } = connect_all(cfg, p).await?;
    let warmup_ns = cfg.warmup.as_nanos() as u64;
    let sh = Arc::new(Shared {
        epoch: Instant::now(),
        warmup_ns,
        end_ns: warmup_ns + cfg.duration.as_nanos() as u64,
        run_id: rand::thread_rng().next_u64(),
        size: cfg.size,
        devices: scenario.devices,
        next_seq: AtomicU64::new(0),
        accepted: AtomicBitmap::new(),
        delivered: AtomicBitmap::new(),
        c: Counters::default(),
        errors: ErrorCounts::default(),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut handles = Vec::with_capacity(conns.len());
    let mut receivers = Vec::with_capacity(conns.len());
    for (i, (conn, deliveries)) in conns.into_iter().enumerate() {
        let r = receive(conn.clone(), deliveries, sh.clone(), stop_rx.clone());
        receivers.push(tokio::spawn(r));
        handles.push((i as u32, conn));
    }

    let mut pumps = Vec::with_capacity(handles.len());
    let mut schedulers = Vec::new();
    match cfg.mode {
        Mode::OpenLoop { rate } => {
            let mut txs = Vec::with_capacity(handles.len());
            for (i, conn) in &handles {
                let (tx, rx) = mpsc::unbounded_channel();
                txs.push(tx);
                pumps.push(tokio::spawn(pump_open(*i, conn.clone(), rx, sh.clone())));
            }
            for k in 0..SCHEDULERS {
                let (txs, sh) = (txs.clone(), sh.clone());
                schedulers.push(tokio::task::spawn_blocking(move || {
                    schedule(k, rate, scenario, &txs, &sh)
                }));
            }
        }
        Mode::ClosedLoop { window } => {
            for (i, conn) in &handles {
                let pump = pump_closed(*i, conn.clone(), window, scenario, sh.clone());
                pumps.push(tokio::spawn(pump));
            }
        }
    }
    for s in schedulers {
        s.await.context("scheduler thread")?;
    }
    tokio::time::sleep_until(sh.at(sh.end_ns).into()).await;

    // Settle: wait until every send is answered and every accepted one delivered.
    let settle_start = Instant::now();
    loop {
        let allocated = sh.next_seq.load(Relaxed);
        let done = Counters::get(&sh.c.answered) == allocated
            && Counters::get(&sh.c.delivered) >= Counters::get(&sh.c.accepted);
        if done || settle_start.elapsed() >= cfg.settle {
            break;
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
    let settle = settle_start.elapsed();

    let _ = stop_tx.send(true);
    let mut hist = latency_histogram();
    for r in receivers {
        hist.add(r.await.context("receiver task")?)
            .expect("same histogram bounds");
    }
    for p in &pumps {
        p.abort();
    }
    // Flush the last acknowledgements (one PING round trip each), then close.
    futures_util::future::join_all(handles.iter().map(|(_, conn)| conn.shutdown())).await;
    let idle = futures_util::future::join_all(endpoints.iter().map(|e| e.wait_idle()));
    let _ = tokio::time::timeout(CLOSE_WAIT, idle).await;
    Ok(build_report(cfg, &sh, &hist, settle))
}

/// Connects every device. Connections share a pool of client endpoints (UDP sockets, each with
/// its own quinn driver task), spread over the `--source-ips` loopback addresses; the caller
/// keeps the endpoints alive as long as the connections.
async fn connect_all(cfg: &RunConfig, p: &Prepared) -> anyhow::Result<Connected> {
    let base = ClientConfig::new(p.addr, p.server_name.clone(), p.ca_pem.clone(), "");
    let quic_cfg = quic_client_config(&base).context("client TLS configuration")?;
    let ips = usize::from(cfg.source_ips);
    let count = ips.max(MAX_ENDPOINTS.min(p.tokens.len()));
    let endpoints = (0..count)
        .map(|e| {
            let bind = if ips > 1 {
                SocketAddr::from(([127, 0, 0, 1 + (e % ips) as u8], 0))
            } else {
                base.bind_addr()
            };
            client_endpoint(bind).with_context(|| format!("binding a client endpoint on {bind}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let connect = |i: usize| {
        let cc = ClientConfig {
            token: p.tokens[i].clone(),
            ..base.clone()
        };
        let (endpoint, quic_cfg) = (&endpoints[i % count], &quic_cfg);
        async move {
            Connection::connect_with_config(endpoint, quic_cfg, &cc)
                .await
                .with_context(|| format!("connecting device {i}"))
        }
    };
    let conns = futures_util::stream::iter(0..p.tokens.len())
        .map(connect)
        .buffered(CONNECT_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Connected { conns, endpoints })
}

/// The devices' connections and the endpoints they run on.
struct Connected {
    conns: Vec<(Connection, Deliveries)>,
    endpoints: Vec<Endpoint>,
}

/// Open-loop scheduler `k` (runs on its own thread): issues sends `k, k + S, k + 2S, ...`, each
/// at its intended time `j / rate`, until the end of the measured window.
fn schedule(
    k: u64,
    rate: f64,
    scenario: OneToOne,
    pumps: &[mpsc::UnboundedSender<SendReq>],
    sh: &Shared,
) {
    let mut rng = SmallRng::from_entropy();
    let mut j = k;
    loop {
        let intended_ns = (j as f64 * 1e9 / rate) as u64;
        if intended_ns >= sh.end_ns {
            break;
        }
        let mut now = sh.now_ns();
        if intended_ns > now {
            std::thread::sleep(Duration::from_nanos(intended_ns - now));
            now = sh.now_ns();
        }
        if now.saturating_sub(intended_ns) > LATE_NS && sh.measured(intended_ns) {
            Counters::inc(&sh.c.late_sends);
        }
        let (from, to) = scenario.pick_pair(&mut rng);
        let seq = sh.allocate(intended_ns);
        // A closed channel means the pump died; the send then counts as unanswered.
        let _ = pumps[from as usize].send(SendReq {
            intended_ns,
            seq,
            to,
        });
        j += SCHEDULERS;
    }
}

/// Hands `req` to the client and polls it once so its frame is queued now, in order (see
/// [`PIPELINE`]). Returns
/// the future to finish later, or `None` if it already finished (then it is recorded).
async fn start_send(
    conn: &Connection,
    sh: &Arc<Shared>,
    from: u32,
    sender_seq: u64,
    req: SendReq,
) -> Option<SendFuture> {
    let header = Header {
        intended_ns: req.intended_ns,
        seq: req.seq,
        sender: from,
        sender_seq,
    };
    let out = Outgoing {
        msg_id: sh.msg_id(req.seq),
        to_account: sh.devices.account(req.to),
        to_device: Devices::DEVICE_ID,
        ttl_secs: TTL_SECS,
        ephemeral: false,
        payload: header.encode(sh.size),
    };
    let conn = conn.clone();
    // Unconstrained: tokio's cooperative budget could make the first poll return Pending
    // without queueing the frame, and a later send could then overtake this one.
    let send = async move { (req, conn.send(out).await) };
    let mut fut: SendFuture = Box::pin(tokio::task::unconstrained(send));
    match std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        Poll::Ready((req, res)) => {
            sh.record_answer(req, res);
            None
        }
        Poll::Pending => Some(fut),
    }
}

/// Open-loop pump of connection `me`: sends what the schedulers hand it, in order. At most
/// [`PIPELINE`] sends are outstanding; later ones wait here, in order (their wait counts in
/// their latency, which runs from the intended time).
async fn pump_open(
    me: u32,
    conn: Connection,
    mut rx: mpsc::UnboundedReceiver<SendReq>,
    sh: Arc<Shared>,
) {
    let mut inflight = FuturesUnordered::new();
    let mut backlog = VecDeque::new();
    let mut open = true;
    let mut sender_seq = 0;
    loop {
        while inflight.len() < PIPELINE {
            let Some(req) = backlog.pop_front() else {
                break;
            };
            sender_seq += 1;
            if let Some(f) = start_send(&conn, &sh, me, sender_seq, req).await {
                inflight.push(f);
            }
        }
        tokio::select! {
            biased;
            req = rx.recv(), if open => match req {
                Some(req) => backlog.push_back(req),
                None => open = false,
            },
            Some((req, res)) = inflight.next(), if !inflight.is_empty() => sh.record_answer(req, res),
            else => break,
        }
    }
}

/// Closed-loop pump of connection `me`: keeps `window` sends outstanding until the end.
async fn pump_closed(me: u32, conn: Connection, window: u32, scenario: OneToOne, sh: Arc<Shared>) {
    let mut rng = SmallRng::from_entropy();
    let mut inflight = FuturesUnordered::new();
    let mut sender_seq = 0;
    loop {
        while inflight.len() < window as usize {
            let now = sh.now_ns();
            if now >= sh.end_ns {
                break;
            }
            let to = scenario.pick_recipient(me, &mut rng);
            let seq = sh.allocate(now);
            sender_seq += 1;
            let req = SendReq {
                intended_ns: now,
                seq,
                to,
            };
            if let Some(f) = start_send(&conn, &sh, me, sender_seq, req).await {
                inflight.push(f);
            }
        }
        match inflight.next().await {
            Some((req, res)) => sh.record_answer(req, res),
            None => break,
        }
    }
}

/// Receiver of one connection: measures, checks order and duplicates, acknowledges in batches.
/// Returns its latency histogram when told to stop.
async fn receive(
    conn: Connection,
    mut deliveries: Deliveries,
    sh: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Histogram<u64> {
    let mut rx = ReceiverState {
        hist: latency_histogram(),
        last_from: HashMap::new(),
        acks: Vec::with_capacity(ACK_BATCH),
    };
    let mut batch = Vec::with_capacity(ACK_BATCH);
    loop {
        let n = tokio::select! {
            biased;
            _ = stop.changed() => break,
            n = deliveries.next_batch(&mut batch, ACK_BATCH) => n,
        };
        if n == 0 {
            if !*stop.borrow() {
                sh.errors.add("deliveries_ended");
            }
            break;
        }
        for d in batch.drain(..) {
            rx.handle(&sh, d);
        }
        if !rx.acks.is_empty() {
            if let Err(e) = conn.ack(&rx.acks) {
                sh.errors.add(&format!("ack:{}", error_name(&e)));
            }
            rx.acks.clear();
        }
    }
    rx.hist
}

struct ReceiverState {
    hist: Histogram<u64>,
    /// Highest sender sequence seen from each sender.
    last_from: HashMap<u32, u64>,
    acks: Vec<u64>,
}

impl ReceiverState {
    fn handle(&mut self, sh: &Shared, d: Delivery) {
        let now = sh.now_ns();
        if d.seq > 0 {
            self.acks.push(d.seq);
        }
        let header = Header::decode(&d.payload);
        let ours = (d.msg_id.as_u128() >> 64) as u64 == sh.run_id;
        let Some(h) = header.filter(|_| ours) else {
            Counters::inc(&sh.c.stale);
            return;
        };
        if !sh.delivered.set(h.seq) {
            Counters::inc(&sh.c.duplicated);
            return;
        }
        Counters::inc(&sh.c.delivered);
        if sh.measured(now) {
            Counters::inc(&sh.c.delivered_in_window);
        }
        if sh.measured(h.intended_ns) {
            Counters::inc(&sh.c.delivered_measured);
            let us = now.saturating_sub(h.intended_ns) / 1000;
            self.hist.saturating_record(us.max(1));
        }
        let last = self.last_from.entry(h.sender).or_insert(0);
        if h.sender_seq < *last {
            Counters::inc(&sh.c.reordered);
        } else {
            *last = h.sender_seq;
        }
    }
}

fn build_report(cfg: &RunConfig, sh: &Shared, hist: &Histogram<u64>, settle: Duration) -> Report {
    let secs = cfg.duration.as_secs_f64();
    let allocated = sh.next_seq.load(Relaxed);
    let g = Counters::get;
    let (mode, offered, window) = match cfg.mode {
        Mode::OpenLoop { rate } => ("open-loop".to_string(), Some(rate), None),
        Mode::ClosedLoop { window } => (CLOSED_LOOP_LABEL.to_string(), None, Some(window)),
    };
    let (target, durability) = match &cfg.target {
        Target::Embedded { durability } => {
            ("embedded".to_string(), Some(durability.label().into()))
        }
        Target::Remote { addr, .. } => (addr.to_string(), None),
    };
    Report {
        mode,
        scenario: "1:1".into(),
        target,
        durability,
        offered_per_s: offered,
        closed_loop_window: window,
        delivered_per_s: g(&sh.c.delivered_in_window) as f64 / secs,
        accepted_per_s: g(&sh.c.accepted_in_window) as f64 / secs,
        latency_us: Latency::from_histogram(hist),
        sent: g(&sh.c.issued_measured),
        accepted: g(&sh.c.accepted_measured),
        delivered: g(&sh.c.delivered_measured),
        total_sent: allocated,
        lost: sh.accepted.count_and_not(&sh.delivered, allocated),
        duplicated: g(&sh.c.duplicated),
        reordered: g(&sh.c.reordered),
        late_sends: g(&sh.c.late_sends),
        unanswered: allocated.saturating_sub(g(&sh.c.answered)),
        stale_deliveries: g(&sh.c.stale),
        errors: sh.errors.snapshot(),
        duration_s: secs,
        warmup_s: cfg.warmup.as_secs_f64(),
        settle_s: settle.as_secs_f64(),
        devices: cfg.devices,
        connections: cfg.connections,
        size: cfg.size,
    }
}
