//! The client an upstream sends its attempts with: HTTP/1.1 with keep-alive
//! connections pooled per proxy worker (`h1`), or HTTP/2 (h2c with prior
//! knowledge, or over TLS with ALPN `h2`), one multiplexed connection per
//! target and worker.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{uri::Authority, Request, Response, Uri};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::{
    client::legacy::{
        connect::{Connect, Connected, Connection, HttpConnector},
        Client,
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};

use super::{
    breakers::CircuitBreakers,
    h1::{self, Http1Pool},
    replay::AttemptBody,
    stream::{self, Stream},
    tls::TlsConnector,
};
use crate::{
    config::{self, UpstreamProtocol},
    exchange::{BoxError, ForwardFields},
    workers,
};

/// Why an attempt got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection: refused, unreachable, or not within `connect_timeout`
    /// (an `io::ErrorKind::TimedOut` error). The request was not sent.
    #[error("cannot connect: {0}")]
    Connect(#[source] io::Error),
    /// The HTTP/1.1 exchange failed (reset, garbage, early close).
    #[error(transparent)]
    Http1(h1::Error),
    /// The pooled HTTP/2 client failed.
    #[error(transparent)]
    Http2(hyper_util::client::legacy::Error),
    /// A new connection would break a circuit breaker limit
    /// (`max_connections`, `max_pending_requests`). The request was not
    /// sent; it is shed, not retried.
    #[error("at the upstream's {limit} ({max})")]
    Overloaded { limit: &'static str, max: usize },
}

impl SendError {
    /// True when the request never left: another target may take it.
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::Connect(_) => true,
            SendError::Http1(_) => false,
            SendError::Http2(e) => e.is_connect(),
            SendError::Overloaded { .. } => false,
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

/// An attempt in flight; it borrows the client and the target's address.
pub type SendFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Failed>> + Send + 'a>>;

pub enum UpstreamClient {
    Http1(Http1Pool),
    /// One client per worker: a pooled connection's task runs on the worker
    /// that opened it, so each worker uses only its own.
    Http2(Vec<Client<HttpConnector, AttemptBody>>),
    /// The same over TLS.
    Http2Tls(Vec<Client<TlsConnect, AttemptBody>>),
}

impl UpstreamClient {
    /// The client `config.protocol` says, over TLS when `tls` is given.
    /// HTTP/1.1 connections count against `breakers`.
    pub fn new(
        config: &config::Upstream,
        tls: Option<Arc<TlsConnector>>,
        breakers: &Arc<CircuitBreakers>,
    ) -> Self {
        let workers = workers::count();
        match (config.protocol, tls) {
            (UpstreamProtocol::Http1, tls) => {
                UpstreamClient::Http1(Http1Pool::new(config, tls, Some(breakers.clone())))
            }
            (UpstreamProtocol::Http2, None) => {
                UpstreamClient::Http2((0..workers).map(|_| http2(config, plain(config))).collect())
            }
            (UpstreamProtocol::Http2, Some(tls)) => {
                let connect = TlsConnect {
                    tls,
                    timeout: config.connect_timeout,
                };
                UpstreamClient::Http2Tls(
                    (0..workers)
                        .map(|_| http2(config, connect.clone()))
                        .collect(),
                )
            }
        }
    }

    /// Whether a request that never left comes back in [`Failed`]
    /// (HTTP/1.1); the HTTP/2 client keeps it.
    pub fn returns_unsent(&self) -> bool {
        matches!(self, UpstreamClient::Http1(_))
    }

    /// Sends `request` (origin-form URI) with `fields` added to the target
    /// at `authority`.
    pub fn send<'a>(
        &'a self,
        target: SocketAddr,
        authority: &'a Authority,
        request: Request<AttemptBody>,
        fields: &'a ForwardFields,
    ) -> SendFuture<'a> {
        match self {
            UpstreamClient::Http1(pool) => Box::pin(async move {
                let response = pool.send(target, authority, request, fields).await?;
                Ok(response.map(ResponseBody::Http1))
            }),
            UpstreamClient::Http2(clients) => {
                send_http2(clients, http::uri::Scheme::HTTP, authority, request, fields)
            }
            UpstreamClient::Http2Tls(clients) => send_http2(
                clients,
                http::uri::Scheme::HTTPS,
                authority,
                request,
                fields,
            ),
        }
    }
}

/// Sends on the calling worker's HTTP/2 client; `scheme` is the request's
/// `:scheme`, which is also what tells a pooled connection's kind.
fn send_http2<'a, C>(
    clients: &'a [Client<C, AttemptBody>],
    scheme: http::uri::Scheme,
    authority: &Authority,
    mut request: Request<AttemptBody>,
    fields: &ForwardFields,
) -> SendFuture<'a>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    fields.insert_into(request.headers_mut());
    let mut uri = std::mem::take(request.uri_mut()).into_parts();
    uri.scheme = Some(scheme);
    uri.authority = Some(authority.clone());
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *request.uri_mut() = Uri::from_parts(uri).expect("scheme, authority and path form a URI");
    let client = &clients[workers::current() % clients.len()];
    let response = client.request(request);
    Box::pin(async move {
        let response = response.await.map_err(SendError::Http2)?;
        Ok(response.map(ResponseBody::Http2))
    })
}

fn plain(config: &config::Upstream) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    connector
}

fn http2<C: Connect + Clone>(config: &config::Upstream, connector: C) -> Client<C, AttemptBody> {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(config.pool_idle_timeout)
        // Our retries decide what is retried; hyper's only resends a request
        // that never left a pooled connection the target had closed.
        .retry_canceled_requests(true)
        .http2_only(true)
        .build(connector)
}

/// Opens HTTP/2 connections over TLS: the target is the URI's authority
/// (always an `IP:port`), the handshake as for HTTP/1.1 (`stream::connect`).
#[derive(Clone)]
pub struct TlsConnect {
    tls: Arc<TlsConnector>,
    timeout: Duration,
}

impl tower_service::Service<Uri> for TlsConnect {
    type Response = TlsConnection;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsConnection>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let target: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("no IP:port in {uri}"))
                })?;
            let stream = stream::connect(target, this.timeout, Some(&this.tls)).await?;
            Ok(TlsConnection(TokioIo::new(stream)))
        })
    }
}

/// A TLS connection as hyper's pool takes it.
pub struct TlsConnection(TokioIo<Stream>);

impl Connection for TlsConnection {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// A response body as either client delivers it (the HTTP/1.1 one boxed
/// where it is made).
pub enum ResponseBody {
    Http1(Box<h1::ResponseBody>),
    Http2(Incoming),
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Http1(body) => Pin::new(&mut **body).poll_frame(cx).map_err(Into::into),
            ResponseBody::Http2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Http1(body) => body.is_end_stream(),
            ResponseBody::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Http1(body) => body.size_hint(),
            ResponseBody::Http2(body) => body.size_hint(),
        }
    }
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ResponseBody::Http1(_) => "ResponseBody::Http1",
            ResponseBody::Http2(_) => "ResponseBody::Http2",
        })
    }
}
