//! Passive health (Envoy's outlier detection) of one target: failures in a
//! row on real traffic eject it for a time that grows with each ejection
//! (capped); when the time is up, one trial request (or a passing active
//! check) decides whether it returns.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::PassiveHealth;

/// Why an attempt at a target counts against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection (refused, unreachable, connect timeout).
    Connect,
    /// No response headers within the upstream's `timeout`.
    Timeout,
    /// The exchange broke (reset, malformed answer).
    Broken,
    /// A 5xx answer.
    Status(u16),
}

impl Failure {
    /// Plural, for "after 5 consecutive connect failures".
    pub fn describe(self) -> String {
        match self {
            Failure::Connect => "connect failures".to_string(),
            Failure::Timeout => "timeouts".to_string(),
            Failure::Broken => "broken exchanges".to_string(),
            Failure::Status(status) => format!("failures (last: status {status})"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Takes traffic.
    Serving,
    /// Takes no traffic until `until`.
    Ejected {
        until: Instant,
        /// The failures in a row that ejected it, and the last one's kind.
        after: u32,
        last: Failure,
    },
    /// Ejection over: the next request is a trial (`trial` is when it was
    /// sent); its outcome decides.
    Probing { trial: Option<Instant> },
}

/// What changed with an outcome; the caller logs and counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Ejected {
        until: Instant,
        after: u32,
        last: Failure,
    },
    Returned,
}

#[derive(Debug)]
pub struct Passive {
    state: State,
    /// Failures in a row while serving.
    consecutive: u32,
    /// Ejections since the count last reset: the n-th lasts n × base.
    ejections: u32,
    /// When it last returned from an ejection (the count resets after it
    /// served `max_ejection_time` since).
    returned: Option<Instant>,
}

impl Default for Passive {
    fn default() -> Self {
        Self {
            state: State::Serving,
            consecutive: 0,
            ejections: 0,
            returned: None,
        }
    }
}

impl Passive {
    pub fn state(&self) -> State {
        self.state
    }

    pub fn consecutive(&self) -> u32 {
        self.consecutive
    }

    /// Whether a request may go here now. An ejection that ran out turns
    /// into probing: one trial request at a time (another one only when a
    /// trial has had `base_ejection_time` without an outcome, a request
    /// given up on by its client).
    pub fn admits(&mut self, now: Instant, config: &PassiveHealth) -> bool {
        match self.state {
            State::Serving => true,
            State::Ejected { until, .. } if now < until => false,
            State::Ejected { .. } => {
                self.state = State::Probing { trial: None };
                true
            }
            State::Probing { trial: None } => true,
            State::Probing { trial: Some(sent) } => now >= sent + config.base_ejection_time,
        }
    }

    /// A request was sent here: while probing, it is the trial.
    pub fn sent(&mut self, now: Instant) {
        if let State::Probing { .. } = self.state {
            self.state = State::Probing { trial: Some(now) };
        }
    }

    /// An answer that is not a failure: resets the count; a trial's success
    /// brings the target back.
    pub fn succeeded(&mut self, now: Instant) -> Option<Change> {
        self.consecutive = 0;
        match self.state {
            State::Serving => None,
            // An answer to a request sent before the ejection: not a trial.
            State::Ejected { .. } => None,
            State::Probing { .. } => Some(self.restore(now)),
        }
    }

    /// A passing active check: ends an ejection at once (Envoy's
    /// `successful_active_health_check_uneject_host`).
    pub fn check_passed(&mut self, now: Instant) -> Option<Change> {
        match self.state {
            State::Serving => None,
            State::Ejected { .. } | State::Probing { .. } => Some(self.restore(now)),
        }
    }

    fn restore(&mut self, now: Instant) -> Change {
        self.state = State::Serving;
        self.consecutive = 0;
        self.returned = Some(now);
        Change::Returned
    }

    /// A failed attempt. `may_eject` is asked only when the target would be
    /// ejected, and reserves the ejection when it agrees (the share of the
    /// targets ejected at once is capped).
    pub fn failed(
        &mut self,
        failure: Failure,
        now: Instant,
        config: &PassiveHealth,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<Change> {
        match self.state {
            State::Ejected { .. } => return None,
            State::Serving => {
                self.consecutive = self.consecutive.saturating_add(1);
                if self.consecutive < config.consecutive_failures {
                    return None;
                }
            }
            // A failed trial: out again, for longer.
            State::Probing { .. } => {
                self.consecutive = self.consecutive.max(1);
            }
        }
        if !may_eject() {
            return None;
        }
        if self
            .returned
            .is_some_and(|returned| now >= returned + config.max_ejection_time)
        {
            self.ejections = 0;
        }
        self.ejections = self.ejections.saturating_add(1);
        let until = now + ejection_time(self.ejections, config);
        let after = self.consecutive;
        self.state = State::Ejected {
            until,
            after,
            last: failure,
        };
        self.consecutive = 0;
        Some(Change::Ejected {
            until,
            after,
            last: failure,
        })
    }
}

/// The n-th ejection lasts n × `base_ejection_time`, at most
/// `max_ejection_time` (Envoy's rule).
pub fn ejection_time(nth: u32, config: &PassiveHealth) -> Duration {
    config
        .base_ejection_time
        .saturating_mul(nth.max(1))
        .min(config.max_ejection_time)
}

/// How many of `targets` may be ejected at once: `max_ejection_percent`
/// of them rounded down, but at least one (Envoy's rule); none at 0%.
pub fn max_ejected(targets: usize, config: &PassiveHealth) -> usize {
    if config.max_ejection_percent == 0 {
        return 0;
    }
    (targets * usize::from(config.max_ejection_percent) / 100).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PassiveHealth {
        PassiveHealth {
            consecutive_failures: 3,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(35),
            ..PassiveHealth::default()
        }
    }

    fn eject(p: &mut Passive, now: Instant, config: &PassiveHealth) -> Change {
        let mut change = None;
        for _ in 0..config.consecutive_failures {
            change = p.failed(Failure::Connect, now, config, || true);
        }
        change.expect("ejected by the last failure")
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_up_to_the_cap() {
        let c = config();
        let times: Vec<u64> = (1..=5).map(|n| ejection_time(n, &c).as_secs()).collect();
        assert_eq!(times, [10, 20, 30, 35, 35]);
    }

    #[test]
    fn the_share_ejected_at_once_is_capped_but_one_always_may_be() {
        let mut c = config();
        c.max_ejection_percent = 10;
        assert_eq!(max_ejected(3, &c), 1);
        assert_eq!(max_ejected(25, &c), 2);
        c.max_ejection_percent = 50;
        assert_eq!(max_ejected(5, &c), 2);
        c.max_ejection_percent = 100;
        assert_eq!(max_ejected(5, &c), 5);
        c.max_ejection_percent = 0;
        assert_eq!(max_ejected(5, &c), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_in_a_row_eject_and_a_success_resets_the_count() {
        let c = config();
        let mut p = Passive::default();
        let now = Instant::now();
        assert_eq!(p.failed(Failure::Status(502), now, &c, || true), None);
        assert_eq!(p.failed(Failure::Timeout, now, &c, || true), None);
        p.succeeded(now);
        assert_eq!(p.consecutive(), 0);
        assert_eq!(p.failed(Failure::Connect, now, &c, || true), None);
        assert_eq!(p.failed(Failure::Connect, now, &c, || true), None);
        // Refused by the share: serving still, and asked again next time.
        assert_eq!(p.failed(Failure::Connect, now, &c, || false), None);
        assert!(p.admits(now, &c));
        let change = p.failed(Failure::Timeout, now, &c, || true);
        assert_eq!(
            change,
            Some(Change::Ejected {
                until: now + Duration::from_secs(10),
                after: 4,
                last: Failure::Timeout
            })
        );
        assert!(!p.admits(now, &c));
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_ejection_one_trial_decides() {
        let c = config();
        let mut p = Passive::default();
        let start = Instant::now();
        eject(&mut p, start, &c);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!p.admits(Instant::now(), &c), "still ejected");
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        assert!(p.admits(now, &c), "the trial may go");
        p.sent(now);
        assert!(!p.admits(now, &c), "one trial at a time");

        // The trial fails: out again, twice as long.
        let Some(Change::Ejected { until, .. }) = p.failed(Failure::Connect, now, &c, || true)
        else {
            panic!("a failed trial ejects again");
        };
        assert_eq!(until - now, Duration::from_secs(20));

        tokio::time::advance(Duration::from_secs(20)).await;
        let now = Instant::now();
        assert!(p.admits(now, &c));
        p.sent(now);
        assert_eq!(p.succeeded(now), Some(Change::Returned));
        assert_eq!(p.state(), State::Serving);

        // Soon failing again: the third ejection, 30 s.
        let Change::Ejected { until, .. } = eject(&mut p, now, &c) else {
            panic!()
        };
        assert_eq!(until - now, Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_trial_is_replaced_and_a_passing_check_ends_an_ejection() {
        let c = config();
        let mut p = Passive::default();
        eject(&mut p, Instant::now(), &c);
        tokio::time::advance(Duration::from_secs(10)).await;
        let now = Instant::now();
        assert!(p.admits(now, &c));
        p.sent(now);
        tokio::time::advance(c.base_ejection_time).await;
        assert!(p.admits(Instant::now(), &c), "the trial never answered");

        let mut p = Passive::default();
        eject(&mut p, Instant::now(), &c);
        assert_eq!(p.check_passed(Instant::now()), Some(Change::Returned));
        assert!(p.admits(Instant::now(), &c));
    }

    #[tokio::test(start_paused = true)]
    async fn the_ejection_count_resets_after_serving_for_max_ejection_time() {
        let c = config();
        let mut p = Passive::default();
        eject(&mut p, Instant::now(), &c);
        assert_eq!(p.check_passed(Instant::now()), Some(Change::Returned));
        tokio::time::advance(c.max_ejection_time).await;
        let now = Instant::now();
        let Change::Ejected { until, .. } = eject(&mut p, now, &c) else {
            panic!()
        };
        assert_eq!(until - now, c.base_ejection_time, "counted from one again");
    }
}
