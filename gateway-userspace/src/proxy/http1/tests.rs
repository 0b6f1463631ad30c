//! The server driven over in-memory pipes (and, where a reset matters, TCP
//! on loopback) by a client that writes raw bytes and reads raw answers.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch},
    task::JoinHandle,
};

use super::*;
use crate::{
    http1::chunked::{ChunkedDecoder, Decoded},
    proxy::test_body::Frames,
};

const SETTINGS: Settings = Settings {
    head: HeadLimits {
        max_bytes: 8192,
        max_fields: 20,
    },
    header_read_timeout: Duration::from_secs(10),
    send_timeout: Duration::from_secs(10),
};

/// A body of `data` pieces whose size is not known up front (so the server
/// must frame it itself).
fn pieces(data: &[&str], trailers: Option<HeaderMap>) -> Body {
    let data = data.iter().map(|d| Bytes::copy_from_slice(d.as_bytes()));
    Frames::new(data, trailers).map_err(|e| match e {}).boxed()
}

fn full(text: impl Into<String>) -> Body {
    Full::new(Bytes::from(text.into()))
        .map_err(|e| match e {})
        .boxed()
}

/// Answers `METHOD PATH body=...` with whatever body the request had, its
/// trailers as `name=value` lines after it.
async fn echo(req: Request<RequestBody<DuplexStream>>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let collected = body.collect().await.expect("a whole body");
    let mut text = format!("{} {} body=", parts.method, parts.uri);
    let trailers = collected.trailers().cloned();
    text.push_str(&String::from_utf8_lossy(&collected.to_bytes()));
    for (name, value) in trailers.iter().flatten() {
        text.push_str(&format!(" {name}={}", value.to_str().unwrap()));
    }
    Response::new(full(text))
}

struct Served {
    client: Client<DuplexStream>,
    task: JoinHandle<Result<(), Error>>,
    shutdown: watch::Sender<bool>,
}

fn start<S, F>(settings: Settings, service: S) -> Served
where
    S: FnMut(Request<RequestBody<DuplexStream>>) -> F + Send + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let (client, server) = tokio::io::duplex(256 * 1024);
    let (shutdown, mut rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let timer = ConnTimer::new();
        serve(server, settings, &timer, &mut rx, service).await
    });
    Served {
        client: Client::new(client),
        task,
        shutdown,
    }
}

/// A raw HTTP/1.1 client: writes what it is given, reads responses.
struct Client<S> {
    io: S,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Option<HeaderMap>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    fn new(io: S) -> Self {
        Self {
            io,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, raw: &str) {
        self.io.write_all(raw.as_bytes()).await.unwrap();
    }

    /// More bytes; false when the server closed.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), self.io.read(&mut chunk))
            .await
            .expect("the server answers within 10 s")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next response; `None` when the server closed first.
    async fn reply(&mut self, head_request: bool) -> Option<Reply> {
        let (status, headers, len) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut fields);
            if let httparse::Status::Complete(len) = response.parse(&self.buf).unwrap() {
                let headers: Vec<(String, String)> = response
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                break (response.code.unwrap(), headers, len);
            }
            if !self.fill().await {
                return None;
            }
        };
        self.buf.drain(..len);
        let mut reply = Reply {
            status,
            headers,
            body: Vec::new(),
            trailers: None,
        };
        if head_request || status == 101 || status == 100 || status == 204 {
            return Some(reply);
        }
        if reply.header("transfer-encoding").is_some() {
            let mut decoder = ChunkedDecoder::default();
            let mut pending = bytes::BytesMut::from(&self.buf[..]);
            self.buf.clear();
            loop {
                match decoder.decode(&mut pending).expect("valid chunked framing") {
                    Decoded::Data(data) => reply.body.extend_from_slice(&data),
                    Decoded::Trailers(map) => reply.trailers = Some(map),
                    Decoded::Done => break,
                    Decoded::NeedMore => {
                        assert!(self.fill().await, "closed inside a chunked body");
                        pending.extend_from_slice(&self.buf);
                        self.buf.clear();
                    }
                }
            }
            self.buf.extend_from_slice(&pending);
        } else if let Some(len) = reply.header("content-length") {
            let len: usize = len.parse().unwrap();
            while self.buf.len() < len {
                assert!(self.fill().await, "closed inside a body");
            }
            reply.body = self.buf.drain(..len).collect();
        } else {
            while self.fill().await {}
            reply.body = std::mem::take(&mut self.buf);
        }
        Some(reply)
    }

    /// Whether the server has closed (reads until it does, bounded).
    async fn closed(&mut self) -> bool {
        while self.fill().await {}
        true
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let mut s = start(SETTINGS, echo);
    s.client
        .send(
            "GET /one HTTP/1.1\r\nHost: a\r\n\r\n\
             POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
             GET /three HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await;
    for expected in ["GET /one body=", "POST /two body=hello", "GET /three body="] {
        let reply = s.client.reply(false).await.expect("a reply");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), expected);
        assert!(reply.header("date").is_some());
        assert_eq!(reply.header("connection"), None, "kept alive");
    }
    drop(s.client);
    s.task.await.unwrap().expect("a clean close");
}

#[tokio::test]
async fn chunked_uploads_are_decoded_with_their_trailers() {
    let mut s = start(SETTINGS, echo);
    // In pieces, split inside the framing.
    for piece in [
        "PUT /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        "lo\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n",
        "\r\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        s.client.send(piece).await;
        tokio::task::yield_now().await;
    }
    let reply = s.client.reply(false).await.unwrap();
    assert_eq!(reply.text(), "PUT /up body=hello world x-sum=42");
    let reply = s.client.reply(false).await.unwrap();
    assert_eq!(reply.text(), "GET /after body=", "the next request follows");
}

#[tokio::test]
async fn responses_are_framed_by_length_chunks_or_close() {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-digest", "abc".parse().unwrap());
    let mut s = start(SETTINGS, move |req: Request<RequestBody<DuplexStream>>| {
        let trailers = trailers.clone();
        async move {
            match req.uri().path() {
                "/chunked" => Response::new(pieces(&["ab", "", "cd"], Some(trailers))),
                "/large" => Response::new(pieces(&[&"x".repeat(100_000), "tail"], None)),
                _ => Response::new(full("exact")),
            }
        }
    });
    s.client
        .send(
            "GET /exact HTTP/1.1\r\nHost: a\r\n\r\n\
             GET /chunked HTTP/1.1\r\nHost: a\r\nTE: gzip, Trailers\r\n\r\n\
             GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await;
    let exact = s.client.reply(false).await.unwrap();
    assert_eq!(exact.header("content-length"), Some("5"));
    assert_eq!(exact.text(), "exact");
    let chunked = s.client.reply(false).await.unwrap();
    assert_eq!(chunked.header("transfer-encoding"), Some("chunked"));
    assert_eq!(chunked.text(), "abcd");
    assert_eq!(chunked.trailers.unwrap()["x-digest"], "abc", "asked for");
    // Without `TE: trailers` the body ends with the last chunk alone.
    let chunked = s.client.reply(false).await.unwrap();
    assert_eq!(chunked.text(), "abcd");
    assert!(chunked.trailers.is_none(), "not asked for: {chunked:?}");

    // Large pieces go out as they are, still framed.
    s.client
        .send("GET /large HTTP/1.1\r\nHost: a\r\n\r\nHEAD /exact HTTP/1.1\r\nHost: a\r\n\r\n")
        .await;
    let large = s.client.reply(false).await.unwrap();
    assert_eq!(large.body.len(), 100_004);
    assert!(large.text().ends_with("xtail"));
    let head = s.client.reply(true).await.unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());

    // HTTP/1.0 without a known length: the body runs until the close.
    s.client.send("GET /chunked HTTP/1.0\r\n\r\n").await;
    let until_close = s.client.reply(false).await.unwrap();
    assert_eq!(until_close.header("transfer-encoding"), None);
    assert_eq!(until_close.header("connection"), Some("close"));
    assert_eq!(until_close.text(), "abcd");
    s.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn http_1_0_keeps_alive_only_when_asked() {
    let mut s = start(SETTINGS, echo);
    s.client
        .send("GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let reply = s.client.reply(false).await.unwrap();
    assert_eq!(reply.header("connection"), Some("keep-alive"));
    s.client.send("GET /b HTTP/1.0\r\n\r\n").await;
    let reply = s.client.reply(false).await.unwrap();
    assert_eq!(reply.text(), "GET /b body=");
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(s.client.closed().await);
}

#[tokio::test]
async fn expect_continue_gets_a_100_only_when_the_body_is_read() {
    let mut s = start(
        SETTINGS,
        |req: Request<RequestBody<DuplexStream>>| async move {
            if req.uri().path() == "/refuse" {
                return Response::builder().status(413).body(full("no")).unwrap();
            }
            echo(req).await
        },
    );
    s.client
        .send("PUT /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        .await;
    let interim = s.client.reply(false).await.unwrap();
    assert_eq!(interim.status, 100, "the client is told to go on");
    s.client.send("data").await;
    let reply = s.client.reply(false).await.unwrap();
    assert_eq!(reply.text(), "PUT /up body=data");

    // Answered without reading: no 100, and the unread body ends the
    // connection.
    s.client
        .send(
            "PUT /refuse HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
        )
        .await;
    let reply = s.client.reply(false).await.unwrap();
    assert_eq!(reply.status, 413);
    assert_eq!(reply.header("connection"), Some("close"), "announced");
    assert!(s.client.closed().await);
}

#[tokio::test]
async fn an_unread_body_closes_the_connection_after_the_response() {
    let mut s = start(SETTINGS, |_req: Request<RequestBody<DuplexStream>>| async {
        Response::new(full("early"))
    });
    s.client
        .send("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01234")
        .await;
    let reply = s.client.reply(false).await.unwrap();
    assert_eq!(reply.text(), "early");
    assert_eq!(reply.header("connection"), Some("close"), "announced");
    // The rest of the body must not be read as the next request.
    let _ = s
        .client
        .io
        .write_all(b"GET /smuggled HTTP/1.1\r\n\r\n")
        .await;
    assert!(s.client.closed().await);
    s.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn bad_heads_get_400_or_431_and_a_close() {
    for (raw, status) in [
        ("GET / HTTP/1.1\r\nHost: a\r\nBad Name: v\r\n\r\n", 400),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            400,
        ),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ] {
        let mut s = start(SETTINGS, echo);
        s.client.send(raw).await;
        let reply = s.client.reply(false).await.unwrap();
        assert_eq!(reply.status, status, "{raw:?}");
        assert_eq!(reply.header("connection"), Some("close"));
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert!(s.client.closed().await);
        assert!(matches!(s.task.await.unwrap(), Err(Error::Head(_))));
    }
    let mut many = "GET / HTTP/1.1\r\nHost: a\r\n".to_string();
    for i in 0..20 {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let mut s = start(SETTINGS, echo);
    s.client.send(&many).await;
    assert_eq!(s.client.reply(false).await.unwrap().status, 431);
    // A head that never ends is refused once it fills the limit.
    let mut s = start(SETTINGS, echo);
    s.client
        .send(&format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(8192)))
        .await;
    assert_eq!(s.client.reply(false).await.unwrap().status, 431);
}

#[tokio::test(start_paused = true)]
async fn a_late_head_gets_408_and_an_idle_connection_is_closed_quietly() {
    let settings = Settings {
        header_read_timeout: Duration::from_secs(5),
        ..SETTINGS
    };
    let mut s = start(settings, echo);
    s.client.send("GET / HTTP/1.1\r\nHo").await;
    let reply = s.client.reply(false).await.unwrap();
    assert_eq!(reply.status, 408);
    assert!(reply.text().contains("request header timeout"));
    assert!(matches!(s.task.await.unwrap(), Err(Error::HeadTimeout)));

    let mut s = start(settings, echo);
    s.client.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(s.client.reply(false).await.unwrap().status, 200);
    // Idle after an answer: closed without one.
    let started = tokio::time::Instant::now();
    assert!(s.client.reply(false).await.is_none());
    assert!(started.elapsed() >= Duration::from_secs(5));
    s.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn draining_finishes_the_request_in_flight_then_closes() {
    let (release, released) = oneshot::channel::<()>();
    let released = std::sync::Mutex::new(Some(released));
    let mut s = start(SETTINGS, move |_req: Request<RequestBody<DuplexStream>>| {
        let released = released.lock().unwrap().take();
        async move {
            if let Some(released) = released {
                let _ = released.await;
            }
            Response::new(full("done"))
        }
    });
    s.client.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    tokio::task::yield_now().await;
    s.shutdown.send_replace(true);
    tokio::task::yield_now().await;
    release.send(()).unwrap();
    let reply = s.client.reply(false).await.unwrap();
    assert_eq!(reply.text(), "done");
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(s.client.closed().await);
    s.task.await.unwrap().unwrap();

    // Idle between requests when the drain starts: closed at once.
    let mut s = start(SETTINGS, echo);
    s.client
        .send("GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        .await;
    assert_eq!(
        s.client.reply(false).await.unwrap().text(),
        "GET /first body="
    );
    s.shutdown.send_replace(true);
    assert!(s.client.closed().await);
    s.task.await.unwrap().unwrap();

    // New, its request not read yet when the drain starts: served, then
    // closed (the connection was accepted; its client is waiting).
    let mut s = start(SETTINGS, echo);
    s.shutdown.send_replace(true);
    tokio::task::yield_now().await;
    s.client.send("GET /late HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let reply = s.client.reply(false).await.unwrap();
    assert_eq!(reply.text(), "GET /late body=");
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(s.client.closed().await);
    s.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_half_close_still_gets_its_answer() {
    let mut s = start(SETTINGS, echo);
    s.client.send("GET /last HTTP/1.1\r\nHost: a\r\n\r\n").await;
    s.client.io.shutdown().await.unwrap();
    let reply = s.client.reply(false).await.unwrap();
    assert_eq!(reply.text(), "GET /last body=");
    assert!(s.client.closed().await);
    s.task.await.unwrap().unwrap();
}

/// Counts drops of the proxy's future for a request.
struct DropCount<'a>(&'a AtomicUsize);

impl Drop for DropCount<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_reset_cancels_the_request_in_flight() {
    static CANCELLED: AtomicUsize = AtomicUsize::new(0);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (_tx, mut rx) = watch::channel(false);
        let timer = ConnTimer::new();
        serve(stream, SETTINGS, &timer, &mut rx, |_req| async {
            let _guard = DropCount(&CANCELLED);
            std::future::pending::<()>().await;
            Response::new(full("never"))
        })
        .await
    });
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // SO_LINGER 0: the close is a reset. (Deprecated in tokio because the
    // drop may block; with a zero linger it does not.)
    #[allow(deprecated)]
    client.set_linger(Some(Duration::ZERO)).unwrap();
    drop(client);
    let ended = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server notices the reset")
        .unwrap();
    assert!(matches!(ended, Err(Error::Read(_))), "{ended:?}");
    assert_eq!(
        CANCELLED.load(Ordering::SeqCst),
        1,
        "the request was dropped"
    );
}

#[tokio::test]
async fn a_101_hands_the_stream_and_early_bytes_to_the_upgrade() {
    let (got, upgraded) = oneshot::channel();
    let got = std::sync::Mutex::new(Some(got));
    let mut s = start(SETTINGS, move |req: Request<RequestBody<DuplexStream>>| {
        let handover = req
            .extensions()
            .get::<ClientUpgrade<DuplexStream>>()
            .and_then(ClientUpgrade::take);
        let _ = got.lock().unwrap().take().unwrap().send(handover);
        async {
            Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "echo")
                .body(full(""))
                .unwrap()
        }
    });
    s.client
        .send("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly")
        .await;
    let reply = s.client.reply(false).await.unwrap();
    assert_eq!(reply.status, 101);
    assert_eq!(reply.header("upgrade"), Some("echo"));
    s.task.await.unwrap().unwrap();
    let handover = upgraded.await.unwrap().expect("an upgrade was offered");
    let (mut stream, early) = handover.await.expect("handed over");
    assert_eq!(&early[..], b"early");
    stream.write_all(b"tunnelled").await.unwrap();
    let mut buf = [0u8; 9];
    s.client.io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"tunnelled");
}

#[tokio::test]
async fn a_response_shorter_than_its_length_is_cut_off() {
    let mut s = start(SETTINGS, |_req: Request<RequestBody<DuplexStream>>| async {
        Response::builder()
            .header("content-length", "10")
            .body(pieces(&["short"], None))
            .unwrap()
    });
    s.client.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(matches!(s.task.await.unwrap(), Err(Error::ResponseLength)));
    // What was sent is the head and the short body: the client sees the
    // connection end before the promised length.
    let mut raw = Vec::new();
    s.client.io.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("content-length: 10"), "{text}");
    assert!(text.ends_with("short"), "{text}");
}

/// `left` bytes of `x` in 16 KiB frames, each ready at once, with the size
/// known (a large download from a fast target); counts its drop in
/// `released` (the upstream side let go).
struct Download {
    left: u64,
    _released: DropCount<'static>,
}

impl Download {
    fn body(len: u64, released: &'static AtomicUsize) -> Body {
        Self {
            left: len,
            _released: DropCount(released),
        }
        .boxed()
    }
}

impl hyper::body::Body for Download {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        static PIECE: [u8; 16 * 1024] = [b'x'; 16 * 1024];
        let n = self.left.min(PIECE.len() as u64);
        if n == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= n;
        let data = Bytes::from_static(&PIECE[..n as usize]);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(data))))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

/// A slow reader gets its download (the timeout bounds each wait for the
/// client, not the whole response); one that stops reading is cut off.
#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_cut_off_after_the_send_timeout() {
    static RELEASED: AtomicUsize = AtomicUsize::new(0);
    let settings = Settings {
        send_timeout: Duration::from_secs(5),
        ..SETTINGS
    };
    let Served {
        mut client,
        mut task,
        shutdown: _shutdown,
    } = start(settings, |_req: Request<RequestBody<DuplexStream>>| async {
        Response::new(Download::body(64 << 20, &RELEASED))
    });
    client.send("GET /big HTTP/1.1\r\nHost: a\r\n\r\n").await;
    // 16 KiB every 4 s for 80 s: each wait is shorter than the timeout,
    // all of them together far longer.
    let mut raw = Vec::new();
    let mut piece = vec![0; 16 * 1024];
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let n = client.io.read(&mut piece).await.unwrap();
        raw.extend_from_slice(&piece[..n]);
    }
    assert!(raw.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(raw.len(), 20 * 16 * 1024, "every read got a full piece");
    assert!(!task.is_finished(), "still sending to a slow reader");
    assert_eq!(RELEASED.load(Ordering::SeqCst), 0);

    // Then nothing is read: the pipe fills up and the server waits.
    let stopped = tokio::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(3600), &mut task)
        .await
        .expect("the connection is given up, not held")
        .unwrap();
    assert!(matches!(ended, Err(Error::SendTimeout)), "{ended:?}");
    assert!(stopped.elapsed() >= Duration::from_secs(5));
    assert_eq!(
        RELEASED.load(Ordering::SeqCst),
        1,
        "the response body, and with it the upstream side, was dropped"
    );
    // What fitted in the pipe, then the end: a truncated response.
    raw.clear();
    client.io.read_to_end(&mut raw).await.unwrap();
    assert!(raw.len() <= 256 * 1024, "{}", raw.len());
}
