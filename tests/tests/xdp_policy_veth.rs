//! The kernel policy end to end over veth pairs in namespaces the tests
//! create (and remove, pass or fail): allow over deny, VLAN, IPv6, expiry,
//! rate-limit accuracy across CPUs, atomic rule-set replacement under
//! traffic, and enforcement across a daemon crash and restart.

use std::{net::SocketAddr, time::Duration};

use xgate_tests::{
    frames,
    netns::{self, udp_delivery},
    process::{stderr, stdout, Daemon},
    require_root,
    traffic::{run_flows, send_raw, Flow},
};

const N: usize = 200;

/// Two namespaces joined by a veth, XDP attached to the gateway's end by the
/// daemon: the shared lab ([`netns::Lab`]), the client end also with .3 / ::3.
struct Lab(netns::Lab);

impl std::ops::Deref for Lab {
    type Target = netns::Lab;
    fn deref(&self) -> &netns::Lab {
        &self.0
    }
}

impl Lab {
    fn new(tag: &str) -> Self {
        Self(netns::Lab::with_client_addrs(
            tag,
            &[
                "198.18.0.2/24",
                "198.18.0.3/24",
                "2001:db8:18::2/64",
                "2001:db8:18::3/64",
            ],
        ))
    }

    /// A daemon config: XDP on xg0, the lab's pin path, and `xdp_extra`
    /// (indented YAML) inside the `xdp:` block.
    fn config(&self, xdp_extra: &str) -> String {
        self.0.config(
            "[{address: '127.0.0.1:18080'}]",
            xdp_extra,
            "upstreams: {u: {targets: ['127.0.0.1:18081']}}\n\
             routes: [{match: {path_prefix: /}, upstream: u}]\n",
        )
    }

    fn deliver(&self, from: &str, to: &str, warm_up: usize) -> usize {
        udp_delivery(&self.client, addr(from), &self.gw, addr(to), N, warm_up)
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

macro_rules! root_only {
    () => {
        if !require_root(module_path!()) {
            return;
        }
    };
}

#[test]
fn allow_overrides_deny_across_vlan_ipv6_and_expiry() {
    root_only!();
    let lab = Lab::new("pol");
    let daemon = Daemon::start(
        &lab.config("  deny: [198.18.0.0/16, '2001:db8:18::/48']\n  allow: [198.18.0.3/32, '2001:db8:18::3/128']\n"),
        Some(&lab.gw),
    );
    let counter = |name| daemon.xdp_counter(name);

    let (denied, allowed) = (counter("denied_v4"), counter("allow_listed"));
    assert_eq!(
        lab.deliver("198.18.0.2:40000", "198.18.0.1:9999", 0),
        0,
        "denied source"
    );
    assert_eq!(
        lab.deliver("198.18.0.3:40000", "198.18.0.1:9999", 20),
        N,
        "allow-listed inside a denied range"
    );
    assert_eq!(counter("denied_v4") - denied, N as u64);
    assert!(counter("allow_listed") - allowed >= N as u64);

    // 802.1Q and QinQ tagged frames on the same wire (sent raw: this kernel
    // has no 802.1Q driver to make them): the tags are parsed and the
    // source matched, so the verdict shows in the counters.
    let tagged = |src: [u8; 4], vlans: &[(u16, u16)]| {
        let ip = frames::ipv4(
            src.into(),
            [198, 18, 0, 1].into(),
            frames::IPPROTO_UDP,
            &frames::udp(4, 9999, b"v"),
        );
        frames::ethernet(vlans, frames::ETH_P_IPV4, &ip)
    };
    let single = [(frames::ETH_P_8021Q, 100)];
    let qinq = [(frames::ETH_P_8021AD, 10), (frames::ETH_P_8021Q, 100)];
    let (denied, allowed) = (counter("denied_v4"), counter("allow_listed"));
    assert_eq!(
        send_raw(&lab.client, "xc0", &tagged([198, 18, 0, 2], &single), N),
        N
    );
    assert_eq!(
        send_raw(&lab.client, "xc0", &tagged([198, 18, 0, 2], &qinq), N),
        N
    );
    assert_eq!(
        send_raw(&lab.client, "xc0", &tagged([198, 18, 0, 3], &qinq), N),
        N
    );
    assert_eq!(
        counter("denied_v4") - denied,
        2 * N as u64,
        "tagged frames from the denied source"
    );
    assert_eq!(
        counter("allow_listed") - allowed,
        N as u64,
        "tagged frames from the allowed source"
    );

    // IPv6: denied /48, allowed /128 inside it. NDP still flows for both.
    let denied6 = counter("denied_v6");
    assert_eq!(
        lab.deliver("[2001:db8:18::2]:40000", "[2001:db8:18::1]:9999", 0),
        0
    );
    assert_eq!(counter("denied_v6") - denied6, N as u64);
    assert_eq!(
        lab.deliver("[2001:db8:18::3]:40000", "[2001:db8:18::1]:9999", 20),
        N
    );

    // A runtime allow entry with a TTL: lets .2 through, then expires in
    // the kernel and is reaped.
    let out = daemon.cli(&[
        "allowlist",
        "add",
        "198.18.0.2",
        "--ttl",
        "2s",
        "--reason",
        "maintenance",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        lab.deliver("198.18.0.2:40000", "198.18.0.1:9999", 20),
        N,
        "allowed for 2s"
    );
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(
        lab.deliver("198.18.0.2:40000", "198.18.0.1:9999", 0),
        0,
        "expired"
    );
    let listed = stdout(&daemon.cli(&["allowlist", "ls"]));
    assert!(
        !listed.contains("198.18.0.2/32"),
        "expired entry still listed:\n{listed}"
    );
}

#[test]
fn rate_limit_budget_is_global_across_cpus_and_accurate() {
    root_only!();
    const RATE: u64 = 500;
    const BURST: u64 = 100;
    let lab = Lab::new("rl");
    // Only port 9999 is policed, so the warm-up to 9998 (which resolves ARP)
    // spends no tokens.
    let daemon = Daemon::start(
        &lab.config(&format!(
            "  rate_limit: {{rate: {RATE}, burst: {BURST}, ports: [9999]}}\n"
        )),
        Some(&lab.gw),
    );
    assert_eq!(
        lab.deliver("198.18.0.2:40000", "198.18.0.1:9998", 20),
        N,
        "unpoliced port"
    );
    let (passed0, limited0) = (
        daemon.xdp_counter("passed"),
        daemon.xdp_counter("rate_limited"),
    );

    // 5x the rate for 2 s, from one source, sent from both CPUs at once:
    // each CPU's XDP run sees half, yet the budget is the source's.
    let cpus = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(2);
    let per_flow = 5 * RATE as usize * 2 / cpus;
    let flows: Vec<Flow> = (0..cpus)
        .map(|cpu| Flow {
            // One source address (the bucket's key); a port per sender.
            from: SocketAddr::new(addr("198.18.0.2:0").ip(), 40000 + cpu as u16),
            to: addr("198.18.0.1:9999"),
            count: per_flow,
            pps: 5 * RATE / cpus as u64,
            cpu: Some(cpu),
        })
        .collect();
    let results = run_flows(&lab.client, &lab.gw, &flows, || {});
    let sent: usize = results.iter().map(|r| r.sent).sum();
    let received: usize = results.iter().map(|r| r.received).sum();
    let seconds = results
        .iter()
        .map(|r| r.elapsed)
        .max()
        .unwrap()
        .as_secs_f64();
    let expected = RATE as f64 * seconds + BURST as f64;
    let error = (received as f64 - expected) / expected;
    eprintln!(
        "rate limit over {cpus} CPU(s): sent {sent} in {seconds:.2}s, admitted {received}, \
         expected rate*t+burst = {expected:.0} ({:+.1}%)",
        error * 100.0
    );
    assert!(
        error.abs() <= 0.10,
        "admitted {received}, expected {expected:.0} ±10%"
    );
    // Every packet not delivered was dropped by the rate limit, and counted
    // there exactly once. (`passed` also counts the namespace's own chatter,
    // such as IPv6 router solicitations, so it is only a lower bound.)
    let passed = daemon.xdp_counter("passed") - passed0;
    let limited = daemon.xdp_counter("rate_limited") - limited0;
    assert_eq!(limited, (sent - received) as u64, "rate_limited counter");
    assert!(
        passed >= received as u64,
        "passed {passed} < received {received}"
    );
}

#[test]
fn rule_set_replacement_is_atomic_under_traffic() {
    root_only!();
    let lab = Lab::new("swap");
    // Two equivalent rule sets written differently, with enough filler
    // entries that building one takes a while: the legitimate source is
    // allow-listed inside a denied range in both; the attacker denied in both.
    let filler = |first: u8| -> String {
        (0..200u32)
            .map(|i| format!("'10.{first}.{}.{}/32', ", i / 250, i % 250))
            .collect::<String>()
    };
    let set_a = lab.config(&format!(
        "  deny: [{}198.18.0.0/16]\n  allow: [198.18.0.3/32]\n",
        filler(1)
    ));
    let set_b = lab.config(&format!(
        "  deny: [{}198.18.0.0/17, 198.18.128.0/17]\n  allow: [192.0.2.77/32, 198.18.0.3/32]\n",
        filler(2)
    ));
    let daemon = Daemon::start(&set_a, Some(&lab.gw));
    assert_eq!(
        lab.deliver("198.18.0.3:40000", "198.18.0.1:9999", 20),
        N,
        "warm-up"
    );

    let flows = legit_and_attacker(20_000, 5_000);
    let mut reloads = 0;
    let results = run_flows(&lab.client, &lab.gw, &flows, || {
        for i in 0..20 {
            let out = daemon.reload_with(if i % 2 == 0 { &set_b } else { &set_a });
            assert!(out.status.success(), "reload: {}", stderr(&out));
            reloads += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert_eq!(reloads, 20);
    assert_eq!(daemon.status()["reloads"], 20);
    let (legit, attacker) = (results[0], results[1]);
    assert_eq!(
        legit.received, legit.sent,
        "legitimate packets lost during swaps"
    );
    assert_eq!(attacker.received, 0, "attacker packets passed during swaps");
}

/// Two flows at the same rate: the legitimate client (198.18.0.3, allowed)
/// and the attacker (198.18.0.2, denied), to ports 9999 and 9998.
fn legit_and_attacker(count: usize, pps: u64) -> [Flow; 2] {
    let flow = |from: &str, to: &str| Flow {
        from: addr(from),
        to: addr(to),
        count,
        pps,
        cpu: None,
    };
    [
        flow("198.18.0.3:40000", "198.18.0.1:9999"),
        flow("198.18.0.2:40000", "198.18.0.1:9998"),
    ]
}

#[test]
fn enforcement_continues_through_kill_9_and_restarts() {
    root_only!();
    let lab = Lab::new("crash");
    let config = lab.config("  on_exit: keep\n  deny: [198.18.0.2/32]\n");
    let daemon = Daemon::start(&config, Some(&lab.gw));
    assert_eq!(daemon.status()["xdp"]["attached"][0]["adopted"], false);
    assert_eq!(
        lab.deliver("198.18.0.3:40000", "198.18.0.1:9999", 20),
        N,
        "warm-up"
    );

    let flows = legit_and_attacker(15_000, 3_000);
    let mut daemon = Some(daemon);
    let results = run_flows(&lab.client, &lab.gw, &flows, || {
        std::thread::sleep(Duration::from_millis(500));
        // Crash: no cleanup at all.
        let dir = daemon.take().unwrap().kill9();
        std::thread::sleep(Duration::from_millis(1_000));
        // Restart: adopts the pinned link, swaps in its program.
        let restarted = Daemon::start_in_dir(dir, &config, Some(&lab.gw));
        assert_eq!(
            restarted.status()["xdp"]["attached"][0]["adopted"],
            true,
            "{}",
            restarted.log()
        );
        // Clean stop with on_exit: keep, and start again.
        let dir = restarted.stop();
        std::thread::sleep(Duration::from_millis(500));
        let again = Daemon::start_in_dir(dir, &config, Some(&lab.gw));
        assert_eq!(again.status()["xdp"]["attached"][0]["adopted"], true);
        daemon = Some(again);
    });
    let (legit, attacker) = (results[0], results[1]);
    assert_eq!(
        attacker.received, 0,
        "attack traffic got through while the daemon was down"
    );
    assert_eq!(
        legit.received, legit.sent,
        "legitimate traffic lost across restarts"
    );

    // `on_exit: detach` really detaches: the attacker gets through afterwards.
    let daemon = daemon.unwrap();
    let dir = daemon.stop();
    let detaching =
        Daemon::start_in_dir(dir, &lab.config("  deny: [198.18.0.2/32]\n"), Some(&lab.gw));
    assert_eq!(lab.deliver("198.18.0.2:40000", "198.18.0.1:9999", 0), 0);
    detaching.stop();
    assert_eq!(
        lab.deliver("198.18.0.2:40000", "198.18.0.1:9999", 20),
        N,
        "still filtering after a detaching stop"
    );
}

#[test]
fn xdp_attach_and_detach_work_without_a_daemon() {
    root_only!();
    let lab = Lab::new("att");
    let dir = xgate_tests::TempDir::new("attach");
    let config = dir.path().join("x.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners: [{{address: '127.0.0.1:18080'}}]\nstate_dir: {}\nxdp: {{deny: [198.18.0.2/32]}}\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let pin = lab.pin.0.display().to_string();
    let xgate = |args: &[&str]| {
        let out = lab
            .gw
            .command(xgate_tests::process::xgate_bin())
            .args(args)
            .output()
            .expect("run xgate");
        assert!(out.status.success(), "xgate {args:?}: {}", stderr(&out));
        stdout(&out)
    };
    let said = xgate(&[
        "xdp",
        "attach",
        "--iface",
        "xg0",
        "--pin-path",
        &pin,
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(said.contains("attached to xg0"), "{said}");
    assert_eq!(lab.deliver("198.18.0.3:40000", "198.18.0.1:9999", 20), N);
    assert_eq!(
        lab.deliver("198.18.0.2:40000", "198.18.0.1:9999", 0),
        0,
        "denied while attached"
    );
    assert!(
        xgate(&["xdp", "detach", "--iface", "xg0", "--pin-path", &pin])
            .contains("detached from xg0")
    );
    assert_eq!(
        lab.deliver("198.18.0.2:40000", "198.18.0.1:9999", 20),
        N,
        "passes after detach"
    );
    let out = lab
        .gw
        .command(xgate_tests::process::xgate_bin())
        .args(["xdp", "detach", "--iface", "xg0", "--pin-path", &pin])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no pinned attachment for xg0"),
        "{}",
        stderr(&out)
    );
}
