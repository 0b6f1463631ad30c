//! `type: throttle`: requests over the rate wait their turn instead of
//! being refused. Each key has its own schedule (GCRA: the next free
//! moment, `tat`): a request takes the next slot and sleeps until it;
//! `burst` requests go at once. A key's queue is bounded (`max_queue`)
//! and so is the wait (`max_wait`): past either, 429 (or 503) with
//! `Retry-After`. Keys never share a queue, so a noisy client fills only
//! its own and waits only on itself.
//!
//! A client that goes away while it waits drops the request's future: its
//! place in the queue is given back, and its slot too when it was the
//! last one taken (an earlier slot stays empty: the rate is never
//! exceeded, only under-used once).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{request::Parts, HeaderMap, StatusCode};

use super::{
    rate_limit::{refusal, seconds_up, Clock, KeySpec},
    Caller, Guard, GuardCheck,
};
use crate::config;

const SHARDS: usize = 64;

#[derive(Default)]
struct KeyState {
    /// The next free slot (nanoseconds on the policy's clock).
    tat: u64,
    /// Requests sleeping until their slot.
    waiting: usize,
}

#[derive(Default)]
struct Shard {
    keys: HashMap<u64, KeyState, foldhash::fast::RandomState>,
    next_sweep: u64,
}

pub struct Throttle {
    /// One request per `interval`...
    interval: u64,
    /// ...and `burst` of them at once: how far ahead of `now` the schedule
    /// may run before requests wait.
    tolerance: u64,
    key: KeySpec,
    max_queue: usize,
    max_wait: u64,
    status: StatusCode,
    shards: Arc<[Mutex<Shard>]>,
    per_shard: usize,
    sweep_every: u64,
    clock: Clock,
}

impl Throttle {
    pub fn new(config: &config::ThrottlePolicy) -> Self {
        let window = u64::try_from(config.rate.per.as_nanos()).unwrap_or(u64::MAX);
        let interval = (window / config.rate.requests).max(1);
        let tolerance = interval.saturating_mul(config.rate.burst.unwrap_or(1));
        let max_wait = u64::try_from(config.max_wait.as_nanos()).unwrap_or(u64::MAX);
        Self {
            interval,
            tolerance,
            key: KeySpec::new(&config.key),
            max_queue: config.max_queue,
            max_wait,
            status: StatusCode::from_u16(config.status).expect("validated: 429 or 503"),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: config.max_keys.div_ceil(SHARDS).max(1),
            sweep_every: tolerance.saturating_add(max_wait).max(1_000_000_000),
            clock: Clock::new(),
        }
    }

    /// Takes a slot for one request of `key`: `Ok(None)` go now,
    /// `Ok(Some(wait))` go after the wait (the returned place must be
    /// given back), `Err(retry after)` refused.
    fn admit(&self, key: u64) -> Result<Option<Place>, u64> {
        let now = self.clock.now();
        let index = (key >> 58) as usize % SHARDS;
        let mut shard = self.shards[index].lock().unwrap_or_else(|e| e.into_inner());
        if now >= shard.next_sweep || shard.keys.len() >= self.per_shard {
            shard.keys.retain(|_, k| k.waiting > 0 || k.tat > now);
            if shard.keys.len() >= self.per_shard {
                // Still full: keys that wait for nothing start over.
                shard.keys.retain(|_, k| k.waiting > 0);
            }
            shard.next_sweep = now.saturating_add(self.sweep_every);
            if shard.keys.len() >= self.per_shard && !shard.keys.contains_key(&key) {
                return Err(self.interval);
            }
        }
        let state = shard.keys.entry(key).or_default();
        let tat = state.tat.max(now);
        let wait = (tat + self.interval - now).saturating_sub(self.tolerance);
        if wait == 0 {
            state.tat = tat + self.interval;
            return Ok(None);
        }
        if wait > self.max_wait || state.waiting >= self.max_queue {
            return Err(wait);
        }
        state.tat = tat + self.interval;
        state.waiting += 1;
        Ok(Some(Place {
            shards: self.shards.clone(),
            index,
            key,
            slot_end: state.tat,
            interval: self.interval,
            until: tokio::time::Instant::now() + Duration::from_nanos(wait),
            served: false,
        }))
    }
}

/// A request's place in its key's queue; given back when dropped.
struct Place {
    shards: Arc<[Mutex<Shard>]>,
    index: usize,
    key: u64,
    /// The schedule after this request's slot: if it is still the last
    /// one taken when the request leaves early, the slot is given back.
    slot_end: u64,
    interval: u64,
    /// When its slot comes.
    until: tokio::time::Instant,
    /// The request waited its turn and went on.
    served: bool,
}

impl Place {
    /// The request waited its turn and goes on.
    fn serve(&mut self) {
        self.served = true;
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut shard = self.shards[self.index]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(state) = shard.keys.get_mut(&self.key) {
            state.waiting = state.waiting.saturating_sub(1);
            if !self.served && state.tat == self.slot_end {
                state.tat -= self.interval;
            }
        }
    }
}

impl Guard for Throttle {
    fn check<'a>(
        &'a self,
        parts: &'a mut Parts,
        caller: &'a Caller<'a>,
        _response: &'a mut HeaderMap,
    ) -> GuardCheck<'a> {
        match self.admit(self.key.hash(parts, caller)) {
            Ok(None) => GuardCheck::Now(Ok(())),
            Ok(Some(mut place)) => GuardCheck::Later(Box::pin(async move {
                tokio::time::sleep_until(place.until).await;
                place.serve();
                Ok(())
            })),
            Err(wait) => GuardCheck::Now(Err(refusal(
                self.status,
                "throttled",
                "too many requests waiting",
                seconds_up(wait).max(1),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{future::Future, pin::Pin, task::Poll};

    use super::*;
    use crate::policy::GuardResult;

    fn throttle(yaml: &str) -> Throttle {
        Throttle::new(&serde_yaml::from_str(yaml).unwrap())
    }

    fn conn() -> crate::exchange::ConnInfo {
        let addr: std::net::SocketAddr = "192.0.2.7:1".parse().unwrap();
        crate::exchange::ConnInfo::new(addr, addr, "http", None)
    }

    type Pending<'a> = Pin<Box<dyn Future<Output = GuardResult> + Send + 'a>>;

    /// Runs the policy for a request from `ip`: refused, admitted now, or
    /// the wait.
    fn request<'a>(
        t: &'a Throttle,
        conn: &'a crate::exchange::ConnInfo,
        ip: &str,
    ) -> Result<Option<Pending<'a>>, Rejection> {
        let caller = Box::leak(Box::new(Caller {
            client_ip: ip.parse().unwrap(),
            identity: None,
            route: "r",
            conn,
        }));
        let parts = Box::leak(Box::new(http::Request::new(()).into_parts().0));
        let headers = Box::leak(Box::new(HeaderMap::new()));
        match t.check(parts, caller, headers) {
            GuardCheck::Now(Ok(())) => Ok(None),
            GuardCheck::Now(Err(e)) => Err(e),
            GuardCheck::Later(pending) => Ok(Some(pending)),
        }
    }

    use crate::exchange::Rejection;

    fn is_ready(pending: &mut Pending<'_>) -> bool {
        let waker = std::task::Waker::noop();
        matches!(
            pending
                .as_mut()
                .poll(&mut std::task::Context::from_waker(waker)),
            Poll::Ready(Ok(()))
        )
    }

    #[tokio::test(start_paused = true)]
    async fn requests_over_the_rate_wait_for_their_slot() {
        let t = throttle("{rate: {requests: 10, per: 1s, burst: 2}, max_queue: 3}");
        let conn = conn();
        let started = tokio::time::Instant::now();
        // The burst goes at once.
        assert!(request(&t, &conn, "192.0.2.1").unwrap().is_none());
        assert!(request(&t, &conn, "192.0.2.1").unwrap().is_none());
        // Then one every 100 ms, in order.
        let mut queued: Vec<_> = (0..3)
            .map(|_| request(&t, &conn, "192.0.2.1").unwrap().unwrap())
            .collect();
        // The queue is full: refused with its wait as Retry-After.
        let Err(refused) = request(&t, &conn, "192.0.2.1") else {
            panic!("admitted")
        };
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.kind(), "throttled");
        let mut released = Vec::new();
        while !queued.is_empty() {
            tokio::time::advance(Duration::from_millis(10)).await;
            let now = started.elapsed().as_millis();
            queued.retain_mut(|p| {
                let ready = is_ready(p);
                if ready {
                    released.push(now);
                }
                !ready
            });
        }
        assert_eq!(released, [100, 200, 300]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_max_wait_is_refused_with_the_configured_status() {
        let t = throttle("{rate: {requests: 1, per: 1s}, max_wait: 1500ms, status: 503}");
        let conn = conn();
        assert!(request(&t, &conn, "192.0.2.1").unwrap().is_none());
        let _one = request(&t, &conn, "192.0.2.1").unwrap().unwrap();
        // The next slot is 2 s away: past max_wait.
        let Err(refused) = request(&t, &conn, "192.0.2.1") else {
            panic!("admitted")
        };
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        let response = refused.into_response();
        assert_eq!(response.headers()["retry-after"], "2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_leaves_gives_its_place_back() {
        let t = throttle("{rate: {requests: 10, per: 1s}, max_queue: 2}");
        let conn = conn();
        assert!(request(&t, &conn, "192.0.2.1").unwrap().is_none());
        let first = request(&t, &conn, "192.0.2.1").unwrap().unwrap();
        let second = request(&t, &conn, "192.0.2.1").unwrap().unwrap();
        assert!(request(&t, &conn, "192.0.2.1").is_err(), "queue full");
        // The last one leaves: its place and its slot come back.
        drop(second);
        let mut again = request(&t, &conn, "192.0.2.1").unwrap().unwrap();
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(is_ready(&mut again), "took the freed 200 ms slot");
        // `again` went on: its place is free. The earlier one leaves too
        // (its slot stays empty: an earlier slot is never taken back).
        drop(first);
        let total: usize = t
            .shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap()
                    .keys
                    .values()
                    .map(|k| k.waiting)
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(total, 0);
        drop(again);
    }

    #[tokio::test(start_paused = true)]
    async fn a_noisy_key_does_not_delay_another() {
        let t = throttle("{rate: {requests: 1, per: 1s}, max_queue: 5, max_wait: 1m}");
        let conn = conn();
        let _noisy: Vec<_> = (0..6)
            .map(|_| request(&t, &conn, "192.0.2.1").unwrap())
            .collect();
        assert!(request(&t, &conn, "192.0.2.1").is_err());
        // Another client goes at once, and waits only on itself.
        assert!(request(&t, &conn, "192.0.2.2").unwrap().is_none());
        let mut next = request(&t, &conn, "192.0.2.2").unwrap().unwrap();
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert!(is_ready(&mut next));
    }
}
