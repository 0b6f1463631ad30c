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

/// How many times the daemon has synced with Redis.
fn syncs(daemon: &Daemon) -> usize {
    daemon
        .log()
        .matches("cluster lists: synced with Redis")
        .count()
}

/// The fields of a list's hash in Redis.
fn in_redis(redis: &RedisServer, list: &str, cidr: &str) -> bool {
    redis
        .command(&["HEXISTS", &format!("xgate-test:lists:{list}"), cidr])
        .unwrap()
        == ":1"
}

/// Closes the one gateway's connections to Redis (it reconnects).
fn drop_connections(redis: &RedisServer) {
    for kind in ["normal", "pubsub"] {
        let killed = redis.command(&["CLIENT", "KILL", "TYPE", kind]).unwrap();
        assert_eq!(killed, ":1", "the gateway's {kind} connection");
    }
}

#[tokio::test]
async fn a_node_that_finds_another_data_set_writes_its_lists_back() {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let a = Daemon::start(&config(listen, upstream.addr, &redis.url(), "a"), None);
    eventually("synced", &a, || syncs(&a) == 1).await;
    // The layout docs/lists.md gives operators: an epoch, one hash per
    // list, a sorted set of expiries.
    let epoch = redis.command(&["GET", "xgate-test:lists:epoch"]).unwrap();
    assert_eq!(epoch.len(), 16, "{epoch:?}");
    let ttl = ["--reason", "ours", "--ttl", "1h"];
    cli_ok(
        &a,
        &[&["blocklist", "add", "127.0.0.20"][..], &ttl].concat(),
    );
    eventually("written to Redis", &a, || {
        in_redis(&redis, "deny", "127.0.0.20/32")
    })
    .await;
    let expiry = || {
        redis
            .command(&["ZSCORE", "xgate-test:lists:expiry", "deny|127.0.0.20/32"])
            .unwrap()
    };
    assert!(expiry().parse::<u64>().is_ok(), "{:?}", expiry());

    // Redis loses its data and another node rebuilds the set first: a new
    // epoch, one entry of its own, and one that expired while nobody
    // reaped it (not in the expiry set, so only a resync deletes it).
    assert_eq!(redis.command(&["FLUSHALL"]).unwrap(), "+OK");
    for command in [
        &["SET", "xgate-test:lists:epoch", "another-node-s-epoch"][..],
        &[
            "HSET",
            "xgate-test:lists:deny",
            "127.0.0.21/32",
            r#"{"cidr":"127.0.0.21/32","reason":"theirs","added_at":1}"#,
        ],
        &[
            "HSET",
            "xgate-test:lists:deny",
            "127.0.0.22/32",
            r#"{"cidr":"127.0.0.22/32","added_at":1,"expires_at":2}"#,
        ],
    ] {
        assert!(redis.command(command).unwrap().starts_with(['+', ':']));
    }
    // A's connections drop; it reconnects and resyncs.
    drop_connections(&redis);
    eventually("resynced", &a, || syncs(&a) == 2).await;

    // Not the creator of the new epoch, A still writes its entry back
    // rather than dropping it, and takes the other node's.
    assert!(in_redis(&redis, "deny", "127.0.0.20/32"), "{}", a.log());
    let deny = listed(&a, "blocklist");
    assert!(deny.contains(&"127.0.0.20/32".into()), "{deny:?}");
    assert!(deny.contains(&"127.0.0.21/32".into()), "{deny:?}");
    assert!(!answered(listen, "127.0.0.20").await);
    assert!(!answered(listen, "127.0.0.21").await);
    // The expired entry is deleted from Redis, not applied.
    assert!(!in_redis(&redis, "deny", "127.0.0.22/32"));
    assert!(!deny.contains(&"127.0.0.22/32".into()), "{deny:?}");
    assert!(expiry().parse::<u64>().is_ok(), "{:?}", expiry());
    assert!(
        a.log().contains("shared=1 removed=0 pushed=1"),
        "{}",
        a.log()
    );

    // Same epoch: Redis wins. An entry deleted there while A was away is
    // removed from A, not written back.
    assert_eq!(
        redis
            .command(&["HDEL", "xgate-test:lists:deny", "127.0.0.21/32"])
            .unwrap(),
        ":1"
    );
    drop_connections(&redis);
    eventually("resynced again", &a, || syncs(&a) == 3).await;
    assert_eq!(listed(&a, "blocklist"), ["127.0.0.20/32"]);
    assert!(!in_redis(&redis, "deny", "127.0.0.21/32"));
    assert!(answered(listen, "127.0.0.21").await);
    assert!(
        a.log().contains("shared=1 removed=1 pushed=0"),
        "{}",
        a.log()
    );
}

#[tokio::test]
async fn a_change_whose_entry_names_another_cidr_is_refused() {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let a = Daemon::start(&config(listen, upstream.addr, &redis.url(), "a"), None);
    eventually("synced", &a, || syncs(&a) == 1).await;
    let publish = |message: &str| {
        let receivers = redis
            .command(&["PUBLISH", "xgate-test:lists:changes", message])
            .unwrap();
        assert_eq!(receivers, ":1", "A subscribed");
    };
    // A put for 127.0.0.30 carrying an entry for 127.0.0.31: neither.
    publish(
        r#"{"node":"b","op":"put","list":"deny","cidr":"127.0.0.30/32","entry":{"cidr":"127.0.0.31/32","added_at":1}}"#,
    );
    // A well-formed one after it: once it is applied, the first was read.
    publish(
        r#"{"node":"b","op":"put","list":"deny","cidr":"127.0.0.32/32","entry":{"cidr":"127.0.0.32/32","added_at":1}}"#,
    );
    eventually("the well-formed change", &a, || {
        listed(&a, "blocklist").contains(&"127.0.0.32/32".into())
    })
    .await;
    assert_eq!(listed(&a, "blocklist"), ["127.0.0.32/32"]);
    assert!(answered(listen, "127.0.0.31").await);
    assert!(!answered(listen, "127.0.0.32").await);
    assert!(
        a.log()
            .contains("cluster lists: ignored a malformed change"),
        "{}",
        a.log()
    );
    let metrics = a.admin_get("/metrics");
    assert!(
        metrics.contains("xgate_cluster_list_events_total{event=\"failed\"} 1"),
        "{metrics}"
    );
}
