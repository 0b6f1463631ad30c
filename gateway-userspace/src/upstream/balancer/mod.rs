//! Balancers: which target each attempt goes to. One file per algorithm;
//! [`Balancer`] is the one place that chooses between them, and [`Tried`]
//! keeps a retry away from the targets that already failed it.

mod consistent_hash;
mod ewma;
mod least_conn;
mod p2c_ewma;
mod round_robin;

use std::{net::IpAddr, time::Duration};

use http::HeaderMap;
use tokio::time::Instant;

pub use self::{
    consistent_hash::ConsistentHash, least_conn::LeastConn, p2c_ewma::P2cEwma,
    round_robin::SmoothWeighted,
};
use super::target::Target;
use crate::config;

pub enum Balancer {
    RoundRobin(SmoothWeighted),
    LeastConn(LeastConn),
    ConsistentHash(ConsistentHash),
    P2cEwma(P2cEwma),
}

impl Balancer {
    pub fn new(config: &config::Upstream, targets: &[Target], now: Instant) -> Self {
        match config.balancer {
            config::Balancer::RoundRobin => {
                Balancer::RoundRobin(SmoothWeighted::new(targets.len()))
            }
            config::Balancer::LeastConn => Balancer::LeastConn(LeastConn::new(targets.len())),
            config::Balancer::ConsistentHash => {
                Balancer::ConsistentHash(ConsistentHash::new(targets, config.hash_on()))
            }
            config::Balancer::P2cEwma => {
                Balancer::P2cEwma(P2cEwma::new(targets.len(), config.ewma_decay(), now))
            }
        }
    }

    /// The hash key of a request, for `consistent_hash` only.
    pub fn hash_key(&self, headers: &HeaderMap, client_ip: IpAddr) -> Option<u64> {
        match self {
            Balancer::ConsistentHash(hash) => Some(hash.key(headers, client_ip)),
            _ => None,
        }
    }

    /// The target for the next attempt of a request.
    #[cfg(test)]
    pub fn pick(&self, targets: &[Target], key: Option<u64>, tried: &Tried, now: Instant) -> usize {
        self.pick_among(targets, key, &tried.eligible(targets.len()), now)
    }

    /// The target for the next attempt among those `eligible` allows (at
    /// least one).
    pub fn pick_among(
        &self,
        targets: &[Target],
        key: Option<u64>,
        eligible: &Eligible,
        now: Instant,
    ) -> usize {
        let eligible = *eligible;
        match self {
            Balancer::RoundRobin(rr) => rr
                .pick(targets, |i| eligible.allows(i))
                .expect("at least one target is eligible"),
            Balancer::LeastConn(lc) => lc.pick(targets, &eligible),
            Balancer::ConsistentHash(hash) => hash.pick(key.unwrap_or_default(), &eligible),
            Balancer::P2cEwma(p2c) => p2c.pick(targets, &eligible, now),
        }
    }

    /// How long target `index` took to send response headers (or the
    /// penalty for failing to), for the balancers that learn from it.
    pub fn observe(&self, index: usize, latency: Duration, now: Instant) {
        if let Balancer::P2cEwma(p2c) = self {
            p2c.observe(index, latency, now);
        }
    }
}

/// The targets earlier attempts of one request went to, in order.
#[derive(Debug, Default)]
pub struct Tried(Vec<usize>);

impl Tried {
    pub fn push(&mut self, index: usize) {
        self.0.push(index);
    }

    /// Where the next attempt may go: a target not tried yet; when all
    /// were, any but the last one; with a single target, that one.
    pub fn eligible(&self, targets: usize) -> Eligible<'_> {
        if self.0.is_empty() {
            return Eligible::Any;
        }
        if (0..targets).any(|i| !self.0.contains(&i)) {
            return Eligible::Untried(&self.0);
        }
        match self.0.last() {
            Some(&last) if targets > 1 => Eligible::Not(last),
            _ => Eligible::Any,
        }
    }
}

/// Which targets an attempt may go to (see [`Tried::eligible`]).
#[derive(Debug, Clone, Copy)]
pub enum Eligible<'a> {
    Any,
    Untried(&'a [usize]),
    Not(usize),
    /// Those set (by index): the healthy ones (see `health::Choice`).
    Only(&'a [bool]),
}

impl Eligible<'_> {
    pub fn allows(&self, index: usize) -> bool {
        match self {
            Eligible::Any => true,
            Eligible::Untried(tried) => !tried.contains(&index),
            Eligible::Not(excluded) => index != *excluded,
            Eligible::Only(set) => set.get(index).copied().unwrap_or(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::target::targets;

    fn balancer(yaml: &str, targets: &[Target]) -> Balancer {
        let config: config::Upstream = serde_yaml::from_str(yaml).unwrap();
        Balancer::new(&config, targets, Instant::now())
    }

    #[test]
    fn a_retry_never_goes_back_to_a_tried_target_while_another_is_left() {
        let targets = targets(&[1, 1, 1, 5]);
        let now = Instant::now();
        for kind in ["round_robin", "least_conn", "consistent_hash", "p2c_ewma"] {
            let b = balancer(
                &format!("{{targets: ['127.0.0.1:1'], balancer: {kind}}}"),
                &targets,
            );
            for key in 0..50u64 {
                let mut tried = Tried::default();
                let mut seen = Vec::new();
                for _ in 0..targets.len() {
                    let pick = b.pick(&targets, Some(key), &tried, now);
                    assert!(
                        !seen.contains(&pick),
                        "{kind}: {pick} picked twice: {seen:?}"
                    );
                    seen.push(pick);
                    tried.push(pick);
                }
                // All tried: anything but the last one.
                let again = b.pick(&targets, Some(key), &tried, now);
                assert_ne!(Some(&again), seen.last(), "{kind}");
            }
        }
    }

    #[test]
    fn a_single_target_is_retried_on_itself() {
        let targets = targets(&[1]);
        let mut tried = Tried::default();
        tried.push(0);
        assert!(matches!(tried.eligible(1), Eligible::Any));
        let b = balancer("{targets: ['127.0.0.1:1']}", &targets);
        assert_eq!(b.pick(&targets, None, &tried, Instant::now()), 0);
    }
}
