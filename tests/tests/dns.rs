//! Upstream targets by DNS name, resolved by a real DNS server (dnsmasq on
//! loopback) whose records the tests change: every address is a target,
//! a changed record moves the traffic within its TTL, a failing name keeps
//! the last good addresses, a name that never resolves is a 503 and a log
//! line (never a refused config), and /etc/hosts names work.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use xgate_tests::{
    dns::Dnsmasq,
    http,
    ports::free_port,
    process::{stderr, upstreams_config, xgate, Daemon},
    upstream::EchoUpstream,
    TempDir,
};

/// Echo upstreams on 127.0.0.N:PORT, one per N, all on one port (a DNS
/// name gives addresses, the port is the target's).
async fn echoes(hosts: &[u8]) -> (u16, Vec<EchoUpstream>) {
    'port: loop {
        let port = free_port().port();
        let mut started = Vec::new();
        for &n in hosts {
            let addr = SocketAddr::from(([127, 0, 0, n], port));
            match EchoUpstream::start(addr, &format!("echo-{n}")).await {
                Ok(echo) => started.push(echo),
                Err(_) => continue 'port,
            }
        }
        return (port, started);
    }
}

fn ip(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// The upstreams that answered `count` requests to `path`.
async fn answered_by(listen: SocketAddr, path: &str, count: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..count {
        let response = http::get(listen, path, &[]).await;
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        seen.insert(response.json()["upstream"].as_str().unwrap().to_string());
    }
    seen
}

fn resolver(dns: &Dnsmasq) -> String {
    format!(
        "resolver: {{nameservers: ['{}'], min_ttl: 200ms, max_ttl: 2s, timeout: 500ms}}\n",
        dns.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_spreads_over_its_addresses_and_follows_record_changes() {
    let (port, _echoes) = echoes(&[2, 3, 4]).await;
    let dns = Dnsmasq::start(&[("svc.test", &[ip(2), ip(3)])]);
    let listen = free_port();
    let config = upstreams_config(
        listen,
        &[("svc", format!("{{targets: ['svc.test:{port}']}}"))],
    ) + &resolver(&dns);
    let daemon = Daemon::start(&config, None);

    // Resolved before serving: the first requests already spread.
    assert_eq!(
        answered_by(listen, "/svc/", 20).await,
        BTreeSet::from(["echo-2".to_string(), "echo-3".to_string()])
    );

    // The record moves: within its TTL (1 s, polled for up to 30 s) all
    // traffic goes to the new address.
    dns.set_records(&[("svc.test", &[ip(4)])]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if answered_by(listen, "/svc/", 10).await == BTreeSet::from(["echo-4".to_string()]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "traffic did not move:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The name stops resolving (NXDOMAIN): the last good address stays in
    // use, past several lookups (max_ttl 2 s, failures retried within it).
    dns.set_records(&[("other.test", &[ip(2)])]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !daemon.log().contains("keeping its last addresses") {
        assert!(
            Instant::now() < deadline,
            "no failed lookup:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        answered_by(listen, "/svc/", 10).await,
        BTreeSet::from(["echo-4".to_string()])
    );

    // It comes back with another address: followed again.
    dns.set_records(&[("svc.test", &[ip(3)])]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered_by(listen, "/svc/", 5).await != BTreeSet::from(["echo-3".to_string()]) {
        assert!(
            Instant::now() < deadline,
            "name did not come back:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_is_a_warning_and_a_503_never_a_refused_config() {
    let (port, _echoes) = echoes(&[1]).await;
    let dns = Dnsmasq::start(&[("svc.test", &[ip(1)])]);
    let listen = free_port();
    let config = upstreams_config(
        listen,
        &[
            ("ghost", format!("{{targets: ['ghost.test:{port}']}}")),
            // Half resolves: the upstream serves on the half that does.
            (
                "half",
                format!("{{targets: ['ghost.test:{port}', 'svc.test:{port}']}}"),
            ),
            // A name from /etc/hosts, no DNS server involved.
            ("local", format!("{{targets: ['localhost:{port}']}}")),
        ],
    ) + &resolver(&dns);
    // `validate` accepts it: whether a name resolves is for run time.
    let dir = TempDir::new("dns-validate");
    let path = dir.path().join("x.yaml");
    std::fs::write(&path, &config).unwrap();
    let out = xgate(&["validate", "-c", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    let daemon = Daemon::start(&config, None);
    let response = http::get(listen, "/ghost/", &[]).await;
    assert_eq!(response.status, 503);
    let log = daemon.log();
    assert!(
        log.contains("cannot resolve an upstream target's name") && log.contains("ghost.test"),
        "{log}"
    );
    assert!(
        log.contains("upstream has no targets") && log.contains("upstream ghost has no targets"),
        "{log}"
    );
    assert_eq!(
        answered_by(listen, "/half/", 5).await,
        BTreeSet::from(["echo-1".to_string()])
    );
    assert_eq!(
        answered_by(listen, "/local/", 5).await,
        BTreeSet::from(["echo-1".to_string()])
    );

    // A reload that brings a new name: resolved before the new config
    // serves, so the first request after the reload already has a target.
    let more = config.replace(
        "upstreams:\n",
        &format!("upstreams:\n  late: {{targets: ['svc.test:{port}']}}\n"),
    ).replace(
        "routes:\n",
        "routes:\n  - {name: late, match: {path_prefix: /late/}, upstream: late, strip_prefix: true}\n",
    );
    let out = daemon.reload_with(&more);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(http::get(listen, "/late/", &[]).await.status, 200);
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_failure_looks_the_name_up_again_before_its_ttl_runs_out() {
    let (port, mut echoes) = echoes(&[2, 3]).await;
    // Answers valid for an hour: only a connect failure makes xgate ask
    // again within this test.
    let dns = Dnsmasq::start_with_ttl(&[("svc.test", &[ip(2)])], 3600);
    let listen = free_port();
    let config = upstreams_config(
        listen,
        &[(
            "svc",
            format!("{{targets: ['svc.test:{port}'], retries: 0}}"),
        )],
    ) + &format!(
        "resolver: {{nameservers: ['{}'], min_ttl: 200ms, max_ttl: 1h}}\n",
        dns.addr
    );
    let daemon = Daemon::start(&config, None);
    assert_eq!(
        answered_by(listen, "/svc/", 3).await,
        BTreeSet::from(["echo-2".to_string()])
    );

    // The service moves: its old address refuses connections, the record
    // names the new one. The next requests fail (502) until the failure's
    // lookup has the new address.
    dns.set_records(&[("svc.test", &[ip(3)])]);
    echoes.remove(0).stop().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = http::get(listen, "/svc/", &[]).await;
        if response.status == 200 {
            assert_eq!(response.json()["upstream"], "echo-3");
            break;
        }
        assert_eq!(response.status, 502);
        assert!(
            Instant::now() < deadline,
            "not looked up again:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.stop();
}
