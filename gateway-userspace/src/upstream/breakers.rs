//! Circuit breakers (Envoy's name for per-upstream limits): a request over
//! `max_requests` in flight is refused with 503 at once, so that a slow
//! upstream sheds load instead of piling up requests it will never serve.

use std::sync::{
    atomic::{AtomicU64, AtomicUsize, Ordering},
    Arc,
};

use super::target::Counted;
use crate::{config, exchange::Rejection};

pub struct CircuitBreakers {
    max_requests: usize,
    requests: Arc<AtomicUsize>,
    shed: AtomicU64,
    /// The second (since the process started) of the last shedding log
    /// line: at most one a second per upstream.
    logged: AtomicU64,
}

impl CircuitBreakers {
    pub fn new(config: &config::CircuitBreakers) -> Self {
        Self {
            max_requests: config.max_requests,
            requests: Arc::default(),
            shed: AtomicU64::new(0),
            logged: AtomicU64::new(u64::MAX),
        }
    }

    /// A place among the requests in flight, held until the response ends;
    /// refused when they are all taken.
    pub fn admit(&self, upstream: &str) -> Result<Counted, Rejection> {
        let held = Counted::new(self.requests.clone());
        if self.requests.load(Ordering::Relaxed) <= self.max_requests {
            return Ok(held);
        }
        drop(held);
        self.shed.fetch_add(1, Ordering::Relaxed);
        let second = crate::policy::unix_now().max(0) as u64;
        if self.logged.swap(second, Ordering::Relaxed) != second {
            tracing::warn!(
                upstream,
                limit = "max_requests",
                max = self.max_requests,
                shed_total = self.shed.load(Ordering::Relaxed),
                "upstream at its limit of requests in flight; shedding load with 503"
            );
        }
        Err(Rejection::UpstreamOverloaded {
            upstream: upstream.to_string(),
            limit: "max_requests",
            max: self.max_requests,
        })
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn max_requests(&self) -> usize {
        self.max_requests
    }

    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_over_the_limit_are_refused_until_one_ends() {
        let breakers = CircuitBreakers::new(&config::CircuitBreakers { max_requests: 2 });
        let a = breakers.admit("u").unwrap();
        let b = breakers.admit("u").unwrap();
        let refused = breakers.admit("u").unwrap_err();
        assert_eq!(refused.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.kind(), "upstream_overloaded");
        assert_eq!((breakers.requests(), breakers.shed()), (2, 1));
        drop(a);
        let c = breakers.admit("u").unwrap();
        assert_eq!(breakers.requests(), 2);
        drop((b, c));
        assert_eq!(breakers.requests(), 0);
    }
}
