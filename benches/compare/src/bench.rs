//! The four workloads, each run against every system in turn, one right after the other.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::driver::{self, Outcome, Pace, Plan, Transport};
use crate::hearth::{self, Hearth};
use crate::nats::Nats;
use crate::natsd::NatsServer;

/// The workloads, by the letters of the comparison's brief.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Workload {
    /// (a) 1:1 saturation throughput, closed loop.
    #[serde(rename = "a_1to1_saturation")]
    Saturation,
    /// (b) 1:1 latency at a common fixed rate, open loop.
    #[serde(rename = "b_1to1_fixed_rate")]
    FixedRate,
    /// (c) group fan-out deliveries/s, closed loop.
    #[serde(rename = "c_group_fanout")]
    FanOut,
    /// (d) durable accepts/s, closed loop.
    #[serde(rename = "d_durable_accepts")]
    Durable,
}

impl Workload {
    pub(crate) fn letter(self) -> char {
        match self {
            Workload::Saturation => 'a',
            Workload::FixedRate => 'b',
            Workload::FanOut => 'c',
            Workload::Durable => 'd',
        }
    }

    pub(crate) fn title(self) -> &'static str {
        match self {
            Workload::Saturation => "1:1 saturation (closed loop)",
            Workload::FixedRate => "1:1 latency at a common fixed rate (open loop)",
            Workload::FanOut => "group fan-out (closed loop)",
            Workload::Durable => "durable acceptance (closed loop)",
        }
    }

    /// The figure compared, and whether higher is better.
    pub(crate) fn metric(self) -> (&'static str, bool) {
        match self {
            Workload::Saturation => ("msgs/s delivered", true),
            Workload::FixedRate => ("p99 µs", false),
            Workload::FanOut => ("deliveries/s", true),
            Workload::Durable => ("accepts/s (stored)", true),
        }
    }

    /// The compared figure of an outcome.
    pub(crate) fn figure(self, o: &Outcome) -> f64 {
        match self {
            Workload::Saturation | Workload::FanOut => o.deliveries_per_sec,
            Workload::FixedRate => o.delivery_latency.p99_us as f64,
            Workload::Durable => o.acks_per_sec,
        }
    }
}

/// Sizes and durations, the same for every system.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Settings {
    pub payload: usize,
    pub pairs: usize,
    pub window: usize,
    pub groups: usize,
    pub group_size: usize,
    pub fanout_window: usize,
    pub durable_conns: usize,
    pub durable_window: usize,
    pub rates: Vec<f64>,
    pub warmup_secs: f64,
    pub measure_secs: f64,
    pub settle_secs: f64,
    pub workloads: Vec<char>,
    pub hearth_ephemeral: bool,
}

/// One system under one workload.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub workload: Workload,
    /// Short key, e.g. `hearth-stored`, `nats-core`, `jetstream-sync`.
    pub key: &'static str,
    pub system: String,
    /// Hearth row (compared with the baseline) or NATS row.
    pub hearth: bool,
    /// The NATS row the Hearth rows are compared with.
    pub baseline: bool,
    /// Open loop: the offered rate (rows are compared at the same rate).
    pub rate: Option<f64>,
    pub outcome: Option<Outcome>,
    pub error: Option<String>,
}

/// The systems to compare.
pub(crate) struct Systems<'a> {
    pub hearth: hearth::Target,
    pub ca: PathBuf,
    pub core: &'a NatsServer,
    pub js_sync: &'a NatsServer,
    pub js_default: Option<&'a NatsServer>,
}

/// Runs every selected workload on every system; reports progress on stderr.
pub(crate) async fn run_all(s: &Settings, sys: &Systems<'_>) -> Vec<Row> {
    let mut rows = Vec::new();
    let plan = |pace| Plan {
        pace,
        warmup: Duration::from_secs_f64(s.warmup_secs),
        measure: Duration::from_secs_f64(s.measure_secs),
        settle: Duration::from_secs_f64(s.settle_secs),
        payload: s.payload,
    };
    let nats = |server: &NatsServer, streams: usize| {
        Nats::new(server.url.clone(), sys.ca.clone(), server.pid(), streams)
    };
    let core_name = format!("NATS core {} (TLS, at-most-once)", sys.core.version);
    let want = |w: Workload| s.workloads.contains(&w.letter());

    for w in [Workload::Saturation, Workload::FixedRate, Workload::FanOut] {
        if !want(w) {
            continue;
        }
        let paces = match w {
            Workload::Saturation => vec![Pace::Closed { window: s.window }],
            Workload::FanOut => vec![Pace::Closed {
                window: s.fanout_window,
            }],
            _ => common_rates(s, &rows)
                .into_iter()
                .map(|rate| Pace::Open { rate })
                .collect(),
        };
        for pace in paces {
            let p = plan(pace);
            let name = "Hearth stored (QUIC+TLS, fsync, at-least-once)";
            let r = measure(&mut Hearth::new(sys.hearth.clone(), false), w, s, &p).await;
            rows.push(row(w, "hearth-stored", name, true, false, r));
            if s.hearth_ephemeral {
                let name = "Hearth ephemeral (QUIC+TLS, at-most-once)";
                let r = measure(&mut Hearth::new(sys.hearth.clone(), true), w, s, &p).await;
                rows.push(row(w, "hearth-ephemeral", name, true, false, r));
            }
            let r = measure(&mut nats(sys.core, 1), w, s, &p).await;
            rows.push(row(w, "nats-core", &core_name, false, true, r));
        }
    }

    let w = Workload::Durable;
    if want(w) {
        let p = plan(Pace::Closed {
            window: s.durable_window,
        });
        let name = "Hearth ACCEPTED (fsync, group commit)";
        let r = measure(&mut Hearth::new(sys.hearth.clone(), false), w, s, &p).await;
        rows.push(row(w, "hearth-stored", name, true, false, r));
        let js = sys.js_sync;
        let name = format!("JetStream {} file, sync always, 1 stream", js.version);
        let r = measure(&mut nats(js, 1), w, s, &p).await;
        rows.push(row(w, "jetstream-sync", &name, false, true, r));
        let n = s.durable_conns;
        let name = format!("JetStream {} file, sync always, {n} streams", js.version);
        let r = measure(&mut nats(js, n), w, s, &p).await;
        rows.push(row(w, "jetstream-sync-streams", &name, false, false, r));
        if let Some(js) = sys.js_default {
            let name = format!(
                "JetStream {} file, default 2 min sync (reference)",
                js.version
            );
            let r = measure(&mut nats(js, 1), w, s, &p).await;
            rows.push(row(w, "jetstream-default", &name, false, false, r));
        }
    }
    rows
}

/// The open-loop rates: `--rate` (repeatable), or a quarter and a half of the lowest 1:1
/// saturation figure measured in (a) (so that every system can sustain them), rounded down to
/// two significant digits.
pub(crate) fn common_rates(s: &Settings, rows: &[Row]) -> Vec<f64> {
    if !s.rates.is_empty() {
        return s.rates.clone();
    }
    let lowest = rows
        .iter()
        .filter(|r| r.workload == Workload::Saturation)
        .filter_map(|r| r.outcome.as_ref())
        .map(|o| o.deliveries_per_sec)
        .fold(f64::INFINITY, f64::min);
    if !lowest.is_finite() || lowest < 100.0 {
        return vec![10_000.0];
    }
    [4.0, 2.0]
        .iter()
        .map(|d| {
            let r = lowest / d;
            let unit = 10f64.powi(r.log10().floor() as i32 - 1);
            (r / unit).floor() * unit
        })
        .collect()
}

async fn measure<T: Transport>(
    t: &mut T,
    w: Workload,
    s: &Settings,
    plan: &Plan,
) -> anyhow::Result<Outcome> {
    let topo = match w {
        Workload::Saturation | Workload::FixedRate => t.one_to_one(s.pairs).await,
        Workload::FanOut => t.fan_out(s.groups, s.group_size).await,
        Workload::Durable => t.durable(s.durable_conns).await,
    };
    let topo = match topo {
        Ok(topo) => topo,
        Err(e) => {
            t.teardown().await;
            return Err(e);
        }
    };
    let before = t.server_status().await;
    let mut out = driver::run(topo, plan, t.server_cpu()).await;
    if let (Some(a), Some(b)) = (before, t.server_status().await) {
        out.server = Some(fsync_summary(&a, &b, &out));
    }
    if w == Workload::Durable {
        match t.stored().await {
            Ok(n) => out.stored = Some(n),
            Err(e) => {
                t.teardown().await;
                return Err(e.context("reading the stored count"));
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), t.teardown()).await;
    // Let the last acknowledgements and closes settle before the next system runs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(out)
}

/// Hearth's group commits during a run, from `/v1/status` before and after it.
fn fsync_summary(
    before: &serde_json::Value,
    after: &serde_json::Value,
    o: &Outcome,
) -> serde_json::Value {
    let commits = |v: &serde_json::Value| v["fsync"]["commits"].as_u64().unwrap_or(0);
    let n = commits(after).saturating_sub(commits(before));
    serde_json::json!({
        "fsync_commits": n,
        "messages_per_commit": if n > 0 { (o.sent as f64 / n as f64 * 10.0).round() / 10.0 } else { 0.0 },
        "fsync_p50_us": after["fsync"]["p50_us"],
        "fsync_p99_us": after["fsync"]["p99_us"],
        "fsync_max_us": after["fsync"]["max_us"],
        "rss_bytes": after["rss_bytes"],
    })
}

fn row(
    w: Workload,
    key: &'static str,
    system: &str,
    hearth: bool,
    baseline: bool,
    r: anyhow::Result<Outcome>,
) -> Row {
    let row = Row {
        workload: w,
        key,
        system: system.to_string(),
        hearth,
        baseline,
        rate: r.as_ref().ok().and_then(|o| o.offered_per_sec),
        error: r.as_ref().err().map(|e| format!("{e:#}")),
        outcome: r.ok(),
    };
    eprintln!("{}", crate::report::progress_line(&row));
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rates: Vec<f64>) -> Settings {
        Settings {
            payload: 512,
            pairs: 1,
            window: 1,
            groups: 1,
            group_size: 1,
            fanout_window: 1,
            durable_conns: 1,
            durable_window: 1,
            rates,
            warmup_secs: 0.0,
            measure_secs: 1.0,
            settle_secs: 1.0,
            workloads: vec!['a'],
            hearth_ephemeral: false,
        }
    }

    fn sat(per_sec: f64) -> Row {
        Row {
            workload: Workload::Saturation,
            key: "x",
            system: "x".into(),
            hearth: false,
            baseline: false,
            rate: None,
            outcome: Some(Outcome {
                deliveries_per_sec: per_sec,
                ..Outcome::default()
            }),
            error: None,
        }
    }

    #[test]
    fn common_rates_are_a_quarter_and_half_of_the_slowest_rounded_down() {
        assert_eq!(
            common_rates(&settings(vec![1234.0]), &[sat(10.0)]),
            vec![1234.0]
        );
        let rows = [sat(46_789.0), sat(300_000.0)];
        assert_eq!(
            common_rates(&settings(vec![]), &rows),
            vec![11_000.0, 23_000.0]
        );
        assert_eq!(
            common_rates(&settings(vec![]), &[sat(3_900.0)]),
            vec![970.0, 1_900.0]
        );
        assert_eq!(common_rates(&settings(vec![]), &[]), vec![10_000.0]);
    }
}
