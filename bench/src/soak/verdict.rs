//! What a soak run concludes from its samples: no unexpected errors, how far
//! the p99 latency drifted, and whether the daemon's memory and open files
//! reached a plateau. Pure functions over [`Sample`]s, so that the rules are
//! unit-tested with synthetic runs (a leak must fail, a plateau must pass).

use std::fmt::Write as _;

/// One sampling window (about 10 s) of a soak run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Seconds from the start of the traffic to the end of the window.
    pub at_s: f64,
    pub requests: u64,
    /// 2xx answers.
    pub ok: u64,
    /// 429 from the rate-limited route: expected, not errors.
    pub rate_limited: u64,
    /// 401 to the requests sent without a key on purpose: expected.
    pub auth_refused: u64,
    /// 502/503/504 inside an upstream restart's window: expected.
    pub restart_5xx: u64,
    /// Everything else: connection errors, timeouts, wrong statuses.
    pub unexpected: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// The daemon's VmRSS at the end of the window.
    pub rss_kib: u64,
    /// The daemon's open file descriptors at the end of the window.
    pub fds: u64,
}

/// Limits the verdict applies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest allowed p99 of the last third over p99 of the first third.
    pub max_p99_drift: f64,
    /// Absolute slack (KiB) on top of [`RSS_GROWTH_RATIO`]; default
    /// [`RSS_GROWTH_SLACK_KIB`].
    pub rss_slack_kib: u64,
}

/// Growth of the last third's peak RSS over the middle third's that still
/// counts as a plateau: allocator noise (arenas, pools reaching their
/// working size) stays well inside it; a leak of the kind that matters grows
/// in proportion to the time and shows as a last third above it.
pub const RSS_GROWTH_RATIO: f64 = 0.10;
/// Absolute slack on top of the ratio, so that a small daemon's page-sized
/// steps do not fail a run.
pub const RSS_GROWTH_SLACK_KIB: u64 = 4 * 1024;
/// Open files the last third may hold above the middle third's peak
/// (client connections come and go; a descriptor leak keeps climbing).
pub const FD_GROWTH_SLACK: u64 = 64;
/// Fewer samples than this cannot be split into thirds: the plateau and
/// drift rules report "not judged" instead of a result.
pub const MIN_SAMPLES: usize = 3;

/// One rule's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: &'static str,
    /// `None`: the run was too short to judge.
    pub passed: Option<bool>,
    pub detail: String,
}

#[derive(Debug, Clone)]
pub struct Verdict {
    pub checks: Vec<Check>,
}

impl Verdict {
    /// Every judged rule passed (a rule not judged does not fail a run).
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed != Some(false))
    }
}

/// The three parts of a run: first, middle and last third of the samples
/// (the middle one gets the remainder).
fn thirds<T>(items: &[T]) -> (&[T], &[T], &[T]) {
    let third = items.len() / 3;
    let (first, rest) = items.split_at(third);
    let (middle, last) = rest.split_at(rest.len() - third);
    (first, middle, last)
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// p99 of the last third's windows over the first third's (medians of the
/// windows' p99, so one noisy window on a shared machine does not decide).
pub fn p99_drift(samples: &[Sample]) -> Option<f64> {
    let with_traffic: Vec<&Sample> = samples.iter().filter(|s| s.requests > 0).collect();
    if with_traffic.len() < MIN_SAMPLES {
        return None;
    }
    let (first, _, last) = thirds(&with_traffic);
    let before = median(first.iter().map(|s| s.p99_us).collect());
    let after = median(last.iter().map(|s| s.p99_us).collect());
    (before > 0.0).then(|| after / before)
}

/// The plateau rule: the peak of the last third may exceed the peak of the
/// middle third by at most `ratio` of it plus `slack`. The first third is
/// left out: it holds the warm-up (connection pools, caches and allocator
/// arenas growing to their working size).
fn plateau(values: &[u64], ratio: f64, slack: u64) -> Option<(bool, u64, u64)> {
    if values.len() < MIN_SAMPLES {
        return None;
    }
    let (_, middle, last) = thirds(values);
    let middle_max = middle.iter().copied().max().unwrap_or(0);
    let last_max = last.iter().copied().max().unwrap_or(0);
    let allowed = (middle_max as f64 * (1.0 + ratio)) as u64 + slack;
    Some((last_max <= allowed, middle_max, last_max))
}

/// Judges a run. `event_failures` are the periodic events that did not
/// behave (a broken config accepted, a CLI command that failed, a flood XDP
/// did not drop).
pub fn judge(samples: &[Sample], event_failures: &[String], limits: Limits) -> Verdict {
    let mut checks = Vec::new();
    let unexpected: u64 = samples.iter().map(|s| s.unexpected).sum();
    let requests: u64 = samples.iter().map(|s| s.requests).sum();
    checks.push(Check {
        name: "no unexpected errors",
        passed: Some(unexpected == 0 && requests > 0),
        detail: if requests == 0 {
            "no request completed".into()
        } else {
            format!("{unexpected} unexpected of {requests} requests")
        },
    });
    let stalled: Vec<String> = samples
        .iter()
        .filter(|s| s.requests == 0)
        .map(|s| format!("{:.0} s", s.at_s))
        .collect();
    checks.push(Check {
        name: "traffic in every window",
        passed: Some(stalled.is_empty()),
        detail: if stalled.is_empty() {
            format!("{} windows", samples.len())
        } else {
            format!(
                "no request completed in the windows ending at {}",
                stalled.join(", ")
            )
        },
    });
    checks.push(Check {
        name: "periodic events behaved",
        passed: Some(event_failures.is_empty()),
        detail: if event_failures.is_empty() {
            "all as expected".into()
        } else {
            event_failures.join("; ")
        },
    });
    let drift = p99_drift(samples);
    checks.push(Check {
        name: "p99 drift",
        passed: drift.map(|d| d <= limits.max_p99_drift),
        detail: match drift {
            Some(d) => format!(
                "{d:.2}x (last third's p99 over the first third's; at most {:.2}x)",
                limits.max_p99_drift
            ),
            None => format!("not judged: fewer than {MIN_SAMPLES} windows with traffic"),
        },
    });
    let rss: Vec<u64> = samples.iter().map(|s| s.rss_kib).collect();
    checks.push(Check {
        name: "RSS plateau",
        passed: plateau(&rss, RSS_GROWTH_RATIO, limits.rss_slack_kib).map(|p| p.0),
        detail: match plateau(&rss, RSS_GROWTH_RATIO, limits.rss_slack_kib) {
            Some((_, middle, last)) => format!(
                "peak {:.1} MiB in the last third, {:.1} MiB in the middle third \
                 (allowed: +{:.0}% + {} MiB)",
                mib(last),
                mib(middle),
                RSS_GROWTH_RATIO * 100.0,
                limits.rss_slack_kib / 1024
            ),
            None => format!("not judged: fewer than {MIN_SAMPLES} samples"),
        },
    });
    let fds: Vec<u64> = samples.iter().map(|s| s.fds).collect();
    checks.push(Check {
        name: "open files plateau",
        passed: plateau(&fds, 0.0, FD_GROWTH_SLACK).map(|p| p.0),
        detail: match plateau(&fds, 0.0, FD_GROWTH_SLACK) {
            Some((_, middle, last)) => format!(
                "peak {last} in the last third, {middle} in the middle third (allowed: +{FD_GROWTH_SLACK})"
            ),
            None => format!("not judged: fewer than {MIN_SAMPLES} samples"),
        },
    });
    Verdict { checks }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The samples as a Markdown table, one row per window.
pub fn table(samples: &[Sample]) -> String {
    let mut out = String::from(
        "| t (s) | requests | 2xx | 429 (limit) | 401 (no key) | 5xx in restart | unexpected | p50 ms | p99 ms | RSS MiB | fds |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for s in samples {
        let _ = writeln!(
            out,
            "| {:.0} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.1} | {} |",
            s.at_s,
            s.requests,
            s.ok,
            s.rate_limited,
            s.auth_refused,
            s.restart_5xx,
            s.unexpected,
            s.p50_us / 1000.0,
            s.p99_us / 1000.0,
            mib(s.rss_kib),
            s.fds
        );
    }
    out
}

/// The verdict as Markdown lines, ending with PASS or FAIL.
pub fn render(verdict: &Verdict) -> String {
    let mut out = String::new();
    for c in &verdict.checks {
        let mark = match c.passed {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "not judged",
        };
        let _ = writeln!(out, "- {}: **{mark}** — {}", c.name, c.detail);
    }
    let _ = writeln!(
        out,
        "\nVERDICT: {}",
        if verdict.passed() { "PASS" } else { "FAIL" }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_p99_drift: 2.0,
        rss_slack_kib: RSS_GROWTH_SLACK_KIB,
    };

    /// A clean run of `n` windows with the given RSS (MiB) per window.
    fn run(rss_mib: &[u64]) -> Vec<Sample> {
        rss_mib
            .iter()
            .enumerate()
            .map(|(i, &rss)| Sample {
                at_s: 10.0 * (i + 1) as f64,
                requests: 2000,
                ok: 1800,
                rate_limited: 150,
                auth_refused: 40,
                restart_5xx: 10,
                unexpected: 0,
                p50_us: 400.0,
                p99_us: 2000.0,
                rss_kib: rss * 1024,
                fds: 40,
            })
            .collect()
    }

    fn check<'a>(v: &'a Verdict, name: &str) -> &'a Check {
        v.checks.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn warm_up_then_plateau_passes() {
        // Grows during warm-up, then flat with noise.
        let samples = run(&[20, 28, 33, 35, 36, 35, 36, 37, 36, 36, 37, 36]);
        let v = judge(&samples, &[], LIMITS);
        assert!(v.passed(), "{}", render(&v));
        assert_eq!(check(&v, "RSS plateau").passed, Some(true));
        assert_eq!(p99_drift(&samples), Some(1.0));
    }

    #[test]
    fn a_steady_leak_fails_the_rss_rule() {
        // +3 MiB every window: the last third ends far above the middle's.
        let rss: Vec<u64> = (0..12).map(|i| 30 + 3 * i).collect();
        let v = judge(&run(&rss), &[], LIMITS);
        assert!(!v.passed());
        assert_eq!(check(&v, "RSS plateau").passed, Some(false));
        assert!(render(&v).ends_with("VERDICT: FAIL\n"), "{}", render(&v));
    }

    #[test]
    fn growth_inside_the_tolerance_passes() {
        // Middle peak 40 MiB; allowed 40 * 1.1 + 4 = 48 MiB.
        let v = judge(&run(&[30, 35, 40, 40, 40, 40, 48, 47, 46]), &[], LIMITS);
        assert_eq!(check(&v, "RSS plateau").passed, Some(true));
        let v = judge(&run(&[30, 35, 40, 40, 40, 40, 49, 47, 46]), &[], LIMITS);
        assert_eq!(check(&v, "RSS plateau").passed, Some(false));
    }

    #[test]
    fn an_fd_leak_fails() {
        let mut samples = run(&[30; 9]);
        for (i, s) in samples.iter_mut().enumerate() {
            s.fds = 40 + 30 * i as u64;
        }
        let v = judge(&samples, &[], LIMITS);
        assert_eq!(check(&v, "open files plateau").passed, Some(false));
        assert!(!v.passed());
    }

    #[test]
    fn one_unexpected_error_fails() {
        let mut samples = run(&[30; 6]);
        samples[4].unexpected = 1;
        let v = judge(&samples, &[], LIMITS);
        assert_eq!(check(&v, "no unexpected errors").passed, Some(false));
        assert!(!v.passed());
    }

    #[test]
    fn expected_refusals_are_not_errors() {
        let v = judge(&run(&[30; 6]), &[], LIMITS);
        assert_eq!(check(&v, "no unexpected errors").passed, Some(true));
    }

    #[test]
    fn p99_drift_is_last_third_over_first_third() {
        let mut samples = run(&[30; 9]);
        for (i, s) in samples.iter_mut().enumerate() {
            s.p99_us = if i >= 6 { 5000.0 } else { 2000.0 };
        }
        let v = judge(&samples, &[], LIMITS);
        assert_eq!(p99_drift(&samples), Some(2.5));
        assert_eq!(check(&v, "p99 drift").passed, Some(false));
        let relaxed = Limits {
            max_p99_drift: 3.0,
            ..LIMITS
        };
        assert!(judge(&samples, &[], relaxed).passed());
    }

    #[test]
    fn a_stall_and_a_misbehaving_event_fail() {
        let mut samples = run(&[30; 6]);
        samples[3].requests = 0;
        let v = judge(&samples, &[], LIMITS);
        assert_eq!(check(&v, "traffic in every window").passed, Some(false));
        let v = judge(
            &run(&[30; 6]),
            &["broken config accepted".to_string()],
            LIMITS,
        );
        assert_eq!(check(&v, "periodic events behaved").passed, Some(false));
        assert!(!v.passed());
    }

    #[test]
    fn short_runs_are_not_judged_on_trends_but_still_on_errors() {
        let v = judge(&run(&[30, 90]), &[], LIMITS);
        assert_eq!(check(&v, "RSS plateau").passed, None);
        assert_eq!(check(&v, "p99 drift").passed, None);
        assert!(v.passed());
        assert!(!judge(&[], &[], LIMITS).passed(), "no traffic at all fails");
    }

    #[test]
    fn the_table_has_a_row_per_window() {
        let text = table(&run(&[30, 31, 32]));
        assert_eq!(text.lines().count(), 2 + 3);
        assert!(text.contains("| 30 | 2000 | 1800 | 150 | 40 | 10 | 0 | 0.40 | 2.00 | 32.0 | 40 |"));
    }
}
