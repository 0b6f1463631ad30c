//! The opa policy through the real binary: one Rego file decided in
//! process and by an OPA-compatible server (regorus behind OPA's REST API,
//! `xgate_tests::policy_server`), compared case by case; the server down,
//! slow and answering garbage under fail-closed and fail-open; a broken
//! Rego file refused with its file and line; a changed policy picked up on
//! reload.

use std::{path::Path, time::Duration};

use xgate_tests::{
    http::{send, RawResponse},
    policy_server::{Behaviour, PolicyServer},
    ports::{any_port, free_port},
    process::{stderr, xgate, Daemon},
    upstream::EchoUpstream,
    TempDir,
};

const POLICY: &str = r#"package xgate.authz

default allow := false

allow if input.request.http.method == "GET"

allow if "admins" in input.consumer.groups

allow if {
    input.request.http.method == "POST"
    input.request.http.parsed_body.owner == input.consumer.username
}

decision := {"allow": true, "headers": {"x-authz": "granted"}} if allow

decision := {
    "allow": false,
    "status": 451,
    "headers": {"x-authz-reason": "policy"},
    "message": sprintf("%s may not %s", [who, input.request.http.method]),
} if not allow

default who := "anonymous"

who := input.consumer.username
"#;

fn request(method: &str, path: &str, extra: &[&str], body: &str) -> String {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for line in extra {
        r.push_str(line);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.push_str(body);
    r
}

async fn call(
    listen: std::net::SocketAddr,
    method: &str,
    path: &str,
    extra: &[&str],
    body: &str,
) -> RawResponse {
    send(listen, None, &request(method, path, extra, body))
        .await
        .expect("an answer")
}

fn config(listen: std::net::SocketAddr, upstream: std::net::SocketAddr, routes: &str) -> String {
    format!(
        "listeners: [{{address: '{listen}'}}]\n\
         consumers:\n\
         \x20 - {{username: alice, groups: [admins], keys: [{{key: alice-key-0123456789}}]}}\n\
         \x20 - {{username: bob, groups: [users], keys: [{{key: bob-key-0123456789}}]}}\n\
         upstreams: {{u: {{targets: ['{upstream}']}}}}\n\
         routes:\n{routes}"
    )
}

fn route(name: &str, opa: &str) -> String {
    format!(
        "\x20 - {{name: {name}, match: {{path_prefix: /{name}}}, upstream: u,\n\
         \x20    policies: [{{type: key-auth, anonymous: bob}}, {{type: opa, {opa}}}]}}\n"
    )
}

#[tokio::test]
async fn embedded_and_remote_decide_alike_and_failures_follow_the_failure_mode() {
    let dir = TempDir::new("opa");
    let rego = dir.path().join("authz.rego");
    std::fs::write(&rego, POLICY).unwrap();
    let server = PolicyServer::start(&[rego.as_path()], None).await;
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let remote = |failure: &str| {
        format!(
            "decision: xgate/authz/decision, include_parsed_json_body: true, failure_mode: {failure}, \
             server: {{url: '{}', timeout: 300ms}}",
            server.url()
        )
    };
    let routes = [
        route(
            "embedded",
            &format!(
                "decision: xgate/authz/decision, include_parsed_json_body: true, policy_files: ['{}']",
                rego.display()
            ),
        ),
        route("remote", &remote("closed")),
        route("open", &remote("open")),
    ]
    .concat();
    let daemon = Daemon::start(&config(listen, upstream.addr, &routes), None);

    // (method, key, body, expected status)
    let alice = "apikey: alice-key-0123456789";
    let cases: [(&str, &[&str], &str, u16); 5] = [
        ("GET", &[], "", 200),
        ("DELETE", &[], "", 451),
        ("DELETE", &[alice], "", 200),
        ("POST", &[], r#"{"owner": "bob"}"#, 200),
        ("POST", &[], r#"{"owner": "carol"}"#, 451),
    ];
    for (method, extra, body, status) in cases {
        let embedded = call(listen, method, "/embedded/x", extra, body).await;
        let remote = call(listen, method, "/remote/x", extra, body).await;
        let case = format!("{method} {extra:?} {body}");
        assert_eq!(embedded.status, status, "embedded: {case}");
        assert_eq!(remote.status, status, "remote: {case}");
        if status == 200 {
            for r in [&embedded, &remote] {
                let seen = r.json();
                assert_eq!(seen["headers"]["x-authz"], "granted", "{case}: {seen}");
                assert_eq!(
                    seen["body_bytes"],
                    body.len(),
                    "{case}: the upstream gets the body the policy read"
                );
            }
        } else {
            for r in [&embedded, &remote] {
                assert_eq!(r.header("x-authz-reason"), Some("policy"), "{case}");
                assert_eq!(
                    r.json()["message"],
                    format!("bob may not {method}"),
                    "{case}"
                );
            }
        }
    }
    // Keep-alive: the policy server saw the remote requests on fewer
    // connections than requests.
    assert!(server.requests() >= cases.len());
    assert!(
        server.connections() < server.requests(),
        "{} connections for {} requests",
        server.connections(),
        server.requests()
    );

    // Garbage, slow, down: closed refuses with 503, open lets through.
    server.set(Behaviour::Garbage, Duration::ZERO);
    assert_eq!(
        call(listen, "DELETE", "/remote/x", &[], "").await.status,
        503
    );
    assert_eq!(call(listen, "DELETE", "/open/x", &[], "").await.status, 200);
    server.set(Behaviour::Slow, Duration::from_secs(3));
    let slow = call(listen, "GET", "/remote/x", &[], "").await;
    assert_eq!(slow.status, 503);
    assert_eq!(slow.json()["message"], "authorization service unavailable");
    assert_eq!(call(listen, "GET", "/open/x", &[], "").await.status, 200);
    server.stop();
    assert_eq!(call(listen, "GET", "/remote/x", &[], "").await.status, 503);
    assert_eq!(call(listen, "DELETE", "/open/x", &[], "").await.status, 200);
    // The embedded policy does not care.
    assert_eq!(
        call(listen, "DELETE", "/embedded/x", &[], "").await.status,
        451
    );

    let metrics = daemon.admin_get("/metrics");
    for line in [
        "xgate_opa_failures_total{decision=\"xgate/authz/decision\",mode=\"remote\",failure_mode=\"closed\"} 3",
        "xgate_opa_failures_total{decision=\"xgate/authz/decision\",mode=\"remote\",failure_mode=\"open\"} 3",
    ] {
        assert!(metrics.contains(line), "missing `{line}` in:\n{metrics}");
    }
    assert!(daemon.log().contains("opa: no decision"), "logged");
}

#[tokio::test]
async fn decisions_are_cached_by_key_and_policies_reload_with_the_config() {
    let dir = TempDir::new("opa-reload");
    let rego = dir.path().join("authz.rego");
    std::fs::write(&rego, POLICY).unwrap();
    let server = PolicyServer::start(&[rego.as_path()], None).await;
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let routes = [
        route(
            "embedded",
            &format!(
                "decision: xgate/authz/allow, policy_files: ['{}']",
                rego.display()
            ),
        ),
        route(
            "cached",
            &format!(
                "decision: xgate/authz/allow, server: {{url: '{}'}}, \
                 cache: {{key: [consumer, method], ttl: 1h, max_entries: 100}}",
                server.url()
            ),
        ),
    ]
    .concat();
    let yaml = config(listen, upstream.addr, &routes);
    let daemon = Daemon::start(&yaml, None);

    for _ in 0..3 {
        assert_eq!(call(listen, "GET", "/cached/a", &[], "").await.status, 200);
    }
    assert_eq!(server.requests(), 1, "one decision for three equal keys");
    assert_eq!(
        call(listen, "DELETE", "/cached/a", &[], "").await.status,
        403
    );
    assert_eq!(server.requests(), 2, "another method is another key");

    // A changed policy file is a changed policy on reload. (The policy is
    // pure: its memo answers the second DELETE; the reload must not keep
    // that decision.)
    for _ in 0..2 {
        assert_eq!(
            call(listen, "DELETE", "/embedded/a", &[], "").await.status,
            403
        );
    }
    std::fs::write(
        &rego,
        POLICY.replace("== \"GET\"", "in {\"GET\", \"DELETE\"}"),
    )
    .unwrap();
    let out = daemon.reload_with(&yaml);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        call(listen, "DELETE", "/embedded/a", &[], "").await.status,
        200
    );

    // A broken one is refused with its file and line; the old one serves.
    std::fs::write(
        &rego,
        "package xgate.authz\n\nallow if {\n  input.x ==\n}\n",
    )
    .unwrap();
    let out = daemon.reload_with(&yaml);
    assert!(!out.status.success());
    let text = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    let at = format!("{}:5:", rego.display());
    assert!(text.contains(&at), "no `{at}` in:\n{text}");
    assert!(text.contains("routes[0].policies[1]"), "{text}");
    assert_eq!(
        call(listen, "DELETE", "/embedded/a", &[], "").await.status,
        200
    );

    let file = dir.path().join("xgate.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let out = xgate(&["validate", "-c", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&at), "{}", stderr(&out));
    drop(server);
    let _ = Path::new(&rego);
}

/// The policy server's Envoy `ext_authz` endpoint (the remote-OPA peer in
/// `xgate-bench policies`): the original request's method, path, query and
/// headers make an input shaped as xgate's; 200 allows, the policy's
/// status, headers and message refuse.
#[tokio::test]
async fn the_policy_server_answers_envoy_ext_authz_checks() {
    use xgate_tests::policy_server::{EXT_AUTHZ_DECISION, EXT_AUTHZ_PREFIX};
    let dir = TempDir::new("opa-ext-authz");
    let rego = dir.path().join("authz.rego");
    std::fs::write(&rego, POLICY).unwrap();
    let shape = dir.path().join("shape.rego");
    std::fs::write(
        &shape,
        "package envoy\n\n\
         default allow := false\n\n\
         allow if {\n\
         \x20 input.request.http.host == \"api.test\"\n\
         \x20 input.request.http.path == \"/orders/7\"\n\
         \x20 input.request.http.querystring.page == \"2\"\n\
         \x20 input.request.http.headers[\"x-team\"] == \"ops\"\n\
         \x20 not input.request.http.headers[\"x-ext-authz-decision\"]\n\
         }\n",
    )
    .unwrap();
    let server = PolicyServer::start(&[rego.as_path(), shape.as_path()], None).await;
    let check = |method: &str, path: &str, decision: &str, extra: &[&str]| {
        let mut headers = vec![format!("{EXT_AUTHZ_DECISION}: {decision}")];
        headers.extend(extra.iter().map(|h| h.to_string()));
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        request(method, &format!("{EXT_AUTHZ_PREFIX}{path}"), &headers, "")
    };

    // Allowed: 200 and the decision's headers.
    let allowed = send(
        server.addr,
        None,
        &check("GET", "/orders/7", "xgate/authz/decision", &[]),
    )
    .await
    .unwrap();
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.header("x-authz"), Some("granted"));
    // Denied: the decision's status, headers and message.
    let denied = send(
        server.addr,
        None,
        &check("DELETE", "/orders/7", "xgate/authz/decision", &[]),
    )
    .await
    .unwrap();
    assert_eq!(denied.status, 451);
    assert_eq!(denied.header("x-authz-reason"), Some("policy"));
    assert_eq!(denied.json()["message"], "anonymous may not DELETE");

    // The input's shape: host without port, path after the prefix, the
    // query parsed, the headers (not the decision's).
    let shaped = |path: &str, extra: &'static [&'static str]| {
        let request = check("GET", path, "envoy/allow", extra);
        async move { send(server.addr, None, &request).await.unwrap().status }
    };
    assert_eq!(shaped("/orders/7?page=2", &["x-team: ops"]).await, 200);
    assert_eq!(shaped("/orders/7?page=2", &["x-team: dev"]).await, 403);
    assert_eq!(shaped("/orders/7?page=3", &["x-team: ops"]).await, 403);
    assert_eq!(shaped("/orders/8?page=2", &["x-team: ops"]).await, 403);
    let denied = send(
        server.addr,
        None,
        &check("GET", "/orders/7?page=2", "envoy/allow", &[]),
    )
    .await
    .unwrap();
    assert_eq!(denied.json()["message"], "forbidden by policy");

    // A check that names no decision is a client error.
    let unnamed = send(
        server.addr,
        None,
        &request("GET", &format!("{EXT_AUTHZ_PREFIX}/orders/7"), &[], ""),
    )
    .await
    .unwrap();
    assert_eq!(unnamed.status, 400);
}
