//! Auto-ban through the real binary: failed key-auth requests from one
//! source ban it (`xgate bans ls` shows the ban, its next connection is
//! refused), the ban survives a restart, `xgate bans rm` lifts it, a ban
//! expires, and allow-listed sources are never banned. In the kernel: see
//! tests/tests/auto_ban_netns.rs.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use xgate_tests::{
    http::{send, KeepAlive, RawResponse},
    ports::{any_port, free_port},
    process::{stderr, stdout, Daemon},
    upstream::EchoUpstream,
};

const ATTACKER: &str = "127.0.0.2:0";
const OTHER: &str = "127.0.0.3:0";

fn config(listen: SocketAddr, upstream: SocketAddr, ban: &str) -> String {
    format!(
        "listeners: [{{address: '{listen}'}}]\n\
         consumers: [{{username: alice, keys: [{{key: alice-key-0123456789}}]}}]\n\
         upstreams: {{u: {{targets: ['{upstream}']}}}}\n\
         routes: [{{name: api, match: {{path_prefix: /}}, upstream: u, policies: [{{type: key-auth}}]}}]\n\
         auto_ban:\n\
         \x20 rules:\n\
         \x20   - {{name: brute-force, signal: auth_failure, count: 3, within: 60s, ban: {ban}, reason: too many bad keys}}\n"
    )
}

async fn request(listen: SocketAddr, from: &str, key: &str) -> std::io::Result<RawResponse> {
    let request =
        format!("GET /x HTTP/1.1\r\nHost: api.test\r\napikey: {key}\r\nConnection: close\r\n\r\n");
    send(listen, Some(from.parse().unwrap()), &request).await
}

async fn fail_auth(listen: SocketAddr, from: &str, times: usize) {
    for _ in 0..times {
        let r = request(listen, from, "wrong-key").await.expect("an answer");
        assert_eq!(r.status, 401);
    }
}

fn bans(daemon: &Daemon) -> serde_json::Value {
    let out = daemon.cli(&["bans", "ls", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn metric(daemon: &Daemon, line_start: &str) -> String {
    let metrics = daemon.admin_get("/metrics");
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .unwrap_or_else(|| panic!("no {line_start} in\n{metrics}"))
        .to_string()
}

#[tokio::test]
async fn failed_authentications_ban_the_source_until_lifted_or_expired() {
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(&config(listen, upstream.addr, "1h"), None);

    // Two failures: counted, not banned.
    fail_auth(listen, ATTACKER, 2).await;
    assert_eq!(bans(&daemon), serde_json::json!([]));
    assert_eq!(
        request(listen, ATTACKER, "alice-key-0123456789")
            .await
            .unwrap()
            .status,
        200
    );
    // The third: banned.
    fail_auth(listen, ATTACKER, 1).await;
    let listed = bans(&daemon);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["source"], "127.0.0.2/32");
    assert_eq!(listed[0]["rule"], "brute-force");
    assert_eq!(listed[0]["reason"], "too many bad keys");
    let expires = listed[0]["expires_at"].as_u64().unwrap();
    let added = listed[0]["added_at"].as_u64().unwrap();
    assert_eq!(expires - added, 3600);
    // Its next connection is refused, even with a good key; others pass.
    assert!(request(listen, ATTACKER, "alice-key-0123456789")
        .await
        .is_err());
    assert_eq!(
        request(listen, OTHER, "alice-key-0123456789")
            .await
            .unwrap()
            .status,
        200
    );
    // The table, the blocklist (source "ban") and the metric.
    let table = stdout(&daemon.cli(&["bans", "ls"]));
    assert!(
        table.contains("127.0.0.2/32")
            && table.contains("brute-force")
            && table.contains("too many bad keys"),
        "{table}"
    );
    let blocklist = stdout(&daemon.cli(&["blocklist", "ls"]));
    assert!(
        blocklist.contains("127.0.0.2/32") && blocklist.contains(" ban "),
        "{blocklist}"
    );
    assert_eq!(
        metric(
            &daemon,
            "xgate_auto_bans_total{rule=\"brute-force\",outcome=\"banned\"}"
        ),
        "xgate_auto_bans_total{rule=\"brute-force\",outcome=\"banned\"} 1"
    );
    assert!(daemon.log().contains("auto-ban: source banned"));

    // Persisted like CLI entries: a restart keeps it.
    let dir = daemon.stop();
    let daemon = Daemon::start_in_dir(dir, &config(listen, upstream.addr, "1h"), None);
    assert_eq!(bans(&daemon)[0]["source"], "127.0.0.2/32");
    assert!(request(listen, ATTACKER, "alice-key-0123456789")
        .await
        .is_err());

    // Lifted by address.
    let missing = daemon.cli(&["bans", "rm", "127.0.0.9"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("no ban covers 127.0.0.9/32"),
        "{}",
        stderr(&missing)
    );
    let out = daemon.cli(&["bans", "rm", "127.0.0.2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("lifted the ban on 127.0.0.2/32 (rule brute-force)"));
    assert_eq!(bans(&daemon), serde_json::json!([]));
    assert_eq!(
        request(listen, ATTACKER, "alice-key-0123456789")
            .await
            .unwrap()
            .status,
        200
    );

    // A reload shortens the ban; the next one expires by itself.
    let out = daemon.reload_with(&config(listen, upstream.addr, "2s"));
    assert!(out.status.success(), "{}", stderr(&out));
    fail_auth(listen, ATTACKER, 3).await;
    assert_eq!(bans(&daemon).as_array().unwrap().len(), 1);
    assert!(request(listen, ATTACKER, "alice-key-0123456789")
        .await
        .is_err());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !bans(&daemon).as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the ban did not expire");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        request(listen, ATTACKER, "alice-key-0123456789")
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test]
async fn a_ban_refuses_the_next_request_on_a_kept_alive_connection() {
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(&config(listen, upstream.addr, "1h"), None);
    let mut conn = KeepAlive::connect(listen).await.unwrap();
    for _ in 0..3 {
        assert_eq!(conn.get("/x").await.status, 401);
    }
    assert_eq!(bans(&daemon)[0]["source"], "127.0.0.1/32");
    // Same connection, accepted before the ban: refused now.
    assert_eq!(conn.get("/x").await.status, 403);
}

#[tokio::test]
async fn allow_listed_sources_are_never_banned_and_the_cap_holds() {
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let yaml = format!(
        "listeners: [{{address: '{listen}'}}]\n\
         consumers: [{{username: alice, keys: [{{key: alice-key-0123456789}}]}}]\n\
         upstreams: {{u: {{targets: ['{}']}}}}\n\
         routes: [{{name: api, match: {{path_prefix: /}}, upstream: u, policies: [{{type: key-auth}}]}}]\n\
         auto_ban: {{max_bans_per_minute: 1, rules: [{{signal: auth_failure, count: 1, within: 10s, ban: 1h}}]}}\n",
        upstream.addr
    );
    let daemon = Daemon::start(&yaml, None);
    let out = daemon.cli(&["allowlist", "add", "127.0.0.2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    fail_auth(listen, ATTACKER, 3).await;
    assert_eq!(bans(&daemon), serde_json::json!([]));
    assert_eq!(
        metric(
            &daemon,
            "xgate_auto_bans_total{rule=\"auth_failure\",outcome=\"exempt\"}"
        ),
        "xgate_auto_bans_total{rule=\"auth_failure\",outcome=\"exempt\"} 3"
    );
    // The cap: one ban this minute, the next source is only counted.
    fail_auth(listen, OTHER, 1).await;
    fail_auth(listen, "127.0.0.4:0", 1).await;
    let listed = bans(&daemon);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["source"], "127.0.0.3/32");
    assert_eq!(
        metric(
            &daemon,
            "xgate_auto_bans_total{rule=\"auth_failure\",outcome=\"capped\"}"
        ),
        "xgate_auto_bans_total{rule=\"auth_failure\",outcome=\"capped\"} 1"
    );
    assert!(request(listen, "127.0.0.4:0", "alice-key-0123456789")
        .await
        .is_ok());
}

#[test]
fn bad_auto_ban_and_cluster_config_is_refused_with_clear_errors() {
    let dir = xgate_tests::TempDir::new("autoban-validate");
    let path = dir.path().join("x.yaml");
    std::fs::write(
        &path,
        "listeners: [{address: '127.0.0.1:8080'}]\n\
         auto_ban: {rules: [{signal: auth-failure, count: 10, within: 60s, ban: 10m}]}\n\
         cluster: {redis: 'http://127.0.0.1:6379'}\n",
    )
    .unwrap();
    let out = xgate_tests::process::xgate(&["-c", path.to_str().unwrap(), "validate"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(
            "auto_ban.rules[0].signal: unknown signal 'auth-failure' (one of: auth_failure"
        ),
        "{err}"
    );
    assert!(
        err.contains("cluster.redis: 'http://127.0.0.1:6379' is not a usable Redis URL"),
        "{err}"
    );
}
