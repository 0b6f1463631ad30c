//! `routes[]`: which requests go to which upstream.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::{Errors, Upstream};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Optional label used in logs; defaults to `routes[N]`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// Name of an entry in `upstreams`.
    pub upstream: String,
    /// Remove the matched prefix before forwarding (`/api/users` with prefix
    /// `/api` goes upstream as `/users`).
    #[serde(default)]
    pub strip_prefix: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// The request path starts with this string. The longest matching prefix
    /// wins.
    pub path_prefix: String,
}

pub(super) fn validate(
    routes: &[Route],
    upstreams: &BTreeMap<String, Upstream>,
    errors: &mut Errors,
) {
    let mut names = HashMap::new();
    let mut prefixes = HashMap::new();
    for (i, route) in routes.iter().enumerate() {
        let base = format!("routes[{i}]");
        if let Some(name) = &route.name {
            if let Some(first) = names.insert(name.as_str(), i) {
                errors.push(
                    format!("{base}.name"),
                    format!("'{name}' is already used by routes[{first}]"),
                );
            }
        }
        let prefix = &route.matcher.path_prefix;
        if !prefix.starts_with('/') {
            errors.push(
                format!("{base}.match.path_prefix"),
                format!("'{prefix}' must start with '/'"),
            );
        } else if let Some(first) = prefixes.insert(prefix.as_str(), i) {
            errors.push(
                format!("{base}.match.path_prefix"),
                format!("'{prefix}' is already matched by routes[{first}]"),
            );
        }
        if !upstreams.contains_key(&route.upstream) {
            let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
            let known = if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            };
            errors.push(
                format!("{base}.upstream"),
                format!("unknown upstream '{}' (defined: {known})", route.upstream),
            );
        }
    }
}
