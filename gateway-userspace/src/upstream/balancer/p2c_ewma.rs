//! Power of two choices over peak EWMA latency (Finagle's and linkerd's
//! default balancer): draw two distinct eligible targets at random, send to
//! the one with the lower `latency estimate × (in flight + 1) / weight`.
//! Two random draws avoid the herd that "always the best" causes when
//! every proxy sees the same best target; the in-flight factor reacts
//! before the next latency is even measured.

use std::{sync::Mutex, time::Duration};

use tokio::time::Instant;

use super::{
    ewma::{PeakEwma, DEFAULT_RTT},
    Eligible,
};
use crate::upstream::target::Target;

pub struct P2cEwma {
    latency: Vec<Mutex<PeakEwma>>,
}

impl P2cEwma {
    pub fn new(targets: usize, decay: Duration, now: Instant) -> Self {
        Self {
            latency: (0..targets)
                .map(|_| Mutex::new(PeakEwma::new(DEFAULT_RTT, decay, now)))
                .collect(),
        }
    }

    pub fn pick(&self, targets: &[Target], eligible: &Eligible, now: Instant) -> usize {
        self.pick_with(targets, eligible, now, &mut fastrand::Rng::new())
    }

    fn pick_with(
        &self,
        targets: &[Target],
        eligible: &Eligible,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> usize {
        let count = (0..targets.len()).filter(|&i| eligible.allows(i)).count();
        let nth = |n: usize| {
            (0..targets.len())
                .filter(|&i| eligible.allows(i))
                .nth(n)
                .expect("n < count")
        };
        assert!(count > 0, "at least one target is eligible");
        if count == 1 {
            return nth(0);
        }
        let a = rng.usize(..count);
        let mut b = rng.usize(..count - 1);
        if b >= a {
            b += 1;
        }
        let (a, b) = (nth(a), nth(b));
        if self.cost(targets, b, now) < self.cost(targets, a, now) {
            b
        } else {
            a
        }
    }

    /// Expected wait at target `i`, per unit of weight.
    pub fn cost(&self, targets: &[Target], i: usize, now: Instant) -> f64 {
        let latency = self.latency[i]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .estimate(now);
        let target = &targets[i];
        latency * (target.in_flight() as f64 + 1.0) / f64::from(target.weight)
    }

    pub fn observe(&self, i: usize, latency: Duration, now: Instant) {
        self.latency[i]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(latency, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::target::targets as make;

    const DECAY: Duration = Duration::from_secs(10);

    fn picks(p2c: &P2cEwma, targets: &[Target], now: Instant, n: usize) -> Vec<usize> {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut counts = vec![0; targets.len()];
        for _ in 0..n {
            counts[p2c.pick_with(targets, &Eligible::Any, now, &mut rng)] += 1;
        }
        counts
    }

    #[test]
    fn a_slow_target_never_wins_a_draw() {
        let targets = make(&[1, 1, 1]);
        let now = Instant::now();
        let p2c = P2cEwma::new(3, DECAY, now);
        p2c.observe(0, Duration::from_millis(5), now);
        p2c.observe(1, Duration::from_millis(5), now);
        p2c.observe(2, Duration::from_millis(500), now);
        // Any pair includes a fast target, so the slow one never wins.
        let counts = picks(&p2c, &targets, now, 300);
        assert_eq!(counts[2], 0, "{counts:?}");
        assert!(counts[0] > 100 && counts[1] > 100, "{counts:?}");
    }

    #[test]
    fn two_targets_always_compare_both() {
        let targets = make(&[1, 1]);
        let now = Instant::now();
        let p2c = P2cEwma::new(2, DECAY, now);
        p2c.observe(1, Duration::from_millis(200), now);
        assert_eq!(picks(&p2c, &targets, now, 50), [50, 0]);
    }

    #[test]
    fn in_flight_requests_multiply_the_cost() {
        let targets = make(&[1, 1]);
        let now = Instant::now();
        let p2c = P2cEwma::new(2, DECAY, now);
        p2c.observe(0, Duration::from_millis(40), now);
        p2c.observe(1, Duration::from_millis(100), now);
        assert_eq!(picks(&p2c, &targets, now, 10), [10, 0]);
        // 40 ms × 3 in flight costs more than 100 ms idle.
        let _busy = [targets[0].start(), targets[0].start()];
        assert_eq!(picks(&p2c, &targets, now, 10), [0, 10]);
        assert!((p2c.cost(&targets, 0, now) - 120e6).abs() < 1.0);
    }

    #[test]
    fn weight_divides_the_cost() {
        let targets = make(&[1, 4]);
        let now = Instant::now();
        let p2c = P2cEwma::new(2, DECAY, now);
        p2c.observe(0, Duration::from_millis(40), now);
        p2c.observe(1, Duration::from_millis(100), now);
        // 100 / 4 = 25 < 40.
        assert_eq!(picks(&p2c, &targets, now, 10), [0, 10]);
    }

    #[test]
    fn a_slow_target_is_tried_again_once_its_estimate_decays() {
        let targets = make(&[1, 1]);
        let now = Instant::now();
        let p2c = P2cEwma::new(2, DECAY, now);
        p2c.observe(0, Duration::from_millis(10), now);
        p2c.observe(1, Duration::from_millis(200), now);
        assert_eq!(picks(&p2c, &targets, now, 10), [10, 0]);
        // Target 0 keeps answering in 10 ms; target 1 is not heard from.
        // After 30 s, 200·e^-3 ≈ 10 ms: about even; after 60 s it wins.
        let later = now + Duration::from_secs(60);
        p2c.observe(0, Duration::from_millis(10), later);
        assert_eq!(picks(&p2c, &targets, later, 10), [0, 10]);
    }

    #[test]
    fn only_eligible_targets_are_drawn() {
        let targets = make(&[1, 1, 1]);
        let now = Instant::now();
        let p2c = P2cEwma::new(3, DECAY, now);
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..50 {
            assert_eq!(
                p2c.pick_with(&targets, &Eligible::Untried(&[0, 2]), now, &mut rng),
                1
            );
            assert_ne!(p2c.pick_with(&targets, &Eligible::Not(0), now, &mut rng), 0);
        }
    }
}
