//! The pooled HTTP client an upstream sends its attempts with: HTTP/1.1
//! with keep-alive, or HTTP/2 with prior knowledge (h2c), one multiplexed
//! connection per target.

use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};

use super::replay::AttemptBody;
use crate::config::{self, UpstreamProtocol};

pub type HttpClient = Client<HttpConnector, AttemptBody>;

pub fn build(config: &config::Upstream) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(config.pool_idle_timeout)
        .pool_max_idle_per_host(config.pool_max_idle_per_target)
        // Our retries decide what is retried; hyper's only resends a request
        // that never left a pooled connection the target had closed.
        .retry_canceled_requests(true);
    if config.protocol == UpstreamProtocol::Http2 {
        builder.http2_only(true);
    }
    builder.build(connector)
}
