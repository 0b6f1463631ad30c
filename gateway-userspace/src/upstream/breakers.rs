//! Circuit breakers (Envoy's name for per-upstream limits): a request over
//! `max_requests` in flight, or one that needs a new connection beyond
//! `max_connections` or `max_pending_requests`, is refused with 503 at
//! once, so that a slow upstream sheds load instead of piling up requests
//! and connections it will never serve.

use std::sync::{
    atomic::{AtomicU64, AtomicUsize, Ordering},
    Arc,
};

use super::{client::SendError, target::Counted};
use crate::{config, exchange::Rejection};

/// The limits, in the order of `Limit as usize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Requests,
    Connections,
    PendingRequests,
}

impl Limit {
    pub const ALL: [Limit; 3] = [Limit::Requests, Limit::Connections, Limit::PendingRequests];

    pub fn name(self) -> &'static str {
        match self {
            Limit::Requests => "max_requests",
            Limit::Connections => "max_connections",
            Limit::PendingRequests => "max_pending_requests",
        }
    }
}

pub struct CircuitBreakers {
    upstream: String,
    /// By `Limit as usize`: the maximum, the count now, and the requests
    /// refused.
    max: [usize; 3],
    now: [Arc<AtomicUsize>; 3],
    shed: [AtomicU64; 3],
    /// The second (since the Unix epoch) of the last shedding log line: at
    /// most one a second per upstream.
    logged: AtomicU64,
}

impl CircuitBreakers {
    pub fn new(upstream: &str, config: &config::CircuitBreakers) -> Self {
        Self {
            upstream: upstream.to_string(),
            max: [
                config.max_requests,
                config.max_connections,
                config.max_pending_requests,
            ],
            now: Default::default(),
            shed: Default::default(),
            logged: AtomicU64::new(u64::MAX),
        }
    }

    /// A place among the requests in flight, held until the response ends;
    /// refused when they are all taken.
    pub fn admit(&self) -> Result<Counted, Rejection> {
        self.take(Limit::Requests)
            .map_err(|max| Rejection::UpstreamOverloaded {
                upstream: self.upstream.clone(),
                limit: Limit::Requests.name(),
                max,
            })
    }

    /// A place among the connects under way, held until the connection is
    /// made or failed.
    pub fn connecting(&self) -> Result<Counted, SendError> {
        self.take(Limit::PendingRequests)
            .map_err(|max| SendError::Overloaded {
                limit: Limit::PendingRequests.name(),
                max,
            })
    }

    /// A place among the open connections, held by the connection.
    pub fn connection(&self) -> Result<Counted, SendError> {
        self.take(Limit::Connections)
            .map_err(|max| SendError::Overloaded {
                limit: Limit::Connections.name(),
                max,
            })
    }

    /// A place among the open connections if one is free, without counting
    /// a refusal (the caller may close an idle connection and ask again).
    pub fn free_connection(&self) -> Option<Counted> {
        self.try_take(Limit::Connections)
    }

    fn try_take(&self, limit: Limit) -> Option<Counted> {
        let i = limit as usize;
        let held = Counted::new(self.now[i].clone());
        (self.now[i].load(Ordering::Relaxed) <= self.max[i]).then_some(held)
    }

    /// One more of `limit`, or its maximum when that is reached (counted
    /// and logged as shed).
    fn take(&self, limit: Limit) -> Result<Counted, usize> {
        if let Some(held) = self.try_take(limit) {
            return Ok(held);
        }
        let i = limit as usize;
        self.shed[i].fetch_add(1, Ordering::Relaxed);
        let second = crate::policy::unix_now().max(0) as u64;
        if self.logged.swap(second, Ordering::Relaxed) != second {
            tracing::warn!(
                upstream = %self.upstream,
                limit = limit.name(),
                max = self.max[i],
                shed_total = self.shed[i].load(Ordering::Relaxed),
                "upstream at a circuit breaker limit; shedding load with 503"
            );
        }
        Err(self.max[i])
    }

    /// The count of `limit` now.
    pub fn count(&self, limit: Limit) -> usize {
        self.now[limit as usize].load(Ordering::Relaxed)
    }

    pub fn max(&self, limit: Limit) -> usize {
        self.max[limit as usize]
    }

    /// Requests refused at `limit` so far.
    pub fn shed(&self, limit: Limit) -> u64 {
        self.shed[limit as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers(max: usize) -> CircuitBreakers {
        CircuitBreakers::new(
            "u",
            &config::CircuitBreakers {
                max_requests: max,
                max_connections: max,
                max_pending_requests: max,
            },
        )
    }

    #[test]
    fn requests_over_the_limit_are_refused_until_one_ends() {
        let breakers = breakers(2);
        let a = breakers.admit().unwrap();
        let b = breakers.admit().unwrap();
        let refused = breakers.admit().unwrap_err();
        assert_eq!(refused.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.kind(), "upstream_overloaded");
        assert_eq!(
            (
                breakers.count(Limit::Requests),
                breakers.shed(Limit::Requests)
            ),
            (2, 1)
        );
        drop(a);
        let c = breakers.admit().unwrap();
        assert_eq!(breakers.count(Limit::Requests), 2);
        drop((b, c));
        assert_eq!(breakers.count(Limit::Requests), 0);
    }

    #[test]
    fn each_limit_counts_on_its_own() {
        let breakers = breakers(1);
        let _request = breakers.admit().unwrap();
        let connection = breakers.connection().unwrap();
        let _pending = breakers.connecting().unwrap();
        assert!(matches!(
            breakers.connection().unwrap_err(),
            SendError::Overloaded {
                limit: "max_connections",
                max: 1
            }
        ));
        assert!(matches!(
            breakers.connecting().unwrap_err(),
            SendError::Overloaded {
                limit: "max_pending_requests",
                ..
            }
        ));
        drop(connection);
        assert!(breakers.connection().is_ok());
        assert_eq!(breakers.shed(Limit::Connections), 1);
        assert_eq!(breakers.shed(Limit::PendingRequests), 1);
        assert_eq!(breakers.shed(Limit::Requests), 0);
    }
}
