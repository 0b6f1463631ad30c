//! When a failed attempt is tried again, and the budget that keeps retries
//! from multiplying the load on an upstream that is already failing.
//!
//! Retried: a connect failure (the request never reached a target), whatever
//! the method, as long as the request body has not started streaming (it
//! cannot be replayed; see `replay.rs`); and a status in `retry_on_status`,
//! only for idempotent methods with an empty body. Never retried: a timeout
//! or error after the request was sent, since the target may have acted on
//! it.

use std::{sync::Mutex, time::Duration};

use http::{Method, StatusCode};
use tokio::time::Instant;

use crate::config;

pub struct RetryPolicy {
    /// Further attempts allowed after the first.
    pub retries: u32,
    on_status: Vec<u16>,
}

impl RetryPolicy {
    pub fn new(config: &config::Upstream) -> Self {
        Self {
            retries: config.retries,
            on_status: config.retry_on_status.clone(),
        }
    }

    /// Whether any response may be retried for this request: only the
    /// statuses configured, for an idempotent method without a body.
    pub fn may_retry_status(&self, method: &Method, body_empty: bool) -> bool {
        !self.on_status.is_empty() && is_idempotent(method) && body_empty
    }

    pub fn retries_status(&self, status: StatusCode) -> bool {
        self.on_status.contains(&status.as_u16())
    }
}

/// Sending these twice has the effect of sending them once (RFC 9110
/// §9.2.2); POST and PATCH are not.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Slots of the sliding window: counts expire in steps of `window / SLOTS`.
const SLOTS: usize = 10;

/// Retries allowed in any window: `ratio × requests + min_per_second ×
/// window` (linkerd's and Finagle's retry budget). When most requests fail,
/// retries add at most `ratio` to the load instead of multiplying it.
/// Callers pass the time in, so tests drive it.
pub struct RetryBudget {
    ratio: f64,
    /// `min_per_second × window`: retries allowed with no traffic at all.
    reserve: f64,
    slot_width: Duration,
    window: Mutex<Window>,
}

struct Window {
    slots: [Slot; SLOTS],
    /// Index of the slot `now` falls in, and when it started.
    head: usize,
    head_start: Instant,
}

#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    requests: u64,
    retries: u64,
}

impl RetryBudget {
    pub fn new(config: &config::RetryBudget, now: Instant) -> Self {
        let window = config.window.max(Duration::from_millis(SLOTS as u64));
        Self {
            ratio: config.ratio,
            reserve: config.min_per_second * window.as_secs_f64(),
            slot_width: window / SLOTS as u32,
            window: Mutex::new(Window {
                slots: [Slot::default(); SLOTS],
                head: 0,
                head_start: now,
            }),
        }
    }

    /// Counts one request (not its retries).
    pub fn deposit(&self, now: Instant) {
        let mut window = self.advanced(now);
        let head = window.head;
        window.slots[head].requests += 1;
    }

    /// Takes one retry from the budget; false (and nothing taken) when the
    /// window's retries are already at the limit.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let mut window = self.advanced(now);
        let (requests, retries) = window
            .slots
            .iter()
            .fold((0, 0), |(q, r), s| (q + s.requests, r + s.retries));
        // The epsilon keeps float rounding (0.05/s × 60 s) from eating a
        // retry the config allows.
        let allowed = self.ratio * requests as f64 + self.reserve + 1e-9;
        if (retries + 1) as f64 > allowed {
            return false;
        }
        let head = window.head;
        window.slots[head].retries += 1;
        true
    }

    /// The window with the slots older than `window` before `now` cleared.
    fn advanced(&self, now: Instant) -> std::sync::MutexGuard<'_, Window> {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(window.head_start);
        let steps = (elapsed.as_nanos() / self.slot_width.as_nanos().max(1)) as u64;
        if steps > 0 {
            for _ in 0..steps.min(SLOTS as u64) {
                window.head = (window.head + 1) % SLOTS;
                let head = window.head;
                window.slots[head] = Slot::default();
            }
            window.head_start += self.slot_width * steps.min(u64::from(u32::MAX)) as u32;
        }
        window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_second: f64, window_secs: u64, now: Instant) -> RetryBudget {
        RetryBudget::new(
            &config::RetryBudget {
                ratio,
                min_per_second,
                window: Duration::from_secs(window_secs),
            },
            now,
        )
    }

    fn withdraw_all(budget: &RetryBudget, now: Instant) -> u32 {
        // Bounded: more than any budget here allows.
        (0..10_000).take_while(|_| budget.try_withdraw(now)).count() as u32
    }

    #[test]
    fn retries_are_a_share_of_requests() {
        let t0 = Instant::now();
        let b = budget(0.2, 0.0, 10, t0);
        assert!(!b.try_withdraw(t0), "no requests, no reserve: no retries");
        for _ in 0..100 {
            b.deposit(t0);
        }
        assert_eq!(withdraw_all(&b, t0), 20);
        // Each new request earns a fifth of a retry.
        for _ in 0..4 {
            b.deposit(t0);
            assert!(!b.try_withdraw(t0));
        }
        b.deposit(t0);
        assert!(b.try_withdraw(t0));
    }

    #[test]
    fn the_reserve_allows_retries_without_traffic() {
        let t0 = Instant::now();
        let b = budget(0.2, 10.0, 10, t0);
        assert_eq!(withdraw_all(&b, t0), 100, "10/s over 10 s");
        for _ in 0..50 {
            b.deposit(t0);
        }
        assert_eq!(withdraw_all(&b, t0), 10, "plus 20% of 50 requests");
    }

    #[test]
    fn counts_expire_after_the_window() {
        let t0 = Instant::now();
        let b = budget(0.5, 0.0, 10, t0);
        for _ in 0..10 {
            b.deposit(t0);
        }
        assert_eq!(withdraw_all(&b, t0), 5);
        // Still inside the window: nothing more.
        let t9 = t0 + Duration::from_secs(9);
        assert!(!b.try_withdraw(t9));
        // New requests at 9 s earn retries even while old retries count...
        for _ in 0..10 {
            b.deposit(t9);
        }
        assert_eq!(withdraw_all(&b, t9), 5, "(20 requests, 5 retries) → 5 more");
        // ...and once t0's slot leaves the window, its requests and retries
        // leave with it: 10 requests and 5 retries from t9 remain.
        let t10 = t0 + Duration::from_secs(10);
        assert!(!b.try_withdraw(t10));
        // After a whole quiet window everything is forgotten.
        let t20 = t9 + Duration::from_secs(11);
        assert!(!b.try_withdraw(t20));
        for _ in 0..2 {
            b.deposit(t20);
        }
        assert_eq!(withdraw_all(&b, t20), 1);
    }

    #[test]
    fn an_outage_cannot_more_than_add_the_ratio() {
        // 1000 requests/s for 60 s, every one failing and asking for a retry.
        let t0 = Instant::now();
        let b = budget(0.2, 10.0, 10, t0);
        let mut retries = 0u64;
        for ms in 0..60_000u64 {
            let now = t0 + Duration::from_millis(ms);
            b.deposit(now);
            if b.try_withdraw(now) {
                retries += 1;
            }
        }
        // At most 20% of the requests plus one reserve (10/s × 10 s) per
        // window: 12 000 + 6 × 100. Without the budget: 60 000.
        assert!(retries <= 12_600, "{retries}");
        assert!(retries >= 12_000, "{retries}");
    }

    #[test]
    fn time_going_backwards_is_harmless() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let b = budget(1.0, 0.0, 10, t0);
        b.deposit(t0);
        assert!(b.try_withdraw(t0 - Duration::from_secs(50)));
        assert!(!b.try_withdraw(t0));
    }

    #[test]
    fn idempotent_methods() {
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
            assert!(is_idempotent(&m.parse().unwrap()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT"] {
            assert!(!is_idempotent(&m.parse().unwrap()), "{m}");
        }
    }

    #[test]
    fn statuses_are_retried_only_for_idempotent_requests_without_a_body() {
        let config: config::Upstream =
            serde_yaml::from_str("{targets: ['127.0.0.1:1'], retry_on_status: [503]}").unwrap();
        let policy = RetryPolicy::new(&config);
        assert!(policy.may_retry_status(&Method::GET, true));
        assert!(
            !policy.may_retry_status(&Method::PUT, false),
            "a body cannot be replayed"
        );
        assert!(!policy.may_retry_status(&Method::POST, true));
        assert!(policy.retries_status(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!policy.retries_status(StatusCode::BAD_GATEWAY));
        let none: config::Upstream = serde_yaml::from_str("{targets: ['127.0.0.1:1']}").unwrap();
        assert!(!RetryPolicy::new(&none).may_retry_status(&Method::GET, true));
    }
}
