//! Logging set-up and the metrics exported on the admin API's /metrics
//! (Prometheus text format).
//!
//! - `series`: series of routes and targets removed with them
//! - `process`: `process_*` and `xgate_build_info`
//! - `xdp`: the XDP program's packet counters, per interface

pub mod dropped_sources;
pub mod exposition;
pub mod live;
mod process;
mod series;
pub mod top_sources;
mod xdp;

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use http::Method;
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::{Registry, Unit},
};

use self::series::{Lease, Owner, Owners};
use crate::xdp::Counters;

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
struct AutoBanLabels {
    rule: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    event: String,
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
struct TargetErrorLabels {
    upstream: String,
    target: String,
    kind: String,
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
    request_bytes: Family<RouteLabels, Counter>,
    response_bytes: Family<RouteLabels, Counter>,
    upstream_duration: Family<TargetLabels, Histogram, LatencyBuckets>,
    upstream_retries: Family<TargetLabels, Counter>,
    upstream_errors: Family<TargetErrorLabels, Counter>,
    active_connections: Family<ListenerLabels, Gauge>,
    refused_heads: Family<RefusedLabels, Counter>,
    policy_decisions: Family<DecisionLabels, Counter>,
    oidc_introspections: Family<IntrospectionLabels, Counter>,
    opa_failures: Family<OpaFailureLabels, Counter>,
    send_timeouts: Family<ListenerLabels, Counter>,
    l7_denied_connections: Counter,
    reloads: Counter,
    auto_bans: Family<AutoBanLabels, Counter>,
    cluster_lists: Family<ClusterLabels, Counter>,
    reload_failures: Counter,
    /// The series of each route and target, removed with it.
    owners: Arc<Owners>,
    started: SystemTime,
    // Plain copies for `status` (prometheus-client counters are not readable
    // without encoding).
    l7_denied_total: AtomicU64,
    reloads_total: AtomicU64,
    /// Redis calls, errors and the rate limits' fallbacks.
    pub redis: crate::redis::RedisMetrics,
    /// For the status page: request totals and the most refused clients.
    pub live: Arc<live::LiveTotals>,
    pub refused_sources: top_sources::TopSources,
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
        let request_bytes = Family::<RouteLabels, Counter>::default();
        registry.register_with_unit(
            "request_body",
            "Request body bytes read from clients, by route",
            Unit::Bytes,
            request_bytes.clone(),
        );
        let response_bytes = Family::<RouteLabels, Counter>::default();
        registry.register_with_unit(
            "response_body",
            "Response body bytes sent to clients, by route",
            Unit::Bytes,
            response_bytes.clone(),
        );
        let upstream_duration = Family::new_with_constructor(LatencyBuckets);
        registry.register(
            "upstream_duration_seconds",
            "Time for an upstream target to send response headers",
            upstream_duration.clone(),
        );
        let upstream_retries = Family::<TargetLabels, Counter>::default();
        registry.register(
            "upstream_retries",
            "Attempts retried on another target after this target failed or answered \
             with a retried status",
            upstream_retries.clone(),
        );
        let upstream_errors = Family::<TargetErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Attempts at a target that got no usable response, by kind: \
             upstream_unavailable (connect failed), upstream_timeout, upstream_error \
             (the exchange failed)",
            upstream_errors.clone(),
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
        let redis = crate::redis::RedisMetrics::register(&mut registry);
        let auto_bans = Family::<AutoBanLabels, Counter>::default();
        registry.register(
            "auto_bans",
            "What auto-ban rules did when their count was reached, by rule and outcome: \
             banned, capped (max_bans_per_minute reached), exempt (allow-listed or trusted \
             proxy), failed (the list change failed)",
            auto_bans.clone(),
        );
        let cluster_lists = Family::<ClusterLabels, Counter>::default();
        registry.register(
            "cluster_list_events",
            "Cluster list sync through Redis, by event: published, received, resynced, \
             disconnected, failed",
            cluster_lists.clone(),
        );
        let reload_failures = Counter::default();
        registry.register(
            "reload_failures",
            "Configuration reloads refused (the running configuration stayed)",
            reload_failures.clone(),
        );
        Self {
            redis,
            registry,
            requests,
            request_duration,
            request_bytes,
            response_bytes,
            upstream_duration,
            upstream_retries,
            upstream_errors,
            active_connections,
            refused_heads,
            policy_decisions,
            oidc_introspections,
            opa_failures,
            send_timeouts,
            l7_denied_connections,
            reloads,
            auto_bans,
            cluster_lists,
            reload_failures,
            owners: Arc::default(),
            started: SystemTime::now(),
            l7_denied_total: AtomicU64::new(0),
            reloads_total: AtomicU64::new(0),
            live: Arc::default(),
            refused_sources: top_sources::TopSources::default(),
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
    bytes_in: Counter,
    bytes_out: Counter,
    requests: Family<RequestLabels, Counter>,
    owners: Arc<Owners>,
    live: Arc<live::LiveTotals>,
    _lease: Lease,
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
        self.live.record(status, duration);
        let method = method_label(method);
        let key = (self.id, method, status, consumer.map_or(0, |c| c.index + 1));
        let cached = COUNTERS.with_borrow(|cache| cache.get(&key).map(|c| c.inc()));
        if cached.is_some() {
            return;
        }
        let labels = RequestLabels {
            route: self.route.clone(),
            method: method.to_string(),
            status,
            consumer: consumer.map_or(NO_CONSUMER, |c| &c.username).to_string(),
        };
        let created = self.requests.get(&labels).is_none();
        let counter = self.requests.get_or_create(&labels).clone();
        counter.inc();
        if created {
            let requests = self.requests.clone();
            self.owners.add(&Owner::Route(self.route.clone()), move || {
                requests.remove(&labels);
            });
        }
        COUNTERS.with_borrow_mut(|cache| {
            if cache.len() >= COUNTER_CACHE_MAX {
                cache.clear();
            }
            cache.insert(key, counter);
        });
    }
}

impl RouteMetrics {
    /// The body bytes of one exchange on this route, once it is done.
    pub fn bytes(&self, bytes_in: u64, bytes_out: u64) {
        self.bytes_in.inc_by(bytes_in);
        self.bytes_out.inc_by(bytes_out);
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
pub struct TargetMetrics {
    duration: Histogram,
    retries: Counter,
    errors: Family<TargetErrorLabels, Counter>,
    owner: Owner,
    owners: Arc<Owners>,
    _lease: Arc<Lease>,
}

impl TargetMetrics {
    /// One attempt that produced response headers after `duration`.
    pub fn response(&self, duration: Duration) {
        self.duration.observe(duration.as_secs_f64());
    }

    /// An attempt here failed (or answered with a retried status) and the
    /// request was tried again.
    pub fn retried(&self) {
        self.retries.inc();
    }

    /// An attempt here got no usable response; `kind` as the rejection
    /// says (`upstream_unavailable`, `upstream_timeout`, `upstream_error`).
    pub fn failed(&self, kind: &str) {
        let Owner::Target { upstream, target } = &self.owner else {
            return;
        };
        let labels = TargetErrorLabels {
            upstream: upstream.clone(),
            target: target.clone(),
            kind: kind.to_string(),
        };
        let created = self.errors.get(&labels).is_none();
        self.errors.get_or_create(&labels).inc();
        if created {
            let errors = self.errors.clone();
            self.owners.add(&self.owner, move || {
                errors.remove(&labels);
            });
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
    /// The handles for the requests answered on `route` (`-`: no route).
    pub fn route(&self, route: &str) -> RouteMetrics {
        let owner = Owner::Route(route.to_string());
        let lease = self.owners.lease(owner.clone());
        let labels = RouteLabels {
            route: route.to_string(),
        };
        let created = self.request_duration.get(&labels).is_none();
        let duration = self.request_duration.get_or_create(&labels).clone();
        let bytes_in = self.request_bytes.get_or_create(&labels).clone();
        let bytes_out = self.response_bytes.get_or_create(&labels).clone();
        if created {
            let (a, b, c) = (
                self.request_duration.clone(),
                self.request_bytes.clone(),
                self.response_bytes.clone(),
            );
            self.owners.add(&owner, move || {
                a.remove(&labels);
                b.remove(&labels);
                c.remove(&labels);
            });
        }
        RouteMetrics {
            id: NEXT_ROUTE_ID.fetch_add(1, Ordering::Relaxed),
            route: route.to_string(),
            duration,
            bytes_in,
            bytes_out,
            requests: self.requests.clone(),
            owners: self.owners.clone(),
            live: self.live.clone(),
            _lease: lease,
        }
    }

    /// The counter of one route's policy's decisions with `result`.
    pub fn policy_decision(&self, route: &str, policy: &str, result: &str) -> Counter {
        let labels = DecisionLabels {
            route: route.to_string(),
            policy: policy.to_string(),
            result: result.to_string(),
        };
        let created = self.policy_decisions.get(&labels).is_none();
        let counter = self.policy_decisions.get_or_create(&labels).clone();
        if created {
            let decisions = self.policy_decisions.clone();
            self.owners.add(&Owner::Route(route.to_string()), move || {
                decisions.remove(&labels);
            });
        }
        counter
    }

    /// `xgate_auto_bans_total{rule,outcome}`.
    pub fn auto_ban(&self, rule: &str, outcome: &str) {
        self.auto_bans
            .get_or_create(&AutoBanLabels {
                rule: rule.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// `xgate_cluster_list_events_total{event}`.
    pub fn cluster_list_event(&self, event: &str) {
        self.cluster_lists
            .get_or_create(&ClusterLabels {
                event: event.to_string(),
            })
            .inc();
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
        let owner = Owner::Target {
            upstream: upstream.to_string(),
            target: target.to_string(),
        };
        let lease = self.owners.lease(owner.clone());
        let labels = TargetLabels {
            upstream: upstream.to_string(),
            target: target.to_string(),
        };
        let created = self.upstream_duration.get(&labels).is_none();
        let duration = self.upstream_duration.get_or_create(&labels).clone();
        let retries = self.upstream_retries.get_or_create(&labels).clone();
        if created {
            let (a, b) = (
                self.upstream_duration.clone(),
                self.upstream_retries.clone(),
            );
            self.owners.add(&owner, move || {
                a.remove(&labels);
                b.remove(&labels);
            });
        }
        TargetMetrics {
            duration,
            retries,
            errors: self.upstream_errors.clone(),
            owner,
            owners: self.owners.clone(),
            _lease: Arc::new(lease),
        }
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

    /// A reload was refused; the running configuration stays.
    pub fn reload_failed(&self) {
        self.reload_failures.inc();
    }

    /// Prometheus text exposition format, with the kernel counters of each
    /// interface if XDP is attached.
    pub fn render(&self, xdp: Option<&BTreeMap<String, Counters>>) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        // The registry ends with "# EOF"; the XDP family goes before it.
        if let Some(stripped) = out.strip_suffix("# EOF\n") {
            out.truncate(stripped.len());
        }
        process::render_build_info(&mut out);
        process::render(&mut out, self.started);
        if let Some(interfaces) = xdp {
            xdp::render(&mut out, interfaces);
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
        api.bytes(10, 20);
        let target = metrics.target("users", "127.0.0.1:9000");
        target.response(Duration::from_millis(2));
        target.retried();
        target.failed("upstream_unavailable");
        let guard = metrics.connection_opened("public");
        metrics.client_send_timeout("public");
        metrics.reloaded();
        metrics.reload_failed();
        let text = metrics.render(None);
        for line in [
            "xgate_requests_total{route=\"api\",method=\"GET\",status=\"200\",consumer=\"-\"} 1",
            "xgate_request_duration_seconds_count{route=\"api\"} 1",
            "xgate_upstream_duration_seconds_count{upstream=\"users\",target=\"127.0.0.1:9000\"} 1",
            "xgate_active_connections{listener=\"public\"} 1",
            "xgate_client_send_timeouts_total{listener=\"public\"} 1",
            "xgate_reloads_total 1",
            "xgate_reload_failures_total 1",
            "xgate_request_body_bytes_total{route=\"api\"} 10",
            "xgate_response_body_bytes_total{route=\"api\"} 20",
            "xgate_upstream_retries_total{upstream=\"users\",target=\"127.0.0.1:9000\"} 1",
            "xgate_upstream_errors_total{upstream=\"users\",target=\"127.0.0.1:9000\",kind=\"upstream_unavailable\"} 1",
            "# TYPE xgate_build_info gauge",
            "# TYPE process_cpu_seconds counter",
            "process_cpu_seconds_total ",
            "# TYPE process_resident_memory_bytes gauge",
            "# TYPE process_open_fds gauge",
            "# TYPE process_start_time_seconds gauge",
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
        drop(target);
    }

    /// A route or target a reload removed takes its series with it once
    /// its last handle is gone; one compiled again keeps counting on.
    #[test]
    fn series_of_removed_routes_and_targets_go_with_them() {
        let metrics = Metrics::default();
        let kept = metrics.route("kept");
        let removed = metrics.route("removed");
        let decision = metrics.policy_decision("removed", "key-auth", "allow");
        decision.inc();
        for route in [&kept, &removed] {
            route.record(&Method::GET, 200, Duration::from_millis(1), None);
        }
        let users = metrics.target("users", "127.0.0.1:9000");
        users.failed("upstream_timeout");
        let text = metrics.render(None);
        assert!(text.contains("route=\"removed\""), "{text}");
        assert!(text.contains("target=\"127.0.0.1:9000\""), "{text}");

        // The reload: "kept" compiled again, "removed" and the target gone.
        let kept_again = metrics.route("kept");
        drop(kept);
        drop(removed);
        drop(users);
        let text = metrics.render(None);
        assert!(!text.contains("removed"), "{text}");
        assert!(!text.contains("127.0.0.1:9000"), "{text}");
        assert!(
            text.contains("xgate_requests_total{route=\"kept\",method=\"GET\",status=\"200\",consumer=\"-\"} 1"),
            "{text}"
        );
        kept_again.record(&Method::GET, 200, Duration::from_millis(1), None);
        assert!(metrics
            .render(None)
            .contains("xgate_request_duration_seconds_count{route=\"kept\"} 2"));
    }
}
