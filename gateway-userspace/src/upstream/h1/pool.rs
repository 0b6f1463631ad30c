//! Idle keep-alive connections to each target, pooled per proxy worker (see
//! `crate::workers`). Only the worker that opened a connection uses it, so
//! its socket stays with that worker's reactor and nothing crosses threads.
//! A connection is in the pool only while idle: it leaves with a request and
//! comes back when the response body is through (see `body`). Idle ones are
//! closed after `pool_idle_timeout` or once the target closes them, and
//! beyond `pool_max_idle_per_target` per target and worker once idle for a
//! second (see [`SURPLUS_IDLE`]).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, Weak,
    },
    time::Duration,
};

use tokio::time::Instant;

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

/// One worker's idle connections, by target (looked up twice per request:
/// a fast hash, not SipHash).
type IdleByTarget = HashMap<SocketAddr, Vec<Pooled>, foldhash::fast::RandomState>;

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
pub(super) struct Slot {
    inner: Arc<Inner>,
    worker: usize,
    target: SocketAddr,
}

impl Slot {
    pub fn checkin(self, conn: Conn) {
        let mut idle = self.inner.idle[self.worker].lock().unwrap();
        let pooled = idle.entry(self.target).or_default();
        let now = Instant::now();
        // Over the cap only while connections come and go: what has sat
        // idle past `SURPLUS_IDLE` makes room (the oldest first).
        trim_surplus(pooled, self.inner.max_idle, now);
        pooled.push(Pooled {
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
        let Some(pooled) = idle.get_mut(&target) else {
            return (None, slot);
        };
        let now = Instant::now();
        while let Some(mut candidate) = pooled.pop() {
            if candidate.usable(now, self.inner.idle_timeout) {
                return (Some(candidate.conn), slot);
            }
        }
        (None, slot)
    }

    /// A new connection to `slot`'s target (TCP, and the TLS handshake
    /// when the upstream has `tls`), within the circuit breakers' limits;
    /// starts the worker's reaper.
    pub(super) async fn connect(&self, slot: &Slot) -> Result<Conn, SendError> {
        let (pending, counted) = match &self.inner.breakers {
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
        let stream = stream::connect(
            slot.target,
            self.inner.connect_timeout,
            self.inner.tls.as_deref(),
        )
        .await
        .map_err(SendError::Connect)?;
        drop(pending);
        if !self.inner.reaping[slot.worker].swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(
                Arc::downgrade(&self.inner),
                slot.worker,
                self.inner.idle_timeout,
            ));
        }
        Ok(Conn::new(stream, counted))
    }
}

impl Http1Pool {
    /// Closes the longest idle connection of some worker, if any is idle.
    fn close_one_idle(&self) {
        for idle in &self.inner.idle {
            let mut idle = idle.lock().unwrap();
            if let Some(pooled) = idle.values_mut().find(|pooled| !pooled.is_empty()) {
                drop(pooled.remove(0));
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
        for pooled in idle.values_mut() {
            pooled.retain_mut(|p| p.usable(now, idle_timeout));
            trim_surplus(pooled, inner.max_idle, now);
        }
        idle.retain(|_, pooled| !pooled.is_empty());
    }
}
