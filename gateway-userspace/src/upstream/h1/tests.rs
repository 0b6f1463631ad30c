//! The client against scripted targets on loopback: raw sockets that answer
//! with exact bytes, so each framing and connection-reuse case is the one
//! under test and nothing smooths it over.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as HttpBody, Frame};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

use super::*;
use crate::{
    config,
    exchange::{Body, BoxError, ForwardFields},
    upstream::{
        breakers::{CircuitBreakers, Limit},
        replay::RequestBody,
    },
};

/// What the target does with each request head it reads on a connection.
type Script = Arc<dyn Fn(usize, &str) -> Reply + Send + Sync>;

enum Reply {
    /// Writes these bytes and reads the next request.
    Send(&'static str),
    /// Writes these bytes and closes.
    SendAndClose(&'static str),
    /// Closes without a word.
    Close,
}

/// A target that runs `script` for every request head; counts connections.
async fn target(script: Script) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let connection = count.fetch_add(1, Ordering::SeqCst);
            let script = script.clone();
            tokio::spawn(async move {
                loop {
                    let Some(head) = read_head(&mut stream).await else {
                        return;
                    };
                    match script(connection, &head) {
                        Reply::Send(bytes) => stream.write_all(bytes.as_bytes()).await.unwrap(),
                        Reply::SendAndClose(bytes) => {
                            stream.write_all(bytes.as_bytes()).await.unwrap();
                            return;
                        }
                        Reply::Close => return,
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Reads up to the blank line; `None` when the client closed.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8(head).unwrap())
}

fn pool() -> Http1Pool {
    let config: config::Upstream =
        serde_yaml::from_str("{targets: ['127.0.0.1:1'], pool_idle_timeout: 60s}").unwrap();
    Http1Pool::new(&config, None, None)
}

fn body(bytes: &'static [u8]) -> Body {
    if bytes.is_empty() {
        return Empty::new().map_err(|never| match never {}).boxed();
    }
    Full::new(Bytes::from_static(bytes))
        .map_err(|never| match never {})
        .boxed()
}

fn request(method: &str, body: Body) -> Request<AttemptBody> {
    let attempt = RequestBody::new(body).for_attempt().unwrap();
    Request::builder()
        .method(method)
        .uri("/path?q=1")
        .header("host", "api.test")
        .body(attempt)
        .unwrap()
}

async fn send(
    pool: &Http1Pool,
    addr: SocketAddr,
    request: Request<AttemptBody>,
) -> Result<Response<Box<ResponseBody>>, Failed> {
    let authority = Authority::try_from(addr.to_string()).unwrap();
    pool.send(addr, &authority, request, &ForwardFields::default())
        .await
}

async fn collect(response: Response<Box<ResponseBody>>) -> (Bytes, Option<http::HeaderMap>) {
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (collected.to_bytes(), trailers)
}

/// The response to a request that must get one.
async fn answered(
    pool: &Http1Pool,
    addr: SocketAddr,
    request: Request<AttemptBody>,
) -> Response<Box<ResponseBody>> {
    match send(pool, addr, request).await {
        Ok(response) => response,
        Err(failed) => panic!("expected a response, got {:?}", failed.error),
    }
}

fn error_of(result: Result<Response<Box<ResponseBody>>, Failed>) -> SendError {
    match result {
        Ok(response) => panic!("expected a failure, got {}", response.status()),
        Err(failed) => failed.error,
    }
}

const OK_5: &str = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";

#[tokio::test]
async fn a_connection_is_reused_after_a_clean_exchange_and_closed_when_told() {
    let (addr, accepted) = target(Arc::new(|_, head: &str| {
        if head.contains("x-last: 1") {
            Reply::Send("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nby")
        } else {
            Reply::Send(OK_5)
        }
    }))
    .await;
    let pool = pool();
    for _ in 0..3 {
        let response = answered(&pool, addr, request("GET", body(b""))).await;
        assert_eq!(collect(response).await.0, "hello");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for all");

    let mut last = request("GET", body(b""));
    last.headers_mut()
        .insert("x-last", http::HeaderValue::from_static("1"));
    let response = answered(&pool, addr, last).await;
    assert_eq!(collect(response).await.0, "by");
    let response = answered(&pool, addr, request("GET", body(b""))).await;
    assert_eq!(collect(response).await.0, "hello");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "`connection: close` honoured"
    );
}

/// `max_in_flight` responses held at once, then all read to their end
/// (each connection goes back to the pool when its body is through).
async fn concurrent_exchanges(pool: &Http1Pool, addr: SocketAddr, max_in_flight: usize) {
    let mut held = Vec::new();
    for _ in 0..max_in_flight {
        held.push(answered(pool, addr, request("GET", body(b""))).await);
    }
    for response in held {
        assert_eq!(collect(response).await.0, "hello");
    }
}

#[tokio::test]
async fn connections_beyond_the_idle_cap_stay_while_in_use_and_close_once_idle() {
    let (addr, accepted) = target(Arc::new(|_, _: &str| Reply::Send(OK_5))).await;
    let config: config::Upstream = serde_yaml::from_str(
        "{targets: ['127.0.0.1:1'], pool_idle_timeout: 60s, pool_max_idle_per_target: 2}",
    )
    .unwrap();
    let pool = Http1Pool::new(&config, None, None);
    concurrent_exchanges(&pool, addr, 5).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
    // Five in flight again: the five from before, none new (closing the
    // three over the cap at check-in made every busy moment reconnect).
    concurrent_exchanges(&pool, addr, 5).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        5,
        "connections over the cap are reused while busy"
    );
    // Idle for longer than SURPLUS_IDLE and a reaper period: the cap
    // holds again, so five in flight need three new connections.
    tokio::time::sleep(pool::SURPLUS_IDLE * 2 + Duration::from_millis(500)).await;
    concurrent_exchanges(&pool, addr, 5).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        8,
        "idle connections over the cap were closed"
    );
}

/// A target whose accept queue holds one connection (`listen(0)`): while
/// that place is taken, the kernel drops a new connect's SYN, and the
/// connect waits for a retransmission, a second or more later, as when a
/// server's backlog overflows under a burst of clients. It accepts its
/// first connection at once and the rest when `open` is notified; it
/// answers every request with `OK_5`, the first one only once `release`
/// is notified.
async fn target_with_a_full_queue(
    release: Arc<tokio::sync::Notify>,
    open: Arc<tokio::sync::Notify>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let listener = socket.listen(0).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let connection = count.fetch_add(1, Ordering::SeqCst);
            let release = release.clone();
            tokio::spawn(async move {
                let mut first = connection == 0;
                while read_head(&mut stream).await.is_some() {
                    if std::mem::take(&mut first) {
                        release.notified().await;
                    }
                    stream.write_all(OK_5.as_bytes()).await.unwrap();
                }
            });
            if connection == 0 {
                open.notified().await;
            }
        }
    });
    (addr, accepted)
}

/// A request sent in a task of its own.
fn spawn_request(
    pool: &Arc<Http1Pool>,
    addr: SocketAddr,
) -> tokio::task::JoinHandle<Result<Response<Box<ResponseBody>>, SendError>> {
    let pool = pool.clone();
    tokio::spawn(async move {
        send(&pool, addr, request("GET", body(b"")))
            .await
            .map_err(|failed| failed.error)
    })
}

/// Polls `check` every 20 ms, up to 10 s, until it holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

/// Requests A and B on a pool (upstream `config`, with circuit breakers)
/// in front of [`target_with_a_full_queue`]: A holds the one accepted
/// connection (its answer held until `release`), a stray socket fills the
/// accept queue, and B, finding no idle connection, waits while its connect
/// hangs.
struct FullQueue {
    pool: Arc<Http1Pool>,
    breakers: Arc<CircuitBreakers>,
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    release: Arc<tokio::sync::Notify>,
    open: Arc<tokio::sync::Notify>,
    first: tokio::task::JoinHandle<Result<Response<Box<ResponseBody>>, SendError>>,
    second: tokio::task::JoinHandle<Result<Response<Box<ResponseBody>>, SendError>>,
    _queued: TcpStream,
}

impl FullQueue {
    async fn new(config: &str) -> Self {
        let (release, open) = (
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(tokio::sync::Notify::new()),
        );
        let (addr, accepted) = target_with_a_full_queue(release.clone(), open.clone()).await;
        let config: config::Upstream = serde_yaml::from_str(config).unwrap();
        let breakers = Arc::new(CircuitBreakers::new("u", &config.circuit_breakers));
        let pool = Arc::new(Http1Pool::new(&config, None, Some(breakers.clone())));
        let first = spawn_request(&pool, addr);
        eventually("A's connection accepted", || {
            accepted.load(Ordering::SeqCst) == 1
        })
        .await;
        // The queue's one place taken: the next SYN is dropped.
        let queued = TcpStream::connect(addr).await.unwrap();
        let second = spawn_request(&pool, addr);
        eventually("B waits, its connect started", || {
            pool.counts(addr) == (0, 1, 1)
        })
        .await;
        Self {
            pool,
            breakers,
            addr,
            accepted,
            release,
            open,
            first,
            second,
            _queued: queued,
        }
    }
}

#[tokio::test]
async fn a_request_whose_connect_is_slow_takes_a_connection_checked_in_meanwhile() {
    let FullQueue {
        pool,
        breakers,
        addr,
        accepted,
        release,
        open,
        first,
        second,
        _queued,
    } = FullQueue::new("{targets: ['127.0.0.1:1'], pool_idle_timeout: 60s, connect_timeout: 30s}")
        .await;
    let connects = || breakers.count(Limit::PendingRequests);
    assert_eq!(connects(), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!second.is_finished());

    // A's answer and body through: its connection goes to B, whose
    // connect is still waiting for the kernel.
    release.notify_one();
    let response = first.await.unwrap().unwrap();
    assert_eq!(collect(response).await.0, "hello");
    let response = tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .expect("B waited for its own connect instead of taking A's connection")
        .unwrap()
        .unwrap();
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "B went on A's connection"
    );

    // While B holds that connection, C finds none idle. B's connect,
    // still under way, covers C: no second connect is started.
    let third = spawn_request(&pool, addr);
    eventually("C waits", || pool.counts(addr).1 == 1).await;
    assert_eq!(pool.counts(addr), (0, 1, 1));
    assert_eq!(
        connects(),
        1,
        "a connect was started although one under way covered the request"
    );
    // B's body through: its connection goes on to C.
    assert_eq!(collect(response).await.0, "hello");
    let response = tokio::time::timeout(Duration::from_secs(20), third)
        .await
        .expect("C was not handed B's connection")
        .unwrap()
        .unwrap();
    assert_eq!(collect(response).await.0, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // The queue drained, B's connect completes (at the SYN's
    // retransmission) and its connection joins the pool: two requests held
    // at once then need no further connect.
    open.notify_one();
    eventually("B's connection idle", || pool.counts(addr) == (2, 0, 0)).await;
    let held = (
        answered(&pool, addr, request("GET", body(b""))).await,
        answered(&pool, addr, request("GET", body(b""))).await,
    );
    assert_eq!(collect(held.0).await.0, "hello");
    assert_eq!(collect(held.1).await.0, "hello");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "no connect for either (the third is the queued socket)"
    );
    assert_eq!(connects(), 0);
}

#[tokio::test]
async fn a_failed_connect_fails_a_waiting_request_only_when_no_other_connect_covers_it() {
    // B's connect hangs; A's connection then serves B.
    let FullQueue {
        pool,
        addr,
        release,
        open,
        first,
        second,
        _queued,
        ..
    } = FullQueue::new(
        "{targets: ['127.0.0.1:1'], pool_idle_timeout: 60s, connect_timeout: 400ms}",
    )
    .await;
    release.notify_one();
    assert_eq!(collect(first.await.unwrap().unwrap()).await.0, "hello");
    let response = second.await.unwrap().unwrap();
    assert_eq!(collect(response).await.0, "hello");

    // B's connect times out with nobody waiting: no request fails, and the
    // pool holds A's connection only.
    eventually("B's connect gave up", || pool.counts(addr) == (1, 0, 0)).await;
    let response = answered(&pool, addr, request("GET", body(b""))).await;

    // C comes while that connection is busy, its own connect times out
    // and nothing else is coming for it: C fails with the connect's error
    // (not left waiting).
    let third = spawn_request(&pool, addr);
    let error = tokio::time::timeout(Duration::from_secs(20), third)
        .await
        .expect("C was left waiting")
        .unwrap()
        .map(|response| response.status())
        .unwrap_err();
    assert!(matches!(error, SendError::Connect(_)), "{error:?}");
    assert_eq!(collect(response).await.0, "hello");
    assert_eq!(pool.counts(addr), (1, 0, 0));
    open.notify_one();
}

#[tokio::test]
async fn over_max_pending_requests_the_request_that_needed_the_connect_is_shed() {
    // B's connect hangs and takes the one place for connects under way.
    let FullQueue {
        pool,
        breakers,
        addr,
        release,
        open,
        first,
        second,
        _queued,
        ..
    } = FullQueue::new(
        "{targets: ['127.0.0.1:1'], connect_timeout: 30s, \
          circuit_breakers: {max_pending_requests: 1}}",
    )
    .await;

    // C needs a connect too: it is refused at once, and B keeps its place.
    let error = spawn_request(&pool, addr)
        .await
        .unwrap()
        .map(|response| response.status())
        .unwrap_err();
    assert!(
        matches!(
            error,
            SendError::Overloaded {
                limit: "max_pending_requests",
                max: 1
            }
        ),
        "{error:?}"
    );
    assert_eq!(pool.counts(addr), (0, 1, 1));
    assert_eq!(breakers.shed(Limit::PendingRequests), 1);
    release.notify_one();
    assert_eq!(collect(first.await.unwrap().unwrap()).await.0, "hello");
    let response = second.await.unwrap().unwrap();
    assert_eq!(collect(response).await.0, "hello");
    open.notify_one();
}

#[tokio::test]
async fn a_burst_opens_no_more_connections_than_requests_waiting() {
    // Each answer is held until released: every request of the burst
    // needs a connection of its own.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    tokio::spawn({
        let (gate, accepted) = (gate.clone(), accepted.clone());
        async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let gate = gate.clone();
                tokio::spawn(async move {
                    while read_head(&mut stream).await.is_some() {
                        gate.acquire().await.unwrap().forget();
                        stream.write_all(OK_5.as_bytes()).await.unwrap();
                    }
                });
            }
        }
    });
    let pool = Arc::new(pool());
    let burst: Vec<_> = (0..50).map(|_| spawn_request(&pool, addr)).collect();
    eventually("50 connections", || accepted.load(Ordering::SeqCst) == 50).await;
    gate.add_permits(50);
    for request in burst {
        assert_eq!(collect(request.await.unwrap().unwrap()).await.0, "hello");
    }
    // A second burst, half the size, over the fifty idle ones: no connect.
    let burst: Vec<_> = (0..25).map(|_| spawn_request(&pool, addr)).collect();
    gate.add_permits(25);
    for request in burst {
        assert_eq!(collect(request.await.unwrap().unwrap()).await.0, "hello");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 50);
    assert_eq!(pool.counts(addr), (50, 0, 0));
}

#[tokio::test]
async fn requests_to_a_target_that_refuses_every_connect_leave_nothing_behind() {
    // A port nobody listens on: every connect is refused at once, and no
    // connection is ever checked in to take the waiting requests away.
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let pool = Arc::new(pool());
    let burst: Vec<_> = (0..200).map(|_| spawn_request(&pool, addr)).collect();
    for request in burst {
        let error = request
            .await
            .unwrap()
            .map(|response| response.status())
            .unwrap_err();
        assert!(matches!(error, SendError::Connect(_)), "{error:?}");
    }
    for _ in 0..100 {
        let error = error_of(send(&pool, addr, request("GET", body(b""))).await);
        assert!(matches!(error, SendError::Connect(_)), "{error:?}");
    }
    assert_eq!(pool.counts(addr), (0, 0, 0));
}

#[tokio::test]
async fn a_connection_the_target_closed_while_idle_is_not_used() {
    let (addr, accepted) = target(Arc::new(|_, _: &str| Reply::SendAndClose(OK_5))).await;
    let pool = pool();
    for round in 1..=3 {
        let response = answered(&pool, addr, request("GET", body(b""))).await;
        assert_eq!(collect(response).await.0, "hello");
        // The FIN reaches the idle socket before the next request.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), round);
    }
}

#[tokio::test]
async fn a_pooled_connection_that_dies_under_a_request_is_retried_only_when_safe() {
    // Every connection answers its first request and drops the second
    // unanswered: the keep-alive race, when a target closes an idle
    // connection just as a request goes out on it.
    let first_only = |connection_requests: Arc<std::sync::Mutex<Vec<usize>>>| -> Script {
        Arc::new(move |connection, _: &str| {
            let mut seen = connection_requests.lock().unwrap();
            if seen.len() <= connection {
                seen.resize(connection + 1, 0);
            }
            seen[connection] += 1;
            if seen[connection] == 1 {
                Reply::Send(OK_5)
            } else {
                Reply::Close
            }
        })
    };
    let (addr, accepted) = target(first_only(Default::default())).await;
    let pool = pool();
    let response = answered(&pool, addr, request("GET", body(b""))).await;
    assert_eq!(collect(response).await.0, "hello");

    // GET: nothing came back on the pooled connection, so it goes again on
    // a new one.
    let response = answered(&pool, addr, request("GET", body(b""))).await;
    assert_eq!(collect(response).await.0, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    // POST with a body that went out: the target may have acted on it, so
    // the failure is the answer (a reset when the target closed with the
    // body unread, else a plain close).
    let error = error_of(send(&pool, addr, request("POST", body(b"pay"))).await);
    assert!(
        matches!(
            error,
            SendError::Http1(Error::ClosedBeforeResponse | Error::Read(_))
        ),
        "{error:?}"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "not sent again");
}

#[tokio::test]
async fn interim_responses_are_skipped_and_trailers_pass_through() {
    let (addr, _) = target(Arc::new(|_, _: &str| {
        Reply::Send(
            "HTTP/1.1 100 Continue\r\n\r\n\
             HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
             HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
             3\r\nabc\r\n2\r\nde\r\n0\r\nx-sum: 5\r\n\r\n",
        )
    }))
    .await;
    let response = answered(&pool(), addr, request("POST", body(b"x"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let (data, trailers) = collect(response).await;
    assert_eq!(data, "abcde");
    assert_eq!(trailers.expect("trailers")["x-sum"], "5");
}

#[tokio::test]
async fn bodies_end_where_their_framing_says() {
    let (addr, accepted) = target(Arc::new(|_, head: &str| {
        if head.starts_with("HEAD") {
            Reply::Send("HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n")
        } else if head.contains("x-case: 204") {
            Reply::Send("HTTP/1.1 204 No Content\r\ncontent-length: 7\r\n\r\n")
        } else {
            Reply::SendAndClose("HTTP/1.1 200 OK\r\n\r\nuntil the end")
        }
    }))
    .await;
    let pool = pool();
    let response = answered(&pool, addr, request("HEAD", body(b""))).await;
    assert!(response.body().is_end_stream(), "HEAD: no body");
    assert_eq!(response.headers()["content-length"], "99");
    drop(response);
    let mut no_content = request("GET", body(b""));
    no_content
        .headers_mut()
        .insert("x-case", http::HeaderValue::from_static("204"));
    let response = answered(&pool, addr, no_content).await;
    assert!(response.body().is_end_stream(), "204: no body");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "both on one connection");

    let response = answered(&pool, addr, request("GET", body(b""))).await;
    assert_eq!(collect(response).await.0, "until the end");
}

#[tokio::test]
async fn misframed_responses_are_errors_and_the_connection_is_not_reused() {
    let (addr, accepted) = target(Arc::new(|connection, _: &str| match connection {
        0 => Reply::Send("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"),
        1 => Reply::SendAndClose("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"),
        2 => Reply::Send("HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"),
        _ => Reply::Send(OK_5),
    }))
    .await;
    let pool = pool();
    let response = answered(&pool, addr, request("GET", body(b""))).await;
    let error = response.into_body().collect().await.unwrap_err();
    assert!(matches!(error, Error::Chunked(_)), "{error:?}");

    let response = answered(&pool, addr, request("GET", body(b""))).await;
    let error = response.into_body().collect().await.unwrap_err();
    assert!(matches!(error, Error::Incomplete), "{error:?}");

    let error = error_of(send(&pool, addr, request("GET", body(b""))).await);
    assert!(
        matches!(error, SendError::Http1(Error::BadContentLength)),
        "{error:?}"
    );
    let response = answered(&pool, addr, request("GET", body(b""))).await;
    assert_eq!(collect(response).await.0, "hello");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        4,
        "a new connection each time"
    );
}

/// Content-Length with chunked: the body is read as chunked, and the
/// connection is closed after it, not pooled.
#[tokio::test]
async fn a_response_with_length_and_chunked_is_not_followed_on_its_connection() {
    let (addr, accepted) = target(Arc::new(|_, _: &str| {
        Reply::Send(
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n",
        )
    }))
    .await;
    let pool = pool();
    for round in 1..=2 {
        let response = answered(&pool, addr, request("GET", body(b""))).await;
        assert!(!response.headers().contains_key("content-length"));
        assert_eq!(collect(response).await.0, "hello");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            round,
            "a new connection each time"
        );
    }
}

/// A request body fed chunk by chunk (or an error) from the test.
struct Fed(mpsc::Receiver<Result<Bytes, BoxError>>);

impl HttpBody for Fed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| c.map(Frame::data)))
    }
}

/// A target that answers at once and echoes the chunked upload as it
/// arrives, as its chunked answer.
async fn echo_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let head = read_head(&mut stream).await.unwrap();
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        // Relays the chunked upload as the chunked answer, byte for byte.
        let mut buf = [0; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            stream.write_all(&buf[..n]).await.unwrap();
            if buf[..n].ends_with(b"0\r\n\r\n") {
                return;
            }
        }
    });
    addr
}

/// Each piece of the upload must come back before the next is sent, so
/// neither direction waits for the other to finish.
#[tokio::test]
async fn an_upload_and_its_echo_stream_at_the_same_time() {
    let addr = echo_target().await;
    let (tx, rx) = mpsc::channel(1);
    let response = answered(&pool(), addr, request("POST", Fed(rx).boxed())).await;
    let mut body = response.into_body();
    for piece in ["one", "two", "three"] {
        tx.send(Ok(Bytes::from_static(piece.as_bytes())))
            .await
            .unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the echo came back while the upload was still open")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), piece);
    }
    drop(tx);
    assert!(body.frame().await.is_none());
}

#[tokio::test]
async fn a_101_hands_over_the_socket_with_what_followed_it() {
    let (addr, _) = target(Arc::new(|_, _: &str| {
        Reply::Send(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nEARLY",
        )
    }))
    .await;
    let pool = pool();
    let mut upgrade = request("GET", body(b""));
    upgrade
        .headers_mut()
        .insert("connection", http::HeaderValue::from_static("upgrade"));
    upgrade
        .headers_mut()
        .insert("upgrade", http::HeaderValue::from_static("websocket"));
    let response = answered(&pool, addr, upgrade).await;
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let (_socket, early) = response
        .extensions()
        .get::<Upgraded>()
        .expect("the socket is handed over")
        .take()
        .unwrap();
    assert_eq!(early, "EARLY");

    // A 101 nobody asked for is not a response to pass on.
    let error = error_of(send(&pool, addr, request("GET", body(b""))).await);
    assert!(
        matches!(error, SendError::Http1(Error::UnexpectedUpgrade)),
        "{error:?}"
    );
}

/// The client's upload breaks off after the target started answering: the
/// target would wait for the rest forever, so the response fails too.
#[tokio::test]
async fn an_upload_that_breaks_off_ends_the_response() {
    let addr = echo_target().await;
    let (tx, rx) = mpsc::channel(1);
    let response = answered(&pool(), addr, request("POST", Fed(rx).boxed())).await;
    let mut body = response.into_body();
    tx.send(Ok(Bytes::from_static(b"one"))).await.unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "one");
    tx.send(Err("client went away".into())).await.unwrap();
    let error = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("not left waiting on the target")
        .unwrap()
        .unwrap_err();
    assert!(matches!(error, Error::RequestBody(_)), "{error:?}");
    assert!(body.frame().await.is_none());
}

/// A chunked upload much larger than the socket buffers, to a target that
/// reads slowly: writes stop part-way through a chunk's size line, data or
/// CRLF over and over, and every byte must still arrive in order.
#[tokio::test]
async fn a_large_chunked_upload_survives_partial_writes() {
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 48;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let target = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let head = read_head(&mut stream).await.unwrap();
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        let mut decoder = crate::http1::chunked::ChunkedDecoder::default();
        let mut buf = bytes::BytesMut::new();
        let mut received: Vec<u8> = Vec::new();
        let mut reads = 0;
        loop {
            match decoder.decode(&mut buf).unwrap() {
                crate::http1::chunked::Decoded::Data(data) => received.extend_from_slice(&data),
                crate::http1::chunked::Decoded::Trailers(_) => {}
                crate::http1::chunked::Decoded::Done => break,
                crate::http1::chunked::Decoded::NeedMore => {
                    let mut piece = vec![0; 7919];
                    let n = stream.read(&mut piece).await.unwrap();
                    assert!(n > 0, "the upload ended early");
                    buf.extend_from_slice(&piece[..n]);
                    reads += 1;
                    if reads % 64 == 0 {
                        // Slow: the client's socket fills up meanwhile.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        }
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{}",
            received.len().to_string().len(),
            received.len()
        );
        stream.write_all(reply.as_bytes()).await.unwrap();
        received
    });
    let (tx, rx) = mpsc::channel(2);
    let feeder = tokio::spawn(async move {
        for i in 0..CHUNKS {
            let chunk: Vec<u8> = (0..CHUNK).map(|j| ((i * 31 + j) % 251) as u8).collect();
            tx.send(Ok(Bytes::from(chunk))).await.unwrap();
        }
    });
    let response = answered(&pool(), addr, request("PUT", Fed(rx).boxed())).await;
    assert_eq!(collect(response).await.0, (CHUNK * CHUNKS).to_string());
    feeder.await.unwrap();
    let received = target.await.unwrap();
    assert_eq!(received.len(), CHUNK * CHUNKS);
    for (i, chunk) in received.chunks(CHUNK).enumerate() {
        assert!(
            chunk
                .iter()
                .enumerate()
                .all(|(j, &b)| b == ((i * 31 + j) % 251) as u8),
            "chunk {i} arrived altered"
        );
    }
}

/// A socket that takes every byte at once and counts the writes.
#[derive(Default)]
struct Counted {
    written: Vec<u8>,
    writes: usize,
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.writes += 1;
        self.written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.writes += 1;
        let mut n = 0;
        for buf in bufs {
            self.written.extend_from_slice(buf);
            n += buf.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Sends a body of `pieces` (all ready at once) framed as `framing` after a
/// head, on a socket that counts writes; returns the bytes and the count.
async fn sent(
    pieces: &[Bytes],
    trailers: Option<http::HeaderMap>,
    framing: RequestFraming,
) -> (Vec<u8>, usize) {
    let frames = crate::exchange::test_body::Frames::new(pieces.iter().cloned(), trailers);
    let body = RequestBody::new(frames.map_err(|never| match never {}).boxed());
    let head = Bytes::from_static(b"POST / HTTP/1.1\r\n\r\n");
    let mut sending = conn::Sending::new(head, body.for_attempt().unwrap(), framing);
    let mut socket = Counted::default();
    std::future::poll_fn(|cx| sending.poll(&mut socket, cx))
        .await
        .unwrap();
    let body = socket.written.split_off(b"POST / HTTP/1.1\r\n\r\n".len());
    (body, socket.writes)
}

/// A chunked body as the target reads it: its data and trailers.
fn dechunk(wire: &[u8]) -> (Vec<u8>, Option<http::HeaderMap>) {
    use crate::http1::chunked::{ChunkedDecoder, Decoded};
    let mut decoder = ChunkedDecoder::default();
    let mut buf = bytes::BytesMut::from(wire);
    let (mut data, mut trailers) = (Vec::new(), None);
    loop {
        match decoder.decode(&mut buf).unwrap() {
            Decoded::Data(piece) => data.extend_from_slice(&piece),
            Decoded::Trailers(map) => trailers = Some(map),
            Decoded::Done => break,
            Decoded::NeedMore => panic!("the body ended early"),
        }
    }
    assert!(buf.is_empty(), "nothing after the body");
    (data, trailers)
}

/// A client's run of tiny chunks goes on in one write once it is all in
/// (after the head's own write), not one write per chunk; nothing is lost
/// or reordered, however small and large pieces mix.
#[tokio::test]
async fn pieces_that_are_ready_go_out_together_and_intact() {
    let tiny: Vec<Bytes> = (0..1000u32)
        .map(|i| Bytes::from(vec![b'a' + (i % 26) as u8]))
        .collect();
    let expected: Vec<u8> = tiny.iter().flat_map(|b| b.to_vec()).collect();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-sum", http::HeaderValue::from_static("1000"));

    let (wire, writes) = sent(&tiny, Some(trailers.clone()), RequestFraming::Chunked).await;
    assert_eq!(writes, 2, "the head, then every chunk at once");
    assert_eq!(dechunk(&wire), (expected.clone(), Some(trailers)));

    let (wire, writes) = sent(&tiny, None, RequestFraming::Length(1000)).await;
    assert_eq!(writes, 2, "the head, then every piece at once");
    assert_eq!(wire, expected);

    // Small pieces around large ones (written from where they are).
    let mixed: Vec<Bytes> = [1, 5000, 2, 3, 70_000, 4, 4096, 4097, 1]
        .iter()
        .enumerate()
        .map(|(i, &n)| Bytes::from(vec![b'a' + i as u8; n]))
        .collect();
    let expected: Vec<u8> = mixed.iter().flat_map(|b| b.to_vec()).collect();
    let total = expected.len() as u64;
    let (wire, _) = sent(&mixed, None, RequestFraming::Length(total)).await;
    assert_eq!(wire, expected);
    let (wire, _) = sent(&mixed, None, RequestFraming::Chunked).await;
    assert_eq!(dechunk(&wire), (expected, None));
}
