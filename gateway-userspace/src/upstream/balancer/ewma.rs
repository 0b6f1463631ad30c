//! Peak-sensitive EWMA of latency, as in Finagle's and linkerd's
//! (tower's) `PeakEwma`: a latency above the estimate replaces it at once
//! (a target that turns slow is avoided immediately); one below pulls the
//! estimate down by `1 - e^(-elapsed/decay)`; and the estimate decays towards
//! zero while nothing is observed, so an idle or penalised target is tried
//! again after a while. Time is passed in, so the math is tested exactly.

use std::time::Duration;

use tokio::time::Instant;

/// The estimate of a target not measured yet: linkerd2-proxy's default.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

#[derive(Debug, Clone)]
pub struct PeakEwma {
    estimate_ns: f64,
    stamp: Instant,
    decay_ns: f64,
}

impl PeakEwma {
    pub fn new(initial: Duration, decay: Duration, now: Instant) -> Self {
        Self {
            estimate_ns: nanos(initial),
            stamp: now,
            decay_ns: nanos(decay).max(1.0),
        }
    }

    /// Folds in one latency observed at `now`.
    pub fn observe(&mut self, latency: Duration, now: Instant) {
        let latency = nanos(latency);
        if latency > self.estimate_ns {
            self.estimate_ns = latency;
        } else {
            let elapsed = nanos(now.saturating_duration_since(self.stamp));
            let weight = (-elapsed / self.decay_ns).exp();
            self.estimate_ns = self.estimate_ns * weight + latency * (1.0 - weight);
        }
        // Never move the stamp backwards (callers race on `now`).
        self.stamp = self.stamp.max(now);
    }

    /// The estimate at `now`, in nanoseconds, decayed for the time since the
    /// last update.
    pub fn estimate(&mut self, now: Instant) -> f64 {
        self.observe(Duration::ZERO, now);
        self.estimate_ns
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1e6;
    const DECAY: Duration = Duration::from_secs(10);

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6 * b.abs().max(1.0)
    }

    #[test]
    fn a_peak_replaces_the_estimate_at_once() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(DEFAULT_RTT, DECAY, t0);
        assert!(close(e.estimate(t0), 30.0 * MS));
        e.observe(Duration::from_millis(500), t0 + Duration::from_millis(1));
        assert!(close(e.estimate(t0 + Duration::from_millis(1)), 500.0 * MS));
    }

    #[test]
    fn a_lower_latency_pulls_by_the_elapsed_fraction_of_the_decay() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_millis(100), DECAY, t0);
        // One decay period later: 100·e^-1 + 10·(1 - e^-1).
        e.observe(Duration::from_millis(10), t0 + DECAY);
        let w = (-1.0f64).exp();
        assert!(close(
            e.estimate(t0 + DECAY),
            100.0 * MS * w + 10.0 * MS * (1.0 - w)
        ));
        // An observation at the same instant barely moves it.
        let before = e.estimate(t0 + DECAY);
        e.observe(Duration::from_millis(1), t0 + DECAY);
        assert!(close(e.estimate(t0 + DECAY), before));
    }

    #[test]
    fn an_idle_estimate_decays_towards_zero() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_millis(100), DECAY, t0);
        let after = |k: u32| t0 + DECAY * k;
        assert!(close(e.estimate(after(1)), 100.0 * MS * (-1.0f64).exp()));
        // Reading in between does not change the result (e^-a·e^-b = e^-(a+b)).
        assert!(close(e.estimate(after(3)), 100.0 * MS * (-3.0f64).exp()));
    }

    #[test]
    fn time_going_backwards_changes_nothing() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let mut e = PeakEwma::new(Duration::from_millis(100), DECAY, t0);
        let earlier = t0 - Duration::from_secs(5);
        assert!(close(e.estimate(earlier), 100.0 * MS));
        assert!(e.estimate(earlier).is_finite());
    }
}
