//! Upstreams end to end: the real `xgate` binary balancing, retrying and
//! timing out against real (and deliberately broken) servers on loopback.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use xgate_tests::{
    bad_upstream::{BadUpstream, Misbehaviour, ScriptedUpstream},
    http::{get, send, KeepAlive, RawResponse},
    ports::{any_port, free_port},
    process::{stderr, upstreams_config, Daemon},
    upstream::EchoUpstream,
};

/// `['a', 'b']`.
fn list(targets: &[SocketAddr]) -> String {
    let quoted: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    format!("[{}]", quoted.join(", "))
}

fn upstream_of(response: &RawResponse) -> String {
    assert_eq!(response.status, 200, "{response:?}");
    response.json()["upstream"].as_str().unwrap().to_string()
}

fn request(method: &str, path: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn weighted_round_robin_gives_exact_shares() {
    let a = EchoUpstream::start(any_port(), "a").await.unwrap();
    let b = EchoUpstream::start(any_port(), "b").await.unwrap();
    let (_daemon, gw) = Daemon::with_upstreams(&[(
        "rr",
        format!(
            "{{targets: ['{}', {{address: '{}', weight: 3}}]}}",
            a.addr, b.addr
        ),
    )]);
    let mut order = String::new();
    for _ in 0..40 {
        order.push_str(&upstream_of(&get(gw, "/rr/x", &[]).await));
    }
    assert_eq!(order.matches('a').count(), 10, "{order}");
    assert_eq!(order.matches('b').count(), 30, "{order}");
    // Smooth: the light target is spread out, never two in a row.
    assert!(!order.contains("aa"), "{order}");
}

#[tokio::test]
async fn least_conn_steers_away_from_a_busy_target() {
    let mut a = ScriptedUpstream::start("a", 200, Duration::ZERO)
        .await
        .unwrap();
    let mut b = ScriptedUpstream::start("b", 200, Duration::ZERO)
        .await
        .unwrap();
    let (_daemon, gw) = Daemon::with_upstreams(&[(
        "lc",
        format!(
            "{{targets: {}, balancer: least_conn}}",
            list(&[a.addr, b.addr])
        ),
    )]);
    // One request held open on whichever target it reaches.
    let held = tokio::spawn(async move { get(gw, "/lc/hold", &[]).await });
    let busy = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            Some(_) = a.arrivals.recv() => "a",
            Some(_) = b.arrivals.recv() => "b",
        }
    })
    .await
    .expect("the held request reached a target");
    let idle = if busy == "a" { "b" } else { "a" };
    // Round robin would send half of these to the busy target.
    for _ in 0..10 {
        assert_eq!(upstream_of(&get(gw, "/lc/x", &[]).await), idle);
    }
    a.release();
    b.release();
    assert_eq!(upstream_of(&held.await.unwrap()), busy);
    // Both idle again: shared.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(upstream_of(&get(gw, "/lc/x", &[]).await));
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[tokio::test]
async fn consistent_hash_keeps_a_client_ip_or_header_on_one_target() {
    let echoes = [
        EchoUpstream::start(any_port(), "a").await.unwrap(),
        EchoUpstream::start(any_port(), "b").await.unwrap(),
        EchoUpstream::start(any_port(), "c").await.unwrap(),
    ];
    let targets = list(&echoes.iter().map(|e| e.addr).collect::<Vec<_>>());
    let (_daemon, gw) = Daemon::with_upstreams(&[
        (
            "ip",
            format!("{{targets: {targets}, balancer: consistent_hash}}"),
        ),
        (
            "user",
            format!("{{targets: {targets}, balancer: consistent_hash, hash_on: 'header:X-User'}}"),
        ),
    ]);
    let from = |i: u8| Some(SocketAddr::from(([127, 0, 0, i], 0)));
    let plain = |path: &str| request("GET", path, "");

    // By client IP: 20 sources, 3 requests each.
    let mut by_source = BTreeMap::new();
    for i in 2..22u8 {
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(upstream_of(
                &send(gw, from(i), &plain("/ip/x")).await.unwrap(),
            ));
        }
        assert!(seen.iter().all(|s| *s == seen[0]), "source {i}: {seen:?}");
        by_source.insert(i, seen[0].clone());
    }
    let spread: std::collections::BTreeSet<_> = by_source.values().collect();
    assert!(spread.len() >= 2, "20 sources all on {spread:?}");

    // By header: 20 users from one source, 3 requests each.
    let mut users = BTreeMap::new();
    for u in 0..20 {
        let header = format!("X-User: user-{u}");
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(upstream_of(&get(gw, "/user/x", &[header.as_str()]).await));
        }
        assert!(seen.iter().all(|s| *s == seen[0]), "user {u}: {seen:?}");
        users.insert(u, seen[0].clone());
    }
    let spread: std::collections::BTreeSet<_> = users.values().collect();
    assert!(spread.len() >= 2, "20 users all on {spread:?}");

    // Without the header: the client IP decides, exactly as on /ip/ (the
    // same targets make the same table).
    for i in 2..22u8 {
        let seen = upstream_of(&send(gw, from(i), &plain("/user/x")).await.unwrap());
        assert_eq!(seen, by_source[&i], "source {i} without X-User");
    }
}

#[tokio::test]
async fn p2c_ewma_prefers_the_fast_target() {
    let fast = ScriptedUpstream::start("fast", 200, Duration::ZERO)
        .await
        .unwrap();
    let slow = ScriptedUpstream::start("slow", 200, Duration::from_millis(300))
        .await
        .unwrap();
    let (_daemon, gw) = Daemon::with_upstreams(&[(
        "p2c",
        format!(
            "{{targets: {}, balancer: p2c_ewma}}",
            list(&[slow.addr, fast.addr])
        ),
    )]);
    let mut counts = BTreeMap::new();
    for _ in 0..20 {
        *counts
            .entry(upstream_of(&get(gw, "/p2c/x", &[]).await))
            .or_insert(0) += 1;
    }
    // Both start at the same estimate, so the first request may go either
    // way; once the slow target has answered in 300 ms it is not picked
    // again for a long while (round robin would give it 10 of 20). One more
    // is allowed in case a loaded machine makes a fast answer slow once.
    assert!(counts.get("slow").copied().unwrap_or(0) <= 2, "{counts:?}");
    assert!(slow.requests() <= 2, "{}", slow.requests());
    assert!(fast.requests() >= 18, "{}", fast.requests());
}

#[tokio::test]
async fn a_dead_target_is_retried_on_a_live_one() {
    let live = EchoUpstream::start(any_port(), "live").await.unwrap();
    let dead = free_port();
    let targets = list(&[dead, live.addr]);
    let (_daemon, gw) = Daemon::with_upstreams(&[
        ("retrying", format!("{{targets: {targets}}}")),
        ("single", format!("{{targets: {targets}, retries: 0}}")),
    ]);
    // Round robin sends every other request to the dead target first.
    for _ in 0..10 {
        assert_eq!(upstream_of(&get(gw, "/retrying/x", &[]).await), "live");
    }
    // A connect failure is retried whatever the method, body included.
    for _ in 0..4 {
        let body = "x".repeat(5000);
        let r = send(gw, None, &request("POST", "/retrying/upload", &body))
            .await
            .unwrap();
        assert_eq!(upstream_of(&r), "live");
        assert_eq!(r.json()["body_bytes"], 5000);
    }
    // The same upstream without retries: half fail.
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(get(gw, "/single/x", &[]).await.status);
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 502).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        5,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn a_503_is_retried_for_get_but_not_for_post() {
    let failing = ScriptedUpstream::start("failing", 503, Duration::ZERO)
        .await
        .unwrap();
    let live = EchoUpstream::start(any_port(), "live").await.unwrap();
    // Passive health off: it would eject the failing target after five
    // 503s in a row, and this test is about the retry rules.
    let (_daemon, gw) = Daemon::with_upstreams(&[(
        "flaky",
        format!(
            "{{targets: {}, retry_on_status: [503], \
               health_checks: {{passive: {{enabled: false}}}}}}",
            list(&[failing.addr, live.addr])
        ),
    )]);
    for _ in 0..10 {
        assert_eq!(upstream_of(&get(gw, "/flaky/x", &[]).await), "live");
    }
    let hits_from_gets = failing.requests();
    assert_eq!(hits_from_gets, 5, "every other GET met the 503 first");
    // POST is not idempotent: the 503 goes back to the client. Nor is a PUT
    // with a body retried (it was streamed and cannot be replayed).
    for (method, body) in [("POST", ""), ("PUT", "data")] {
        let mut statuses = Vec::new();
        for _ in 0..10 {
            statuses.push(
                send(gw, None, &request(method, "/flaky/x", body))
                    .await
                    .unwrap()
                    .status,
            );
        }
        assert_eq!(
            statuses.iter().filter(|&&s| s == 503).count(),
            5,
            "{method}: {statuses:?}"
        );
    }
}

#[tokio::test]
async fn an_exhausted_retry_budget_lets_failures_through() {
    let live = EchoUpstream::start(any_port(), "live").await.unwrap();
    let dead = free_port();
    // No share of traffic, and a reserve of 0.05/s × 60 s = 3 retries.
    let (_daemon, gw) = Daemon::with_upstreams(&[(
        "budget",
        format!(
            "{{targets: {}, retries: 1, retry_budget: {{ratio: 0, min_per_second: 0.05, window: 60s}}}}",
            list(&[dead, live.addr])
        ),
    )]);
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(get(gw, "/budget/x", &[]).await.status);
    }
    // Requests 1, 3, 5, 7, 9 meet the dead target first; the first three
    // are retried, then the budget is spent and the 502 comes through.
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 502, 200, 502, 200]);
}

#[tokio::test]
async fn http2_targets_are_spoken_to_in_http2() {
    let echo = EchoUpstream::start(any_port(), "echo").await.unwrap();
    let (_daemon, gw) = Daemon::with_upstreams(&[
        (
            "h2",
            format!("{{targets: ['{}'], protocol: http2}}", echo.addr),
        ),
        ("h1", format!("{{targets: ['{}']}}", echo.addr)),
    ]);
    let r = get(gw, "/h2/x?q=1", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["version"], "HTTP/2.0");
    assert_eq!(r.json()["path"], "/x");
    assert_eq!(r.json()["headers"]["x-forwarded-host"], "gateway.test");
    let body = "y".repeat(70_000); // more than one HTTP/2 flow-control window
    let r = send(gw, None, &request("POST", "/h2/upload", &body))
        .await
        .unwrap();
    assert_eq!(r.json()["version"], "HTTP/2.0");
    assert_eq!(r.json()["body_bytes"], 70_000);
    assert_eq!(get(gw, "/h1/x", &[]).await.json()["version"], "HTTP/1.1");
}

#[tokio::test]
async fn misbehaving_upstreams_give_502_and_silent_ones_504_never_a_hang() {
    let reset = BadUpstream::start(Misbehaviour::Reset).await.unwrap();
    let garbage = BadUpstream::start(Misbehaviour::Garbage).await.unwrap();
    let close = BadUpstream::start(Misbehaviour::CloseBeforeHeaders)
        .await
        .unwrap();
    let silent = BadUpstream::start(Misbehaviour::Silent).await.unwrap();
    // A header timeout longer than the test client's 10 s: a hang would
    // fail the request instead of producing a 504.
    let (_daemon, gw) = Daemon::with_upstreams(&[
        (
            "reset",
            format!("{{targets: ['{}'], timeout: 30s}}", reset.addr),
        ),
        (
            "garbage",
            format!("{{targets: ['{}'], timeout: 30s}}", garbage.addr),
        ),
        (
            "close",
            format!("{{targets: ['{}'], timeout: 30s}}", close.addr),
        ),
        (
            "silent",
            format!("{{targets: ['{}'], timeout: 500ms}}", silent.addr),
        ),
    ]);
    for (route, server) in [("reset", &reset), ("garbage", &garbage), ("close", &close)] {
        for _ in 0..3 {
            let r = get(gw, &format!("/{route}/x"), &[]).await;
            assert_eq!(r.status, 502, "{route}: {r:?}");
            assert_eq!(
                r.json()["message"],
                "upstream error",
                "{route}: no detail leaks"
            );
        }
        // Not retried: the request had reached the target.
        assert_eq!(server.connections(), 3, "{route}");
    }
    let r = get(gw, "/silent/x", &[]).await;
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.json()["message"], "upstream timed out");
}

/// What a target says about its body's length reaches the client once,
/// and not at all on a 204 (RFC 9110 §8.6); a response with a length and
/// chunked is read as chunked, and its connection is not used again.
#[tokio::test]
async fn response_lengths_reach_the_client_once_or_not_at_all() {
    let twice = BadUpstream::start(Misbehaviour::Answer(
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
    ))
    .await
    .unwrap();
    let listed = BadUpstream::start(Misbehaviour::Answer(
        "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello",
    ))
    .await
    .unwrap();
    let no_content = BadUpstream::start(Misbehaviour::Answer(
        "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
    ))
    .await
    .unwrap();
    let both = BadUpstream::start(Misbehaviour::Answer(
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n\
         5\r\nhello\r\n0\r\n\r\n",
    ))
    .await
    .unwrap();
    let (_daemon, gw) = Daemon::with_upstreams(&[
        ("twice", format!("{{targets: {}}}", list(&[twice.addr]))),
        ("listed", format!("{{targets: {}}}", list(&[listed.addr]))),
        ("none", format!("{{targets: {}}}", list(&[no_content.addr]))),
        ("both", format!("{{targets: {}}}", list(&[both.addr]))),
    ]);
    let lengths = |r: &RawResponse| -> Vec<String> {
        r.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.clone())
            .collect()
    };
    for path in ["/twice/x", "/listed/x"] {
        let r = get(gw, path, &[]).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(lengths(&r), ["5"], "{path}");
        assert_eq!(r.body, b"hello", "{path}");
    }
    let r = get(gw, "/none/x", &[]).await;
    assert_eq!(r.status, 204);
    assert!(lengths(&r).is_empty(), "{r:?}");

    // Two requests on one client connection are served by one worker, which
    // would take the pooled connection again.
    let raw = "GET /both/1 HTTP/1.1\r\nHost: gateway.test\r\n\r\n\
               GET /both/2 HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n";
    let r = send(gw, None, raw).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(lengths(&r).is_empty(), "{r:?}");
    assert_eq!(both.connections(), 2, "not reused after length and chunked");
}

#[tokio::test]
async fn a_stalled_body_is_cut_off_after_the_read_timeout() {
    let sized = BadUpstream::start(Misbehaviour::StallBody { chunked: false })
        .await
        .unwrap();
    let chunked = BadUpstream::start(Misbehaviour::StallBody { chunked: true })
        .await
        .unwrap();
    let (_daemon, gw) = Daemon::with_upstreams(&[
        (
            "sized",
            format!("{{targets: ['{}'], read_timeout: 500ms}}", sized.addr),
        ),
        (
            "chunked",
            format!("{{targets: ['{}'], read_timeout: 500ms}}", chunked.addr),
        ),
    ]);
    // The client's own limit is 10 s: without the read timeout these time
    // out instead of ending.
    let r = get(gw, "/sized/x", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("100"));
    assert_eq!(
        r.body, b"0123456789",
        "truncated: 10 of 100 bytes, then closed"
    );

    let error = send(gw, None, &request("GET", "/chunked/x", ""))
        .await
        .expect_err("a chunked body without its last chunk");
    assert_eq!(
        error.kind(),
        std::io::ErrorKind::InvalidData,
        "closed without the terminating chunk, not hung: {error}"
    );
}

/// A reload rebuilds only the upstreams whose config changed: one that did
/// not keeps its pooled connection (and with it its retry budget and
/// balancer state, which live beside the pool). All requests go over one
/// client connection, so one proxy worker and one of its pools serves them.
#[tokio::test]
async fn a_reload_keeps_the_connections_of_an_unchanged_upstream() {
    let users = EchoUpstream::start(any_port(), "users").await.unwrap();
    let other = EchoUpstream::start(any_port(), "other").await.unwrap();
    let users_config = format!("{{targets: ['{}']}}", users.addr);
    let (daemon, gw) = Daemon::with_upstreams(&[("users", users_config.clone())]);
    let mut client = KeepAlive::connect(gw).await.unwrap();
    for _ in 0..3 {
        assert_eq!(upstream_of(&client.get("/users/x").await), "users");
    }
    assert_eq!(users.connections(), 1, "one pooled connection");

    // Another upstream and its route: nothing about `users` changed.
    let out = daemon.reload_with(&upstreams_config(
        gw,
        &[
            ("users", users_config.clone()),
            ("other", format!("{{targets: ['{}']}}", other.addr)),
        ],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    for _ in 0..3 {
        assert_eq!(upstream_of(&client.get("/users/x").await), "users");
    }
    assert_eq!(upstream_of(&client.get("/other/x").await), "other");
    assert_eq!(
        users.connections(),
        1,
        "the pooled connection outlived the reload"
    );

    // `users` itself changes: a new upstream, new connections.
    let out = daemon.reload_with(&upstreams_config(
        gw,
        &[(
            "users",
            format!("{{targets: ['{}'], timeout: 20s}}", users.addr),
        )],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(upstream_of(&client.get("/users/x").await), "users");
    assert_eq!(users.connections(), 2, "a changed upstream starts afresh");
    assert_eq!(client.get("/other/x").await.status, 404, "removed");
}
