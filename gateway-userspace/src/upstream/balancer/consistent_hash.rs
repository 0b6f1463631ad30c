//! Consistent hashing: requests with the same key (client IP, a header, a
//! cookie) go to the same target, and removing one of N targets moves only
//! the keys that target had (about 1/N). The table is Maglev's (Google,
//! NSDI 2016; Envoy's `MAGLEV`): each target fills slots of a prime-sized
//! table in the order of its own permutation, in turns proportional to its
//! weight. Lookups are one modulo; the table is a fixed ~256 KiB whatever
//! the weights, and a target keeps most of its slots when another leaves.

use std::net::IpAddr;

use http::{header, HeaderMap};

use super::Eligible;
use crate::{config::HashOn, upstream::target::Target};

/// Smallest table: prime, and ≥ 100 slots per target up to 655 targets
/// (Envoy's default size), which keeps shares within about 1% of weights.
const MIN_TABLE_SIZE: usize = 65_537;
/// Slots per target the table is kept above (Maglev paper: M ≫ N).
const SLOTS_PER_TARGET: usize = 100;

pub struct ConsistentHash {
    hash_on: HashOn,
    table: Maglev,
}

impl ConsistentHash {
    pub fn new(targets: &[Target], hash_on: HashOn) -> Self {
        let members: Vec<(&str, u32)> = targets
            .iter()
            .map(|t| (t.label.as_str(), t.weight))
            .collect();
        Self {
            hash_on,
            table: Maglev::new(&members),
        }
    }

    /// The request's key: the configured header or cookie when present,
    /// else the client IP.
    pub fn key(&self, headers: &HeaderMap, client_ip: IpAddr) -> u64 {
        let value = match &self.hash_on {
            HashOn::ClientIp => None,
            HashOn::Header(name) => headers.get(name).map(|v| v.as_bytes()),
            HashOn::Cookie(name) => cookie(headers, name),
        };
        match value {
            Some(bytes) => hash(KEY_SEED, bytes),
            None => match client_ip.to_canonical() {
                IpAddr::V4(ip) => hash(KEY_SEED, &ip.octets()),
                IpAddr::V6(ip) => hash(KEY_SEED, &ip.octets()),
            },
        }
    }

    /// The key's target; for a retry, the next eligible one along the
    /// table from the key's slot (the same for every request with the key).
    pub fn pick(&self, key: u64, eligible: &Eligible) -> usize {
        self.table.lookup(key, |i| eligible.allows(i))
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}

struct Maglev {
    /// Slot → target index.
    table: Vec<u32>,
}

impl Maglev {
    /// `members`: each target's identity (its address) and weight.
    fn new(members: &[(&str, u32)]) -> Self {
        if members.is_empty() {
            return Self { table: Vec::new() };
        }
        let size = table_size(members.len());
        let mut table = vec![u32::MAX; size];
        struct Fill {
            offset: u64,
            skip: u64,
            next: u64,
            weight: u64,
            /// Turns are taken when `iteration × weight` reaches this.
            due: u64,
        }
        let m = size as u64;
        let mut fills: Vec<Fill> = members
            .iter()
            .map(|(name, weight)| Fill {
                offset: hash(OFFSET_SEED, name.as_bytes()) % m,
                skip: hash(SKIP_SEED, name.as_bytes()) % (m - 1) + 1,
                next: 0,
                weight: u64::from((*weight).max(1)),
                due: 0,
            })
            .collect();
        let max_weight = fills.iter().map(|f| f.weight).max().unwrap_or(1);
        let mut filled = 0;
        // Every iteration the heaviest target takes a slot, so this ends
        // after at most `size` iterations.
        let mut iteration = 1u64;
        while filled < size {
            for (i, fill) in fills.iter_mut().enumerate() {
                if filled == size {
                    break;
                }
                // A target of weight w takes a turn every max_weight / w
                // iterations.
                if iteration * fill.weight < fill.due {
                    continue;
                }
                fill.due += max_weight;
                // Its permutation visits every slot (size is prime), so a
                // free one is found while any is left.
                loop {
                    let slot = ((fill.offset + fill.next * fill.skip) % m) as usize;
                    fill.next += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
            }
            iteration += 1;
        }
        Self { table }
    }

    /// The target of `key`, or of the first slot after it that `eligible`
    /// allows.
    fn lookup(&self, key: u64, eligible: impl Fn(usize) -> bool) -> usize {
        let size = self.table.len();
        let start = (key % size as u64) as usize;
        (0..size)
            .map(|k| self.table[(start + k) % size] as usize)
            .find(|&i| eligible(i))
            .expect("every target has a slot and one is eligible")
    }
}

/// The smallest prime ≥ max(MIN_TABLE_SIZE, SLOTS_PER_TARGET × targets).
fn table_size(targets: usize) -> usize {
    let mut n = MIN_TABLE_SIZE.max(targets * SLOTS_PER_TARGET);
    while !is_prime(n) {
        n += 1;
    }
    n
}

fn is_prime(n: usize) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

const KEY_SEED: u64 = 0;
const OFFSET_SEED: u64 = 1;
const SKIP_SEED: u64 = 2;

/// FNV-1a with a murmur3 finaliser: fixed (not `std`'s hasher, whose
/// output may change between Rust releases), so keys keep their targets
/// across upgrades and restarts, and well mixed for short keys like IPs.
fn hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::upstream::target::targets as make;

    const KEYS: u64 = 100_000;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    /// Key → target name, for `KEYS` keys.
    fn assignment(names: &[String], weights: &[u32]) -> Vec<String> {
        let members: Vec<(&str, u32)> = names
            .iter()
            .map(String::as_str)
            .zip(weights.iter().copied())
            .collect();
        let maglev = Maglev::new(&members);
        (0..KEYS)
            .map(|k| names[maglev.lookup(hash(KEY_SEED, &k.to_be_bytes()), |_| true)].clone())
            .collect()
    }

    #[test]
    fn removing_one_of_n_targets_moves_about_one_nth_of_the_keys() {
        let n = 10;
        let all = names(n);
        let before = assignment(&all, &[1; 10]);
        let removed = &all[3];
        let remaining: Vec<String> = all.iter().filter(|t| *t != removed).cloned().collect();
        let after = assignment(&remaining, &[1; 9]);
        let mut moved_from_removed = 0;
        let mut moved_otherwise = 0;
        for (b, a) in before.iter().zip(&after) {
            if b == removed {
                moved_from_removed += 1;
            } else if b != a {
                moved_otherwise += 1;
            }
        }
        let share = |count: u64| count as f64 / KEYS as f64;
        // The removed target's keys must move: about 1/N of them.
        assert!(
            (share(moved_from_removed) - 0.1).abs() < 0.01,
            "{moved_from_removed}"
        );
        // Maglev trades a little extra disruption for its balance; a naive
        // `hash % N` would move 90% of the keys.
        assert!(
            share(moved_otherwise) < 0.01,
            "{moved_otherwise} others moved"
        );
        // Adding it back restores the original assignment exactly.
        assert_eq!(assignment(&all, &[1; 10]), before);
    }

    #[test]
    fn shares_follow_weights() {
        let names = names(3);
        let keys = assignment(&names, &[1, 2, 7]);
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for k in &keys {
            *counts.entry(k.as_str()).or_default() += 1;
        }
        for (name, expected) in names.iter().zip([0.1, 0.2, 0.7]) {
            let share = counts[name.as_str()] as f64 / KEYS as f64;
            assert!((share - expected).abs() < 0.01, "{name}: {share}");
        }
    }

    #[test]
    fn extreme_weights_still_give_every_target_slots() {
        let names = names(2);
        let members = [(names[0].as_str(), 1), (names[1].as_str(), 1000)];
        let maglev = Maglev::new(&members);
        let light = maglev.table.iter().filter(|&&i| i == 0).count();
        assert!((60..=70).contains(&light), "{light}");
        assert!(maglev.table.iter().all(|&i| i < 2));
    }

    #[test]
    fn table_sizes_are_prime_and_grow_with_targets() {
        assert_eq!(table_size(1), 65_537);
        assert!(is_prime(table_size(1000)) && table_size(1000) >= 100_000);
    }

    #[test]
    fn keys_come_from_the_header_or_cookie_else_the_client_ip() {
        let targets = make(&[1, 1, 1]);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other_ip: IpAddr = "192.0.2.8".parse().unwrap();
        let headers = |pairs: &[(&str, &str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            map
        };

        let by_ip = ConsistentHash::new(&targets, HashOn::ClientIp);
        assert_eq!(
            by_ip.key(&headers(&[("x-user", "a")]), ip),
            by_ip.key(&HeaderMap::new(), ip)
        );
        assert_ne!(
            by_ip.key(&HeaderMap::new(), ip),
            by_ip.key(&HeaderMap::new(), other_ip)
        );
        // An IPv4-mapped IPv6 client is the same client.
        assert_eq!(
            by_ip.key(&HeaderMap::new(), "::ffff:192.0.2.7".parse().unwrap()),
            by_ip.key(&HeaderMap::new(), ip)
        );

        let by_header = ConsistentHash::new(&targets, "header:X-User".parse().unwrap());
        let user_a = by_header.key(&headers(&[("x-user", "a")]), ip);
        assert_eq!(
            user_a,
            by_header.key(&headers(&[("X-User", "a")]), other_ip)
        );
        assert_ne!(user_a, by_header.key(&headers(&[("x-user", "b")]), ip));
        // Absent: the client IP.
        assert_eq!(
            by_header.key(&HeaderMap::new(), ip),
            by_ip.key(&HeaderMap::new(), ip)
        );

        let by_cookie = ConsistentHash::new(&targets, "cookie:sid".parse().unwrap());
        let sid = by_cookie.key(&headers(&[("cookie", "theme=dark; sid=42")]), ip);
        assert_eq!(
            sid,
            by_cookie.key(
                &headers(&[("cookie", "a=1"), ("cookie", " sid = 42 ;x=y")]),
                other_ip
            )
        );
        assert_ne!(sid, by_cookie.key(&headers(&[("cookie", "sid=43")]), ip));
        assert_eq!(
            by_cookie.key(&headers(&[("cookie", "notsid=42; sidx=1")]), ip),
            by_ip.key(&HeaderMap::new(), ip),
            "only the exact cookie name counts"
        );
    }

    #[test]
    fn the_same_key_picks_the_same_target_and_retries_walk_on() {
        let targets = make(&[1, 1, 1, 1]);
        let hash = ConsistentHash::new(&targets, HashOn::ClientIp);
        let mut seen = std::collections::HashSet::new();
        for key in 0..200u64 {
            let first = hash.pick(key, &Eligible::Any);
            assert_eq!(first, hash.pick(key, &Eligible::Any));
            seen.insert(first);
            let retry = hash.pick(key, &Eligible::Untried(&[first]));
            assert_ne!(retry, first);
            assert_eq!(retry, hash.pick(key, &Eligible::Untried(&[first])));
        }
        assert_eq!(seen.len(), 4, "keys spread over every target");
    }
}
