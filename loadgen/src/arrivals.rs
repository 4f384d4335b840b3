//! Open-loop arrival times: a piecewise-linear rate over the warm-up, ramp and steady phases,
//! and arrival streams (constant or Poisson) drawn from it.
//!
//! Both processes work in "count space": `N(t)` is the expected number of sends by time `t`
//! (the integral of the rate). Constant arrivals put send `j` at `N⁻¹(j)`; Poisson arrivals put
//! them at `N⁻¹` of a unit-rate Poisson process, which is an inhomogeneous Poisson process with
//! exactly the scheduled rate. A stream `k` of `S` takes every `S`th constant arrival, or an
//! independent Poisson process of `1/S` of the rate, so `S` scheduler threads share the load.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::scenario::Arrivals;

const NS: f64 = 1e9;

/// One phase of the schedule: the rate goes linearly from `r0` to `r1` over `len_ns`.
#[derive(Debug, Clone, Copy)]
struct Segment {
    start_ns: u64,
    len_ns: u64,
    r0: f64,
    r1: f64,
    /// Expected sends before the segment.
    n0: f64,
}

impl Segment {
    fn count(&self) -> f64 {
        (self.r0 + self.r1) / 2.0 * self.len_ns as f64 / NS
    }

    /// Seconds into the segment at which `m` sends of it are due (m <= count()).
    fn offset_of(&self, m: f64) -> f64 {
        let t = self.len_ns as f64 / NS;
        let a = (self.r1 - self.r0) / (2.0 * t);
        // Root of a x² + r0 x - m = 0 in the form that stays exact when a → 0.
        let d = (self.r0 * self.r0 + 4.0 * a * m).max(0.0).sqrt();
        let denom = self.r0 + d;
        if denom <= 0.0 {
            return 0.0;
        }
        (2.0 * m / denom).min(t)
    }
}

/// The offered rate over time: warm-up at the steady rate, a linear ramp, the steady phase.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    segs: Vec<Segment>,
    end_ns: u64,
}

impl Schedule {
    pub(crate) fn new(
        warmup_ns: u64,
        ramp_ns: u64,
        steady_ns: u64,
        rate: f64,
        ramp_from: f64,
    ) -> Self {
        let mut segs = Vec::new();
        let (mut start, mut n0) = (0u64, 0.0);
        for (len_ns, r0, r1) in [
            (warmup_ns, rate, rate),
            (ramp_ns, ramp_from, rate),
            (steady_ns, rate, rate),
        ] {
            if len_ns == 0 {
                continue;
            }
            let s = Segment {
                start_ns: start,
                len_ns,
                r0,
                r1,
                n0,
            };
            n0 += s.count();
            start += len_ns;
            segs.push(s);
        }
        Schedule {
            segs,
            end_ns: start,
        }
    }

    /// Offered rate at `ns` (0 after the end).
    pub(crate) fn rate_at(&self, ns: u64) -> f64 {
        self.segs
            .iter()
            .find(|s| ns >= s.start_ns && ns < s.start_ns + s.len_ns)
            .map_or(0.0, |s| {
                s.r0 + (s.r1 - s.r0) * (ns - s.start_ns) as f64 / s.len_ns as f64
            })
    }

    /// Expected sends in the whole schedule.
    pub(crate) fn total(&self) -> f64 {
        self.segs.last().map_or(0.0, |s| s.n0 + s.count())
    }

    /// When the `n`th send (in count space) is due; `None` past the end.
    pub(crate) fn time_of(&self, n: f64) -> Option<u64> {
        if n >= self.total() {
            return None;
        }
        let i = self.segs.partition_point(|s| s.n0 + s.count() <= n);
        let s = self.segs.get(i)?;
        let ns = s.start_ns + (s.offset_of(n - s.n0) * NS) as u64;
        (ns < self.end_ns).then_some(ns)
    }
}

/// Arrival times (ns since the start of the warm-up) of stream `k` of `stride`.
pub(crate) struct ArrivalStream {
    sched: Schedule,
    kind: Arrivals,
    stride: u64,
    next_index: u64,
    n: f64,
    rng: SmallRng,
}

impl ArrivalStream {
    pub(crate) fn new(sched: Schedule, kind: Arrivals, k: u64, stride: u64, seed: u64) -> Self {
        ArrivalStream {
            sched,
            kind,
            stride,
            next_index: k,
            n: 0.0,
            rng: SmallRng::seed_from_u64(seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        }
    }
}

impl Iterator for ArrivalStream {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        let n = match self.kind {
            Arrivals::Constant => {
                let n = self.next_index as f64;
                self.next_index += self.stride;
                n
            }
            Arrivals::Poisson => {
                let u: f64 = self.rng.gen_range(f64::MIN_POSITIVE..1.0);
                self.n += -u.ln() * self.stride as f64;
                self.n
            }
        };
        self.sched.time_of(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn constant_arrivals_are_exact_and_split_across_streams() {
        let sched = Schedule::new(S, 0, 2 * S, 100.0, 0.0);
        assert_eq!(sched.total(), 300.0);
        let mut all: Vec<u64> = (0..3)
            .flat_map(|k| ArrivalStream::new(sched.clone(), Arrivals::Constant, k, 3, 1))
            .collect();
        all.sort_unstable();
        assert_eq!(all.len(), 300);
        assert_eq!(all[0], 0);
        assert_eq!(all[1], 10_000_000);
        assert_eq!(all[150], 1_500_000_000);
        assert!(all.windows(2).all(|w| w[1] - w[0] == 10_000_000));
    }

    #[test]
    fn a_ramp_rises_linearly() {
        // 0 -> 100/s over 2 s: 100 sends, a quarter of them in the first half... of the count.
        let sched = Schedule::new(0, 2 * S, S, 100.0, 0.0);
        assert_eq!(sched.total(), 200.0);
        assert!((sched.rate_at(S) - 50.0).abs() < 1e-9);
        assert_eq!(sched.rate_at(3 * S), 0.0);
        let t: Vec<u64> = ArrivalStream::new(sched.clone(), Arrivals::Constant, 0, 1, 1).collect();
        assert_eq!(t.len(), 200);
        let first_second = t.iter().filter(|&&x| x < S).count();
        assert_eq!(first_second, 25); // N(1 s) = 100 * 1² / (2 * 2) = 25
        let ramp = t.iter().filter(|&&x| x < 2 * S).count();
        assert_eq!(ramp, 100);
        assert!(t.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn poisson_arrivals_have_the_right_mean_and_spread() {
        let sched = Schedule::new(0, 0, 10 * S, 1000.0, 0.0);
        let mut gaps = Vec::new();
        let mut count = 0;
        for k in 0..2 {
            let t: Vec<u64> =
                ArrivalStream::new(sched.clone(), Arrivals::Poisson, k, 2, 7).collect();
            gaps.extend(t.windows(2).map(|w| (w[1] - w[0]) as f64));
            count += t.len();
        }
        // 10,000 expected; the standard deviation is 100.
        assert!((9_500..=10_500).contains(&count), "{count}");
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        // Each stream runs at 500/s: exponential gaps with mean = sd = 2 ms.
        assert!((mean / 2e6 - 1.0).abs() < 0.1, "{mean}");
        assert!(
            (var.sqrt() / mean - 1.0).abs() < 0.15,
            "cv {}",
            var.sqrt() / mean
        );
    }
}
