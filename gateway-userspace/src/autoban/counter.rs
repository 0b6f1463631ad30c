//! Signal counts per (rule, source), in sliding windows, in bounded memory.
//!
//! Each counter is two fixed windows (the current one and the one before),
//! weighted by how much of the previous window the sliding one still
//! covers: Cloudflare's and nginx's approximation, exact when signals are
//! spread evenly, and O(1) memory per source whatever the count.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use ipnet::IpNet;

/// How often at most a full store sweeps out its stale counters.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    current: u32,
    previous: u32,
    within: Duration,
}

impl Window {
    fn new(now: Instant, within: Duration) -> Self {
        Self {
            start: now,
            current: 0,
            previous: 0,
            within,
        }
    }

    /// Counts one signal; returns the sliding count.
    fn hit(&mut self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed >= self.within * 2 {
            *self = Self::new(now, self.within);
        } else if elapsed >= self.within {
            self.previous = self.current;
            self.current = 0;
            self.start += self.within;
        }
        self.current = self.current.saturating_add(1);
        let into = now.saturating_duration_since(self.start).as_secs_f64();
        let covered = 1.0 - (into / self.within.as_secs_f64()).min(1.0);
        f64::from(self.previous) * covered + f64::from(self.current)
    }

    /// Nothing counted in it matters any more.
    fn stale(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.start) >= self.within * 2
    }
}

/// What [`Counters::hit`] found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// The source's count within the rule's window, this signal included.
    pub count: f64,
    /// Whether another source's counter was evicted to make room.
    pub evicted: bool,
}

/// Counters by (rule index, source prefix), at most `max` of them.
#[derive(Debug)]
pub struct Counters {
    max: usize,
    map: HashMap<(usize, IpNet), Window>,
    last_sweep: Option<Instant>,
}

impl Counters {
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            map: HashMap::new(),
            last_sweep: None,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }

    /// Counts a signal of `rule` from `source`. When the store is full, the
    /// stale counters are swept out (at most once a second); when it is
    /// still full, an arbitrary counter is evicted: a flood of distinct
    /// sources costs bounded memory, at the price of forgetting some counts.
    pub fn hit(&mut self, rule: usize, source: IpNet, within: Duration, now: Instant) -> Hit {
        let key = (rule, source);
        let mut evicted = false;
        if !self.map.contains_key(&key) && self.map.len() >= self.max {
            if self
                .last_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_INTERVAL)
            {
                self.last_sweep = Some(now);
                self.map.retain(|_, w| !w.stale(now));
            }
            if self.map.len() >= self.max {
                // Hash order: which one goes is not up to the clients.
                if let Some(victim) = self.map.keys().next().copied() {
                    self.map.remove(&victim);
                    evicted = true;
                }
            }
        }
        let count = self
            .map
            .entry(key)
            .or_insert_with(|| Window::new(now, within))
            .hit(now);
        Hit { count, evicted }
    }

    /// Forgets `source`'s count for `rule` (after a ban).
    pub fn reset(&mut self, rule: usize, source: IpNet) {
        self.map.remove(&(rule, source));
    }

    /// Keeps the counters of the rules `keep` maps to their new index (a
    /// reload that left them unchanged); drops the others.
    pub fn remap(&mut self, keep: &HashMap<usize, usize>) {
        let old = std::mem::take(&mut self.map);
        self.map = old
            .into_iter()
            .filter_map(|((rule, source), w)| keep.get(&rule).map(|new| ((*new, source), w)))
            .collect();
    }

    pub fn set_max(&mut self, max: usize) {
        self.max = max.max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn counts_within_the_window_and_forgets_after_it() {
        let t0 = Instant::now();
        let within = Duration::from_secs(10);
        let mut c = Counters::new(100);
        let a = net("192.0.2.1/32");
        for i in 1..=5 {
            assert_eq!(c.hit(0, a, within, t0).count, f64::from(i));
        }
        // Two windows later nothing is left.
        assert_eq!(c.hit(0, a, within, t0 + within * 2).count, 1.0);
        // Another rule, another source: separate counts.
        assert_eq!(c.hit(1, a, within, t0).count, 1.0);
        assert_eq!(c.hit(0, net("192.0.2.2/32"), within, t0).count, 1.0);
    }

    #[test]
    fn the_window_slides() {
        let t0 = Instant::now();
        let within = Duration::from_secs(10);
        let mut c = Counters::new(100);
        let a = net("192.0.2.1/32");
        for _ in 0..10 {
            c.hit(0, a, within, t0);
        }
        // A quarter into the next window, three quarters of the previous
        // ten still count.
        let count = c
            .hit(0, a, within, t0 + Duration::from_millis(12_500))
            .count;
        assert!((count - 8.5).abs() < 1e-9, "{count}");
    }

    #[test]
    fn memory_is_bounded_under_a_flood_of_sources() {
        let t0 = Instant::now();
        let within = Duration::from_secs(60);
        let mut c = Counters::new(64);
        let mut evictions = 0;
        for i in 0..10_000u32 {
            let source = IpNet::from(std::net::IpAddr::from(std::net::Ipv4Addr::from(
                0x0a00_0000 + i,
            )));
            if c.hit(0, source, within, t0).evicted {
                evictions += 1;
            }
            assert!(c.len() <= 64);
        }
        assert_eq!(evictions, 10_000 - 64);
        // Stale counters are swept before live ones are evicted.
        let later = t0 + within * 3;
        let hit = c.hit(0, net("198.51.100.1/32"), within, later);
        assert!(!hit.evicted);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn remap_keeps_unchanged_rules_only() {
        let t0 = Instant::now();
        let within = Duration::from_secs(60);
        let mut c = Counters::new(100);
        let a = net("192.0.2.1/32");
        c.hit(0, a, within, t0);
        c.hit(1, a, within, t0);
        c.remap(&HashMap::from([(1, 0)]));
        assert_eq!(c.len(), 1);
        assert_eq!(c.hit(0, a, within, t0).count, 2.0);
    }
}
