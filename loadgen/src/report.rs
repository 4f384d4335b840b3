//! The result of a run: a human table and a JSON summary object.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Label printed on every closed-loop output.
pub const CLOSED_LOOP_LABEL: &str = "CLOSED LOOP (saturation)";

/// Latency percentiles in microseconds, measured from the intended send time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Latency {
    /// Deliveries measured.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

impl Latency {
    pub(crate) fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Summary of one run. Rates are per second of the measured window. Loss, duplicate and
/// reorder counts cover every send of the run, warm-up included.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `open-loop`, or `CLOSED LOOP (saturation)`.
    pub mode: String,
    /// Traffic scenario (`1:1`).
    pub scenario: String,
    /// `embedded` or the node's address.
    pub target: String,
    /// Embedded node durability (`sync`, `none (UNSAFE...)`), None for a remote node.
    pub durability: Option<String>,
    /// Offered envelopes/s (open loop); None in closed loop, where nothing is offered.
    pub offered_per_s: Option<f64>,
    /// Outstanding sends per connection (closed loop only).
    pub closed_loop_window: Option<u32>,
    /// Deliveries (first copies) received during the measured window, per second.
    pub delivered_per_s: f64,
    /// `ACCEPTED` answers received during the measured window, per second.
    pub accepted_per_s: f64,
    /// Latency of measured sends (intended time in the window), delivery time minus intended
    /// send time, in µs.
    pub latency_us: Latency,
    /// Sends whose intended time is in the measured window.
    pub sent: u64,
    /// Of those, accepted by the node.
    pub accepted: u64,
    /// Of those, delivered (first copies).
    pub delivered: u64,
    /// All sends of the run, warm-up included.
    pub total_sent: u64,
    /// Accepted sends never delivered by the end of the settle period.
    pub lost: u64,
    /// Deliveries of a sequence number already received.
    pub duplicated: u64,
    /// Deliveries that arrived before an earlier send of the same sender to the same receiver.
    pub reordered: u64,
    /// Measured sends issued more than 1 ms after their intended time (scheduler behind).
    pub late_sends: u64,
    /// Sends with no answer by the end of the settle period.
    pub unanswered: u64,
    /// Deliveries left over from another run (acknowledged and ignored).
    pub stale_deliveries: u64,
    /// Refused or failed sends by error name.
    pub errors: BTreeMap<String, u64>,
    /// Measured window, seconds.
    pub duration_s: f64,
    /// Warm-up, seconds.
    pub warmup_s: f64,
    /// Time spent waiting for stragglers after the last send, seconds.
    pub settle_s: f64,
    /// Simulated devices.
    pub devices: u32,
    /// Connections.
    pub connections: u32,
    /// Payload bytes.
    pub size: usize,
}

impl Report {
    /// Whether this is a closed-loop (saturation) run.
    pub fn is_closed_loop(&self) -> bool {
        self.closed_loop_window.is_some()
    }

    /// Process exit code for this report: 0 for now. Issue 4's SLO flags (latency and loss
    /// targets) will turn violations into a non-zero code here.
    pub fn exit_code(&self) -> u8 {
        0
    }

    /// One JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("report serializes")
    }

    /// The human-readable table.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let ms = |us: u64| us as f64 / 1000.0;
        let mut row = |k: &str, v: String| {
            let _ = writeln!(s, "  {k:<22} {v}");
        };
        let mut head = String::new();
        if self.is_closed_loop() {
            let _ = writeln!(
                head,
                "=== {CLOSED_LOOP_LABEL}: latency is from the actual send time and hides \
                 queueing; use --rate for latency figures ==="
            );
        }
        let _ = writeln!(
            head,
            "hearth-loadgen {} {}: {} devices over {} connections, {}-byte payloads",
            self.mode, self.scenario, self.devices, self.connections, self.size
        );
        let _ = writeln!(
            head,
            "target {}{}, measured {:.2} s after {:.2} s warm-up (settled in {:.2} s)",
            self.target,
            self.durability
                .as_deref()
                .map(|d| format!(" (durability {d})"))
                .unwrap_or_default(),
            self.duration_s,
            self.warmup_s,
            self.settle_s
        );
        match (self.offered_per_s, self.closed_loop_window) {
            (Some(r), _) => row("offered", format!("{r:.1} /s")),
            (None, Some(w)) => row(
                "offered",
                format!("{CLOSED_LOOP_LABEL}, {w} outstanding/conn"),
            ),
            (None, None) => {}
        }
        row("accepted", format!("{:.1} /s", self.accepted_per_s));
        row("delivered", format!("{:.1} /s", self.delivered_per_s));
        let l = &self.latency_us;
        row(
            "latency ms",
            format!(
                "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (n={})",
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p999),
                ms(l.max),
                l.count
            ),
        );
        row(
            "sent/accepted/deliv.",
            format!(
                "{} / {} / {} (measured window)",
                self.sent, self.accepted, self.delivered
            ),
        );
        row("lost", self.lost.to_string());
        row("duplicated", self.duplicated.to_string());
        row("reordered", self.reordered.to_string());
        row("late sends (>1 ms)", self.late_sends.to_string());
        row("unanswered", self.unanswered.to_string());
        if self.stale_deliveries > 0 {
            row("stale deliveries", self.stale_deliveries.to_string());
        }
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        row("errors", errors);
        head + &s
    }
}
