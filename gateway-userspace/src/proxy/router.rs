//! Picks the route for a request and computes the path sent upstream.
//!
//! Every route whose conditions all hold is a candidate; the most specific
//! candidate wins, compared in this order (documented in docs/routing.md):
//! 1. host: an exact host beats a wildcard, a longer wildcard suffix beats a
//!    shorter one, and any host condition beats none;
//! 2. path: exact `path` beats `path_regex`, which beats `path_prefix`; among
//!    prefixes the longer wins;
//! 3. more method and header conditions beat fewer;
//! 4. the route earlier in the file wins.
//!
//! Candidates are found through indexes (exact paths in a hash map, prefixes
//! bucketed by length, regexes in one `RegexSet`), so the cost per request
//! does not grow with the number of routes.

use std::{collections::HashMap, sync::Arc};

use http::{request::Parts, uri::PathAndQuery, HeaderMap, Method};
use regex::{Regex, RegexSet};

use crate::{
    config::{self, anchored, Config},
    policy::{PolicySet, RoutePolicies},
    telemetry::{Metrics, RouteMetrics},
    upstream::Upstream,
};

pub struct Route {
    /// The route's name and metric handles, also kept by each request's
    /// context.
    pub metrics: Arc<RouteMetrics>,
    pub destination: Destination,
    pub max_body_bytes: Option<u64>,
    /// What the route asks of a request before it goes upstream.
    pub policies: RoutePolicies,
    index: usize,
    hosts: Vec<HostPattern>,
    path: PathMatch,
    methods: Vec<Method>,
    headers: Vec<HeaderCondition>,
    rewrite: Rewrite,
}

/// Where a route's requests go.
pub enum Destination {
    Upstream(Arc<Upstream>),
    /// `respond`: the gateway answers itself.
    Respond(super::respond::Fixed),
}

enum HostPattern {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Regex),
}

enum HeaderCondition {
    Equals(http::HeaderName, String),
    Matches(http::HeaderName, Regex),
    Present(http::HeaderName, bool),
}

enum Rewrite {
    None,
    StripPrefix(usize),
    Template(Vec<Segment>),
}

enum Segment {
    Literal(String),
    Capture(String),
}

/// A matched route.
pub struct Matched<'a> {
    pub route: &'a Route,
}

/// Path → the routes (indexes) that name it.
type PathIndex = HashMap<String, Vec<usize>, foldhash::fast::RandomState>;

pub struct Router {
    routes: Vec<Route>,
    exact: PathIndex,
    /// (prefix length, prefix → routes), longest first.
    prefixes: Vec<(usize, PathIndex)>,
    regex_set: RegexSet,
    /// `regex_set` pattern index → route index.
    regex_routes: Vec<usize>,
    allows_connect: bool,
}

impl Router {
    /// Compiles the routes. The config has been validated, so patterns
    /// compile and upstreams exist.
    pub fn new(
        config: &Config,
        upstreams: &HashMap<String, Arc<Upstream>>,
        policies: &PolicySet,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        let routes: Vec<Route> = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let destination = match (&r.upstream, &r.respond) {
                    (Some(name), _) => Destination::Upstream(upstreams[name].clone()),
                    (None, Some(respond)) => {
                        Destination::Respond(super::respond::Fixed::new(respond))
                    }
                    (None, None) => unreachable!("validated: an upstream or respond"),
                };
                compile(i, r, destination, policies, metrics)
            })
            .collect::<Result<_, String>>()?;
        let mut exact = PathIndex::default();
        let mut by_len: HashMap<usize, PathIndex> = HashMap::new();
        let mut patterns = Vec::new();
        let mut regex_routes = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            match &route.path {
                PathMatch::Exact(p) => exact.entry(p.clone()).or_default().push(i),
                PathMatch::Prefix(p) => by_len
                    .entry(p.len())
                    .or_default()
                    .entry(p.clone())
                    .or_default()
                    .push(i),
                PathMatch::Regex(re) => {
                    patterns.push(re.as_str().to_string());
                    regex_routes.push(i);
                }
            }
        }
        let mut prefixes: Vec<(usize, PathIndex)> = by_len.into_iter().collect();
        prefixes.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        let allows_connect = routes.iter().any(|r| r.methods.contains(&Method::CONNECT));
        Ok(Self {
            allows_connect,
            routes,
            exact,
            prefixes,
            regex_set: RegexSet::new(patterns).expect("validated patterns"),
            regex_routes,
        })
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether any route names CONNECT in its methods.
    pub fn allows_connect(&self) -> bool {
        self.allows_connect
    }

    /// The most specific route whose conditions all hold, if any.
    pub fn route(&self, parts: &Parts) -> Option<Matched<'_>> {
        let path = parts.uri.path();
        let mut best = Best {
            parts,
            host: None,
            found: None,
        };
        if let Some(routes) = self.exact.get(path) {
            best.consider_all(&self.routes, routes.iter().copied());
        }
        for (len, map) in &self.prefixes {
            if let Some(routes) = path.get(..*len).and_then(|head| map.get(head)) {
                best.consider_all(&self.routes, routes.iter().copied());
            }
        }
        if !self.regex_routes.is_empty() {
            let matches = self.regex_set.matches(path);
            best.consider_all(&self.routes, matches.iter().map(|i| self.regex_routes[i]));
        }
        let (_, route) = best.found?;
        Some(Matched { route })
    }
}

/// How specific a candidate's match is; the greatest wins.
type Rank = ((u8, usize), (u8, usize), usize, std::cmp::Reverse<usize>);

/// The best candidate so far while the indexes are searched.
struct Best<'r, 'p> {
    parts: &'p Parts,
    /// The request's host, read once the first route with a host condition
    /// needs it (most requests match routes without one).
    host: Option<Option<String>>,
    found: Option<(Rank, &'r Route)>,
}

impl<'r> Best<'r, '_> {
    fn consider_all(&mut self, routes: &'r [Route], candidates: impl Iterator<Item = usize>) {
        for i in candidates {
            self.consider(&routes[i]);
        }
    }

    fn consider(&mut self, route: &'r Route) {
        let host_rank = if route.hosts.is_empty() {
            (0, 0)
        } else {
            let parts = self.parts;
            let host = self.host.get_or_insert_with(|| request_host(parts));
            match route.host_rank(host.as_deref()) {
                Some(rank) => rank,
                None => return,
            }
        };
        if !(route.methods_match(&self.parts.method) && route.headers_match(&self.parts.headers)) {
            return;
        }
        let rank = (
            host_rank,
            route.path_rank(),
            route.constraints(),
            std::cmp::Reverse(route.index),
        );
        if self.found.as_ref().is_none_or(|(best, _)| rank > *best) {
            self.found = Some((rank, route));
        }
    }
}

impl Route {
    /// `None` when the host condition fails; else how specific the match
    /// is. Only for routes with a host condition.
    fn host_rank(&self, host: Option<&str>) -> Option<(u8, usize)> {
        let host = host?;
        self.hosts
            .iter()
            .filter_map(|pattern| match pattern {
                HostPattern::Exact(h) => (h == host).then_some((2, h.len())),
                HostPattern::Suffix(s) => {
                    (host.ends_with(s.as_str()) && host.len() > s.len()).then_some((1, s.len()))
                }
            })
            .max()
    }

    fn path_rank(&self) -> (u8, usize) {
        match &self.path {
            PathMatch::Exact(p) => (3, p.len()),
            PathMatch::Regex(_) => (2, 0),
            PathMatch::Prefix(p) => (1, p.len()),
        }
    }

    fn constraints(&self) -> usize {
        usize::from(!self.methods.is_empty()) + self.headers.len()
    }

    /// CONNECT matches only a route that names it: a route for any
    /// method is not a tunnel.
    fn methods_match(&self, method: &Method) -> bool {
        (self.methods.is_empty() && *method != Method::CONNECT) || self.methods.contains(method)
    }

    fn headers_match(&self, headers: &HeaderMap) -> bool {
        self.headers.iter().all(|condition| match condition {
            HeaderCondition::Equals(name, value) => headers
                .get_all(name)
                .iter()
                .any(|v| v.as_bytes() == value.as_bytes()),
            HeaderCondition::Matches(name, re) => headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| re.is_match(v))),
            HeaderCondition::Present(name, wanted) => headers.contains_key(name) == *wanted,
        })
    }

    /// The path and query to send upstream (after the route's policies,
    /// which may take a credential out of the query).
    pub fn upstream_path(&self, original: Option<&PathAndQuery>) -> PathAndQuery {
        let (path, query) = original.map_or(("/", None), |pq| (pq.path(), pq.query()));
        let new_path = match &self.rewrite {
            // The request's own bytes, shared rather than copied.
            Rewrite::None => {
                return original
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/"))
            }
            Rewrite::StripPrefix(len) => {
                let rest = path.get(*len..).unwrap_or("");
                if rest.starts_with('/') {
                    rest.to_string()
                } else {
                    format!("/{rest}")
                }
            }
            Rewrite::Template(segments) => {
                let captures = match &self.path {
                    PathMatch::Regex(re) => re.captures(path),
                    _ => None,
                };
                let mut out = String::new();
                for segment in segments {
                    match segment {
                        Segment::Literal(text) => out.push_str(text),
                        Segment::Capture(name) => {
                            let value =
                                captures.as_ref().and_then(|c| match name.parse::<usize>() {
                                    Ok(n) => c.get(n),
                                    Err(_) => c.name(name),
                                });
                            out.push_str(value.map_or("", |m| m.as_str()));
                        }
                    }
                }
                out
            }
        };
        let full = match query {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        };
        full.parse()
            .unwrap_or_else(|_| PathAndQuery::from_static("/"))
    }
}

fn compile(
    index: usize,
    route: &config::Route,
    destination: Destination,
    policies: &PolicySet,
    metrics: &Metrics,
) -> Result<Route, String> {
    let m = &route.matcher;
    let path = if let Some(p) = &m.path {
        PathMatch::Exact(p.clone())
    } else if let Some(re) = &m.path_regex {
        PathMatch::Regex(Regex::new(&anchored(re)).expect("validated regex"))
    } else {
        PathMatch::Prefix(m.path_prefix.clone().unwrap_or_else(|| "/".into()))
    };
    let rewrite = if route.strip_prefix {
        Rewrite::StripPrefix(m.path_prefix.as_deref().map_or(0, str::len))
    } else if let Some(template) = &route.rewrite {
        Rewrite::Template(parse_template(template))
    } else {
        Rewrite::None
    };
    let name = route
        .name
        .clone()
        .unwrap_or_else(|| format!("routes[{index}]"));
    Ok(Route {
        policies: policies.for_route(index, route, &name, metrics)?,
        metrics: Arc::new(metrics.route(&name)),
        destination,
        max_body_bytes: route.max_body_bytes,
        index,
        hosts: m
            .hosts
            .iter()
            .map(|h| {
                let h = h.to_ascii_lowercase();
                match h.strip_prefix('*') {
                    Some(suffix) => HostPattern::Suffix(suffix.to_string()),
                    None => HostPattern::Exact(h),
                }
            })
            .collect(),
        path,
        methods: m
            .methods
            .iter()
            .filter_map(|name| Method::from_bytes(name.as_bytes()).ok())
            .collect(),
        headers: m
            .headers
            .iter()
            .map(|h| {
                let name =
                    http::HeaderName::from_bytes(h.name.as_bytes()).expect("validated header name");
                if let Some(value) = &h.value {
                    HeaderCondition::Equals(name, value.clone())
                } else if let Some(re) = &h.regex {
                    HeaderCondition::Matches(
                        name,
                        Regex::new(&anchored(re)).expect("validated regex"),
                    )
                } else {
                    HeaderCondition::Present(name, h.present.unwrap_or(true))
                }
            })
            .collect(),
        rewrite,
    })
}

fn parse_template(template: &str) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
        if open > 0 {
            segments.push(Segment::Literal(rest[..open].to_string()));
        }
        segments.push(Segment::Capture(rest[open + 1..close].to_string()));
        rest = rest.get(close + 1..).unwrap_or("");
    }
    if !rest.is_empty() {
        segments.push(Segment::Literal(rest.to_string()));
    }
    segments
}

/// The request's host without port, lower-cased, from Host: normalizing
/// made it the request's one authority (an absolute-form target's, HTTP/2's
/// `:authority`).
fn request_host(parts: &Parts) -> Option<String> {
    let value = parts.headers.get(http::header::HOST)?.to_str().ok()?;
    let authority = value.parse::<http::uri::Authority>().ok()?;
    Some(authority.host().trim_end_matches('.').to_ascii_lowercase())
}

#[cfg(test)]
mod tests;
