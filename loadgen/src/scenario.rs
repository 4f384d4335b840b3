//! Traffic scenarios: who sends to whom. Issue 2 has one, 1:1 between random devices; later
//! scenarios (groups, fan-out, offline recipients) go here beside it.

use rand::Rng;

/// Identity of simulated device `i`: its own account, device id 1.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Devices {
    pub count: u32,
    pub account_base: u64,
}

impl Devices {
    /// Device id of every simulated device (each is alone in its account).
    pub const DEVICE_ID: u32 = 1;

    pub fn account(&self, i: u32) -> u64 {
        self.account_base + u64::from(i)
    }
}

/// 1:1 traffic: a uniformly random sender and a uniformly random other device as recipient.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OneToOne {
    pub devices: Devices,
}

impl OneToOne {
    /// A random sender and recipient, never the same device. Needs at least 2 devices.
    pub fn pick_pair(&self, rng: &mut impl Rng) -> (u32, u32) {
        let from = rng.gen_range(0..self.devices.count);
        (from, self.pick_recipient(from, rng))
    }

    /// A random device other than `from`.
    pub fn pick_recipient(&self, from: u32, rng: &mut impl Rng) -> u32 {
        let r = rng.gen_range(0..self.devices.count - 1);
        if r >= from {
            r + 1
        } else {
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};

    #[test]
    fn pairs_cover_everyone_and_never_self() {
        let s = OneToOne {
            devices: Devices {
                count: 5,
                account_base: 100,
            },
        };
        let mut rng = SmallRng::seed_from_u64(1);
        let mut seen = [[false; 5]; 5];
        for _ in 0..2000 {
            let (a, b) = s.pick_pair(&mut rng);
            assert_ne!(a, b);
            seen[a as usize][b as usize] = true;
        }
        let pairs = seen.iter().flatten().filter(|&&x| x).count();
        assert_eq!(pairs, 20);
        assert_eq!(s.devices.account(3), 103);
    }
}
