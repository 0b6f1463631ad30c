//! `type: opa`: authorization by a Rego policy, evaluated in process
//! (`policy_files`) or by an OPA-compatible server over its REST API
//! (`server`).

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::Errors;

/// `type: opa`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Opa {
    /// The decision asked for, as OPA's data API names it:
    /// `xgate/authz/allow` is `POST /v1/data/xgate/authz/allow` on a server
    /// and the rule `data.xgate.authz.allow` in process.
    pub decision: String,
    /// Rego files evaluated in process (embedded mode, the default).
    #[serde(default)]
    pub policy_files: Vec<PathBuf>,
    /// JSON documents merged into `data` (embedded mode).
    #[serde(default)]
    pub data_files: Vec<PathBuf>,
    /// An OPA-compatible server asked per request (remote mode).
    #[serde(default)]
    pub server: Option<OpaServer>,
    /// Longest time one in-process evaluation may take; a policy that runs
    /// longer is stopped and counts as a failure (`failure_mode`).
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_eval_timeout", with = "crate::duration::serde")]
    pub evaluation_timeout: Duration,
    /// When the decision cannot be had (server down, slow, garbage; an
    /// evaluation error): `closed` answers 503, `open` lets the request go.
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// `input.request.http.body`: the request body as text (buffered, up to
    /// `max_body_bytes`; the upstream gets the same bytes).
    #[serde(default)]
    pub include_body: bool,
    /// `input.request.http.parsed_body`: the request body parsed as JSON
    /// when it is JSON.
    #[serde(default)]
    pub include_parsed_json_body: bool,
    /// A body the policy reads and that is larger is refused (413): a
    /// decision on part of a body would be a decision on another request.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// Decisions kept for requests that agree on `key`.
    #[serde(default)]
    pub cache: Option<OpaCache>,
    /// Embedded mode: decisions remembered by the exact input the policy
    /// can read, at most this many (least recently used out; 0: off;
    /// default 1024). Used only for a pure policy (no `time.now_ns`,
    /// `rand.*`, `uuid.rfc4122`, `http.send`, `net.lookup_ip_addr`,
    /// `opa.runtime`, `io.jwt.decode_verify`, `print`, `trace` or `with`),
    /// whose decision cannot differ for the same input and data; a changed
    /// policy or data file starts an empty one.
    #[serde(default)]
    pub memo_entries: Option<usize>,
}

/// `memo_entries` when not set: a few hundred kilobytes at most.
pub const DEFAULT_MEMO_ENTRIES: usize = 1024;

/// Where a remote policy is asked.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpaServer {
    /// `http://host:port` or `https://host:port` (a path prefix is kept:
    /// `/v1/data/<decision>` is appended).
    pub url: String,
    /// CA certificates (PEM) an HTTPS `url` is verified with; absent: the
    /// system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Longest wait for an answer (connect included).
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_server_timeout", with = "crate::duration::serde")]
    pub timeout: Duration,
    /// Idle keep-alive connections are closed after this.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_pool_idle", with = "crate::duration::serde")]
    pub pool_idle_timeout: Duration,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// 503 (`opa_unavailable`): no decision, no access.
    #[default]
    Closed,
    /// The request goes on, counted and logged.
    Open,
}

/// `cache:` of an opa policy.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpaCache {
    /// The parts of the input a decision depends on: `consumer`, `method`,
    /// `path`, `host`, `querystring`, `client_ip`, `route`,
    /// `header:<name>`. Requests equal on these share a decision.
    pub key: Vec<String>,
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_cache_ttl", with = "crate::duration::serde")]
    pub ttl: Duration,
    #[serde(default = "default_cache_entries")]
    pub max_entries: usize,
}

/// A small policy evaluates in microseconds; 100 ms is far beyond any sane
/// authorization policy and still bounds a runaway one.
fn default_eval_timeout() -> Duration {
    Duration::from_millis(100)
}

/// An OPA sidecar answers in about a millisecond; a second is "down".
fn default_server_timeout() -> Duration {
    Duration::from_secs(1)
}

/// OPA's own HTTP server keeps idle connections longer; closing ours first
/// avoids reusing one the server is closing.
fn default_pool_idle() -> Duration {
    Duration::from_secs(30)
}

/// API request bodies that authorization reads are small JSON documents.
fn default_max_body() -> u64 {
    64 * 1024
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(10)
}

fn default_cache_entries() -> usize {
    10_000
}

/// The input fields a cache key may name.
pub const CACHE_KEY_FIELDS: &[&str] = &[
    "consumer",
    "method",
    "path",
    "host",
    "querystring",
    "client_ip",
    "route",
];

/// A decision path: `a/b/c`, segments of letters, digits and `_`.
pub fn decision_ok(decision: &str) -> bool {
    !decision.is_empty()
        && decision.split('/').all(|segment| {
            segment
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

pub(super) fn validate(p: &Opa, path: &str, errors: &mut Errors) {
    if !decision_ok(&p.decision) {
        errors.push(
            format!("{path}.decision"),
            format!(
                "'{}' is not a decision path like xgate/authz/allow (segments of letters, \
                 digits and _, separated by /)",
                p.decision
            ),
        );
    }
    match (&p.server, p.memo_entries) {
        (Some(_), Some(_)) => errors.push(
            format!("{path}.memo_entries"),
            "only for embedded policies (policy_files): a server's policy may read anything",
        ),
        (None, Some(n)) if n > 1_000_000 => {
            errors.push(format!("{path}.memo_entries"), "must be at most 1000000")
        }
        _ => {}
    }
    match &p.server {
        Some(server) => {
            if !p.policy_files.is_empty() || !p.data_files.is_empty() {
                errors.push(
                    path,
                    "server (remote mode) and policy_files/data_files (embedded mode) exclude \
                     each other",
                );
            }
            let url_ok = (server.url.starts_with("http://") || server.url.starts_with("https://"))
                && server
                    .url
                    .parse::<http::Uri>()
                    .is_ok_and(|u| u.host().is_some() && u.query().is_none());
            if !url_ok {
                errors.push(
                    format!("{path}.server.url"),
                    format!("'{}' is not an http(s) URL without query", server.url),
                );
            }
            if let Some(ca) = &server.ca_file {
                if let Err(e) = crate::tls::client::load_roots(ca) {
                    errors.push(format!("{path}.server.ca_file"), e);
                }
            }
            if server.timeout.is_zero() {
                errors.push(format!("{path}.server.timeout"), "must be more than 0");
            }
        }
        None => {
            if p.policy_files.is_empty() {
                errors.push(
                    path,
                    "needs policy_files (embedded mode) or server (remote mode)",
                );
            } else if decision_ok(&p.decision) {
                // Every Rego file compiled here: a broken one is reported
                // with its file and line, before anything is applied.
                if let Err(e) = crate::policy::opa::compile_check(p) {
                    errors.push(path, e);
                }
            }
        }
    }
    if p.evaluation_timeout.is_zero() {
        errors.push(format!("{path}.evaluation_timeout"), "must be more than 0");
    }
    if p.max_body_bytes == 0 || p.max_body_bytes > 16 * 1024 * 1024 {
        errors.push(
            format!("{path}.max_body_bytes"),
            "must be between 1 and 16777216",
        );
    }
    if let Some(cache) = &p.cache {
        if cache.key.is_empty() {
            errors.push(
                format!("{path}.cache.key"),
                "must name at least one input field: a key of nothing would give every \
                 request the first decision",
            );
        }
        for (j, field) in cache.key.iter().enumerate() {
            let ok = CACHE_KEY_FIELDS.contains(&field.as_str())
                || field
                    .strip_prefix("header:")
                    .is_some_and(|h| http::HeaderName::from_bytes(h.as_bytes()).is_ok());
            if !ok {
                errors.push(
                    format!("{path}.cache.key[{j}]"),
                    format!(
                        "'{field}': use one of {} or header:<name>",
                        CACHE_KEY_FIELDS.join(", ")
                    ),
                );
            }
        }
        if p.include_body || p.include_parsed_json_body {
            errors.push(
                format!("{path}.cache"),
                "a policy that reads the body cannot cache by a key that leaves it out",
            );
        }
        if cache.ttl.is_zero() {
            errors.push(format!("{path}.cache.ttl"), "must be more than 0");
        }
        if cache.max_entries == 0 || cache.max_entries > 10_000_000 {
            errors.push(
                format!("{path}.cache.max_entries"),
                "must be between 1 and 10000000",
            );
        }
    }
}
