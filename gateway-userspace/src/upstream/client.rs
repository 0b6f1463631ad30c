//! The client an upstream sends its attempts with: HTTP/1.1 with keep-alive
//! connections pooled per proxy worker (`h1`), or HTTP/2 with prior
//! knowledge (h2c), one multiplexed connection per target and worker.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{uri::Authority, Request, Response, Uri};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};

use super::{
    h1::{self, Http1Pool},
    replay::AttemptBody,
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

/// An attempt in flight; it borrows the client and the target's address.
pub type SendFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Failed>> + Send + 'a>>;

pub enum UpstreamClient {
    Http1(Http1Pool),
    /// One client per worker: a pooled connection's task runs on the worker
    /// that opened it, so each worker uses only its own.
    Http2(Vec<Client<HttpConnector, AttemptBody>>),
}

impl UpstreamClient {
    pub fn new(config: &config::Upstream) -> Self {
        match config.protocol {
            UpstreamProtocol::Http1 => UpstreamClient::Http1(Http1Pool::new(config)),
            UpstreamProtocol::Http2 => {
                UpstreamClient::Http2((0..workers::count()).map(|_| http2(config)).collect())
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
        target: std::net::SocketAddr,
        authority: &'a Authority,
        mut request: Request<AttemptBody>,
        fields: &'a ForwardFields,
    ) -> SendFuture<'a> {
        match self {
            UpstreamClient::Http1(pool) => Box::pin(async move {
                let response = pool.send(target, authority, request, fields).await?;
                Ok(response.map(ResponseBody::Http1))
            }),
            UpstreamClient::Http2(clients) => {
                fields.insert_into(request.headers_mut());
                let mut uri = std::mem::take(request.uri_mut()).into_parts();
                uri.scheme = Some(http::uri::Scheme::HTTP);
                uri.authority = Some(authority.clone());
                if uri.path_and_query.is_none() {
                    uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
                }
                *request.uri_mut() =
                    Uri::from_parts(uri).expect("scheme, authority and path form a URI");
                let client = &clients[workers::current() % clients.len()];
                let response = client.request(request);
                Box::pin(async move {
                    let response = response.await.map_err(SendError::Http2)?;
                    Ok(response.map(ResponseBody::Http2))
                })
            }
        }
    }
}

fn http2(config: &config::Upstream) -> Client<HttpConnector, AttemptBody> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(config.pool_idle_timeout)
        // Our retries decide what is retried; hyper's only resends a request
        // that never left a pooled connection the target had closed.
        .retry_canceled_requests(true)
        .http2_only(true)
        .build(connector)
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
