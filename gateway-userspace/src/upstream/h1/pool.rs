//! Idle keep-alive connections to each target, pooled per proxy worker (see
//! `crate::workers`). Only the worker that opened a connection uses it, so
//! its socket stays with that worker's reactor and nothing crosses threads.
//! A connection is in the pool only while idle: it leaves with a request and
//! comes back when the response body is through (see `body`). Idle ones are
//! closed after `pool_idle_timeout` or once the target closes them, and
//! beyond `pool_max_idle_per_target` per target and worker once idle for a
//! second (see [`SURPLUS_IDLE`]).
//!
//! A request that finds no idle connection waits in its worker's queue for
//! that target, and takes the first connection to come: one another request
//! checks in, or one that a connect makes (Envoy's pools work the same
//! way). A connect is started only while waiting requests outnumber the
//! connects under way, so a burst of requests never opens more connections
//! than it has requests waiting; a failed connect fails the oldest waiting
//! request only when no other connect is coming for it (see
//! [`Http1Pool::wait`]).

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, Weak,
    },
    time::Duration,
};

use tokio::{sync::oneshot, time::Instant};

use super::conn::Conn;
use crate::{
    config,
    upstream::{
        breakers::CircuitBreakers, client::SendError, stream, target::Counted, tls::TlsConnector,
    },
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

/// One worker's idle connections and waiting requests, by target (looked
/// up twice per request: a fast hash, not SipHash).
type IdleByTarget = HashMap<SocketAddr, TargetPool, foldhash::fast::RandomState>;

/// What a waiting request is handed: a connection (`true`: one that served
/// requests before, so a stale-connection retry applies), or the error of
/// the connect that was to serve it.
type Handed = Result<(Conn, bool), SendError>;

#[derive(Default)]
struct TargetPool {
    /// Idle connections, the most recently used last.
    idle: Vec<Pooled>,
    /// Requests that found no idle connection, the oldest first (some may
    /// have gone away: their receiver is closed).
    waiting: VecDeque<oneshot::Sender<Handed>>,
    /// Connects under way for this worker and target.
    connecting: usize,
}

impl TargetPool {
    /// The waiting requests still there, after dropping those that went.
    fn still_waiting(&mut self) -> usize {
        self.waiting.retain(|waiter| !waiter.is_closed());
        self.waiting.len()
    }

    /// Hands `handed` to the oldest request still waiting; gives it back if
    /// there is none.
    fn hand_over(&mut self, mut handed: Handed) -> Option<Handed> {
        while let Some(waiter) = self.waiting.pop_front() {
            match waiter.send(handed) {
                Ok(()) => return None,
                Err(back) => handed = back,
            }
        }
        Some(handed)
    }

    fn is_unused(&self) -> bool {
        self.idle.is_empty() && self.waiting.is_empty() && self.connecting == 0
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
    /// A connection whose exchange is through: to the oldest waiting
    /// request, or idle.
    pub fn checkin(self, conn: Conn) {
        let mut idle = self.inner.idle[self.worker].lock().unwrap();
        let pool = idle.entry(self.target).or_default();
        self.pool_or_hand_over(pool, conn, true);
    }

    /// A connect started by [`Http1Pool::wait`] is through.
    fn connected(self, outcome: Result<Conn, SendError>) {
        let mut idle = self.inner.idle[self.worker].lock().unwrap();
        let pool = idle.entry(self.target).or_default();
        pool.connecting -= 1;
        match outcome {
            Ok(conn) => self.pool_or_hand_over(pool, conn, false),
            // The oldest waiting request fails with it, unless the connects
            // still under way cover every request waiting (then it is one
            // too many: a connection checked in took its request).
            Err(error) if pool.still_waiting() > pool.connecting => {
                if let Some(Err(error)) = pool.hand_over(Err(error)) {
                    tracing::debug!(upstream.target = %self.target, %error, "connect failed; no request was waiting for it");
                }
            }
            Err(error) => {
                tracing::debug!(upstream.target = %self.target, %error, "connect failed after its request took another connection");
            }
        }
    }

    fn pool_or_hand_over(&self, pool: &mut TargetPool, conn: Conn, reused: bool) {
        let Some(Ok((conn, _))) = pool.hand_over(Ok((conn, reused))) else {
            return;
        };
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

    /// A connection for a request that found none idle: the first to come
    /// of one another request checks in and one a connect makes (`true`:
    /// a reused one). A connect is started only while the requests waiting
    /// outnumber the connects under way; it goes on when its request is
    /// served by another connection, and what it makes serves the next
    /// request or waits in the pool.
    ///
    /// Bursts are why: when many clients arrive at once, a target's accept
    /// queue overflows (many servers listen with a backlog of 128 or 511),
    /// the kernel drops the SYNs it has no room for, and each such connect
    /// waits for a retransmission (1 s, then 3 s) or fails at
    /// `connect_timeout`. A request tied to its own connect waited or failed
    /// with it while the connections of the requests before it came back
    /// within milliseconds; and a connect started for every request that
    /// found the pool empty, whether or not connects already under way
    /// would serve it, outnumbered the requests and ran into
    /// `circuit_breakers.max_connections` (measured in docs/proxy.md).
    pub(super) async fn wait(&self, slot: &Slot) -> Result<(Conn, bool), SendError> {
        let (waiter, handed) = oneshot::channel();
        let start = {
            let mut idle = self.inner.idle[slot.worker].lock().unwrap();
            let pool = idle.entry(slot.target).or_default();
            pool.waiting.push_back(waiter);
            let start = pool.still_waiting() > pool.connecting;
            pool.connecting += usize::from(start);
            start
        };
        if start {
            match self.inner.permits() {
                Ok(permits) => {
                    let (inner, slot) = (self.inner.clone(), slot.clone());
                    tokio::spawn(async move {
                        let outcome = inner.connect(&slot, permits).await;
                        slot.connected(outcome);
                    });
                }
                Err(refused) => {
                    // Over a circuit breaker: this request, the one that
                    // needed the connect, is shed (its place in the queue
                    // goes with its receiver).
                    let mut idle = self.inner.idle[slot.worker].lock().unwrap();
                    if let Some(pool) = idle.get_mut(&slot.target) {
                        pool.connecting -= 1;
                    }
                    return Err(refused);
                }
            }
        }
        handed.await.unwrap_or_else(|_| {
            // Every waiter is answered while its pool lives; a request
            // holds the pool.
            Err(SendError::Connect(io::Error::other(
                "the connection pool was closed",
            )))
        })
    }
}

/// A connect's places under the circuit breakers: among the connects under
/// way, and among the open connections.
type Permits = (Option<Counted>, Option<Counted>);

impl Inner {
    /// The circuit breakers' leave for one more connect.
    fn permits(&self) -> Result<Permits, SendError> {
        let Some(breakers) = &self.breakers else {
            return Ok((None, None));
        };
        let pending = breakers.connecting()?;
        let counted = match breakers.free_connection() {
            Some(counted) => counted,
            None => {
                // An idle connection (of any worker) makes room.
                self.close_one_idle();
                breakers.connection()?
            }
        };
        Ok((Some(pending), Some(counted)))
    }

    /// A new connection to `slot`'s target (TCP, and the TLS handshake
    /// when the upstream has `tls`), holding the breakers' `permits`;
    /// starts the worker's reaper.
    async fn connect(self: &Arc<Self>, slot: &Slot, permits: Permits) -> Result<Conn, SendError> {
        let (pending, counted) = permits;
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

#[cfg(test)]
impl Http1Pool {
    /// The calling worker's idle connections to `target`, the requests
    /// waiting for one, and the connects under way.
    pub(super) fn counts(&self, target: SocketAddr) -> (usize, usize, usize) {
        let mut idle = self.inner.idle[workers::current() % self.inner.idle.len()]
            .lock()
            .unwrap();
        idle.get_mut(&target).map_or((0, 0, 0), |pool| {
            (pool.idle.len(), pool.still_waiting(), pool.connecting)
        })
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
            pool.still_waiting();
        }
        idle.retain(|_, pool| !pool.is_unused());
    }
}
