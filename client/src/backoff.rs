//! Exponential reconnect backoff with jitter.

use std::time::Duration;

use rand::Rng;

/// Delays for successive reconnect attempts: the ceiling doubles from `first` up to `max`,
/// and each delay is drawn uniformly from the upper half of the ceiling ("equal jitter"), so
/// clients dropped together do not come back together, yet none retries too soon.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Ceilings 200 ms, 400 ms, ... 10 s: delays between 100 ms and 10 s.
    pub(crate) fn new() -> Backoff {
        Backoff {
            first: Duration::from_millis(200),
            max: Duration::from_secs(10),
            attempt: 0,
        }
    }

    /// The ceiling of the next delay.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(16);
        self.first.saturating_mul(factor).min(self.max)
    }

    /// The next delay, using `rng` for the jitter.
    pub(crate) fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(rng.gen::<f64>())
    }

    /// Back to the shortest delay (after a connection that worked).
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let mut b = Backoff::new();
        let mut rng = StdRng::seed_from_u64(1);
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(b.ceiling().as_millis());
            b.next_delay(&mut rng);
        }
        assert_eq!(
            ceilings,
            vec![200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000, 10_000]
        );
        for _ in 0..100 {
            b.next_delay(&mut rng);
        }
        assert_eq!(b.ceiling(), Duration::from_secs(10));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(200));
    }

    #[test]
    fn delays_stay_in_the_upper_half_and_are_jittered() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut b = Backoff::new();
            for _ in 0..12 {
                let ceiling = b.ceiling();
                let d = b.next_delay(&mut rng);
                assert!(
                    d >= ceiling / 2 && d <= ceiling,
                    "{d:?} outside {ceiling:?}"
                );
                assert!(d >= Duration::from_millis(100) && d <= Duration::from_secs(10));
            }
            let mut first = Backoff::new();
            seen.insert(first.next_delay(&mut rng));
        }
        // 200 draws of the first delay are not all the same value.
        assert!(seen.len() > 100, "only {} distinct delays", seen.len());
    }
}
