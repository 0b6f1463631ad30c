//! Auto-ban end to end in the kernel: a client in its own network namespace
//! fails key-auth until a rule bans it; its next packets are dropped by the
//! XDP program on the gateway's interface (the XDP drop counter rises, the
//! proxy sees no further connection from it: no new policy decision, no
//! connection refused at L7), another client is unaffected, and when the
//! ban expires the client gets through again. Root only; the namespaces
//! and pinned maps are removed when the test ends, pass or fail.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use xgate_tests::{
    netns::{Lab, NetNs},
    process::{stderr, Daemon},
    require_root,
};

const LISTEN: &str = "198.18.0.1:18080";

/// One request from `from` inside `ns`: the status code, or the error
/// (a connect that times out: the SYN was dropped).
fn request(ns: &NetNs, from: &str, key: &str) -> Result<u16, String> {
    let from: SocketAddr = format!("{from}:0").parse().unwrap();
    let key = key.to_string();
    ns.run(move || {
        let socket = connect_from(from, LISTEN.parse().unwrap())?;
        let mut stream = socket;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        write!(
            stream,
            "GET /x HTTP/1.1\r\nHost: t\r\napikey: {key}\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw).map_err(|e| e.to_string())?;
        raw.split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status line in {raw:?}"))
    })
}

/// A TCP connection from a chosen source address, 2 s to connect.
fn connect_from(from: SocketAddr, to: SocketAddr) -> Result<TcpStream, String> {
    // std has no bind-before-connect: tokio's TcpSocket does, on a small
    // runtime of its own (this thread is inside the namespace).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
        socket.bind(from).map_err(|e| e.to_string())?;
        let stream = tokio::time::timeout(Duration::from_secs(2), socket.connect(to))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        stream
            .into_std()
            .and_then(|s| s.set_nonblocking(false).map(|()| s))
            .map_err(|e| e.to_string())
    })
}

fn metric(daemon: &Daemon, name: &str) -> u64 {
    let metrics = daemon.admin_get("/metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

const DENIES: &str =
    "xgate_policy_decisions_total{route=\"api\",policy=\"key-auth\",result=\"deny\"}";

#[test]
fn a_client_that_trips_a_rule_is_dropped_in_xdp_until_the_ban_expires() {
    if !require_root(
        "auto_ban_netns::a_client_that_trips_a_rule_is_dropped_in_xdp_until_the_ban_expires",
    ) {
        return;
    }
    // The gateway's end xg0 is 198.18.0.1, the client's xc0 .2 and .3.
    let Lab {
        gw, client, pin, ..
    } = Lab::with_client_addrs("ab", &["198.18.0.2/24", "198.18.0.3/24"]);
    let daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{LISTEN}'}}]\n\
             xdp:\n  interfaces: [xg0]\n  pin_path: {}\n\
             consumers: [{{username: alice, keys: [{{key: alice-key-0123456789}}]}}]\n\
             upstreams: {{u: {{targets: ['127.0.0.1:18081']}}}}\n\
             routes: [{{name: api, match: {{path_prefix: /}}, upstream: u, policies: [{{type: key-auth}}]}}]\n\
             auto_ban: {{rules: [{{name: brute-force, signal: auth_failure, count: 3, within: 60s, ban: 4s}}]}}\n",
            pin.0.display()
        ),
        Some(&gw),
    );
    assert_eq!(daemon.status()["xdp"]["attached"][0]["interface"], "xg0");

    for _ in 0..3 {
        assert_eq!(request(&client, "198.18.0.2", "wrong"), Ok(401));
    }
    let out = daemon.cli(&["bans", "ls", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bans: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(bans[0]["source"], "198.18.0.2/32", "{bans}");

    // Dropped in XDP: the SYNs never reach the proxy.
    let dropped = daemon.xdp_counter("denied_v4");
    let denies = metric(&daemon, DENIES);
    assert_eq!(denies, 3);
    let l7_refused = daemon.status()["l7_denied_connections"].as_u64().unwrap();
    let refused = request(&client, "198.18.0.2", "alice-key-0123456789");
    assert_eq!(refused, Err("connect timed out".to_string()));
    assert!(
        daemon.xdp_counter("denied_v4") > dropped,
        "the XDP drop counter rises"
    );
    assert_eq!(metric(&daemon, DENIES), denies, "no further request seen");
    assert_eq!(
        daemon.status()["l7_denied_connections"].as_u64().unwrap(),
        l7_refused,
        "no further connection seen"
    );
    // Another client of the same network is not affected.
    assert_eq!(request(&client, "198.18.0.3", "wrong"), Ok(401));

    // The ban expires: reaped from the lists, and the kernel lets the
    // client through again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = daemon.cli(&["bans", "ls", "--json"]);
        if String::from_utf8_lossy(&out.stdout).trim() == "[]" {
            break;
        }
        assert!(Instant::now() < deadline, "the ban did not expire");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(request(&client, "198.18.0.2", "wrong"), Ok(401));
}
