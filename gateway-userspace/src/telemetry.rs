//! Logging set-up and the metrics exported on the admin API's /metrics
//! (Prometheus text format).

use std::{
    io::IsTerminal,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use gateway_common::Stat;
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};
use tracing_subscriber::EnvFilter;

use crate::xdp::Counters;

/// Logs to stderr; `RUST_LOG` overrides the default `info` level.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
    consumer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    upstream: String,
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

/// 1 ms .. ~65 s in powers of two: covers a cache hit and a slow upstream.
#[derive(Clone)]
struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.001, 2.0, 17))
    }
}

/// Process-wide metrics. Cheap to update from any task.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteLabels, Histogram, LatencyBuckets>,
    upstream_duration: Family<TargetLabels, Histogram, LatencyBuckets>,
    upstream_healthy: Family<TargetLabels, Gauge>,
    active_connections: Family<ListenerLabels, Gauge>,
    l7_denied_connections: Counter,
    reloads: Counter,
    // Plain copies for `status` (prometheus-client counters are not readable
    // without encoding).
    l7_denied_total: AtomicU64,
    reloads_total: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("xgate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests answered, by route, method, status and consumer",
            requests.clone(),
        );
        let request_duration = Family::new_with_constructor(LatencyBuckets);
        registry.register(
            "request_duration_seconds",
            "Time from request start to response headers, by route",
            request_duration.clone(),
        );
        let upstream_duration = Family::new_with_constructor(LatencyBuckets);
        registry.register(
            "upstream_duration_seconds",
            "Time for an upstream target to send response headers",
            upstream_duration.clone(),
        );
        let upstream_healthy = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "upstream_target_healthy",
            "1 when the target takes traffic, 0 when it is ejected",
            upstream_healthy.clone(),
        );
        let active_connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "active_connections",
            "Client connections open, by listener",
            active_connections.clone(),
        );
        let l7_denied_connections = Counter::default();
        registry.register(
            "l7_denied_connections",
            "Connections closed at accept because the source is on the blocklist",
            l7_denied_connections.clone(),
        );
        let reloads = Counter::default();
        registry.register(
            "reloads",
            "Successful configuration reloads",
            reloads.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            upstream_duration,
            upstream_healthy,
            active_connections,
            l7_denied_connections,
            reloads,
            l7_denied_total: AtomicU64::new(0),
            reloads_total: AtomicU64::new(0),
        }
    }
}

/// Decrements the listener's open-connection gauge when dropped.
pub struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// One answered request (also rejected ones).
    pub fn request(
        &self,
        route: &str,
        method: &str,
        status: u16,
        consumer: &str,
        duration: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                method: method.to_string(),
                status,
                consumer: consumer.to_string(),
            })
            .inc();
        self.request_duration
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(duration.as_secs_f64());
    }

    /// One upstream attempt that produced response headers.
    pub fn upstream_response(&self, upstream: &str, target: &str, duration: Duration) {
        self.upstream_duration
            .get_or_create(&TargetLabels {
                upstream: upstream.to_string(),
                target: target.to_string(),
            })
            .observe(duration.as_secs_f64());
    }

    pub fn set_target_health(&self, upstream: &str, target: &str, healthy: bool) {
        self.upstream_healthy
            .get_or_create(&TargetLabels {
                upstream: upstream.to_string(),
                target: target.to_string(),
            })
            .set(i64::from(healthy));
    }

    /// A client connection opened on `listener`; hold the guard while it is.
    pub fn connection_opened(&self, listener: &str) -> ConnectionGuard {
        let gauge = self
            .active_connections
            .get_or_create(&ListenerLabels {
                listener: listener.to_string(),
            })
            .clone();
        gauge.inc();
        ConnectionGuard(gauge)
    }

    pub fn l7_denied_connection(&self) {
        self.l7_denied_connections.inc();
        self.l7_denied_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn l7_denied_connections(&self) -> u64 {
        self.l7_denied_total.load(Ordering::Relaxed)
    }

    pub fn reloaded(&self) {
        self.reloads.inc();
        self.reloads_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reloads(&self) -> u64 {
        self.reloads_total.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition format, with the kernel counters if XDP is
    /// attached.
    pub fn render(&self, xdp: Option<&Counters>) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        // The registry ends with "# EOF"; the XDP family goes before it.
        if let Some(stripped) = out.strip_suffix("# EOF\n") {
            out.truncate(stripped.len());
        }
        if let Some(counters) = xdp {
            out.push_str("# HELP xgate_xdp_packets Packets seen by the XDP program, by verdict and reason.\n");
            out.push_str("# TYPE xgate_xdp_packets counter\n");
            for stat in Stat::ALL {
                let verdict = if stat.dropped() { "drop" } else { "pass" };
                out.push_str(&format!(
                    "xgate_xdp_packets_total{{verdict=\"{verdict}\",reason=\"{}\"}} {}\n",
                    stat.name(),
                    counters.get(stat)
                ));
            }
        }
        out.push_str("# EOF\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_in_prometheus_text() {
        let metrics = Metrics::default();
        metrics.request("api", "GET", 200, "anonymous", Duration::from_millis(3));
        metrics.upstream_response("users", "127.0.0.1:9000", Duration::from_millis(2));
        metrics.set_target_health("users", "127.0.0.1:9000", true);
        let guard = metrics.connection_opened("public");
        metrics.reloaded();
        let text = metrics.render(None);
        for line in [
            "xgate_requests_total{route=\"api\",method=\"GET\",status=\"200\",consumer=\"anonymous\"} 1",
            "xgate_request_duration_seconds_count{route=\"api\"} 1",
            "xgate_upstream_duration_seconds_count{upstream=\"users\",target=\"127.0.0.1:9000\"} 1",
            "xgate_upstream_target_healthy{upstream=\"users\",target=\"127.0.0.1:9000\"} 1",
            "xgate_active_connections{listener=\"public\"} 1",
            "xgate_reloads_total 1",
        ] {
            assert!(text.contains(line), "missing `{line}` in:\n{text}");
        }
        drop(guard);
        assert!(metrics
            .render(None)
            .contains("xgate_active_connections{listener=\"public\"} 0"));
        assert!(text.ends_with("# EOF\n"));
    }
}
