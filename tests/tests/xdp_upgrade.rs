//! A binary upgrade (`xgate run --takeover`) with XDP attached: the new
//! process adopts the attachment and the pinned maps (and the interface's
//! counters go on), the old one exits without detaching, and the kernel
//! keeps dropping throughout. The first daemon starts on the maps an older
//! xgate pinned, whose one counters map shared by every interface it
//! retires. Over a veth
//! pair in namespaces the test creates and removes, pass or fail.

use std::net::SocketAddr;

use gateway_common::{map_names, MAP_LAYOUT_VERSION};
use gateway_userspace::xdp::XDP_OBJECT;
use xgate_tests::{
    netns::{udp_delivery, veth, NetNs, PinDir},
    process::{stderr, Daemon},
    require_root,
};

const N: usize = 200;

/// What an xgate before per-interface counters left pinned: every map of
/// the layout, `STATS` (shared by every interface) included. Returns the
/// layout directory.
fn pin_older_layout(pin: &PinDir) -> std::path::PathBuf {
    let layout = pin.0.join(format!("v{MAP_LAYOUT_VERSION}"));
    std::fs::create_dir_all(&layout).unwrap();
    let mut loader = aya::EbpfLoader::new();
    for name in map_names::ALL {
        loader.map_pin_path(name, layout.join(name));
    }
    drop(
        loader
            .load(XDP_OBJECT)
            .expect("pin the older layout's maps"),
    );
    assert!(layout.join("STATS").exists());
    layout
}

fn denied_on_xu0(daemon: &Daemon) -> u64 {
    let status = daemon.status();
    status["xdp"]["interface_counters"]["xu0"]["denied_v4"]
        .as_u64()
        .unwrap_or_else(|| panic!("no xu0 counters in {status}"))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn an_upgrade_keeps_xdp_enforcing_and_hands_it_to_the_new_process() {
    if !require_root("xdp_upgrade::an_upgrade_keeps_xdp_enforcing_and_hands_it_to_the_new_process")
    {
        return;
    }
    let gw = NetNs::create("gwup");
    let client = NetNs::create("clup");
    veth(
        &gw,
        "xu0",
        &["198.18.1.1/24"],
        &client,
        "xv0",
        &["198.18.1.2/24"],
    );
    let pin = PinDir::new("upgrade");
    let layout = pin_older_layout(&pin);
    let config = format!(
        "listeners: [{{address: '127.0.0.1:18090'}}]\n\
         xdp:\n  interfaces: [xu0]\n  pin_path: {}\n  on_exit: detach\n\
         upstreams: {{u: {{targets: ['127.0.0.1:18091']}}}}\n\
         routes: [{{match: {{path_prefix: /}}, upstream: u}}]\n",
        pin.0.display()
    );
    let mut daemon = Daemon::start(&config, Some(&gw));
    // The older layout's shared counters are retired, the rest reused.
    assert!(
        daemon
            .log()
            .contains("removed the XDP counters an older xgate shared between interfaces"),
        "{}",
        daemon.log()
    );
    assert!(!layout.join("STATS").exists());
    assert!(layout.join("STATS@xu0").exists());
    let (from, to) = (addr("198.18.1.2:40000"), addr("198.18.1.1:9999"));
    let out = daemon.cli(&["blocklist", "add", "198.18.1.2/32"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(udp_delivery(&client, from, &gw, to, N, 0), 0);
    let denied = denied_on_xu0(&daemon);
    assert!(denied >= N as u64, "{denied}");

    // The old process exits cleanly (asserted by `upgrade`) despite
    // `on_exit: detach`: the attachment is the new process's now.
    daemon.upgrade(Some(&gw));
    assert!(
        daemon.log().contains("took the listening sockets over"),
        "{}",
        daemon.log()
    );
    let status = daemon.status();
    assert_eq!(status["xdp"]["attached"][0]["interface"], "xu0", "{status}");
    assert_eq!(
        udp_delivery(&client, from, &gw, to, N, 0),
        0,
        "still dropped after the old process exited"
    );
    // The new process's copy of the program counts into the same pinned
    // per-interface map: the counter goes on, it does not restart.
    assert_eq!(denied_on_xu0(&daemon), denied + N as u64);

    // The new process manages the maps: an unblock takes effect.
    let out = daemon.cli(&["blocklist", "rm", "198.18.1.2/32"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(udp_delivery(&client, from, &gw, to, N, 50), N);
    daemon.stop();
}
