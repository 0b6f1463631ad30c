//! The live status page on the metrics listener: `GET /status` (one
//! self-contained HTML file, embedded) and `GET /status.json` (what it
//! polls every 2 s). Read-only. A loopback client needs nothing; any other
//! needs `admin.status_token`, as `Authorization: Bearer TOKEN`, or once as
//! `/status?token=TOKEN`, which a browser trades for a cookie at once so
//! the token leaves its address bar and history. Without a token set, such
//! clients get 403.

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::Serialize;

use crate::{
    config::{Config, MetricsListen},
    daemon::Reloader,
    lists::{Listed, XdpStatus},
    telemetry::{
        dropped_sources::{self, DroppedSourceRow},
        live::LiveReading,
    },
    upstream::health::UpstreamStatus,
    xdp::ListKind,
};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

const PAGE: &str = include_str!("status_page.html");
/// The cookie a browser gets for a correct `?token=`.
const COOKIE: &str = "xgate_status";
/// Rows of the top dropped sources shown.
const TOP_SOURCES: usize = 10;
/// How often the charts' history is sampled (the page polls as often), and
/// how many samples are kept: two minutes, so a page just opened has its
/// charts already drawn.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
const SAMPLES: usize = 60;

pub struct StatusPage {
    pub observed: Arc<super::health::Observed>,
    pub reloader: Arc<Reloader>,
    pub started: Instant,
    pub xdp_off_reason: Option<String>,
    pub token: Option<String>,
    /// The listeners and routes as last read (kept while a reload holds
    /// the config).
    shape: Mutex<Shape>,
    history: Mutex<VecDeque<Sample>>,
}

/// The totals the charts are drawn from, at one moment.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    unix_ms: u64,
    live: LiveReading,
    /// XDP packets passed and dropped, summed over every reason and
    /// interface (absent without XDP).
    xdp_passed: Option<u64>,
    xdp_dropped: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct Shape {
    listeners: Vec<ListenerRow>,
    routes: Vec<RouteRow>,
}

#[derive(Debug, Clone, Serialize)]
struct ListenerRow {
    name: String,
    address: SocketAddr,
    tls: bool,
    http2: bool,
}

#[derive(Debug, Clone, Serialize)]
struct RouteRow {
    name: String,
    /// The match, as text (`hosts`, `path_prefix`, `methods`, ...).
    matches: String,
    /// Upstream name, or `respond`.
    to: String,
}

/// `/status.json`.
#[derive(Debug, Serialize)]
struct Snapshot<'a> {
    version: &'static str,
    uptime_secs: u64,
    now_unix: i64,
    #[serde(flatten)]
    shape: Shape,
    upstreams: Vec<UpstreamStatus>,
    live: LiveReading,
    l7_denied_connections: u64,
    /// Both layers merged (`telemetry::dropped_sources`).
    top_dropped_sources: Vec<DroppedSourceRow>,
    /// The XDP half is sampled: one drop in this many, on average, is
    /// recorded and weighted (1: every drop; absent without XDP).
    xdp_drop_sample: Option<u32>,
    /// Auto-ban entries.
    bans: Vec<Listed>,
    /// Deny-list entries added at run time (CLI, admin API, other nodes).
    runtime_denies: Vec<Listed>,
    config_denies: usize,
    xdp: Option<XdpStatus>,
    xdp_off_reason: Option<&'a str>,
    /// The XDP counters whose packets were dropped (the others passed).
    xdp_dropped_reasons: Vec<&'static str>,
    /// The last two minutes, oldest first; the page diffs neighbours.
    history: Vec<Sample>,
}

impl StatusPage {
    pub fn new(
        observed: Arc<super::health::Observed>,
        reloader: Arc<Reloader>,
        xdp_off_reason: Option<String>,
        token: Option<String>,
    ) -> Self {
        Self {
            observed,
            reloader,
            started: Instant::now(),
            xdp_off_reason,
            token,
            shape: Mutex::default(),
            history: Mutex::default(),
        }
    }

    /// Samples the charts' totals until `stop` flips.
    pub async fn sample(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            let sample = self.sample_now(self.observed.lists.xdp_status().and_then(Result::ok));
            let mut history = self.history.lock().unwrap();
            if history.len() == SAMPLES {
                history.pop_front();
            }
            history.push_back(sample);
        }
    }

    fn sample_now(&self, xdp: Option<XdpStatus>) -> Sample {
        let (passed, dropped) = xdp.map_or((None, None), |x| {
            let (mut passed, mut dropped) = (0, 0);
            for stat in gateway_common::Stat::ALL {
                let count = x.counters.get(stat);
                if stat.dropped() {
                    dropped += count;
                } else {
                    passed += count;
                }
            }
            (Some(passed), Some(dropped))
        });
        Sample {
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            live: self.observed.metrics.live.read(),
            xdp_passed: passed,
            xdp_dropped: dropped,
        }
    }

    /// `/status` and `/status.json`; None for any other path.
    pub fn answer(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Option<Response<Body>> {
        if !matches!(path, "/status" | "/status.json") {
            return None;
        }
        if method != Method::GET && method != Method::HEAD {
            return Some(plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n",
            ));
        }
        let query_token = query.and_then(|q| {
            q.split('&')
                .find_map(|pair| pair.strip_prefix("token="))
                .map(str::to_string)
        });
        match self.access(peer.ip(), headers, query_token.as_deref()) {
            Access::Granted => {}
            Access::TradeForCookie(token) => return Some(set_cookie(token)),
            Access::Refused(response) => return Some(response),
        }
        Some(if path == "/status" {
            respond(StatusCode::OK, "text/html; charset=utf-8", PAGE.to_string())
        } else {
            let body = serde_json::to_string(&self.snapshot()).expect("serializable snapshot");
            respond(StatusCode::OK, "application/json", body)
        })
    }

    fn access<'a>(&'a self, peer: IpAddr, headers: &HeaderMap, query: Option<&str>) -> Access<'a> {
        if is_loopback(peer) {
            return Access::Granted;
        }
        let Some(token) = self.token.as_deref() else {
            return Access::Refused(plain(
                StatusCode::FORBIDDEN,
                "the status page answers only loopback clients: set admin.status_token to \
                 let others in with that token\n",
            ));
        };
        let matches = |offered: &str| {
            crate::policy::consumers::constant_time_eq(offered.as_bytes(), token.as_bytes())
        };
        if let Some(offered) = query {
            return if matches(offered) {
                Access::TradeForCookie(token)
            } else {
                Access::Refused(unauthorized())
            };
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='));
        if bearer.or(cookie).is_some_and(matches) {
            Access::Granted
        } else {
            Access::Refused(unauthorized())
        }
    }

    fn snapshot(&self) -> Snapshot<'_> {
        let lists = &self.observed.lists;
        let (xdp, xdp_error) = match lists.xdp_status() {
            Some(Ok(status)) => (Some(status), None),
            Some(Err(error)) => (None, Some(error)),
            None => (None, None),
        };
        let deny = lists.list(ListKind::Deny);
        let config_denies = deny.iter().filter(|l| l.source == "config").count();
        let (bans, runtime_denies) = deny
            .into_iter()
            .filter(|l| l.source != "config")
            .partition(|l| l.source == "ban");
        let metrics = &self.observed.metrics;
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: self.started.elapsed().as_secs(),
            now_unix: crate::policy::unix_now(),
            shape: self.shape(),
            upstreams: super::upstreams::list(&self.reloader.upstreams()),
            live: metrics.live.read(),
            l7_denied_connections: metrics.l7_denied_connections(),
            top_dropped_sources: dropped_sources::top(lists, &metrics.refused_sources, TOP_SOURCES),
            xdp_drop_sample: xdp.as_ref().map(|x| x.drop_sample),
            bans,
            runtime_denies,
            config_denies,
            xdp_dropped_reasons: gateway_common::Stat::ALL
                .into_iter()
                .filter(|s| s.dropped())
                .map(|s| s.name())
                .collect(),
            history: self.history.lock().unwrap().iter().cloned().collect(),
            xdp,
            xdp_off_reason: xdp_error
                .as_deref()
                .map_or(self.xdp_off_reason.as_deref(), |_| {
                    Some("the XDP counters could not be read (see the daemon's log)")
                }),
        }
    }

    fn shape(&self) -> Shape {
        let mut shape = self.shape.lock().unwrap();
        if let Some(config) = self.reloader.config_now() {
            *shape = Shape::of(&config);
        }
        shape.clone()
    }
}

impl Shape {
    fn of(config: &Config) -> Self {
        let listeners = config
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| ListenerRow {
                name: l.name.clone().unwrap_or_else(|| format!("listeners[{i}]")),
                address: l.address,
                tls: l.tls.is_some(),
                http2: l.http2,
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let m = &r.matcher;
                let mut parts = Vec::new();
                if !m.hosts.is_empty() {
                    parts.push(format!("hosts {}", m.hosts.join(" ")));
                }
                for (key, value) in [
                    ("path", &m.path),
                    ("path_prefix", &m.path_prefix),
                    ("path_regex", &m.path_regex),
                ] {
                    if let Some(value) = value {
                        parts.push(format!("{key} {value}"));
                    }
                }
                if !m.methods.is_empty() {
                    parts.push(format!("methods {}", m.methods.join(" ")));
                }
                if !m.headers.is_empty() {
                    parts.push(format!("{} header match(es)", m.headers.len()));
                }
                RouteRow {
                    name: r.name.clone().unwrap_or_else(|| format!("routes[{i}]")),
                    matches: if parts.is_empty() {
                        "everything".to_string()
                    } else {
                        parts.join(", ")
                    },
                    to: r.upstream.clone().unwrap_or_else(|| "respond".to_string()),
                }
            })
            .collect();
        Self { listeners, routes }
    }
}

enum Access<'a> {
    Granted,
    TradeForCookie(&'a str),
    Refused(Response<Body>),
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// A correct `?token=`: the cookie, and the page again without the token
/// in its address.
fn set_cookie(token: &str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, "/status")
        .header(
            header::SET_COOKIE,
            format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"),
        )
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::new()).boxed())
        .expect("valid response parts")
}

fn unauthorized() -> Response<Body> {
    let mut response = plain(
        StatusCode::UNAUTHORIZED,
        "this client is not on loopback: send admin.status_token as \
         `Authorization: Bearer TOKEN` (or open /status?token=TOKEN once in a browser)\n",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"xgate status\""),
    );
    response
}

fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", body.to_string())
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("valid response parts")
}

/// What `xgate status` says about the TCP listener.
pub fn listener_note(listen: MetricsListen, bound: Option<&std::io::Error>) -> String {
    match (listen, bound) {
        (MetricsListen::Off, _) => "off (admin.metrics_address: off)".to_string(),
        (MetricsListen::Required(a) | MetricsListen::Default(a), None) => a.to_string(),
        (MetricsListen::Default(a), Some(error)) | (MetricsListen::Required(a), Some(error)) => {
            format!(
                "NOT listening: the default {a} cannot be bound ({error}); set \
                 admin.metrics_address to a free address, or to off"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_in_every_spelling() {
        for ip in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.0.1", "::ffff:10.0.0.1", "fe80::1"] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn the_page_is_self_contained() {
        assert!(PAGE.contains("/status.json"));
        for external in ["http://", "https://", "//fonts", "@import"] {
            assert!(!PAGE.contains(external), "the page loads {external}");
        }
    }
}
