//! Cluster mode: two xgate processes (each with its own state dir and
//! admin socket; lists enforced at L7) share their runtime lists through
//! one real redis-server. Adds, removals, allow entries and bans made on
//! one node reach the other; a restarted node resyncs; with Redis gone
//! both keep enforcing and local changes still apply; Redis back (empty),
//! the nodes rebuild the shared set and changes flow again.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use xgate_tests::{
    http::send,
    ports::{any_port, free_port},
    process::{stderr, Daemon},
    redis::RedisServer,
    upstream::EchoUpstream,
};

fn config(listen: SocketAddr, upstream: SocketAddr, redis: &str, node: &str) -> String {
    format!(
        "listeners: [{{address: '{listen}'}}]\n\
         consumers: [{{username: alice, keys: [{{key: alice-key-0123456789}}]}}]\n\
         upstreams: {{u: {{targets: ['{upstream}']}}}}\n\
         routes: [{{name: api, match: {{path_prefix: /}}, upstream: u, policies: [{{type: key-auth}}]}}]\n\
         auto_ban: {{rules: [{{name: brute-force, signal: auth_failure, count: 2, within: 60s, ban: 1h}}]}}\n\
         cluster: {{redis: '{redis}', key_prefix: xgate-test, node_name: {node}}}\n"
    )
}

/// Whether a connection from `from` gets an answer (a blocked source's
/// connection is closed at accept).
async fn answered(listen: SocketAddr, from: &str) -> bool {
    let request =
        "GET /x HTTP/1.1\r\nHost: t\r\napikey: alice-key-0123456789\r\nConnection: close\r\n\r\n";
    send(listen, Some(format!("{from}:0").parse().unwrap()), request)
        .await
        .is_ok_and(|r| r.status == 200)
}

fn listed(daemon: &Daemon, list: &str) -> Vec<String> {
    let out = daemon.cli(&[list, "ls", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["cidr"].as_str().unwrap().to_string())
        .collect()
}

fn cli_ok(daemon: &Daemon, args: &[&str]) {
    let out = daemon.cli(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
}

/// Polls (generously: the machine may be busy) until `check` holds.
async fn eventually(what: &str, daemon: &Daemon, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within 20 s; log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_nodes_share_their_lists_through_redis() {
    let mut redis = RedisServer::start();
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let (listen_a, listen_b) = (free_port(), free_port());
    let a = Daemon::start(&config(listen_a, upstream.addr, &redis.url(), "a"), None);
    let config_b = config(listen_b, upstream.addr, &redis.url(), "b");
    let b = Daemon::start(&config_b, None);
    eventually("b synced", &b, || {
        b.log().contains("cluster lists: synced with Redis")
    })
    .await;
    eventually("a synced", &a, || {
        a.log().contains("cluster lists: synced with Redis")
    })
    .await;

    // An add on A is enforced on B.
    assert!(answered(listen_b, "127.0.0.2").await);
    cli_ok(
        &a,
        &[
            "blocklist",
            "add",
            "127.0.0.2",
            "--reason",
            "test",
            "--ttl",
            "1h",
        ],
    );
    eventually("A's add on B", &b, || {
        listed(&b, "blocklist").contains(&"127.0.0.2/32".into())
    })
    .await;
    assert!(!answered(listen_b, "127.0.0.2").await);
    let out = b.cli(&["blocklist", "ls", "--json"]);
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entries[0]["reason"], "test");
    assert!(entries[0]["expires_at"].as_u64().is_some());
    assert_eq!(
        redis
            .command(&["HEXISTS", "xgate-test:lists:deny", "127.0.0.2/32"])
            .unwrap(),
        ":1"
    );

    // An entry that expires leaves every node and Redis.
    cli_ok(&a, &["blocklist", "add", "127.0.0.8", "--ttl", "1s"]);
    eventually("A's short entry on B", &b, || {
        listed(&b, "blocklist").contains(&"127.0.0.8/32".into())
    })
    .await;
    eventually("expired on B", &b, || {
        !listed(&b, "blocklist").contains(&"127.0.0.8/32".into())
    })
    .await;
    eventually("expired in Redis", &a, || {
        redis
            .command(&["HEXISTS", "xgate-test:lists:deny", "127.0.0.8/32"])
            .unwrap()
            == ":0"
    })
    .await;

    // Removed on B: gone on A (no echo back to B either).
    cli_ok(&b, &["blocklist", "rm", "127.0.0.2"]);
    eventually("B's rm on A", &a, || listed(&a, "blocklist").is_empty()).await;
    assert!(answered(listen_a, "127.0.0.2").await);
    // Allow entries travel too.
    cli_ok(&b, &["allowlist", "add", "192.0.2.0/24"]);
    eventually("B's allow on A", &a, || {
        listed(&a, "allowlist").contains(&"192.0.2.0/24".into())
    })
    .await;
    // A ban made on A (two failed keys) is enforced on B.
    for _ in 0..2 {
        let bad = "GET /x HTTP/1.1\r\nHost: t\r\napikey: wrong\r\nConnection: close\r\n\r\n";
        let r = send(listen_a, Some("127.0.0.3:0".parse().unwrap()), bad)
            .await
            .unwrap();
        assert_eq!(r.status, 401);
    }
    eventually("A's ban on B", &b, || {
        let out = b.cli(&["bans", "ls", "--json"]);
        String::from_utf8_lossy(&out.stdout).contains("127.0.0.3/32")
    })
    .await;
    assert!(!answered(listen_b, "127.0.0.3").await);

    // B down while A changes the set; B restarted resyncs.
    let dir_b = b.stop();
    cli_ok(&a, &["bans", "rm", "127.0.0.3"]);
    cli_ok(&a, &["blocklist", "add", "127.0.0.5"]);
    let b = Daemon::start_in_dir(dir_b, &config_b, None);
    eventually("resync on start", &b, || {
        let deny = listed(&b, "blocklist");
        deny.contains(&"127.0.0.5/32".into()) && !deny.contains(&"127.0.0.3/32".into())
    })
    .await;
    assert!(!answered(listen_b, "127.0.0.5").await);
    assert!(answered(listen_b, "127.0.0.3").await);

    assert_eq!(a.status()["cluster"]["node"], "a");
    assert_eq!(a.status()["cluster"]["synced"], true);

    // Redis gone: both keep enforcing; a local change applies locally.
    redis.stop();
    eventually("A notices", &a, || a.log().contains("Redis unreachable")).await;
    eventually("status says so", &a, || {
        a.status()["cluster"]["synced"] == false
    })
    .await;
    assert!(!answered(listen_a, "127.0.0.5").await);
    assert!(!answered(listen_b, "127.0.0.5").await);
    cli_ok(&a, &["blocklist", "add", "127.0.0.6"]);
    assert!(!answered(listen_a, "127.0.0.6").await);
    assert!(answered(listen_b, "127.0.0.6").await);

    // Redis back, empty: the nodes write back what they enforce, A's
    // change made meanwhile reaches B, and new changes flow again.
    redis.restart();
    eventually("A's offline change on B", &b, || {
        listed(&b, "blocklist").contains(&"127.0.0.6/32".into())
    })
    .await;
    assert!(!answered(listen_b, "127.0.0.6").await);
    assert!(listed(&a, "blocklist").contains(&"127.0.0.5/32".into()));
    assert!(listed(&b, "blocklist").contains(&"127.0.0.5/32".into()));
    cli_ok(&b, &["blocklist", "add", "127.0.0.7"]);
    eventually("B's change on A after the outage", &a, || {
        listed(&a, "blocklist").contains(&"127.0.0.7/32".into())
    })
    .await;
    assert!(!answered(listen_a, "127.0.0.7").await);
    eventually("synced again", &a, || {
        a.status()["cluster"]["synced"] == true
    })
    .await;
    let metrics = a.admin_get("/metrics");
    assert!(
        metrics.contains("xgate_cluster_list_events_total{event=\"received\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("xgate_cluster_list_events_total{event=\"disconnected\"}"),
        "{metrics}"
    );
}
