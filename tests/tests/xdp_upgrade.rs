//! A binary upgrade (`xgate run --takeover`) with XDP attached: the new
//! process adopts the attachment and the pinned maps, the old one exits
//! without detaching, and the kernel keeps dropping throughout. Over a veth
//! pair in namespaces the test creates and removes, pass or fail.

use std::net::SocketAddr;

use xgate_tests::{
    netns::{udp_delivery, veth, NetNs, PinDir},
    process::{stderr, Daemon},
    require_root,
};

const N: usize = 200;

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
    let config = format!(
        "listeners: [{{address: '127.0.0.1:18090'}}]\n\
         xdp:\n  interfaces: [xu0]\n  pin_path: {}\n  on_exit: detach\n\
         upstreams: {{u: {{targets: ['127.0.0.1:18091']}}}}\n\
         routes: [{{match: {{path_prefix: /}}, upstream: u}}]\n",
        pin.0.display()
    );
    let mut daemon = Daemon::start(&config, Some(&gw));
    let (from, to) = (addr("198.18.1.2:40000"), addr("198.18.1.1:9999"));
    let out = daemon.cli(&["blocklist", "add", "198.18.1.2/32"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(udp_delivery(&client, from, &gw, to, N, 0), 0);

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

    // The new process manages the maps: an unblock takes effect.
    let out = daemon.cli(&["blocklist", "rm", "198.18.1.2/32"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(udp_delivery(&client, from, &gw, to, N, 50), N);
    daemon.stop();
}
