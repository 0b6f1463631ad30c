//! The soak's client: paced HTTP/1.1 keep-alive, HTTP/1.1 with a new
//! connection per request, and HTTP/2 (h2c, prior knowledge) on three routes,
//! every answer classified as it arrives (expected refusals are counted
//! apart from errors) into the current sampling window.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{client::conn, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::{config::API_KEY, verdict::Sample};

/// How long one request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// After an upstream target comes back, 5xx are still expected this long
/// (the active health check's interval and threshold, with margin).
pub const RESTART_GRACE: Duration = Duration::from_secs(5);
/// Every `NO_KEY_EVERY`-th request on the key-auth route is sent without a
/// key, and must be refused with 401.
const NO_KEY_EVERY: u64 = 25;
/// Unexpected outcomes kept verbatim for the report.
const EXAMPLES_KEPT: usize = 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Route {
    Open,
    Keyed { with_key: bool },
    Limited,
}

impl Route {
    /// Half the requests on the open route, 30% with a key, 20% limited.
    fn pick(n: u64) -> Route {
        match n % 10 {
            0..=4 => Route::Open,
            5..=7 => Route::Keyed {
                with_key: n % NO_KEY_EVERY != 7,
            },
            _ => Route::Limited,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Route::Open => "/open/small",
            Route::Keyed { .. } => "/keyed/small",
            Route::Limited => "/limited/small",
        }
    }
}

/// What one request came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    RateLimited,
    AuthRefused,
    RestartWindow,
    Unexpected(String),
}

/// Classifies an answer (`Err`: no answer) to a request on `route`;
/// `in_restart` says whether the request overlapped an upstream restart.
pub fn classify(route: Route, answer: Result<u16, String>, in_restart: bool) -> Outcome {
    let status = match answer {
        Ok(status) => status,
        Err(e) => return Outcome::Unexpected(format!("{}: {e}", route.path())),
    };
    match (route, status) {
        (Route::Keyed { with_key: false }, 401) => Outcome::AuthRefused,
        (Route::Keyed { with_key: false }, s) => Outcome::Unexpected(format!(
            "{}: {s} without a key (401 expected)",
            route.path()
        )),
        (_, 200..=299) => Outcome::Ok,
        (Route::Limited, 429) => Outcome::RateLimited,
        (_, 502..=504) if in_restart => Outcome::RestartWindow,
        (_, s) => Outcome::Unexpected(format!("{}: status {s}", route.path())),
    }
}

/// Upstream restarts: each from the kill to the restart plus
/// [`RESTART_GRACE`]; `None` while the target is still down.
#[derive(Default)]
pub struct RestartWindows(Mutex<Vec<(Instant, Option<Instant>)>>);

impl RestartWindows {
    pub fn open(&self) {
        self.0.lock().unwrap().push((Instant::now(), None));
    }

    pub fn close(&self) {
        if let Some(last) = self.0.lock().unwrap().last_mut() {
            last.1.get_or_insert_with(Instant::now);
        }
    }

    /// Whether `[start, end]` overlaps a restart window.
    pub fn covers(&self, start: Instant, end: Instant) -> bool {
        self.0.lock().unwrap().iter().any(|(down, up)| {
            let until = up.map(|u| u + RESTART_GRACE);
            end >= *down && until.is_none_or(|u| start <= u)
        })
    }
}

/// The current window's counts and latencies.
#[derive(Default)]
pub struct Window {
    pub sample: Sample,
    pub latencies_us: Vec<f64>,
}

/// What the client shares with the sampler and the events.
pub struct Shared {
    pub window: Mutex<Window>,
    pub restarts: RestartWindows,
    pub stop: AtomicBool,
    pub started: Instant,
    examples: Mutex<Vec<String>>,
}

impl Shared {
    pub fn new() -> Self {
        Self {
            window: Mutex::default(),
            restarts: RestartWindows::default(),
            stop: AtomicBool::new(false),
            started: Instant::now(),
            examples: Mutex::default(),
        }
    }

    fn record(&self, route: Route, answer: Result<u16, String>, start: Instant) {
        let end = Instant::now();
        let outcome = classify(route, answer, self.restarts.covers(start, end));
        let mut w = self.window.lock().unwrap();
        w.sample.requests += 1;
        w.latencies_us
            .push(end.duration_since(start).as_secs_f64() * 1e6);
        match outcome {
            Outcome::Ok => w.sample.ok += 1,
            Outcome::RateLimited => w.sample.rate_limited += 1,
            Outcome::AuthRefused => w.sample.auth_refused += 1,
            Outcome::RestartWindow => w.sample.restart_5xx += 1,
            Outcome::Unexpected(what) => {
                w.sample.unexpected += 1;
                drop(w);
                let mut examples = self.examples.lock().unwrap();
                if examples.len() < EXAMPLES_KEPT {
                    let at = start.duration_since(self.started).as_secs_f64();
                    examples.push(format!("{at:.1} s: {what}"));
                }
            }
        }
    }

    /// Ends the current window: its counts and latency percentiles.
    pub fn take_window(&self) -> Sample {
        let mut w = std::mem::take(&mut *self.window.lock().unwrap());
        w.latencies_us.sort_by(f64::total_cmp);
        if !w.latencies_us.is_empty() {
            w.sample.p50_us = crate::load::percentile(&w.latencies_us, 50.0);
            w.sample.p99_us = crate::load::percentile(&w.latencies_us, 99.0);
        }
        w.sample
    }

    pub fn examples(&self) -> Vec<String> {
        self.examples.lock().unwrap().clone()
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Copy, Debug)]
enum Protocol {
    KeepAlive,
    NewConnection,
    Http2,
}

/// Runs the client until `shared.stop`, at about `rps` requests a second:
/// 50% on four HTTP/1.1 keep-alive connections, 15% on a new connection
/// each, 35% as HTTP/2 streams on two connections.
pub async fn run(addr: SocketAddr, rps: u32, shared: Arc<Shared>) {
    let plan = [
        (Protocol::KeepAlive, 4, 0.50),
        (Protocol::NewConnection, 1, 0.15),
        (Protocol::Http2, 2, 0.35),
    ];
    let mut tasks = Vec::new();
    for (protocol, workers, share) in plan {
        for i in 0..workers {
            let per_worker = (rps as f64 * share / workers as f64).max(0.5);
            let shared = shared.clone();
            tasks.push(tokio::spawn(worker(
                protocol,
                addr,
                per_worker,
                i as u64 * 3,
                shared,
            )));
        }
    }
    for task in tasks {
        let _ = task.await;
    }
}

enum Conn {
    H1(conn::http1::SendRequest<Empty<Bytes>>),
    H2(conn::http2::SendRequest<Empty<Bytes>>),
}

async fn connect(addr: SocketAddr, protocol: Protocol) -> Result<Conn, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    match protocol {
        Protocol::Http2 => {
            let (sender, connection) = conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(connection);
            Ok(Conn::H2(sender))
        }
        _ => {
            let (sender, connection) = conn::http1::handshake(io)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(connection);
            Ok(Conn::H1(sender))
        }
    }
}

async fn send(conn: &mut Conn, route: Route, close: bool) -> Result<u16, String> {
    let mut req = Request::get(route.path()).header("host", "soak.test");
    if let Route::Keyed { with_key: true } = route {
        req = req.header("apikey", API_KEY);
    }
    if close {
        req = req.header("connection", "close");
    }
    let response = match conn {
        Conn::H1(sender) => {
            sender
                .ready()
                .await
                .map_err(|e| format!("not ready: {e}"))?;
            sender
                .send_request(req.body(Empty::new()).map_err(|e| e.to_string())?)
                .await
        }
        Conn::H2(sender) => {
            let req = Request::get(format!("http://soak.test{}", route.path()));
            let req = match route {
                Route::Keyed { with_key: true } => req.header("apikey", API_KEY),
                _ => req,
            };
            sender
                .ready()
                .await
                .map_err(|e| format!("h2 not ready: {e}"))?;
            sender
                .send_request(req.body(Empty::new()).map_err(|e| e.to_string())?)
                .await
        }
    }
    .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok(status)
}

fn usable(conn: &Conn) -> bool {
    match conn {
        Conn::H1(s) => !s.is_closed(),
        Conn::H2(s) => !s.is_closed(),
    }
}

async fn worker(protocol: Protocol, addr: SocketAddr, rps: f64, offset: u64, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rps));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<Conn> = None;
    let mut n = offset;
    while !shared.stopped() {
        tick.tick().await;
        n += 1;
        let route = Route::pick(n);
        let start = Instant::now();
        // A keep-alive connection the gateway closed while idle (a reload
        // drains them) is replaced before the request, as every client does.
        if conn.as_ref().is_some_and(|c| !usable(c)) {
            conn = None;
        }
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
            if conn.is_none() {
                conn = Some(connect(addr, protocol).await?);
            }
            let close = matches!(protocol, Protocol::NewConnection);
            send(conn.as_mut().expect("connected"), route, close).await
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")));
        if answer.is_err() || matches!(protocol, Protocol::NewConnection) {
            conn = None;
        }
        shared.record(route, answer, start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_refusals_and_errors() {
        let keyed = Route::Keyed { with_key: true };
        let no_key = Route::Keyed { with_key: false };
        assert_eq!(classify(Route::Open, Ok(200), false), Outcome::Ok);
        assert_eq!(
            classify(Route::Limited, Ok(429), false),
            Outcome::RateLimited
        );
        assert!(matches!(
            classify(Route::Open, Ok(429), false),
            Outcome::Unexpected(_)
        ));
        assert_eq!(classify(no_key, Ok(401), false), Outcome::AuthRefused);
        assert!(matches!(
            classify(no_key, Ok(200), false),
            Outcome::Unexpected(_)
        ));
        assert!(matches!(
            classify(keyed, Ok(401), false),
            Outcome::Unexpected(_)
        ));
        assert_eq!(classify(Route::Open, Ok(502), true), Outcome::RestartWindow);
        assert!(matches!(
            classify(Route::Open, Ok(502), false),
            Outcome::Unexpected(_)
        ));
        assert!(matches!(
            classify(Route::Open, Err("reset".into()), true),
            Outcome::Unexpected(_)
        ));
    }

    #[test]
    fn restart_windows_are_bounded() {
        let w = RestartWindows::default();
        let before = Instant::now();
        w.open();
        let during = Instant::now();
        assert!(w.covers(during, during), "open window covers now");
        w.close();
        assert!(w.covers(before, during));
        let later = Instant::now() + RESTART_GRACE + Duration::from_secs(1);
        assert!(!w.covers(later, later), "bounded after the grace");
    }

    #[test]
    fn the_mix_has_every_route() {
        let routes: Vec<Route> = (0..50).map(Route::pick).collect();
        assert!(routes.contains(&Route::Open));
        assert!(routes.contains(&Route::Limited));
        assert!(routes.contains(&Route::Keyed { with_key: false }));
        assert!(routes.contains(&Route::Keyed { with_key: true }));
    }
}
