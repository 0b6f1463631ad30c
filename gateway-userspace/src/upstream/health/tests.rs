//! The health of a set of targets: the share ejected at once, which targets
//! a request may go to, forced states, and a set that changes.

use std::{net::SocketAddr, time::Duration};

use super::*;

fn addrs(n: u16) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i)))
        .collect()
}

fn health(yaml: &str) -> Health {
    let config: HealthChecks = serde_yaml::from_str(yaml).unwrap();
    Health::new("u", &config)
}

fn fail(health: &Health, target: &TargetHealth, times: u32) {
    for _ in 0..times {
        health.report(target, Err(Failure::Connect), Instant::now());
    }
}

fn chosen(health: &Health, targets: &[Arc<TargetHealth>]) -> Vec<bool> {
    match health.choose(targets, &Eligible::Any, Instant::now()) {
        Choice::Any => vec![true; targets.len()],
        Choice::Only(mask) => mask,
        Choice::Nothing => vec![false; targets.len()],
    }
}

#[tokio::test(start_paused = true)]
async fn no_more_than_the_share_is_ejected_at_once() {
    let h = health("{passive: {consecutive_failures: 2, max_ejection_percent: 50}}");
    let targets = h.sync(&addrs(4));
    for target in &targets {
        fail(&h, target, 2);
    }
    // 50% of 4: the first two ejected, the other two kept serving.
    assert_eq!(chosen(&h, &targets), [false, false, true, true]);
    let statuses = h.statuses();
    assert_eq!(statuses[0].state, "ejected");
    assert!(
        statuses[0]
            .reason
            .contains("after 2 consecutive connect failures"),
        "{}",
        statuses[0].reason
    );
    assert_eq!(statuses[3].state, "healthy");
    assert_eq!(statuses[3].consecutive_failures, 2);

    // The first one returns (its time is up, its trial succeeds): a slot
    // is free, and the next failure of another target ejects it.
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(chosen(&h, &targets), [true, true, true, true], "probing");
    h.sent(&targets[0], Instant::now());
    h.report(&targets[0], Ok(()), Instant::now());
    h.report(&targets[1], Ok(()), Instant::now());
    fail(&h, &targets[2], 1);
    assert_eq!(chosen(&h, &targets), [true, true, false, true]);
}

#[tokio::test(start_paused = true)]
async fn a_retry_prefers_a_healthy_target_and_all_down_is_panic_mode() {
    let h = health("{passive: {consecutive_failures: 1, max_ejection_percent: 100}}");
    let targets = h.sync(&addrs(3));
    fail(&h, &targets[0], 1);
    fail(&h, &targets[1], 1);
    let tried = [2];
    let Choice::Only(mask) = h.choose(&targets, &Eligible::Untried(&tried), Instant::now()) else {
        panic!("one target is up")
    };
    assert_eq!(mask, [false, false, true], "back to the healthy one");

    fail(&h, &targets[2], 1);
    assert_eq!(
        chosen(&h, &targets),
        [true, true, true],
        "none up: all of them"
    );
    h.force(targets[1].addr, Some(Forced::Down)).unwrap();
    assert_eq!(
        chosen(&h, &targets),
        [true, false, true],
        "not the forced one"
    );
    h.force(targets[0].addr, Some(Forced::Down)).unwrap();
    h.force(targets[2].addr, Some(Forced::Down)).unwrap();
    assert!(matches!(
        h.choose(&targets, &Eligible::Any, Instant::now()),
        Choice::Nothing
    ));
}

#[tokio::test(start_paused = true)]
async fn forcing_overrides_the_checks_and_auto_hands_back() {
    let h = health("{passive: {consecutive_failures: 1}}");
    let targets = h.sync(&addrs(2));
    h.force(targets[0].addr, Some(Forced::Down)).unwrap();
    assert_eq!(chosen(&h, &targets), [false, true]);
    assert_eq!(h.statuses()[0].state, "forced_down");
    fail(&h, &targets[1], 1);
    h.force(targets[1].addr, Some(Forced::Up)).unwrap();
    assert_eq!(
        chosen(&h, &targets),
        [false, true],
        "forced up while ejected"
    );
    h.force(targets[0].addr, None).unwrap();
    h.force(targets[1].addr, None).unwrap();
    assert_eq!(
        chosen(&h, &targets),
        [true, false],
        "the ejection still runs"
    );

    let error = h
        .force("127.0.0.1:1".parse().unwrap(), Some(Forced::Down))
        .unwrap_err();
    assert_eq!(
        error,
        "upstream u has no target 127.0.0.1:1 (its targets: 127.0.0.1:9000, 127.0.0.1:9001)"
    );
}

#[tokio::test(start_paused = true)]
async fn active_check_thresholds_take_a_target_down_and_bring_it_back() {
    let h = health("{active: {healthy_threshold: 2, unhealthy_threshold: 2}}");
    let check = h.active.clone().unwrap();
    let targets = h.sync(&addrs(2));
    let refused = || Err("cannot connect: refused".to_string());
    h.check_result(&targets[0], refused(), &check);
    assert_eq!(chosen(&h, &targets), [true, true]);
    h.check_result(&targets[0], refused(), &check);
    assert_eq!(chosen(&h, &targets), [false, true]);
    let status = &h.statuses()[0];
    assert_eq!(status.state, "unhealthy");
    assert!(status.reason.contains("cannot connect: refused"));
    assert_eq!(status.failed_checks, 2);
    h.check_result(&targets[0], Ok(()), &check);
    assert_eq!(chosen(&h, &targets), [false, true]);
    h.check_result(&targets[0], Ok(()), &check);
    assert_eq!(chosen(&h, &targets), [true, true]);
}

#[tokio::test(start_paused = true)]
async fn a_passing_check_ends_an_ejection() {
    let h = health("{active: {}, passive: {consecutive_failures: 1}}");
    let check = h.active.clone().unwrap();
    let targets = h.sync(&addrs(3));
    fail(&h, &targets[0], 1);
    assert_eq!(chosen(&h, &targets), [false, true, true]);
    h.check_result(&targets[0], Ok(()), &check);
    assert_eq!(chosen(&h, &targets), [true, true, true]);
    assert_eq!(h.statuses()[0].ejections, 1);
}

#[tokio::test(start_paused = true)]
async fn targets_that_stay_keep_their_state_and_removed_ones_free_their_slot() {
    let h = health("{passive: {consecutive_failures: 1, max_ejection_percent: 34}}");
    let all = addrs(3);
    let targets = h.sync(&all);
    fail(&h, &targets[0], 1);
    h.force(all[1], Some(Forced::Down)).unwrap();
    // 127.0.0.1:9002 goes, 127.0.0.1:9003 comes.
    let next = [all[1], all[0], "127.0.0.1:9003".parse().unwrap()];
    drop(targets);
    let targets = h.sync(&next);
    let statuses = h.statuses();
    let states: Vec<&str> = statuses.iter().map(|s| s.state.as_str()).collect();
    assert_eq!(states, ["forced_down", "ejected", "healthy"]);
    // The ejected one leaves: its slot is free for another.
    let targets = {
        drop(targets);
        h.sync(
            &next[..1]
                .iter()
                .chain(&next[2..])
                .copied()
                .collect::<Vec<_>>(),
        )
    };
    fail(&h, &targets[1], 1);
    assert_eq!(h.statuses()[1].state, "ejected");
}
