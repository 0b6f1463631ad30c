//! `routes[]`: which requests go to which upstream, and how their path is
//! rewritten on the way.

use std::collections::{BTreeMap, HashMap};

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::{AuthMode, Errors, Policy, Upstream};

#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Optional label used in logs and metrics; defaults to `routes[N]`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// Name of an entry in `upstreams` (or `respond`).
    #[serde(default)]
    pub upstream: Option<String>,
    /// Answer with a fixed status and body instead of going upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respond: Option<super::Respond>,
    /// Remove the matched prefix before forwarding (`/api/users` with prefix
    /// `/api` goes upstream as `/users`). Only with `path_prefix`.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace the path sent upstream (the query is kept). `{name}` and
    /// `{1}` insert captures of `path_regex`.
    #[serde(default)]
    pub rewrite: Option<String>,
    /// Largest request body accepted (413 beyond); overrides
    /// `limits.max_body_bytes`.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// This route's policies, in order; present (even empty) replaces the
    /// listener's and the global `policy_defaults`.
    #[serde(default)]
    pub policies: Option<Vec<Policy>>,
    /// How the route's authentication policies combine (with `policies`).
    #[serde(default)]
    pub authentication: Option<AuthMode>,
}

/// Every present condition must hold. Exactly one of `path_prefix`, `path`
/// and `path_regex` is required.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// `api.example.com` (exact) or `*.example.com` (any subdomain); the
    /// request's Host (or :authority) without port, case-insensitive.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The path starts with this string.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// The path is exactly this string.
    #[serde(default)]
    pub path: Option<String>,
    /// The whole path matches this regular expression (anchored).
    #[serde(default)]
    pub path_regex: Option<String>,
    /// Allowed methods (`GET`, `POST`, ...); empty means any.
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

/// One header condition: `value` (exact), `regex` (whole value), or
/// `present` (true: must be there, false: must be absent).
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub present: Option<bool>,
}

/// `^(?:...)$`: route regexes match the whole path or value.
pub fn anchored(pattern: &str) -> String {
    format!("^(?:{pattern})$")
}

pub(super) fn validate(
    routes: &[Route],
    upstreams: &BTreeMap<String, Upstream>,
    errors: &mut Errors,
) {
    let mut names = HashMap::new();
    let mut matchers = HashMap::new();
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
        let m = &route.matcher;
        let mpath = format!("{base}.match");
        let paths = [
            ("path_prefix", &m.path_prefix),
            ("path", &m.path),
            ("path_regex", &m.path_regex),
        ];
        let given: Vec<&str> = paths
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| *k)
            .collect();
        if given.len() != 1 {
            errors.push(
                mpath.clone(),
                format!(
                    "exactly one of path_prefix, path, path_regex is required (found: {})",
                    if given.is_empty() {
                        "none".into()
                    } else {
                        given.join(", ")
                    }
                ),
            );
        }
        for (key, value) in [("path_prefix", &m.path_prefix), ("path", &m.path)] {
            if let Some(p) = value {
                if !p.starts_with('/') {
                    errors.push(
                        format!("{mpath}.{key}"),
                        format!("'{p}' must start with '/'"),
                    );
                }
            }
        }
        let mut captures: Option<Vec<String>> = None;
        let mut regex_broken = false;
        if let Some(pattern) = &m.path_regex {
            match compile_anchored(pattern) {
                Ok(re) => {
                    captures = Some(
                        re.capture_names()
                            .enumerate()
                            .skip(1)
                            .flat_map(|(n, name)| [Some(n.to_string()), name.map(str::to_string)])
                            .flatten()
                            .collect(),
                    )
                }
                Err(message) => {
                    regex_broken = true;
                    errors.push(format!("{mpath}.path_regex"), message)
                }
            }
        }
        for (h, host) in m.hosts.iter().enumerate() {
            if let Some(problem) = host_problem(host) {
                errors.push(format!("{mpath}.hosts[{h}]"), format!("'{host}' {problem}"));
            }
        }
        for (j, method) in m.methods.iter().enumerate() {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                errors.push(
                    format!("{mpath}.methods[{j}]"),
                    format!("'{method}' is not a method name (upper case, e.g. GET)"),
                );
            }
        }
        for (j, header) in m.headers.iter().enumerate() {
            let hpath = format!("{mpath}.headers[{j}]");
            if http::HeaderName::from_bytes(header.name.as_bytes()).is_err() {
                errors.push(
                    format!("{hpath}.name"),
                    format!("'{}' is not a valid header name", header.name),
                );
            }
            let conditions = [
                header.value.is_some(),
                header.regex.is_some(),
                header.present.is_some(),
            ];
            if conditions.iter().filter(|c| **c).count() != 1 {
                errors.push(
                    hpath.clone(),
                    "exactly one of value, regex, present is required",
                );
            }
            if let Some(pattern) = &header.regex {
                if let Err(message) = compile_anchored(pattern) {
                    errors.push(format!("{hpath}.regex"), message);
                }
            }
        }
        if route.strip_prefix && m.path_prefix.is_none() {
            errors.push(
                format!("{base}.strip_prefix"),
                "only applies to a path_prefix match",
            );
        }
        if route.strip_prefix && route.rewrite.is_some() {
            errors.push(
                format!("{base}.rewrite"),
                "cannot be combined with strip_prefix",
            );
        }
        // A broken regex has no captures to check against: one error is enough.
        if let Some(template) = route.rewrite.as_ref().filter(|_| !regex_broken) {
            check_rewrite(
                template,
                captures.as_deref(),
                &format!("{base}.rewrite"),
                errors,
            );
        }
        if route.max_body_bytes == Some(0) {
            errors.push(
                format!("{base}.max_body_bytes"),
                "must be at least 1 (omit it for no limit)",
            );
        }
        // Two routes with the same conditions: the second could never match.
        let key = format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            sorted(&m.hosts),
            m.path_prefix,
            m.path,
            m.path_regex,
            sorted(&m.methods),
            m.headers
                .iter()
                .map(|h| format!("{h:?}"))
                .collect::<Vec<_>>()
        );
        if let Some(first) = matchers.insert(key, i) {
            errors.push(
                mpath.clone(),
                format!(
                    "the same conditions as routes[{first}].match; this route could never match"
                ),
            );
        }
        super::respond::validate(route, &base, errors);
        let Some(upstream) = &route.upstream else {
            continue;
        };
        if !upstreams.contains_key(upstream) {
            let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
            let known = if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            };
            errors.push(
                format!("{base}.upstream"),
                format!("unknown upstream '{upstream}' (defined: {known})"),
            );
        }
    }
}

fn sorted(items: &[String]) -> Vec<String> {
    let mut v: Vec<String> = items.iter().map(|s| s.to_ascii_lowercase()).collect();
    v.sort();
    v
}

fn host_problem(host: &str) -> Option<&'static str> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.is_empty() {
        return Some("is empty");
    }
    if name.contains('*') {
        return Some("may only use a wildcard as its first label (*.example.com)");
    }
    if name.contains(':') && !name.starts_with('[') {
        return Some("must not include a port");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':'))
    {
        return Some("is not a valid host name");
    }
    None
}

/// Compiles a route regex as it will run (anchored), but reports a syntax
/// error against the pattern as the user wrote it: the caret under the
/// right character, and the pattern indented below the error line.
fn compile_anchored(pattern: &str) -> Result<Regex, String> {
    if let Err(e) = Regex::new(pattern) {
        let text = e.to_string();
        let lines: Vec<&str> = text.lines().collect();
        return Err(match lines.as_slice() {
            [_, shown, caret, reason] if reason.starts_with("error: ") => format!(
                "invalid regular expression: {}\n      {shown}\n      {caret}",
                &reason["error: ".len()..]
            ),
            _ => format!("invalid regular expression: {text}"),
        });
    }
    Regex::new(&anchored(pattern)).map_err(|e| format!("invalid regular expression: {e}"))
}

/// `{name}` / `{1}` placeholders must name captures of the route's regex.
fn check_rewrite(template: &str, captures: Option<&[String]>, path: &str, errors: &mut Errors) {
    if !template.starts_with('/') {
        errors.push(path, format!("'{template}' must start with '/'"));
    }
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            errors.push(path, format!("'{template}' has an unclosed '{{'"));
            return;
        };
        let name = &rest[open + 1..open + close];
        match captures {
            Some(names) if names.iter().any(|n| n == name) => {}
            Some(_) => errors.push(
                path,
                format!("'{{{name}}}' is not a capture of match.path_regex"),
            ),
            None => errors.push(
                path,
                format!("'{{{name}}}' needs a match.path_regex with that capture"),
            ),
        }
        rest = &rest[open + close + 1..];
    }
}
