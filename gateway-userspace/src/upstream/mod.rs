//! Upstream services: targets, the balancer that picks one, and the pooled
//! HTTP client that talks to them.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};

use crate::config;

pub type HttpClient = Client<HttpConnector, Incoming>;

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
