//! Listeners of the real `xgate` binary: TLS with SNI and reload, HTTP/2
//! (ALPN and h2c), WebSocket passthrough, streaming without buffering, the
//! PROXY protocol, connection-level limits (431, 408) and the drain.
//!
//! Every wait is bounded; nothing asserts on elapsed time.

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{
    body::{Body, Frame, SizeHint},
    Request, StatusCode, Version,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use xgate_tests::{
    http::h2,
    ports::{any_port, free_port},
    process::{stderr, Daemon},
    tls::{alpn, connect, served_leaf, ClientOptions, Leaf, TestCa},
    upstream::EchoUpstream,
    TempDir,
};

/// Upper bound for any single network wait in these tests.
const WAIT: Duration = Duration::from_secs(20);

/// `listeners` (YAML list items, already indented by two spaces) in front
/// of one upstream and a `/api/` route that strips the prefix.
fn config(listeners: &[String], upstream: SocketAddr, extra: &str) -> String {
    format!(
        "listeners:\n{}\
         upstreams:\n  echo: {{targets: ['{upstream}'], timeout: 10s, connect_timeout: 1s}}\n\
         routes:\n  - {{name: api, match: {{path_prefix: /api/}}, upstream: echo, strip_prefix: true}}\n\
         {extra}",
        listeners.concat()
    )
}

/// One listener item: address plus extra `key: value` lines.
fn listener(address: SocketAddr, lines: &[&str]) -> String {
    let mut item = format!("  - address: '{address}'\n");
    for line in lines {
        item.push_str(&format!("    {line}\n"));
    }
    item
}

/// `tls:` lines for the listener item, certificates in order.
fn tls_lines(leaves: &[&Leaf], extra: &[&str]) -> Vec<String> {
    let mut lines = vec!["tls:".to_string(), "  certificates:".to_string()];
    for leaf in leaves {
        lines.push(format!(
            "    - {{cert: '{}', key: '{}'}}",
            leaf.cert.display(),
            leaf.key.display()
        ));
    }
    lines.extend(extra.iter().map(|l| format!("  {l}")));
    lines
}

fn listener_with(address: SocketAddr, lines: &[String]) -> String {
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    listener(address, &lines)
}

/// What most TLS tests start from: a CA, a leaf for `a.example.test` in a
/// temp dir of their own, and an echo upstream.
struct TlsSetup {
    /// Holds the leaf's files.
    _dir: TempDir,
    ca: TestCa,
    leaf: Leaf,
    upstream: EchoUpstream,
}

async fn tls_setup(name: &str) -> TlsSetup {
    let dir = TempDir::new(name);
    let ca = TestCa::new();
    let leaf = ca.leaf(&["a.example.test"], dir.path(), "a");
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    TlsSetup {
        _dir: dir,
        ca,
        leaf,
        upstream,
    }
}

/// A daemon with a TLS listener and a plain one, both with `both` lines,
/// and `extra` top-level config. Returns (TLS address, plain address).
fn tls_and_plain(setup: &TlsSetup, both: &[&str], extra: &str) -> (SocketAddr, SocketAddr, Daemon) {
    let secure = free_port();
    let plain = free_port();
    let mut secure_lines = tls_lines(&[&setup.leaf], &[]);
    secure_lines.extend(both.iter().map(|l| l.to_string()));
    let daemon = Daemon::start(
        &config(
            &[listener_with(secure, &secure_lines), listener(plain, both)],
            setup.upstream.addr,
            extra,
        ),
        None,
    );
    (secure, plain, daemon)
}

/// A parsed HTTP/1.1 response from a raw exchange.
type Reply = xgate_tests::http::RawResponse;

/// Writes `request` and reads until the server closes (or resets: what
/// arrived before counts). `None` when nothing at all came back.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
) -> Option<Reply> {
    // The server may close before taking everything; what it answered counts.
    let _ = stream.write_all(request).await;
    let raw = read_until_closed(stream).await;
    parse(&raw)
}

async fn read_until_closed<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return raw,
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "connection neither answered nor closed within {WAIT:?}; got {:?}",
                String::from_utf8_lossy(&raw)
            ),
        }
    }
}

/// The response in `raw`; `None` when nothing at all came back.
fn parse(raw: &[u8]) -> Option<Reply> {
    if raw.is_empty() {
        return None;
    }
    Some(
        xgate_tests::http::parse(raw)
            .unwrap_or_else(|e| panic!("not a response ({e}): {:?}", String::from_utf8_lossy(raw))),
    )
}

fn get(path: &str, host: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

async fn tcp(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect")
}

/// GET over plain TCP, expecting an answer.
async fn plain_get(addr: SocketAddr, path: &str) -> Reply {
    exchange(&mut tcp(addr).await, &get(path, "gateway.test"))
        .await
        .expect("an answer")
}

/// Sends one request over HTTP/2 on an established stream (prior knowledge
/// or ALPN) and returns the response version, status and body.
async fn h2_get<S>(
    io: S,
    uri: &str,
) -> Result<(Version, StatusCode, serde_json::Value), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
    tokio::spawn(connection);
    let request = Request::builder()
        .uri(uri)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    Ok((parts.version, parts.status, json))
}

#[tokio::test]
async fn sni_picks_the_certificate_and_unknown_names_get_the_default() {
    let dir = TempDir::new("sni");
    let ca = TestCa::new();
    let default = ca.leaf(&["default.example.test"], dir.path(), "default");
    let exact = ca.leaf(&["api.example.test"], dir.path(), "exact");
    let wildcard = ca.leaf(&["*.apps.example.test"], dir.path(), "wildcard");
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let _daemon = Daemon::start(
        &config(
            &[listener_with(
                listen,
                &tls_lines(&[&default, &exact, &wildcard], &[]),
            )],
            upstream.addr,
            "",
        ),
        None,
    );

    // A verifying client: the handshake itself proves the served
    // certificate is valid for the name (SAN checked against the CA).
    let verifying = ClientOptions::verifying(&ca);
    let mut stream = connect(listen, "api.example.test", &verifying)
        .await
        .expect("exact name");
    assert_eq!(served_leaf(&stream), exact.der, "exact SAN match");
    let reply = exchange(&mut stream, &get("/api/hello", "api.example.test"))
        .await
        .expect("answer over TLS");
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = reply.json();
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "{seen}");

    let stream = connect(listen, "shop.apps.example.test", &verifying)
        .await
        .expect("wildcard name");
    assert_eq!(served_leaf(&stream), wildcard.der, "wildcard SAN match");
    let stream = connect(listen, "default.example.test", &verifying)
        .await
        .expect("default name");
    assert_eq!(served_leaf(&stream), default.der);

    // Names no certificate has, or no SNI at all: the first certificate.
    let insecure = ClientOptions::insecure();
    let stream = connect(listen, "unknown.other.test", &insecure)
        .await
        .expect("unknown name");
    assert_eq!(
        served_leaf(&stream),
        default.der,
        "unknown SNI gets the default"
    );
    let stream = connect(listen, "a.b.apps.example.test", &insecure)
        .await
        .expect("two labels");
    assert_eq!(
        served_leaf(&stream),
        default.der,
        "a wildcard covers one label only"
    );
    let no_sni = ClientOptions {
        sni: false,
        ..ClientOptions::insecure()
    };
    let stream = connect(listen, "api.example.test", &no_sni)
        .await
        .expect("no SNI");
    assert_eq!(served_leaf(&stream), default.der, "no SNI gets the default");
    // And a verifying client asking for an unknown name refuses the default.
    assert!(connect(listen, "unknown.other.test", &verifying)
        .await
        .is_err());
}

#[tokio::test]
async fn min_version_1_3_refuses_a_tls_1_2_only_client() {
    let setup = tls_setup("tlsver").await;
    let (ca, leaf, upstream) = (&setup.ca, &setup.leaf, &setup.upstream);
    let strict = free_port();
    let lenient = free_port();
    let _daemon = Daemon::start(
        &config(
            &[
                // Unquoted: YAML reads a number, which is accepted too.
                listener_with(strict, &tls_lines(&[leaf], &["min_version: 1.3"])),
                listener_with(lenient, &tls_lines(&[leaf], &[])),
            ],
            upstream.addr,
            "",
        ),
        None,
    );
    let tls12_only = ClientOptions {
        versions: &[&rustls::version::TLS12],
        ..ClientOptions::verifying(ca)
    };
    assert!(
        connect(strict, "a.example.test", &tls12_only)
            .await
            .is_err(),
        "TLS 1.2 accepted with min_version 1.3"
    );
    let stream = connect(lenient, "a.example.test", &tls12_only)
        .await
        .expect("TLS 1.2 is accepted by default");
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let stream = connect(strict, "a.example.test", &ClientOptions::verifying(ca))
        .await
        .expect("TLS 1.3");
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test]
async fn http2_over_tls_via_alpn_and_h2c_with_prior_knowledge() {
    let setup = tls_setup("h2").await;
    let ca = &setup.ca;
    let (secure, plain, _daemon) = tls_and_plain(&setup, &[], "");

    let options = ClientOptions {
        alpn: &[b"h2", b"http/1.1"],
        ..ClientOptions::verifying(ca)
    };
    let stream = connect(secure, "a.example.test", &options)
        .await
        .expect("TLS");
    assert_eq!(alpn(&stream).as_deref(), Some(&b"h2"[..]), "ALPN picks h2");
    let (version, status, seen) = h2_get(stream, "https://a.example.test/api/h2")
        .await
        .expect("h2 request");
    assert_eq!((version, status), (Version::HTTP_2, StatusCode::OK));
    assert_eq!(seen["path"], "/h2", "{seen}");
    // The upstream is spoken to in HTTP/1.1, with :authority as Host.
    assert_eq!(seen["version"], "HTTP/1.1", "{seen}");
    assert_eq!(seen["headers"]["host"], "a.example.test", "{seen}");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "{seen}");

    // An HTTP/1.1 client on the same listener still works.
    let options = ClientOptions {
        alpn: &[b"http/1.1"],
        ..ClientOptions::verifying(ca)
    };
    let mut stream = connect(secure, "a.example.test", &options)
        .await
        .expect("TLS");
    assert_eq!(alpn(&stream).as_deref(), Some(&b"http/1.1"[..]));
    let reply = exchange(&mut stream, &get("/api/h1", "a.example.test"))
        .await
        .unwrap();
    assert_eq!(reply.status, 200);

    // h2c: HTTP/2 in plain text with prior knowledge.
    let (version, status, seen) = h2_get(tcp(plain).await, "http://gateway.test/api/h2c")
        .await
        .expect("h2c request");
    assert_eq!((version, status), (Version::HTTP_2, StatusCode::OK));
    assert_eq!(seen["headers"]["host"], "gateway.test", "{seen}");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http", "{seen}");
    assert_eq!(
        plain_get(plain, "/api/h1").await.status,
        200,
        "HTTP/1.1 too"
    );

    // A header block over max_header_bytes (64 KiB) is refused per stream.
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp(plain).await))
            .await
            .expect("h2c handshake");
    tokio::spawn(connection);
    let big = Request::get("http://gateway.test/api/big")
        .header("x-big", "a".repeat(70 * 1024))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(big).await.expect("an answer");
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
}

#[tokio::test]
async fn http1_only_listener_refuses_h2c_and_h2() {
    let setup = tls_setup("h1only").await;
    let ca = &setup.ca;
    let (secure, plain, _daemon) = tls_and_plain(&setup, &["http2: false"], "");

    let h2c = tokio::time::timeout(WAIT, h2_get(tcp(plain).await, "http://gateway.test/api/x"))
        .await
        .expect("refused, not left hanging");
    assert!(
        h2c.is_err(),
        "h2c served on an HTTP/1.1-only listener: {h2c:?}"
    );
    assert_eq!(
        plain_get(plain, "/api/x").await.status,
        200,
        "HTTP/1.1 works"
    );

    // Over TLS, h2 is not offered: a client that wants it gets HTTP/1.1,
    // one that accepts nothing else is refused in the handshake.
    let both = ClientOptions {
        alpn: &[b"h2", b"http/1.1"],
        ..ClientOptions::verifying(ca)
    };
    let stream = connect(secure, "a.example.test", &both).await.expect("TLS");
    assert_eq!(alpn(&stream).as_deref(), Some(&b"http/1.1"[..]));
    let h2_only = ClientOptions {
        alpn: &[b"h2"],
        ..ClientOptions::verifying(ca)
    };
    assert!(connect(secure, "a.example.test", &h2_only).await.is_err());
}

/// Sends a WebSocket-style upgrade, checks the 101, then echoes bytes both
/// ways through the tunnel and closes it from the client side.
async fn websocket_round_trip<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, host: &str) {
    let request = format!(
        "GET /api/chat HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(WAIT, stream.read_u8())
            .await
            .expect("101 in time")
            .expect("101 head");
        head.push(byte);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(lower.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(
        lower.contains("\r\nx-upstream: one\r\n"),
        "came from the upstream: {head}"
    );

    // Small messages both ways, then a large one that needs flow control.
    for message in [&b"hello"[..], b"second message"] {
        stream.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(WAIT, stream.read_exact(&mut echoed))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(echoed, message);
    }
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let to_send = big.clone();
    let send = async move {
        writer.write_all(&to_send).await.unwrap();
        writer.shutdown().await.unwrap();
    };
    let receive = async {
        let mut echoed = Vec::new();
        tokio::time::timeout(WAIT, reader.read_to_end(&mut echoed))
            .await
            .expect("echo of 1 MiB and close in time")
            .unwrap();
        echoed
    };
    let ((), echoed) = tokio::join!(send, receive);
    assert_eq!(echoed.len(), big.len());
    assert!(echoed == big, "bytes changed in the tunnel");
}

#[tokio::test]
async fn websocket_upgrade_passes_through_plain_and_tls() {
    let setup = tls_setup("ws").await;
    let ca = &setup.ca;
    let (secure, plain, _daemon) = tls_and_plain(&setup, &[], "");
    websocket_round_trip(tcp(plain).await, "gateway.test").await;
    let options = ClientOptions {
        alpn: &[b"http/1.1"],
        ..ClientOptions::verifying(ca)
    };
    let stream = connect(secure, "a.example.test", &options)
        .await
        .expect("TLS");
    websocket_round_trip(stream, "a.example.test").await;
    // The listener keeps serving normal requests.
    assert_eq!(plain_get(plain, "/api/x").await.status, 200);

    // `Upgrade: h2c` is never tunnelled (h2c smuggling): it is forwarded as
    // a plain request without its Upgrade header.
    let reply = send_raw(
        plain,
        b"GET /api/x HTTP/1.1\r\nHost: gateway.test\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = reply.json();
    assert!(seen["headers"].get("upgrade").is_none(), "{seen}");

    // Nor is a request with a body (this upstream would switch any request
    // that asks): it goes on as a plain request, body and all.
    let reply = send_raw(
        plain,
        b"POST /api/x HTTP/1.1\r\nHost: gateway.test\r\nConnection: Upgrade, close\r\n\
          Upgrade: websocket\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = reply.json();
    assert!(seen["headers"].get("upgrade").is_none(), "{seen}");
    assert_eq!(seen["body_bytes"], 5, "{seen}");
}

/// `len` zero bytes, produced as hyper asks for them.
struct Zeros {
    remaining: u64,
    chunk: Bytes,
}

impl Body for Zeros {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// xgate's resident set size.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS value");
    kb * 1024
}

/// Samples xgate's RSS until dropped; `peak()` is the largest seen.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(rss_bytes(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (peak, stop) = (peak.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        Self { peak, stop, task }
    }

    async fn peak(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.peak.load(Ordering::Relaxed)
    }
}

const GIB: u64 = 1 << 30;
/// xgate may not grow by this much while moving a gigabyte: buffering even a
/// tenth of the body would show.
const MAX_RSS_GROWTH: u64 = 100 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gigabyte_upload_and_download_stream_with_flat_memory() {
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(&config(&[listener(listen, &[])], upstream.addr, ""), None);
    // Warm up pools and allocator before the baseline.
    assert_eq!(plain_get(listen, "/api/warm").await.status, 200);
    let baseline = rss_bytes(daemon.pid());

    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(tcp(listen).await))
            .await
            .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);

    // Upload: the echo counts the body frame by frame and reports the total.
    let sampler = RssSampler::start(daemon.pid());
    let upload = Request::post("/api/upload")
        .header("host", "gateway.test")
        .body(Zeros {
            remaining: GIB,
            chunk: Bytes::from(vec![0u8; 256 * 1024]),
        })
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(600), async {
        let response = sender.send_request(upload).await.expect("upload");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("upload answer")
            .to_bytes();
        serde_json::from_slice::<serde_json::Value>(&body).expect("JSON")
    })
    .await
    .expect("upload finished");
    let upload_peak = sampler.peak().await;
    assert_eq!(response["body_bytes"], GIB, "{response}");

    // Download: counted as it arrives, never held.
    let sampler = RssSampler::start(daemon.pid());
    sender.ready().await.expect("connection reusable");
    let download = Request::get(format!("/api/stream/{GIB}"))
        .header("host", "gateway.test")
        .body(Zeros {
            remaining: 0,
            chunk: Bytes::new(),
        })
        .unwrap();
    let received = tokio::time::timeout(Duration::from_secs(600), async {
        let response = sender.send_request(download).await.expect("download");
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let mut received = 0u64;
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame.expect("download frame").data_ref() {
                received += data.len() as u64;
            }
        }
        received
    })
    .await
    .expect("download finished");
    let download_peak = sampler.peak().await;
    assert_eq!(received, GIB);

    let growth = upload_peak.max(download_peak).saturating_sub(baseline);
    assert!(
        growth < MAX_RSS_GROWTH,
        "xgate grew by {} MiB moving 1 GiB (baseline {} MiB, upload peak {} MiB, download peak {} MiB)",
        growth >> 20,
        baseline >> 20,
        upload_peak >> 20,
        download_peak >> 20
    );
}

/// A PROXY protocol v2 header for TCP from `source` to `destination`.
fn proxy_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.push(0x21); // v2, PROXY
    let mut block = Vec::new();
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            block.extend_from_slice(&s.ip().octets());
            block.extend_from_slice(&d.ip().octets());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            out.push(0x21);
            block.extend_from_slice(&s.ip().octets());
            block.extend_from_slice(&d.ip().octets());
        }
        _ => panic!("mixed families"),
    }
    block.extend_from_slice(&source.port().to_be_bytes());
    block.extend_from_slice(&destination.port().to_be_bytes());
    out.extend_from_slice(&(block.len() as u16).to_be_bytes());
    out.extend_from_slice(&block);
    out
}

/// v2 LOCAL: the balancer speaking for itself (health checks).
fn proxy_v2_local() -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    out
}

async fn with_proxy_header(addr: SocketAddr, header: &[u8], request: &[u8]) -> Option<Reply> {
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(request);
    exchange(&mut tcp(addr).await, &bytes).await
}

#[tokio::test]
async fn proxy_protocol_from_a_trusted_peer_sets_the_client_address() {
    let setup = tls_setup("proxyproto").await;
    let ca = &setup.ca;
    let (secure, plain, daemon) = tls_and_plain(
        &setup,
        &["proxy_protocol: true"],
        "trusted_proxies: [127.0.0.0/8]\n",
    );
    let request = get("/api/who", "gateway.test");

    let v1 = format!(
        "PROXY TCP4 203.0.113.7 127.0.0.1 40000 {}\r\n",
        plain.port()
    );
    let reply = with_proxy_header(plain, v1.as_bytes(), &request)
        .await
        .expect("v1 answer");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["headers"]["x-forwarded-for"], "203.0.113.7");

    let v2 = proxy_v2(
        "[2001:db8::7]:40000".parse().unwrap(),
        "[2001:db8::1]:443".parse().unwrap(),
    );
    let reply = with_proxy_header(plain, &v2, &request)
        .await
        .expect("v2 answer");
    assert_eq!(reply.json()["headers"]["x-forwarded-for"], "2001:db8::7");

    let reply = with_proxy_header(plain, &proxy_v2_local(), &request)
        .await
        .expect("v2 LOCAL answer");
    assert_eq!(
        reply.json()["headers"]["x-forwarded-for"],
        "127.0.0.1",
        "LOCAL: the balancer itself"
    );

    // The header comes before TLS.
    let mut tcp_stream = tcp(secure).await;
    let v2 = proxy_v2("198.51.100.20:5000".parse().unwrap(), secure);
    tcp_stream.write_all(&v2).await.unwrap();
    let config = ClientOptions::verifying(ca).config();
    let mut stream = tokio_rustls::TlsConnector::from(config)
        .connect("a.example.test".try_into().unwrap(), tcp_stream)
        .await
        .expect("TLS after the PROXY header");
    let reply = exchange(&mut stream, &get("/api/who", "a.example.test"))
        .await
        .unwrap();
    assert_eq!(reply.json()["headers"]["x-forwarded-for"], "198.51.100.20");
    assert_eq!(reply.json()["headers"]["x-forwarded-proto"], "https");

    // The blocklist applies to the address the header reports.
    let out = daemon.cli(&["blocklist", "add", "203.0.113.9", "--reason", "proxied"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let blocked = format!(
        "PROXY TCP4 203.0.113.9 127.0.0.1 40000 {}\r\n",
        plain.port()
    );
    assert!(
        with_proxy_header(plain, blocked.as_bytes(), &request)
            .await
            .is_none(),
        "blocklisted client got an answer"
    );
    assert_eq!(daemon.status()["l7_denied_connections"], 1);

    // A trusted peer that sends no (or a broken) header is closed.
    assert!(
        with_proxy_header(plain, b"", &request).await.is_none(),
        "no header"
    );
    assert!(
        with_proxy_header(plain, b"PROXY TCP4 nonsense\r\n", &request)
            .await
            .is_none(),
        "malformed header"
    );
    // Logged for the operator (the client saw the close before the line).
    let mut logged = false;
    for _ in 0..100 {
        logged = daemon.log().contains("malformed PROXY protocol header");
        if logged {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logged, "{}", daemon.log());
}

#[tokio::test]
async fn proxy_protocol_from_an_untrusted_peer_is_closed() {
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let proxied = free_port();
    let direct = free_port();
    let _daemon = Daemon::start(
        &config(
            &[
                listener(proxied, &["proxy_protocol: true"]),
                listener(direct, &[]),
            ],
            upstream.addr,
            "trusted_proxies: [10.0.0.0/8]\n",
        ),
        None,
    );
    let request = get("/api/who", "gateway.test");
    let v1 = format!(
        "PROXY TCP4 203.0.113.7 127.0.0.1 40000 {}\r\n",
        proxied.port()
    );
    assert!(
        with_proxy_header(proxied, v1.as_bytes(), &request)
            .await
            .is_none(),
        "a PROXY header from 127.0.0.1 (not in trusted_proxies) was believed"
    );
    let v2 = proxy_v2("203.0.113.7:40000".parse().unwrap(), proxied);
    assert!(with_proxy_header(proxied, &v2, &request).await.is_none());
    // Listeners without proxy_protocol are unaffected.
    let reply = plain_get(direct, "/api/who").await;
    assert_eq!(reply.json()["headers"]["x-forwarded-for"], "127.0.0.1");
}

/// A request head of exactly `size` bytes that never ends.
fn unterminated_head(size: usize) -> Vec<u8> {
    let mut head = b"GET /api/x HTTP/1.1\r\nHost: gateway.test\r\nX-Big: ".to_vec();
    head.resize(size, b'a');
    head
}

/// A complete request with `count` header fields in all (Host included).
fn with_headers(count: usize) -> Vec<u8> {
    let mut request =
        "GET /api/x HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n".to_string();
    for i in 2..count {
        request.push_str(&format!("X-Header-{i}: {i}\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Reply {
    exchange(&mut tcp(addr).await, bytes)
        .await
        .expect("an answer")
}

#[tokio::test]
async fn too_many_or_too_large_headers_get_431() {
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let tight = free_port();
    let defaults = free_port();
    let daemon = Daemon::start(
        &config(
            &[
                listener(tight, &["max_headers: 10", "max_header_bytes: 8192"]),
                listener(defaults, &[]),
            ],
            upstream.addr,
            "",
        ),
        None,
    );
    assert_eq!(send_raw(tight, &with_headers(10)).await.status, 200);
    let reply = send_raw(tight, &with_headers(11)).await;
    assert_eq!(reply.status, 431, "{reply:?}");
    // Every byte sent is read before the answer, so the 431 is not lost to
    // a reset.
    assert_eq!(send_raw(tight, &unterminated_head(8192)).await.status, 431);
    let mut fits = unterminated_head(6000);
    fits.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    assert_eq!(send_raw(tight, &fits).await.status, 200);

    // Defaults: 100 headers, 64 KiB.
    assert_eq!(send_raw(defaults, &with_headers(100)).await.status, 200);
    assert_eq!(send_raw(defaults, &with_headers(101)).await.status, 431);
    assert_eq!(
        send_raw(defaults, &unterminated_head(64 * 1024))
            .await
            .status,
        431
    );
    let mut fits = unterminated_head(60 * 1024);
    fits.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    assert_eq!(send_raw(defaults, &fits).await.status, 200);

    // Each refusal is counted, by listener and status.
    for addr in [tight, defaults] {
        refusals_counted(&daemon, addr, 431, 2).await;
    }
}

/// Waits (bounded) until the metrics show `count` heads refused with
/// `status` on the listener at `addr` (counted once the refusal is out).
async fn refusals_counted(daemon: &Daemon, addr: SocketAddr, status: u16, count: u32) {
    metric_reaches(
        daemon,
        &format!(
            "xgate_http1_refused_heads_total{{listener=\"{addr}\",status=\"{status}\"}} {count}"
        ),
    )
    .await;
}

/// Waits (bounded) until the metrics have `line`.
async fn metric_reaches(daemon: &Daemon, line: &str) {
    for _ in 0..100 {
        if daemon.admin_get("/metrics").contains(line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("missing `{line}` in:\n{}", daemon.admin_get("/metrics"));
}

/// A target that answers every request with a 1 GiB body, written as fast
/// as the gateway takes it. Each connection whose write fails (the gateway
/// let go of it in the middle of the body) is reported on the channel.
async fn endless_target() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (released, releases) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let released = released.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read_u8().await {
                        Ok(byte) => head.push(byte),
                        Err(_) => return,
                    }
                }
                let piece = vec![b'x'; 64 * 1024];
                let mut out = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n")
                    .await;
                for _ in 0..(GIB / piece.len() as u64) {
                    if out.is_err() {
                        break;
                    }
                    out = stream.write_all(&piece).await;
                }
                if out.is_err() {
                    let _ = released.send(());
                }
            });
        }
    });
    (addr, releases)
}

/// The start of an h2c connection that asks for `path` and then reads
/// nothing: the preface, SETTINGS and WINDOW_UPDATE that open the windows
/// all the way (so that only the socket holds the server back), and the
/// request on stream 1.
fn h2_request_never_read(path: &str, authority: &str) -> Vec<u8> {
    let max_window = 0x7fff_ffffu32;
    let mut out = h2::PREFACE.to_vec();
    let mut settings = 4u16.to_be_bytes().to_vec(); // SETTINGS_INITIAL_WINDOW_SIZE
    settings.extend_from_slice(&max_window.to_be_bytes());
    out.extend(h2::frame(h2::SETTINGS, 0, 0, &settings));
    let grow = (max_window - 65_535).to_be_bytes();
    out.extend(h2::frame(h2::WINDOW_UPDATE, 0, 0, &grow));
    let block = h2::request_block("GET", path, authority);
    out.extend(h2::frame(
        h2::HEADERS,
        h2::END_STREAM | h2::END_HEADERS,
        1,
        &block,
    ));
    out
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_after_send_timeout() {
    let (target, mut released) = endless_target().await;
    let listen = free_port();
    let daemon = Daemon::start(
        &config(&[listener(listen, &["send_timeout: 1s"])], target, ""),
        None,
    );
    let http1 = get("/api/big", "gateway.test");
    let http2 = h2_request_never_read("/api/big", "gateway.test");
    for (count, request) in [(1, &http1), (2, &http2)] {
        // A client that asks for 1 GiB and reads nothing: the socket
        // buffers on the way fill up, then nothing moves.
        let mut client = tcp(listen).await;
        client.write_all(request).await.unwrap();
        metric_reaches(
            &daemon,
            &format!("xgate_client_send_timeouts_total{{listener=\"{listen}\"}} {count}"),
        )
        .await;
        // The target's connection is let go of in the middle of the body,
        // not kept (nor pooled).
        tokio::time::timeout(WAIT, released.recv())
            .await
            .expect("the target's connection was closed")
            .unwrap();
        // The client's connection is closed: what was buffered, then the
        // end, far short of the body.
        let raw = read_until_closed(&mut client).await;
        assert!(!raw.is_empty());
        assert!((raw.len() as u64) < GIB / 2, "{}", raw.len());
    }
    // Logged once per connection, with the client.
    let log = daemon.log();
    let logged = log
        .lines()
        .filter(|l| l.contains("client took no bytes of a response within send_timeout"))
        .filter(|l| l.contains("client.ip=127.0.0.1"))
        .count();
    assert_eq!(logged, 2, "{log}");
}

#[tokio::test]
async fn slow_request_head_gets_408_and_a_silent_connection_is_closed() {
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let auto = free_port();
    let http1 = free_port();
    let daemon = Daemon::start(
        &config(
            &[
                listener(auto, &["header_read_timeout: 1s"]),
                listener(http1, &["header_read_timeout: 1s", "http2: false"]),
            ],
            upstream.addr,
            "",
        ),
        None,
    );
    for addr in [auto, http1] {
        // Half a request, then nothing.
        let reply = exchange(&mut tcp(addr).await, b"GET /api/x HTTP/1.1\r\nHost: gatew")
            .await
            .expect("a 408");
        assert_eq!(reply.status, 408, "{reply:?}");
        assert_eq!(reply.header("connection"), Some("close"));
        assert_eq!(reply.json()["message"], "request header timeout");

        // Nothing at all: closed without a word.
        let mut silent = tcp(addr).await;
        assert!(read_until_closed(&mut silent).await.is_empty());

        // After a complete exchange, an idle keep-alive connection is
        // closed quietly too (a 408 could race the client's next request).
        let mut kept = tcp(addr).await;
        kept.write_all(b"GET /api/x HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
            .await
            .unwrap();
        let raw = read_until_closed(&mut kept).await;
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        // (Not a bare "408": the random X-Request-Id may contain it.)
        assert!(!text.contains("HTTP/1.1 408"), "{text}");
        // Only the started head was answered, and counted.
        refusals_counted(&daemon, addr, 408, 1).await;
    }
}

#[tokio::test]
async fn certificate_reload_serves_the_new_certificate_and_a_broken_key_keeps_the_old() {
    let dir = TempDir::new("certreload");
    let ca = TestCa::new();
    let first = ca.leaf(&["a.example.test"], dir.path(), "site");
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(
        &config(
            &[listener_with(listen, &tls_lines(&[&first], &[]))],
            upstream.addr,
            "",
        ),
        None,
    );
    let verifying = ClientOptions::verifying(&ca);
    let served = || async {
        let stream = connect(listen, "a.example.test", &verifying)
            .await
            .expect("TLS");
        served_leaf(&stream)
    };
    assert_eq!(served().await, first.der);

    // Same paths, new certificate and key: `xgate reload` picks them up.
    let second = ca.leaf(&["a.example.test"], dir.path(), "site");
    assert_ne!(second.der, first.der);
    let out = daemon.cli(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        served().await,
        second.der,
        "new handshakes use the new certificate"
    );

    // A broken key fails the reload, names the file, and keeps the old pair.
    std::fs::write(&second.key, "-----BEGIN PRIVATE KEY-----\ngarbage\n").unwrap();
    let out = daemon.cli(&["reload"]);
    assert!(!out.status.success(), "reload with a broken key succeeded");
    let message = stderr(&out);
    assert!(
        message.contains("listeners[0].tls.certificates[0].key")
            && message.contains(&second.key.display().to_string()),
        "{message}"
    );
    assert_eq!(served().await, second.der, "the running certificate stays");
    assert_eq!(plain_status_over_tls(listen, &ca).await, 200);
}

async fn plain_status_over_tls(addr: SocketAddr, ca: &TestCa) -> u16 {
    let mut stream = connect(addr, "a.example.test", &ClientOptions::verifying(ca))
        .await
        .expect("TLS");
    exchange(&mut stream, &get("/api/x", "a.example.test"))
        .await
        .expect("answer")
        .status
}

#[test]
fn tls_files_and_limits_are_validated_with_their_config_path() {
    let dir = TempDir::new("tlsvalidate");
    let ca = TestCa::new();
    let a = ca.leaf(&["a.example.test"], dir.path(), "a");
    let b = ca.leaf(&["b.example.test"], dir.path(), "b");
    let nameless = ca.leaf(&[], dir.path(), "nameless");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let missing = dir.path().join("missing.pem");
    let yaml = format!(
        "listeners:\n\
         \x20 - address: '127.0.0.1:8443'\n\
         \x20   tls:\n\
         \x20     certificates:\n\
         \x20       - {{cert: '{missing}', key: '{akey}'}}\n\
         \x20       - {{cert: '{acert}', key: '{bkey}'}}\n\
         \x20       - {{cert: '{empty}', key: '{akey}'}}\n\
         \x20       - {{cert: '{ncert}', key: '{nkey}'}}\n\
         \x20       - {{cert: '{acert}', key: '{empty}'}}\n\
         \x20 - address: '127.0.0.1:8444'\n\
         \x20   tls: {{certificates: []}}\n\
         \x20   max_header_bytes: 100\n\
         \x20   max_headers: 0\n\
         \x20   header_read_timeout: 0s\n\
         upstreams: {{u: {{targets: ['127.0.0.1:9000']}}}}\n",
        missing = missing.display(),
        akey = a.key.display(),
        acert = a.cert.display(),
        bkey = b.key.display(),
        empty = empty.display(),
        ncert = nameless.cert.display(),
        nkey = nameless.key.display(),
    );
    let errors: Vec<String> = gateway_userspace::config::Config::from_yaml(&yaml, "test.yaml")
        .expect_err("invalid")
        .errors
        .iter()
        .map(ToString::to_string)
        .collect();
    let expected = [
        format!("listeners[0].tls.certificates[0].cert: cannot read {}", missing.display()),
        format!(
            "listeners[0].tls.certificates[1].key: the private key in {} does not match the certificate in {}",
            b.key.display(),
            a.cert.display()
        ),
        format!("listeners[0].tls.certificates[2].cert: no certificate found in {}", empty.display()),
        "listeners[0].tls.certificates[3].cert: ".to_string() + &format!("{} has no DNS names", nameless.cert.display()),
        format!("listeners[0].tls.certificates[4].key: no private key found in {}", empty.display()),
        "listeners[1].max_header_bytes: must be 8192 to 1048576".to_string(),
        "listeners[1].max_headers: must be 1 to 10000".to_string(),
        "listeners[1].header_read_timeout: must be greater than zero".to_string(),
        "listeners[1].tls.certificates: at least one certificate is required".to_string(),
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for want in &expected {
        assert!(
            errors.iter().any(|e| e.starts_with(want.as_str())),
            "missing {want:?} in {errors:#?}"
        );
    }

    let bad_version =
        "listeners: [{address: '127.0.0.1:8443', tls: {certificates: [], min_version: '1.1'}}]\n";
    let errors = gateway_userspace::config::Config::from_yaml(bad_version, "test.yaml")
        .expect_err("invalid")
        .errors;
    assert!(
        errors[0]
            .to_string()
            .starts_with("listeners[0].tls.min_version: unsupported TLS version '1.1'"),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_h2_requests_and_upgraded_tunnels_then_cuts_them() {
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(&config(&[listener(listen, &[])], upstream.addr, ""), None);

    // A WebSocket tunnel, open and working.
    let mut tunnel = tcp(listen).await;
    tunnel
        .write_all(
            b"GET /api/chat HTTP/1.1\r\nHost: gateway.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(
            tokio::time::timeout(WAIT, tunnel.read_u8())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));

    // An h2c request still running when the signal comes.
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(tcp(listen).await),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(connection);
    let slow = Request::get("http://gateway.test/api/delay/1500")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let in_flight = tokio::spawn(async move {
        let response = sender.send_request(slow).await?;
        let status = response.status();
        response.into_body().collect().await?;
        Ok::<_, hyper::Error>(status)
    });
    // Let the request reach the upstream before the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let term = std::process::Command::new("kill")
        .args(["-TERM", &daemon.pid().to_string()])
        .status()
        .unwrap();
    assert!(term.success());

    let status = tokio::time::timeout(WAIT, in_flight)
        .await
        .expect("in-flight h2 request finished")
        .unwrap()
        .expect("in-flight h2 request completed, not cut");
    assert_eq!(status, StatusCode::OK);

    // New connections are refused once the listener has closed.
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(listen).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "listener still accepting after SIGTERM");

    // The tunnel still works during the drain...
    tunnel.write_all(b"still here").await.unwrap();
    let mut echoed = [0u8; 10];
    tokio::time::timeout(WAIT, tunnel.read_exact(&mut echoed))
        .await
        .expect("echo during the drain")
        .unwrap();
    assert_eq!(&echoed, b"still here");
    // ...and is cut at the drain deadline, after which xgate exits cleanly.
    let rest = read_until_closed(&mut tunnel).await;
    assert!(rest.is_empty(), "{rest:?}");
    daemon.stop();
}
