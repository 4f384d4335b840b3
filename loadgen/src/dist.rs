//! Distributed mode: `hearth-loadgen agent --listen ADDR` processes run shares of a load that
//! `hearth-loadgen coordinate --agents A,B ...` splits among them; the coordinator merges their
//! results (counters summed, HdrHistograms merged from their V2 serialization) and runs a
//! low-rate latency probe of its own beside the bulk load (separate connections, separate
//! histogram, like mutilate's).
//!
//! Wire: one TCP connection per run, newline-delimited JSON. Coordinator → agent
//! `{"type":"run","version":1,"config":RunConfig}`; the agent connects its devices and creates
//! its groups, answers `{"type":"ready"}` and waits for `{"type":"go"}` (sent to every agent
//! once all are ready, so the loads start together), then answers
//! `{"type":"done","report":...,"hists":...}` or `{"type":"error","message":...}`.
//!
//! Each agent has its own devices (a disjoint account range) and its own groups; 1:1 traffic
//! and groups stay within an agent, so latency is always measured on one clock.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::cli::{parse_or_exit, write_outputs, Args, EXIT_SETUP};
use crate::config::RunConfig;
use crate::report::{Latency, Report};
use crate::runner::{evaluate, run_on_after};
use crate::scenario::{Mix, Scenario};
use crate::stats::latency_histogram;
use crate::target;
use crate::timeline::{b64, deserialize, serialize, IntervalHists};

/// Version of the coordinator–agent messages.
const WIRE_VERSION: u32 = 1;
/// Accounts between two agents' ranges beyond their devices (room for the probe).
const ACCOUNT_GAP: u64 = 1000;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ToAgent {
    Run {
        version: u32,
        config: Box<RunConfig>,
    },
    Go,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum FromAgent {
    Ready,
    Done {
        report: Box<Report>,
        hists: Box<WireHists>,
    },
    Error {
        message: String,
    },
}

/// The histograms behind a report, V2-serialized.
#[derive(Debug, Default, Serialize, Deserialize)]
struct WireHists {
    #[serde(with = "b64")]
    delivery: Vec<u8>,
    #[serde(with = "b64")]
    accept: Vec<u8>,
    #[serde(with = "b64")]
    probe: Vec<u8>,
    #[serde(with = "b64")]
    offline: Vec<u8>,
    by_kind: BTreeMap<String, String>,
    intervals: Vec<IntervalHists>,
}

impl WireHists {
    fn of(r: &Report) -> WireHists {
        use base64::Engine;
        let e = &r.extra;
        WireHists {
            delivery: serialize(&e.delivery),
            accept: serialize(&e.accept),
            probe: serialize(&e.probe),
            offline: serialize(&e.offline),
            by_kind: e
                .by_kind
                .iter()
                .map(|(k, h)| {
                    let b = base64::engine::general_purpose::STANDARD.encode(serialize(h));
                    (k.clone(), b)
                })
                .collect(),
            intervals: e.interval_hists.clone(),
        }
    }

    /// Puts the histograms back into `r.extra`.
    fn restore(self, r: &mut Report) -> anyhow::Result<()> {
        use base64::Engine;
        let e = &mut r.extra;
        e.delivery = deserialize(&self.delivery)?;
        e.accept = deserialize(&self.accept)?;
        e.probe = deserialize(&self.probe)?;
        e.offline = deserialize(&self.offline)?;
        e.by_kind = self
            .by_kind
            .into_iter()
            .map(|(k, b)| {
                let bytes = base64::engine::general_purpose::STANDARD.decode(b)?;
                Ok((k, deserialize(&bytes)?))
            })
            .collect::<anyhow::Result<_>>()?;
        e.interval_hists = self.intervals;
        Ok(())
    }
}

async fn send_line<T: Serialize>(
    w: &mut (impl AsyncWriteExt + Unpin),
    msg: &T,
) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(msg)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await?;
    Ok(())
}

async fn read_line<T: for<'de> Deserialize<'de>>(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
) -> anyhow::Result<T> {
    let line = lines
        .next_line()
        .await?
        .context("the peer closed the connection")?;
    serde_json::from_str(&line).with_context(|| {
        format!(
            "bad message: {}",
            line.chars().take(200).collect::<String>()
        )
    })
}

/// Serves coordinators on `listener`: one run per connection; after `once` run, returns.
pub async fn agent(listener: TcpListener, once: bool) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        tracing::info!(%peer, "coordinator connected");
        if let Err(e) = serve_run(stream).await {
            tracing::warn!(%peer, "run failed: {e:#}");
        }
        if once {
            return Ok(());
        }
    }
}

async fn serve_run(stream: TcpStream) -> anyhow::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd).lines();
    let config = match read_line::<ToAgent>(&mut lines).await? {
        ToAgent::Run { version, config } => {
            anyhow::ensure!(
                version == WIRE_VERSION,
                "coordinator speaks version {version}, this agent {WIRE_VERSION}"
            );
            *config
        }
        ToAgent::Go => anyhow::bail!("go before run"),
    };
    let (ready_tx, ready_rx) = oneshot::channel::<()>();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let barrier = async move {
        let _ = ready_tx.send(());
        go_rx
            .await
            .map_err(|_| anyhow::anyhow!("the coordinator went away before go"))
    };
    let work = async {
        let p = target::prepare(&config.target).await?;
        let r = run_on_after(&config, &p, barrier).await;
        p.shutdown().await;
        r
    };
    tokio::pin!(work);
    // The run parks on the barrier once set up; meanwhile say ready and wait for go.
    let early = tokio::select! {
        r = &mut work => Some(r),
        _ = ready_rx => None,
    };
    let result = match early {
        Some(r) => r,
        None => {
            send_line(&mut wr, &FromAgent::Ready).await?;
            match read_line::<ToAgent>(&mut lines).await? {
                ToAgent::Go => {
                    let _ = go_tx.send(());
                }
                other => anyhow::bail!("expected go, got {other:?}"),
            }
            work.await
        }
    };
    let msg = match result {
        Ok(report) => FromAgent::Done {
            hists: Box::new(WireHists::of(&report)),
            report: Box::new(report),
        },
        Err(e) => FromAgent::Error {
            message: format!("{e:#}"),
        },
    };
    send_line(&mut wr, &msg).await
}

/// Splits `cfg` among `agents`, runs the coordinator's probe beside them (if
/// `cfg.scenario.load.probe_rate` is set), merges and evaluates.
pub async fn coordinate(cfg: RunConfig, agents: &[SocketAddr]) -> anyhow::Result<Report> {
    cfg.validate()?;
    anyhow::ensure!(!agents.is_empty(), "--agents lists no agent");
    let p = target::prepare(&cfg.target).await?;
    let result = coordinate_on(&cfg, agents, &p).await;
    p.shutdown().await;
    result
}

/// The share of agent `i` of `n`.
fn share(cfg: &RunConfig, i: usize, n: usize, target: &crate::config::Target) -> RunConfig {
    let mut c = cfg.clone();
    let s = &mut c.scenario;
    let devices = cfg.scenario.devices as usize;
    let per = devices / n + usize::from(i < devices % n);
    s.devices = per as u32;
    s.load.rate = cfg.scenario.load.rate.map(|r| r / n as f64);
    s.load.probe_rate = None;
    s.name = format!("{} (agent {} of {n})", cfg.scenario.name, i + 1);
    let stride = (devices / n + 1) as u64 + ACCOUNT_GAP;
    c.account_base = cfg.account_base + i as u64 * stride;
    c.target = target.clone();
    c.progress = false;
    c
}

/// The coordinator's probe: two devices, 1:1 at `rate`, same phases, after every agent's range.
fn probe_config(cfg: &RunConfig, n: usize, rate: f64) -> RunConfig {
    let mut c = cfg.clone();
    let devices = cfg.scenario.devices as usize;
    c.account_base = cfg.account_base + n as u64 * ((devices / n + 1) as u64 + ACCOUNT_GAP);
    c.scenario = Scenario {
        name: "probe".into(),
        devices: 2,
        seed: None,
        load: crate::scenario::Load {
            rate: Some(rate),
            closed_loop: None,
            arrivals: crate::scenario::Arrivals::Constant,
            ramp_from: rate,
            probe_rate: None,
        },
        phases: cfg.scenario.phases.clone(),
        mix: Mix::default(),
        ..Scenario::default()
    };
    c.progress = false;
    c.slos = Vec::new();
    c
}

async fn coordinate_on(
    cfg: &RunConfig,
    agents: &[SocketAddr],
    p: &target::Prepared,
) -> anyhow::Result<Report> {
    let n = agents.len();
    let remote = p.as_remote();
    let mut conns = Vec::with_capacity(n);
    for (i, a) in agents.iter().enumerate() {
        let stream = TcpStream::connect(a)
            .await
            .with_context(|| format!("connecting to agent {a}"))?;
        let (rd, mut wr) = stream.into_split();
        let msg = ToAgent::Run {
            version: WIRE_VERSION,
            config: Box::new(share(cfg, i, n, &remote)),
        };
        send_line(&mut wr, &msg).await?;
        conns.push((*a, BufReader::new(rd).lines(), wr));
    }
    // The probe runs here, on its own connections, started with the agents.
    let (probe_ready_tx, probe_ready_rx) = oneshot::channel::<()>();
    let (probe_go_tx, probe_go_rx) = oneshot::channel::<()>();
    let probe = cfg.scenario.load.probe_rate.map(|rate| {
        let pc = probe_config(cfg, n, rate);
        async move {
            let barrier = async move {
                let _ = probe_ready_tx.send(());
                probe_go_rx
                    .await
                    .map_err(|_| anyhow::anyhow!("coordinator stopped"))
            };
            run_on_after(&pc, p, barrier).await
        }
    });
    let coordinate = async {
        for (a, lines, _) in &mut conns {
            match read_line::<FromAgent>(lines).await? {
                FromAgent::Ready => {}
                FromAgent::Error { message } => anyhow::bail!("agent {a}: {message}"),
                FromAgent::Done { .. } => anyhow::bail!("agent {a} finished before go"),
            }
        }
        if cfg.scenario.load.probe_rate.is_some() {
            probe_ready_rx.await.context("the probe failed to start")?;
        }
        for (_, _, wr) in &mut conns {
            send_line(wr, &ToAgent::Go).await?;
        }
        let _ = probe_go_tx.send(());
        if cfg.progress {
            eprintln!("coordinate: {n} agents started");
        }
        let mut results = Vec::with_capacity(n);
        for (a, lines, _) in &mut conns {
            match read_line::<FromAgent>(lines).await? {
                FromAgent::Done { mut report, hists } => {
                    hists.restore(&mut report)?;
                    results.push(*report);
                }
                FromAgent::Error { message } => anyhow::bail!("agent {a}: {message}"),
                FromAgent::Ready => anyhow::bail!("agent {a} said ready twice"),
            }
        }
        anyhow::Ok(results)
    };
    let (results, probe) = match probe {
        Some(probe) => {
            let (r, p) = tokio::join!(coordinate, probe);
            (r?, Some(p.context("the coordinator's probe")?))
        }
        None => (coordinate.await?, None),
    };
    let mut merged = merge(cfg, results, probe)?;
    merged.target = format!("{} via {n} agents", merged.target);
    evaluate(&mut merged, cfg);
    Ok(merged)
}

fn add(into: &mut Histogram<u64>, h: &Histogram<u64>) {
    into.add(h).expect("same histogram bounds");
}

/// Merges the agents' reports (and the probe's) into one.
fn merge(cfg: &RunConfig, mut rs: Vec<Report>, probe: Option<Report>) -> anyhow::Result<Report> {
    let mut m = rs.remove(0);
    m.scenario = cfg.scenario.name.clone();
    m.devices = cfg.scenario.devices;
    let mut reasons: Vec<String> = m
        .self_check
        .reasons
        .iter()
        .map(|r| format!("agent 1: {r}"))
        .collect();
    for (i, r) in rs.iter().enumerate() {
        m.offered_per_s = match (m.offered_per_s, r.offered_per_s) {
            (Some(a), Some(b)) => Some(a + b),
            (a, _) => a,
        };
        m.sent_per_s += r.sent_per_s;
        m.accepted_per_s += r.accepted_per_s;
        m.delivered_per_s += r.delivered_per_s;
        m.group_deliveries_per_s += r.group_deliveries_per_s;
        m.sent += r.sent;
        m.accepted += r.accepted;
        m.delivered += r.delivered;
        m.total_sent += r.total_sent;
        m.lost += r.lost;
        m.duplicated += r.duplicated;
        m.reordered += r.reordered;
        m.late_sends += r.late_sends;
        m.unanswered += r.unanswered;
        m.stale_deliveries += r.stale_deliveries;
        m.ephemeral_unpushed += r.ephemeral_unpushed;
        m.ephemeral_lost += r.ephemeral_lost;
        for (k, v) in &r.errors {
            *m.errors.entry(k.clone()).or_default() += v;
        }
        if let (Some(a), Some(b)) = (m.fanout.as_mut(), r.fanout.as_ref()) {
            a.merge(b);
        }
        if let (Some(a), Some(b)) = (m.groups.as_mut(), r.groups.as_ref()) {
            let total = a.mean_size * f64::from(a.count) + b.mean_size * f64::from(b.count);
            a.count += b.count;
            a.min_size = a.min_size.min(b.min_size);
            a.max_size = a.max_size.max(b.max_size);
            a.mean_size = total / f64::from(a.count.max(1));
            a.messages_accepted += b.messages_accepted;
        }
        if let (Some(a), Some(b)) = (m.offline.as_mut(), r.offline.as_ref()) {
            a.devices += b.devices;
            a.delivered += b.delivered;
        }
        let c = &mut m.connections;
        c.online += r.connections.online;
        c.setup_s = c.setup_s.max(r.connections.setup_s);
        c.reconnects += r.connections.reconnects;
        c.connect_failures += r.connections.connect_failures;
        if let Some(n) = &r.node {
            if m.node.is_none_or(|mn| n.connections > mn.connections) {
                m.node = Some(*n);
            }
        }
        let sc = &mut m.self_check;
        sc.generator_saturated |= r.self_check.generator_saturated;
        sc.scheduler_lag_p99_us = sc
            .scheduler_lag_p99_us
            .max(r.self_check.scheduler_lag_p99_us);
        sc.scheduler_lag_max_us = sc
            .scheduler_lag_max_us
            .max(r.self_check.scheduler_lag_max_us);
        sc.runtime_lag_p99_us = sc.runtime_lag_p99_us.max(r.self_check.runtime_lag_p99_us);
        sc.generator_cpu_cores += r.self_check.generator_cpu_cores;
        sc.machine_cpu_cores = sc.machine_cpu_cores.max(r.self_check.machine_cpu_cores);
        reasons.extend(
            r.self_check
                .reasons
                .iter()
                .map(|x| format!("agent {}: {x}", i + 2)),
        );
        m.settle_s = m.settle_s.max(r.settle_s);
        // Histograms.
        add(&mut m.extra.delivery, &r.extra.delivery);
        add(&mut m.extra.accept, &r.extra.accept);
        add(&mut m.extra.offline, &r.extra.offline);
        for (k, h) in &r.extra.by_kind {
            let e = m
                .extra
                .by_kind
                .entry(k.clone())
                .or_insert_with(latency_histogram);
            add(e, h);
        }
        merge_timeline(&mut m, r)?;
    }
    m.self_check.reasons = reasons;
    m.latency_us = Latency::from_histogram(&m.extra.delivery);
    m.accept_latency_us = Latency::from_histogram(&m.extra.accept);
    m.latency_by_kind = m
        .extra
        .by_kind
        .iter()
        .map(|(k, h)| (k.clone(), Latency::from_histogram(h)))
        .collect();
    if let Some(o) = m.offline.as_mut() {
        o.latency_us = Latency::from_histogram(&m.extra.offline);
    }
    if let Some(p) = probe {
        m.extra.probe = p.extra.delivery.clone();
        m.probe_latency_us = Some(p.latency_us);
        for (k, v) in &p.errors {
            *m.errors.entry(format!("probe:{k}")).or_default() += v;
        }
        m.lost += p.lost;
        m.unanswered += p.unanswered;
        m.reordered += p.reordered;
        for (mi, pi) in m
            .extra
            .interval_hists
            .iter_mut()
            .zip(&p.extra.interval_hists)
        {
            mi.probe = pi.delivery.clone();
        }
    }
    Ok(m)
}

/// Adds `r`'s timeline to `m`'s, interval by interval (the loads started together).
fn merge_timeline(m: &mut Report, r: &Report) -> anyhow::Result<()> {
    let n = m.timeline.len().min(r.timeline.len());
    m.timeline.truncate(n);
    m.extra.interval_hists.truncate(n);
    for i in 0..n {
        let (a, b) = (&mut m.timeline[i], &r.timeline[i]);
        a.offered_per_s = match (a.offered_per_s, b.offered_per_s) {
            (Some(x), Some(y)) => Some(x + y),
            (x, _) => x,
        };
        a.sent_per_s += b.sent_per_s;
        a.accepted_per_s += b.accepted_per_s;
        a.delivered_per_s += b.delivered_per_s;
        a.group_delivered_per_s += b.group_delivered_per_s;
        a.errors += b.errors;
        let (ha, hb) = (&mut m.extra.interval_hists[i], &r.extra.interval_hists[i]);
        let mut d = deserialize(&ha.delivery)?;
        add(&mut d, &deserialize(&hb.delivery)?);
        let mut acc = deserialize(&ha.accept)?;
        add(&mut acc, &deserialize(&hb.accept)?);
        let q = |h: &Histogram<u64>, x: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(x)
            }
        };
        a.count = d.len();
        a.p50_us = q(&d, 0.5);
        a.p90_us = q(&d, 0.9);
        a.p99_us = q(&d, 0.99);
        a.max_us = if d.is_empty() { 0 } else { d.max() };
        a.accept_p99_us = q(&acc, 0.99);
        ha.delivery = serialize(&d);
        ha.accept = serialize(&acc);
    }
    Ok(())
}

/// Flags of `hearth-loadgen agent`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "hearth-loadgen agent",
    about = "Run shares of a load for a coordinator (`hearth-loadgen coordinate`)."
)]
pub struct AgentArgs {
    /// TCP address to listen on for coordinators; port 0 picks one (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:7450")]
    pub listen: SocketAddr,
    /// Exit after one run.
    #[arg(long)]
    pub once: bool,
}

/// Flags of `hearth-loadgen coordinate`: the agents, then the flags of a load run.
#[derive(Debug, clap::Parser)]
#[command(
    name = "hearth-loadgen coordinate",
    about = "Split a load among agents, merge their histograms, and run a latency probe \
             beside it. With --embedded the coordinator hosts the node."
)]
pub struct CoordinateArgs {
    /// Agents' addresses, comma-separated (HOST:PORT,HOST:PORT).
    #[arg(long, value_delimiter = ',', required = true)]
    pub agents: Vec<SocketAddr>,
    /// The load, as for a plain run (rate and devices are split among the agents).
    #[command(flatten)]
    pub run: Args,
}

/// `hearth-loadgen agent ...`.
pub fn agent_main(argv: &[std::ffi::OsString]) -> ExitCode {
    let args = match parse_or_exit::<AgentArgs>(argv.iter().cloned()) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let result = (|| {
        let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
        rt.block_on(async {
            let l = TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("binding {}", args.listen))?;
            println!("hearth-loadgen agent listening on {}", l.local_addr()?);
            agent(l, args.once).await
        })
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hearth-loadgen agent: {e:#}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}

/// `hearth-loadgen coordinate ...`.
pub fn coordinate_main(argv: &[std::ffi::OsString]) -> ExitCode {
    let args = match parse_or_exit::<CoordinateArgs>(argv.iter().cloned()) {
        Ok(a) => a,
        Err(code) => return code,
    };
    if args.run.find_max {
        eprintln!("hearth-loadgen coordinate: --find-max runs in one process only");
        return ExitCode::from(EXIT_SETUP);
    }
    let result = args.run.to_config().and_then(|cfg| {
        let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
        rt.block_on(coordinate(cfg, &args.agents))
    });
    match result {
        Ok(report) => {
            if args.run.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            if let Err(e) = write_outputs(&report, &args.run.outputs()) {
                eprintln!("hearth-loadgen: {e:#}");
                return ExitCode::from(EXIT_SETUP);
            }
            ExitCode::from(report.exit_code())
        }
        Err(e) => {
            eprintln!("hearth-loadgen coordinate: {e:#}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}
