//! End to end through a real interface: the daemon attaches XDP to one end of
//! a veth pair in a namespace the test creates; a second namespace sends from
//! a blocked address. Everything is removed when the test ends, pass or fail.

use std::net::SocketAddr;

use xgate_tests::{
    netns::{udp_delivery, veth, NetNs, PinDir},
    process::{stderr, stdout, Daemon},
    require_root,
};

const N: usize = 200;

fn config(pin: &PinDir) -> String {
    format!(
        "listeners: [{{address: '127.0.0.1:18080'}}]\n\
         xdp:\n  interfaces: [xg0]\n  pin_path: {}\n\
         upstreams: {{u: {{targets: ['127.0.0.1:18081']}}}}\n\
         routes: [{{match: {{path_prefix: /}}, upstream: u}}]\n",
        pin.0.display()
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
    let gw = NetNs::create("gw");
    let client = NetNs::create("cl");
    veth(
        &gw,
        "xg0",
        &["198.18.0.1/24", "2001:db8:18::1/64"],
        &client,
        "xc0",
        &["198.18.0.2/24", "2001:db8:18::2/64"],
    );
    let pin = PinDir::new("veth");
    let daemon = Daemon::start(&config(&pin), Some(&gw));

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
    assert_eq!(udp_delivery(&client, v4.0, &gw, v4.1, N, 50), N);
    assert_eq!(udp_delivery(&client, v6.0, &gw, v6.1, N, 50), N);

    // Block both client addresses through the CLI.
    for cidr in ["198.18.0.2/32", "2001:db8:18::2/128"] {
        let out = daemon.cli(&["blocklist", "add", cidr, "--reason", "test"]);
        assert!(out.status.success(), "add {cidr}: {}", stderr(&out));
    }
    let denied_v4 = daemon.xdp_counter("denied_v4");
    let denied_v6 = daemon.xdp_counter("denied_v6");
    assert_eq!(udp_delivery(&client, v4.0, &gw, v4.1, N, 0), 0);
    assert_eq!(udp_delivery(&client, v6.0, &gw, v6.1, N, 0), 0);
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
    let daemon = Daemon::start_in_dir(dir, &config(&pin), Some(&gw));
    let listed = stdout(&daemon.cli(&["blocklist", "ls"]));
    assert!(
        listed.contains("198.18.0.2/32") && listed.contains("2001:db8:18::2/128"),
        "{listed}"
    );
    let denied_v4 = daemon.xdp_counter("denied_v4");
    assert_eq!(udp_delivery(&client, v4.0, &gw, v4.1, N, 0), 0);
    assert_eq!(daemon.xdp_counter("denied_v4") - denied_v4, N as u64);

    // Unblock: traffic flows again.
    for cidr in ["198.18.0.2/32", "2001:db8:18::2/128"] {
        let out = daemon.cli(&["blocklist", "rm", cidr]);
        assert!(out.status.success(), "rm {cidr}: {}", stderr(&out));
    }
    let denied_v4 = daemon.xdp_counter("denied_v4");
    assert_eq!(udp_delivery(&client, v4.0, &gw, v4.1, N, 50), N);
    assert_eq!(udp_delivery(&client, v6.0, &gw, v6.1, N, 50), N);
    assert_eq!(
        daemon.xdp_counter("denied_v4"),
        denied_v4,
        "nothing dropped after rm"
    );
}
