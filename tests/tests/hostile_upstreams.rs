//! Upstreams that answer in ways two parsers could read differently: a
//! length and chunked, a body on a 204, a 304 or a HEAD answer, a second
//! response nobody asked for, chunk sizes that are not plain hex, fields
//! with bare LF or NUL. Each answer reaches the client as a clean 502 or a
//! correctly framed response, and the next request on the same client
//! connection gets its own answer: no desync across keep-alive, no
//! poisoned pooled connection. And the fields that describe the upstream's
//! connection (hop-by-hop, RFC 9110 §7.6.1) never reach the client, over
//! HTTP/1.1 or HTTP/2.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use xgate_tests::{
    bad_upstream::{BadUpstream, Misbehaviour},
    http::{parse, parse_all, KeepAlive, RawResponse},
    ports::any_port,
    process::Daemon,
    upstream::EchoUpstream,
};

/// What the client may see for a GET of a hostile route.
#[derive(Clone, Copy)]
enum Expect {
    /// One of these statuses, framed, on a connection that goes on; a 200
    /// has the target's path as its body.
    Answer(&'static [u16]),
    /// A 502; or, when the fault is in a body whose head already went out,
    /// the answer cut short (no last chunk) and the connection closed: the
    /// client can tell it is incomplete.
    Cut,
}

/// One hostile upstream: how it answers every request (`{path}`, `{len}`,
/// `{hex}`: the request's target, its length, in hex; to HEAD too, which
/// makes every HEAD answer one with a body), and what a GET gets.
struct Case {
    name: &'static str,
    answer: &'static str,
    expect: Expect,
}

const fn case(name: &'static str, answer: &'static str, expect: Expect) -> Case {
    Case {
        name,
        answer,
        expect,
    }
}

const OK: Expect = Expect::Answer(&[200]);
const BAD_GATEWAY: Expect = Expect::Answer(&[502]);

#[rustfmt::skip]
const CASES: &[Case] = &[
    case("plain", "HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n{path}", OK),
    case("length and chunked", "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n{hex}\r\n{path}\r\n0\r\n\r\n", OK),
    case("chunked and length", "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 200\r\n\r\n{hex}\r\n{path}\r\n0\r\n\r\n", OK),
    case("two different lengths", "HTTP/1.1 200 OK\r\ncontent-length: {len}\r\ncontent-length: 7\r\n\r\n{path}", BAD_GATEWAY),
    case("204 with a body", "HTTP/1.1 204 No Content\r\ncontent-length: {len}\r\n\r\n{path}", Expect::Answer(&[204])),
    case("204 with a chunked body", "HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n{hex}\r\n{path}\r\n0\r\n\r\n", Expect::Answer(&[204])),
    case("304 with a body", "HTTP/1.1 304 Not Modified\r\ncontent-length: {len}\r\n\r\n{path}", Expect::Answer(&[304])),
    case("an extra response after the first", "HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n{path}HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nextra", OK),
    case("chunk size with a sign", "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n+{hex}\r\n{path}\r\n0\r\n\r\n", Expect::Cut),
    case("chunk size with 0x", "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0x{hex}\r\n{path}\r\n0\r\n\r\n", Expect::Cut),
    case("chunk size overflowing", "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1000000000000000{hex}\r\n{path}\r\n0\r\n\r\n", Expect::Cut),
    case("chunk size with a bare CR", "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{hex}\r\r\n{path}\r\n0\r\n\r\n", Expect::Cut),
    // Bare LF as a line end is one reading only (RFC 9112 §2.2 lets a
    // recipient take it); xgate writes its own head, in CRLF.
    case("a bare LF in the head", "HTTP/1.1 200 OK\ncontent-length: {len}\r\n\r\n{path}", Expect::Answer(&[200, 502])),
    case("a NUL in a field", "HTTP/1.1 200 OK\r\nx-a: b\0c\r\ncontent-length: {len}\r\n\r\n{path}", BAD_GATEWAY),
    case("obs-fold", "HTTP/1.1 200 OK\r\nx-a: b\r\n c\r\ncontent-length: {len}\r\n\r\n{path}", BAD_GATEWAY),
];

/// Reads one response off `stream` (`head_only`: the answer to a HEAD,
/// whose length announces no body).
async fn read_one(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head_only: bool,
) -> Result<RawResponse, String> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if head_only {
                let head = parse(&buf[..end + 4]).map_err(|e| e.to_string())?;
                buf.drain(..end + 4);
                return Ok(head);
            }
            // One whole response, and no more, is on the front of `buf`
            // when parse_all reads exactly one.
            for cut in end + 4..=buf.len() {
                if let Ok(rs) = parse_all(&buf[..cut]) {
                    if rs.len() == 1 && framed(&buf[..cut]) {
                        buf.drain(..cut);
                        return Ok(rs.into_iter().next().unwrap());
                    }
                }
            }
        }
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await;
        let got = String::from_utf8_lossy(buf).into_owned();
        match read {
            Err(_) => return Err(format!("no whole answer within 10 s; got {got:?}")),
            Ok(Err(e)) => return Err(format!("{e}; got {got:?}")),
            Ok(Ok(0)) => return Err(format!("closed; got {got:?}")),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Whether `raw` is framed by a length or chunked (a response without
/// either would run to the close).
fn framed(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw).to_ascii_lowercase();
    let status_204_304 = text.starts_with("http/1.1 204") || text.starts_with("http/1.1 304");
    if text.contains("transfer-encoding: chunked") {
        return text.ends_with("\r\n\r\n");
    }
    status_204_304 || text.contains("content-length:")
}

#[tokio::test]
async fn hostile_answers_are_502_or_framed_and_the_next_request_gets_its_own() {
    let good = EchoUpstream::start(any_port(), "good").await.unwrap();
    let mut servers = Vec::new();
    for case in CASES {
        servers.push(
            BadUpstream::start(Misbehaviour::Template(case.answer))
                .await
                .unwrap(),
        );
    }
    let mut upstreams = vec![("good", format!("{{targets: ['{}']}}", good.addr))];
    let names: Vec<String> = (0..CASES.len()).map(|i| format!("h{i}")).collect();
    for (name, server) in names.iter().zip(&servers) {
        // No retries: each request meets the hostile answer.
        upstreams.push((
            name,
            format!(
                "{{targets: ['{}'], retries: 0, health_checks: {{passive: {{enabled: false}}}}}}",
                server.addr
            ),
        ));
    }
    let (daemon, gw) = Daemon::with_upstreams(&upstreams);

    let mut failures = Vec::new();
    for ((case, name), server) in CASES.iter().zip(&names).zip(&servers) {
        if let Err(e) = exercise(gw, case, name).await {
            failures.push(format!("{}: {e}", case.name));
        }
        // A well-formed answer's connection is used again, until the HEAD
        // answer that carries a body: that one is not.
        if case.name == "plain" && server.connections() != 2 {
            failures.push(format!(
                "plain: {} upstream connections, expected 2 (GET and HEAD on the first, then a new one)",
                server.connections()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n\nlog:\n{}",
        failures.join("\n"),
        daemon.log()
    );
}

/// On one client connection: GET the hostile route, GET a good route, HEAD
/// and GET the hostile route again; each answer must be the request's own.
/// After an answer cut short (allowed for [`Expect::Cut`]), the next
/// request goes on a new connection.
async fn exercise(gw: SocketAddr, case: &Case, name: &str) -> Result<(), String> {
    let connect = || async { TcpStream::connect(gw).await.map_err(|e| e.to_string()) };
    let mut stream = connect().await?;
    let mut buf = Vec::new();
    let steps = [
        ("GET", format!("/{name}/1")),
        ("GET", "/good/2".to_string()),
        ("HEAD", format!("/{name}/3")),
        ("GET", format!("/{name}/4")),
    ];
    for (method, path) in steps {
        let request = format!("{method} {path} HTTP/1.1\r\nHost: gateway.test\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let good = path.starts_with("/good/");
        let own_path = if good {
            &path[5..]
        } else {
            &path[name.len() + 1..]
        };
        let response = match read_one(&mut stream, &mut buf, method == "HEAD").await {
            Ok(response) => response,
            Err(e) if matches!(case.expect, Expect::Cut) && !good && method == "GET" => {
                if !e.starts_with("closed") || !buf.starts_with(b"HTTP/1.1 200 ") {
                    return Err(format!("{method} {path}: neither a 502 nor cut short: {e}"));
                }
                stream = connect().await?;
                buf.clear();
                continue;
            }
            Err(e) => return Err(format!("{method} {path}: {e}")),
        };
        let allowed: &[u16] = match (good, case.expect, method) {
            (true, _, _) => &[200],
            (false, Expect::Answer(statuses), "GET") => statuses,
            (false, Expect::Cut, "GET") => &[502],
            (false, Expect::Answer(statuses), _) => statuses,
            (false, Expect::Cut, _) => &[],
        };
        // A HEAD answer has no body whose length could be read two ways:
        // one whose fault is in its framing may come through as a 200.
        let head_ok = method == "HEAD" && [200, 502].contains(&response.status);
        if !allowed.contains(&response.status) && !head_ok {
            return Err(format!(
                "{method} {path}: {} not in {allowed:?}: {response:?}",
                response.status
            ));
        }
        let body_ok = match (response.status, method) {
            (_, "HEAD") | (204 | 304, _) => response.body.is_empty(),
            (200, _) if good => response.json()["path"] == own_path,
            (200, _) => response.body == own_path.as_bytes(),
            _ => true,
        };
        if !body_ok {
            return Err(format!(
                "{method} {path}: not this request's answer: {response:?}"
            ));
        }
        if response
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            return Err(format!(
                "{method} {path}: the client's connection closed for the upstream's fault"
            ));
        }
    }
    if !buf.is_empty() {
        return Err(format!(
            "bytes after the last answer: {:?}",
            String::from_utf8_lossy(&buf)
        ));
    }
    Ok(())
}

/// The upstream's own connection fields: `Connection` and what it names,
/// `Keep-Alive`, `Proxy-Authenticate`, `Proxy-Connection`, `Trailer`
/// without trailers, `Upgrade` without a switch.
const HOP_BY_HOP_ANSWER: &str = "HTTP/1.1 200 OK\r\n\
    Connection: close, X-Foo\r\n\
    Connection: X-Bar\r\n\
    X-Foo: connection-specific\r\n\
    X-Bar: connection-specific\r\n\
    Keep-Alive: timeout=5, max=100\r\n\
    Proxy-Authenticate: Basic realm=\"upstream\"\r\n\
    Proxy-Connection: keep-alive\r\n\
    Upgrade: h2c\r\n\
    X-Kept: end-to-end\r\n\
    Content-Length: 2\r\n\r\nok";

const STRIPPED: &[&str] = &[
    "x-foo",
    "x-bar",
    "keep-alive",
    "proxy-authenticate",
    "proxy-connection",
    "upgrade",
];

#[tokio::test]
async fn hop_by_hop_fields_of_an_answer_never_reach_the_client_over_http1_or_http2() {
    let upstream = BadUpstream::start(Misbehaviour::Answer(HOP_BY_HOP_ANSWER))
        .await
        .unwrap();
    let (daemon, gw) =
        Daemon::with_upstreams(&[("u", format!("{{targets: ['{}']}}", upstream.addr))]);

    // HTTP/1.1, kept alive: the upstream's `Connection: close` is its own
    // connection's, not the client's.
    let mut client = KeepAlive::connect(gw).await.unwrap();
    for _ in 0..2 {
        let r = client.get("/u/x").await;
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]), "{r:?}");
        assert_eq!(r.header("x-kept"), Some("end-to-end"), "{r:?}");
        for name in STRIPPED {
            assert_eq!(
                r.header(name),
                None,
                "HTTP/1.1: {name} reached the client: {r:?}"
            );
        }
        assert_eq!(r.header("connection"), None, "HTTP/1.1: {r:?}");
    }

    // HTTP/2 (h2c, prior knowledge): connection-specific fields are
    // malformed there (RFC 9113 §8.2.2); hyper's client would refuse them.
    let stream = TcpStream::connect(gw).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    let h2_connection = tokio::spawn(connection);
    for _ in 0..2 {
        let request = hyper::Request::get("http://gateway.test/u/x")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
            .await
            .expect("answered in time")
            .expect("a well-formed HTTP/2 response");
        assert_eq!(response.status(), 200);
        let headers = response.headers().clone();
        assert_eq!(headers.get("x-kept").unwrap(), "end-to-end");
        for name in STRIPPED.iter().chain(&["connection"]) {
            assert!(
                headers.get(*name).is_none(),
                "HTTP/2: {name} reached the client: {headers:?}"
            );
        }
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.as_ref(), b"ok");
    }
    // The upstream said close: its connection was not used again.
    assert_eq!(upstream.connections(), 4, "{}", daemon.log());
    // Close both client connections while the runtime still runs (the
    // daemon's drop blocks it, and would wait for them to drain).
    drop((client, sender));
    h2_connection.abort();
    let _ = h2_connection.await;
}
