//! Service-level objectives: `--slo 'p99<5ms'`, `--slo 'lost==0'`,
//! `--slo 'delivered_per_s>=10k/s'`. A metric, an operator (`<`, `<=`, `>`, `>=`, `==`, `!=`)
//! and a value with an optional unit. Besides the user's objectives, the integrity checks
//! (nothing lost, unanswered or reordered; nothing delivered twice to a device that did not
//! reconnect; every group message complete) always apply unless disabled.
//!
//! Metrics: latencies `p50 p90 p99 p999 max` (delivery to online devices), the same with a
//! prefix `accept_`, `probe_`, `group_`, `one_to_one_`, `ephemeral_`, `offline_`, `completion_`
//! (group fan-out completion; e.g. `accept_p99`), in `us`, `ms` (the default) or `s`; rates `sent_per_s accepted_per_s
//! delivered_per_s group_deliveries_per_s` (`/s`, `k/s`, `M/s`); counts `lost duplicated
//! unexpected_duplicates reordered late_sends unanswered errors fanout_missing
//! fanout_incomplete connect_failures`
//! (`k`, `M`); ratios `error_rate loss_rate late_rate` (`%` or a fraction); and
//! `rss_per_connection` (`B`, `KB`, `KiB`, `MB`, `MiB`, `GB`, `GiB`).

use serde::{Deserialize, Serialize};

use crate::report::{Latency, Report};

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl Op {
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Ge => a >= b,
            Op::Eq => a == b,
            Op::Ne => a != b,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }
}

/// What a metric measures, which decides its units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// µs.
    Latency,
    /// Per second.
    Rate,
    /// A count.
    Count,
    /// A fraction.
    Ratio,
    /// Bytes.
    Bytes,
}

/// One objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    /// As written.
    pub text: String,
    /// Metric name.
    pub metric: String,
    /// Comparison.
    pub op: Op,
    /// Threshold in the metric's base unit (µs, /s, count, fraction, bytes).
    pub value: f64,
    /// An integrity check applied by default rather than one the user asked for.
    pub implicit: bool,
}

/// The outcome of one objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloResult {
    /// As written.
    pub slo: String,
    /// Metric name.
    pub metric: String,
    /// The measured value in the base unit; None if the run has no such figure.
    pub actual: Option<f64>,
    /// Threshold in the base unit.
    pub threshold: f64,
    /// Base unit (`us`, `/s`, `count`, `ratio`, `bytes`).
    pub unit: String,
    /// Whether it held (a missing figure fails).
    pub passed: bool,
    /// A default integrity check.
    pub implicit: bool,
}

const OPS: [(&str, Op); 7] = [
    ("<=", Op::Le),
    (">=", Op::Ge),
    ("==", Op::Eq),
    ("!=", Op::Ne),
    ("<", Op::Lt),
    (">", Op::Gt),
    ("=", Op::Eq),
];

const LATENCY_PREFIXES: [&str; 8] = [
    "",
    "completion_",
    "accept_",
    "probe_",
    "group_",
    "one_to_one_",
    "ephemeral_",
    "offline_",
];

fn kind_of(metric: &str) -> Option<Kind> {
    match metric {
        "sent_per_s" | "accepted_per_s" | "delivered_per_s" | "group_deliveries_per_s" => {
            return Some(Kind::Rate)
        }
        "lost"
        | "duplicated"
        | "unexpected_duplicates"
        | "reordered"
        | "late_sends"
        | "unanswered"
        | "errors"
        | "fanout_missing"
        | "fanout_incomplete"
        | "connect_failures" => return Some(Kind::Count),
        "error_rate" | "loss_rate" | "late_rate" => return Some(Kind::Ratio),
        "rss_per_connection" => return Some(Kind::Bytes),
        _ => {}
    }
    LATENCY_PREFIXES.iter().find_map(|p| {
        let q = metric.strip_prefix(p)?;
        matches!(q, "p50" | "p90" | "p99" | "p999" | "max").then_some(Kind::Latency)
    })
}

fn unit_name(k: Kind) -> &'static str {
    match k {
        Kind::Latency => "us",
        Kind::Rate => "/s",
        Kind::Count => "count",
        Kind::Ratio => "ratio",
        Kind::Bytes => "bytes",
    }
}

/// Parses a value with its unit into the metric's base unit.
fn parse_value(text: &str, kind: Kind) -> Result<f64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e' || c == '+'))
        .unwrap_or(t.len());
    // "1e3" is a number, but a unit may start with 'e'? None do, so this is unambiguous.
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a number with a unit"))?;
    let unit = unit.trim();
    let factor = match (kind, unit) {
        (Kind::Latency, "us" | "µs") => 1.0,
        (Kind::Latency, "" | "ms") => 1e3,
        (Kind::Latency, "s") => 1e6,
        (Kind::Rate, "" | "/s") => 1.0,
        (Kind::Rate, "k" | "k/s") => 1e3,
        (Kind::Rate, "M" | "M/s") => 1e6,
        (Kind::Count, "") => 1.0,
        (Kind::Count, "k") => 1e3,
        (Kind::Count, "M") => 1e6,
        (Kind::Ratio, "") => 1.0,
        (Kind::Ratio, "%") => 0.01,
        (Kind::Bytes, "" | "B") => 1.0,
        (Kind::Bytes, "KB" | "kB") => 1e3,
        (Kind::Bytes, "KiB") => 1024.0,
        (Kind::Bytes, "MB") => 1e6,
        (Kind::Bytes, "MiB") => 1024.0 * 1024.0,
        (Kind::Bytes, "GB") => 1e9,
        (Kind::Bytes, "GiB") => 1024.0 * 1024.0 * 1024.0,
        (k, u) => return Err(format!("unit {u:?} does not fit a {} metric", unit_name(k))),
    };
    Ok(v * factor)
}

impl Slo {
    /// Parses `metric op value[unit]`.
    pub fn parse(text: &str) -> Result<Slo, String> {
        let (pos, op_text, op) = OPS
            .iter()
            .filter_map(|(t, op)| text.find(t).map(|p| (p, *t, *op)))
            .min_by_key(|(p, t, _)| (*p, std::cmp::Reverse(t.len())))
            .ok_or_else(|| format!("{text:?}: no comparison (use <, <=, >, >=, ==, !=)"))?;
        let metric = text[..pos].trim().to_ascii_lowercase();
        let kind = kind_of(&metric).ok_or_else(|| {
            format!(
                "{text:?}: unknown metric {metric:?} (try p99, accept_p99, lost, \
                 delivered_per_s, error_rate, fanout_missing, rss_per_connection)"
            )
        })?;
        let value = parse_value(&text[pos + op_text.len()..], kind)
            .map_err(|e| format!("{text:?}: {e}"))?;
        Ok(Slo {
            text: text.trim().to_string(),
            metric,
            op,
            value,
            implicit: false,
        })
    }

    fn check(metric: &str) -> Slo {
        Slo {
            text: format!("{metric}==0"),
            metric: metric.to_string(),
            op: Op::Eq,
            value: 0.0,
            implicit: true,
        }
    }

    /// Evaluates against a report.
    pub fn evaluate(&self, r: &Report) -> SloResult {
        self.evaluate_with(|m| metric_value(r, m))
    }

    /// Evaluates with `value` giving each metric's figure (None: the run has none).
    pub fn evaluate_with(&self, value: impl Fn(&str) -> Option<f64>) -> SloResult {
        let kind = kind_of(&self.metric).unwrap_or(Kind::Count);
        let actual = value(&self.metric);
        SloResult {
            slo: self.text.clone(),
            metric: self.metric.clone(),
            actual,
            threshold: self.value,
            unit: unit_name(kind).to_string(),
            passed: actual.is_some_and(|a| self.op.holds(a, self.value)),
            implicit: self.implicit,
        }
    }

    /// The text with the operator normalised (for display).
    pub fn display(&self) -> String {
        format!("{} {} {}", self.metric, self.op.text(), self.value)
    }
}

/// The objectives to apply: the user's, plus the integrity checks on metrics they left alone
/// (unless `checks` is false). `groups` adds the fan-out check.
pub(crate) fn with_checks(user: &[Slo], checks: bool, groups: bool) -> Vec<Slo> {
    let mut all = user.to_vec();
    if checks {
        let mut implicit = vec!["lost", "unanswered", "reordered", "unexpected_duplicates"];
        if groups {
            implicit.push("fanout_missing");
        }
        for m in implicit {
            if !user.iter().any(|s| s.metric == m) {
                all.push(Slo::check(m));
            }
        }
    }
    all
}

fn latency_value(l: &Latency, q: &str) -> Option<f64> {
    if l.count == 0 {
        return None;
    }
    Some(match q {
        "p50" => l.p50,
        "p90" => l.p90,
        "p99" => l.p99,
        "p999" => l.p999,
        "max" => l.max,
        _ => return None,
    } as f64)
}

fn metric_value(r: &Report, metric: &str) -> Option<f64> {
    let ratio = |n: u64, d: u64| (d > 0).then(|| n as f64 / d as f64);
    let total_errors: u64 = r.errors.values().sum();
    Some(match metric {
        "sent_per_s" => r.sent_per_s,
        "accepted_per_s" => r.accepted_per_s,
        "delivered_per_s" => r.delivered_per_s,
        "group_deliveries_per_s" => r.group_deliveries_per_s,
        "lost" => r.lost as f64,
        "duplicated" => r.duplicated as f64,
        "unexpected_duplicates" => r.unexpected_duplicates as f64,
        "reordered" => r.reordered as f64,
        "late_sends" => r.late_sends as f64,
        "unanswered" => r.unanswered as f64,
        "errors" => total_errors as f64,
        "fanout_missing" => r.fanout.map_or(0, |f| f.missing) as f64,
        "fanout_incomplete" => r.fanout.map_or(0, |f| f.incomplete) as f64,
        "connect_failures" => r.connections.connect_failures as f64,
        "error_rate" => ratio(total_errors, r.total_sent)?,
        "loss_rate" => ratio(r.lost, r.total_sent)?,
        "late_rate" => ratio(r.late_sends, r.sent)?,
        "rss_per_connection" => r.node.as_ref()?.rss_per_connection_bytes? as f64,
        m => {
            let (prefix, q) = m.rsplit_once('_').map_or(("", m), |(p, q)| (p, q));
            let l = match prefix {
                "" => Some(r.latency_us),
                "accept" => Some(r.accept_latency_us),
                "probe" => r.probe_latency_us,
                "offline" => r.offline.as_ref().map(|o| o.latency_us),
                "completion" => r.fanout.map(|f| f.completion_us),
                "group" | "one_to_one" | "ephemeral" => r.latency_by_kind.get(prefix).copied(),
                _ => None,
            }?;
            latency_value(&l, q)?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objectives_parse_with_units() {
        let s = Slo::parse("p99<5ms").unwrap();
        assert_eq!((s.metric.as_str(), s.op, s.value), ("p99", Op::Lt, 5000.0));
        assert_eq!(Slo::parse("p99 <= 250us").unwrap().value, 250.0);
        assert_eq!(Slo::parse("accept_p999<1s").unwrap().value, 1e6);
        assert_eq!(Slo::parse("probe_p50<2").unwrap().value, 2000.0);
        let s = Slo::parse("lost==0").unwrap();
        assert_eq!((s.op, s.value), (Op::Eq, 0.0));
        assert_eq!(
            Slo::parse("delivered_per_s>=10k/s").unwrap().value,
            10_000.0
        );
        assert_eq!(Slo::parse("delivered_per_s >= 1000").unwrap().op, Op::Ge);
        assert_eq!(Slo::parse("error_rate<0.1%").unwrap().value, 0.001);
        assert_eq!(
            Slo::parse("rss_per_connection<20KiB").unwrap().value,
            20_480.0
        );
        assert_eq!(Slo::parse("group_p99 != 3ms").unwrap().op, Op::Ne);
        assert_eq!(Slo::parse("completion_max<2s").unwrap().value, 2e6);
        for bad in [
            "p99",
            "p98<5ms",
            "p99<5parsecs",
            "lost<5ms",
            "rate>1",
            "p99<fast",
        ] {
            assert!(Slo::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn checks_are_added_unless_overridden() {
        let user = vec![Slo::parse("lost<10").unwrap()];
        let all = with_checks(&user, true, true);
        let names: Vec<&str> = all.iter().map(|s| s.metric.as_str()).collect();
        assert_eq!(
            names,
            [
                "lost",
                "unanswered",
                "reordered",
                "unexpected_duplicates",
                "fanout_missing"
            ]
        );
        assert!(!all[0].implicit && all[1].implicit);
        assert_eq!(with_checks(&user, false, true).len(), 1);
    }
}
