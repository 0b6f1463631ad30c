//! The admin API is on its Unix socket only: none of its paths is served on
//! a client listener, whatever the method. With no route for them the route
//! table answers 404; with a catch-all route they go to the upstream like
//! any other path. Either way nothing changes in the daemon. (Who may use
//! the socket itself: tests/privileges.rs.)

use xgate_tests::{
    http::{send, RawResponse},
    ports::{any_port, free_port},
    process::{catch_all_config, stderr, stdout, Daemon},
    upstream::EchoUpstream,
};

/// Every admin endpoint, with a body where it takes one.
const ADMIN_REQUESTS: &[(&str, &str, &str)] = &[
    ("GET", "/status", ""),
    ("POST", "/reload", ""),
    (
        "POST",
        "/takeover",
        r#"{"socket": "/tmp/xgate-stolen.sock"}"#,
    ),
    ("GET", "/log-level", ""),
    ("PUT", "/log-level", r#"{"level": "trace"}"#),
    ("GET", "/blocklist", ""),
    ("POST", "/blocklist", r#"{"cidr": "198.51.100.0/24"}"#),
    ("DELETE", "/blocklist/198.51.100.0/24", ""),
    (
        "POST",
        "/allowlist",
        r#"{"cidr": "0.0.0.0/0", "force": true}"#,
    ),
    ("GET", "/bans", ""),
    ("GET", "/upstreams", ""),
    (
        "PUT",
        "/upstreams/u/targets/{target}/state",
        r#"{"state": "down"}"#,
    ),
    ("GET", "/oauth2/refresh-tokens", ""),
    ("GET", "/metrics", ""),
];

fn request(method: &str, path: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

async fn through_listener(
    listen: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> RawResponse {
    send(listen, None, &request(method, path, body))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// The upstream's targets as the admin API shows them.
fn targets(daemon: &Daemon) -> serde_json::Value {
    let out = daemon.cli(&["upstreams", "ls", "u", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let upstream: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    upstream["targets"].clone()
}

/// Nothing an admin request would have changed has changed.
fn unchanged(daemon: &Daemon, targets_before: &serde_json::Value) {
    let status = daemon.status();
    assert_eq!(status["blocklist_entries"], 0, "{status}");
    assert_eq!(status["allowlist_entries"], 0, "{status}");
    assert_eq!(status["reloads"], 0, "{status}");
    assert_eq!(stdout(&daemon.cli(&["log-level"])).trim(), "info");
    assert_eq!(&targets(daemon), targets_before, "a target's state changed");
}

#[tokio::test]
async fn admin_paths_on_a_client_listener_hit_the_route_table() {
    let upstream = EchoUpstream::start(any_port(), "api").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             upstreams: {{u: {{targets: ['{}']}}}}\n\
             routes: [{{match: {{path_prefix: /api/}}, upstream: u}}]\n",
            upstream.addr
        ),
        None,
    );
    let before = targets(&daemon);
    for (method, path, body) in ADMIN_REQUESTS {
        let path = &path.replace("{target}", &upstream.addr.to_string());
        let response = through_listener(listen, method, path, body).await;
        let text = String::from_utf8_lossy(&response.body);
        assert_eq!(response.status, 404, "{method} {path}: {text}");
        assert!(text.contains("no route matched"), "{method} {path}: {text}");
        assert!(
            !text.contains("uptime_secs") && !text.contains("\"level\""),
            "{method} {path} answered by the admin API: {text}"
        );
    }
    assert_eq!(upstream.connections(), 0);
    unchanged(&daemon, &before);
    daemon.stop();
}

#[tokio::test]
async fn admin_paths_under_a_catch_all_route_go_upstream() {
    let upstream = EchoUpstream::start(any_port(), "api").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(&catch_all_config(listen, upstream.addr), None);
    let before = targets(&daemon);
    for (method, path, body) in ADMIN_REQUESTS {
        let path = &path.replace("{target}", &upstream.addr.to_string());
        let response = through_listener(listen, method, path, body).await;
        assert_eq!(response.status, 200, "{method} {path}");
        let echoed = response.json();
        assert_eq!(echoed["upstream"], "api", "{method} {path}: {echoed}");
        assert_eq!(echoed["path"], *path, "{echoed}");
    }
    unchanged(&daemon, &before);
    daemon.stop();
}
