//! Upstream services: targets, the balancer that picks one, and the pooled
//! HTTP client that talks to them.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use http::{uri::Uri, Request, Response};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};

use crate::{
    config,
    proxy::{Body, Rejection, RequestContext},
};

pub type HttpClient = Client<HttpConnector, Body>;

/// One upstream service, compiled from config.
pub struct Upstream {
    pub name: String,
    targets: Vec<SocketAddr>,
    next: AtomicUsize,
    pub timeout: Duration,
    pub client: HttpClient,
}

impl Upstream {
    pub fn new(name: &str, config: &config::Upstream) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_target)
            .build(connector);
        Self {
            name: name.to_string(),
            targets: config.targets.clone(),
            next: AtomicUsize::new(0),
            timeout: config.timeout,
            client,
        }
    }

    /// Round robin over the targets.
    pub fn pick(&self) -> SocketAddr {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.targets[i % self.targets.len()]
    }

    /// Sends `request` (origin-form URI, headers already rewritten) to a
    /// target and waits for the response headers, within `timeout`.
    pub async fn dispatch(
        &self,
        mut request: Request<Body>,
        ctx: &mut RequestContext,
    ) -> Result<Response<Incoming>, Rejection> {
        let target = self.pick();
        ctx.upstream_target = Some(target);
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(
            target
                .to_string()
                .parse()
                .expect("a socket address is a valid authority"),
        );
        *request.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path form a URI");
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Err(_elapsed) => Err(Rejection::UpstreamTimeout {
                target,
                timeout_ms: self.timeout.as_millis(),
            }),
            Ok(Err(error)) => Err(Rejection::from_client_error(target, error)),
            Ok(Ok(response)) => Ok(response),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_robin_visits_every_target_evenly() {
        let targets: Vec<SocketAddr> = vec![
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            "127.0.0.1:3".parse().unwrap(),
        ];
        let cfg: config::Upstream =
            serde_yaml::from_str("targets: ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3']").unwrap();
        let upstream = Upstream::new("u", &cfg);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..300 {
            *counts.entry(upstream.pick()).or_insert(0) += 1;
        }
        for t in &targets {
            assert_eq!(counts[t], 100);
        }
    }
}
