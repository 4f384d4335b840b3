//! The result of a run: a human table and a JSON summary object.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::fanout::FanoutResult;
use crate::selfcheck::SelfCheck;
use crate::slo::SloResult;
use crate::stats::latency_histogram;
use crate::timeline::{Interval, IntervalHists};

/// Label printed on every closed-loop output.
pub const CLOSED_LOOP_LABEL: &str = "CLOSED LOOP (saturation)";

/// Latency percentiles in microseconds, measured from the intended send time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    /// Values recorded.
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

    fn line(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        format!(
            "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (n={})",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
            self.count
        )
    }
}

/// Devices that were offline and came back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct OfflineReport {
    /// Devices offline at first.
    pub devices: u32,
    /// Envelopes they received that were sent while they were away (first copies).
    pub delivered: u64,
    /// Latency of those, from the intended send time (includes the time away).
    pub latency_us: Latency,
}

/// Groups of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupsReport {
    /// Groups created.
    pub count: u32,
    /// Smallest membership.
    pub min_size: u32,
    /// Largest membership.
    pub max_size: u32,
    /// Mean membership.
    pub mean_size: f64,
    /// Group messages accepted in the measured window.
    pub messages_accepted: u64,
}

/// Connection figures of the generator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectionsReport {
    /// Connections open at the start of the load (online devices, probe included).
    pub online: u64,
    /// Setup time: connecting every device, creating the groups, seconds.
    pub setup_s: f64,
    /// Graceful reconnects made for churn.
    pub reconnects: u64,
    /// Failed connection attempts (retried).
    pub connect_failures: u64,
    /// Source addresses the sockets were spread over.
    pub source_ips: u8,
}

/// What the node reported in `/v1/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// Connections at the highest point seen.
    pub connections: u64,
    /// RSS at that point, bytes.
    pub rss_bytes: u64,
    /// RSS at the start of the run (before the devices connected), bytes, when known.
    pub rss_before_bytes: Option<u64>,
    /// (RSS − RSS before) / connections, when both are known and connections > 0.
    pub rss_per_connection_bytes: Option<u64>,
    /// The node runs inside the load generator's process: its RSS includes the generator.
    pub includes_generator: bool,
}

/// Histograms behind the report (not in the JSON summary).
#[derive(Debug, Clone)]
pub(crate) struct Extra {
    pub delivery: Histogram<u64>,
    pub accept: Histogram<u64>,
    pub probe: Histogram<u64>,
    pub offline: Histogram<u64>,
    /// Delivery latency by kind (`one_to_one`, `group`, `ephemeral`).
    pub by_kind: BTreeMap<String, Histogram<u64>>,
    pub interval_hists: Vec<IntervalHists>,
}

impl Default for Extra {
    fn default() -> Extra {
        Extra {
            delivery: latency_histogram(),
            accept: latency_histogram(),
            probe: latency_histogram(),
            offline: latency_histogram(),
            by_kind: BTreeMap::new(),
            interval_hists: Vec::new(),
        }
    }
}

/// Summary of one run. Rates are per second of the steady (measured) window. Loss, duplicate
/// and reorder counts cover every send of the run, warm-up included.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// `open-loop`, or `CLOSED LOOP (saturation)`.
    pub mode: String,
    /// Scenario name.
    pub scenario: String,
    /// `constant` or `poisson` (open loop).
    pub arrivals: Option<String>,
    /// `embedded`, the node's address, or `N agents` (distributed).
    pub target: String,
    /// Embedded node durability (`sync`, `none (UNSAFE...)`), None for a remote node.
    pub durability: Option<String>,
    /// Offered sends/s in the steady phase (open loop); None in closed loop.
    pub offered_per_s: Option<f64>,
    /// Outstanding sends per connection (closed loop only).
    pub closed_loop_window: Option<u32>,
    /// Sends issued during the measured window, per second.
    pub sent_per_s: f64,
    /// `ACCEPTED` answers received during the measured window, per second.
    pub accepted_per_s: f64,
    /// Deliveries (first copies, every kind) received during the measured window, per second.
    pub delivered_per_s: f64,
    /// Group deliveries (first copies) received during the measured window, per second.
    pub group_deliveries_per_s: f64,
    /// Delivery latency to online devices of sends intended in the measured window, µs.
    pub latency_us: Latency,
    /// The same by kind (`one_to_one`, `group`, `ephemeral`), kinds with traffic only.
    pub latency_by_kind: BTreeMap<String, Latency>,
    /// Intended send time to `ACCEPTED` (durable), µs.
    pub accept_latency_us: Latency,
    /// Latency probe (separate connections, low rate), when run.
    pub probe_latency_us: Option<Latency>,
    /// Offline devices and their drained queues, when the scenario has some.
    pub offline: Option<OfflineReport>,
    /// Sends whose intended time is in the measured window.
    pub sent: u64,
    /// Of those, accepted by the node.
    pub accepted: u64,
    /// Deliveries to online devices of those (first copies).
    pub delivered: u64,
    /// All sends of the run, warm-up included.
    pub total_sent: u64,
    /// Accepted 1:1 (and probe) sends never delivered, plus missing group (message, device)
    /// pairs, at the end of the settle period.
    pub lost: u64,
    /// Deliveries of something already received (at-least-once redeliveries included).
    pub duplicated: u64,
    /// Of those, copies to a device that had not reconnected since its first connection: an
    /// acknowledgement lost in a reconnect explains the others, nothing explains these.
    #[serde(default)]
    pub unexpected_duplicates: u64,
    /// Stored deliveries that arrived before an earlier send of the same sender.
    pub reordered: u64,
    /// Measured sends issued more than 1 ms after their intended time (scheduler behind).
    pub late_sends: u64,
    /// Sends with no answer by the end of the settle period.
    pub unanswered: u64,
    /// Deliveries left over from another run (acknowledged and ignored).
    pub stale_deliveries: u64,
    /// Ephemeral sends the node pushed to nobody (recipient reconnecting).
    pub ephemeral_unpushed: u64,
    /// Ephemeral sends the node pushed that never arrived. Ephemeral delivery is best effort
    /// (a push racing a reconnect is dropped), so this is reported, not checked.
    pub ephemeral_lost: u64,
    /// Fan-out completeness of group messages, when there were any.
    pub fanout: Option<FanoutResult>,
    /// Groups of the population, when there are any.
    pub groups: Option<GroupsReport>,
    /// Refused or failed requests by error name.
    pub errors: BTreeMap<String, u64>,
    /// Connections of the generator.
    pub connections: ConnectionsReport,
    /// The node's own figures, when its admin address is known.
    pub node: Option<NodeReport>,
    /// Whether the generator was the bottleneck.
    pub self_check: SelfCheck,
    /// Objectives and integrity checks, evaluated.
    pub slo: Vec<SloResult>,
    /// Every objective and check held.
    pub passed: bool,
    /// Measured (steady) window, seconds.
    pub duration_s: f64,
    /// Warm-up, seconds.
    pub warmup_s: f64,
    /// Ramp, seconds.
    pub ramp_s: f64,
    /// Time spent waiting for stragglers after the last send, seconds.
    pub settle_s: f64,
    /// Simulated devices.
    pub devices: u32,
    /// Payload bytes (a number or a distribution).
    pub size: String,
    /// Mix of send kinds, as weights.
    pub mix: String,
    /// Start of the warm-up, seconds since the Unix epoch (timeline times are relative to it).
    pub started_unix_s: f64,
    /// The run over time, one row per interval.
    pub timeline: Vec<Interval>,
    #[serde(skip)]
    pub(crate) extra: Extra,
}

impl Report {
    /// Whether this is a closed-loop (saturation) run.
    pub fn is_closed_loop(&self) -> bool {
        self.closed_loop_window.is_some()
    }

    /// Process exit code: 0 when every objective and check held, 2 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.passed {
            0
        } else {
            2
        }
    }

    /// The self-contained HTML report (inline SVG charts, embedded JSON data).
    pub fn to_html(&self) -> String {
        crate::html::render(self)
    }

    /// The HdrHistogram interval log (tags `delivery`, `accept`, `probe`; values in µs).
    pub fn to_interval_log(&self) -> anyhow::Result<String> {
        crate::hdrlog::interval_log(self)
    }

    /// One JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("report serializes")
    }

    /// The human-readable table.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(s, "  {k:<24} {v}");
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
            "hearth-loadgen {} scenario {:?}: {} devices, mix {}, {}-byte payloads",
            self.mode, self.scenario, self.devices, self.mix, self.size
        );
        let _ = writeln!(
            head,
            "target {}{}, measured {:.2} s after {:.2} s warm-up and {:.2} s ramp (settled in {:.2} s)",
            self.target,
            self.durability
                .as_deref()
                .map(|d| format!(" (durability {d})"))
                .unwrap_or_default(),
            self.duration_s,
            self.warmup_s,
            self.ramp_s,
            self.settle_s
        );
        match (self.offered_per_s, self.closed_loop_window) {
            (Some(r), _) => row(
                "offered",
                format!(
                    "{r:.1} /s ({} arrivals)",
                    self.arrivals.as_deref().unwrap_or("constant")
                ),
            ),
            (None, Some(w)) => row(
                "offered",
                format!("{CLOSED_LOOP_LABEL}, {w} outstanding/conn"),
            ),
            (None, None) => {}
        }
        row("sent", format!("{:.1} /s", self.sent_per_s));
        row("accepted", format!("{:.1} /s", self.accepted_per_s));
        row("delivered", format!("{:.1} /s", self.delivered_per_s));
        if self.groups.is_some() {
            row(
                "group deliveries",
                format!("{:.1} /s", self.group_deliveries_per_s),
            );
        }
        row("latency ms", self.latency_us.line());
        for (k, l) in &self.latency_by_kind {
            if self.latency_by_kind.len() > 1 {
                row(&format!("  {k}"), l.line());
            }
        }
        row("accept latency ms", self.accept_latency_us.line());
        if let Some(p) = &self.probe_latency_us {
            row("probe latency ms", p.line());
        }
        if let Some(o) = &self.offline {
            row(
                "offline devices",
                format!("{} came back, drained {} envelopes", o.devices, o.delivered),
            );
            row("  drain latency ms", o.latency_us.line());
        }
        row(
            "sent/accepted/deliv.",
            format!(
                "{} / {} / {} (measured window, online)",
                self.sent, self.accepted, self.delivered
            ),
        );
        row("lost", self.lost.to_string());
        let dup = if self.duplicated == 0 {
            "0".to_string()
        } else {
            let redelivered = self.duplicated - self.unexpected_duplicates;
            format!(
                "{} ({redelivered} after a reconnect: at-least-once redelivery; {} without)",
                self.duplicated, self.unexpected_duplicates
            )
        };
        row("duplicated", dup);
        row("reordered", self.reordered.to_string());
        row("late sends (>1 ms)", self.late_sends.to_string());
        row("unanswered", self.unanswered.to_string());
        if self.ephemeral_unpushed > 0 || self.ephemeral_lost > 0 {
            row(
                "ephemeral (best effort)",
                format!(
                    "{} pushed to nobody, {} pushed and lost",
                    self.ephemeral_unpushed, self.ephemeral_lost
                ),
            );
        }
        if self.stale_deliveries > 0 {
            row("stale deliveries", self.stale_deliveries.to_string());
        }
        if let (Some(g), Some(f)) = (&self.groups, &self.fanout) {
            row(
                "groups",
                format!(
                    "{} groups, {}..={} members (mean {:.1})",
                    g.count, g.min_size, g.max_size, g.mean_size
                ),
            );
            row(
                "fan-out check",
                format!(
                    "{} messages: {} complete, {} incomplete; {} of {} (msg, device) pairs \
                     received, {} missing, {} duplicates, {} unexpected",
                    f.messages,
                    f.complete,
                    f.incomplete,
                    f.received,
                    f.expected,
                    f.missing,
                    f.duplicates,
                    f.unexpected
                ),
            );
            row("  completion ms", f.completion_us.line());
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
        let c = &self.connections;
        row(
            "connections",
            format!(
                "{} online, setup {:.1} s, {} reconnects, {} failed attempts",
                c.online, c.setup_s, c.reconnects, c.connect_failures
            ),
        );
        if let Some(n) = &self.node {
            let per = n.rss_per_connection_bytes.map_or("n/a".to_string(), |b| {
                format!("{:.1} KiB", b as f64 / 1024.0)
            });
            row(
                "node",
                format!(
                    "{} connections, RSS {:.1} MiB, {per} per connection{}",
                    n.connections,
                    n.rss_bytes as f64 / 1048576.0,
                    if n.includes_generator {
                        " (embedded: includes the generator)"
                    } else {
                        ""
                    }
                ),
            );
        }
        let sc = &self.self_check;
        row(
            "self-check",
            format!(
                "{}; sched lag p99 {:.2} ms, runtime lag p99 {:.2} ms, generator CPU {:.2} \
                 cores, node CPU {:.2} cores, machine {:.2} of {} cores busy",
                if sc.generator_saturated {
                    "GENERATOR SATURATED"
                } else {
                    "ok"
                },
                sc.scheduler_lag_p99_us as f64 / 1e3,
                sc.runtime_lag_p99_us as f64 / 1e3,
                sc.generator_cpu_cores,
                sc.node_cpu_cores,
                sc.machine_cpu_cores,
                sc.cores
            ),
        );
        for r in &sc.reasons {
            row("  warning", r.clone());
        }
        for r in &self.slo {
            let actual = r
                .actual
                .map_or("n/a".to_string(), |a| format!("{a:.1} {}", r.unit));
            row(
                if r.implicit { "check" } else { "slo" },
                format!(
                    "{} {} (actual {actual})",
                    if r.passed { "PASS" } else { "FAIL" },
                    r.slo
                ),
            );
        }
        row(
            "result",
            if self.passed { "PASS" } else { "FAIL (exit 2)" }.to_string(),
        );
        head + &s
    }
}
