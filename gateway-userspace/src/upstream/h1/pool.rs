//! Idle keep-alive connections to each target, pooled per proxy worker (see
//! `crate::workers`). Only the worker that opened a connection uses it, so
//! its socket stays with that worker's reactor and nothing crosses threads.
//! A connection is in the pool only while idle: it leaves with a request and
//! comes back when the response body is through (see `body`). Idle ones are
//! closed after `pool_idle_timeout` or once the target closes them, and
//! beyond `pool_max_idle_per_target` per target and worker once idle for a
//! second (see [`SURPLUS_IDLE`]).
//!
//! A request that finds no idle connection does not wait for its own connect
//! only: a connection another request of the same worker checks in while the
//! connect is under way takes it, whichever comes first, as in Envoy's pools
//! (see [`Http1Pool::connect_or_reuse`]).

use std::{
    collections::{HashMap, VecDeque},
    future::{poll_fn, Future},
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, Weak,
    },
    task::Poll,
    time::Duration,
};

use tokio::{sync::oneshot, time::Instant};

use super::conn::Conn;
use crate::{
    config,
    upstream::{breakers::CircuitBreakers, client::SendError, stream, tls::TlsConnector},
    workers,
};

/// Keep-alive HTTP/1.1 connections, one pool per worker.
pub struct Http1Pool {
    inner: Arc<Inner>,
}

struct Inner {
    /// By worker index, then target.
    idle: Vec<Mutex<IdleByTarget>>,
    /// Whether the worker runs this pool's reaper yet.
    reaping: Vec<AtomicBool>,
    connect_timeout: Duration,
    /// TLS to the targets, when the upstream says so.
    tls: Option<Arc<TlsConnector>>,
    idle_timeout: Duration,
    max_idle: usize,
    /// Counts connections and connects under way (absent in some tests).
    breakers: Option<Arc<CircuitBreakers>>,
}

/// One worker's idle connections and waiting requests, by target (looked up
/// twice per request: a fast hash, not SipHash).
type IdleByTarget = HashMap<SocketAddr, TargetPool, foldhash::fast::RandomState>;

#[derive(Default)]
struct TargetPool {
    /// Idle connections, the most recently used last.
    idle: Vec<Pooled>,
    /// Requests whose connect is under way, the oldest first: a connection
    /// checked in goes to the first of them still waiting.
    waiting: VecDeque<oneshot::Sender<Conn>>,
}

impl TargetPool {
    /// Adds a waiting request. Those that went away (their connect won,
    /// or the client left) are dropped whenever the queue has doubled, so
    /// it stays bounded when nothing is checked in (a target that refuses
    /// every connect).
    fn wait(&mut self, waiter: oneshot::Sender<Conn>) {
        if self.waiting.len() >= 32 && self.waiting.len().is_power_of_two() {
            self.waiting.retain(|waiter| !waiter.is_closed());
        }
        self.waiting.push_back(waiter);
    }
}

struct Pooled {
    conn: Conn,
    /// When it came back.
    idle_since: Instant,
}

impl Pooled {
    /// Not idle past `idle_timeout`, and not closed by the target.
    fn usable(&mut self, now: Instant, idle_timeout: Duration) -> bool {
        now.duration_since(self.idle_since) <= idle_timeout && self.conn.is_open()
    }
}

/// Where a connection goes back to when its exchange is through.
#[derive(Clone)]
pub(super) struct Slot {
    inner: Arc<Inner>,
    worker: usize,
    target: SocketAddr,
}

impl Slot {
    pub fn checkin(self, mut conn: Conn) {
        let mut idle = self.inner.idle[self.worker].lock().unwrap();
        let pool = idle.entry(self.target).or_default();
        // A request waiting for its connect takes it at once.
        while let Some(waiter) = pool.waiting.pop_front() {
            match waiter.send(conn) {
                Ok(()) => return,
                // That request is gone, or was served already.
                Err(back) => conn = back,
            }
        }
        let now = Instant::now();
        // Over the cap only while connections come and go: what has sat
        // idle past `SURPLUS_IDLE` makes room (the oldest first).
        trim_surplus(&mut pool.idle, self.inner.max_idle, now);
        pool.idle.push(Pooled {
            conn,
            idle_since: now,
        });
    }
}

impl Http1Pool {
    pub fn new(
        config: &config::Upstream,
        tls: Option<Arc<TlsConnector>>,
        breakers: Option<Arc<CircuitBreakers>>,
    ) -> Self {
        let workers = workers::count();
        Self {
            inner: Arc::new(Inner {
                idle: (0..workers).map(|_| Mutex::default()).collect(),
                reaping: (0..workers).map(|_| AtomicBool::new(false)).collect(),
                connect_timeout: config.connect_timeout,
                tls,
                idle_timeout: config.pool_idle_timeout,
                max_idle: config.pool_max_idle_per_target,
                breakers,
            }),
        }
    }

    /// The calling worker's most recently used idle connection to `target`
    /// that is still open, and the slot it goes back to.
    pub(super) fn checkout(&self, target: SocketAddr) -> (Option<Conn>, Slot) {
        let worker = workers::current() % self.inner.idle.len();
        let slot = Slot {
            inner: self.inner.clone(),
            worker,
            target,
        };
        let mut idle = self.inner.idle[worker].lock().unwrap();
        let Some(pool) = idle.get_mut(&target) else {
            return (None, slot);
        };
        let now = Instant::now();
        while let Some(mut candidate) = pool.idle.pop() {
            if candidate.usable(now, self.inner.idle_timeout) {
                return (Some(candidate.conn), slot);
            }
        }
        (None, slot)
    }

    /// A connection for a request that found none idle: a new one to
    /// `slot`'s target, or one that another request of this worker checks
    /// in while the connect is under way, whichever comes first (`true`:
    /// a reused one). The connect goes on when a checked-in connection took
    /// the request, and what it makes goes to the pool or the next waiting
    /// request; a connect that fails then fails no request.
    ///
    /// When many clients arrive at once, a target's accept queue overflows
    /// (128 or 511 connections in many servers' defaults): the kernel drops
    /// SYNs, and each such connect takes a retransmission, one second or
    /// three, or fails at `connect_timeout`. Tied to its own connect, the
    /// request waited or failed with it while the connections of the
    /// requests before it came back within milliseconds.
    pub(super) async fn connect_or_reuse(&self, slot: &Slot) -> Result<(Conn, bool), SendError> {
        let (reuse_tx, mut reuse_rx) = oneshot::channel();
        self.inner.idle[slot.worker]
            .lock()
            .unwrap()
            .entry(slot.target)
            .or_default()
            .wait(reuse_tx);
        let (connected_tx, mut connected_rx) = oneshot::channel();
        let inner = self.inner.clone();
        let own = slot.clone();
        tokio::spawn(async move {
            match inner.connect(&own).await {
                Ok(conn) => {
                    if let Err(Ok(conn)) = connected_tx.send(Ok(conn)) {
                        own.checkin(conn);
                    }
                }
                Err(error) => {
                    if let Err(Err(error)) = connected_tx.send(Err(error)) {
                        tracing::debug!(
                            upstream.target = %own.target,
                            %error,
                            "connect failed after its request took another connection"
                        );
                    }
                }
            }
        });
        let mut reuse_open = true;
        let outcome = poll_fn(|cx| {
            if reuse_open {
                match Pin::new(&mut reuse_rx).poll(cx) {
                    Poll::Ready(Ok(conn)) => return Poll::Ready(Ok((conn, true))),
                    // The pool is gone (a reload replaced the upstream).
                    Poll::Ready(Err(_)) => reuse_open = false,
                    Poll::Pending => {}
                }
            }
            match Pin::new(&mut connected_rx).poll(cx) {
                Poll::Ready(Ok(connected)) => Poll::Ready(connected.map(|conn| (conn, false))),
                Poll::Ready(Err(_)) => Poll::Ready(Err(SendError::Connect(io::Error::other(
                    "the connect was abandoned",
                )))),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        if reuse_open {
            // A connection handed over after the connect won goes back.
            reuse_rx.close();
            if let Ok(conn) = reuse_rx.try_recv() {
                slot.clone().checkin(conn);
            }
        }
        outcome
    }
}

impl Http1Pool {
    /// The calling worker's idle connections to `target`, and the requests
    /// it holds as waiting for one.
    #[cfg(test)]
    pub(super) fn counts(&self, target: SocketAddr) -> (usize, usize) {
        self.inner.idle[workers::current() % self.inner.idle.len()]
            .lock()
            .unwrap()
            .get(&target)
            .map_or((0, 0), |pool| (pool.idle.len(), pool.waiting.len()))
    }
}

impl Inner {
    /// A new connection to `slot`'s target (TCP, and the TLS handshake
    /// when the upstream has `tls`), within the circuit breakers' limits;
    /// starts the worker's reaper.
    async fn connect(self: &Arc<Self>, slot: &Slot) -> Result<Conn, SendError> {
        let (pending, counted) = match &self.breakers {
            Some(breakers) => {
                let pending = breakers.connecting()?;
                let counted = match breakers.free_connection() {
                    Some(counted) => counted,
                    None => {
                        // An idle connection (of any worker) makes room.
                        self.close_one_idle();
                        breakers.connection()?
                    }
                };
                (Some(pending), Some(counted))
            }
            None => (None, None),
        };
        let stream = stream::connect(slot.target, self.connect_timeout, self.tls.as_deref())
            .await
            .map_err(SendError::Connect)?;
        drop(pending);
        if !self.reaping[slot.worker].swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(self), slot.worker, self.idle_timeout));
        }
        Ok(Conn::new(stream, counted))
    }
}

impl Inner {
    /// Closes the longest idle connection of some worker, if any is idle.
    fn close_one_idle(&self) {
        for idle in &self.idle {
            let mut idle = idle.lock().unwrap();
            if let Some(pool) = idle.values_mut().find(|pool| !pool.idle.is_empty()) {
                drop(pool.idle.remove(0));
                return;
            }
        }
    }
}

/// How long a connection beyond `pool_max_idle_per_target` may sit idle
/// before it is closed. The cap is on connections that stay idle, not on
/// those a busy worker hands from one request to the next: with more
/// requests in flight than the cap (a thousand clients, 128 idle allowed),
/// closing every connection over the cap at check-in made most requests
/// open a new one (connect, a port in TIME_WAIT on close), and requests
/// queued behind the connects (p99 of hundreds of milliseconds, ports
/// running out). A second is far longer than a busy worker takes to reuse
/// a connection, and short enough that a burst's connections are gone soon
/// after it.
pub(super) const SURPLUS_IDLE: Duration = Duration::from_secs(1);

/// Closes the oldest connections of `pooled` beyond `max_idle` that have
/// been idle for `SURPLUS_IDLE` (the oldest are at the front).
fn trim_surplus(pooled: &mut Vec<Pooled>, max_idle: usize, now: Instant) {
    let surplus = pooled.len().saturating_sub(max_idle);
    let stale = pooled
        .iter()
        .take(surplus)
        .take_while(|p| now.duration_since(p.idle_since) >= SURPLUS_IDLE)
        .count();
    pooled.drain(..stale);
}

/// Closes this worker's idle connections past the idle timeout or closed by
/// their target, and those beyond the cap idle past `SURPLUS_IDLE`, until
/// the pool is gone (its upstream replaced by a reload).
async fn reap(pool: Weak<Inner>, worker: usize, idle_timeout: Duration) {
    let period = (idle_timeout / 2)
        .min(SURPLUS_IDLE)
        .max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = pool.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut idle = inner.idle[worker].lock().unwrap();
        for pool in idle.values_mut() {
            pool.idle.retain_mut(|p| p.usable(now, idle_timeout));
            trim_surplus(&mut pool.idle, inner.max_idle, now);
            pool.waiting.retain(|waiter| !waiter.is_closed());
        }
        idle.retain(|_, pool| !pool.idle.is_empty() || !pool.waiting.is_empty());
    }
}
