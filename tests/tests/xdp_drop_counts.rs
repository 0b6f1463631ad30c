//! The XDP program's per-source drop counts (map `DROPS`), run in the
//! kernel on crafted frames (BPF_PROG_TEST_RUN): which drops are counted,
//! under which source and reason, exactly when every drop is recorded and
//! within hard bounds when sampled.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use gateway_common::{flags, DropReason, RateLimit, Stat, XdpConfig, DROP_SAMPLE_DEFAULT};
use gateway_userspace::xdp::{DroppedSource, XdpDataPlane};
use xgate_tests::{frames::*, require_root, test_run, test_run::run};

const DENIED_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const DENIED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 1);
const FLOODER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const QUIET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const DST_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const DST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);

macro_rules! root_only {
    () => {
        if !require_root(module_path!()) {
            return;
        }
    };
}

/// A fresh program (private maps): deny 203.0.113.0/24 and
/// 2001:db8:bad::/48, every source policed at `rate` pps with `burst`, and
/// one drop in `sample` recorded.
fn program(rate: u64, burst: u64, sample: u32) -> XdpDataPlane {
    test_run::load(
        XdpConfig {
            flags: flags::RATE_LIMIT,
            v4_prefix_len: 32,
            v6_prefix_len: 64,
            rate: RateLimit::per_second(rate, burst),
            drop_sample: sample,
            ..XdpConfig::default()
        },
        &["203.0.113.0/24", "2001:db8:bad::/48"],
    )
}

fn row(rows: &[DroppedSource], source: impl Into<IpAddr>) -> Option<&DroppedSource> {
    let source = source.into();
    rows.iter().find(|r| r.source == source)
}

fn packets(row: &DroppedSource, reason: DropReason) -> u64 {
    row.packets[reason as usize]
}

#[test]
fn every_drop_is_counted_under_its_source_and_reason_when_not_sampled() {
    root_only!();
    // 1 pps, burst 2: a source's third packet on is dropped while the test
    // runs.
    let mut xdp = program(1, 2, 1);
    let started = std::time::SystemTime::now();
    for _ in 0..5 {
        run(&mut xdp, &udp4_frame(DENIED_V4, DST_V4), 1);
    }
    for _ in 0..3 {
        run(&mut xdp, &udp6_frame(DENIED_V6, DST_V6), 1);
    }
    for _ in 0..9 {
        run(&mut xdp, &udp4_frame(FLOODER, DST_V4), 1);
    }
    // Within its budget: passed, never counted.
    run(&mut xdp, &udp4_frame(QUIET, DST_V4), 1);
    // Malformed (a truncated IPv4 header): dropped, but no source to count.
    let mut truncated = udp4_frame(QUIET, DST_V4);
    truncated.truncate(14 + 10);
    run(&mut xdp, &truncated, 1);
    let counters = xdp.counters().unwrap();
    assert_eq!(
        (
            counters.get(Stat::DeniedV4),
            counters.get(Stat::DeniedV6),
            counters.get(Stat::RateLimited),
            counters.get(Stat::Malformed)
        ),
        (5, 3, 7, 1)
    );

    let rows = xdp.top_dropped(10).unwrap();
    assert_eq!(
        rows.len(),
        3,
        "exactly the three dropping sources: {rows:?}"
    );
    assert_eq!(rows[0].source, IpAddr::V4(FLOODER), "most dropped first");
    let flooder = row(&rows, FLOODER).unwrap();
    assert_eq!(flooder.packets, [0, 7, 0]);
    assert_eq!(packets(flooder, DropReason::RateLimited), 7);
    let v4 = row(&rows, DENIED_V4).unwrap();
    assert_eq!(v4.packets, [5, 0, 0]);
    let v6 = row(&rows, DENIED_V6).unwrap();
    assert_eq!(v6.packets, [3, 0, 0]);
    assert!(
        row(&rows, QUIET).is_none(),
        "a passing source is not counted"
    );
    for r in &rows {
        let skew = std::time::Duration::from_secs(2);
        assert!(
            r.last_seen + skew >= started && r.last_seen <= std::time::SystemTime::now() + skew,
            "last seen {:?} is not during the test",
            r.last_seen
        );
    }
    assert_eq!(xdp.top_dropped(1).unwrap().len(), 1);
}

#[test]
fn counting_off_records_nothing() {
    root_only!();
    let mut xdp = program(1, 2, 0);
    run(&mut xdp, &udp4_frame(DENIED_V4, DST_V4), 100);
    assert_eq!(xdp.counters().unwrap().get(Stat::DeniedV4), 100);
    assert!(xdp.top_dropped(10).unwrap().is_empty());
}

/// Sampled (the default, one in 64 on average): every sample adds the drops
/// since the previous one on its CPU, so the recorded total is the true
/// total minus at most one unfinished gap (< 2 x 64) per CPU, and never
/// more: hard bounds, not statistical ones. Which source a sample lands on
/// is random; with a 3:1 mix over 40,000 drops the heavier source comes
/// out first by a wide margin (about 12 standard deviations).
#[test]
fn sampled_counts_add_up_to_the_drops_and_rank_the_heavy_dropper_first() {
    root_only!();
    assert_eq!(DROP_SAMPLE_DEFAULT, 64);
    let mut xdp = program(1, 1, DROP_SAMPLE_DEFAULT);
    let heavy = udp4_frame(DENIED_V4, DST_V4);
    let light = udp6_frame(DENIED_V6, DST_V6);
    for _ in 0..1_000 {
        run(&mut xdp, &heavy, 30);
        run(&mut xdp, &light, 10);
    }
    let counters = xdp.counters().unwrap();
    let dropped = counters.get(Stat::DeniedV4) + counters.get(Stat::DeniedV6);
    assert_eq!(dropped, 40_000);

    let rows = xdp.top_dropped(10).unwrap();
    let recorded: u64 = rows.iter().map(DroppedSource::total).sum();
    let cpus = aya::util::nr_cpus().unwrap() as u64;
    let slack = cpus * (2 * u64::from(DROP_SAMPLE_DEFAULT) - 1);
    assert!(
        recorded <= dropped && recorded + slack >= dropped,
        "recorded {recorded} of {dropped} drops (slack {slack})"
    );
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].source, IpAddr::V4(DENIED_V4), "{rows:?}");
    let heavy = packets(&rows[0], DropReason::Denied);
    let light = packets(&rows[1], DropReason::Denied);
    assert!(
        heavy > 2 * light,
        "3:1 estimated as {heavy}:{light}: far off"
    );
}
