//! The population of a run, drawn from the scenario: which devices start offline (and when they
//! come back), the groups and their members, and how each send picks its kind, sender and
//! recipient.

use rand::rngs::SmallRng;
use rand::seq::index;
use rand::{Rng, SeedableRng};

use crate::scenario::{Kind, Sampler, Scenario};

/// Device id of every simulated device (each is alone in its account).
pub(crate) const DEVICE_ID: u32 = 1;

/// One group: its id and members (device indices, sorted).
#[derive(Debug, Clone)]
pub(crate) struct GroupDef {
    pub id: u64,
    pub members: Vec<u32>,
    /// Members online from the start (possible senders).
    pub online: Vec<u32>,
}

impl GroupDef {
    /// Position of `device` in `members`.
    pub(crate) fn position(&self, device: u32) -> Option<usize> {
        self.members.binary_search(&device).ok()
    }
}

/// What one send does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pick {
    pub kind: Kind,
    pub sender: u32,
    /// Recipient device (1:1, ephemeral) or group index.
    pub target: u32,
    pub size: u32,
}

/// The population and the traffic pickers.
pub(crate) struct Plan {
    pub devices: u32,
    pub account_base: u64,
    /// Offline at first: when (ns since the start of the warm-up) the device reconnects.
    pub reconnect_at: Vec<Option<u64>>,
    /// Devices online from the start.
    pub online: Vec<u32>,
    pub groups: Vec<GroupDef>,
    /// Groups of each online device (closed loop picks among them).
    pub groups_of: Vec<Vec<u32>>,
    /// Groups with an online member.
    sendable: Vec<u32>,
    /// Cumulative weights of 1:1, group, ephemeral.
    mix: [f64; 3],
    size: Sampler,
}

impl Plan {
    /// Draws the population. `nonce` makes group ids unique to the run.
    pub(crate) fn new(s: &Scenario, account_base: u64, nonce: u64) -> anyhow::Result<Plan> {
        let n = s.devices;
        let mut rng = SmallRng::seed_from_u64(s.seed.unwrap_or_else(rand::random));
        let n_off = s.offline_devices() as usize;
        let mut reconnect_at = vec![None; n as usize];
        let mut offline: Vec<usize> = index::sample(&mut rng, n as usize, n_off).into_vec();
        offline.sort_unstable();
        let after = s.offline.reconnect_after.as_nanos() as u64;
        let over = s.offline.reconnect_over.as_nanos() as u64;
        for (r, &d) in offline.iter().enumerate() {
            reconnect_at[d] = Some(after + over * r as u64 / n_off.max(1) as u64);
        }
        let online: Vec<u32> = (0..n)
            .filter(|&d| reconnect_at[d as usize].is_none())
            .collect();

        let mut groups = Vec::new();
        let mut groups_of = vec![Vec::new(); n as usize];
        if s.mix.group > 0.0 || s.groups.count > 0 {
            let size = s.groups.size.sampler();
            for g in 0..s.groups.count {
                let k = (size.sample(&mut rng) as usize).clamp(2, n as usize);
                let mut members: Vec<u32> = index::sample(&mut rng, n as usize, k)
                    .into_iter()
                    .map(|d| d as u32)
                    .collect();
                members.sort_unstable();
                let online: Vec<u32> = members
                    .iter()
                    .copied()
                    .filter(|&d| reconnect_at[d as usize].is_none())
                    .collect();
                for &d in &online {
                    groups_of[d as usize].push(g);
                }
                groups.push(GroupDef {
                    id: group_id(nonce, g),
                    members,
                    online,
                });
            }
        }
        let sendable: Vec<u32> = (0..groups.len() as u32)
            .filter(|&g| !groups[g as usize].online.is_empty())
            .collect();
        anyhow::ensure!(
            s.mix.group == 0.0 || !sendable.is_empty(),
            "no group has an online member to send from (lower offline.share)"
        );
        let m = &s.mix;
        let total = m.one_to_one + m.group + m.ephemeral;
        let mix = [m.one_to_one / total, (m.one_to_one + m.group) / total, 1.0];
        Ok(Plan {
            devices: n,
            account_base,
            reconnect_at,
            online,
            groups,
            groups_of,
            sendable,
            mix,
            size: s.envelope.size.sampler(),
        })
    }

    pub(crate) fn account(&self, device: u32) -> u64 {
        self.account_base + u64::from(device)
    }

    pub(crate) fn is_offline_at_start(&self, device: u32) -> bool {
        self.reconnect_at[device as usize].is_some()
    }

    /// Device queues a group message from `sender` should reach (every member but the sender).
    pub(crate) fn group_recipients(&self, g: u32, sender: u32) -> usize {
        let def = &self.groups[g as usize];
        def.members.len() - usize::from(def.position(sender).is_some())
    }

    fn kind(&self, rng: &mut impl Rng) -> Kind {
        let u: f64 = rng.gen();
        if u < self.mix[0] {
            Kind::OneToOne
        } else if u < self.mix[1] {
            Kind::Group
        } else {
            Kind::Ephemeral
        }
    }

    fn size(&self, rng: &mut impl Rng) -> u32 {
        self.size.sample(rng).min(u64::from(u32::MAX)) as u32
    }

    /// Any device but `from`.
    fn other_device(&self, from: u32, rng: &mut impl Rng) -> u32 {
        let r = rng.gen_range(0..self.devices - 1);
        r + u32::from(r >= from)
    }

    /// An online device but `from` (needs two online devices).
    fn other_online(&self, from: u32, rng: &mut impl Rng) -> u32 {
        loop {
            let d = self.online[rng.gen_range(0..self.online.len())];
            if d != from {
                return d;
            }
        }
    }

    /// Open loop: kind by weight; a random online sender (for a group: a random group, then a
    /// random online member of it); 1:1 goes to any other device (offline ones too, which
    /// fills their queues); ephemeral to an online one.
    pub(crate) fn pick_open(&self, rng: &mut impl Rng) -> Pick {
        let kind = self.kind(rng);
        let size = self.size(rng);
        if kind == Kind::Group {
            let g = self.sendable[rng.gen_range(0..self.sendable.len())];
            let on = &self.groups[g as usize].online;
            let sender = on[rng.gen_range(0..on.len())];
            return Pick {
                kind,
                sender,
                target: g,
                size,
            };
        }
        let sender = self.online[rng.gen_range(0..self.online.len())];
        self.pick_for(sender, kind, size, rng)
    }

    /// Closed loop: a send from `sender`; a group send goes to one of its groups (1:1 if it
    /// has none).
    pub(crate) fn pick_closed(&self, sender: u32, rng: &mut impl Rng) -> Pick {
        let kind = self.kind(rng);
        let size = self.size(rng);
        if kind == Kind::Group {
            let mine = &self.groups_of[sender as usize];
            if !mine.is_empty() {
                let g = mine[rng.gen_range(0..mine.len())];
                return Pick {
                    kind,
                    sender,
                    target: g,
                    size,
                };
            }
            return self.pick_for(sender, Kind::OneToOne, size, rng);
        }
        self.pick_for(sender, kind, size, rng)
    }

    fn pick_for(&self, sender: u32, kind: Kind, size: u32, rng: &mut impl Rng) -> Pick {
        let target = match kind {
            Kind::Ephemeral => self.other_online(sender, rng),
            _ => self.other_device(sender, rng),
        };
        Pick {
            kind,
            sender,
            target,
            size,
        }
    }
}

/// A group id unique to the run: a mix of the run's nonce and the index, never 0.
fn group_id(nonce: u64, g: u32) -> u64 {
    let mut z = nonce ^ (u64::from(g) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Dist, Scenario};
    use std::time::Duration;

    fn scenario() -> Scenario {
        let mut s = Scenario {
            devices: 100,
            seed: Some(5),
            ..Scenario::default()
        };
        s.load.rate = Some(100.0);
        s.mix.one_to_one = 1.0;
        s.mix.group = 1.0;
        s.mix.ephemeral = 1.0;
        s.groups.count = 10;
        s.groups.size = Dist::Uniform { min: 3, max: 30 };
        s.offline.share = 0.2;
        s.offline.reconnect_after = Duration::from_secs(1);
        s.offline.reconnect_over = Duration::from_secs(1);
        s
    }

    #[test]
    fn population_follows_the_scenario() {
        let p = Plan::new(&scenario(), 1000, 42).unwrap();
        assert_eq!(p.online.len(), 80);
        let mut times: Vec<u64> = p.reconnect_at.iter().flatten().copied().collect();
        times.sort_unstable();
        assert_eq!(times.len(), 20);
        assert_eq!(times[0], 1_000_000_000);
        assert!(*times.last().unwrap() < 2_000_000_000);
        assert_eq!(p.groups.len(), 10);
        for g in &p.groups {
            assert!((3..=30).contains(&g.members.len()));
            assert!(g.members.windows(2).all(|w| w[0] < w[1]));
            assert_ne!(g.id, 0);
        }
        let ids: std::collections::HashSet<u64> = p.groups.iter().map(|g| g.id).collect();
        assert_eq!(ids.len(), 10);
        // The same seed gives the same population; another nonce other group ids.
        let q = Plan::new(&scenario(), 1000, 43).unwrap();
        assert_eq!(q.groups[3].members, p.groups[3].members);
        assert_ne!(q.groups[3].id, p.groups[3].id);
    }

    #[test]
    fn picks_respect_kinds_and_online_devices() {
        let p = Plan::new(&scenario(), 1000, 1).unwrap();
        let mut rng = SmallRng::seed_from_u64(2);
        let mut kinds = [0; 3];
        for _ in 0..3000 {
            let pick = p.pick_open(&mut rng);
            assert!(!p.is_offline_at_start(pick.sender));
            assert_eq!(pick.size, 512);
            kinds[pick.kind as usize] += 1;
            match pick.kind {
                Kind::OneToOne => assert_ne!(pick.target, pick.sender),
                Kind::Ephemeral => {
                    assert_ne!(pick.target, pick.sender);
                    assert!(!p.is_offline_at_start(pick.target));
                }
                Kind::Group => {
                    assert!(p.groups[pick.target as usize]
                        .position(pick.sender)
                        .is_some());
                }
                Kind::Probe => unreachable!(),
            }
        }
        assert!(kinds.iter().all(|&k| k > 800), "{kinds:?}");
        let sender = p.groups[0].online[0];
        for _ in 0..100 {
            let pick = p.pick_closed(sender, &mut rng);
            assert_eq!(pick.sender, sender);
            if pick.kind == Kind::Group {
                assert!(p.groups_of[sender as usize].contains(&pick.target));
            }
        }
        let g = &p.groups[0];
        assert_eq!(p.group_recipients(0, g.members[0]), g.members.len() - 1);
    }
}
