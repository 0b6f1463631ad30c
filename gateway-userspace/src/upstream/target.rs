//! One target of an upstream as the balancers see it: its address, its
//! weight, and how many requests it is serving right now.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use http::uri::Authority;

/// Cloned when the target set changes (`Upstream::set_targets`): the clone
/// shares the in-flight count.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// Relative share of the traffic (1..=1000, validated).
    pub weight: u32,
    /// `addr` as a URI authority, parsed once.
    pub authority: Authority,
    /// `addr` as text: the metrics label and the consistent-hash identity.
    pub label: String,
    in_flight: Arc<AtomicUsize>,
}

impl Target {
    /// `weight` as validated (1..=1000; 0 counts as 1).
    pub fn new(addr: SocketAddr, weight: u32) -> Self {
        let label = addr.to_string();
        Self {
            addr,
            weight: weight.max(1),
            authority: label
                .parse()
                .expect("a socket address is a valid authority"),
            label,
            in_flight: Arc::default(),
        }
    }

    /// Requests sent to this target whose response has not ended yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts one request as in flight until the guard is dropped.
    pub fn start(&self) -> InFlight {
        InFlight {
            _target: Counted::new(self.in_flight.clone()),
            _upstream: None,
        }
    }
}

/// One request in flight to a target; dropping it ends the count. It lives
/// in the response body, so a request counts until its body is done. It
/// may also hold the request's place among the upstream's requests in
/// flight (`circuit_breakers.max_requests`).
#[derive(Debug)]
pub struct InFlight {
    _target: Counted,
    _upstream: Option<Counted>,
}

impl InFlight {
    /// This guard, also holding `upstream` until it is dropped.
    pub fn and(self, upstream: Counted) -> Self {
        Self {
            _upstream: Some(upstream),
            ..self
        }
    }
}

/// One more in a count until dropped.
#[derive(Debug)]
pub struct Counted(Arc<AtomicUsize>);

impl Counted {
    pub fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
pub(crate) fn targets(weights: &[u32]) -> Vec<Target> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| {
            Target::new(SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)), weight)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_counts_until_the_guard_drops() {
        let t = &targets(&[1])[0];
        let a = t.start();
        let b = t.start();
        assert_eq!(t.in_flight(), 2);
        drop(a);
        assert_eq!(t.in_flight(), 1);
        drop(b);
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.label, "127.0.0.1:9000");
        assert_eq!(t.authority.as_str(), "127.0.0.1:9000");
    }
}
