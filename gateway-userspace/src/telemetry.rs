//! Logging set-up and the metrics exported on the admin API's /metrics
//! (Prometheus text format).

use std::{
    cell::RefCell,
    collections::HashMap,
    io::IsTerminal,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use gateway_common::Stat;
use http::Method;
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
struct DecisionLabels {
    route: String,
    policy: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpaFailureLabels {
    decision: String,
    mode: String,
    failure_mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IntrospectionLabels {
    issuer: String,
    result: String,
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    listener: String,
    status: u16,
}

/// 1 ms .. ~65 s in powers of two: covers a cache hit and a slow upstream.
#[derive(Clone)]
struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.001, 2.0, 17))
    }
}

/// Process-wide metrics. Cheap to update from any task: the request path
/// updates handles resolved when the routes and upstreams were compiled
/// ([`RouteMetrics`], [`TargetMetrics`]), never a label-set lookup.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteLabels, Histogram, LatencyBuckets>,
    upstream_duration: Family<TargetLabels, Histogram, LatencyBuckets>,
    upstream_healthy: Family<TargetLabels, Gauge>,
    active_connections: Family<ListenerLabels, Gauge>,
    refused_heads: Family<RefusedLabels, Counter>,
    policy_decisions: Family<DecisionLabels, Counter>,
    oidc_introspections: Family<IntrospectionLabels, Counter>,
    opa_failures: Family<OpaFailureLabels, Counter>,
    send_timeouts: Family<ListenerLabels, Counter>,
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
        let refused_heads = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "http1_refused_heads",
            "HTTP/1.1 request heads the server answered itself before any routing \
             (400 malformed, 431 too large, 408 too slow), by listener and status",
            refused_heads.clone(),
        );
        let policy_decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "policy_decisions",
            "What each policy of a route decided: allow, deny, or anonymous (let through as \
             the policy's anonymous consumer)",
            policy_decisions.clone(),
        );
        let oidc_introspections = Family::<IntrospectionLabels, Counter>::default();
        registry.register(
            "oidc_introspections",
            "Calls to an OpenID provider's token introspection endpoint, by issuer and \
             result: active, inactive (refused), or error (no usable answer)",
            oidc_introspections.clone(),
        );
        let opa_failures = Family::<OpaFailureLabels, Counter>::default();
        registry.register(
            "opa_failures",
            "Requests an opa policy had no decision for (server down, slow or answering \
             garbage; an evaluation error), by decision, mode (embedded, remote) and \
             failure_mode (closed: refused with 503, open: let through)",
            opa_failures.clone(),
        );
        let send_timeouts = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "client_send_timeouts",
            "Client connections closed because the client took no bytes of a response \
             for send_timeout, by listener",
            send_timeouts.clone(),
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
            refused_heads,
            policy_decisions,
            oidc_introspections,
            opa_failures,
            send_timeouts,
            l7_denied_connections,
            reloads,
            l7_denied_total: AtomicU64::new(0),
            reloads_total: AtomicU64::new(0),
        }
    }
}

/// Identifies a [`RouteMetrics`] in the per-thread counter caches (a
/// reload makes new ones; the old ids are never seen again).
static NEXT_ROUTE_ID: AtomicU64 = AtomicU64::new(0);

/// Entries a thread's counter cache holds before it is emptied (reloads
/// leave entries of routes that are gone).
const COUNTER_CACHE_MAX: usize = 4096;

/// (route id, method label, status, consumer index + 1 or 0) → that label
/// set's counter.
type CounterCache = HashMap<(u64, &'static str, u16, u32), Counter, foldhash::fast::RandomState>;

thread_local! {
    /// Request counters this thread has resolved: after the first request
    /// of a kind, counting it is a hash of three small values and an
    /// atomic increment, with no lock and no allocation.
    static COUNTERS: RefCell<CounterCache> = RefCell::new(CounterCache::default());
}

/// One route's metrics.
#[derive(Debug)]
pub struct RouteMetrics {
    id: u64,
    route: String,
    duration: Histogram,
    requests: Family<RequestLabels, Counter>,
}

impl RouteMetrics {
    /// The route's name, as in its labels.
    pub fn name(&self) -> &str {
        &self.route
    }

    /// One answered request (also rejected ones), and who made it when a
    /// policy found out.
    pub fn record(
        &self,
        method: &Method,
        status: u16,
        duration: Duration,
        consumer: Option<&crate::policy::Consumer>,
    ) {
        self.duration.observe(duration.as_secs_f64());
        let method = method_label(method);
        let key = (self.id, method, status, consumer.map_or(0, |c| c.index + 1));
        let cached = COUNTERS.with_borrow(|cache| cache.get(&key).map(|c| c.inc()));
        if cached.is_some() {
            return;
        }
        let counter = self
            .requests
            .get_or_create(&RequestLabels {
                route: self.route.clone(),
                method: method.to_string(),
                status,
                consumer: consumer.map_or(NO_CONSUMER, |c| &c.username).to_string(),
            })
            .clone();
        counter.inc();
        COUNTERS.with_borrow_mut(|cache| {
            if cache.len() >= COUNTER_CACHE_MAX {
                cache.clear();
            }
            cache.insert(key, counter);
        });
    }
}

/// The `method` label: the methods of RFC 9110 (and PATCH) by name, any
/// other as `OTHER`, so that clients inventing methods cannot grow the
/// number of series without bound.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

/// The `consumer` label of requests no authentication policy identified.
const NO_CONSUMER: &str = "-";

/// One upstream target's metrics.
#[derive(Debug, Clone)]
pub struct TargetMetrics(Histogram);

impl TargetMetrics {
    /// One attempt that produced response headers after `duration`.
    pub fn response(&self, duration: Duration) {
        self.0.observe(duration.as_secs_f64());
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
    /// The handles for the requests answered on `route` (`-`: no route).
    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            id: NEXT_ROUTE_ID.fetch_add(1, Ordering::Relaxed),
            route: route.to_string(),
            duration: self
                .request_duration
                .get_or_create(&RouteLabels {
                    route: route.to_string(),
                })
                .clone(),
            requests: self.requests.clone(),
        }
    }

    /// The counter of one route's policy's decisions with `result`.
    pub fn policy_decision(&self, route: &str, policy: &str, result: &str) -> Counter {
        self.policy_decisions
            .get_or_create(&DecisionLabels {
                route: route.to_string(),
                policy: policy.to_string(),
                result: result.to_string(),
            })
            .clone()
    }

    /// `xgate_oidc_introspections_total{issuer,result}`.
    pub fn oidc_introspection(&self, issuer: &str, result: &str) -> Counter {
        self.oidc_introspections
            .get_or_create(&IntrospectionLabels {
                issuer: issuer.to_string(),
                result: result.to_string(),
            })
            .clone()
    }

    /// `xgate_opa_failures_total{decision,mode,failure_mode}`.
    pub fn opa_failure(&self, decision: &str, mode: &str, failure_mode: &str) -> Counter {
        self.opa_failures
            .get_or_create(&OpaFailureLabels {
                decision: decision.to_string(),
                mode: mode.to_string(),
                failure_mode: failure_mode.to_string(),
            })
            .clone()
    }

    /// The handle for the response times of one upstream target.
    pub fn target(&self, upstream: &str, target: &str) -> TargetMetrics {
        TargetMetrics(
            self.upstream_duration
                .get_or_create(&TargetLabels {
                    upstream: upstream.to_string(),
                    target: target.to_string(),
                })
                .clone(),
        )
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

    /// The HTTP/1.1 server answered a request head itself with `status`.
    pub fn head_refused(&self, listener: &str, status: u16) {
        self.refused_heads
            .get_or_create(&RefusedLabels {
                listener: listener.to_string(),
                status,
            })
            .inc();
    }

    /// A connection on `listener` closed by its send timeout.
    pub fn client_send_timeout(&self, listener: &str) {
        self.send_timeouts
            .get_or_create(&ListenerLabels {
                listener: listener.to_string(),
            })
            .inc();
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
        let api = metrics.route("api");
        api.record(&Method::GET, 200, Duration::from_millis(3), None);
        metrics
            .target("users", "127.0.0.1:9000")
            .response(Duration::from_millis(2));
        metrics.set_target_health("users", "127.0.0.1:9000", true);
        let guard = metrics.connection_opened("public");
        metrics.client_send_timeout("public");
        metrics.reloaded();
        let text = metrics.render(None);
        for line in [
            "xgate_requests_total{route=\"api\",method=\"GET\",status=\"200\",consumer=\"-\"} 1",
            "xgate_request_duration_seconds_count{route=\"api\"} 1",
            "xgate_upstream_duration_seconds_count{upstream=\"users\",target=\"127.0.0.1:9000\"} 1",
            "xgate_upstream_target_healthy{upstream=\"users\",target=\"127.0.0.1:9000\"} 1",
            "xgate_active_connections{listener=\"public\"} 1",
            "xgate_client_send_timeouts_total{listener=\"public\"} 1",
            "xgate_reloads_total 1",
        ] {
            assert!(text.contains(line), "missing `{line}` in:\n{text}");
        }
        // Later requests of the same kind are counted through this thread's
        // cache, into the same series; a route compiled again (a reload)
        // counts on.
        api.record(&Method::GET, 200, Duration::from_millis(3), None);
        metrics
            .route("api")
            .record(&Method::GET, 200, Duration::from_millis(3), None);
        api.record(&Method::POST, 503, Duration::from_millis(3), None);
        for invented in ["BREW", "WHEN", "X-ANYTHING"] {
            let method = Method::from_bytes(invented.as_bytes()).unwrap();
            api.record(&method, 400, Duration::from_millis(3), None);
        }
        let text = metrics.render(None);
        assert!(!text.contains("BREW"), "{text}");
        for line in [
            "xgate_requests_total{route=\"api\",method=\"OTHER\",status=\"400\",consumer=\"-\"} 3",
            "xgate_requests_total{route=\"api\",method=\"GET\",status=\"200\",consumer=\"-\"} 3",
            "xgate_requests_total{route=\"api\",method=\"POST\",status=\"503\",consumer=\"-\"} 1",
            "xgate_request_duration_seconds_count{route=\"api\"} 7",
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
