//! Latency histograms (HdrHistogram, microseconds) and CPU accounting of server and generator.

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram in microseconds: 1 µs to 100 s, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

/// Records a latency given in nanoseconds (saturating at the histogram's bounds).
pub(crate) fn record_ns(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record((ns / 1000).max(1));
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    pub(crate) fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

/// Where the server side of a run executes, for CPU accounting.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ServerCpu {
    /// Embedded in this process: every thread that is not the generator's.
    Embedded,
    /// Another process.
    Process(u32),
}

/// CPU seconds used so far by the server and by the load generator.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuSample {
    server: f64,
    generator: f64,
    /// Busy CPU seconds of the whole machine (`/proc/stat`).
    machine: f64,
}

/// Average cores used over an interval.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct CpuUse {
    pub server_cores: f64,
    pub generator_cores: f64,
    /// Cores busy with anything else on the machine (other processes, kernel threads): a
    /// noisy neighbour makes the run less trustworthy.
    pub other_cores: f64,
}

/// Name prefix of the generator's threads (its runtime's workers and the pacer).
pub(crate) const GEN_THREAD: &str = "gen-";

impl CpuSample {
    /// Reads `/proc`: this process's threads are the generator's when their name starts
    /// with [`GEN_THREAD`] or they are the main thread; the rest are the embedded node's.
    pub(crate) fn take(server: ServerCpu) -> CpuSample {
        let mut s = CpuSample::default();
        let me = std::process::id();
        if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
            for task in dir.flatten() {
                let tid: u32 = task.file_name().to_string_lossy().parse().unwrap_or(0);
                let Some((comm, secs)) = read_stat(&task.path().join("stat")) else {
                    continue;
                };
                if tid == me || comm.starts_with(GEN_THREAD) {
                    s.generator += secs;
                } else if matches!(server, ServerCpu::Embedded) {
                    s.server += secs;
                }
            }
        }
        if let ServerCpu::Process(pid) = server {
            if let Some((_, secs)) = read_stat(std::path::Path::new(&format!("/proc/{pid}/stat"))) {
                s.server = secs;
            }
        }
        s.machine = machine_busy().unwrap_or(0.0);
        s
    }

    /// Cores used between `self` and `later`, `secs` apart.
    pub(crate) fn usage_until(&self, later: &CpuSample, secs: f64) -> CpuUse {
        let per = |a: f64, b: f64| ((b - a) / secs.max(1e-9) * 100.0).round() / 100.0;
        let (server_cores, generator_cores) = (
            per(self.server, later.server),
            per(self.generator, later.generator),
        );
        let busy = per(self.machine, later.machine);
        let other_cores =
            ((busy - server_cores - generator_cores).max(0.0) * 100.0).round() / 100.0;
        CpuUse {
            server_cores,
            generator_cores,
            other_cores,
        }
    }
}

/// Busy CPU seconds of the machine since boot: all of `/proc/stat`'s first line but idle and
/// iowait (and guest time, which is already in user).
fn machine_busy() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().take(8).sum();
    Some((total - v.get(3)? - v.get(4)?) / 100.0)
}

/// (comm, utime + stime in seconds) of a `/proc/.../stat` file.
fn read_stat(path: &std::path::Path) -> Option<(String, f64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    // Fields after the comm start at field 3 (state); utime and stime are fields 14 and 15.
    let rest: Vec<&str> = text[close + 2..].split_whitespace().collect();
    let utime: f64 = rest.get(11)?.parse().ok()?;
    let stime: f64 = rest.get(12)?.parse().ok()?;
    // USER_HZ is 100 on Linux for every architecture we run on.
    Some((comm, (utime + stime) / 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_microseconds() {
        let mut h = histogram();
        for i in 1..=1000u64 {
            record_ns(&mut h, i * 1000);
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 1000);
        assert_eq!(l.p50_us, 500);
        assert_eq!(l.p99_us, 990);
        assert_eq!(l.max_us, 1000);
        assert_eq!(Latency::of(&histogram()).count, 0);
    }

    #[test]
    fn this_process_uses_some_cpu() {
        let a = CpuSample::take(ServerCpu::Embedded);
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed().as_millis() < 100 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let b = CpuSample::take(ServerCpu::Embedded);
        assert!(x > 0);
        // The test thread is not "gen-" and not the main thread: it counts as server.
        assert!(b.server + b.generator > a.server + a.generator);
    }
}
