//! Runs one load: connects the devices, creates the groups, takes the offline devices away,
//! drives the senders (open-loop schedulers or closed-loop windows), samples the timeline,
//! waits for stragglers, and builds the [`Report`].
//!
//! Open loop: a few scheduler threads each own an equal share of the rate (see `arrivals`);
//! each picks the send (kind, sender, recipient) and hands it to the sender's device task at its
//! intended time, never waiting for an answer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hearth_client::{group_op, Connection, Deliveries};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::arrivals::{ArrivalStream, Schedule};
use crate::config::{RunConfig, Target};
use crate::connect::{shutdown_all, Connector};
use crate::device::{Cmd, Device};
use crate::payload::HEADER_LEN;
use crate::plan::Plan;
use crate::report::{
    ConnectionsReport, Extra, GroupsReport, Latency, NodeReport, OfflineReport, Report,
    CLOSED_LOOP_LABEL,
};
use crate::scenario::{Kind, Scenario};
use crate::selfcheck::{self, CpuSample};
use crate::shared::{PhaseTimes, SendReq, Shared};
use crate::slo;
use crate::stats::Counters;
use crate::target::{self, node_status, Prepared};
use crate::timeline::{self, SamplerCfg, Timeline};

/// Open-loop scheduler threads; each owns `1/SCHEDULERS` of the rate.
const SCHEDULERS: u64 = 2;
/// A send issued later than this after its intended time counts as late.
const LATE_NS: u64 = 1_000_000;
/// How often the settle phase checks whether everything arrived.
const SETTLE_POLL: Duration = Duration::from_millis(10);
/// Longest wait for the connection closes to reach the node at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How long devices get to stop (flush acknowledgements, close) once the run ends.
const DEVICE_STOP_WAIT: Duration = Duration::from_secs(10);
/// Accounts per group request (well under the node's frame limit).
const GROUP_CHUNK: usize = 10_000;
/// Connection attempts per device during the setup.
const SETUP_ATTEMPTS: u32 = 5;

/// Runs the load described by `cfg` and reports what happened. Errors are setup failures
/// (bad configuration, node that does not start, device that cannot connect).
pub async fn run(cfg: RunConfig) -> anyhow::Result<Report> {
    cfg.validate()?;
    let prepared = target::prepare(&cfg.target).await?;
    let result = run_on(&cfg, &prepared).await;
    prepared.shutdown().await;
    result
}

/// Runs the load against a prepared target (the capacity search reuses it).
pub(crate) async fn run_on(cfg: &RunConfig, p: &Prepared) -> anyhow::Result<Report> {
    run_on_after(cfg, p, std::future::ready(Ok(()))).await
}

/// Like [`run_on`], starting the load only when `barrier` resolves (after the setup: devices
/// connected, groups created), so that several processes start together.
pub(crate) async fn run_on_after(
    cfg: &RunConfig,
    p: &Prepared,
    barrier: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<Report> {
    cfg.validate()?;
    let s = &cfg.scenario;
    let setup_start = Instant::now();
    let rss_before = match p.admin {
        Some(a) => node_status(a).await.ok().map(|st| st.rss_bytes),
        None => None,
    };
    let run_id = rand::thread_rng().next_u64();
    let plan = Arc::new(Plan::new(s, cfg.account_base, run_id)?);
    let probe = s.load.probe_rate.is_some();
    let total = plan.devices + if probe { 2 } else { 0 };
    let connector = Arc::new(Connector::new(
        p,
        total as usize,
        s.connections.source_ips,
        s.connections.connect_rate,
    )?);
    let failures = Arc::new(AtomicU64::new(0));
    let mut conns = connect_all(&connector, &plan, total, cfg.progress, &failures).await?;
    create_groups(&plan, &conns).await?;
    // Devices offline at first were registered by connecting; now they go away.
    let away: Vec<_> = (0..plan.devices)
        .filter(|&d| plan.is_offline_at_start(d))
        .filter_map(|d| conns[d as usize].take())
        .collect();
    shutdown_all(away.iter().map(|(c, _)| c.clone())).await;
    drop(away);
    let setup_s = setup_start.elapsed().as_secs_f64();
    barrier.await?;

    let ph = &s.phases;
    let ns = |d: Duration| d.as_nanos() as u64;
    let phases = PhaseTimes {
        warmup_end: ns(ph.warmup),
        steady_start: ns(ph.warmup + ph.ramp),
        end: ns(ph.warmup + ph.ramp + ph.steady),
    };
    let sh = Arc::new(Shared::new(
        plan.clone(),
        phases,
        run_id,
        s.envelope.ttl_secs,
        probe,
    ));
    Counters::add(&sh.c.connect_failures, failures.load(Relaxed));
    let online = conns.iter().filter(|c| c.is_some()).count() as u64;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut senders = Vec::with_capacity(total as usize);
    let mut devices = Vec::with_capacity(total as usize);
    let window = s.load.closed_loop;
    for (i, conn) in conns.into_iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        let is_probe = i as u32 >= plan.devices;
        let dev = Device {
            me: i as u32,
            sh: sh.clone(),
            connector: connector.clone(),
            conn,
            rx,
            window: if is_probe { None } else { window },
            stop: stop_rx.clone(),
        };
        devices.push(tokio::spawn(dev.run()));
    }
    let senders = Arc::new(senders);

    let schedule = s.load.rate.map(|rate| {
        Schedule::new(
            phases.warmup_end,
            phases.steady_start - phases.warmup_end,
            phases.end - phases.steady_start,
            rate,
            s.load.ramp_from,
        )
    });
    let timeline = Arc::new(Mutex::new(Timeline::default()));
    let sampler = tokio::spawn(timeline::sampler(
        sh.clone(),
        SamplerCfg {
            interval: cfg.interval,
            schedule: schedule.clone(),
            admin: p.admin,
            progress: cfg.progress,
            settle: ph.settle,
        },
        stop_rx.clone(),
        timeline.clone(),
    ));
    let lag = tokio::spawn(selfcheck::runtime_lag_probe(sh.clone(), stop_rx.clone()));
    let mut background = vec![lag];
    if let Some(rate) = s.load.probe_rate {
        background.push(tokio::spawn(probe_scheduler(
            sh.clone(),
            senders.clone(),
            rate,
        )));
    }
    if s.connections.churn > 0.0 {
        background.push(tokio::spawn(churn(
            sh.clone(),
            senders.clone(),
            s.connections.churn,
        )));
    }
    let mut schedulers = Vec::new();
    if let Some(sched) = schedule {
        let seed: u64 = rand::random();
        for k in 0..SCHEDULERS {
            let (senders, sh) = (senders.clone(), sh.clone());
            let stream = ArrivalStream::new(sched.clone(), s.load.arrivals, k, SCHEDULERS, seed);
            schedulers.push(tokio::task::spawn_blocking(move || {
                schedule_sends(k, stream, &sh, &senders, seed ^ k)
            }));
        }
    }

    tokio::time::sleep_until(sh.at(phases.steady_start).into()).await;
    let cpu0 = CpuSample::now();
    for t in schedulers {
        t.await.context("scheduler thread")?;
    }
    tokio::time::sleep_until(sh.at(phases.end).into()).await;
    let cpu1 = CpuSample::now();

    // Settle: wait until every send is answered and every owed delivery arrived.
    let settle_start = Instant::now();
    loop {
        let allocated = sh.next_seq.load(Relaxed);
        let done = Counters::get(&sh.c.answered) == allocated
            && Counters::get(&sh.c.owed_delivered) >= Counters::get(&sh.c.expected);
        if done || settle_start.elapsed() >= ph.settle {
            break;
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
    let settle = settle_start.elapsed();

    let _ = stop_tx.send(true);
    // A device whose connection stopped answering must not hang the run: past the wait it is
    // aborted, and its sends still unanswered count as such in the report.
    let stop_deadline = tokio::time::Instant::now() + DEVICE_STOP_WAIT;
    let mut stuck = 0u64;
    for mut d in devices {
        match tokio::time::timeout_at(stop_deadline, &mut d).await {
            Ok(joined) => joined.context("device task")?,
            Err(_) => {
                d.abort();
                stuck += 1;
                sh.errors.add("device_stuck_at_stop");
            }
        }
    }
    if stuck > 0 {
        tracing::warn!(stuck, "devices did not stop in time and were aborted");
    }
    for b in background {
        b.abort();
    }
    connector.wait_idle(CLOSE_WAIT).await;
    sampler.await.context("sampler task")?;
    let timeline = std::mem::take(&mut *timeline.lock().expect("timeline lock"));

    let mut report = build_report(
        cfg,
        p,
        &sh,
        timeline,
        settle,
        ConnectionsReport {
            online,
            setup_s,
            reconnects: Counters::get(&sh.c.reconnects),
            connect_failures: Counters::get(&sh.c.connect_failures),
            source_ips: s.connections.source_ips,
        },
        rss_before,
        (cpu0, cpu1),
    );
    evaluate(&mut report, cfg);
    Ok(report)
}

/// Connects every device (and the probe's two), failing the setup if one cannot connect.
async fn connect_all(
    connector: &Arc<Connector>,
    plan: &Arc<Plan>,
    total: u32,
    progress: bool,
    failures: &Arc<AtomicU64>,
) -> anyhow::Result<Vec<Option<(Connection, Deliveries)>>> {
    let done = Arc::new(AtomicU64::new(0));
    let show = progress && total >= 1000;
    let mut set = JoinSet::new();
    for i in 0..total {
        let (connector, failures, done) = (connector.clone(), failures.clone(), done.clone());
        let account = plan.account(i);
        set.spawn(async move {
            let c = connector
                .connect_retry(i as usize, account, SETUP_ATTEMPTS, &failures)
                .await
                .with_context(|| format!("connecting device {i}"));
            let n = done.fetch_add(1, Relaxed) + 1;
            if show && (n % 1000 == 0 || n == u64::from(total)) {
                eprint!("\r\x1b[2Kconnected {n}/{total}");
                if n == u64::from(total) {
                    eprintln!();
                }
            }
            (i, c)
        });
    }
    let mut conns: Vec<Option<(Connection, Deliveries)>> = (0..total).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, c) = joined.context("connect task")?;
        conns[i as usize] = Some(c?);
    }
    Ok(conns)
}

/// Creates every group from its first member's connection, adding members in chunks.
async fn create_groups(
    plan: &Plan,
    conns: &[Option<(Connection, Deliveries)>],
) -> anyhow::Result<()> {
    let mut set = JoinSet::new();
    for g in &plan.groups {
        let (conn, _) = conns[g.members[0] as usize]
            .as_ref()
            .context("group creator is not connected")?;
        let conn = conn.clone();
        let accounts: Vec<u64> = g.members[1..].iter().map(|&d| plan.account(d)).collect();
        let (id, want) = (g.id, g.members.len());
        set.spawn(async move {
            let mut chunks = accounts.chunks(GROUP_CHUNK);
            let first = chunks.next().unwrap_or(&[]);
            let mut ok = conn
                .create_group(id, first)
                .await
                .with_context(|| format!("creating group {id}"))?;
            for chunk in chunks {
                ok = conn
                    .update_group(id, group_op::ADD_MEMBERS, chunk)
                    .await
                    .with_context(|| format!("adding members to group {id}"))?;
            }
            anyhow::ensure!(
                ok.members as usize == want,
                "group {id} has {} members, expected {want}",
                ok.members
            );
            anyhow::Ok(())
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.context("group task")??;
    }
    Ok(())
}

/// Open-loop scheduler `k` (on its own thread): issues its arrivals at their intended times.
fn schedule_sends(
    k: u64,
    arrivals: ArrivalStream,
    sh: &Shared,
    senders: &[mpsc::UnboundedSender<Cmd>],
    seed: u64,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    for intended_ns in arrivals {
        let mut now = sh.now_ns();
        if intended_ns > now {
            std::thread::sleep(Duration::from_nanos(intended_ns - now));
            now = sh.now_ns();
        }
        let lag = now.saturating_sub(intended_ns);
        let measured = sh.measured(intended_ns);
        if lag > LATE_NS && measured {
            Counters::inc(&sh.c.late_sends);
        }
        sh.rec.sched_lag.record(k as usize, lag / 1000, measured);
        let pick = sh.plan.pick_open(&mut rng);
        let req = SendReq {
            intended_ns,
            seq: sh.allocate(intended_ns, pick.kind),
            kind: pick.kind,
            target: pick.target,
            size: pick.size,
        };
        // A closed channel means the device task died; the send then counts as unanswered.
        let _ = senders[pick.sender as usize].send(Cmd::Send(req));
    }
}

/// The latency probe: constant-rate 1:1 sends between the two probe devices.
async fn probe_scheduler(
    sh: Arc<Shared>,
    senders: Arc<Vec<mpsc::UnboundedSender<Cmd>>>,
    rate: f64,
) {
    let Some((from, to)) = sh.probe else { return };
    let gap = 1e9 / rate;
    for j in 0.. {
        let intended_ns = (j as f64 * gap) as u64;
        if intended_ns >= sh.phases.end {
            return;
        }
        tokio::time::sleep_until(sh.at(intended_ns).into()).await;
        let req = SendReq {
            intended_ns,
            seq: sh.allocate(intended_ns, Kind::Probe),
            kind: Kind::Probe,
            target: to,
            size: HEADER_LEN.max(64) as u32,
        };
        let _ = senders[from as usize].send(Cmd::Send(req));
    }
}

/// Churn: every second, `share` of the online devices reconnect (until the end of the load).
async fn churn(sh: Arc<Shared>, senders: Arc<Vec<mpsc::UnboundedSender<Cmd>>>, share: f64) {
    let mut rng = SmallRng::from_entropy();
    let online = &sh.plan.online;
    let mut carry = 0.0;
    for sec in 1.. {
        let at = sec as u64 * 1_000_000_000;
        if at >= sh.phases.end {
            return;
        }
        tokio::time::sleep_until(sh.at(at).into()).await;
        carry += share * online.len() as f64;
        let n = carry.floor() as usize;
        carry -= n as f64;
        for _ in 0..n {
            let d = online[rng.gen_range(0..online.len())];
            let _ = senders[d as usize].send(Cmd::Reconnect);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    cfg: &RunConfig,
    p: &Prepared,
    sh: &Shared,
    timeline: Timeline,
    settle: Duration,
    connections: ConnectionsReport,
    rss_before: Option<u64>,
    cpu: (CpuSample, CpuSample),
) -> Report {
    let s: &Scenario = &cfg.scenario;
    let secs = s.phases.steady.as_secs_f64();
    let allocated = sh.next_seq.load(Relaxed);
    let g = Counters::get;
    let (mode, offered, window, arrivals) = match (s.load.rate, s.load.closed_loop) {
        (_, Some(w)) => (CLOSED_LOOP_LABEL.to_string(), None, Some(w), None),
        (rate, None) => (
            "open-loop".to_string(),
            rate,
            None,
            Some(s.load.arrivals.label().to_string()),
        ),
    };
    let (target, durability) = match &cfg.target {
        Target::Embedded { durability, .. } => {
            ("embedded".to_string(), Some(durability.label().into()))
        }
        Target::Remote { addr, .. } => (addr.to_string(), None),
    };
    let plan = &sh.plan;
    let delivery = sh.rec.delivery.total();
    let accept = sh.rec.accept.total();
    let probe = sh.rec.probe.total();
    let mut by_kind = BTreeMap::new();
    let mut kind_hists = BTreeMap::new();
    for (k, name) in [(0, "one_to_one"), (1, "group"), (2, "ephemeral")] {
        let h = sh.rec.by_kind[k].total();
        if !h.is_empty() {
            by_kind.insert(name.to_string(), Latency::from_histogram(&h));
            kind_hists.insert(name.to_string(), h);
        }
    }
    let offline_hist = sh.rec.offline.total();
    let fanout = (!plan.groups.is_empty()).then(|| sh.fanout.result());
    let groups = (!plan.groups.is_empty()).then(|| {
        let sizes: Vec<usize> = plan.groups.iter().map(|g| g.members.len()).collect();
        GroupsReport {
            count: sizes.len() as u32,
            min_size: sizes.iter().copied().min().unwrap_or(0) as u32,
            max_size: sizes.iter().copied().max().unwrap_or(0) as u32,
            mean_size: sizes.iter().sum::<usize>() as f64 / sizes.len() as f64,
            messages_accepted: g(&sh.c.group_accepted_measured),
        }
    });
    let n_off = plan.reconnect_at.iter().filter(|r| r.is_some()).count() as u32;
    let offline = (n_off > 0).then(|| OfflineReport {
        devices: n_off,
        delivered: g(&sh.c.offline_delivered),
        latency_us: Latency::from_histogram(&offline_hist),
    });
    let node = p.admin.map(|_| {
        let peak = timeline
            .node_peak
            .or(timeline.node_last)
            .unwrap_or_default();
        let per = match rss_before {
            Some(before) if peak.connections > 0 => {
                Some(peak.rss_bytes.saturating_sub(before) / peak.connections)
            }
            _ => None,
        };
        NodeReport {
            connections: peak.connections,
            rss_bytes: peak.rss_bytes,
            rss_before_bytes: rss_before,
            rss_per_connection_bytes: per,
            includes_generator: p.is_embedded(),
        }
    });
    let sched = sh.rec.sched_lag.total();
    let rt = sh.rec.runtime_lag.total();
    let q = |h: &hdrhistogram::Histogram<u64>, x: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(x)
        }
    };
    let self_check = selfcheck::verdict(selfcheck::Inputs {
        sched_lag_p99_us: q(&sched, 0.99),
        sched_lag_max_us: if sched.is_empty() { 0 } else { sched.max() },
        runtime_lag_p99_us: q(&rt, 0.99),
        late_sends: g(&sh.c.late_sends),
        sends: g(&sh.c.issued_measured),
        cpu: cpu.0.cores_until(&cpu.1),
        latency_p99_us: q(&delivery, 0.99),
    });
    if self_check.generator_saturated {
        for r in &self_check.reasons {
            tracing::warn!("generator saturated: {r}");
        }
    }
    let m = &s.mix;
    Report {
        mode,
        scenario: s.name.clone(),
        arrivals,
        target,
        durability,
        offered_per_s: offered,
        closed_loop_window: window,
        sent_per_s: g(&sh.c.issued_measured) as f64 / secs,
        delivered_per_s: g(&sh.c.delivered_in_window) as f64 / secs,
        accepted_per_s: g(&sh.c.accepted_in_window) as f64 / secs,
        group_deliveries_per_s: g(&sh.c.group_delivered_in_window) as f64 / secs,
        latency_us: Latency::from_histogram(&delivery),
        latency_by_kind: by_kind,
        accept_latency_us: Latency::from_histogram(&accept),
        probe_latency_us: sh.probe.map(|_| Latency::from_histogram(&probe)),
        offline,
        sent: g(&sh.c.issued_measured),
        accepted: g(&sh.c.accepted_measured),
        delivered: g(&sh.c.delivered_measured),
        total_sent: allocated,
        lost: sh.accepted.count_and_not(&sh.delivered, allocated) + fanout.map_or(0, |f| f.missing),
        duplicated: g(&sh.c.duplicated),
        unexpected_duplicates: g(&sh.c.unexpected_duplicates),
        reordered: g(&sh.c.reordered),
        late_sends: g(&sh.c.late_sends),
        unanswered: allocated.saturating_sub(g(&sh.c.answered)),
        stale_deliveries: g(&sh.c.stale),
        ephemeral_unpushed: g(&sh.c.ephemeral_unpushed),
        ephemeral_lost: sh.eph_pushed.count_and_not(&sh.eph_delivered, allocated),
        fanout,
        groups,
        errors: sh.errors.snapshot(),
        connections,
        node,
        self_check,
        slo: Vec::new(),
        passed: true,
        duration_s: secs,
        warmup_s: s.phases.warmup.as_secs_f64(),
        ramp_s: s.phases.ramp.as_secs_f64(),
        settle_s: settle.as_secs_f64(),
        devices: s.devices,
        size: s.envelope.size.describe(),
        mix: format!(
            "1:1 {} / group {} / ephemeral {}",
            m.one_to_one, m.group, m.ephemeral
        ),
        started_unix_s: sh.started_unix_s,
        timeline: timeline.intervals,
        extra: Extra {
            delivery,
            accept,
            probe,
            offline: offline_hist,
            by_kind: kind_hists,
            interval_hists: timeline.hists,
        },
    }
}

/// Evaluates the objectives and checks of `cfg` into the report.
pub(crate) fn evaluate(report: &mut Report, cfg: &RunConfig) {
    let all = slo::with_checks(&cfg.slos, cfg.checks, report.fanout.is_some());
    report.slo = all.iter().map(|s| s.evaluate(report)).collect();
    report.passed = report.slo.iter().all(|r| r.passed);
}
