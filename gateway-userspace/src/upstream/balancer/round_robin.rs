//! Smooth weighted round robin, as nginx does it: on every pick each
//! eligible target's current weight grows by its weight, the largest wins
//! and is set back by the total. Weights 5, 1, 1 give `a a b a c a a`: exact
//! shares over every cycle of `sum(weights)` picks, spread out rather than
//! in bursts. Also breaks ties for `least_conn`.

use std::sync::Mutex;

use crate::upstream::target::Target;

pub struct SmoothWeighted {
    current: Mutex<Vec<i64>>,
}

impl SmoothWeighted {
    pub fn new(targets: usize) -> Self {
        Self {
            current: Mutex::new(vec![0; targets]),
        }
    }

    /// The next target among those `eligible` allows; `None` when it allows
    /// none. Targets left out keep their state, as in nginx.
    pub fn pick(&self, targets: &[Target], eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, target) in targets.iter().enumerate() {
            if !eligible(i) {
                continue;
            }
            let weight = i64::from(target.weight);
            current[i] += weight;
            total += weight;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            current[b] -= total;
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::target::targets;

    fn sequence(weights: &[u32], n: usize) -> Vec<usize> {
        let targets = targets(weights);
        let rr = SmoothWeighted::new(targets.len());
        (0..n)
            .map(|_| rr.pick(&targets, |_| true).unwrap())
            .collect()
    }

    #[test]
    fn equal_weights_rotate() {
        assert_eq!(sequence(&[1, 1, 1], 6), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weights_give_exact_shares_spread_out() {
        // nginx's documented sequence for 5, 1, 1.
        assert_eq!(sequence(&[5, 1, 1], 7), [0, 0, 1, 0, 2, 0, 0]);
        let picks = sequence(&[1, 3, 6], 1000);
        for (target, share) in [(0, 100), (1, 300), (2, 600)] {
            assert_eq!(picks.iter().filter(|&&p| p == target).count(), share);
        }
        // Never more than ceil(6/4) = 2 in a row for the heaviest.
        assert!(!picks.windows(3).any(|w| w.iter().all(|&p| p == 2)));
    }

    #[test]
    fn ineligible_targets_are_skipped() {
        let targets = targets(&[1, 1, 1]);
        let rr = SmoothWeighted::new(3);
        for _ in 0..10 {
            assert_ne!(rr.pick(&targets, |i| i != 1), Some(1));
        }
        assert_eq!(rr.pick(&targets, |_| false), None);
    }
}
