//! Counters in this process: one entry per key in a sharded map, each
//! entry small (a state per limit) and forgotten once it no longer matters,
//! so that a million keys cost tens of megabytes and an idle key nothing.

use std::{collections::HashMap, sync::Mutex};

use super::algorithm::{self, Decision, Limit, State};
use crate::config::RateAlgorithm;

/// Shards: enough that workers rarely meet on one lock.
const SHARDS: usize = 64;

/// Keys are already random-seeded hashes: no need to hash them again.
#[derive(Default, Clone, Copy)]
pub struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        // The top bits chose the shard (all alike within one); the map
        // takes its control bits from the top.
        self.0.rotate_left(29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Hashed = std::hash::BuildHasherDefault<IdentityHasher>;

struct Entry {
    states: Box<[State]>,
    /// When the entry stops mattering (it then equals a new one).
    expires: u64,
}

struct Shard {
    map: HashMap<u64, Entry, Hashed>,
    /// When expired entries are next swept out.
    next_sweep: u64,
}

/// One policy's counters.
pub struct LocalCounters {
    algorithm: RateAlgorithm,
    limits: Box<[Limit]>,
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    /// How often expired entries are swept out: the longest window (an
    /// entry lives at most two).
    sweep_every: u64,
}

impl LocalCounters {
    pub fn new(algorithm: RateAlgorithm, limits: &[Limit], max_keys: usize) -> Self {
        let longest = limits.iter().map(|l| l.window).max().unwrap_or(1);
        Self {
            algorithm,
            limits: limits.into(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::default(),
                        next_sweep: 0,
                    })
                })
                .collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            sweep_every: longest,
        }
    }

    /// Decides on (and counts) one request of `key` at `now`.
    pub fn check(&self, key: u64, now: u64) -> Decision {
        // The top bits pick the shard; the map uses all of them.
        let index = (key >> 58) as usize % SHARDS;
        let mut shard = self.shards[index].lock().unwrap_or_else(|e| e.into_inner());
        if now >= shard.next_sweep {
            shard.map.retain(|_, e| e.expires > now);
            shard.next_sweep = now.saturating_add(self.sweep_every);
        }
        if shard.map.len() >= self.per_shard && !shard.map.contains_key(&key) {
            self.make_room(&mut shard, now);
        }
        let entry = shard.map.entry(key).or_insert_with(|| Entry {
            states: vec![State::default(); self.limits.len()].into(),
            expires: 0,
        });
        let decision = algorithm::check(self.algorithm, &self.limits, &mut entry.states, now);
        entry.expires = self
            .limits
            .iter()
            .zip(entry.states.iter())
            .map(|(l, s)| algorithm::expires(self.algorithm, l, s))
            .max()
            .unwrap_or(0);
        decision
    }

    /// A full shard: expired entries go; if that frees less than an
    /// eighth, an eighth more go, those closest to expiring first (they
    /// hold the least), so the next inserts do not sweep again.
    fn make_room(&self, shard: &mut Shard, now: u64) {
        shard.map.retain(|_, e| e.expires > now);
        let target = self.per_shard - self.per_shard.div_ceil(8);
        if shard.map.len() > target {
            let mut expiries: Vec<u64> = shard.map.values().map(|e| e.expires).collect();
            let cut = shard.map.len() - target;
            let (_, threshold, _) = expiries.select_nth_unstable(cut - 1);
            let threshold = *threshold;
            let mut dropped = 0;
            shard.map.retain(|_, e| {
                if dropped < cut && e.expires <= threshold {
                    dropped += 1;
                    false
                } else {
                    true
                }
            });
        }
    }

    /// Keys held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn limits() -> [Limit; 1] {
        [Limit {
            requests: 2,
            window: S,
            burst: 2,
        }]
    }

    #[test]
    fn keys_are_counted_apart() {
        let c = LocalCounters::new(RateAlgorithm::FixedWindow, &limits(), 1000);
        let now = 10 * S;
        assert!(c.check(1, now).allowed);
        assert!(c.check(1, now).allowed);
        assert!(!c.check(1, now).allowed);
        assert!(c.check(2, now).allowed);
        assert!(c.check(u64::MAX, now).allowed);
    }

    #[test]
    fn a_hundred_thousand_keys_are_held_and_expired_ones_swept() {
        let c = LocalCounters::new(RateAlgorithm::SlidingWindow, &limits(), 1_000_000);
        let now = 10 * S;
        let hash = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for i in 0..100_000 {
            assert!(c.check(hash(i), now).allowed);
        }
        assert_eq!(c.len(), 100_000);
        for i in 0..100_000 {
            assert!(c.check(hash(i), now).allowed, "second request of {i}");
            assert!(!c.check(hash(i), now).allowed, "third request of {i}");
        }
        // Two windows later every key is back to new, and swept as soon
        // as its shard is touched.
        let later = now + 2 * S;
        for i in 0..SHARDS as u64 * 64 {
            c.check(hash(1_000_000 + i), later);
        }
        assert!(c.len() <= SHARDS * 64, "{}", c.len());
    }

    #[test]
    fn a_full_shard_forgets_keys_closest_to_expiring() {
        // One key per shard at most... ten for the lot.
        let c = LocalCounters::new(RateAlgorithm::FixedWindow, &limits(), 10 * SHARDS);
        let now = 10 * S;
        let hash = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for i in 0..100_000 {
            c.check(hash(i), now + i);
        }
        assert!(c.len() <= 10 * SHARDS, "{}", c.len());
        assert!(c.len() >= 8 * SHARDS, "{}", c.len());
    }
}
