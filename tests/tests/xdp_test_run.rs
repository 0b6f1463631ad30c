//! The XDP program run in the kernel on crafted frames (BPF_PROG_TEST_RUN):
//! every verdict and the counter it lands in.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use gateway_common::{flags, RateLimit, Rule, Stat, XdpConfig};
use gateway_userspace::{
    sys,
    xdp::{CachedIn, KernelRules, ListKind, XdpDataPlane, XDP_OBJECT},
};
use ipnet::IpNet;
use xgate_tests::{
    frames::*,
    require_root,
    test_run::{self, permanent},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const BLOCKED_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const OTHER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const DST_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const BLOCKED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 1);
const OTHER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x900d, 0, 0, 0, 0, 1);
const DST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn no_policing() -> XdpConfig {
    XdpConfig {
        v4_prefix_len: 32,
        v6_prefix_len: 64,
        ..XdpConfig::default()
    }
}

/// A fresh program instance with its own (unpinned) maps, holding deny rules
/// for 203.0.113.0/24 and 2001:db8:bad::/48.
fn data_plane() -> XdpDataPlane {
    denying(&["203.0.113.0/24", "2001:db8:bad::/48"])
}

/// A fresh program instance, no policing, these permanent deny entries.
fn denying(entries: &[&str]) -> XdpDataPlane {
    denying_with_capacity(None, entries)
}

/// [`denying`] with every list map holding at most `capacity` entries.
fn denying_with_capacity(capacity: Option<u32>, entries: &[&str]) -> XdpDataPlane {
    let mut xdp =
        XdpDataPlane::load_with_capacity(XDP_OBJECT, None, capacity).expect("load XDP program");
    xdp.replace_rules(&KernelRules {
        config: no_policing(),
        deny: entries.iter().map(|e| (net(e), permanent())).collect(),
        ..KernelRules::default()
    })
    .unwrap();
    xdp
}

/// A program with the given rate limit (and no lists).
fn rate_limited(rate: u64, burst: u64, extra_flags: u32, ports: Option<Vec<u16>>) -> XdpDataPlane {
    let mut xdp = XdpDataPlane::load(XDP_OBJECT, None).expect("load XDP program");
    xdp.replace_rules(&KernelRules {
        config: XdpConfig {
            flags: flags::RATE_LIMIT | extra_flags,
            rate: RateLimit::per_second(rate, burst),
            ..no_policing()
        },
        ports,
        ..KernelRules::default()
    })
    .unwrap();
    xdp
}

/// Runs `frame` once; returns the verdict and asserts that exactly the one
/// expected counter moved, by one.
fn run(xdp: &mut XdpDataPlane, frame: &[u8], expected: Stat) -> u32 {
    let before = xdp.counters().unwrap();
    let verdict = run_raw(xdp, frame);
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
    let expected_verdict = if expected.dropped() {
        XDP_DROP
    } else {
        XDP_PASS
    };
    assert_eq!(
        verdict, expected_verdict,
        "verdict for a frame counted as {expected:?}"
    );
    verdict
}

fn run_raw(xdp: &mut XdpDataPlane, frame: &[u8]) -> u32 {
    test_run::run(xdp, frame, 1)
}

/// Runs `frame` `n` times; returns how many passed.
fn passes(xdp: &mut XdpDataPlane, frame: &[u8], n: usize) -> usize {
    (0..n).filter(|_| run_raw(xdp, frame) == XDP_PASS).count()
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
    run(&mut xdp, &udp4_frame(BLOCKED_V4, DST_V4), Stat::DeniedV4);
}

#[test]
fn other_ipv4_source_passes() {
    root_only!();
    let mut xdp = data_plane();
    run(&mut xdp, &udp4_frame(OTHER_V4, DST_V4), Stat::Passed);
    // Destination in the denied range does not matter: rules match sources.
    run(&mut xdp, &udp4_frame(OTHER_V4, BLOCKED_V4), Stat::Passed);
}

#[test]
fn non_ip_frames_always_pass() {
    root_only!();
    let mut xdp = data_plane();
    // ARP from a denied address: the host must still answer it.
    run(&mut xdp, &arp_frame(BLOCKED_V4, DST_V4), Stat::NonIp);
    run(&mut xdp, &ethernet(&[], 0x88CC, &[0; 46]), Stat::NonIp); // LLDP
}

#[test]
fn truncated_and_malformed_ipv4_are_dropped_as_malformed() {
    root_only!();
    let mut xdp = data_plane();
    let full = udp4_frame(OTHER_V4, DST_V4);
    // Cut inside the IPv4 header (Ethernet header is 14 bytes, IPv4 20), and
    // inside the UDP header (ends at 42).
    for cut in [15, 20, 33, 38] {
        run(&mut xdp, &full[..cut], Stat::Malformed);
    }
    // IHL 4 (16 bytes) is below the minimum.
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x44;
    run(&mut xdp, &bad_ihl, Stat::Malformed);
    // IHL 15 (60 bytes) claims more header than the frame has.
    let short = ethernet(&[], ETH_P_IPV4, &ipv4(OTHER_V4, DST_V4, IPPROTO_UDP, &[]));
    let mut long_ihl = short.clone();
    long_ihl[14] = 0x4F;
    run(&mut xdp, &long_ihl, Stat::Malformed);
    // Version 6 inside an IPv4 ethertype.
    let mut wrong_version = full.clone();
    wrong_version[14] = 0x65;
    run(&mut xdp, &wrong_version, Stat::Malformed);
    // TCP header cut short.
    let tcp_frame = tcp4_frame(OTHER_V4, DST_V4, 80, TCP_SYN);
    run(&mut xdp, &tcp_frame[..14 + 20 + 10], Stat::Malformed);
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
    run(&mut xdp, &frame, Stat::DeniedV4);
}

#[test]
fn vlan_and_qinq_tagged_frames_are_parsed() {
    root_only!();
    let mut xdp = data_plane();
    let ip = ipv4(BLOCKED_V4, DST_V4, IPPROTO_UDP, &udp(1, 2, b"x"));
    let single = ethernet(&[(ETH_P_8021Q, 100)], ETH_P_IPV4, &ip);
    run(&mut xdp, &single, Stat::DeniedV4);
    let qinq = ethernet(&[(ETH_P_8021AD, 10), (ETH_P_8021Q, 100)], ETH_P_IPV4, &ip);
    run(&mut xdp, &qinq, Stat::DeniedV4);
    let ok = ethernet(
        &[(ETH_P_8021Q, 100)],
        ETH_P_IPV4,
        &ipv4(OTHER_V4, DST_V4, IPPROTO_UDP, &udp(1, 2, b"x")),
    );
    run(&mut xdp, &ok, Stat::Passed);
    // Tags cut off in the middle, at both tag boundaries.
    run(&mut xdp, &single[..16], Stat::Malformed);
    run(&mut xdp, &qinq[..20], Stat::Malformed);
    // A third tag is not parsed: the frame is not IP as far as we can tell.
    let triple = ethernet(
        &[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2), (ETH_P_8021Q, 3)],
        ETH_P_IPV4,
        &ip,
    );
    run(&mut xdp, &triple, Stat::NonIp);
}

#[test]
fn ipv6_sources_are_matched_and_neighbour_discovery_always_passes() {
    root_only!();
    let mut xdp = data_plane();
    run(&mut xdp, &udp6_frame(BLOCKED_V6, DST_V6), Stat::DeniedV6);
    run(&mut xdp, &udp6_frame(OTHER_V6, DST_V6), Stat::Passed);
    // Neighbour solicitation from a denied source still passes.
    run(
        &mut xdp,
        &icmpv6_frame(BLOCKED_V6, DST_V6, 135),
        Stat::NeighborDiscovery,
    );
    // Other ICMPv6 (echo request, 128) from it does not.
    run(
        &mut xdp,
        &icmpv6_frame(BLOCKED_V6, DST_V6, 128),
        Stat::DeniedV6,
    );
    // Truncated IPv6 header.
    let full = udp6_frame(OTHER_V6, DST_V6);
    run(&mut xdp, &full[..40], Stat::Malformed);
}

#[test]
fn ipv6_extension_header_chains_are_walked_to_the_transport_header() {
    root_only!();
    // Police UDP port 8080 only, 1 pps with a burst of 1: the second packet
    // to 8080 from a source is dropped only if its port was found behind the
    // extension headers.
    let mut xdp = rate_limited(1, 1, 0, Some(vec![8080]));
    let chain = |src: Ipv6Addr, port: u16| {
        let udp = udp(1, port, b"x");
        let dst = ipv6_ext(IPPROTO_DSTOPTS, IPPROTO_UDP, 0, &udp);
        let ah = ipv6_ext(IPPROTO_AH, IPPROTO_DSTOPTS, 0, &dst);
        let frag = ipv6_ext(IPPROTO_FRAGMENT, IPPROTO_AH, 0, &ah);
        let routing = ipv6_ext(IPPROTO_ROUTING, IPPROTO_FRAGMENT, 0, &frag);
        let hop = ipv6_ext(IPPROTO_HOPOPTS, IPPROTO_ROUTING, 0, &routing);
        ethernet(&[], ETH_P_IPV6, &ipv6(src, DST_V6, IPPROTO_HOPOPTS, &hop))
    };
    run(&mut xdp, &chain(OTHER_V6, 8080), Stat::Passed);
    run(&mut xdp, &chain(OTHER_V6, 8080), Stat::RateLimited);
    run(&mut xdp, &chain(OTHER_V6, 9999), Stat::Passed);
    run(&mut xdp, &chain(OTHER_V6, 9999), Stat::Passed);

    // Seven extension headers exceed the walk's bound: malformed.
    let mut payload = udp(1, 8080, b"x");
    let mut next = IPPROTO_UDP;
    for _ in 0..7 {
        payload = ipv6_ext(IPPROTO_DSTOPTS, next, 0, &payload);
        next = IPPROTO_DSTOPTS;
    }
    run(
        &mut xdp,
        &ethernet(
            &[],
            ETH_P_IPV6,
            &ipv6(OTHER_V6, DST_V6, IPPROTO_DSTOPTS, &payload),
        ),
        Stat::Malformed,
    );
    // An extension header cut short: malformed.
    let cut = chain(OTHER_V6, 8080);
    run(&mut xdp, &cut[..14 + 40 + 1], Stat::Malformed);
}

#[test]
fn fragments_are_denied_by_source_and_non_first_ones_are_policed() {
    root_only!();
    let mut xdp = data_plane();
    // Deny applies to every fragment: it needs only the source address.
    let later = ipv4_fragment(BLOCKED_V4, DST_V4, IPPROTO_UDP, 185, false, &[0; 64]);
    run(&mut xdp, &later, Stat::DeniedV4);
    let later6 = ethernet(
        &[],
        ETH_P_IPV6,
        &ipv6(
            BLOCKED_V6,
            DST_V6,
            IPPROTO_FRAGMENT,
            &ipv6_ext(IPPROTO_FRAGMENT, IPPROTO_UDP, 185, &[0; 64]),
        ),
    );
    run(&mut xdp, &later6, Stat::DeniedV6);

    // With port-limited policing, a non-first fragment (no ports to read)
    // counts against the source's budget; a first fragment is judged by its
    // ports like any packet.
    let mut xdp = rate_limited(1, 1, 0, Some(vec![8080]));
    let first_to_other_port = ipv4_fragment(
        OTHER_V4,
        DST_V4,
        IPPROTO_UDP,
        0,
        true,
        &udp(1, 9999, &[0; 32]),
    );
    run(&mut xdp, &first_to_other_port, Stat::Passed);
    run(&mut xdp, &first_to_other_port, Stat::Passed);
    let later = ipv4_fragment(OTHER_V4, DST_V4, IPPROTO_UDP, 185, false, &[0; 64]);
    run(&mut xdp, &later, Stat::Passed);
    run(&mut xdp, &later, Stat::RateLimited);
}

#[test]
fn allow_list_wins_over_deny_and_is_never_policed() {
    root_only!();
    let mut xdp = rate_limited(1, 1, 0, None);
    xdp.insert(ListKind::Deny, net("203.0.113.0/24"), permanent())
        .unwrap();
    xdp.insert(ListKind::Allow, net("203.0.113.7/32"), permanent())
        .unwrap();
    xdp.insert(ListKind::Allow, net("2001:db8:bad::/64"), permanent())
        .unwrap();
    for _ in 0..5 {
        run(&mut xdp, &udp4_frame(BLOCKED_V4, DST_V4), Stat::AllowListed);
        run(&mut xdp, &udp6_frame(BLOCKED_V6, DST_V6), Stat::AllowListed);
    }
    run(
        &mut xdp,
        &udp4_frame(Ipv4Addr::new(203, 0, 113, 8), DST_V4),
        Stat::DeniedV4,
    );
    // Not allow-listed: policed (burst 1).
    run(&mut xdp, &udp4_frame(OTHER_V4, DST_V4), Stat::Passed);
    run(&mut xdp, &udp4_frame(OTHER_V4, DST_V4), Stat::RateLimited);
}

#[test]
fn expired_rules_stop_matching_in_the_kernel() {
    root_only!();
    let mut xdp = data_plane();
    let past = sys::monotonic_now().saturating_sub(Duration::from_secs(1));
    let future = sys::monotonic_now() + Duration::from_secs(3600);
    xdp.replace_rules(&KernelRules {
        config: no_policing(),
        deny: vec![
            (
                net("203.0.113.7/32"),
                Rule {
                    expires_at_ns: past.as_nanos() as u64,
                    ..permanent()
                },
            ),
            (
                net("203.0.113.8/32"),
                Rule {
                    expires_at_ns: future.as_nanos() as u64,
                    ..permanent()
                },
            ),
        ],
        allow: vec![(
            net("198.51.100.1/32"),
            Rule {
                expires_at_ns: past.as_nanos() as u64,
                ..permanent()
            },
        )],
        ..KernelRules::default()
    })
    .unwrap();
    run(&mut xdp, &udp4_frame(BLOCKED_V4, DST_V4), Stat::Passed);
    run(
        &mut xdp,
        &udp4_frame(Ipv4Addr::new(203, 0, 113, 8), DST_V4),
        Stat::DeniedV4,
    );
    run(&mut xdp, &udp4_frame(OTHER_V4, DST_V4), Stat::Passed);
}

#[test]
fn removing_a_rule_lets_the_source_pass_again() {
    root_only!();
    let mut xdp = data_plane();
    run(&mut xdp, &udp4_frame(BLOCKED_V4, DST_V4), Stat::DeniedV4);
    xdp.remove(ListKind::Deny, net("203.0.113.0/24")).unwrap();
    run(&mut xdp, &udp4_frame(BLOCKED_V4, DST_V4), Stat::Passed);
    assert_eq!(
        xdp.prefixes(ListKind::Deny).unwrap(),
        vec![net("2001:db8:bad::/48")]
    );
}

#[test]
fn token_bucket_admits_the_burst_then_drops() {
    root_only!();
    // 1 packet per second: no token is earned while the test runs.
    let mut xdp = rate_limited(1, 10, 0, None);
    let frame = udp4_frame(OTHER_V4, DST_V4);
    assert_eq!(passes(&mut xdp, &frame, 25), 10);
    assert_eq!(xdp.counters().unwrap().get(Stat::RateLimited), 15);
    // Another source has its own bucket.
    assert_eq!(
        passes(
            &mut xdp,
            &udp4_frame(Ipv4Addr::new(198, 51, 100, 2), DST_V4),
            25
        ),
        10
    );
    assert_eq!(xdp.bucket_count(), 2);
}

/// The program's clock (a per-CPU copy of the coarse clock, read again
/// when `jiffies` moves: `clock.rs`) moves: an emptied bucket earns tokens
/// while the source is quiet, and never more than its burst.
#[test]
fn an_emptied_bucket_earns_tokens_back_up_to_its_burst() {
    root_only!();
    // 4 packets per second: a token every 250 ms, burst 2.
    let mut xdp = rate_limited(4, 2, 0, None);
    let frame = udp4_frame(OTHER_V4, DST_V4);
    let first = passes(&mut xdp, &frame, 10);
    // 2, or 3 if this thread stalled for a token's time in between.
    assert!(
        (2..=3).contains(&first),
        "first burst: {first} of 10 passed"
    );
    // Six tokens' worth of quiet: the bucket refills to its burst of 2.
    std::thread::sleep(Duration::from_millis(1500));
    let second = passes(&mut xdp, &frame, 10);
    assert!(
        (2..=3).contains(&second),
        "after 1.5 s quiet: {second} of 10 passed (a stuck clock gives 0, \
         a bucket that fills past its burst more than 3)"
    );
}

#[test]
fn sources_are_aggregated_by_prefix() {
    root_only!();
    let mut xdp = XdpDataPlane::load(XDP_OBJECT, None).unwrap();
    xdp.replace_rules(&KernelRules {
        config: XdpConfig {
            flags: flags::RATE_LIMIT,
            v4_prefix_len: 24,
            v6_prefix_len: 64,
            rate: RateLimit::per_second(1, 4),
            ..XdpConfig::default()
        },
        ..KernelRules::default()
    })
    .unwrap();
    // Four addresses in one /24 share one bucket of 4.
    let passed: usize = (1..=4)
        .map(|i| {
            passes(
                &mut xdp,
                &udp4_frame(Ipv4Addr::new(198, 51, 100, i), DST_V4),
                2,
            )
        })
        .sum();
    assert_eq!(passed, 4);
    // Two addresses in one IPv6 /64 share too; another /64 does not.
    let a = Ipv6Addr::new(0x2001, 0xdb8, 7, 7, 0, 0, 0, 1);
    let b = Ipv6Addr::new(0x2001, 0xdb8, 7, 7, 0xffff, 0, 0, 2);
    let c = Ipv6Addr::new(0x2001, 0xdb8, 7, 8, 0, 0, 0, 1);
    assert_eq!(
        passes(&mut xdp, &udp6_frame(a, DST_V6), 3) + passes(&mut xdp, &udp6_frame(b, DST_V6), 3),
        4
    );
    assert_eq!(passes(&mut xdp, &udp6_frame(c, DST_V6), 6), 4);
    // One IPv4 bucket (BUCKETS_V4) and two IPv6 ones (BUCKETS_V6).
    assert_eq!(xdp.bucket_count(), 3);
}

#[test]
fn per_cidr_overrides_replace_the_default_budget() {
    root_only!();
    let mut xdp = XdpDataPlane::load(XDP_OBJECT, None).unwrap();
    xdp.replace_rules(&KernelRules {
        config: XdpConfig {
            flags: flags::RATE_LIMIT,
            rate: RateLimit::per_second(1, 2),
            ..no_policing()
        },
        rate_overrides: vec![
            (net("198.51.100.0/24"), RateLimit::per_second(1, 20)),
            (net("192.0.2.0/24"), RateLimit::per_second(0, 0)),
            (net("2001:db8:900d::/48"), RateLimit::per_second(1, 7)),
        ],
        ..KernelRules::default()
    })
    .unwrap();
    assert_eq!(
        passes(&mut xdp, &udp4_frame(OTHER_V4, DST_V4), 30),
        20,
        "partner range"
    );
    assert_eq!(
        passes(
            &mut xdp,
            &udp4_frame(Ipv4Addr::new(192, 0, 2, 9), DST_V4),
            30
        ),
        30,
        "exempt range"
    );
    assert_eq!(
        passes(&mut xdp, &udp4_frame(BLOCKED_V4, DST_V4), 30),
        2,
        "default budget"
    );
    assert_eq!(
        passes(&mut xdp, &udp6_frame(OTHER_V6, DST_V6), 30),
        7,
        "IPv6 override"
    );
}

#[test]
fn protected_ports_and_syn_only_limit_what_is_policed() {
    root_only!();
    let mut xdp = rate_limited(1, 2, 0, Some(vec![8080, 8443]));
    assert_eq!(
        passes(&mut xdp, &udp4_to(OTHER_V4, DST_V4, 53), 10),
        10,
        "unprotected port"
    );
    assert_eq!(
        passes(&mut xdp, &tcp4_frame(OTHER_V4, DST_V4, 8443, TCP_ACK), 10),
        2,
        "protected port"
    );
    // ICMP has no port: not policed when policing is limited to ports.
    let icmp = ethernet(
        &[],
        ETH_P_IPV4,
        &ipv4(
            Ipv4Addr::new(198, 51, 100, 3),
            DST_V4,
            1,
            &[8, 0, 0, 0, 0, 0, 0, 0],
        ),
    );
    assert_eq!(passes(&mut xdp, &icmp, 10), 10);

    let mut xdp = rate_limited(1, 2, flags::SYN_ONLY, None);
    assert_eq!(
        passes(&mut xdp, &tcp4_frame(OTHER_V4, DST_V4, 80, TCP_ACK), 10),
        10,
        "established traffic"
    );
    assert_eq!(
        passes(
            &mut xdp,
            &tcp4_frame(OTHER_V4, DST_V4, 80, TCP_SYN | TCP_ACK),
            10
        ),
        10,
        "SYN-ACK"
    );
    assert_eq!(
        passes(&mut xdp, &tcp4_frame(OTHER_V4, DST_V4, 80, TCP_SYN), 10),
        2,
        "new connections"
    );
    assert_eq!(
        passes(&mut xdp, &udp4_frame(OTHER_V4, DST_V4), 10),
        10,
        "UDP is never a SYN"
    );
}

#[test]
fn replacing_the_rule_set_flips_the_slot_and_keeps_rate_state() {
    root_only!();
    let mut xdp = rate_limited(1, 3, 0, None);
    let slot = xdp.active_slot().unwrap();
    assert_eq!(passes(&mut xdp, &udp4_frame(OTHER_V4, DST_V4), 3), 3);
    xdp.replace_rules(&KernelRules {
        config: XdpConfig {
            flags: flags::RATE_LIMIT,
            rate: RateLimit::per_second(1, 3),
            ..no_policing()
        },
        deny: vec![(net("203.0.113.0/24"), permanent())],
        ..KernelRules::default()
    })
    .unwrap();
    assert_ne!(xdp.active_slot().unwrap(), slot);
    run(&mut xdp, &udp4_frame(BLOCKED_V4, DST_V4), Stat::DeniedV4);
    // The bucket survived the swap: still empty.
    run(&mut xdp, &udp4_frame(OTHER_V4, DST_V4), Stat::RateLimited);
    // And the old slot's entries are gone after the next swap back.
    xdp.replace_rules(&KernelRules {
        config: no_policing(),
        ..KernelRules::default()
    })
    .unwrap();
    assert_eq!(xdp.active_slot().unwrap(), slot);
    run(&mut xdp, &udp4_frame(BLOCKED_V4, DST_V4), Stat::Passed);
    assert!(xdp.prefixes(ListKind::Deny).unwrap().is_empty());
}

#[test]
fn a_full_list_is_a_clear_error_and_changes_nothing() {
    root_only!();
    let mut xdp = XdpDataPlane::load_with_capacity(XDP_OBJECT, None, Some(4)).unwrap();
    xdp.replace_rules(&KernelRules {
        config: no_policing(),
        ..KernelRules::default()
    })
    .unwrap();
    for i in 0..4 {
        xdp.insert(
            ListKind::Deny,
            net(&format!("203.0.113.{i}/32")),
            permanent(),
        )
        .unwrap();
    }
    let err = xdp
        .insert(ListKind::Deny, net("203.0.113.9/32"), permanent())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the kernel blocklist for IPv4 is full (4 entries)"),
        "{err}"
    );
    // Updating an entry that exists still works at capacity.
    xdp.insert(ListKind::Deny, net("203.0.113.0/32"), permanent())
        .unwrap();
    run(
        &mut xdp,
        &udp4_frame(Ipv4Addr::new(203, 0, 113, 9), DST_V4),
        Stat::Passed,
    );

    // A rule set larger than the maps fails before the flip: the old set
    // stays active.
    let slot = xdp.active_slot().unwrap();
    let too_many = (0..5)
        .map(|i| (net(&format!("198.51.100.{i}/32")), permanent()))
        .collect();
    let err = xdp
        .replace_rules(&KernelRules {
            config: no_policing(),
            deny: too_many,
            ..KernelRules::default()
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("is full"), "{err}");
    assert_eq!(xdp.active_slot().unwrap(), slot);
    run(
        &mut xdp,
        &udp4_frame(Ipv4Addr::new(203, 0, 113, 1), DST_V4),
        Stat::DeniedV4,
    );
    run(
        &mut xdp,
        &udp4_frame(Ipv4Addr::new(198, 51, 100, 1), DST_V4),
        Stat::Passed,
    );
}

#[test]
fn a_full_list_refuses_a_cli_entry_without_persisting_it() {
    root_only!();
    let dir = xgate_tests::TempDir::new("full");
    let config = gateway_userspace::config::Config::from_yaml(
        &format!("listeners: [{{address: '127.0.0.1:1'}}]\nstate_dir: {}\nxdp: {{deny: [192.0.2.0/24]}}\n", dir.path().display()),
        "t",
    )
    .unwrap();
    let xdp = XdpDataPlane::load_with_capacity(XDP_OBJECT, None, Some(2)).unwrap();
    let lists = gateway_userspace::lists::SourceLists::open(&config, Some(xdp)).unwrap();
    lists
        .add(ListKind::Deny, net("203.0.113.0/24"), None, None)
        .unwrap();
    let state = std::fs::read_to_string(dir.path().join("lists.json")).unwrap();
    let err = lists
        .add(ListKind::Deny, net("198.51.100.0/24"), None, None)
        .unwrap_err();
    assert!(!err.is_client_error());
    assert!(
        err.to_string()
            .contains("the kernel blocklist for IPv4 is full (2 entries)"),
        "{err}"
    );
    assert_eq!(lists.list(ListKind::Deny).len(), 2);
    assert_eq!(lists.denies("198.51.100.1".parse().unwrap()), None);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("lists.json")).unwrap(),
        state
    );
}

/// A policed source found on no list is remembered in its bucket (the
/// verdict cache); every list change that could put it on a list must end
/// that, whichever way the change arrives.
#[test]
fn the_verdict_cache_is_dropped_by_every_list_change() {
    root_only!();
    let mut xdp = rate_limited(1_000_000, 1 << 30, 0, None);
    let src = OTHER_V4;
    let frame = udp4_frame(src, DST_V4);
    run(&mut xdp, &frame, Stat::Passed);
    run(&mut xdp, &frame, Stat::Passed);
    assert_eq!(
        xdp.verdict_cached(src.into()).unwrap(),
        Some(CachedIn::Bucket),
        "cached in the bucket after a pass"
    );

    // A CLI entry covering the source, added to the active slot.
    xdp.insert(ListKind::Deny, net("198.51.100.0/24"), permanent())
        .unwrap();
    assert_eq!(xdp.verdict_cached(src.into()).unwrap(), None);
    run(&mut xdp, &frame, Stat::DeniedV4);
    xdp.remove(ListKind::Deny, net("198.51.100.0/24")).unwrap();
    run(&mut xdp, &frame, Stat::Passed);
    assert_eq!(
        xdp.verdict_cached(src.into()).unwrap(),
        Some(CachedIn::Bucket)
    );

    // An allow entry: allow-listed sources are not policed.
    xdp.insert(ListKind::Allow, net("198.51.100.1/32"), permanent())
        .unwrap();
    run(&mut xdp, &frame, Stat::AllowListed);
    xdp.remove(ListKind::Allow, net("198.51.100.1/32")).unwrap();
    run(&mut xdp, &frame, Stat::Passed);
    assert_eq!(
        xdp.verdict_cached(src.into()).unwrap(),
        Some(CachedIn::Bucket)
    );

    // A whole new rule set (reload) that denies it: the other slot.
    xdp.replace_rules(&KernelRules {
        config: XdpConfig {
            flags: flags::RATE_LIMIT,
            rate: RateLimit::per_second(1_000_000, 1 << 30),
            ..no_policing()
        },
        deny: vec![(net("198.51.100.1/32"), permanent())],
        ..KernelRules::default()
    })
    .unwrap();
    run(&mut xdp, &frame, Stat::DeniedV4);
    // IPv6 the same way (default /64 aggregation, /48 entries: cacheable).
    let v6 = udp6_frame(OTHER_V6, DST_V6);
    run(&mut xdp, &v6, Stat::Passed);
    assert_eq!(
        xdp.verdict_cached(OTHER_V6.into()).unwrap(),
        Some(CachedIn::Bucket)
    );
    xdp.insert(ListKind::Deny, net("2001:db8:900d::/48"), permanent())
        .unwrap();
    run(&mut xdp, &v6, Stat::DeniedV6);
}

/// `src` has no passing verdict cached: none, or a cached denial.
fn assert_ne_pass(xdp: &XdpDataPlane, src: std::net::IpAddr) {
    let cached = xdp.verdict_cached(src).unwrap();
    assert!(
        matches!(cached, None | Some(CachedIn::SourceDenied)),
        "{src}: {cached:?}"
    );
}

/// When a list entry is longer than the rate-limit aggregation, the sources
/// of the bucket it lies in can get different verdicts: that bucket caches
/// nothing, and its sources' verdicts are cached by exact address instead,
/// so the neighbours of a denied host keep a one-lookup path while the host
/// stays denied; every other bucket caches as before.
#[test]
fn entries_longer_than_the_aggregation_move_the_verdict_to_the_source_cache() {
    root_only!();
    let aggregated = || XdpConfig {
        flags: flags::RATE_LIMIT,
        v4_prefix_len: 24,
        v6_prefix_len: 64,
        rate: RateLimit::per_second(1_000_000, 1 << 30),
        ..XdpConfig::default()
    };
    let mut xdp = XdpDataPlane::load(XDP_OBJECT, None).unwrap();
    xdp.replace_rules(&KernelRules {
        config: aggregated(),
        deny: vec![
            (net("198.51.100.9/32"), permanent()),
            (net("2001:db8:7:7::9/128"), permanent()),
        ],
        ..KernelRules::default()
    })
    .unwrap();
    let good = Ipv4Addr::new(198, 51, 100, 1);
    let bad = Ipv4Addr::new(198, 51, 100, 9);
    for _ in 0..3 {
        run(&mut xdp, &udp4_frame(good, DST_V4), Stat::Passed);
        run(&mut xdp, &udp4_frame(bad, DST_V4), Stat::DeniedV4);
    }
    assert_eq!(
        xdp.verdict_cached(good.into()).unwrap(),
        Some(CachedIn::Source)
    );
    // The denied host has no pass cached (a denial may be: one denied
    // packet in DENIED_CACHE_SAMPLE caches it, at random).
    assert_ne_pass(&xdp, bad.into());
    let good6 = Ipv6Addr::new(0x2001, 0xdb8, 7, 7, 0, 0, 0, 1);
    let bad6 = Ipv6Addr::new(0x2001, 0xdb8, 7, 7, 0, 0, 0, 9);
    for _ in 0..3 {
        run(&mut xdp, &udp6_frame(good6, DST_V6), Stat::Passed);
        run(&mut xdp, &udp6_frame(bad6, DST_V6), Stat::DeniedV6);
    }
    assert_eq!(
        xdp.verdict_cached(good6.into()).unwrap(),
        Some(CachedIn::Source)
    );
    assert_ne_pass(&xdp, bad6.into());
    // Sources of other buckets keep the one-lookup path: their bucket holds
    // the verdict although the slot has longer entries.
    let elsewhere = Ipv4Addr::new(198, 51, 101, 1);
    let elsewhere6 = Ipv6Addr::new(0x2001, 0xdb8, 7, 8, 0, 0, 0, 1);
    for _ in 0..2 {
        run(&mut xdp, &udp4_frame(elsewhere, DST_V4), Stat::Passed);
        run(&mut xdp, &udp6_frame(elsewhere6, DST_V6), Stat::Passed);
    }
    assert_eq!(
        xdp.verdict_cached(elsewhere.into()).unwrap(),
        Some(CachedIn::Bucket)
    );
    assert_eq!(
        xdp.verdict_cached(elsewhere6.into()).unwrap(),
        Some(CachedIn::Bucket)
    );
    // A /128 entry for the cached neighbour, from the CLI: denied at once.
    xdp.insert(ListKind::Deny, net("2001:db8:7:7::1/128"), permanent())
        .unwrap();
    assert_eq!(xdp.verdict_cached(good6.into()).unwrap(), None);
    run(&mut xdp, &udp6_frame(good6, DST_V6), Stat::DeniedV6);

    // The same when such an entry arrives from the CLI into a slot whose
    // buckets were caching: the bucket's stamp no longer counts, the
    // neighbour moves to the per-source cache, the host is denied.
    let mut xdp = XdpDataPlane::load(XDP_OBJECT, None).unwrap();
    xdp.replace_rules(&KernelRules {
        config: aggregated(),
        ..KernelRules::default()
    })
    .unwrap();
    run(&mut xdp, &udp4_frame(good, DST_V4), Stat::Passed);
    run(&mut xdp, &udp4_frame(bad, DST_V4), Stat::Passed);
    assert_eq!(
        xdp.verdict_cached(good.into()).unwrap(),
        Some(CachedIn::Bucket)
    );
    xdp.insert(ListKind::Deny, net("198.51.100.9/32"), permanent())
        .unwrap();
    assert_eq!(xdp.verdict_cached(good.into()).unwrap(), None);
    for _ in 0..3 {
        run(&mut xdp, &udp4_frame(good, DST_V4), Stat::Passed);
        run(&mut xdp, &udp4_frame(bad, DST_V4), Stat::DeniedV4);
    }
    assert_eq!(
        xdp.verdict_cached(good.into()).unwrap(),
        Some(CachedIn::Source)
    );
}

/// The verifier accepts the program on this kernel, and the work it does
/// to prove it safe stays far below its limit (1,000,000 instructions): a
/// change to the packet path that multiplies the paths to explore shows up
/// here first.
#[test]
fn the_verifier_accepts_the_program_with_room_to_spare() {
    root_only!();
    let mut xdp = data_plane();
    let info = xdp.program_mut().unwrap().info().unwrap();
    let verified = info
        .verified_instruction_count()
        .expect("the kernel reports the verified instruction count");
    let translated = info.size_translated().unwrap_or(0) / 8;
    eprintln!("xgate_xdp: {verified} instructions verified, {translated} translated");
    assert!(
        verified < 200_000,
        "the verifier processed {verified} instructions"
    );
}

/// One configuration of [`a_cached_pass_never_outlives_a_list_change`].
struct CacheCase {
    name: &'static str,
    config: XdpConfig,
    /// Entries loaded with the rule set (none cover the source).
    deny: &'static [&'static str],
    /// The frame a legitimate source (OTHER_V4 or OTHER_V6) keeps sending.
    frame: Vec<u8>,
    /// The entry that covers the source, for deny and allow.
    entry: &'static str,
    denied: Stat,
    /// Where its pass must be cached.
    cached_in: CachedIn,
}

impl CacheCase {
    /// The legitimate source the case's frame comes from.
    fn source(&self) -> IpAddr {
        match self.denied {
            Stat::DeniedV4 => IpAddr::V4(OTHER_V4),
            _ => IpAddr::V6(OTHER_V6),
        }
    }

    /// A fresh program with the case's rules that has seen two packets
    /// from the source pass, and holds that verdict where the case says.
    fn passing(&self) -> XdpDataPlane {
        let mut xdp = XdpDataPlane::load(XDP_OBJECT, None).unwrap();
        xdp.replace_rules(&self.rules()).unwrap();
        run(&mut xdp, &self.frame, Stat::Passed);
        run(&mut xdp, &self.frame, Stat::Passed);
        assert_eq!(
            xdp.verdict_cached(self.source()).unwrap(),
            Some(self.cached_in),
            "{}: after passes",
            self.name
        );
        xdp
    }

    /// The case's rule set (permanent entries, none covering the source).
    fn rules(&self) -> KernelRules {
        KernelRules {
            config: self.config,
            deny: self.deny.iter().map(|e| (net(e), permanent())).collect(),
            ..KernelRules::default()
        }
    }
}

fn cache_cases() -> Vec<CacheCase> {
    let policing = |extra: u32| XdpConfig {
        flags: flags::RATE_LIMIT | extra,
        rate: RateLimit::per_second(1_000_000, 1 << 30),
        ..no_policing()
    };
    let syn = 0x02;
    let ack = 0x10;
    vec![
        CacheCase {
            name: "IPv4, rate limiting off",
            config: no_policing(),
            deny: &["203.0.113.0/24", "203.0.114.7/32"],
            frame: udp4_frame(OTHER_V4, DST_V4),
            entry: "198.51.100.1/32",
            denied: Stat::DeniedV4,
            cached_in: CachedIn::Source,
        },
        CacheCase {
            name: "IPv6, rate limiting off, /128 entries",
            config: no_policing(),
            deny: &["2001:db8:bad::/48", "2001:db8:900d::9/128"],
            frame: udp6_frame(OTHER_V6, DST_V6),
            entry: "2001:db8:900d::1/128",
            denied: Stat::DeniedV6,
            cached_in: CachedIn::Source,
        },
        CacheCase {
            name: "IPv4, rate limiting on",
            config: policing(0),
            deny: &["203.0.113.0/24"],
            frame: udp4_frame(OTHER_V4, DST_V4),
            entry: "198.51.100.0/24",
            denied: Stat::DeniedV4,
            cached_in: CachedIn::Bucket,
        },
        CacheCase {
            name: "IPv6, rate limiting on, /128 entries under /64 aggregation",
            config: policing(0),
            deny: &["2001:db8:bad::/48", "2001:db8:900d::9/128"],
            frame: udp6_frame(OTHER_V6, DST_V6),
            entry: "2001:db8:900d::1/128",
            denied: Stat::DeniedV6,
            cached_in: CachedIn::Source,
        },
        CacheCase {
            name: "IPv6, rate limiting on, /128 entries under /64 aggregation elsewhere",
            config: policing(0),
            deny: &["2001:db8:bad::/48", "2001:db8:bad:1::9/128"],
            frame: udp6_frame(OTHER_V6, DST_V6),
            entry: "2001:db8:900d::/64",
            denied: Stat::DeniedV6,
            cached_in: CachedIn::Bucket,
        },
        CacheCase {
            name: "IPv4, rate limiting on SYNs only, an established flow's ACK",
            config: policing(flags::SYN_ONLY),
            deny: &["203.0.113.0/24"],
            frame: tcp4_frame(OTHER_V4, DST_V4, 443, ack),
            entry: "198.51.100.1/32",
            denied: Stat::DeniedV4,
            cached_in: CachedIn::Source,
        },
        CacheCase {
            name: "IPv4, rate limiting on SYNs only, a SYN",
            config: policing(flags::SYN_ONLY),
            deny: &["203.0.113.0/24"],
            frame: tcp4_frame(OTHER_V4, DST_V4, 443, syn),
            entry: "198.51.100.0/24",
            denied: Stat::DeniedV4,
            cached_in: CachedIn::Bucket,
        },
    ]
}

/// In every configuration (IPv4 or IPv6, rate limiting on or off, entries
/// longer than the aggregation or not, policed packet or not), a source
/// that keeps sending has its pass cached, and every list change reaches it
/// at the next packet: a deny or allow entry added from the CLI, its
/// removal, and a reload.
#[test]
fn a_cached_pass_never_outlives_a_list_change() {
    root_only!();
    for case in cache_cases() {
        let name = case.name;
        let src = case.source();
        let rules = || case.rules();
        let mut xdp = case.passing();
        let cached = |xdp: &XdpDataPlane| xdp.verdict_cached(src).unwrap();

        // A deny entry added to the active slot: the next packet is denied.
        xdp.insert(ListKind::Deny, net(case.entry), permanent())
            .unwrap();
        assert_eq!(cached(&xdp), None, "{name}: after a deny entry");
        run(&mut xdp, &case.frame, case.denied);
        run(&mut xdp, &case.frame, case.denied);
        xdp.remove(ListKind::Deny, net(case.entry)).unwrap();
        run(&mut xdp, &case.frame, Stat::Passed);
        assert_eq!(cached(&xdp), Some(case.cached_in), "{name}: after removal");

        // An allow entry: allow-listed at once, never cached as a pass;
        // removed, the source is judged by the lists again at once.
        xdp.insert(ListKind::Deny, net("0.0.0.0/0"), permanent())
            .unwrap();
        xdp.insert(ListKind::Deny, net("::/0"), permanent())
            .unwrap();
        xdp.insert(ListKind::Allow, net(case.entry), permanent())
            .unwrap();
        for _ in 0..3 {
            run(&mut xdp, &case.frame, Stat::AllowListed);
        }
        assert_eq!(cached(&xdp), None, "{name}: allow-listed");
        xdp.remove(ListKind::Allow, net(case.entry)).unwrap();
        run(&mut xdp, &case.frame, case.denied);
        xdp.remove(ListKind::Deny, net("0.0.0.0/0")).unwrap();
        xdp.remove(ListKind::Deny, net("::/0")).unwrap();
        run(&mut xdp, &case.frame, Stat::Passed);
        run(&mut xdp, &case.frame, Stat::Passed);
        assert_eq!(cached(&xdp), Some(case.cached_in), "{name}: allow removed");

        // A reload (the other slot) that denies it.
        let mut denying = rules();
        denying.deny.push((net(case.entry), permanent()));
        xdp.replace_rules(&denying).unwrap();
        assert_eq!(cached(&xdp), None, "{name}: after a reload");
        run(&mut xdp, &case.frame, case.denied);
        // And a reload that does not: cached again after one lookup.
        xdp.replace_rules(&rules()).unwrap();
        run(&mut xdp, &case.frame, Stat::Passed);
        assert_eq!(cached(&xdp), Some(case.cached_in), "{name}: reloaded");
    }
}

/// Sends `frame` (from a source a permanent deny entry covers) until the
/// program caches the denial, each packet denied and counted as such. A
/// source without a per-source entry gets one for about one denied packet
/// in `DENIED_CACHE_SAMPLE` (at random): this bound makes a miss by chance
/// about 1e-34 likely.
fn deny_until_cached(xdp: &mut XdpDataPlane, frame: &[u8], src: IpAddr, denied: Stat, name: &str) {
    for _ in 0..5_000 {
        run(xdp, frame, denied);
        if xdp.verdict_cached(src).unwrap() == Some(CachedIn::SourceDenied) {
            return;
        }
    }
    panic!("{name}: the denial was never cached in 5,000 packets");
}

/// A source denied by an entry without expiry that keeps sending has its
/// denial cached (per source, in every configuration), and every list change
/// that could let it through reaches it at the next packet: the entry's
/// removal, an allow entry, and a reload without the entry. Entries that
/// expire are never cached.
#[test]
fn a_cached_denial_never_outlives_a_list_change() {
    root_only!();
    for case in cache_cases() {
        let name = case.name;
        let src = case.source();
        let rules = || case.rules();
        let mut xdp = case.passing();
        let cached = |xdp: &XdpDataPlane| xdp.verdict_cached(src).unwrap();

        // Denied from the CLI, cached, then the entry removed: the next
        // packet passes.
        xdp.insert(ListKind::Deny, net(case.entry), permanent())
            .unwrap();
        deny_until_cached(&mut xdp, &case.frame, src, case.denied, name);
        xdp.remove(ListKind::Deny, net(case.entry)).unwrap();
        assert_eq!(cached(&xdp), None, "{name}: after the removal");
        run(&mut xdp, &case.frame, Stat::Passed);
        run(&mut xdp, &case.frame, Stat::Passed);
        assert_eq!(cached(&xdp), Some(case.cached_in), "{name}: passes again");

        // Cached as denied, then allow-listed: allowed at once; the allow
        // entry removed: denied again at once.
        xdp.insert(ListKind::Deny, net(case.entry), permanent())
            .unwrap();
        deny_until_cached(&mut xdp, &case.frame, src, case.denied, name);
        xdp.insert(ListKind::Allow, net(case.entry), permanent())
            .unwrap();
        run(&mut xdp, &case.frame, Stat::AllowListed);
        xdp.remove(ListKind::Allow, net(case.entry)).unwrap();
        run(&mut xdp, &case.frame, case.denied);

        // Cached as denied, then a reload without the entry: passes.
        deny_until_cached(&mut xdp, &case.frame, src, case.denied, name);
        xdp.replace_rules(&rules()).unwrap();
        assert_eq!(cached(&xdp), None, "{name}: after a reload");
        run(&mut xdp, &case.frame, Stat::Passed);

        // An entry that expires is looked up on every packet, never cached:
        // once it has expired the source passes.
        let expires = sys::monotonic_now() + Duration::from_millis(300);
        let expiring = Rule {
            expires_at_ns: expires.as_nanos() as u64,
            ..permanent()
        };
        xdp.insert(ListKind::Deny, net(case.entry), expiring)
            .unwrap();
        let mut sent = 0;
        while sys::monotonic_now() + Duration::from_millis(50) < expires && sent < 500 {
            run(&mut xdp, &case.frame, case.denied);
            sent += 1;
            assert_ne!(
                cached(&xdp),
                Some(CachedIn::SourceDenied),
                "{name}: an expiring entry's denial was cached"
            );
        }
        assert!(sent > 0, "{name}: no packet sent before the entry expired");
        // The program reads the coarse clock (a tick behind at most).
        while sys::monotonic_now() <= expires + Duration::from_millis(50) {
            std::thread::sleep(Duration::from_millis(20));
        }
        run(&mut xdp, &case.frame, Stat::Passed);
    }
}

/// Entries of the common lengths (IPv4 /32 and /24, IPv6 /128, /64 and /48)
/// live in hash maps, the others in the tries: a source matches whichever
/// holds it, listing shows all, removal works in each, and an expired entry
/// in one structure never hides a live one in another.
#[test]
fn every_list_structure_matches_lists_and_removes() {
    root_only!();
    let mut xdp = XdpDataPlane::load(XDP_OBJECT, None).unwrap();
    let past = sys::monotonic_now().saturating_sub(Duration::from_secs(1));
    let expired = Rule {
        expires_at_ns: past.as_nanos() as u64,
        ..permanent()
    };
    let entries = [
        "203.0.113.7/32",
        "198.51.100.0/24",
        "192.0.2.0/28",
        "10.0.0.0/8",
        "2001:db8:1::1/128",
        "2001:db8:2:2::/64",
        "2001:db8:3::/48",
        "2001:db8:4:400::/56",
    ];
    xdp.replace_rules(&KernelRules {
        config: no_policing(),
        deny: entries
            .iter()
            .map(|e| (net(e), permanent()))
            .chain([
                (net("172.16.5.5/32"), expired),
                (net("2001:db8:5::5/128"), expired),
            ])
            .collect(),
        ..KernelRules::default()
    })
    .unwrap();
    let v4 = |s: &str| udp4_frame(s.parse().unwrap(), DST_V4);
    let v6 = |s: &str| udp6_frame(s.parse().unwrap(), DST_V6);
    for (hit, miss) in [
        ("203.0.113.7", "203.0.113.8"),
        ("198.51.100.200", "198.51.101.1"),
        ("192.0.2.15", "192.0.2.16"),
        ("10.255.0.1", "11.0.0.1"),
        ("2001:db8:1::1", "2001:db8:1::2"),
        ("2001:db8:2:2:ffff::1", "2001:db8:2:3::1"),
        ("2001:db8:3:ffff::1", "2001:db8:6::1"),
        ("2001:db8:4:4ff::1", "2001:db8:4:500::1"),
    ] {
        let (frame, denied): (fn(&str) -> Vec<u8>, Stat) = if hit.contains(':') {
            (|s| udp6_frame(s.parse().unwrap(), DST_V6), Stat::DeniedV6)
        } else {
            (|s| udp4_frame(s.parse().unwrap(), DST_V4), Stat::DeniedV4)
        };
        run(&mut xdp, &frame(hit), denied);
        run(&mut xdp, &frame(miss), Stat::Passed);
    }
    run(&mut xdp, &v4("172.16.5.5"), Stat::Passed);
    run(&mut xdp, &v6("2001:db8:5::5"), Stat::Passed);
    let mut listed: Vec<IpNet> = xdp.prefixes(ListKind::Deny).unwrap();
    listed.sort();
    let mut want: Vec<IpNet> = entries
        .iter()
        .map(|e| net(e))
        .chain([net("172.16.5.5/32"), net("2001:db8:5::5/128")])
        .collect();
    want.sort();
    assert_eq!(listed, want);

    // A live /24 (hash) and /16 (trie) still deny behind an expired /32.
    xdp.insert(ListKind::Deny, net("172.16.5.0/24"), permanent())
        .unwrap();
    run(&mut xdp, &v4("172.16.5.5"), Stat::DeniedV4);
    xdp.remove(ListKind::Deny, net("172.16.5.0/24")).unwrap();
    xdp.insert(ListKind::Deny, net("172.16.0.0/16"), permanent())
        .unwrap();
    run(&mut xdp, &v4("172.16.5.5"), Stat::DeniedV4);
    xdp.remove(ListKind::Deny, net("172.16.0.0/16")).unwrap();
    run(&mut xdp, &v4("172.16.5.5"), Stat::Passed);

    for entry in entries {
        xdp.remove(ListKind::Deny, net(entry)).unwrap();
    }
    run(&mut xdp, &v4("203.0.113.7"), Stat::Passed);
    run(&mut xdp, &v4("198.51.100.200"), Stat::Passed);
    run(&mut xdp, &v4("10.255.0.1"), Stat::Passed);
    run(&mut xdp, &v6("2001:db8:2:2:ffff::1"), Stat::Passed);
    run(&mut xdp, &v6("2001:db8:4:4ff::1"), Stat::Passed);
    assert_eq!(xdp.prefixes(ListKind::Deny).unwrap().len(), 2);

    // The allow list has the same structures.
    xdp.insert(ListKind::Deny, net("198.51.0.0/16"), permanent())
        .unwrap();
    xdp.insert(ListKind::Allow, net("198.51.100.0/24"), permanent())
        .unwrap();
    xdp.insert(ListKind::Allow, net("198.51.7.7/32"), permanent())
        .unwrap();
    xdp.insert(ListKind::Allow, net("198.51.8.0/25"), permanent())
        .unwrap();
    run(&mut xdp, &v4("198.51.100.1"), Stat::AllowListed);
    run(&mut xdp, &v4("198.51.7.7"), Stat::AllowListed);
    run(&mut xdp, &v4("198.51.8.100"), Stat::AllowListed);
    run(&mut xdp, &v4("198.51.8.200"), Stat::DeniedV4);
}

/// IPv4 /32 entries are found through their /24's entry in the /24 map; a
/// /24 and hosts inside it come and go independently.
#[test]
fn ipv4_hosts_and_their_slash_24_are_independent_entries() {
    root_only!();
    let mut xdp = denying(&["198.51.100.0/24", "198.51.100.9/32"]);
    let v4 = |s: &str| udp4_frame(s.parse().unwrap(), DST_V4);
    run(&mut xdp, &v4("198.51.100.9"), Stat::DeniedV4);
    run(&mut xdp, &v4("198.51.100.200"), Stat::DeniedV4);
    xdp.remove(ListKind::Deny, net("198.51.100.0/24")).unwrap();
    run(&mut xdp, &v4("198.51.100.9"), Stat::DeniedV4);
    run(&mut xdp, &v4("198.51.100.200"), Stat::Passed);
    assert_eq!(
        xdp.prefixes(ListKind::Deny).unwrap(),
        vec![net("198.51.100.9/32")]
    );
    // Removing what is not there changes nothing.
    xdp.remove(ListKind::Deny, net("198.51.100.0/24")).unwrap();
    xdp.remove(ListKind::Deny, net("198.51.101.0/24")).unwrap();
    run(&mut xdp, &v4("198.51.100.9"), Stat::DeniedV4);
    xdp.remove(ListKind::Deny, net("198.51.100.9/32")).unwrap();
    run(&mut xdp, &v4("198.51.100.9"), Stat::Passed);
    assert!(xdp.prefixes(ListKind::Deny).unwrap().is_empty());
    // Back again, host first this time; an update keeps one entry.
    xdp.insert(ListKind::Deny, net("198.51.100.9/32"), permanent())
        .unwrap();
    xdp.insert(ListKind::Deny, net("198.51.100.0/24"), permanent())
        .unwrap();
    xdp.insert(ListKind::Deny, net("198.51.100.0/24"), permanent())
        .unwrap();
    run(&mut xdp, &v4("198.51.100.200"), Stat::DeniedV4);
    let mut listed = xdp.prefixes(ListKind::Deny).unwrap();
    listed.sort();
    assert_eq!(listed, vec![net("198.51.100.0/24"), net("198.51.100.9/32")]);
}

/// A host needs room in the /24 map too; when there is none, the host is
/// not left behind half-added.
#[test]
fn a_host_refused_for_want_of_room_for_its_slash_24_leaves_nothing() {
    root_only!();
    let mut xdp = denying_with_capacity(Some(2), &["192.0.2.0/24", "198.51.100.0/24"]);
    let err = xdp
        .insert(ListKind::Deny, net("203.0.113.7/32"), permanent())
        .unwrap_err()
        .to_string();
    assert!(err.contains("is full"), "{err}");
    run(&mut xdp, &udp4_frame(BLOCKED_V4, DST_V4), Stat::Passed);
    assert_eq!(xdp.prefixes(ListKind::Deny).unwrap().len(), 2);
    // A host inside a /24 already in the map needs no new /24 entry.
    xdp.insert(ListKind::Deny, net("192.0.2.7/32"), permanent())
        .unwrap();
    run(
        &mut xdp,
        &udp4_frame(Ipv4Addr::new(192, 0, 2, 7), DST_V4),
        Stat::DeniedV4,
    );
    // The other way round: room for the /24 entry but not for the host.
    // The /24 entry made for it goes again, so the last /24 still fits.
    let mut xdp = denying_with_capacity(Some(2), &["192.0.2.1/32", "192.0.2.2/32"]);
    let err = xdp
        .insert(ListKind::Deny, net("203.0.113.7/32"), permanent())
        .unwrap_err()
        .to_string();
    assert!(err.contains("is full"), "{err}");
    xdp.insert(ListKind::Deny, net("198.51.100.0/24"), permanent())
        .unwrap();
    run(&mut xdp, &udp4_frame(BLOCKED_V4, DST_V4), Stat::Passed);
}

/// The same for IPv6: /64 and /128 entries are found through their /48's
/// entry, and each comes and goes on its own.
#[test]
fn ipv6_subnets_hosts_and_their_slash_48_are_independent_entries() {
    root_only!();
    let mut xdp = denying(&[
        "2001:db8:7::/48",
        "2001:db8:7:1::/64",
        "2001:db8:7:2::9/128",
    ]);
    let v6 = |s: &str| udp6_frame(s.parse().unwrap(), DST_V6);
    for src in ["2001:db8:7:1::5", "2001:db8:7:2::9", "2001:db8:7:3::1"] {
        run(&mut xdp, &v6(src), Stat::DeniedV6);
    }
    xdp.remove(ListKind::Deny, net("2001:db8:7::/48")).unwrap();
    run(&mut xdp, &v6("2001:db8:7:1::5"), Stat::DeniedV6);
    run(&mut xdp, &v6("2001:db8:7:2::9"), Stat::DeniedV6);
    run(&mut xdp, &v6("2001:db8:7:2::8"), Stat::Passed);
    run(&mut xdp, &v6("2001:db8:7:3::1"), Stat::Passed);
    xdp.remove(ListKind::Deny, net("2001:db8:7:1::/64"))
        .unwrap();
    run(&mut xdp, &v6("2001:db8:7:1::5"), Stat::Passed);
    let mut listed = xdp.prefixes(ListKind::Deny).unwrap();
    listed.sort();
    assert_eq!(listed, vec![net("2001:db8:7:2::9/128")]);
    // A /64 in a /48 with no entry yet.
    xdp.insert(ListKind::Deny, net("2001:db8:8:1::/64"), permanent())
        .unwrap();
    run(&mut xdp, &v6("2001:db8:8:1::77"), Stat::DeniedV6);
    run(&mut xdp, &v6("2001:db8:8:2::77"), Stat::Passed);
}

/// SYN cookies with `tcp_options` on SYNs whose options are hostile or
/// odd: every one is still answered with a well-formed SYN-ACK (both
/// checksums hold), options are read only inside the header, a cut-short
/// or zero-length option ends the parse, a window scale above 14 is
/// clamped, and without a timestamp the SYN-ACK carries the MSS only. Run
/// in a namespace of its own: the daemon's half sets sysctls.
#[test]
fn syn_cookie_options_from_hostile_syns_yield_well_formed_syn_acks() {
    root_only!();
    let ns = xgate_tests::netns::NetNs::create("tro");
    ns.run(|| {
        use aya::programs::TestRun;
        let mut xdp = test_run::load(no_policing(), &[]);
        xdp.set_syn_cookies(&gateway_userspace::xdp::SynCookiePolicy {
            mode: gateway_userspace::config::SynCookieMode::On,
            ports: vec![443],
            tcp_options: true,
            ..Default::default()
        })
        .unwrap();
        let sysctl = |path: &str| std::fs::read_to_string(path).unwrap();
        let rmem_max: u64 = sysctl("/proc/sys/net/core/rmem_max")
            .trim()
            .parse()
            .unwrap();
        let tcp_rmem_max: u64 = sysctl("/proc/sys/net/ipv4/tcp_rmem")
            .split_whitespace()
            .nth(2)
            .unwrap()
            .parse()
            .unwrap();
        let ours = gateway_userspace::xdp::kernel_wscale(tcp_rmem_max, rmem_max);
        let syn = tcp_segment(
            [2, 0, 0, 0, 0, 1],
            (Ipv4Addr::new(203, 0, 113, 9), 4000),
            (Ipv4Addr::new(198, 18, 0, 1), 443),
            TCP_SYN,
            7,
            0,
        );
        // The first SYN to the port goes to the kernel (the refresh).
        assert_eq!(test_run::run(&mut xdp, &syn, 1), XDP_PASS);

        const TS: [u8; 10] = [8, 10, 1, 2, 3, 4, 0, 0, 0, 0];
        let nops = |n: usize| vec![1u8; n];
        // (what, options, the SYN-ACK's option bytes after the MSS: None
        // for the MSS only, else (SACK granted, low timestamp bits, WS)).
        type Want = Option<(bool, u32, Option<u8>)>;
        let cases: Vec<(&str, Vec<u8>, Want)> = vec![
            (
                "Linux",
                LINUX_SYN_OPTIONS.to_vec(),
                Some((true, 7 | 0x10, Some(ours))),
            ),
            (
                "no timestamp",
                vec![2, 4, 5, 180, 4, 2, 1, 3, 3, 7, 0, 0],
                None,
            ),
            (
                "window scale 200",
                [&[2, 4, 5, 180, 1, 1][..], &TS, &[1, 3, 3, 200]].concat(),
                Some((false, 14, Some(ours))),
            ),
            (
                "timestamp without scale",
                [&[1, 1][..], &TS].concat(),
                Some((false, 0xF, None)),
            ),
            (
                "zero-length option first",
                [&[30, 0, 1, 1][..], &[1, 1], &TS].concat(),
                None,
            ),
            (
                "timestamp cut short by the header's end",
                [&nops(6)[..], &TS[..6]].concat()[..12].to_vec(),
                None,
            ),
            (
                "option length past the header",
                [&[4, 40, 1, 1][..], &TS, &[1, 1]].concat(),
                None,
            ),
            ("40 NOPs", nops(40), None),
            (
                "30 NOPs, then a timestamp",
                [&nops(30)[..], &TS].concat(),
                Some((false, 0xF, None)),
            ),
        ];
        for (what, options, want) in cases {
            assert_eq!(options.len() % 4, 0, "{what}: test data");
            let frame = with_tcp_options(&syn, &options);
            let mut out = vec![0u8; 256];
            let result = xdp
                .program_mut()
                .unwrap()
                .test_run(aya::programs::TestRunOptions {
                    data_in: Some(&frame),
                    data_out: Some(&mut out),
                    ..Default::default()
                })
                .unwrap();
            assert_eq!(result.return_value, XDP_TX, "{what}");
            let out = &out[..result.data_size_out as usize];
            let th = &out[34..];
            let th_len = usize::from(th[12] >> 4) * 4;
            assert_eq!(out.len(), 34 + th_len, "{what}: trimmed to the headers");
            assert_eq!(internet_checksum(&out[14..34]), 0, "{what}: IPv4 checksum");
            let mut pseudo = out[26..34].to_vec();
            pseudo.extend_from_slice(&[0, 6, 0, th_len as u8]);
            pseudo.extend_from_slice(th);
            assert_eq!(internet_checksum(&pseudo), 0, "{what}: TCP checksum");
            assert_eq!(th[13], 0x12, "{what}: SYN-ACK");
            assert_eq!(th[20..22], [2, 4], "{what}: MSS first");
            match want {
                None => assert_eq!(th_len, 24, "{what}: the MSS only"),
                Some((sack, bits, wscale)) => {
                    assert_eq!(th_len, 40, "{what}");
                    let sack_bytes: [u8; 2] = if sack { [4, 2] } else { [1, 1] };
                    assert_eq!(th[24..26], sack_bytes, "{what}: SACK-permitted");
                    assert_eq!(th[26..28], [8, 10], "{what}: timestamps");
                    let tsval = u32::from_be_bytes(th[28..32].try_into().unwrap());
                    assert_eq!(tsval & 0x3F, bits, "{what}: options in the timestamp");
                    let tsecr = &th[32..36];
                    let echoed = options
                        .windows(2)
                        .position(|w| w == [8, 10])
                        .map(|i| &options[i + 2..i + 6]);
                    assert_eq!(Some(tsecr), echoed, "{what}: the SYN's timestamp echoed");
                    let ws: [u8; 4] = match wscale {
                        Some(w) => [1, 3, 3, w],
                        None => [1, 1, 1, 1],
                    };
                    assert_eq!(th[36..40], ws, "{what}: window scale");
                }
            }
        }
    });
}
