//! Upstream health end to end: the real `xgate` binary against real test
//! upstreams on loopback. A killed target is ejected (passive) and comes
//! back when restarted (active check), a hung one is ejected by timeouts,
//! circuit breakers shed load with 503 at once, and an operator forces
//! targets down and up with `xgate upstreams`.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use xgate_tests::{
    bad_upstream::{BadUpstream, Misbehaviour, ScriptedUpstream},
    http::get,
    ports::any_port,
    process::{stderr, stdout, upstreams_config, Daemon},
    tls::{server_config, TestCa},
    upstream::EchoUpstream,
    TempDir,
};

/// Waiting for something the daemon does in the background: generous, the
/// machine may be busy.
const PATIENCE: Duration = Duration::from_secs(60);

/// `xgate upstreams ls NAME --json`: the target's entry.
fn target_status(daemon: &Daemon, upstream: &str, target: SocketAddr) -> serde_json::Value {
    let out = daemon.cli(&["upstreams", "ls", upstream, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    status["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == target.to_string())
        .unwrap_or_else(|| panic!("{target} not in {status}"))
        .clone()
}

fn metric_line(daemon: &Daemon, name: &str, upstream: &str, target: SocketAddr) -> String {
    let metrics = daemon.admin_get("/metrics");
    let prefix = format!("{name}{{upstream=\"{upstream}\",target=\"{target}\"}} ");
    metrics
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in:\n{metrics}"))
        .to_string()
}

/// Which echo upstream answered (`-` for anything but a 200).
async fn who(gw: SocketAddr) -> (u16, String) {
    let response = get(gw, "/pool/x", &[]).await;
    let name = match response.status {
        200 => response.json()["upstream"].as_str().unwrap().to_string(),
        _ => "-".to_string(),
    };
    (response.status, name)
}

/// Three targets under steady sequential load; one is killed between two
/// requests. Bound: zero failed requests. A request that finds the dead
/// target is retried on another one (connect failures are retried once by
/// default, and at most one of three targets is ejected), so the client
/// never sees the failure; after `consecutive_failures` (3) of them the
/// target is ejected and no request goes there at all. Restarted, it passes
/// its next active check, which ends the ejection at once.
#[tokio::test]
async fn a_killed_target_is_ejected_without_failed_requests_and_returns_when_restarted() {
    let a = EchoUpstream::start(any_port(), "a").await.unwrap();
    let b = EchoUpstream::start(any_port(), "b").await.unwrap();
    let c = EchoUpstream::start(any_port(), "c").await.unwrap();
    let c_addr = c.addr;
    let (daemon, gw) = Daemon::with_upstreams(&[(
        "pool",
        format!(
            "{{targets: ['{}', '{}', '{}'], health_checks: {{\
               passive: {{consecutive_failures: 3, base_ejection_time: 10m, max_ejection_time: 10m}}, \
               active: {{path: /healthz, interval: 500ms, timeout: 400ms, \
                         healthy_threshold: 1, unhealthy_threshold: 1000}}}}}}",
            a.addr, b.addr, c.addr
        ),
    )]);

    let mut statuses = Vec::new();
    let mut seen_c = 0;
    for _ in 0..30 {
        let (status, name) = who(gw).await;
        statuses.push(status);
        seen_c += usize::from(name == "c");
    }
    assert!(seen_c > 0, "round robin reaches c");
    c.stop().await;

    // Load goes on until c is ejected (bounded in count and time).
    let started = Instant::now();
    let mut ejected = None;
    for i in 0..2000 {
        let (status, name) = who(gw).await;
        statuses.push(status);
        assert_ne!(name, "c");
        if i % 5 == 4 {
            let state = target_status(&daemon, "pool", c_addr);
            if state["state"] == "ejected" {
                ejected = Some(state);
                break;
            }
        }
        assert!(started.elapsed() < PATIENCE, "c never ejected");
    }
    let state = ejected.expect("ejected within 2000 requests");
    assert_eq!(state["takes_traffic"], false, "{state}");
    let reason = state["reason"].as_str().unwrap();
    assert!(
        reason.contains("after 3 consecutive connect failures"),
        "{reason}"
    );
    assert!(state["ejected_until"].is_string(), "{state}");
    assert!(daemon
        .log()
        .contains("target ejected after 3 consecutive connect failures"));
    assert_eq!(
        metric_line(&daemon, "xgate_upstream_target_healthy", "pool", c_addr),
        format!("xgate_upstream_target_healthy{{upstream=\"pool\",target=\"{c_addr}\"}} 0")
    );
    assert!(metric_line(
        &daemon,
        "xgate_upstream_target_ejections_total",
        "pool",
        c_addr
    )
    .ends_with(" 1"));
    let table = stdout(&daemon.cli(&["upstreams"]));
    assert!(
        table.lines().any(|l| l.contains(&c_addr.to_string())
            && l.contains("ejected")
            && l.contains("consecutive connect failures")),
        "{table}"
    );

    // Restarted on the same port: the next active check brings it back,
    // long before its ten-minute ejection is over.
    let c = EchoUpstream::start(c_addr, "c").await.unwrap();
    let started = Instant::now();
    loop {
        let (status, name) = who(gw).await;
        statuses.push(status);
        if name == "c" {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "c never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(target_status(&daemon, "pool", c_addr)["state"], "healthy");
    assert!(daemon.log().contains("ejected target back in service"));

    let failed: Vec<&u16> = statuses.iter().filter(|&&s| s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        statuses.len()
    );
    drop((a, b, c));
}

/// A target that accepts and never answers: each request to it waits for
/// the upstream's `timeout` (504); after two in a row it is ejected and
/// the following requests all succeed.
#[tokio::test]
async fn a_hung_target_is_ejected_by_timeouts() {
    let a = EchoUpstream::start(any_port(), "a").await.unwrap();
    let b = EchoUpstream::start(any_port(), "b").await.unwrap();
    let hung = BadUpstream::start(Misbehaviour::Silent).await.unwrap();
    let (daemon, gw) = Daemon::with_upstreams(&[(
        "pool",
        format!(
            "{{targets: ['{}', '{}', '{}'], timeout: 300ms, \
               health_checks: {{passive: {{consecutive_failures: 2}}}}}}",
            a.addr, b.addr, hung.addr
        ),
    )]);
    let mut timeouts = 0;
    for _ in 0..12 {
        let (status, _) = who(gw).await;
        assert!(status == 200 || status == 504, "{status}");
        timeouts += usize::from(status == 504);
    }
    assert_eq!(timeouts, 2, "two timeouts eject it");
    let state = target_status(&daemon, "pool", hung.addr);
    assert_eq!(state["state"], "ejected", "{state}");
    assert!(
        state["reason"]
            .as_str()
            .unwrap()
            .contains("after 2 consecutive timeouts"),
        "{state}"
    );
    for _ in 0..20 {
        assert_eq!(who(gw).await.0, 200);
    }
    assert!(hung.connections() >= 1);
}

/// `circuit_breakers.max_requests: 2`: with two requests held by the
/// target, the third is answered 503 at once (it is not queued), logged
/// and counted; once they end, requests pass again.
#[tokio::test]
async fn over_max_requests_a_request_is_shed_with_503_at_once() {
    let mut slow = ScriptedUpstream::start("slow", 200, Duration::ZERO)
        .await
        .unwrap();
    let (daemon, gw) = Daemon::with_upstreams(&[(
        "pool",
        format!(
            "{{targets: ['{}'], circuit_breakers: {{max_requests: 2}}}}",
            slow.addr
        ),
    )]);
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(gw, "/pool/hold", &[]).await }))
        .collect();
    for _ in 0..2 {
        tokio::time::timeout(PATIENCE, slow.arrivals.recv())
            .await
            .expect("held request arrived");
    }
    // Were it queued, it would wait as long as the held ones: for ever.
    let shed = tokio::time::timeout(PATIENCE, get(gw, "/pool/now", &[]))
        .await
        .expect("answered while the others are held");
    assert_eq!(shed.status, 503, "{shed:?}");
    assert_eq!(shed.json()["message"], "upstream overloaded", "{shed:?}");
    assert!(daemon.log().contains("shedding load with 503"));
    let metrics = daemon.admin_get("/metrics");
    assert!(
        metrics.contains(
            "xgate_upstream_shed_requests_total{upstream=\"pool\",limit=\"max_requests\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics
        .contains("xgate_upstream_circuit_breaker{upstream=\"pool\",limit=\"max_requests\"} 2"));

    slow.release();
    for request in held {
        assert_eq!(request.await.unwrap().status, 200);
    }
    assert_eq!(get(gw, "/pool/after", &[]).await.status, 200);
    assert_eq!(
        slow.requests(),
        3,
        "the shed request never reached the target"
    );
}

/// `circuit_breakers.max_connections: 2` (HTTP/1.1): with two
/// connections busy, a request that needs a third is answered 503 at once;
/// idle connections never block a new one (one is closed to make room).
#[tokio::test]
async fn over_max_connections_a_request_is_shed_and_idle_ones_make_room() {
    let mut slow = ScriptedUpstream::start("slow", 200, Duration::ZERO)
        .await
        .unwrap();
    let (daemon, gw) = Daemon::with_upstreams(&[(
        "pool",
        format!(
            "{{targets: ['{}'], circuit_breakers: {{max_connections: 2}}}}",
            slow.addr
        ),
    )]);
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(gw, "/pool/hold", &[]).await }))
        .collect();
    for _ in 0..2 {
        tokio::time::timeout(PATIENCE, slow.arrivals.recv())
            .await
            .expect("held request arrived");
    }
    let shed = tokio::time::timeout(PATIENCE, get(gw, "/pool/now", &[]))
        .await
        .expect("answered while the others are held");
    assert_eq!(shed.status, 503, "{shed:?}");
    let metrics = daemon.admin_get("/metrics");
    assert!(
        metrics.contains(
            "xgate_upstream_shed_requests_total{upstream=\"pool\",limit=\"max_connections\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics
        .contains("xgate_upstream_circuit_breaker{upstream=\"pool\",limit=\"max_connections\"} 2"));
    slow.release();
    for request in held {
        assert_eq!(request.await.unwrap().status, 200);
    }
    // Both connections idle now, in whichever workers' pools: any worker
    // may still open one.
    for _ in 0..8 {
        assert_eq!(get(gw, "/pool/after", &[]).await.status, 200);
    }
}

/// `circuit_breakers.max_pending_requests: 1`: while one request waits for
/// its connection (a target that accepts TCP and never answers the TLS
/// handshake), the next one that needs a connection is answered 503 at once.
#[tokio::test]
async fn over_max_pending_requests_a_request_is_shed() {
    let silent = BadUpstream::start(Misbehaviour::Silent).await.unwrap();
    let (daemon, gw) = Daemon::with_upstreams(&[(
        "pool",
        format!(
            "{{targets: ['{}'], connect_timeout: 30s, tls: {{verify: false}}, \
               circuit_breakers: {{max_pending_requests: 1}}}}",
            silent.addr
        ),
    )]);
    let waiting = tokio::spawn(async move { get(gw, "/pool/first", &[]).await });
    let started = Instant::now();
    while silent.connections() < 1 {
        assert!(started.elapsed() < PATIENCE, "the first connect never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shed = tokio::time::timeout(PATIENCE, get(gw, "/pool/second", &[]))
        .await
        .expect("answered while the first one waits");
    assert_eq!(shed.status, 503, "{shed:?}");
    assert_eq!(silent.connections(), 1, "no second connect");
    let metrics = daemon.admin_get("/metrics");
    assert!(
        metrics.contains(
            "xgate_upstream_shed_requests_total{upstream=\"pool\",limit=\"max_pending_requests\"} 1"
        ),
        "{metrics}"
    );
    waiting.abort();
}

/// `xgate upstreams set-state`: down takes a target out (even of panic
/// mode), up and auto hand it back; unknown names are clear errors; the
/// forced state survives a reload of unchanged config, and a reload that
/// removes a target removes its series.
#[tokio::test]
async fn an_operator_forces_targets_down_and_up() {
    let a = EchoUpstream::start(any_port(), "a").await.unwrap();
    let b = EchoUpstream::start(any_port(), "b").await.unwrap();
    let definition = format!("{{targets: ['{}', '{}']}}", a.addr, b.addr);
    let listen = xgate_tests::ports::free_port();
    let config = upstreams_config(listen, &[("pool", definition)]);
    let daemon = Daemon::start(&config, None);
    let gw = listen;

    let out = daemon.cli(&[
        "upstreams",
        "set-state",
        "pool",
        &a.addr.to_string(),
        "down",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("forced_down"), "{}", stdout(&out));
    for _ in 0..6 {
        assert_eq!(who(gw).await.1, "b");
    }
    let state = target_status(&daemon, "pool", a.addr);
    assert_eq!(state["reason"], "forced down by the operator");
    assert_eq!(
        metric_line(&daemon, "xgate_upstream_target_healthy", "pool", a.addr),
        format!(
            "xgate_upstream_target_healthy{{upstream=\"pool\",target=\"{}\"}} 0",
            a.addr
        )
    );

    // Unknown names: errors that say what exists.
    let out = daemon.cli(&["upstreams", "set-state", "nope", &a.addr.to_string(), "up"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no upstream \"nope\" (upstreams: pool)"),
        "{}",
        stderr(&out)
    );
    let out = daemon.cli(&["upstreams", "set-state", "pool", "127.0.0.1:1", "up"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("upstream pool has no target 127.0.0.1:1"),
        "{}",
        stderr(&out)
    );
    let out = daemon.cli(&["upstreams", "set-state", "pool", "a-host", "up"]);
    assert!(!out.status.success(), "not an address");
    let out = daemon.cli(&[
        "upstreams",
        "set-state",
        "pool",
        &a.addr.to_string(),
        "sideways",
    ]);
    assert!(!out.status.success(), "not a state");

    // Reloaded, unchanged: still forced down.
    let out = daemon.reload_with(&config);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        target_status(&daemon, "pool", a.addr)["state"],
        "forced_down"
    );

    // Both down: nothing to send to.
    let out = daemon.cli(&[
        "upstreams",
        "set-state",
        "pool",
        &b.addr.to_string(),
        "down",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let response = get(gw, "/pool/x", &[]).await;
    assert_eq!(response.status, 503, "{response:?}");

    let out = daemon.cli(&["upstreams", "set-state", "pool", &a.addr.to_string(), "up"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(who(gw).await.1, "a");
    let out = daemon.cli(&[
        "upstreams",
        "set-state",
        "pool",
        &b.addr.to_string(),
        "auto",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..4 {
        seen.push(who(gw).await.1);
    }
    assert!(
        seen.contains(&"a".to_string()) && seen.contains(&"b".to_string()),
        "{seen:?}"
    );

    // A reload that drops b: its series go with it.
    let out = daemon.reload_with(&upstreams_config(
        listen,
        &[("pool", format!("{{targets: ['{}']}}", a.addr))],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    let metrics = daemon.admin_get("/metrics");
    let gone = format!("target=\"{}\"", b.addr);
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("xgate_upstream_target_") && l.contains(&gone)),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "xgate_upstream_target_healthy{{upstream=\"pool\",target=\"{}\"}} 1",
        a.addr
    )));
}

/// Active checks of a TLS upstream go over TLS (a plain-text probe would
/// fail every time against it), run without any traffic, and stop when a
/// reload removes the upstream.
#[tokio::test]
async fn active_checks_speak_tls_and_stop_when_the_upstream_is_removed() {
    let ca = TestCa::new();
    let dir = TempDir::new("health-tls");
    let ca_file = ca.write_pem(&dir.path().join("ca.pem"));
    let leaf = ca.leaf(&["127.0.0.1"], dir.path(), "target");
    let target = EchoUpstream::start_tls(any_port(), "tls", server_config(&leaf, None))
        .await
        .unwrap();
    let other = EchoUpstream::start(any_port(), "other").await.unwrap();
    let listen = xgate_tests::ports::free_port();
    let secure = format!(
        "{{targets: ['{}'], tls: {{ca_file: '{}'}}, health_checks: {{active: {{\
           path: /healthz, interval: 200ms, timeout: 150ms, unhealthy_threshold: 1}}}}}}",
        target.addr,
        ca_file.display()
    );
    let plain = format!("{{targets: ['{}']}}", other.addr);
    let daemon = Daemon::start(
        &upstreams_config(listen, &[("secure", secure), ("plain", plain.clone())]),
        None,
    );
    let started = Instant::now();
    while target.connections() < 5 {
        assert!(started.elapsed() < PATIENCE, "no checks arrive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let state = target_status(&daemon, "secure", target.addr);
    assert_eq!(state["state"], "healthy", "{state}");
    assert_eq!(state["failed_checks"], 0, "{state}");
    assert_eq!(state["reason"], "passes its health checks");

    let out = daemon.reload_with(&upstreams_config(listen, &[("plain", plain)]));
    assert!(out.status.success(), "{}", stderr(&out));
    // A check already under way may still land; none after it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_reload = target.connections();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(target.connections(), after_reload, "checks go on");
    let out = daemon.cli(&["upstreams", "ls", "secure"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no upstream \"secure\" (upstreams: plain)"),
        "{}",
        stderr(&out)
    );
}
