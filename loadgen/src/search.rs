//! Capacity search (`--find-max`): the highest open-loop rate at which every objective and
//! check holds. Short runs against one target (the embedded node is kept between steps): the
//! rate doubles from the start rate while runs pass (or halves while they fail), then bisects
//! between the highest pass and the lowest failure until they are within `precision`.

use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::report::Report;
use crate::runner::run_on;
use crate::target;

/// How to search.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SearchOpts {
    /// Most runs.
    pub max_steps: u32,
    /// Stop when (lowest failing − highest passing) / highest passing is below this.
    pub precision: f64,
}

/// One run of the search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    /// Offered sends/s.
    pub rate: f64,
    /// Every objective and check held.
    pub passed: bool,
    /// Delivered per second.
    pub delivered_per_s: f64,
    /// p99 delivery latency, µs.
    pub p99_us: u64,
    /// The objectives that failed.
    pub failed: Vec<String>,
    /// The generator was the bottleneck in this run.
    pub generator_saturated: bool,
}

/// The search's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchReport {
    /// Highest rate that passed, sends/s (None: none passed).
    pub max_rate: Option<f64>,
    /// Lowest rate that failed (None: none failed, the search ran out of steps).
    pub lowest_failing_rate: Option<f64>,
    /// The generator was the bottleneck at or below the reported maximum: the true capacity
    /// may be higher.
    pub generator_saturated: bool,
    /// Every run, in order.
    pub steps: Vec<Step>,
    /// The full report of the run at the maximum.
    pub best: Option<Report>,
}

impl SearchReport {
    /// 0 when a passing rate was found, 2 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.max_rate.is_some() {
            0
        } else {
            2
        }
    }

    /// One JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("report serializes")
    }

    /// A table of the steps and the answer.
    pub fn to_table(&self) -> String {
        let mut s = String::from(
            "hearth-loadgen --find-max: highest open-loop rate meeting the objectives\n",
        );
        s.push_str("  step  rate/s        result  delivered/s   p99 ms   failed\n");
        for (i, st) in self.steps.iter().enumerate() {
            s.push_str(&format!(
                "  {:>4}  {:<12.1}  {:<6}  {:<12.1}  {:<7.3}  {}{}\n",
                i + 1,
                st.rate,
                if st.passed { "PASS" } else { "FAIL" },
                st.delivered_per_s,
                st.p99_us as f64 / 1e3,
                st.failed.join(", "),
                if st.generator_saturated {
                    " [generator saturated]"
                } else {
                    ""
                }
            ));
        }
        match self.max_rate {
            Some(r) => s.push_str(&format!(
                "  max rate: {r:.1} sends/s{}{}\n",
                self.lowest_failing_rate
                    .map_or(String::new(), |f| format!(" (fails at {f:.1})")),
                if self.generator_saturated {
                    "; WARNING: the generator was saturated, the capacity may be higher"
                } else {
                    ""
                }
            )),
            None => s.push_str("  no rate tried met the objectives\n"),
        }
        if let Some(b) = &self.best {
            s.push_str("\nrun at the maximum:\n");
            s.push_str(&b.to_table());
        }
        s
    }
}

/// Searches from `cfg.scenario.load.rate` (the start rate).
pub async fn find_max(cfg: RunConfig, opts: SearchOpts) -> anyhow::Result<SearchReport> {
    cfg.validate()?;
    anyhow::ensure!(
        cfg.scenario.load.rate.is_some(),
        "--find-max needs an open-loop start rate (--rate)"
    );
    anyhow::ensure!(opts.max_steps >= 1, "--max-steps must be at least 1");
    anyhow::ensure!(opts.precision > 0.0, "--precision must be > 0");
    let p = target::prepare(&cfg.target).await?;
    let result = search(&cfg, opts, &p).await;
    p.shutdown().await;
    result
}

async fn search(
    cfg: &RunConfig,
    opts: SearchOpts,
    p: &target::Prepared,
) -> anyhow::Result<SearchReport> {
    let start = cfg.scenario.load.rate.unwrap_or(1000.0);
    let (mut lo, mut hi): (Option<f64>, Option<f64>) = (None, None);
    let mut steps = Vec::new();
    let mut best: Option<Report> = None;
    let mut rate = start;
    for _ in 0..opts.max_steps {
        let mut c = cfg.clone();
        c.scenario.load.rate = Some(rate);
        c.progress = false;
        if cfg.progress {
            eprint!("find-max: {rate:.1} sends/s ... ");
        }
        let r = run_on(&c, p).await?;
        let step = Step {
            rate,
            passed: r.passed,
            delivered_per_s: r.delivered_per_s,
            p99_us: r.latency_us.p99,
            failed: r
                .slo
                .iter()
                .filter(|s| !s.passed)
                .map(|s| s.slo.clone())
                .collect(),
            generator_saturated: r.self_check.generator_saturated,
        };
        if cfg.progress {
            eprintln!(
                "{} (p99 {:.3} ms){}",
                if step.passed { "PASS" } else { "FAIL" },
                step.p99_us as f64 / 1e3,
                if step.failed.is_empty() {
                    String::new()
                } else {
                    format!(": {}", step.failed.join(", "))
                }
            );
        }
        if step.passed {
            lo = Some(lo.map_or(rate, |l: f64| l.max(rate)));
            if lo == Some(rate) {
                best = Some(r);
            }
        } else {
            hi = Some(hi.map_or(rate, |h: f64| h.min(rate)));
        }
        steps.push(step);
        rate = match (lo, hi) {
            (Some(l), None) => l * 2.0,
            (None, Some(h)) => {
                if h < start / 1024.0 {
                    break;
                }
                h / 2.0
            }
            (Some(l), Some(h)) => {
                if (h - l) / l <= opts.precision {
                    break;
                }
                (l + h) / 2.0
            }
            (None, None) => unreachable!("a step was just recorded"),
        };
    }
    let generator_saturated = steps
        .iter()
        .any(|s| s.generator_saturated && lo.is_some_and(|l| s.rate <= l));
    Ok(SearchReport {
        max_rate: lo,
        lowest_failing_rate: hi,
        generator_saturated,
        steps,
        best,
    })
}
