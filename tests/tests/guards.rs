//! The access-phase guards end to end through the real binary:
//! ip-restriction (with the client a trusted proxy reports, and not the one
//! an untrusted client claims) and bot-detection (deny, allow, missing and
//! repeated User-Agent), with their metrics and access-log verdicts.

use std::{net::SocketAddr, time::Duration};

use serde_json::json;
use xgate_tests::{
    http::{send, RawResponse},
    ports::{any_port, free_port},
    process::{stderr, xgate, Daemon},
    upstream::EchoUpstream,
    TempDir,
};

async fn call(listen: SocketAddr, from: &str, path: &str, extra: &[&str]) -> RawResponse {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n");
    for line in extra {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let source = SocketAddr::new(from.parse().unwrap(), 0);
    send(listen, Some(source), &request)
        .await
        .expect("an answer")
}

/// The access log's lines once there are `count` of them.
async fn access_log(daemon: &Daemon, count: usize) -> Vec<serde_json::Value> {
    let path = daemon.dir.path().join("access.log");
    let mut lines = Vec::new();
    for _ in 0..200 {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        lines = log
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect();
        if lines.len() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        lines.len() >= count,
        "{} access log lines: {lines:#?}",
        lines.len()
    );
    lines
}

fn assert_metrics(daemon: &Daemon, lines: &[&str]) {
    let metrics = daemon.admin_get("/metrics");
    for line in lines {
        assert!(metrics.contains(line), "missing `{line}` in:\n{metrics}");
    }
}

#[tokio::test]
async fn ip_restriction_judges_the_client_a_trusted_proxy_reports() {
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             trusted_proxies: [127.0.0.2/32]\n\
             access_log: {{format: json, path: '{{dir}}/access.log'}}\n\
             upstreams: {{u: {{targets: ['{}']}}}}\n\
             routes:\n\
             \x20 - {{name: office, match: {{path_prefix: /office}}, upstream: u,\n\
             \x20    policies: [{{type: key-auth, anonymous: nobody}},\n\
             \x20               {{type: ip-restriction, allow: ['203.0.113.0/24', '2001:db8::/32', '127.0.0.3'],\n\
             \x20                 deny: ['203.0.113.66', '2001:db8:bad::/48'], status: 451, message: not from there}}]}}\n\
             \x20 - {{name: open, match: {{path_prefix: /open}}, upstream: u,\n\
             \x20    policies: [{{type: ip-restriction, deny: ['198.51.100.0/24']}}]}}\n\
             consumers: [{{username: nobody}}]\n",
            upstream.addr
        ),
        None,
    );

    // Through the trusted proxy: the client it reports is judged.
    let proxy = "127.0.0.2";
    let allowed = call(listen, proxy, "/office", &["X-Forwarded-For: 203.0.113.9"]).await;
    assert_eq!(allowed.status, 200);
    let denied = call(listen, proxy, "/office", &["X-Forwarded-For: 203.0.113.66"]).await;
    assert_eq!(denied.status, 451, "deny is checked before allow");
    assert_eq!(denied.json()["message"], "not from there");
    let elsewhere = call(listen, proxy, "/office", &["X-Forwarded-For: 192.0.2.1"]).await;
    assert_eq!(elsewhere.status, 451, "not in the allow list");
    let v6 = call(
        listen,
        proxy,
        "/office",
        &["X-Forwarded-For: 2001:db8:1::5"],
    )
    .await;
    assert_eq!(v6.status, 200);
    let v6_denied = call(
        listen,
        proxy,
        "/office",
        &["X-Forwarded-For: 2001:db8:bad::5"],
    )
    .await;
    assert_eq!(v6_denied.status, 451);
    let mapped = call(
        listen,
        proxy,
        "/office",
        &["X-Forwarded-For: ::ffff:203.0.113.66"],
    )
    .await;
    assert_eq!(mapped.status, 451, "a mapped address is its IPv4 client");
    // The proxy itself is not the client.
    let proxy_only = call(listen, proxy, "/office", &[]).await;
    assert_eq!(proxy_only.status, 451);

    // An untrusted client's claim is ignored: its own address is judged.
    let forged = call(
        listen,
        "127.0.0.4",
        "/office",
        &["X-Forwarded-For: 203.0.113.9"],
    )
    .await;
    assert_eq!(
        forged.status, 451,
        "a claim from an untrusted peer is not believed"
    );
    let direct = call(
        listen,
        "127.0.0.3",
        "/office",
        &["X-Forwarded-For: 203.0.113.66"],
    )
    .await;
    assert_eq!(direct.status, 200, "the allowed peer, whatever it claims");

    // A deny-only list lets everyone else in, with the default status.
    let open = call(listen, "127.0.0.4", "/open", &[]).await;
    assert_eq!(open.status, 200);
    let refused = call(listen, proxy, "/open", &["X-Forwarded-For: 198.51.100.7"]).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["message"], "your IP address is not allowed");

    assert_metrics(
        &daemon,
        &[
            "xgate_policy_decisions_total{route=\"office\",policy=\"ip-restriction\",result=\"allow\"} 3",
            "xgate_policy_decisions_total{route=\"office\",policy=\"ip-restriction\",result=\"deny\"} 6",
            "xgate_policy_decisions_total{route=\"open\",policy=\"ip-restriction\",result=\"allow\"} 1",
            "xgate_policy_decisions_total{route=\"open\",policy=\"ip-restriction\",result=\"deny\"} 1",
        ],
    );
    let lines = access_log(&daemon, 11).await;
    // Declared after key-auth, the access policy still runs first; a
    // refused request goes no further.
    assert_eq!(
        lines[0]["verdicts"],
        json!(["ip-restriction:allow", "key-auth:anonymous"])
    );
    assert_eq!(lines[1]["verdicts"], json!(["ip-restriction:deny"]));
    assert_eq!(lines[1]["status"], 451);
    assert_eq!(lines[10]["verdicts"], json!(["ip-restriction:deny"]));
}

#[tokio::test]
async fn bot_detection_refuses_by_user_agent() {
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             access_log: {{format: json, path: '{{dir}}/access.log'}}\n\
             upstreams: {{u: {{targets: ['{}']}}}}\n\
             routes:\n\
             \x20 - {{name: site, match: {{path_prefix: /site}}, upstream: u,\n\
             \x20    policies: [{{type: bot-detection, allow: ['Googlebot/'], deny: ['^BadClient/']}}]}}\n\
             \x20 - {{name: strict, match: {{path_prefix: /strict}}, upstream: u,\n\
             \x20    policies: [{{type: bot-detection, builtin: false, missing_user_agent: deny,\n\
             \x20                 status: 429, message: say who you are}}]}}\n",
            upstream.addr
        ),
        None,
    );
    let from = "127.0.0.1";
    let ua = |agent: &str| format!("User-Agent: {agent}");
    let browser = ua("Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0");

    let ok = call(listen, from, "/site", &[&browser]).await;
    assert_eq!(ok.status, 200);
    // The built-in list.
    let scanner = call(
        listen,
        from,
        "/site",
        &[&ua("sqlmap/1.7.2#stable (https://sqlmap.org)")],
    )
    .await;
    assert_eq!(scanner.status, 403);
    assert_eq!(scanner.json()["message"], "forbidden");
    let crawler = call(
        listen,
        from,
        "/site",
        &[&ua("Mozilla/5.0 (compatible; bingbot/2.0)")],
    )
    .await;
    assert_eq!(crawler.status, 403);
    // `allow` wins over the built-in list.
    let good_bot = call(
        listen,
        from,
        "/site",
        &[&ua(
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        )],
    )
    .await;
    assert_eq!(good_bot.status, 200);
    // The route's own deny list; asked twice, the second from the cache.
    for _ in 0..2 {
        let own = call(listen, from, "/site", &[&ua("BadClient/3.1")]).await;
        assert_eq!(own.status, 403);
    }
    let missing = call(listen, from, "/site", &[]).await;
    assert_eq!(missing.status, 200, "missing_user_agent: allow by default");
    let twice = call(listen, from, "/site", &[&browser, &ua("sqlmap/1.7")]).await;
    assert_eq!(twice.status, 400);
    assert_eq!(twice.json()["message"], "more than one User-Agent header");

    let strict_missing = call(listen, from, "/strict", &[]).await;
    assert_eq!(strict_missing.status, 429);
    assert_eq!(strict_missing.json()["message"], "say who you are");
    let strict_crawler = call(listen, from, "/strict", &[&ua("bingbot/2.0")]).await;
    assert_eq!(strict_crawler.status, 200, "builtin: false");

    assert_metrics(
        &daemon,
        &[
            "xgate_policy_decisions_total{route=\"site\",policy=\"bot-detection\",result=\"allow\"} 3",
            "xgate_policy_decisions_total{route=\"site\",policy=\"bot-detection\",result=\"deny\"} 5",
            "xgate_policy_decisions_total{route=\"strict\",policy=\"bot-detection\",result=\"deny\"} 1",
            "xgate_policy_decisions_total{route=\"strict\",policy=\"bot-detection\",result=\"allow\"} 1",
        ],
    );
    let lines = access_log(&daemon, 10).await;
    assert_eq!(lines[0]["verdicts"], json!(["bot-detection:allow"]));
    assert_eq!(lines[1]["verdicts"], json!(["bot-detection:deny"]));
    assert_eq!(lines[1]["status"], 403);
    assert_eq!(lines[7]["verdicts"], json!(["bot-detection:deny"]));
    assert_eq!(lines[7]["status"], 400);
}

#[test]
fn broken_guard_configs_are_refused_with_their_paths() {
    let dir = TempDir::new("guards-config");
    let path = dir.path().join("xgate.yaml");
    std::fs::write(
        &path,
        "listeners: [{address: '127.0.0.1:1'}]\n\
         upstreams: {u: {targets: ['127.0.0.1:2']}}\n\
         routes:\n\
         \x20 - {match: {path_prefix: /}, upstream: u, policies: [\n\
         \x20     {type: ip-restriction, allow: ['10.0.0.1/8', 'office']},\n\
         \x20     {type: bot-detection, deny: ['(unclosed']}]}\n",
    )
    .unwrap();
    let out = xgate(&["-c", path.to_str().unwrap(), "validate"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    for expected in [
        "routes[0].policies[0].allow[0]: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8 or 10.0.0.1/32?",
        "routes[0].policies[0].allow[1]: invalid CIDR 'office'",
        "routes[0].policies[1].deny[0]: '(unclosed' is not a valid regex",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
}
