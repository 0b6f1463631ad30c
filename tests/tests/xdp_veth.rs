//! End to end through a real interface: the daemon attaches XDP to one end of
//! a veth pair in a namespace the test creates; a second namespace sends from
//! a blocked address. Everything is removed when the test ends, pass or fail.

use std::net::SocketAddr;

use xgate_tests::{
    netns::{udp_delivery, veth, Lab, NetNs, PinDir},
    process::{stderr, stdout, Daemon},
    require_root,
};

const N: usize = 200;

fn config(lab: &Lab) -> String {
    lab.config(
        "[{address: '127.0.0.1:18080'}]",
        "",
        "upstreams: {u: {targets: ['127.0.0.1:18081']}}\n\
         routes: [{match: {path_prefix: /}, upstream: u}]\n",
    )
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn blocklist_drops_in_xdp_over_veth_and_survives_restart() {
    if !require_root("xdp_veth::blocklist_drops_in_xdp_over_veth_and_survives_restart") {
        return;
    }
    let lab = Lab::new("veth");
    let (gw, client) = (&lab.gw, &lab.client);
    let daemon = Daemon::start(&config(&lab), Some(gw));

    let status = daemon.status();
    assert_eq!(status["xdp"]["attached"][0]["interface"], "xg0", "{status}");
    let mode = status["xdp"]["attached"][0]["mode"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(mode == "native" || mode == "generic", "{status}");
    eprintln!("XDP attached to veth in {mode} mode");

    let v4 = (addr("198.18.0.2:40000"), addr("198.18.0.1:9999"));
    let v6 = (
        addr("[2001:db8:18::2]:40000"),
        addr("[2001:db8:18::1]:9999"),
    );

    // Baseline: everything arrives.
    assert_eq!(udp_delivery(client, v4.0, gw, v4.1, N, 50), N);
    assert_eq!(udp_delivery(client, v6.0, gw, v6.1, N, 50), N);

    // Block both client addresses through the CLI.
    for cidr in ["198.18.0.2/32", "2001:db8:18::2/128"] {
        let out = daemon.cli(&["blocklist", "add", cidr, "--reason", "test"]);
        assert!(out.status.success(), "add {cidr}: {}", stderr(&out));
    }
    let denied_v4 = daemon.xdp_counter("denied_v4");
    let denied_v6 = daemon.xdp_counter("denied_v6");
    assert_eq!(udp_delivery(client, v4.0, gw, v4.1, N, 0), 0);
    assert_eq!(udp_delivery(client, v6.0, gw, v6.1, N, 0), 0);
    assert_eq!(
        daemon.xdp_counter("denied_v4") - denied_v4,
        N as u64,
        "every blocked IPv4 datagram counted once"
    );
    // NDP from the blocked IPv6 source still passes (the host must stay on
    // its link); only the datagrams are dropped.
    assert_eq!(
        daemon.xdp_counter("denied_v6") - denied_v6,
        N as u64,
        "every blocked IPv6 datagram counted once"
    );

    // Restart: the persisted entries are re-applied to the kernel.
    let dir = daemon.stop();
    let daemon = Daemon::start_in_dir(dir, &config(&lab), Some(gw));
    let listed = stdout(&daemon.cli(&["blocklist", "ls"]));
    assert!(
        listed.contains("198.18.0.2/32") && listed.contains("2001:db8:18::2/128"),
        "{listed}"
    );
    let denied_v4 = daemon.xdp_counter("denied_v4");
    assert_eq!(udp_delivery(client, v4.0, gw, v4.1, N, 0), 0);
    assert_eq!(daemon.xdp_counter("denied_v4") - denied_v4, N as u64);

    // Unblock: traffic flows again.
    for cidr in ["198.18.0.2/32", "2001:db8:18::2/128"] {
        let out = daemon.cli(&["blocklist", "rm", cidr]);
        assert!(out.status.success(), "rm {cidr}: {}", stderr(&out));
    }
    let denied_v4 = daemon.xdp_counter("denied_v4");
    assert_eq!(udp_delivery(client, v4.0, gw, v4.1, N, 50), N);
    assert_eq!(udp_delivery(client, v6.0, gw, v6.1, N, 50), N);
    assert_eq!(
        daemon.xdp_counter("denied_v4"),
        denied_v4,
        "nothing dropped after rm"
    );
}

/// `interface`'s `xgate_xdp_packets_total` series for `reason`.
fn xdp_series(metrics: &str, interface: &str, reason: &str) -> u64 {
    let labels = format!("{{interface=\"{interface}\",verdict=");
    let reason = format!("reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find(|l| {
            l.starts_with("xgate_xdp_packets_total") && l.contains(&labels) && l.contains(&reason)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {reason} series for {interface} in:\n{metrics}"))
}

/// Two interfaces, one program copy each: every XDP series carries its
/// interface, traffic on one moves only that one's series, and the totals
/// (status `counters`) are their sum. The lists are shared: a CLI block
/// reaches both interfaces.
#[test]
fn xdp_counters_are_per_interface() {
    if !require_root("xdp_veth::xdp_counters_are_per_interface") {
        return;
    }
    let gw = NetNs::create("gwif");
    let client = NetNs::create("clif");
    // No IPv6 on the client side: its autoconfiguration chatter (MLD, router
    // solicitations) would reach xi2 while the test says nothing does.
    for key in ["all", "default"] {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &client.name, "sysctl", "-qw"])
            .arg(format!("net.ipv6.conf.{key}.disable_ipv6=1"))
            .output()
            .expect("run sysctl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    veth(
        &gw,
        "xi1",
        &["198.18.2.1/24"],
        &client,
        "xj1",
        &["198.18.2.2/24"],
    );
    veth(
        &gw,
        "xi2",
        &["198.18.3.1/24"],
        &client,
        "xj2",
        &["198.18.3.2/24"],
    );
    let pin = PinDir::new("ifaces");
    let config = format!(
        "listeners: [{{address: '127.0.0.1:18082'}}]\n\
         xdp:\n  interfaces: [xi1, xi2]\n  pin_path: {}\n\
         upstreams: {{u: {{targets: ['127.0.0.1:18083']}}}}\n\
         routes: [{{match: {{path_prefix: /}}, upstream: u}}]\n",
        pin.0.display()
    );
    let daemon = Daemon::start(&config, Some(&gw));
    let status = daemon.status();
    assert_eq!(status["xdp"]["attached"][0]["interface"], "xi1", "{status}");
    assert_eq!(status["xdp"]["attached"][1]["interface"], "xi2", "{status}");
    for iface in ["xi1", "xi2"] {
        assert!(
            pin.0
                .join(format!("v{}", gateway_common::MAP_LAYOUT_VERSION))
                .join(format!("STATS@{iface}"))
                .exists(),
            "{iface}'s counters are pinned"
        );
    }
    let one = (addr("198.18.2.2:40000"), addr("198.18.2.1:9999"));
    let two = (addr("198.18.3.2:40000"), addr("198.18.3.1:9999"));

    // Passing traffic on xi1 only.
    let before = daemon.admin_get("/metrics");
    assert_eq!(udp_delivery(&client, one.0, &gw, one.1, N, 20), N);
    let after = daemon.admin_get("/metrics");
    assert!(
        xdp_series(&after, "xi1", "passed") >= xdp_series(&before, "xi1", "passed") + N as u64,
        "xi1's passed series rose by every datagram"
    );
    assert_eq!(
        xdp_series(&after, "xi2", "passed"),
        xdp_series(&before, "xi2", "passed"),
        "nothing passed on xi2"
    );

    // Block both client addresses: one CLI call reaches both copies of the
    // program. Blocked traffic on xi2 only.
    for cidr in ["198.18.2.2/32", "198.18.3.2/32"] {
        let out = daemon.cli(&["blocklist", "add", cidr]);
        assert!(out.status.success(), "add {cidr}: {}", stderr(&out));
    }
    let before = daemon.admin_get("/metrics");
    assert_eq!(udp_delivery(&client, two.0, &gw, two.1, N, 0), 0);
    let after = daemon.admin_get("/metrics");
    assert_eq!(
        xdp_series(&after, "xi2", "denied_v4") - xdp_series(&before, "xi2", "denied_v4"),
        N as u64,
        "every datagram dropped on xi2 counted there"
    );
    assert_eq!(
        xdp_series(&after, "xi1", "denied_v4"),
        xdp_series(&before, "xi1", "denied_v4"),
        "nothing dropped on xi1"
    );
    assert_eq!(
        udp_delivery(&client, one.0, &gw, one.1, N, 0),
        0,
        "xi1 drops too"
    );
    let after_one = daemon.admin_get("/metrics");
    assert_eq!(
        xdp_series(&after_one, "xi1", "denied_v4") - xdp_series(&after, "xi1", "denied_v4"),
        N as u64
    );
    assert_eq!(
        xdp_series(&after_one, "xi2", "denied_v4"),
        xdp_series(&after, "xi2", "denied_v4")
    );
    assert!(
        after_one
            .lines()
            .filter(|l| l.starts_with("xgate_xdp_packets_total"))
            .all(|l| l.contains("interface=\"xi1\"") || l.contains("interface=\"xi2\"")),
        "every XDP series has its interface:\n{after_one}"
    );

    // The status: totals are the sum of the interfaces; the CLI shows one.
    let status = daemon.status();
    let xdp = &status["xdp"];
    for stat in ["passed", "denied_v4", "non_ip"] {
        let sum = xdp["interface_counters"]["xi1"][stat].as_u64().unwrap()
            + xdp["interface_counters"]["xi2"][stat].as_u64().unwrap();
        assert_eq!(xdp["counters"][stat].as_u64(), Some(sum), "{stat}: {xdp}");
    }
    let out = daemon.cli(&["xdp", "stats", "--iface", "xi2", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let xi2: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(xi2, xdp["interface_counters"]["xi2"]);
    let out = daemon.cli(&["xdp", "stats"]);
    let table = stdout(&out);
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.contains("total") && h.contains("xi1") && h.contains("xi2")),
        "{table}"
    );
    // `denied_v4  drop  TOTAL  XI1  XI2`: the total is the sum of the columns.
    let row: Vec<u64> = table
        .lines()
        .find(|l| l.trim_start().starts_with("denied_v4"))
        .unwrap_or_else(|| panic!("{table}"))
        .split_whitespace()
        .skip(2)
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(row.len(), 3, "{table}");
    assert_eq!(row[0], row[1] + row[2], "{table}");
    assert!(row[1] >= N as u64 && row[2] >= N as u64, "{table}");
    let out = daemon.cli(&["xdp", "stats", "--iface", "eth9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("XDP is not attached to eth9 (attached to: xi1, xi2)"),
        "{}",
        stderr(&out)
    );
}
