//! The counting itself, on plain numbers: one key's state per limit and
//! the time now (nanoseconds on any clock that only goes forward), so that
//! tests drive it with made-up instants. The Redis script (`redis.lua`)
//! does the same arithmetic server-side.

use crate::config::RateAlgorithm;

/// One limit, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub requests: u64,
    /// The window (`per`).
    pub window: u64,
    /// Token bucket: the bucket's size.
    pub burst: u64,
}

impl Limit {
    pub fn new(config: &crate::config::Limit) -> Self {
        Self {
            requests: config.requests,
            window: u64::try_from(config.per.as_nanos()).unwrap_or(u64::MAX),
            burst: config.burst.unwrap_or(config.requests),
        }
    }

    /// Token bucket: the time one token takes to come back.
    fn interval(&self) -> u64 {
        (self.window / self.requests).max(1)
    }
}

/// One key's state for one limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    /// Windows: the current window's number (`now / window`); token
    /// bucket: the theoretical arrival time of the next request (GCRA).
    t: u64,
    /// Windows: requests counted in the current window and the previous.
    curr: u64,
    prev: u64,
}

/// What one limit says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u64,
    /// Requests left after this one.
    pub remaining: u64,
    /// Nanoseconds until the quota is whole again (`RateLimit-Reset`).
    pub reset: u64,
    /// Refused: nanoseconds until a request would be admitted.
    pub retry_after: u64,
}

/// Moves a window state to `now` (the previous window is the one just
/// before; anything older counts for nothing).
fn roll(state: &mut State, limit: &Limit, now: u64) {
    let window = now / limit.window;
    if window != state.t {
        state.prev = if window == state.t + 1 { state.curr } else { 0 };
        state.curr = 0;
        state.t = window;
    }
}

/// The sliding window's estimate of the requests in the last `window`:
/// the previous window's count weighted by how much of it still overlaps,
/// rounded up (never lenient).
fn sliding_count(state: &State, limit: &Limit, elapsed: u64) -> u64 {
    let overlap = u128::from(limit.window - elapsed);
    let weighted = (u128::from(state.prev) * overlap).div_ceil(u128::from(limit.window));
    state.curr + weighted as u64
}

/// Decides on one request against one limit, without counting it.
pub fn peek(algorithm: RateAlgorithm, limit: &Limit, state: &mut State, now: u64) -> Decision {
    let mut d = Decision {
        allowed: false,
        limit: limit.requests,
        remaining: 0,
        reset: 0,
        retry_after: 0,
    };
    match algorithm {
        RateAlgorithm::FixedWindow => {
            roll(state, limit, now);
            state.prev = 0;
            let left = limit.window - now % limit.window;
            d.allowed = state.curr < limit.requests;
            d.remaining = limit.requests.saturating_sub(state.curr + 1);
            d.reset = left;
            d.retry_after = left;
        }
        RateAlgorithm::SlidingWindow => {
            roll(state, limit, now);
            let elapsed = now % limit.window;
            let count = sliding_count(state, limit, elapsed);
            d.allowed = count < limit.requests;
            d.remaining = limit.requests.saturating_sub(count + 1);
            d.reset = limit.window - elapsed;
            if !d.allowed {
                d.retry_after = sliding_wait(state, limit, elapsed);
            }
        }
        RateAlgorithm::TokenBucket => {
            d.limit = limit.burst;
            let interval = limit.interval();
            let tolerance = interval.saturating_mul(limit.burst);
            let tat = state.t.max(now);
            let after = tat + interval - now;
            d.allowed = after <= tolerance;
            if d.allowed {
                d.remaining = (tolerance - after) / interval;
                d.reset = after;
            } else {
                d.reset = tat - now;
                d.retry_after = after - tolerance;
            }
        }
    }
    d
}

/// Counts an admitted request (after [`peek`] said yes, on the same
/// `now`).
pub fn take(algorithm: RateAlgorithm, limit: &Limit, state: &mut State, now: u64) {
    match algorithm {
        RateAlgorithm::FixedWindow | RateAlgorithm::SlidingWindow => state.curr += 1,
        RateAlgorithm::TokenBucket => state.t = state.t.max(now) + limit.interval(),
    }
}

/// Sliding window, refused: how long until the estimate drops below the
/// limit. Within this window the previous one's weight falls; if the
/// current window alone is full, the wait runs into the next window, where
/// this one's count is the one that fades.
fn sliding_wait(state: &State, limit: &Limit, elapsed: u64) -> u64 {
    let w = u128::from(limit.window);
    // The first moment (from its window's start) when a fading `count`
    // leaves `free` requests: ceil(count * (w - t) / w) <= free - 1, i.e.
    // t >= w - floor((free - 1) * w / count).
    let room = |count: u64, free: u64| -> u128 {
        w - (u128::from(free - 1) * w / u128::from(count.max(1))).min(w)
    };
    let wait = if state.curr < limit.requests {
        room(state.prev, limit.requests - state.curr).saturating_sub(u128::from(elapsed))
    } else {
        (w - u128::from(elapsed)) + room(state.curr, limit.requests)
    };
    u64::try_from(wait.max(1)).unwrap_or(u64::MAX)
}

/// When a key's state stops mattering (it then equals a new key's).
pub fn expires(algorithm: RateAlgorithm, limit: &Limit, state: &State) -> u64 {
    match algorithm {
        // Two windows on, both counts are gone.
        RateAlgorithm::FixedWindow | RateAlgorithm::SlidingWindow => {
            (state.t + 2).saturating_mul(limit.window)
        }
        // A full bucket.
        RateAlgorithm::TokenBucket => state.t,
    }
}

/// Decides on one request against every limit of a key, and counts it when
/// all of them admit it. The answer is the refusing limit that is longest
/// to wait for, or (admitted) the one with the fewest requests left.
pub fn check(
    algorithm: RateAlgorithm,
    limits: &[Limit],
    states: &mut [State],
    now: u64,
) -> Decision {
    let mut answer: Option<Decision> = None;
    for (limit, state) in limits.iter().zip(states.iter_mut()) {
        let d = peek(algorithm, limit, state, now);
        answer = Some(match answer {
            None => d,
            Some(a) if a.allowed && !d.allowed => d,
            Some(a) if !a.allowed && d.allowed => a,
            Some(a) if !a.allowed => {
                if d.retry_after > a.retry_after {
                    d
                } else {
                    a
                }
            }
            Some(a) => {
                if d.remaining < a.remaining {
                    d
                } else {
                    a
                }
            }
        });
    }
    let answer = answer.expect("a policy has at least one limit");
    if answer.allowed {
        for (limit, state) in limits.iter().zip(states.iter_mut()) {
            take(algorithm, limit, state, now);
        }
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn limit(requests: u64, window: u64) -> Limit {
        Limit {
            requests,
            window,
            burst: requests,
        }
    }

    /// How many of `n` requests at `now` are admitted.
    fn admit(a: RateAlgorithm, limits: &[Limit], states: &mut [State], now: u64, n: u64) -> u64 {
        (0..n)
            .filter(|_| check(a, limits, states, now).allowed)
            .count() as u64
    }

    #[test]
    fn fixed_window_counts_from_zero_each_window() {
        let a = RateAlgorithm::FixedWindow;
        let l = [limit(3, S)];
        let mut s = [State::default()];
        let first = check(a, &l, &mut s, 100 * S + 200 * MS);
        assert!(first.allowed);
        assert_eq!(
            (first.limit, first.remaining, first.reset),
            (3, 2, 800 * MS)
        );
        assert_eq!(admit(a, &l, &mut s, 100 * S + 300 * MS, 5), 2);
        let refused = check(a, &l, &mut s, 100 * S + 900 * MS);
        assert!(!refused.allowed);
        assert_eq!((refused.remaining, refused.retry_after), (0, 100 * MS));
        // The next window: a fresh count (and the boundary burst a fixed
        // window is known for).
        assert_eq!(admit(a, &l, &mut s, 101 * S, 5), 3);
    }

    #[test]
    fn sliding_window_weights_the_previous_window() {
        let a = RateAlgorithm::SlidingWindow;
        let l = [limit(10, S)];
        let mut s = [State::default()];
        // A full window at its very end...
        assert_eq!(admit(a, &l, &mut s, 7 * S + 999 * MS, 20), 10);
        // ...leaves no room at the start of the next one (a fixed window
        // would admit 10 more here).
        let refused = check(a, &l, &mut s, 8 * S + MS);
        assert!(!refused.allowed);
        // ceil(10 * (1 - t)) <= 9 from t = 0.1 s: one slot.
        assert_eq!(refused.retry_after, 99 * MS);
        assert_eq!(admit(a, &l, &mut s, 8 * S + 100 * MS - 1, 1), 0);
        assert_eq!(admit(a, &l, &mut s, 8 * S + 100 * MS, 5), 1);
        // Half way: 5 of the previous window still count.
        assert_eq!(admit(a, &l, &mut s, 8 * S + 500 * MS, 10), 4);
        // Two windows on, nothing counts.
        assert_eq!(admit(a, &l, &mut s, 10 * S, 20), 10);
    }

    #[test]
    fn sliding_window_retry_after_reaches_into_the_next_window() {
        let a = RateAlgorithm::SlidingWindow;
        let l = [limit(4, S)];
        let mut s = [State::default()];
        assert_eq!(admit(a, &l, &mut s, 3 * S + 250 * MS, 4), 4);
        let refused = check(a, &l, &mut s, 3 * S + 250 * MS);
        // 750 ms to the next window, where ceil(4 * (1 - t)) <= 3 from
        // t = 0.25 s.
        assert_eq!(refused.retry_after, S);
        assert!(!check(a, &l, &mut s, 4 * S + 250 * MS - 1).allowed);
        assert!(check(a, &l, &mut s, 4 * S + 250 * MS).allowed);
    }

    #[test]
    fn token_bucket_allows_a_burst_then_the_rate() {
        let a = RateAlgorithm::TokenBucket;
        let l = [Limit {
            requests: 10,
            window: S,
            burst: 5,
        }];
        let mut s = [State::default()];
        let now = 50 * S;
        let first = check(a, &l, &mut s, now);
        assert_eq!(
            (first.limit, first.remaining, first.reset),
            (5, 4, 100 * MS)
        );
        assert_eq!(admit(a, &l, &mut s, now, 10), 4);
        let refused = check(a, &l, &mut s, now);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, 100 * MS);
        assert_eq!(refused.reset, 500 * MS);
        // One token every 100 ms.
        assert_eq!(admit(a, &l, &mut s, now + 100 * MS, 3), 1);
        assert_eq!(admit(a, &l, &mut s, now + 350 * MS, 3), 2);
        // A long pause fills the bucket, never more.
        assert_eq!(admit(a, &l, &mut s, now + 60 * S, 10), 5);
        assert_eq!(expires(a, &l[0], &s[0]), now + 60 * S + 500 * MS);
    }

    #[test]
    fn every_limit_must_admit_and_only_admitted_requests_count() {
        let a = RateAlgorithm::FixedWindow;
        let l = [limit(2, S), limit(5, 3600 * S)];
        let mut s = [State::default(); 2];
        let mut now = 3600 * S;
        let mut admitted = 0;
        for _ in 0..10 {
            admitted += admit(a, &l, &mut s, now, 10);
            now += S;
        }
        // 2 a second, until the hour's 5 are spent.
        assert_eq!(admitted, 5);
        let refused = check(a, &l, &mut s, now);
        assert_eq!(refused.limit, 5, "the hour's limit refuses");
        assert!(refused.retry_after > 3000 * S);
        // The per-second answer with the fewest left is reported.
        let mut s = [State::default(); 2];
        let d = check(a, &l, &mut s, now);
        assert_eq!((d.limit, d.remaining), (2, 1));
    }
}
