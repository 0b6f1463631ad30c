//! The proxy core end to end with the real binary: routing precedence and
//! rewriting, forwarding headers and trusted proxies, request strictness,
//! limits, the JSON access log, reloads under load and graceful drain.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use xgate_tests::{
    http::{get, send},
    ports::{any_port, free_port},
    process::{catch_all_config, stderr, Daemon},
    upstream::EchoUpstream,
};

fn request(path: &str, host: &str, extra: &[&str]) -> String {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for line in extra {
        r.push_str(line);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

#[tokio::test]
async fn routes_match_on_host_path_method_and_headers_with_rewrites() {
    let a = EchoUpstream::start(any_port(), "a").await.unwrap();
    let b = EchoUpstream::start(any_port(), "b").await.unwrap();
    let listen = free_port();
    let _daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             upstreams: {{a: {{targets: ['{}']}}, b: {{targets: ['{}']}}}}\n\
             routes:\n\
             \x20 - {{name: default, match: {{path_prefix: /}}, upstream: a}}\n\
             \x20 - {{name: admin-host, match: {{hosts: [admin.example.com], path_prefix: /}}, upstream: b}}\n\
             \x20 - {{name: user, match: {{path_regex: '/users/(?P<id>[0-9]+)'}}, upstream: b, rewrite: '/v2/users/{{id}}'}}\n\
             \x20 - {{name: writes, match: {{path_prefix: /items, methods: [POST]}}, upstream: b}}\n\
             \x20 - {{name: canary, match: {{path_prefix: /items, headers: [{{name: x-canary, value: '1'}}]}}, upstream: b}}\n",
            a.addr, b.addr
        ),
        None,
    );
    let via =
        |r: &xgate_tests::http::RawResponse| r.json()["upstream"].as_str().unwrap().to_string();
    let r = send(listen, None, &request("/anything", "www.example.com", &[]))
        .await
        .unwrap();
    assert_eq!(via(&r), "a");
    let r = send(
        listen,
        None,
        &request("/anything", "admin.example.com:443", &[]),
    )
    .await
    .unwrap();
    assert_eq!(via(&r), "b");
    let r = send(listen, None, &request("/users/42?full=1", "x", &[]))
        .await
        .unwrap();
    assert_eq!(
        (via(&r).as_str(), r.json()["uri"].as_str().unwrap()),
        ("b", "/v2/users/42?full=1")
    );
    let r = send(listen, None, &request("/users/abc", "x", &[]))
        .await
        .unwrap();
    assert_eq!(
        via(&r),
        "a",
        "regex does not match: falls back to the prefix /"
    );
    let post = "POST /items HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_eq!(via(&send(listen, None, post).await.unwrap()), "b");
    assert_eq!(
        via(&send(listen, None, &request("/items", "x", &[]))
            .await
            .unwrap()),
        "a"
    );
    assert_eq!(
        via(
            &send(listen, None, &request("/items", "x", &["X-Canary: 1"]))
                .await
                .unwrap()
        ),
        "b"
    );
}

#[tokio::test]
async fn forwarding_headers_request_ids_and_trusted_proxies() {
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             trusted_proxies: [127.0.0.2/32]\n\
             upstreams: {{u: {{targets: ['{}']}}}}\n\
             routes: [{{match: {{path_prefix: /}}, upstream: u}}]\n",
            upstream.addr
        ),
        None,
    );
    let from = |ip: &str| Some(SocketAddr::new(ip.parse().unwrap(), 0));
    let claims = [
        "X-Forwarded-For: 203.0.113.9",
        "X-Request-Id: trace-me",
        "Forwarded: for=203.0.113.9",
    ];

    // An untrusted client's claims are replaced.
    let r = send(listen, from("127.0.0.3"), &request("/", "gw.test", &claims))
        .await
        .unwrap();
    let seen = &r.json()["headers"];
    assert_eq!(seen["x-forwarded-for"], "127.0.0.3");
    assert_eq!(
        seen["forwarded"],
        "for=127.0.0.3;proto=http;host=\"gw.test\""
    );
    let id = seen["x-request-id"].as_str().unwrap();
    assert_eq!(id.len(), 32, "a fresh id, not the client's");
    assert_eq!(
        r.header("x-request-id"),
        Some(id),
        "the id is returned to the client"
    );

    // A trusted proxy's are kept and extended.
    let r = send(listen, from("127.0.0.2"), &request("/", "gw.test", &claims))
        .await
        .unwrap();
    let seen = &r.json()["headers"];
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.2");
    assert_eq!(
        seen["forwarded"],
        "for=203.0.113.9, for=127.0.0.2;proto=http;host=\"gw.test\""
    );
    assert_eq!(seen["x-request-id"], "trace-me");

    // The blocklist applies to the client a trusted proxy reports.
    let out = daemon.cli(&["blocklist", "add", "203.0.113.9"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = send(listen, from("127.0.0.2"), &request("/", "gw.test", &claims))
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["message"], "forbidden");
    // ... but a direct client cannot get someone else banned or unbanned.
    let r = send(listen, from("127.0.0.3"), &request("/", "gw.test", &claims))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

/// A chunked upload of `chunks` one-byte chunks, each with a 4000-byte
/// chunk extension.
fn chunked_with_extensions(chunks: usize) -> String {
    let mut raw = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
                   Connection: close\r\n\r\n"
        .to_string();
    for _ in 0..chunks {
        raw.push_str(&format!("1;e={}\r\na\r\n", "x".repeat(4000)));
    }
    raw.push_str("0\r\n\r\n");
    raw
}

#[tokio::test]
async fn ambiguous_and_oversized_requests_are_refused() {
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let _daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             limits: {{max_uri_bytes: 64, max_body_bytes: 1000}}\n\
             upstreams: {{u: {{targets: ['{}']}}}}\n\
             routes:\n\
             \x20 - {{match: {{path_prefix: /}}, upstream: u}}\n\
             \x20 - {{match: {{path_prefix: /small}}, upstream: u, max_body_bytes: 10}}\n",
            upstream.addr
        ),
        None,
    );
    let status = |raw: String| async move {
        match send(listen, None, &raw).await {
            Ok(r) => r.status,
            Err(e) => panic!("no response to {raw:?}: {e}"),
        }
    };
    let cases = [
        ("CL + TE", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n", 400),
        ("TE + CL", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\nConnection: close\r\n\r\n0\r\n\r\n", 400),
        ("duplicate CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc", 400),
        ("conflicting CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd", 400),
        ("invalid CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\nConnection: close\r\n\r\nabc", 400),
        ("TE not chunked last", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\nConnection: close\r\n\r\n", 400),
        ("obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\nConnection: close\r\n\r\n", 400),
        ("invalid header name", "GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\nConnection: close\r\n\r\n", 400),
        ("bare CR", "GET / HTTP/1.1\r\nHost: x\rX-A: b\r\nConnection: close\r\n\r\n", 400),
        ("bare LF", "GET / HTTP/1.1\r\nHost: x\r\nX-A: b\nConnection: close\r\n\r\n", 400),
        ("no Host", "GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
        ("long target", &format!("GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "a".repeat(100)), 414),
        ("declared body over the route limit", "POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world", 413),
        ("declared body over the global limit", &format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\nConnection: close\r\n\r\n{}", "x".repeat(1001)), 413),
        ("chunked body over the limit", "POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n6\r\nhello \r\n6\r\nworld!\r\n0\r\n\r\n", 413),
        ("body within the limit", "POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello", 200),
        ("chunk extensions over 16 KiB in all", &chunked_with_extensions(5), 400),
        ("chunk extensions within 16 KiB", &chunked_with_extensions(4), 200),
    ];
    for (name, raw, expected) in cases {
        assert_eq!(status(raw.to_string()).await, expected, "{name}");
    }
}

/// A chunked body whose trailer section has a line ended by a bare LF: a
/// parser that takes LF for a line end and one that does not would put the
/// next request in different places. It is refused, the connection closes,
/// and the request pipelined behind it is neither answered nor left hanging.
#[tokio::test]
async fn a_bare_lf_in_a_trailer_section_is_refused_and_the_connection_closes() {
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let _daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             upstreams: {{h1: {{targets: ['{0}']}}, h2: {{targets: ['{0}'], protocol: http2}}}}\n\
             routes:\n\
             \x20 - {{match: {{path_prefix: /h1/}}, upstream: h1}}\n\
             \x20 - {{match: {{path_prefix: /h2/}}, upstream: h2}}\n",
            upstream.addr
        ),
        None,
    );
    let cases = ["/h1/", "/h2/"]
        .into_iter()
        .flat_map(|path| ["\n", "x-a: 1\n\r\n", "x-a: 1\r\n\n"].map(|t| (path, t)));
    for (path, trailers) in cases {
        let raw = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
             1\r\na\r\n0\r\n{trailers}GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        // `send` reads until the connection closes, within a bound.
        let r = send(listen, None, &raw)
            .await
            .unwrap_or_else(|e| panic!("{path} {trailers:?}: no answer and close: {e}"));
        // Whatever the target speaks: the body broke on the client's side
        // (an HTTP/2 target sees only a reset stream, but the failure is
        // kept where the forwarding path finds it).
        assert_eq!(r.status, 400, "{path} {trailers:?}");
        assert_eq!(r.header("connection"), Some("close"), "{path} {trailers:?}");
        assert!(
            r.json()["message"].is_string(),
            "{path} {trailers:?}: one answer, nothing for the pipelined request"
        );
    }
}

#[tokio::test]
async fn json_access_log_has_a_line_per_request_including_rejections() {
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             access_log: {{format: json, path: '{{dir}}/access.log'}}\n\
             upstreams: {{u: {{targets: ['{}']}}}}\n\
             routes: [{{name: api, match: {{path_prefix: /api/}}, upstream: u}}]\n",
            upstream.addr
        ),
        None,
    );
    let ok = get(listen, "/api/x", &[]).await;
    let missing = get(listen, "/nope", &[]).await;
    // A head the server refuses itself never becomes a request, but is
    // logged all the same (once its answer is out: the wait is bounded).
    let malformed = send(listen, None, &request("/api/x", "a", &["Host: b"]))
        .await
        .unwrap();
    assert_eq!(malformed.status, 400);
    let mut log = String::new();
    for _ in 0..100 {
        log = std::fs::read_to_string(daemon.dir.path().join("access.log")).unwrap();
        if log.lines().count() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert_eq!(lines[2]["status"], 400, "{}", lines[2]);
    assert_eq!(lines[2]["rejection"], "malformed_head");
    assert_eq!(
        lines[2]["detail"],
        "malformed request head: more than one Host header"
    );
    assert_eq!(lines[2]["listener"], listen.to_string());
    assert_eq!(lines[2]["client_ip"], "127.0.0.1");
    assert!(lines[2]["method"].is_null() && lines[2]["route"].is_null());
    assert_eq!(lines[0]["route"], "api");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["upstream_target"], upstream.addr.to_string());
    assert_eq!(lines[0]["request_id"], ok.header("x-request-id").unwrap());
    assert_eq!(lines[0]["client_ip"], "127.0.0.1");
    assert!(lines[0]["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(lines[1]["status"], 404);
    assert_eq!(lines[1]["rejection"], "no_route");
    assert_eq!(
        lines[1]["request_id"],
        missing.header("x-request-id").unwrap()
    );

    assert!(
        lines[0]["upstream_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{}",
        lines[0]
    );
    assert!(lines[1]["upstream_ms"].is_null(), "no upstream for a 404");

    // And the metrics saw both, by route and status.
    let metrics = daemon.admin_get("/metrics");
    for line in [
        "xgate_requests_total{route=\"api\",method=\"GET\",status=\"200\",consumer=\"-\"} 1",
        "xgate_requests_total{route=\"-\",method=\"GET\",status=\"404\",consumer=\"-\"} 1",
        "xgate_request_duration_seconds_count{route=\"api\"} 1",
    ] {
        assert!(metrics.contains(line), "missing `{line}` in:\n{metrics}");
    }
}

/// With `buffer_bytes`, lines wait in memory (here the flush interval is
/// longer than the test) and are written when the config they were logged
/// under is replaced, and at shutdown: none is lost.
#[tokio::test]
async fn buffered_access_log_writes_its_lines_on_reload_and_on_shutdown() {
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let config = |route: &str| {
        format!(
            "listeners: [{{address: '{listen}'}}]\n\
             access_log: {{format: json, path: '{{dir}}/access.log', buffer_bytes: 1048576, flush_interval: 1m}}\n\
             upstreams: {{u: {{targets: ['{}']}}}}\n\
             routes: [{{name: {route}, match: {{path_prefix: /}}, upstream: u}}]\n",
            upstream.addr
        )
    };
    let daemon = Daemon::start(&config("first"), None);
    let path = daemon.dir.path().join("access.log");
    let lines = || json_lines(&path);
    for i in 0..3 {
        assert_eq!(get(listen, &format!("/a/{i}"), &[]).await.status, 200);
    }
    assert!(lines().is_empty(), "held in the buffer: {:?}", lines());

    // The reload replaces the logger; the old one writes its lines once
    // its last connection is gone.
    let out = daemon.reload_with(&config("second"));
    assert!(out.status.success(), "{out:?}");
    let mut written = Vec::new();
    for _ in 0..200 {
        written = lines();
        if written.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(written.len(), 3, "{written:?}");
    for (i, line) in written.iter().enumerate() {
        assert_eq!(line["path"], format!("/a/{i}"));
        assert_eq!(line["route"], "first");
    }

    for i in 0..2 {
        assert_eq!(get(listen, &format!("/b/{i}"), &[]).await.status, 200);
    }
    assert_eq!(lines().len(), 3, "the new logger holds its lines");
    let dir = daemon.stop();
    let written = json_lines(&dir.path().join("access.log"));
    assert_eq!(written.len(), 5, "shutdown wrote the rest: {written:?}");
    for (i, line) in written[3..].iter().enumerate() {
        assert_eq!(line["path"], format!("/b/{i}"));
        assert_eq!(line["route"], "second");
    }
}

/// The whole lines of an access log, each parsed (a line cut short fails).
fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "a line cut short");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn a_hundred_reloads_under_load_fail_no_request() {
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let config = |extra: &str| {
        format!(
            "listeners: [{{address: '{listen}'}}]\n\
             upstreams: {{u: {{targets: ['{}']}}}}\n\
             routes:\n  - {{match: {{path_prefix: /}}, upstream: u}}\n{extra}",
            upstream.addr
        )
    };
    let one = config("");
    let two = config("  - {match: {path_prefix: /other}, upstream: u}\n");
    let daemon = Daemon::start(&one, None);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            // Keep-alive connections, as real clients hold them.
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Empty<bytes::Bytes>>();
            let uri: hyper::Uri = format!("http://{listen}/load").parse().unwrap();
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) && sent < 100_000 {
                sent += 1;
                match client.get(uri.clone()).await {
                    Ok(r) if r.status() == 200 => {
                        let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let reloader = tokio::task::spawn_blocking(move || {
        for i in 0..100 {
            let out = daemon.reload_with(if i % 2 == 0 { &two } else { &one });
            assert!(out.status.success(), "reload {i}: {}", stderr(&out));
        }
        daemon
    });
    let daemon = reloader.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(daemon.status()["reloads"], 100);
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{ok} requests during 100 reloads, {failed} failed");
    assert_eq!(failed, 0);
    assert!(
        ok >= 100,
        "the load ran alongside the reloads ({ok} requests)"
    );
}

#[tokio::test]
async fn shutdown_drains_requests_in_flight() {
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(&catch_all_config(listen, upstream.addr), None);
    let slow = tokio::spawn(async move { get(listen, "/delay/1500", &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = daemon.pid().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(listen).await.is_err(),
        "still accepting after SIGTERM"
    );
    let response = slow.await.unwrap();
    assert_eq!(response.status, 200, "the request in flight finished");
    tokio::task::spawn_blocking(move || daemon.stop())
        .await
        .unwrap();
}
