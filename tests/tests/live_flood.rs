//! The live-frames flood generator of `xgate-bench flood`
//! (bench/src/livegen.rs) end to end: frames it makes in an attacker
//! namespace reach the gateway's veth end as `xdp_frame`s, the daemon's XDP
//! program there counts every one, veth's own XDP counters agree, and the
//! frames it passes are valid to the kernel's stack (checksums after the
//! per-frame rewrite). Namespaces and their interfaces are removed when the
//! test ends, pass or fail; every flood is bounded in count and time.

use std::{collections::HashMap, net::IpAddr, path::Path, time::Duration};

use xgate_bench::livegen::{self, Flow, Generator, Plan, Proto, Sources};
use xgate_tests::{
    netns::{veth, NetNs, PinDir},
    process::Daemon,
    require_root,
};

const GW_IF: &str = "xlfg0";
const AT_IF: &str = "xlfa0";
/// Frames per flood.
const N: u64 = 20_000;
/// The pace of the floods that must arrive whole: 50 frames per 1 ms tick,
/// far below what the gateway's 256-frame ring holds even when its NAPI
/// poll is deferred to ksoftirqd on a busy machine.
const PACED_PPS: u64 = 50_000;

fn config(pin: &PinDir) -> String {
    format!(
        "listeners: [{{address: '198.18.1.1:18080'}}]\n\
         xdp:\n  interfaces: [{GW_IF}]\n  pin_path: {}\n  \
         deny: ['198.19.0.0/16', '2001:db8:dead::/48']\n\
         upstreams: {{u: {{targets: ['127.0.0.1:18081']}}}}\n\
         routes: [{{match: {{path_prefix: /}}, upstream: u}}]\n",
        pin.0.display()
    )
}

/// veth's counters of `ifname` (`ethtool -S`, run in the namespace).
fn ethtool(ns: &NetNs, ifname: &str) -> HashMap<String, u64> {
    let out = ns
        .command(Path::new("ethtool"))
        .args(["-S", ifname])
        .output()
        .expect("run ethtool (Debian package ethtool; `cargo xtask setup` installs it)");
    assert!(out.status.success(), "ethtool -S {ifname}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// The kernel's SNMP counters of the namespace (`Udp: NoPorts`, `Tcp:
/// InCsumErrors`, `Udp6NoPorts`, ...), read by a thread inside it.
fn snmp(ns: &NetNs) -> HashMap<String, u64> {
    ns.run(|| {
        let mut out = HashMap::new();
        let v4 = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("snmp");
        let lines: Vec<&str> = v4.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let (group, names) = names.split_once(':').unwrap();
            let values = values.split_once(':').unwrap().1;
            for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                if let Ok(v) = v.parse() {
                    out.insert(format!("{group}{n}"), v);
                }
            }
        }
        let v6 = std::fs::read_to_string("/proc/thread-self/net/snmp6").expect("snmp6");
        for l in v6.lines() {
            let mut f = l.split_whitespace();
            if let (Some(k), Some(Ok(v))) = (f.next(), f.next().map(str::parse)) {
                out.insert(k.to_string(), v);
            }
        }
        out
    })
}

fn mac(ns: &NetNs, ifname: &str) -> [u8; 6] {
    let out = std::process::Command::new("ip")
        .args(["-n", &ns.name, "-br", "link", "show", "dev", ifname])
        .output()
        .expect("ip link");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = text
        .split_whitespace()
        .nth(2)
        .expect("a MAC in ip -br link");
    livegen::parse_mac(field).unwrap()
}

/// Sends `count` frames of `flow` from inside `attacker`, paced at
/// `rate_pps` (or at full speed), at most 60 s.
fn flood(attacker: &NetNs, flow: Flow, count: u64, rate_pps: Option<u64>) -> livegen::Sent {
    attacker.run(move || {
        let ifindex = livegen::ifindex(AT_IF).unwrap();
        let generator = Generator::load(flow, ifindex).unwrap();
        let plan = Plan {
            count,
            rate_pps,
            max_time: Duration::from_secs(60),
            catch_up: livegen::CatchUp::Burst,
        };
        livegen::send(&[generator], plan, || false).unwrap()
    })
}

/// Waits until `f` returns `want` (the receiver drains its ring in its own
/// NAPI poll, after the sender returns); returns the last value.
fn settle(want: u64, mut f: impl FnMut() -> u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = f();
        if v == want || std::time::Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Counters {
    xmit: u64,
    xmit_errors: u64,
    rx_xdp: u64,
    rx_xdp_drops: u64,
}

fn counters(gw: &NetNs, attacker: &NetNs) -> Counters {
    let a = ethtool(attacker, AT_IF);
    let g = ethtool(gw, GW_IF);
    let get = |m: &HashMap<String, u64>, k: &str| {
        *m.get(k)
            .unwrap_or_else(|| panic!("no veth counter {k} in {m:?}"))
    };
    Counters {
        xmit: get(&a, "tx_queue_0_xdp_xmit"),
        xmit_errors: get(&a, "tx_queue_0_xdp_xmit_errors"),
        rx_xdp: get(&g, "rx_queue_0_xdp_packets"),
        rx_xdp_drops: get(&g, "rx_queue_0_xdp_drops"),
    }
}

#[test]
fn live_frames_reach_the_gateway_as_xdp_frames_and_are_counted() {
    if !require_root("live_flood::live_frames_reach_the_gateway_as_xdp_frames_and_are_counted") {
        return;
    }
    let gw = NetNs::create("lfgw");
    let attacker = NetNs::create("lfat");
    veth(
        &gw,
        GW_IF,
        &["198.18.1.1/24", "2001:db8:19::1/64"],
        &attacker,
        AT_IF,
        &["198.18.1.2/24", "2001:db8:19::2/64"],
    );
    // Answers to the passed sources (ICMP, RST) go back to the attacker's
    // namespace, which forwards nothing.
    gw.ip(&["route", "add", "198.18.64.0/24", "via", "198.18.1.2"]);
    gw.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:64::/64",
        "via",
        "2001:db8:19::2",
    ]);
    let pin = PinDir::new("livegen");
    let daemon = Daemon::start(&config(&pin), Some(&gw));
    let status = daemon.status();
    assert_eq!(status["xdp"]["attached"][0]["mode"], "native", "{status}");

    let base = |proto, sources, dst: &str| Flow {
        proto,
        sources,
        dst: dst.parse::<IpAddr>().unwrap(),
        dst_port: 18080,
        src_mac: mac(&attacker, AT_IF),
        dst_mac: mac(&gw, GW_IF),
    };

    // Denied floods, paced: every frame is handed over (or, on a machine
    // busy enough to starve the receiver's NAPI poll, refused at a full
    // ring: a few, and counted as such), arrives as an xdp_frame and is
    // dropped (and counted once) by xgate's program.
    let cases = [
        (
            "denied_v4",
            base(
                Proto::Udp,
                Sources::Random("198.19.0.0/16".parse().unwrap()),
                "198.18.1.1",
            ),
        ),
        (
            "denied_v6",
            base(
                Proto::Syn,
                Sources::Random("2001:db8:dead::/48".parse().unwrap()),
                "2001:db8:19::1",
            ),
        ),
    ];
    for (counter, flow) in cases {
        let before = counters(&gw, &attacker);
        let denied = daemon.xdp_counter(counter);
        let sent = flood(&attacker, flow, N, Some(PACED_PPS));
        // A signal interrupting a test run would leave its frames uncounted.
        assert_eq!(
            (sent.frames, sent.interrupted),
            (N, 0),
            "{counter}: {sent:?}"
        );
        let after = counters(&gw, &attacker);
        let handed = after.xmit - before.xmit;
        let refused = after.xmit_errors - before.xmit_errors;
        assert_eq!(
            handed + refused,
            N,
            "{counter}: veth handed every frame to its peer by ndo_xdp_xmit (as xdp_frames) \
             or refused it ({handed} handed, {refused} refused)"
        );
        assert!(
            refused < N / 20,
            "{counter}: {refused} of {N} frames refused at a full ring at {PACED_PPS} pps: \
             the gateway's NAPI poll was starved far longer than a busy machine explains"
        );
        // The receiver drains its ring in its own NAPI poll: its counters
        // are read once xgate's count has settled.
        let got = settle(handed, || daemon.xdp_counter(counter) - denied);
        let after = counters(&gw, &attacker);
        // The attacker namespace's own stack may send a packet or two
        // meanwhile (IPv6 router or neighbour solicitations): at least
        // every frame handed over.
        let rx = after.rx_xdp - before.rx_xdp;
        assert!(
            (handed..handed + 10).contains(&rx),
            "{counter}: the gateway's end ran XDP on every frame handed over ({rx} of {handed})"
        );
        assert_eq!(
            after.rx_xdp_drops - before.rx_xdp_drops,
            handed,
            "{counter}: veth counted every XDP_DROP"
        );
        assert_eq!(
            got, handed,
            "{counter}: xgate's program dropped every frame handed over once"
        );
    }

    // At full speed the ring may refuse frames, but every frame the program
    // sent is either handed over (and then dropped by xgate) or refused.
    let before = counters(&gw, &attacker);
    let denied = daemon.xdp_counter("denied_v4");
    let sent = flood(&attacker, cases[0].1, 5 * N, None);
    assert_eq!((sent.frames, sent.interrupted), (5 * N, 0), "{sent:?}");
    let after = counters(&gw, &attacker);
    let handed = after.xmit - before.xmit;
    assert_eq!(handed + (after.xmit_errors - before.xmit_errors), 5 * N);
    assert!(handed > 0);
    assert_eq!(
        settle(handed, || daemon.xdp_counter("denied_v4") - denied),
        handed
    );
    eprintln!(
        "full speed: {} frames in {:.3} s ({:.2} Mpps), {handed} handed over",
        sent.frames,
        sent.seconds,
        sent.frames as f64 / sent.seconds / 1e6
    );

    // Frames xgate passes become skbs on the gateway's side and meet the
    // stack: their checksums, rewritten per frame, must hold. UDP to a
    // closed port counts NoPorts only after the checksum is verified; a
    // SYN to a closed port gets a RST only if its checksum holds.
    let passed = 5_000;
    let s0 = snmp(&gw);
    let udp = base(
        Proto::Udp,
        Sources::Some {
            first: "198.18.64.1".parse().unwrap(),
            count: 16,
        },
        "198.18.1.1",
    );
    let syn6 = base(
        Proto::Syn,
        Sources::Some {
            first: "2001:db8:64::1".parse().unwrap(),
            count: 1000,
        },
        "2001:db8:19::1",
    );
    // What arrived (veth's count of frames handed over; a busy machine may
    // refuse a few at a full ring): each of them must pass the stack's
    // checks.
    let mut handed = Vec::new();
    for flow in [udp, syn6] {
        let before = counters(&gw, &attacker).xmit;
        let flow = Flow {
            dst_port: 9,
            ..flow
        };
        let sent = flood(&attacker, flow, passed, Some(PACED_PPS));
        assert_eq!((sent.frames, sent.interrupted), (passed, 0), "{sent:?}");
        let n = counters(&gw, &attacker).xmit - before;
        assert!(n > passed / 2, "only {n} of {passed} frames handed over");
        handed.push(n);
    }
    let d = |s: &HashMap<String, u64>, k: &str| s[k] - s0[k];
    let s1 = {
        let mut last = snmp(&gw);
        for _ in 0..100 {
            if d(&last, "UdpNoPorts") >= handed[0] && d(&last, "TcpOutRsts") >= handed[1] {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            last = snmp(&gw);
        }
        last
    };
    let seen: Vec<(&str, u64)> = [
        "IpInReceives",
        "IpInHdrErrors",
        "UdpInDatagrams",
        "UdpNoPorts",
        "UdpInErrors",
        "UdpInCsumErrors",
        "TcpInSegs",
        "TcpInErrs",
        "TcpInCsumErrors",
        "TcpOutRsts",
        "Udp6NoPorts",
    ]
    .into_iter()
    .map(|k| (k, d(&s1, k)))
    .collect();
    let why = format!("handed over {handed:?}; SNMP deltas {seen:?}");
    assert_eq!(
        d(&s1, "IpInHdrErrors"),
        0,
        "IPv4 header checksums hold: {why}"
    );
    assert_eq!(d(&s1, "UdpInCsumErrors"), 0, "{why}");
    assert_eq!(
        d(&s1, "UdpNoPorts"),
        handed[0],
        "every UDP datagram accepted: {why}"
    );
    assert_eq!(d(&s1, "TcpInCsumErrors"), 0, "{why}");
    assert_eq!(
        d(&s1, "TcpOutRsts"),
        handed[1],
        "every IPv6 SYN answered: {why}"
    );
}
