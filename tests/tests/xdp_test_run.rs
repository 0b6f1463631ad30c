//! The XDP program run in the kernel on crafted frames (BPF_PROG_TEST_RUN):
//! every verdict and the counter it lands in.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::programs::{TestRun, TestRunOptions};
use gateway_common::{Rule, RuleSource, Stat};
use gateway_userspace::{
    sys,
    xdp::{XdpDataPlane, XDP_OBJECT},
};
use xgate_tests::{frames::*, require_root};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const BLOCKED_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const OTHER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const DST_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const BLOCKED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 1);
const OTHER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x900d, 0, 0, 0, 0, 1);
const DST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);

fn permanent() -> Rule {
    Rule {
        expires_at_ns: 0,
        source: RuleSource::Cli as u32,
        _pad: 0,
    }
}

/// A fresh program instance with its own (unpinned) maps, holding deny rules
/// for 203.0.113.0/24 and 2001:db8:bad::/48.
fn data_plane() -> XdpDataPlane {
    let mut xdp = XdpDataPlane::load(XDP_OBJECT, None).expect("load XDP program");
    xdp.insert_deny("203.0.113.0/24".parse().unwrap(), permanent())
        .unwrap();
    xdp.insert_deny("2001:db8:bad::/48".parse().unwrap(), permanent())
        .unwrap();
    xdp
}

/// Runs `frame` once; returns the verdict and asserts that exactly the one
/// expected counter moved, by one.
fn run(xdp: &mut XdpDataPlane, frame: &[u8], expected: Stat) -> u32 {
    let before = xdp.counters().unwrap();
    let opts = TestRunOptions {
        data_in: Some(frame),
        ..TestRunOptions::default()
    };
    let result = xdp
        .program_mut()
        .unwrap()
        .test_run(opts)
        .expect("BPF_PROG_TEST_RUN");
    let after = xdp.counters().unwrap();
    for stat in Stat::ALL {
        let delta = after.get(stat) - before.get(stat);
        let want = u64::from(stat == expected);
        assert_eq!(
            delta,
            want,
            "counter {} moved by {delta}, expected {want} (frame counted as {expected:?})",
            stat.name()
        );
    }
    result.return_value
}

macro_rules! root_only {
    () => {
        if !require_root(module_path!()) {
            return;
        }
    };
}

#[test]
fn blocked_ipv4_source_is_dropped() {
    root_only!();
    let mut xdp = data_plane();
    assert_eq!(
        run(&mut xdp, &udp4_frame(BLOCKED_V4, DST_V4), Stat::DeniedV4),
        XDP_DROP
    );
}

#[test]
fn other_ipv4_source_passes() {
    root_only!();
    let mut xdp = data_plane();
    assert_eq!(
        run(&mut xdp, &udp4_frame(OTHER_V4, DST_V4), Stat::Passed),
        XDP_PASS
    );
    // Destination in the denied range does not matter: rules match sources.
    assert_eq!(
        run(&mut xdp, &udp4_frame(OTHER_V4, BLOCKED_V4), Stat::Passed),
        XDP_PASS
    );
}

#[test]
fn non_ip_frames_always_pass() {
    root_only!();
    let mut xdp = data_plane();
    // ARP from a denied address: the host must still answer it.
    assert_eq!(
        run(&mut xdp, &arp_frame(BLOCKED_V4, DST_V4), Stat::NonIp),
        XDP_PASS
    );
    assert_eq!(
        run(&mut xdp, &ethernet(&[], 0x88CC, &[0; 46]), Stat::NonIp),
        XDP_PASS
    ); // LLDP
}

#[test]
fn truncated_and_malformed_ipv4_are_dropped_as_malformed() {
    root_only!();
    let mut xdp = data_plane();
    let full = udp4_frame(OTHER_V4, DST_V4);
    // Cut inside the IPv4 header (Ethernet header is 14 bytes, IPv4 20).
    for cut in [15, 20, 33] {
        assert_eq!(
            run(&mut xdp, &full[..cut], Stat::Malformed),
            XDP_DROP,
            "cut at {cut}"
        );
    }
    // IHL 4 (16 bytes) is below the minimum.
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x44;
    assert_eq!(run(&mut xdp, &bad_ihl, Stat::Malformed), XDP_DROP);
    // IHL 15 (60 bytes) claims more header than the frame has.
    let short = ethernet(&[], ETH_P_IPV4, &ipv4(OTHER_V4, DST_V4, IPPROTO_UDP, &[]));
    let mut long_ihl = short.clone();
    long_ihl[14] = 0x4F;
    assert_eq!(run(&mut xdp, &long_ihl, Stat::Malformed), XDP_DROP);
    // Version 6 inside an IPv4 ethertype.
    let mut wrong_version = full.clone();
    wrong_version[14] = 0x65;
    assert_eq!(run(&mut xdp, &wrong_version, Stat::Malformed), XDP_DROP);
}

#[test]
fn ipv4_options_are_skipped_and_the_source_still_matched() {
    root_only!();
    let mut xdp = data_plane();
    let options = [1, 1, 1, 0]; // NOP NOP NOP EOL
    let frame = ethernet(
        &[],
        ETH_P_IPV4,
        &ipv4_with_options(BLOCKED_V4, DST_V4, IPPROTO_UDP, &options, &udp(1, 2, b"x")),
    );
    assert_eq!(run(&mut xdp, &frame, Stat::DeniedV4), XDP_DROP);
}

#[test]
fn vlan_and_qinq_tagged_frames_are_parsed() {
    root_only!();
    let mut xdp = data_plane();
    let ip = ipv4(BLOCKED_V4, DST_V4, IPPROTO_UDP, &udp(1, 2, b"x"));
    let single = ethernet(&[(ETH_P_8021Q, 100)], ETH_P_IPV4, &ip);
    assert_eq!(run(&mut xdp, &single, Stat::DeniedV4), XDP_DROP);
    let qinq = ethernet(&[(ETH_P_8021AD, 10), (ETH_P_8021Q, 100)], ETH_P_IPV4, &ip);
    assert_eq!(run(&mut xdp, &qinq, Stat::DeniedV4), XDP_DROP);
    let ok = ethernet(
        &[(ETH_P_8021Q, 100)],
        ETH_P_IPV4,
        &ipv4(OTHER_V4, DST_V4, IPPROTO_UDP, &udp(1, 2, b"x")),
    );
    assert_eq!(run(&mut xdp, &ok, Stat::Passed), XDP_PASS);
    // A tag cut off in the middle.
    assert_eq!(run(&mut xdp, &single[..16], Stat::Malformed), XDP_DROP);
}

#[test]
fn ipv6_sources_are_matched_and_neighbour_discovery_always_passes() {
    root_only!();
    let mut xdp = data_plane();
    assert_eq!(
        run(&mut xdp, &udp6_frame(BLOCKED_V6, DST_V6), Stat::DeniedV6),
        XDP_DROP
    );
    assert_eq!(
        run(&mut xdp, &udp6_frame(OTHER_V6, DST_V6), Stat::Passed),
        XDP_PASS
    );
    // Neighbour solicitation from a denied source still passes.
    assert_eq!(
        run(
            &mut xdp,
            &icmpv6_frame(BLOCKED_V6, DST_V6, 135),
            Stat::NeighborDiscovery
        ),
        XDP_PASS
    );
    // Other ICMPv6 (echo request, 128) from it does not.
    assert_eq!(
        run(
            &mut xdp,
            &icmpv6_frame(BLOCKED_V6, DST_V6, 128),
            Stat::DeniedV6
        ),
        XDP_DROP
    );
    // Truncated IPv6 header.
    let full = udp6_frame(OTHER_V6, DST_V6);
    assert_eq!(run(&mut xdp, &full[..40], Stat::Malformed), XDP_DROP);
}

#[test]
fn expired_rules_stop_matching_in_the_kernel() {
    root_only!();
    let mut xdp = XdpDataPlane::load(XDP_OBJECT, None).unwrap();
    let past = sys::monotonic_now().saturating_sub(Duration::from_secs(1));
    let future = sys::monotonic_now() + Duration::from_secs(3600);
    xdp.insert_deny(
        "203.0.113.7/32".parse().unwrap(),
        Rule {
            expires_at_ns: past.as_nanos() as u64,
            ..permanent()
        },
    )
    .unwrap();
    xdp.insert_deny(
        "203.0.113.8/32".parse().unwrap(),
        Rule {
            expires_at_ns: future.as_nanos() as u64,
            ..permanent()
        },
    )
    .unwrap();
    assert_eq!(
        run(&mut xdp, &udp4_frame(BLOCKED_V4, DST_V4), Stat::ExpiredRule),
        XDP_PASS
    );
    assert_eq!(
        run(
            &mut xdp,
            &udp4_frame(Ipv4Addr::new(203, 0, 113, 8), DST_V4),
            Stat::DeniedV4
        ),
        XDP_DROP
    );
}

#[test]
fn removing_a_rule_lets_the_source_pass_again() {
    root_only!();
    let mut xdp = data_plane();
    assert_eq!(
        run(&mut xdp, &udp4_frame(BLOCKED_V4, DST_V4), Stat::DeniedV4),
        XDP_DROP
    );
    xdp.remove_deny("203.0.113.0/24".parse().unwrap()).unwrap();
    assert_eq!(
        run(&mut xdp, &udp4_frame(BLOCKED_V4, DST_V4), Stat::Passed),
        XDP_PASS
    );
    let left = xdp.deny_prefixes().unwrap();
    assert_eq!(
        left,
        vec!["2001:db8:bad::/48".parse::<ipnet::IpNet>().unwrap()]
    );
}
