//! The comparison table (stdout), progress lines (stderr) and `results.json`.

use std::fmt::Write as _;

use serde::Serialize;

use crate::bench::{Row, Workload};
use crate::driver::Outcome;

/// Cores used by other processes above which a run is flagged as disturbed.
const BUSY: f64 = 0.25;

/// One Hearth/NATS ratio.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Ratio {
    pub workload: Workload,
    pub metric: &'static str,
    pub higher_is_better: bool,
    pub hearth: &'static str,
    pub nats: &'static str,
    pub hearth_value: f64,
    pub nats_value: f64,
    /// Hearth / NATS.
    pub ratio: f64,
    /// Against the workload's baseline NATS row (the one in the table's ratio column).
    pub baseline: bool,
    /// Open loop: the common offered rate.
    pub rate: Option<f64>,
}

/// Hearth/NATS for every Hearth row against every NATS row of the same workload (the
/// baseline row first).
pub(crate) fn ratios(rows: &[Row]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for h in rows.iter().filter(|r| r.hearth) {
        let Some(ho) = &h.outcome else { continue };
        let mut nats: Vec<&Row> = rows
            .iter()
            .filter(|r| !r.hearth && r.workload == h.workload && r.rate == h.rate)
            .collect();
        nats.sort_by_key(|r| !r.baseline);
        for n in nats {
            let Some(no) = &n.outcome else { continue };
            let (metric, higher) = h.workload.metric();
            let (hv, nv) = (h.workload.figure(ho), h.workload.figure(no));
            out.push(Ratio {
                workload: h.workload,
                metric,
                higher_is_better: higher,
                hearth: h.key,
                nats: n.key,
                hearth_value: hv,
                nats_value: nv,
                ratio: if nv > 0.0 {
                    round(hv / nv, 3)
                } else {
                    f64::NAN
                },
                baseline: n.baseline,
                rate: h.rate,
            });
        }
    }
    out
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// A compact line for stderr as each run finishes.
pub(crate) fn progress_line(row: &Row) -> String {
    let head = format!("[{}] {:<55}", row.workload.letter(), row.system);
    match (&row.outcome, &row.error) {
        (Some(o), _) => {
            let (metric, _) = row.workload.metric();
            let lat = latency_of(row.workload, o);
            format!(
                "{head} {} {metric}, p99 {} µs, checked {}, lost {}, errors {}, cores srv/gen/other {:.2}/{:.2}/{:.2}",
                big(row.workload.figure(o)),
                lat.p99_us,
                checked(row.workload, o),
                lost(row.workload, o),
                o.errors,
                o.cpu.server_cores,
                o.cpu.generator_cores,
                o.cpu.other_cores
            )
        }
        (None, Some(e)) => format!("{head} FAILED: {e}"),
        (None, None) => format!("{head} no result"),
    }
}

/// The latency that matters for a workload: deliveries, or acknowledgements for durable runs.
fn latency_of(w: Workload, o: &Outcome) -> crate::stats::Latency {
    match (w, &o.ack_latency) {
        (Workload::Durable, Some(l)) => l.clone(),
        _ => o.delivery_latency.clone(),
    }
}

fn checked(w: Workload, o: &Outcome) -> String {
    match w {
        Workload::Durable => format!("{}/{} stored", o.stored.unwrap_or(0), o.acked),
        _ => format!("{}/{}", o.delivered, o.expected_deliveries),
    }
}

fn lost(w: Workload, o: &Outcome) -> u64 {
    match w {
        Workload::Durable => o.acked.abs_diff(o.stored.unwrap_or(0)) + o.unanswered,
        _ => o.lost + o.unanswered,
    }
}

/// Thousands separators.
fn big(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The table printed at the end.
pub(crate) fn table(rows: &[Row], ratios: &[Ratio], header: &str) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "{header}");
    let mut current = None;
    for row in rows {
        if current != Some((row.workload, row.rate.map(f64::to_bits))) {
            current = Some((row.workload, row.rate.map(f64::to_bits)));
            let (metric, higher) = row.workload.metric();
            let first = rows.iter().find_map(|r| {
                r.outcome
                    .as_ref()
                    .filter(|_| r.workload == row.workload && r.rate == row.rate)
            });
            let pace = first.map(|o| o.pace.clone()).unwrap_or_default();
            let _ = writeln!(
                t,
                "\n({}) {} — {}; figure: {metric} ({} is better)",
                row.workload.letter(),
                row.workload.title(),
                pace,
                if higher { "higher" } else { "lower" }
            );
            let _ = writeln!(
                t,
                "  {:<58} {:>12} {:>8} {:>8} {:>9} {:>9} {:>22} {:>6} {:>5} {:>5} {:>15} {:>12}",
                "system",
                metric,
                "p50 µs",
                "p99 µs",
                "p99.9 µs",
                "max µs",
                "checked",
                "lost",
                "dup",
                "err",
                "cpu srv/gen/oth",
                "Hearth/NATS"
            );
        }
        let Some(o) = &row.outcome else {
            let _ = writeln!(
                t,
                "  {:<58} FAILED: {}",
                row.system,
                row.error.as_deref().unwrap_or("?")
            );
            continue;
        };
        let lat = latency_of(row.workload, o);
        let ratio = ratios
            .iter()
            .find(|r| {
                r.workload == row.workload
                    && r.rate == row.rate
                    && r.hearth == row.key
                    && row.hearth
                    && r.baseline
            })
            .map(|r| format!("{:.2}x", r.ratio))
            .unwrap_or_else(|| {
                if row.baseline {
                    "baseline".into()
                } else {
                    String::new()
                }
            });
        let _ = writeln!(
            t,
            "  {:<58} {:>12} {:>8} {:>8} {:>9} {:>9} {:>22} {:>6} {:>5} {:>5} {:>15} {:>12}",
            row.system,
            big(row.workload.figure(o)),
            lat.p50_us,
            lat.p99_us,
            lat.p999_us,
            lat.max_us,
            checked(row.workload, o),
            lost(row.workload, o),
            o.duplicates,
            o.errors,
            format!(
                "{:.2}/{:.2}/{:.2}",
                o.cpu.server_cores, o.cpu.generator_cores, o.cpu.other_cores
            ),
            ratio
        );
        if let Some(e) = &o.first_error {
            let _ = writeln!(t, "      first error: {e}");
        }
        if let Some(v) = o
            .server
            .as_ref()
            .filter(|v| v["fsync_commits"].as_u64() > Some(0))
        {
            let _ = writeln!(
                t,
                "      node: {} fsync commits, {} messages per commit, fsync p50/p99 {}/{} µs",
                v["fsync_commits"], v["messages_per_commit"], v["fsync_p50_us"], v["fsync_p99_us"]
            );
        }
        if o.late_sends > 0 {
            let _ = writeln!(
                t,
                "      ! {} sends left more than 1 ms after their intended time (generator lag; \
                 their latency counts from the intended time)",
                o.late_sends
            );
        }
        if o.cpu.other_cores > BUSY {
            let _ = writeln!(
                t,
                "      ! other processes used {:.2} cores during this run: figures understated",
                o.cpu.other_cores
            );
        }
    }
    let _ = writeln!(t, "\nRatios (Hearth / NATS):");
    for r in ratios {
        let metric = match r.rate {
            Some(rate) => format!("{} @ {}/s", r.metric, big(rate)),
            None => r.metric.to_string(),
        };
        let better = if r.higher_is_better {
            "higher"
        } else {
            "lower"
        };
        let _ = writeln!(
            t,
            "  ({}) {:<17} vs {:<22} {:<22} {:>12} / {:>12} = {:.2}x ({better} is better)",
            r.workload.letter(),
            r.hearth,
            r.nats,
            metric,
            big(r.hearth_value),
            big(r.nats_value),
            r.ratio,
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands() {
        assert_eq!(big(0.0), "0");
        assert_eq!(big(999.4), "999");
        assert_eq!(big(1000.0), "1,000");
        assert_eq!(big(1234567.0), "1,234,567");
    }

    #[test]
    fn ratio_against_the_baseline_row() {
        let mk = |key, hearth, baseline, v| Row {
            workload: Workload::Saturation,
            key,
            system: key.to_string(),
            hearth,
            baseline,
            rate: None,
            outcome: Some(Outcome {
                deliveries_per_sec: v,
                ..Outcome::default()
            }),
            error: None,
        };
        let rows = vec![
            mk("h", true, false, 50.0),
            mk("r", false, false, 10.0),
            mk("n", false, true, 200.0),
        ];
        let r = ratios(&rows);
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].hearth, r[0].nats, r[0].ratio, r[0].baseline),
            ("h", "n", 0.25, true)
        );
        assert_eq!((r[1].nats, r[1].ratio, r[1].baseline), ("r", 5.0, false));
        assert!(table(&rows, &r, "t").contains("0.25x"));
    }
}
