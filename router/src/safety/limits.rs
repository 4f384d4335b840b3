//! Token buckets (GCRA, the `governor` crate) keyed by what they limit, on the core-driven
//! [`SafetyClock`].

use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

use super::{Limit, Refusal, SafetyClock};

/// A governor state store whose map the limiter and [`Safety::forget`] share.
pub(super) struct SharedStore<K: Hash + Eq + Clone>(Arc<DashMapStateStore<K>>);

impl<K: Hash + Eq + Clone> StateStore for SharedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        StateStore::measure_and_replace(&*self.0, key, f)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for SharedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&*self.0, drop_below)
    }

    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&*self.0)
    }

    fn len(&self) -> usize {
        ShrinkableKeyedStateStore::len(&*self.0)
    }

    fn is_empty(&self) -> bool {
        ShrinkableKeyedStateStore::is_empty(&*self.0)
    }
}

pub(super) type Limiter<K> = RateLimiter<K, SharedStore<K>, SafetyClock, NoOpMiddleware<Nanos>>;

/// One keyed token bucket (absent when its rate is 0).
pub(super) struct Bucket<K: Hash + Eq + Clone> {
    limit: Limit,
    limiter: Option<Limiter<K>>,
    states: Arc<DashMapStateStore<K>>,
    burst: u32,
    clock: SafetyClock,
}

impl<K: Hash + Eq + Clone> Bucket<K> {
    pub(super) fn new(limit: Limit, per_sec: u32, burst: u32, clock: &SafetyClock) -> Bucket<K> {
        let states: Arc<DashMapStateStore<K>> = Arc::new(DashMapStateStore::default());
        let burst = if burst == 0 { per_sec } else { burst };
        let limiter = NonZeroU32::new(per_sec).map(|rate| {
            let quota = Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate));
            Limiter::new(quota, SharedStore(states.clone()), clock.clone())
        });
        Bucket {
            limit,
            limiter,
            states,
            burst,
            clock: clock.clone(),
        }
    }

    /// Take `n` units (clamped to 1..=burst) for `key`.
    pub(super) fn check(&self, key: &K, n: u64) -> Result<(), Refusal> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let n = n.clamp(1, u64::from(self.burst)) as u32;
        let outcome = match NonZeroU32::new(n) {
            Some(n) if n.get() > 1 => match limiter.check_key_n(key, n) {
                Ok(outcome) => outcome,
                // Unreachable: n is clamped to the burst. Refuse for one refill to be safe.
                Err(_) => {
                    return Err(Refusal {
                        limit: self.limit,
                        retry_after_ms: 1000,
                    })
                }
            },
            _ => limiter.check_key(key),
        };
        outcome.map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            let ms = wait
                .as_nanos()
                .div_ceil(1_000_000)
                .clamp(1, u128::from(u32::MAX));
            Refusal {
                limit: self.limit,
                retry_after_ms: ms as u32,
            }
        })
    }

    /// Drop the states of keys whose bucket is full again.
    pub(super) fn expire(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Drop the states of the keys `matches` selects.
    pub(super) fn forget(&self, matches: impl Fn(&K) -> bool) {
        self.states.retain(|k, _| !matches(k));
    }

    #[cfg(test)]
    pub(super) fn keys(&self) -> usize {
        self.states.len()
    }
}
