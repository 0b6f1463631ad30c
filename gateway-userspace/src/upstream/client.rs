//! The client an upstream sends its attempts with: HTTP/1.1 with keep-alive
//! connections pooled per proxy worker (`pool`), or HTTP/2 with prior
//! knowledge (h2c), one multiplexed connection per target and worker.

use http::{uri::Authority, Request, Uri};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};

use super::{
    pool::{Http1Pool, SendError, SendFuture},
    replay::AttemptBody,
};
use crate::{
    config::{self, UpstreamProtocol},
    proxy::workers,
};

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

    /// Whether a request that never left comes back in [`super::pool::Failed`]
    /// (HTTP/1.1); the HTTP/2 client keeps it.
    pub fn returns_unsent(&self) -> bool {
        matches!(self, UpstreamClient::Http1(_))
    }

    /// Sends `request` (origin-form URI) to the target at `authority`.
    pub fn send(
        &self,
        target: std::net::SocketAddr,
        authority: &Authority,
        mut request: Request<AttemptBody>,
    ) -> SendFuture {
        match self {
            UpstreamClient::Http1(pool) => pool.send(target, authority, request),
            UpstreamClient::Http2(clients) => {
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
                Box::pin(async move { response.await.map_err(|e| SendError::Http2(e).into()) })
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
