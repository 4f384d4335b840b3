//! Is the generator itself the bottleneck? Scheduler lag (how late sends were issued), runtime
//! lag (how late a 10 ms timer fires on the generator's runtime) and the generator's CPU time
//! from `/proc/self/task/*/stat` (threads of an embedded node are told apart by their names and
//! left out).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::target::NODE_THREAD;

/// Kernel clock ticks per second of `/proc` CPU times (USER_HZ, 100 on Linux).
const CLK_TCK: f64 = 100.0;
/// Scheduler lag p99 above this marks the generator saturated.
pub(crate) const SCHED_LAG_LIMIT_US: u64 = 5_000;
/// Runtime lag p99 above this marks the generator saturated.
pub(crate) const RUNTIME_LAG_LIMIT_US: u64 = 10_000;
/// Runtime lag p99 above this marks the generator saturated whatever the latency.
pub(crate) const RUNTIME_LAG_ALWAYS_US: u64 = 100_000;
/// Share of the sends issued late above which the generator is saturated.
pub(crate) const LATE_SHARE_LIMIT: f64 = 0.01;
/// Lags count only when they exceed this share of the measured p99 latency.
pub(crate) const LAG_SHARE_OF_P99: f64 = 0.1;
/// Generator CPU, as a share of all cores, above which it is saturated.
pub(crate) const CPU_SHARE_LIMIT: f64 = 0.9;

/// The self-check's findings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SelfCheck {
    /// True when the generator could not keep up: its own delays are a noticeable part of the
    /// latency figures, and the achieved rate may fall short of the offered one.
    pub generator_saturated: bool,
    /// Why, in words (empty when not saturated).
    pub reasons: Vec<String>,
    /// p99 of how late the open-loop schedulers issued sends, µs.
    pub scheduler_lag_p99_us: u64,
    /// Largest scheduler lag, µs.
    pub scheduler_lag_max_us: u64,
    /// p99 of how late a 10 ms timer fired on the generator's runtime, µs.
    pub runtime_lag_p99_us: u64,
    /// Generator CPU time over the measured window, in cores (1.0 = one core busy).
    pub generator_cpu_cores: f64,
    /// Embedded node's CPU time over the measured window, in cores (0 for a remote node).
    pub node_cpu_cores: f64,
    /// CPU time of the whole machine (every process) over the measured window, in cores.
    pub machine_cpu_cores: f64,
    /// Cores available to the process.
    pub cores: usize,
}

/// CPU time of this process so far, split into the generator and an embedded node.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuSample {
    at: Instant,
    total_ticks: u64,
    node_ticks: u64,
    /// Busy ticks of the whole machine (`/proc/stat`).
    machine_ticks: u64,
}

impl CpuSample {
    /// Reads `/proc/self/stat` and the node threads' `/proc/self/task/*/stat`; zeros elsewhere.
    pub(crate) fn now() -> CpuSample {
        let total_ticks = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_stat(&s).map(|(_, t)| t))
            .unwrap_or(0);
        let mut node_ticks = 0;
        if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
            for e in dir.flatten() {
                let Ok(s) = std::fs::read_to_string(e.path().join("stat")) else {
                    continue;
                };
                if let Some((comm, t)) = parse_stat(&s) {
                    if is_node_thread(&comm) {
                        node_ticks += t;
                    }
                }
            }
        }
        let machine_ticks = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| machine_busy(&s))
            .unwrap_or(0);
        CpuSample {
            at: Instant::now(),
            total_ticks,
            node_ticks,
            machine_ticks,
        }
    }

    /// (generator, node, whole machine) cores used between `self` and `later`.
    pub(crate) fn cores_until(&self, later: &CpuSample) -> (f64, f64, f64) {
        let wall = later.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let node = later.node_ticks.saturating_sub(self.node_ticks) as f64 / CLK_TCK;
        let total = later.total_ticks.saturating_sub(self.total_ticks) as f64 / CLK_TCK;
        let machine = later.machine_ticks.saturating_sub(self.machine_ticks) as f64 / CLK_TCK;
        (
            ((total - node).max(0.0)) / wall,
            node / wall,
            machine / wall,
        )
    }
}

/// Busy ticks (user + nice + system + irq + softirq + steal) of the `cpu` line of `/proc/stat`.
fn machine_busy(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    Some(v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7).unwrap_or(&0))
}

fn is_node_thread(comm: &str) -> bool {
    comm.starts_with(NODE_THREAD)
        || comm.starts_with("hearth-storage")
        || comm.starts_with("rocksdb")
}

/// (comm, utime + stime) of a `/proc/<pid>/stat` line.
fn parse_stat(s: &str) -> Option<(String, u64)> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let rest: Vec<&str> = s[close + 1..].split_whitespace().collect();
    // After the comm: state is field 3, utime field 14, stime field 15 (1-based).
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// The inputs of the verdict.
pub(crate) struct Inputs {
    pub sched_lag_p99_us: u64,
    pub sched_lag_max_us: u64,
    pub runtime_lag_p99_us: u64,
    pub late_sends: u64,
    pub sends: u64,
    pub cpu: (f64, f64, f64),
    /// p99 of the measured delivery latency, µs: the generator's own delays matter when they
    /// are a noticeable part of it.
    pub latency_p99_us: u64,
}

/// Decides whether the generator was the bottleneck.
pub(crate) fn verdict(i: Inputs) -> SelfCheck {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut reasons = Vec::new();
    let late_share = if i.sends > 0 {
        i.late_sends as f64 / i.sends as f64
    } else {
        0.0
    };
    let noticeable = |lag_us: u64| lag_us as f64 > LAG_SHARE_OF_P99 * i.latency_p99_us as f64;
    if i.sched_lag_p99_us > SCHED_LAG_LIMIT_US
        && late_share > LATE_SHARE_LIMIT
        && noticeable(i.sched_lag_p99_us)
    {
        reasons.push(format!(
            "schedulers issued {:.1}% of the sends more than 1 ms late (lag p99 {:.1} ms)",
            late_share * 100.0,
            i.sched_lag_p99_us as f64 / 1e3
        ));
    }
    if i.runtime_lag_p99_us > RUNTIME_LAG_ALWAYS_US
        || (i.runtime_lag_p99_us > RUNTIME_LAG_LIMIT_US && noticeable(i.runtime_lag_p99_us))
    {
        reasons.push(format!(
            "the generator's runtime is overloaded (10 ms timer late by {:.1} ms at p99)",
            i.runtime_lag_p99_us as f64 / 1e3
        ));
    }
    if i.cpu.0 > CPU_SHARE_LIMIT * cores as f64 {
        reasons.push(format!(
            "the generator used {:.2} of {cores} cores",
            i.cpu.0
        ));
    }
    let others = (i.cpu.2 - i.cpu.0 - i.cpu.1).max(0.0);
    if !reasons.is_empty() && i.cpu.2 > CPU_SHARE_LIMIT * cores as f64 {
        reasons.push(format!(
            "the machine's CPUs were {:.0}% busy ({:.2} cores used by other processes)",
            100.0 * i.cpu.2 / cores as f64,
            others
        ));
    }
    SelfCheck {
        generator_saturated: !reasons.is_empty(),
        reasons,
        scheduler_lag_p99_us: i.sched_lag_p99_us,
        scheduler_lag_max_us: i.sched_lag_max_us,
        runtime_lag_p99_us: i.runtime_lag_p99_us,
        generator_cpu_cores: i.cpu.0,
        node_cpu_cores: i.cpu.1,
        machine_cpu_cores: i.cpu.2,
        cores,
    }
}

/// Measures how late a 10 ms timer fires, until `stop` is set.
pub(crate) async fn runtime_lag_probe(
    sh: std::sync::Arc<crate::shared::Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    const TICK: Duration = Duration::from_millis(10);
    loop {
        let due = Instant::now() + TICK;
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep_until(due.into()) => {}
        }
        let late = Instant::now().saturating_duration_since(due).as_micros() as u64;
        let counted = sh.measured(sh.now_ns());
        sh.rec.runtime_lag.record(0, late, counted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_lines_parse() {
        let line = "1234 (tokio-runtime-w) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0 100";
        assert_eq!(parse_stat(line), Some(("tokio-runtime-w".into(), 300)));
        let odd = "9 (a) b (c)) R 1 2 3 4 5 6 7 8 9 10 1 2 0";
        assert_eq!(parse_stat(odd), Some(("a) b (c)".into(), 3)));
        assert!(is_node_thread("hearth-node"));
        assert!(is_node_thread("rocksdb:low"));
        assert!(!is_node_thread("tokio-runtime-w"));
        let s = CpuSample::now();
        assert!(s.total_ticks >= s.node_ticks);
        assert!(s.machine_ticks > 0);
        let stat = "cpu  10 20 30 1000 40 50 60 70 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(machine_busy(stat), Some(10 + 20 + 30 + 50 + 60 + 70));
    }

    #[test]
    fn verdict_flags_a_lagging_generator_only() {
        let calm = verdict(Inputs {
            sched_lag_p99_us: 200,
            sched_lag_max_us: 900,
            runtime_lag_p99_us: 300,
            late_sends: 0,
            sends: 1000,
            cpu: (0.3, 0.5, 0.9),
            latency_p99_us: 5_000,
        });
        assert!(!calm.generator_saturated, "{calm:?}");
        let busy = verdict(Inputs {
            sched_lag_p99_us: 20_000,
            sched_lag_max_us: 90_000,
            runtime_lag_p99_us: 30_000,
            late_sends: 100,
            sends: 1000,
            cpu: (0.3, 0.5, 0.9),
            latency_p99_us: 50_000,
        });
        assert!(busy.generator_saturated);
        assert_eq!(busy.reasons.len(), 2, "{:?}", busy.reasons);
        // The same lags beside a 1 s p99 are noise: the node is the bottleneck.
        let slow_node = verdict(Inputs {
            sched_lag_p99_us: 20_000,
            sched_lag_max_us: 90_000,
            runtime_lag_p99_us: 30_000,
            late_sends: 100,
            sends: 1000,
            cpu: (0.3, 1.5, 1.9),
            latency_p99_us: 1_000_000,
        });
        assert!(!slow_node.generator_saturated, "{slow_node:?}");
        // But a runtime seconds behind cannot timestamp deliveries: always flagged.
        let drowned = verdict(Inputs {
            runtime_lag_p99_us: 2_000_000,
            latency_p99_us: 60_000_000,
            ..Inputs {
                sched_lag_p99_us: 0,
                sched_lag_max_us: 0,
                runtime_lag_p99_us: 0,
                late_sends: 0,
                sends: 5,
                cpu: (0.5, 0.0, 2.0),
                latency_p99_us: 0,
            }
        });
        assert!(drowned.generator_saturated);
    }
}
