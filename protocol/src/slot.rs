//! Stable mapping of accounts (and later groups) to slots.

/// Number of slots accounts hash into. Fixed for the life of a deployment.
pub const SLOT_COUNT: u16 = 16384;

/// The slot of an account: the top 14 bits of SplitMix64 of the account id.
///
/// The function is part of the protocol (clients in a cluster use it to pick a node), so it
/// must never change.
pub fn slot_of(account: u64) -> u16 {
    let mut z = account.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 50) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_in_range_and_stable() {
        // Pinned values: changing the hash would move every account's data.
        assert_eq!(slot_of(0), 14472);
        assert_eq!(slot_of(1), 9282);
        assert_eq!(slot_of(u64::MAX), 14646);
        for a in 0..10_000u64 {
            assert!(slot_of(a) < SLOT_COUNT);
        }
    }

    #[test]
    fn slots_spread_accounts() {
        let mut seen = vec![0u32; SLOT_COUNT as usize];
        for a in 0..(SLOT_COUNT as u64 * 8) {
            seen[slot_of(a) as usize] += 1;
        }
        let empty = seen.iter().filter(|c| **c == 0).count();
        assert!(empty < SLOT_COUNT as usize / 100, "{empty} empty slots");
    }
}
