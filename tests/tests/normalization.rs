//! Request identity end to end: every spelling of a path takes the route its
//! normal form takes and reaches the upstream in that form, over HTTP/1.1
//! and HTTP/2; what cannot be normalized is refused before any route sees
//! it; one authority per request; CONNECT, transfer codings and header
//! names with underscores.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use xgate_tests::{
    http::{send, RawResponse},
    ports::{any_port, free_port},
    process::Daemon,
    upstream::EchoUpstream,
};

/// Spellings of `/admin/users` that a path-normalizing server serves as
/// `/admin/users`: each must take the `/admin` route.
const EQUIVALENT: &[&str] = &[
    "/admin/users",
    "/public/../admin/users",
    "/public/%2e%2e/admin/users",
    "/public/%2E%2E/admin/users",
    "//admin/users",
    "/admin//users",
    "/%61dmin/users",
    "/./admin/users",
    "/public/./../admin/x/../users",
];

/// Paths that have no normal form: refused with 400 before routing.
const INVALID: &[&str] = &[
    "/..",
    "/../admin/users",
    "/public/../../admin/users",
    "/%2e%2e/admin/users",
    "/admin/%00/users",
    "/admin%zz/users",
    "/admin/users%",
    "/admin/users%4",
];

struct Setup {
    public: EchoUpstream,
    admin: EchoUpstream,
    internal: EchoUpstream,
    listen: SocketAddr,
    daemon: Daemon,
}

async fn setup(normalization: &str) -> Setup {
    let public = EchoUpstream::start(any_port(), "public").await.unwrap();
    let admin = EchoUpstream::start(any_port(), "admin").await.unwrap();
    let internal = EchoUpstream::start(any_port(), "internal").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             access_log: {{format: json, path: '{{dir}}/access.log'}}\n\
             {normalization}\n\
             upstreams:\n\
             \x20 public: {{targets: ['{}']}}\n\
             \x20 admins: {{targets: ['{}']}}\n\
             \x20 internal: {{targets: ['{}']}}\n\
             routes:\n\
             \x20 - {{name: catch-all, match: {{path_prefix: /}}, upstream: public}}\n\
             \x20 - {{name: admin, match: {{path_prefix: /admin}}, upstream: admins}}\n\
             \x20 - {{name: internal, match: {{hosts: [internal.example], path_prefix: /}}, upstream: internal}}\n",
            public.addr, admin.addr, internal.addr
        ),
        None,
    );
    Setup {
        public,
        admin,
        internal,
        listen,
        daemon,
    }
}

fn raw_get(target: &str, host: &str, extra: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
}

async fn h1(listen: SocketAddr, request: &str) -> RawResponse {
    send(listen, None, request).await.expect("an answer")
}

/// One HTTP/2 request with prior knowledge; `host` adds a `host` field
/// beside `:authority`.
async fn h2(listen: SocketAddr, uri: &str, host: Option<&str>) -> (StatusCode, serde_json::Value) {
    let stream = tokio::net::TcpStream::connect(listen).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(connection);
    let mut request = Request::builder().uri(uri);
    if let Some(host) = host {
        request = request.header("host", host);
    }
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        sender.send_request(request.body(Empty::<Bytes>::new()).unwrap()),
    )
    .await
    .expect("answered in time")
    .expect("h2 response");
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn every_spelling_takes_the_route_of_its_normal_form_over_http1_and_http2() {
    let s = setup("").await;
    for spelling in EQUIVALENT {
        let r = h1(s.listen, &raw_get(spelling, "www.example", "")).await;
        assert_eq!(r.status, 200, "{spelling}");
        let seen = r.json();
        assert_eq!(seen["upstream"], "admin", "HTTP/1.1 {spelling}");
        assert_eq!(
            seen["uri"], "/admin/users",
            "HTTP/1.1 {spelling}: the upstream gets the normal form"
        );

        let (status, seen) = h2(s.listen, &format!("http://www.example{spelling}"), None).await;
        assert_eq!(status, StatusCode::OK, "HTTP/2 {spelling}");
        assert_eq!(seen["upstream"], "admin", "HTTP/2 {spelling}");
        assert_eq!(seen["uri"], "/admin/users", "HTTP/2 {spelling}");
    }
    // The query is the client's own.
    let r = h1(
        s.listen,
        &raw_get("/public/../admin/users?next=/../x&a=%2e", "w", ""),
    )
    .await;
    assert_eq!(r.json()["uri"], "/admin/users?next=/../x&a=%2e");
    // Other escapes stay escaped (in upper case), and so does `%2F` by
    // default: it is data, not a separator, for the router and the target.
    let r = h1(s.listen, &raw_get("/public/a%2fb%3a", "w", "")).await;
    assert_eq!(
        (r.json()["upstream"].as_str(), r.json()["uri"].as_str()),
        (Some("public"), Some("/public/a%2Fb%3A"))
    );
    let r = h1(s.listen, &raw_get("/public/..%2Fadmin/users", "w", "")).await;
    assert_eq!(r.json()["upstream"], "public");

    // The access log has the path routing saw.
    let log_path = s.daemon.dir.path().join("access.log");
    let mut log = String::new();
    for _ in 0..100 {
        log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("\"/public/a%2Fb%3A\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let paths: Vec<String> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["path"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(
        paths.iter().all(|p| !p.contains("..") || p.contains("%2F")),
        "{paths:?}"
    );
    assert_eq!(
        paths.iter().filter(|p| *p == "/admin/users").count(),
        2 * EQUIVALENT.len() + 1,
        "each spelling twice, and the one with a query: {paths:?}"
    );
    let _ = (&s.public, &s.admin, &s.internal);
}

#[tokio::test]
async fn paths_without_a_normal_form_are_refused_over_http1_and_http2() {
    let s = setup("").await;
    for bad in INVALID {
        let r = h1(s.listen, &raw_get(bad, "www.example", "")).await;
        assert_eq!(r.status, 400, "HTTP/1.1 {bad}");
        let (status, _) = h2(s.listen, &format!("http://www.example{bad}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "HTTP/2 {bad}");
    }
    // A bare backslash is `%5C` by default: data, never a separator.
    let r = h1(s.listen, &raw_get("/public\\..\\admin/users", "w", "")).await;
    assert_eq!(r.json()["upstream"], "public");
    assert_eq!(r.json()["uri"], "/public%5C..%5Cadmin/users");
    let metrics = s.daemon.admin_get("/metrics");
    assert!(
        !metrics.contains("xgate_requests_total{route=\"admin\""),
        "no invalid path reached a route:\n{metrics}"
    );
}

#[tokio::test]
async fn escaped_slashes_and_merging_follow_the_config() {
    let s = setup("normalization: {escaped_slashes: decode, merge_slashes: false}").await;
    let r = h1(s.listen, &raw_get("/public/..%2Fadmin/users", "w", "")).await;
    assert_eq!(
        (r.json()["upstream"].as_str(), r.json()["uri"].as_str()),
        (Some("admin"), Some("/admin/users"))
    );
    let r = h1(s.listen, &raw_get("/public%5C..%5C..%5Cadmin", "w", "")).await;
    assert_eq!(r.status, 400, "climbs above the root once decoded");
    let r = h1(s.listen, &raw_get("//admin//users", "w", "")).await;
    assert_eq!(
        (r.json()["upstream"].as_str(), r.json()["uri"].as_str()),
        (Some("public"), Some("//admin//users"))
    );
    drop(s);

    let s = setup("normalization: {escaped_slashes: reject, forward: original}").await;
    assert_eq!(
        h1(s.listen, &raw_get("/public/a%2Fb", "w", ""))
            .await
            .status,
        400
    );
    assert_eq!(
        h1(s.listen, &raw_get("/public/../admin/users", "w", ""))
            .await
            .status,
        400,
        "forward: original refuses what it would have to change"
    );
    let r = h1(s.listen, &raw_get("/admin/users?x=/../", "w", "")).await;
    assert_eq!(r.json()["uri"], "/admin/users?x=/../");
}

#[tokio::test]
async fn one_authority_per_request() {
    let s = setup("").await;
    // Absolute-form: the target's authority is the request's, and Host
    // follows it (RFC 9112 §3.2.2).
    let r = h1(
        s.listen,
        &raw_get("http://public.example/x", "internal.example", ""),
    )
    .await;
    let seen = r.json();
    assert_eq!(seen["upstream"], "public");
    assert_eq!(seen["headers"]["host"], "public.example");
    assert_eq!(seen["headers"]["x-forwarded-host"], "public.example");
    assert_eq!(seen["uri"], "/x");
    let r = h1(
        s.listen,
        &raw_get("http://internal.example/x", "public.example", ""),
    )
    .await;
    assert_eq!(r.json()["upstream"], "internal");
    assert_eq!(r.json()["headers"]["host"], "internal.example");
    for bad in ["ftp://internal.example/x", "http://u@internal.example/x"] {
        assert_eq!(
            h1(s.listen, &raw_get(bad, "internal.example", ""))
                .await
                .status,
            400,
            "{bad}"
        );
    }
    for bad_host in [
        "internal.example:99999",
        "inter nal.example",
        "user@internal.example",
        "[::1",
        "a/b",
    ] {
        let r = h1(s.listen, &raw_get("/x", bad_host, "")).await;
        assert_eq!(r.status, 400, "Host: {bad_host}");
    }
    let r = h1(s.listen, &raw_get("/x", "Internal.Example.:8080", "")).await;
    assert_eq!(
        r.json()["upstream"],
        "internal",
        "case, port and a final dot do not matter"
    );

    // HTTP/2: `:authority` and a `host` that disagree are refused (RFC 9113
    // §8.3.1); agreeing ones route as one.
    let (status, _) = h2(
        s.listen,
        "http://public.example/x",
        Some("internal.example"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, seen) = h2(
        s.listen,
        "http://internal.example/x",
        Some("internal.example"),
    )
    .await;
    assert_eq!(
        (status, seen["upstream"].as_str()),
        (StatusCode::OK, Some("internal"))
    );
    let (status, seen) = h2(s.listen, "http://internal.example/x", None).await;
    assert_eq!(
        (status, seen["headers"]["host"].as_str()),
        (StatusCode::OK, Some("internal.example"))
    );
}

#[tokio::test]
async fn connect_transfer_codings_and_underscored_names() {
    let s = setup("").await;
    let connect = "CONNECT /admin/users HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n";
    assert_eq!(
        h1(s.listen, connect).await.status,
        405,
        "no route allows CONNECT"
    );
    let authority_form = "CONNECT internal.example:443 HTTP/1.1\r\nHost: internal.example:443\r\nConnection: close\r\n\r\n";
    assert_eq!(h1(s.listen, authority_form).await.status, 405);

    let gzip = "POST /x HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let r = h1(s.listen, gzip).await;
    assert_eq!(
        r.status, 501,
        "a coding xgate cannot take off is not passed on"
    );

    let r = h1(
        s.listen,
        &raw_get(
            "/x",
            "w",
            "Transfer_Encoding: chunked\r\nContent_Length: 5\r\nX-Fine: 1\r\n",
        ),
    )
    .await;
    let headers = &r.json()["headers"];
    assert!(
        headers.get("transfer_encoding").is_none() && headers.get("content_length").is_none(),
        "{headers}"
    );
    assert_eq!(headers["x-fine"], "1");
    drop(s);

    let s = setup("normalization: {headers_with_underscores: reject}").await;
    assert_eq!(
        h1(s.listen, &raw_get("/x", "w", "X_Api: 1\r\n"))
            .await
            .status,
        400
    );
    drop(s);
    let s = setup("normalization: {headers_with_underscores: allow}").await;
    assert_eq!(
        h1(s.listen, &raw_get("/x", "w", "X_Api: 1\r\n"))
            .await
            .json()["headers"]["x_api"],
        "1"
    );
}

#[tokio::test]
async fn a_route_that_names_connect_takes_it() {
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let _daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             upstreams: {{u: {{targets: ['{}']}}}}\n\
             routes:\n\
             \x20 - {{match: {{path_prefix: /}}, upstream: u}}\n\
             \x20 - {{match: {{path_prefix: /tunnel, methods: [CONNECT]}}, upstream: u}}\n",
            upstream.addr
        ),
        None,
    );
    let r = h1(
        listen,
        "CONNECT /tunnel HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n",
    )
    .await;
    // A 2xx to CONNECT has no body (RFC 9112 §6.3): the echo's name is in
    // its header.
    assert_eq!(
        (r.status, r.header("x-upstream")),
        (200, Some("u")),
        "{r:?}"
    );
    let r = h1(
        listen,
        "CONNECT /other HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 404, "a route for any method is no tunnel");
    let r = h1(
        listen,
        "CONNECT w:443 HTTP/1.1\r\nHost: w:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400, "authority-form: xgate is no forward proxy");
}
