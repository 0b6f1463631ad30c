//! Picks the route for a request. Longest matching path prefix wins; among
//! equal prefixes (rejected by validation) the first in the file would.

use std::{collections::HashMap, sync::Arc};

use http::uri::PathAndQuery;

use crate::{config::Config, upstream::Upstream};

pub struct Route {
    pub name: String,
    pub path_prefix: String,
    pub strip_prefix: bool,
    pub upstream: Arc<Upstream>,
}

impl Route {
    /// The path and query to send upstream.
    pub fn upstream_path(&self, original: Option<&PathAndQuery>) -> PathAndQuery {
        let original = original.map(PathAndQuery::as_str).unwrap_or("/");
        if !self.strip_prefix {
            return original
                .parse()
                .unwrap_or_else(|_| PathAndQuery::from_static("/"));
        }
        let rest = &original[self.path_prefix.len().min(original.len())..];
        let rewritten = if rest.is_empty() || rest.starts_with('?') {
            format!("/{rest}")
        } else if rest.starts_with('/') {
            rest.to_string()
        } else {
            format!("/{rest}")
        };
        rewritten
            .parse()
            .unwrap_or_else(|_| PathAndQuery::from_static("/"))
    }
}

pub struct Router {
    /// Sorted by descending prefix length, so the first match is the longest.
    routes: Vec<Route>,
}

impl Router {
    pub fn new(config: &Config, upstreams: &HashMap<String, Arc<Upstream>>) -> Self {
        let mut routes: Vec<Route> = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| Route {
                name: r.name.clone().unwrap_or_else(|| format!("routes[{i}]")),
                path_prefix: r.matcher.path_prefix.clone(),
                strip_prefix: r.strip_prefix,
                upstream: upstreams[&r.upstream].clone(),
            })
            .collect();
        // Stable sort keeps file order among equal lengths.
        routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        Self { routes }
    }

    pub fn route(&self, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| path.starts_with(&r.path_prefix))
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn router() -> Router {
        let config = Config::from_yaml(
            "listeners: [{address: '127.0.0.1:1'}]\n\
             upstreams: {a: {targets: ['127.0.0.1:2']}, b: {targets: ['127.0.0.1:3']}}\n\
             routes:\n\
             - {name: root, match: {path_prefix: /}, upstream: a}\n\
             - {name: api, match: {path_prefix: /api}, upstream: b, strip_prefix: true}\n\
             - {name: api-v2, match: {path_prefix: /api/v2/}, upstream: a}\n",
            "t",
        )
        .unwrap();
        let upstreams = config
            .upstreams
            .iter()
            .map(|(n, u)| (n.clone(), Arc::new(Upstream::new(n, u))))
            .collect();
        Router::new(&config, &upstreams)
    }

    #[tokio::test]
    async fn longest_prefix_wins() {
        let r = router();
        assert_eq!(r.route("/api/v2/x").unwrap().name, "api-v2");
        assert_eq!(r.route("/api/v1").unwrap().name, "api");
        assert_eq!(r.route("/apis").unwrap().name, "api");
        assert_eq!(r.route("/other").unwrap().name, "root");
    }

    #[tokio::test]
    async fn strip_prefix_keeps_query_and_leading_slash() {
        let r = router();
        let api = r.route("/api").unwrap();
        let pq = |s: &str| s.parse::<PathAndQuery>().unwrap();
        assert_eq!(
            api.upstream_path(Some(&pq("/api/users?id=1"))),
            "/users?id=1"
        );
        assert_eq!(api.upstream_path(Some(&pq("/api"))), "/");
        assert_eq!(api.upstream_path(Some(&pq("/api?x=1"))), "/?x=1");
        assert_eq!(api.upstream_path(Some(&pq("/apis"))), "/s");
        let root = r.route("/").unwrap();
        assert_eq!(root.upstream_path(Some(&pq("/a/b?c"))), "/a/b?c");
    }
}
