//! The run over time: every interval the sampler takes the interval histograms and counter
//! deltas, keeps one [`Interval`] row (and the interval histograms, V2-serialized, for the
//! interval log and for merging agents), fetches the node's status, and redraws the progress
//! line.

use std::io::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::arrivals::Schedule;
use crate::shared::Shared;
use crate::stats::{latency_histogram, Counters};
use crate::target::{node_status, NodeStatus};

/// One interval of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Start of the interval, seconds since the start of the warm-up.
    pub start_s: f64,
    /// Length, seconds.
    pub len_s: f64,
    /// Phase at the end of the interval (`warmup`, `ramp`, `steady`, `settle`).
    pub phase: String,
    /// Scheduled rate at the middle of the interval (open loop), sends/s.
    pub offered_per_s: Option<f64>,
    /// Sends issued, per second.
    pub sent_per_s: f64,
    /// `ACCEPTED` answers, per second.
    pub accepted_per_s: f64,
    /// First copies delivered (every kind), per second.
    pub delivered_per_s: f64,
    /// Group deliveries (first copies), per second.
    pub group_delivered_per_s: f64,
    /// Refused or failed requests in the interval.
    pub errors: u64,
    /// Deliveries recorded in the interval (online devices), and their latency in µs.
    pub count: u64,
    /// Median delivery latency, µs.
    pub p50_us: u64,
    /// 90th percentile, µs.
    pub p90_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// Largest, µs.
    pub max_us: u64,
    /// p99 of intended send time to `ACCEPTED`, µs.
    pub accept_p99_us: u64,
    /// Node connections (from `/v1/status`), when known.
    pub node_connections: Option<u64>,
    /// Node RSS bytes (from `/v1/status`), when known.
    pub node_rss_bytes: Option<u64>,
}

/// The interval histograms of one interval, V2-serialized.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct IntervalHists {
    pub start_s: f64,
    pub len_s: f64,
    #[serde(with = "b64")]
    pub delivery: Vec<u8>,
    #[serde(with = "b64")]
    pub accept: Vec<u8>,
    #[serde(with = "b64")]
    pub probe: Vec<u8>,
}

/// Everything the sampler collected.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Timeline {
    pub intervals: Vec<Interval>,
    pub hists: Vec<IntervalHists>,
    /// Latest node status, and the highest connection count seen with its RSS.
    pub node_last: Option<NodeStatus>,
    pub node_peak: Option<NodeStatus>,
}

pub(crate) fn serialize(h: &Histogram<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut out)
        .expect("serializing to memory");
    out
}

pub(crate) fn deserialize(b: &[u8]) -> anyhow::Result<Histogram<u64>> {
    if b.is_empty() {
        return Ok(latency_histogram());
    }
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut &b[..])
        .map_err(|e| anyhow::anyhow!("bad histogram: {e:?}"))?;
    Ok(h)
}

/// Counter values at the previous tick.
#[derive(Default)]
struct Last {
    sent: u64,
    accepted: u64,
    delivered: u64,
    group: u64,
    errors: u64,
}

/// What the sampler needs besides the shared state.
pub(crate) struct SamplerCfg {
    pub interval: Duration,
    pub schedule: Option<Schedule>,
    pub admin: Option<std::net::SocketAddr>,
    pub progress: bool,
    pub settle: Duration,
}

/// Samples every interval until `stop`, then once more; returns the timeline.
pub(crate) async fn sampler(
    sh: Arc<Shared>,
    cfg: SamplerCfg,
    mut stop: tokio::sync::watch::Receiver<bool>,
    out: Arc<Mutex<Timeline>>,
) {
    let mut last = Last::default();
    let mut start_ns = 0u64;
    let mut cumulative = latency_histogram();
    let mut tick = tokio::time::interval_at(sh.at(0).into(), cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is at the start
    let mut status = None;
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        if let Some(admin) = cfg.admin {
            // One request per interval; a failure keeps the previous value.
            if let Ok(s) = tokio::time::timeout(cfg.interval, node_status(admin)).await {
                status = s.ok();
            }
        }
        let now = sh.now_ns();
        let (row, hists) = take(&sh, &cfg, &mut last, start_ns, now, status, &mut cumulative);
        if cfg.progress {
            progress_line(&sh, &cfg, &row, &cumulative, now);
        }
        {
            let mut t = out.lock().expect("timeline lock");
            if let Some(s) = status {
                t.node_last = Some(s);
                if t.node_peak.is_none_or(|p| s.connections >= p.connections) {
                    t.node_peak = Some(s);
                }
            }
            if row.len_s > 0.0 {
                t.intervals.push(row);
                t.hists.push(hists);
            }
        }
        start_ns = now;
        if stopping {
            if cfg.progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                eprintln!();
            }
            return;
        }
    }
}

fn rate(now: u64, last: &mut u64, secs: f64) -> f64 {
    let d = now.saturating_sub(*last);
    *last = now;
    d as f64 / secs
}

#[allow(clippy::too_many_arguments)]
fn take(
    sh: &Shared,
    cfg: &SamplerCfg,
    last: &mut Last,
    start_ns: u64,
    now: u64,
    status: Option<NodeStatus>,
    cumulative: &mut Histogram<u64>,
) -> (Interval, IntervalHists) {
    let secs = (now.saturating_sub(start_ns) as f64 / 1e9).max(1e-9);
    let g = |c: &AtomicU64| Counters::get(c);
    let delivery = sh.rec.delivery.take_interval();
    let accept = sh.rec.accept.take_interval();
    let probe = sh.rec.probe.take_interval();
    cumulative.add(&delivery).expect("same bounds");
    let errors = g(&sh.c.errors);
    let row = Interval {
        start_s: start_ns as f64 / 1e9,
        len_s: now.saturating_sub(start_ns) as f64 / 1e9,
        phase: sh.phases.name_at(now.saturating_sub(1)).to_string(),
        offered_per_s: cfg
            .schedule
            .as_ref()
            .map(|s| s.rate_at((start_ns + now) / 2)),
        sent_per_s: rate(
            sh.next_seq.load(std::sync::atomic::Ordering::Relaxed),
            &mut last.sent,
            secs,
        ),
        accepted_per_s: rate(g(&sh.c.accepted), &mut last.accepted, secs),
        delivered_per_s: rate(g(&sh.c.delivered), &mut last.delivered, secs),
        group_delivered_per_s: rate(g(&sh.c.group_delivered), &mut last.group, secs),
        errors: errors - std::mem::replace(&mut last.errors, errors),
        count: delivery.len(),
        p50_us: q(&delivery, 0.5),
        p90_us: q(&delivery, 0.9),
        p99_us: q(&delivery, 0.99),
        max_us: if delivery.is_empty() {
            0
        } else {
            delivery.max()
        },
        accept_p99_us: q(&accept, 0.99),
        node_connections: status.map(|s| s.connections),
        node_rss_bytes: status.map(|s| s.rss_bytes),
    };
    let hists = IntervalHists {
        start_s: row.start_s,
        len_s: row.len_s,
        delivery: serialize(&delivery),
        accept: serialize(&accept),
        probe: serialize(&probe),
    };
    (row, hists)
}

fn q(h: &Histogram<u64>, quantile: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(quantile)
    }
}

/// Redraws the one-line progress display on stderr (or appends a line when it is not a terminal).
fn progress_line(
    sh: &Shared,
    cfg: &SamplerCfg,
    row: &Interval,
    cumulative: &Histogram<u64>,
    now: u64,
) {
    let ms = |us: u64| us as f64 / 1e3;
    let el = now as f64 / 1e9;
    let end = sh.phases.end as f64 / 1e9;
    let when = if now < sh.phases.end {
        format!("{el:5.1}s / {end:.0}s, {:.0}s left", end - el)
    } else {
        format!(
            "{el:5.1}s, settling (up to {:.0}s)",
            cfg.settle.as_secs_f64()
        )
    };
    let offered = match (&cfg.schedule, row.offered_per_s) {
        (Some(_), Some(r)) => format!("offered {r:.0}/s "),
        _ => "CLOSED LOOP ".to_string(),
    };
    let line = format!(
        "[{} {when}] {offered}sent {:.0}/s deliv {:.0}/s p99 {:.2}ms (run {:.2}ms) errors {} late {}",
        row.phase,
        row.sent_per_s,
        row.delivered_per_s,
        ms(row.p99_us),
        ms(q(cumulative, 0.99)),
        Counters::get(&sh.c.errors),
        Counters::get(&sh.c.late_sends),
    );
    let mut err = std::io::stderr().lock();
    if std::io::IsTerminal::is_terminal(&err) {
        let _ = write!(err, "\r\x1b[2K{line}");
    } else {
        // A log, not a screen: one line per interval.
        let _ = writeln!(err, "{line}");
    }
    let _ = err.flush();
}

/// Base64 for histogram bytes in JSON.
pub(crate) mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(b))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_round_trip_through_v2() {
        let mut h = latency_histogram();
        for v in [1, 10, 100, 1000, 123_456] {
            h.record(v).unwrap();
        }
        let back = deserialize(&serialize(&h)).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
        assert_eq!(deserialize(&[]).unwrap().len(), 0);
        assert!(deserialize(b"junk").is_err());
    }
}
