//! The HTTP/1.1 client: keep-alive connections to each target, pooled per
//! proxy worker (see `proxy::workers`). A connection's task runs on the
//! worker that opened it and only that worker's requests use it, so nothing
//! crosses threads; a connection goes back to its pool as soon as the
//! request is handed to it and is taken again only once hyper says it is
//! ready (its previous response fully read). Idle connections are closed
//! after `pool_idle_timeout`, at most `pool_max_idle_per_target` are kept per
//! target and worker.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, Weak,
    },
    time::Duration,
};

use http::{header::HOST, uri::Authority, HeaderValue, Request, Response};
use hyper::{
    body::Incoming,
    client::conn::http1::{self, SendRequest},
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, time::Instant};

use super::replay::AttemptBody;
use crate::{config, proxy::workers};

/// Why an attempt got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection: refused, unreachable, or not within `connect_timeout`
    /// (an `io::ErrorKind::TimedOut` error). The request was not sent.
    #[error("cannot connect: {0}")]
    Connect(#[source] io::Error),
    /// The HTTP/1.1 exchange failed (reset, garbage, early close).
    #[error(transparent)]
    Http1(hyper::Error),
    /// The pooled HTTP/2 client failed.
    #[error(transparent)]
    Http2(hyper_util::client::legacy::Error),
}

impl SendError {
    /// True when the request never left: another target may take it.
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::Connect(_) => true,
            SendError::Http1(_) => false,
            SendError::Http2(e) => e.is_connect(),
        }
    }
}

/// A failed attempt, with the request when it never left (a connect
/// failure), so a retry needs no copy of it made in advance.
pub struct Failed {
    pub error: SendError,
    pub unsent: Option<Request<AttemptBody>>,
}

impl From<SendError> for Failed {
    fn from(error: SendError) -> Self {
        Self {
            error,
            unsent: None,
        }
    }
}

pub type SendFuture =
    Pin<Box<dyn Future<Output = Result<Response<Incoming>, Failed>> + Send + 'static>>;

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
    idle_timeout: Duration,
    max_idle: usize,
}

/// One worker's idle connections, by target (looked up twice per request:
/// a fast hash, not SipHash).
type IdleByTarget = HashMap<SocketAddr, Vec<Pooled>, foldhash::fast::RandomState>;

struct Pooled {
    sender: SendRequest<AttemptBody>,
    /// When it was last given a request.
    used: Instant,
}

impl Http1Pool {
    pub fn new(config: &config::Upstream) -> Self {
        let workers = workers::count();
        Self {
            inner: Arc::new(Inner {
                idle: (0..workers).map(|_| Mutex::default()).collect(),
                reaping: (0..workers).map(|_| AtomicBool::new(false)).collect(),
                connect_timeout: config.connect_timeout,
                idle_timeout: config.pool_idle_timeout,
                max_idle: config.pool_max_idle_per_target,
            }),
        }
    }

    /// Sends `request` (origin-form URI) to `target`, on a pooled connection
    /// when one is ready, else on a new one. A request that a reused
    /// connection could not take (the target had closed it) goes on a new
    /// connection.
    pub fn send(
        &self,
        target: SocketAddr,
        authority: &Authority,
        mut request: Request<AttemptBody>,
    ) -> SendFuture {
        if !request.headers().contains_key(HOST) {
            let host = HeaderValue::from_str(authority.as_str()).expect("an authority is a value");
            request.headers_mut().insert(HOST, host);
        }
        let inner = self.inner.clone();
        Box::pin(async move {
            let worker = workers::current() % inner.idle.len();
            let mut request = request;
            loop {
                let now = Instant::now();
                let (mut sender, reused) = match inner.checkout(worker, target, now) {
                    Some(sender) => (sender, true),
                    None => match inner.connect(worker, target).await {
                        Ok(sender) => (sender, false),
                        Err(error) => {
                            return Err(Failed {
                                error,
                                unsent: Some(request),
                            })
                        }
                    },
                };
                let response = sender.try_send_request(request);
                inner.checkin(worker, target, sender, now);
                match response.await {
                    Ok(response) => return Ok(response),
                    Err(mut error) => match error.take_message() {
                        Some(unsent) if reused => request = unsent,
                        _ => return Err(SendError::Http1(error.into_error()).into()),
                    },
                }
            }
        })
    }
}

impl Inner {
    /// The most recently used ready connection to `target`; drops closed
    /// and expired ones on the way.
    fn checkout(
        &self,
        worker: usize,
        target: SocketAddr,
        now: Instant,
    ) -> Option<SendRequest<AttemptBody>> {
        let mut idle = self.idle[worker].lock().unwrap();
        let pooled = idle.get_mut(&target)?;
        self.prune(pooled, now);
        let ready = pooled.iter().rposition(|p| p.sender.is_ready())?;
        Some(pooled.swap_remove(ready).sender)
    }

    /// `now`: when the request was handed to `sender` (its checkout time:
    /// the request goes on it right away).
    fn checkin(
        &self,
        worker: usize,
        target: SocketAddr,
        sender: SendRequest<AttemptBody>,
        now: Instant,
    ) {
        let mut idle = self.idle[worker].lock().unwrap();
        let pooled = idle.entry(target).or_default();
        if pooled.len() < self.max_idle {
            pooled.push(Pooled { sender, used: now });
        }
        // Else dropped: the connection closes once its response is done.
    }

    fn prune(&self, pooled: &mut Vec<Pooled>, now: Instant) {
        pooled.retain(|p| {
            let expired = p.sender.is_ready() && now.duration_since(p.used) > self.idle_timeout;
            !(p.sender.is_closed() || expired)
        });
    }

    async fn connect(
        self: &Arc<Self>,
        worker: usize,
        target: SocketAddr,
    ) -> Result<SendRequest<AttemptBody>, SendError> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(target)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return Err(SendError::Connect(error)),
                Err(_elapsed) => {
                    return Err(SendError::Connect(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no connection within {:?}", self.connect_timeout),
                    )))
                }
            };
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Http1)?;
        // With upgrades: a 101 hands the connection to the WebSocket relay.
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(upstream.target = %target, %error, "upstream connection ended");
            }
        });
        if !self.reaping[worker].swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(self), worker, self.idle_timeout));
        }
        Ok(sender)
    }
}

/// Closes this worker's idle connections past the idle timeout, until the
/// pool is gone (its upstream replaced by a reload).
async fn reap(pool: Weak<Inner>, worker: usize, idle_timeout: Duration) {
    let period = (idle_timeout / 2).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = pool.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut idle = inner.idle[worker].lock().unwrap();
        for pooled in idle.values_mut() {
            inner.prune(pooled, now);
        }
        idle.retain(|_, pooled| !pooled.is_empty());
    }
}
