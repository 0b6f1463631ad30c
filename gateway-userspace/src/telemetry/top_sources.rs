//! The client addresses refused most often in userspace (deny-list hits at
//! accept, policy refusals), for the status page. Bounded: the Space-Saving
//! algorithm keeps at most `CAPACITY` addresses; a new address replaces the
//! least counted one and inherits its count, so a heavy hitter is never
//! lost and a count is over-estimated by at most the `error` shown with it.

use std::{collections::HashMap, net::IpAddr, sync::Mutex, time::SystemTime};

use serde::Serialize;

/// Addresses tracked at once: far more than the page shows, few enough
/// that a flood of distinct sources costs a few kilobytes and a scan of
/// this many entries per new address.
const CAPACITY: usize = 256;

#[derive(Default)]
pub struct TopSources {
    counts: Mutex<HashMap<IpAddr, Slot>>,
}

#[derive(Debug, Clone)]
struct Slot {
    count: u64,
    error: u64,
    /// The reason of the last refusal (`deny_list`, `rate_limited`, ...).
    last_reason: &'static str,
    /// Refusals by reason since this address got its slot (they add up to
    /// `count - error`).
    reasons: Vec<(&'static str, u64)>,
    last_seen: SystemTime,
}

/// One row of the list.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TopSource {
    pub source: IpAddr,
    pub refused: u64,
    /// `refused` may be over by up to this much (0 while fewer than
    /// `CAPACITY` addresses were seen).
    pub error: u64,
    pub last_reason: &'static str,
    /// By reason, most first.
    #[serde(skip)]
    pub reasons: Vec<(&'static str, u64)>,
    #[serde(skip)]
    pub last_seen: SystemTime,
}

impl TopSources {
    pub fn record(&self, source: IpAddr, reason: &'static str) {
        let now = SystemTime::now();
        let mut counts = self.counts.lock().unwrap();
        if let Some(slot) = counts.get_mut(&source) {
            slot.count += 1;
            slot.last_reason = reason;
            slot.last_seen = now;
            match slot.reasons.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, n)) => *n += 1,
                None => slot.reasons.push((reason, 1)),
            }
            return;
        }
        let mut slot = Slot {
            count: 1,
            error: 0,
            last_reason: reason,
            reasons: vec![(reason, 1)],
            last_seen: now,
        };
        if counts.len() >= CAPACITY {
            let (&evicted, least) = counts
                .iter()
                .min_by_key(|(_, s)| s.count)
                .expect("full map has a minimum");
            slot.count += least.count;
            slot.error = least.count;
            counts.remove(&evicted);
        }
        counts.insert(source, slot);
    }

    /// The `n` most refused, most first (ties by address, for a stable page).
    pub fn top(&self, n: usize) -> Vec<TopSource> {
        let counts = self.counts.lock().unwrap();
        let mut rows: Vec<TopSource> = counts
            .iter()
            .map(|(source, slot)| {
                let mut reasons = slot.reasons.clone();
                reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                TopSource {
                    source: *source,
                    refused: slot.count,
                    error: slot.error,
                    last_reason: slot.last_reason,
                    reasons,
                    last_seen: slot.last_seen,
                }
            })
            .collect();
        rows.sort_by(|a, b| b.refused.cmp(&a.refused).then(a.source.cmp(&b.source)));
        rows.truncate(n);
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn most_refused_first_with_the_last_reason() {
        let top = TopSources::default();
        for _ in 0..3 {
            top.record(ip(1), "rate_limited");
        }
        top.record(ip(2), "acl_denied");
        top.record(ip(1), "deny_list");
        let rows = top.top(10);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].source, rows[0].refused), (ip(1), 4));
        assert_eq!(rows[0].last_reason, "deny_list");
        assert_eq!(rows[0].reasons, [("rate_limited", 3), ("deny_list", 1)]);
        assert_eq!(
            (rows[1].source, rows[1].refused, rows[1].error),
            (ip(2), 1, 0)
        );
        assert_eq!(top.top(1).len(), 1);
    }

    #[test]
    fn bounded_and_a_heavy_hitter_survives_a_flood_of_new_sources() {
        let top = TopSources::default();
        for _ in 0..100 {
            top.record(ip(0), "rate_limited");
        }
        for n in 1..=10 * CAPACITY as u32 {
            top.record(ip(n), "deny_list");
        }
        assert_eq!(top.counts.lock().unwrap().len(), CAPACITY);
        let first = &top.top(1)[0];
        assert_eq!(first.source, ip(0));
        assert_eq!((first.refused, first.error), (100, 0));
    }
}
