//! Least connections: the target with the fewest requests in flight per
//! unit of weight. A request counts until its response body ends or is
//! dropped, so slow downloads count too. Ties (an idle upstream is all
//! ties) go round robin with weights, so weights hold at low load too.

use super::{round_robin::SmoothWeighted, Eligible};
use crate::upstream::target::Target;

pub struct LeastConn {
    ties: SmoothWeighted,
}

impl LeastConn {
    pub fn new(targets: usize) -> Self {
        Self {
            ties: SmoothWeighted::new(targets),
        }
    }

    pub fn pick(&self, targets: &[Target], eligible: &Eligible) -> usize {
        // One snapshot, so that the tie set is consistent with the minimum.
        let load: Vec<u64> = targets.iter().map(|t| t.in_flight() as u64).collect();
        // a/wa < b/wb without division: a·wb < b·wa.
        let score = |i: usize| (load[i], u64::from(targets[i].weight));
        let mut best: Option<usize> = None;
        for i in (0..targets.len()).filter(|&i| eligible.allows(i)) {
            let better = best.is_none_or(|b| {
                let ((li, wi), (lb, wb)) = (score(i), score(b));
                li * wb < lb * wi
            });
            if better {
                best = Some(i);
            }
        }
        let best = best.expect("at least one target is eligible");
        let (lb, wb) = score(best);
        self.ties
            .pick(targets, |i| {
                let (li, wi) = score(i);
                eligible.allows(i) && li * wb == lb * wi
            })
            .unwrap_or(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::target::targets as make;

    #[test]
    fn picks_the_least_loaded_per_weight() {
        let targets = make(&[1, 1, 1]);
        let lc = LeastConn::new(3);
        let _busy = [targets[0].start(), targets[0].start(), targets[2].start()];
        for _ in 0..5 {
            assert_eq!(lc.pick(&targets, &Eligible::Any), 1);
        }
        // Weight 4 with 3 in flight (0.75 each) beats weight 1 with 1.
        let targets = make(&[1, 4]);
        let lc = LeastConn::new(2);
        let _busy = [
            targets[0].start(),
            targets[1].start(),
            targets[1].start(),
            targets[1].start(),
        ];
        assert_eq!(lc.pick(&targets, &Eligible::Any), 1);
        let _one_more = targets[1].start();
        // 4/4 = 1/1: a tie, shared by weight.
        let picks: Vec<usize> = (0..5).map(|_| lc.pick(&targets, &Eligible::Any)).collect();
        assert_eq!(picks.iter().filter(|&&p| p == 1).count(), 4, "{picks:?}");
    }

    #[test]
    fn ties_follow_weighted_round_robin() {
        let targets = make(&[1, 3]);
        let lc = LeastConn::new(2);
        let picks: Vec<usize> = (0..40).map(|_| lc.pick(&targets, &Eligible::Any)).collect();
        assert_eq!(picks.iter().filter(|&&p| p == 0).count(), 10);
        assert_eq!(picks.iter().filter(|&&p| p == 1).count(), 30);
    }

    #[test]
    fn a_released_request_stops_counting() {
        let targets = make(&[1, 1]);
        let lc = LeastConn::new(2);
        let busy = targets[0].start();
        assert_eq!(lc.pick(&targets, &Eligible::Any), 1);
        let other = targets[1].start();
        let also = targets[1].start();
        assert_eq!(lc.pick(&targets, &Eligible::Any), 0);
        drop((other, also));
        assert_eq!(lc.pick(&targets, &Eligible::Any), 1);
        drop(busy);
        assert_eq!(lc.pick(&targets, &Eligible::Untried(&[0])), 1);
    }
}
