//! The real `xgate` binary proxying to real upstream servers on loopback.

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{
    body::{Body, Frame},
    HeaderMap, Request,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use xgate_tests::{
    bad_upstream::ScriptedUpstream,
    http::{get, h2, send},
    ports::{any_port, free_port},
    process::{stderr, Daemon},
    upstream::EchoUpstream,
};

fn config(listen: SocketAddr, targets: &[SocketAddr], timeout: &str) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    format!(
        "listeners: [{{address: '{listen}'}}]\n\
         upstreams:\n  echo: {{targets: [{}], timeout: {timeout}, connect_timeout: 1s}}\n\
         routes:\n\
         \x20 - {{name: api, match: {{path_prefix: /api/}}, upstream: echo, strip_prefix: true}}\n\
         \x20 - {{name: raw, match: {{path_prefix: /raw/}}, upstream: echo}}\n",
        targets.join(", ")
    )
}

#[tokio::test]
async fn request_round_trips_with_forwarded_headers() {
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let _daemon = Daemon::start(&config(listen, &[upstream.addr], "5s"), None);

    let response = get(
        listen,
        "/api/users?id=7",
        &[
            "X-Forwarded-For: 6.6.6.6",
            "X-Forwarded-Proto: https",
            "Connection: close, X-Hop",
            "X-Hop: secret",
            "Keep-Alive: timeout=5",
            "TE: gzip, trailers",
            "X-Custom: kept",
        ],
    )
    .await;
    assert_eq!(response.status, 200, "{response:?}");
    let seen = response.json();
    assert_eq!(seen["upstream"], "one");
    assert_eq!(seen["uri"], "/users?id=7", "prefix stripped, query kept");
    let headers = &seen["headers"];
    assert_eq!(
        headers["x-forwarded-for"], "127.0.0.1",
        "a client cannot forge XFF: {headers}"
    );
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "gateway.test");
    assert_eq!(headers["host"], "gateway.test", "Host is preserved");
    assert_eq!(headers["x-custom"], "kept");
    assert!(
        headers.get("x-hop").is_none(),
        "header named in Connection is hop-by-hop: {headers}"
    );
    assert!(headers.get("keep-alive").is_none(), "{headers}");
    assert_eq!(headers["te"], "trailers", "only `trailers` of TE goes on");
    // The upstream saw the gateway as its peer, not the client.
    assert!(seen["peer"].as_str().unwrap().starts_with("127.0.0.1:"));

    let raw = get(listen, "/raw/x", &["TE: gzip"]).await;
    assert_eq!(raw.json()["uri"], "/raw/x", "no stripping unless asked");
    assert!(raw.json()["headers"].get("te").is_none(), "{}", raw.json());
}

/// A client's trailer section cannot carry what the proxy owns past the
/// head's replaced copies; its other fields go on.
#[tokio::test]
async fn trailers_cannot_carry_forwarding_fields_or_a_request_id() {
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let _daemon = Daemon::start(&config(listen, &[upstream.addr], "5s"), None);
    let raw = "POST /raw/t HTTP/1.1\r\nHost: gateway.test\r\nTransfer-Encoding: chunked\r\n\
               Connection: close\r\n\r\n5\r\nhello\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\n\
               Forwarded: for=6.6.6.6\r\nX-Request-Id: forged\r\nX-Real-IP: 6.6.6.6\r\n\
               X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\nX-Checksum: 42\r\n\r\n";
    let response = send(listen, None, raw).await.unwrap();
    assert_eq!(response.status, 200, "{response:?}");
    let seen = response.json();
    assert_eq!(seen["body_bytes"], 5);
    assert_eq!(seen["trailers"], serde_json::json!({"x-checksum": "42"}));
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(
        seen["headers"]["x-request-id"],
        response.header("x-request-id").unwrap()
    );
}

/// Some data then trailers, with no length known up front (so that an
/// HTTP/1.1 target gets it chunked, with its trailer section).
struct Trailed(Option<Bytes>, Option<HeaderMap>);

impl Body for Trailed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = match self.0.take() {
            Some(data) => Frame::data(data),
            None => match self.1.take() {
                Some(trailers) => Frame::trailers(trailers),
                None => return Poll::Ready(None),
            },
        };
        Poll::Ready(Some(Ok(frame)))
    }
}

/// The same from an HTTP/2 client, whose trailers come through hyper: to an
/// HTTP/1.1 target and to an HTTP/2 one.
#[tokio::test]
async fn http2_trailers_cannot_carry_forwarding_fields_either() {
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let _daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             upstreams:\n  h1: {{targets: ['{0}']}}\n  h2: {{targets: ['{0}'], protocol: http2}}\n\
             routes:\n\
             \x20 - {{match: {{path_prefix: /h1/}}, upstream: h1}}\n\
             \x20 - {{match: {{path_prefix: /h2/}}, upstream: h2}}\n",
            upstream.addr
        ),
        None,
    );
    let stream = TcpStream::connect(listen).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    for path in ["/h1/t", "/h2/t"] {
        let mut trailers = HeaderMap::new();
        for (name, value) in [
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-request-id", "forged"),
            ("x-real-ip", "6.6.6.6"),
            ("x-checksum", "42"),
        ] {
            trailers.insert(name, value.parse().unwrap());
        }
        let body = Trailed(Some(Bytes::from_static(b"hello")), Some(trailers));
        let request = Request::post(format!("http://gateway.test{path}"))
            .body(body)
            .unwrap();
        let answer = async {
            let response = sender.send_request(request).await.unwrap();
            response.into_body().collect().await.unwrap().to_bytes()
        };
        let answer = tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .expect("an answer");
        let seen: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(seen["body_bytes"], 5, "{path}: {seen}");
        assert_eq!(
            seen["trailers"],
            serde_json::json!({"x-checksum": "42"}),
            "{path}"
        );
    }
    // Closed before the daemon stops, which would otherwise wait for it.
    drop(sender);
    let _ = tokio::time::timeout(Duration::from_secs(10), connection).await;
}

#[tokio::test]
async fn request_bodies_and_upstream_statuses_pass_through() {
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let _daemon = Daemon::start(&config(listen, &[upstream.addr], "5s"), None);
    let body = "x".repeat(100_000);
    let request = format!(
        "POST /api/upload HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let response = send(listen, None, &request).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["body_bytes"], 100_000);
    assert_eq!(response.json()["method"], "POST");
    let teapot = get(listen, "/api/status/418", &[]).await;
    assert_eq!(teapot.status, 418);
}

#[tokio::test]
async fn round_robin_spreads_requests_evenly() {
    let a = EchoUpstream::start(any_port(), "a").await.unwrap();
    let b = EchoUpstream::start(any_port(), "b").await.unwrap();
    let c = EchoUpstream::start(any_port(), "c").await.unwrap();
    let listen = free_port();
    let _daemon = Daemon::start(&config(listen, &[a.addr, b.addr, c.addr], "5s"), None);
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..30 {
        let r = get(listen, "/api/x", &[]).await;
        assert_eq!(r.status, 200);
        *counts
            .entry(r.json()["upstream"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{counts:?}"
    );
}

#[tokio::test]
async fn unknown_path_is_404_and_missing_host_is_400() {
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let _daemon = Daemon::start(&config(listen, &[upstream.addr], "5s"), None);
    let r = get(listen, "/nowhere", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["message"], "no route matched");
    let r = send(
        listen,
        None,
        "GET /api/x HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn dead_upstream_gives_502_and_slow_upstream_gives_504() {
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let _daemon = Daemon::start(&config(listen, &[upstream.addr], "500ms"), None);
    assert_eq!(get(listen, "/api/ok", &[]).await.status, 200);

    // Slower than the 500ms upstream timeout.
    let slow = get(listen, "/api/delay/3000", &[]).await;
    assert_eq!(slow.status, 504, "{slow:?}");
    assert_eq!(slow.json()["message"], "upstream timed out");

    // Kill the upstream: the pooled connection and new connects both fail.
    upstream.stop().await;
    let dead = get(listen, "/api/ok", &[]).await;
    assert_eq!(dead.status, 502, "{dead:?}");
    assert_eq!(
        dead.json()["message"],
        "upstream unavailable",
        "no internal detail leaks"
    );
}

#[tokio::test]
async fn blocklisted_source_is_refused_at_l7_without_xdp() {
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(&config(listen, &[upstream.addr], "5s"), None);
    let from_blocked: SocketAddr = "127.0.0.2:0".parse().unwrap();
    let request = "GET /api/x HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n";
    assert_eq!(
        send(listen, Some(from_blocked), request)
            .await
            .unwrap()
            .status,
        200
    );

    let out = daemon.cli(&["blocklist", "add", "127.0.0.2", "--reason", "l7 test"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        send(listen, Some(from_blocked), request).await.is_err(),
        "blocked source got a response"
    );
    assert_eq!(
        get(listen, "/api/x", &[]).await.status,
        200,
        "other sources unaffected"
    );
    let status = daemon.status();
    assert_eq!(status["l7_denied_connections"], 1, "{status}");
    assert!(
        status["xdp"].is_null(),
        "no XDP without interfaces: {status}"
    );

    // Re-applied after a restart from the state file.
    let dir = daemon.stop();
    let daemon = Daemon::start_in_dir(dir, &config(listen, &[upstream.addr], "5s"), None);
    assert!(
        send(listen, Some(from_blocked), request).await.is_err(),
        "entry lost across restart"
    );

    let out = daemon.cli(&["blocklist", "rm", "127.0.0.2/32"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        send(listen, Some(from_blocked), request)
            .await
            .unwrap()
            .status,
        200
    );
}

/// The worker threads of `pid` (named `xgate-worker-N`) and the nanoseconds
/// each has spent on a CPU (`/proc/PID/task/TID/schedstat`).
fn worker_cpu_ns(pid: u32) -> Vec<(String, u64)> {
    let mut workers = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let name = name.trim();
        if !name.starts_with("xgate-worker-") {
            continue;
        }
        let schedstat = std::fs::read_to_string(path.join("schedstat")).unwrap();
        let on_cpu = schedstat
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        workers.push((name.to_string(), on_cpu));
    }
    workers.sort();
    workers
}

/// Requests pipelined on one keep-alive connection; returns how many 200s
/// came back.
async fn pipelined(listen: SocketAddr, requests: usize) -> usize {
    let replies = pipelined_replies(listen, requests).await;
    replies.matches("HTTP/1.1 200 OK\r\n").count()
}

/// The upstream connections (the gateway's ports as the echo upstream saw
/// them) that served `requests` pipelined on one client connection.
async fn upstream_ports(listen: SocketAddr, requests: usize) -> Vec<String> {
    let replies = pipelined_replies(listen, requests).await;
    let ports: Vec<String> = replies
        .split("\"peer\":\"127.0.0.1:")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_string())
        .collect();
    assert_eq!(ports.len(), requests, "{replies}");
    ports
}

async fn pipelined_replies(listen: SocketAddr, requests: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(listen).await.unwrap();
    let mut batch = "GET /api/x HTTP/1.1\r\nHost: gateway.test\r\n\r\n".repeat(requests - 1);
    batch.push_str("GET /api/x HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n");
    stream.write_all(batch.as_bytes()).await.unwrap();
    let mut replies = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.read_to_end(&mut replies),
    )
    .await
    .expect("all answers within 30 s")
    .unwrap();
    String::from_utf8_lossy(&replies).into_owned()
}

/// One worker thread per core by default; connections are handed to them in
/// turn, so with two connections per worker every worker proxies.
#[tokio::test]
async fn connections_are_spread_over_one_worker_per_core() {
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(&config(listen, &[upstream.addr], "5s"), None);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let before = worker_cpu_ns(daemon.pid());
    assert_eq!(before.len(), cores, "{before:?}");

    let mut connections = tokio::task::JoinSet::new();
    for _ in 0..2 * cores {
        connections.spawn(pipelined(listen, 300));
    }
    let answered = connections.join_all().await;
    assert_eq!(answered, vec![300; 2 * cores]);

    let after = worker_cpu_ns(daemon.pid());
    for ((name, was), (_, is)) in before.iter().zip(&after) {
        assert!(
            is - was > 1_000_000,
            "{name} ran {} µs for 600 requests: not given its connections",
            (is - was) / 1000
        );
    }
}

/// The CPUs in a `Cpus_allowed_list:` line of a /proc status file
/// ("0-1", "0,2-3").
fn cpus_allowed(status: &str) -> Vec<usize> {
    let text = std::fs::read_to_string(status).unwrap();
    let list = text
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or_else(|| panic!("no Cpus_allowed_list in {status}"));
    let mut cpus = Vec::new();
    for part in list.trim().split(',') {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        cpus.extend(first.parse::<usize>().unwrap()..=last.parse::<usize>().unwrap());
    }
    cpus
}

/// Each worker thread's allowed CPUs, in worker order.
fn worker_cpus(pid: u32) -> Vec<Vec<usize>> {
    let mut workers = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if let Some(index) = name.trim().strip_prefix("xgate-worker-") {
            let index: usize = index.parse().unwrap();
            let status = path.join("status");
            workers.push((index, cpus_allowed(&status.display().to_string())));
        }
    }
    workers.sort();
    workers.into_iter().map(|(_, cpus)| cpus).collect()
}

/// With one worker per CPU the process may run on, each worker is bound to
/// its own CPU, in order; `--cpu-affinity off`, or more workers than CPUs,
/// leave every worker free to run on all of them. The daemon's log says
/// which, and the workers proxy either way.
#[tokio::test]
async fn workers_are_bound_one_per_cpu_unless_told_otherwise() {
    // The daemon inherits this process's mask (a CI runner may restrict it).
    let mask = cpus_allowed("/proc/self/status");
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let per_cpu = mask.len().to_string();
    let more = (mask.len() + 1).to_string();
    // The daemon's environment, its worker count, and whether they are bound.
    type Case<'a> = (&'a [(&'a str, &'a str)], usize, bool);
    let cases: [Case; 3] = [
        (&[("XGATE_WORKERS", &per_cpu)], mask.len(), true),
        (
            &[("XGATE_WORKERS", &per_cpu), ("XGATE_CPU_AFFINITY", "off")],
            mask.len(),
            false,
        ),
        (&[("XGATE_WORKERS", &more)], mask.len() + 1, false),
    ];
    for (env, count, bound) in cases {
        let listen = free_port();
        let daemon = Daemon::start_with_env(
            xgate_tests::TempDir::new("affinity"),
            &config(listen, &[upstream.addr], "5s"),
            None,
            env,
        );
        let workers = worker_cpus(daemon.pid());
        assert_eq!(workers.len(), count, "{env:?}: {workers:?}");
        if bound {
            let one_each: Vec<Vec<usize>> = mask.iter().map(|&cpu| vec![cpu]).collect();
            assert_eq!(workers, one_each, "{env:?}");
            assert!(
                daemon.log().contains("proxy workers bound one per CPU"),
                "{env:?}: {}",
                daemon.log()
            );
        } else {
            for cpus in &workers {
                assert_eq!(cpus, &mask, "{env:?}: {workers:?}");
            }
            assert!(
                daemon.log().contains("proxy workers not bound to CPUs"),
                "{env:?}: {}",
                daemon.log()
            );
        }
        let mut connections = tokio::task::JoinSet::new();
        for _ in 0..count {
            connections.spawn(pipelined(listen, 20));
        }
        assert_eq!(connections.join_all().await, vec![20; count], "{env:?}");
    }
}

/// Upstream connections are kept alive and reused; an idle one is closed
/// after `pool_idle_timeout`; one the target closed is not used again.
#[tokio::test]
async fn upstream_connections_are_reused_expire_and_survive_a_target_restart() {
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let _daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             upstreams:\n  echo: {{targets: ['{}'], pool_idle_timeout: 300ms}}\n\
             routes: [{{name: api, match: {{path_prefix: /api/}}, upstream: echo, strip_prefix: true}}]\n",
            upstream.addr
        ),
        None,
    );
    // One client connection: one worker, requests one after the other.
    let first = upstream_ports(listen, 20).await;
    let mut distinct = first.clone();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        1,
        "one upstream connection for all: {first:?}"
    );

    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    // Connections go to the workers in turn: one per worker reaches the
    // worker that holds the first connection.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    for _ in 0..cores {
        let later = upstream_ports(listen, 1).await;
        assert_ne!(
            later[0], first[0],
            "an idle connection past 300ms was reused"
        );
    }

    // The target restarts on the same address: its connections are gone.
    let addr = upstream.addr;
    upstream.stop().await;
    let upstream = EchoUpstream::start(addr, "two").await.unwrap();
    assert_eq!(pipelined(listen, 5).await, 5);
    drop(upstream);
}

/// The access log's lines once it has `count` of them (bounded wait).
async fn access_log_lines(daemon: &Daemon, count: usize) -> Vec<serde_json::Value> {
    let path = daemon.dir.path().join("access.log");
    for _ in 0..200 {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() >= count {
            return text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "fewer than {count} access log lines:\n{}",
        std::fs::read_to_string(&path).unwrap_or_default()
    );
}

/// A request body that breaks off on the client's side (a malformed chunk,
/// a client that stops sending mid-body, an HTTP/2 stream reset mid-body)
/// is the client's fault: 400 `bad request body` while nothing of the
/// response is out, logged as such, never a 502 nor a warning about the
/// target, which serves the next request as usual. The target holds every
/// request (`/hold/...`), so the failure always comes before its answer.
#[tokio::test]
async fn a_broken_request_body_is_the_clients_fault_not_the_targets() {
    let mut target = ScriptedUpstream::start("one", 200, Duration::ZERO)
        .await
        .unwrap();
    let listen = free_port();
    let daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             upstreams:\n  one: {{targets: ['{}'], balancer: p2c_ewma}}\n\
             routes:\n  - {{name: api, match: {{path_prefix: /api/}}, upstream: one, strip_prefix: true}}\n\
             access_log: {{format: json, path: '{{dir}}/access.log'}}\n",
            target.addr
        ),
        None,
    );

    // A valid chunk, then a chunk size that is not hex.
    let bad_chunk = send(
        listen,
        None,
        "POST /api/hold/chunk HTTP/1.1\r\nHost: gateway.test\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\nzz\r\n",
    )
    .await
    .unwrap();
    assert_eq!(bad_chunk.status, 400, "{bad_chunk:?}");
    assert_eq!(bad_chunk.json()["message"], "bad request body");
    assert_eq!(bad_chunk.header("connection"), Some("close"));

    // 10 bytes of 100, then the client stops sending (it still reads).
    let mut cut = TcpStream::connect(listen).await.unwrap();
    cut.write_all(
        b"POST /api/hold/cut HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    cut.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), cut.read_to_end(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");

    // HTTP/2: the client resets the stream while the target waits for the
    // rest of the body.
    let mut client = TcpStream::connect(listen).await.unwrap();
    let mut start = h2::PREFACE.to_vec();
    start.extend(h2::frame(h2::SETTINGS, 0, 0, &[]));
    let block = h2::request_block("POST", "/api/hold/h2", "gateway.test");
    start.extend(h2::frame(h2::HEADERS, h2::END_HEADERS, 1, &block));
    start.extend(h2::frame(h2::DATA, 0, 1, b"hello"));
    client.write_all(&start).await.unwrap();
    while target.arrivals.recv().await.unwrap() != "/hold/h2" {}
    let cancel = h2::CANCEL.to_be_bytes();
    client
        .write_all(&h2::frame(h2::RST_STREAM, 0, 1, &cancel))
        .await
        .unwrap();

    let lines = access_log_lines(&daemon, 3).await;
    for (line, path) in lines
        .iter()
        .zip(["/api/hold/chunk", "/api/hold/cut", "/api/hold/h2"])
    {
        assert_eq!(line["path"], path, "{line}");
        assert_eq!(line["status"], 400, "{line}");
        assert_eq!(line["rejection"], "bad_request_body", "{line}");
        assert_eq!(line["upstream_target"], target.addr.to_string(), "{line}");
    }
    let log = daemon.log();
    assert!(!log.contains("WARN"), "a warning about the target:\n{log}");
    let metrics = daemon.admin_get("/metrics");
    assert!(
        metrics.contains(
            "xgate_requests_total{route=\"api\",method=\"POST\",status=\"400\",consumer=\"-\"} 3"
        ),
        "{metrics}"
    );
    assert!(!metrics.contains("status=\"502\""), "{metrics}");

    // The target is as good as before.
    target.release();
    let fine = get(listen, "/api/fine", &[]).await;
    assert_eq!(fine.status, 200, "{fine:?}");
    assert_eq!(fine.json()["upstream"], "one");
    drop(client);
}
