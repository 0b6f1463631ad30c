//! Protections that were pinned by unit tests only (breaking them on
//! purpose passed the integration suite), tested here where a refactor
//! would most likely move them: through the real binary and the running
//! proxy. Request framing and hop-by-hop fields have their own files
//! (`hostile_clients.rs`, `hostile_upstreams.rs`).

use std::{net::SocketAddr, time::Duration};

use xgate_tests::{
    bad_upstream::ScriptedUpstream,
    http::{get, send},
    ports::{any_port, free_port},
    process::{catch_all_config, stderr, xgate, Daemon},
    upstream::EchoUpstream,
    TempDir,
};

/// `trusted_proxies: [10.0.0.1/8]` reads like "one proxy" and means a
/// whole /8 trusted to name any client address: refused, with its path,
/// by `validate`, by `run` and by `reload` (which keeps the old config).
#[test]
fn trusted_proxies_with_host_bits_are_refused_by_validate_run_and_reload() {
    let listen = free_port();
    let good = catch_all_config(listen, "127.0.0.1:9".parse().unwrap());
    let bad = format!("{good}trusted_proxies: ['10.0.0.1/8', '192.0.2.0/24', '2001:db8::1/32']\n");
    let expected = [
        "trusted_proxies[0]: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8 or 10.0.0.1/32?",
        "trusted_proxies[2]: 2001:db8::1/32 has host bits set",
    ];

    let dir = TempDir::new("trusted");
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, &bad).unwrap();
    let out = xgate(&["validate", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    for line in expected {
        assert!(
            stderr(&out).contains(line),
            "validate: `{line}` in:\n{}",
            stderr(&out)
        );
    }
    assert!(
        !stderr(&out).contains("trusted_proxies[1]"),
        "{}",
        stderr(&out)
    );

    let out = xgate(&["run", "-c", path.to_str().unwrap()]);
    assert!(!out.status.success(), "run started with host bits set");
    assert!(stderr(&out).contains(expected[0]), "run: {}", stderr(&out));

    let daemon = Daemon::start(&good, None);
    let out = daemon.reload_with(&bad);
    assert!(!out.status.success(), "reload applied host bits");
    assert!(
        stderr(&out).contains(expected[0]),
        "reload: {}",
        stderr(&out)
    );
    let status = daemon.status();
    assert!(
        !status.to_string().contains("10.0.0.1/8"),
        "the refused config left a trace: {status}"
    );
}

/// Whether the gateway answers a request sent from `source` (all of
/// 127.0.0.0/8 reaches loopback); an L7 deny closes the connection.
async fn answered_from(gw: SocketAddr, source: &str) -> bool {
    let source = SocketAddr::new(source.parse().unwrap(), 0);
    send(
        gw,
        Some(source),
        "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await
    .is_ok_and(|r| r.status == 200)
}

/// An allow entry wins over a deny entry in the running proxy (without
/// XDP, the L7 check is the only one), whichever is added first and
/// however they nest.
#[tokio::test]
async fn an_allow_entry_wins_over_a_deny_entry_at_l7() {
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(&catch_all_config(listen, upstream.addr), None);
    let cli_ok = |args: &[&str]| {
        let out = daemon.cli(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    };
    assert!(answered_from(listen, "127.0.0.9").await);

    // Deny then allow, the same address.
    cli_ok(&["blocklist", "add", "127.0.0.9"]);
    assert!(!answered_from(listen, "127.0.0.9").await, "the block works");
    cli_ok(&["allowlist", "add", "127.0.0.9"]);
    assert!(answered_from(listen, "127.0.0.9").await, "allow wins");
    cli_ok(&["allowlist", "rm", "127.0.0.9/32"]);
    assert!(
        !answered_from(listen, "127.0.0.9").await,
        "the block is back"
    );
    cli_ok(&["blocklist", "rm", "127.0.0.9/32"]);

    // An allowed address inside a wider block, allowed first.
    cli_ok(&["allowlist", "add", "127.0.0.10"]);
    cli_ok(&["blocklist", "add", "127.0.0.8/29"]);
    assert!(
        answered_from(listen, "127.0.0.10").await,
        "allowed inside the block"
    );
    assert!(
        !answered_from(listen, "127.0.0.11").await,
        "the rest of the block"
    );
    assert!(
        answered_from(listen, "127.0.0.1").await,
        "outside the block"
    );
    let status = daemon.status();
    assert!(
        status["l7_denied_connections"].as_u64().unwrap() >= 3,
        "{status}"
    );
}

/// Retries on a status (`retry_on_status`) spend the retry budget as
/// connect failures do: once it is spent, the 503 reaches the client.
#[tokio::test]
async fn status_retries_spend_the_retry_budget() {
    let failing = ScriptedUpstream::start("failing", 503, Duration::ZERO)
        .await
        .unwrap();
    let live = EchoUpstream::start(any_port(), "live").await.unwrap();
    // No share of traffic, and a reserve of 0.05/s × 60 s = 3 retries;
    // passive health off (it would eject the failing target).
    let (_daemon, gw) = Daemon::with_upstreams(&[(
        "budget",
        format!(
            "{{targets: ['{}', '{}'], retries: 1, retry_on_status: [503], \
               retry_budget: {{ratio: 0, min_per_second: 0.05, window: 60s}}, \
               health_checks: {{passive: {{enabled: false}}}}}}",
            failing.addr, live.addr
        ),
    )]);
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(get(gw, "/budget/x", &[]).await.status);
    }
    // Requests 1, 3, 5, 7, 9 meet the 503 first; the first three are
    // retried on the live target, then the budget is spent.
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 503, 200, 503, 200]);
    assert_eq!(failing.requests(), 5);
}
