//! The config file's root and the small sections that need no file of their
//! own. Each larger section lives in its own module with its validation.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    AutoBan, Cluster, Consumer, Listener, OAuth2Server, PolicyDefaults, Redis, Resolver, Route,
    Shutdown, Upstream, Xdp,
};

/// Where the daemon keeps runtime changes (CLI list entries) across
/// restarts, when the config does not say.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/xgate";
/// The admin API's Unix socket, when the config does not say. `/run` is
/// cleared at boot, which is what a socket path wants.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/xgate/admin.sock";

/// The whole file.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// TCP listeners that accept client traffic.
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub admin: Admin,
    /// Directory for persisted runtime state (CLI list entries).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Peers whose X-Forwarded-For is believed. Anyone else's is replaced.
    #[schemars(with = "Vec<crate::config::schema::Cidr>")]
    #[serde(default, deserialize_with = "super::cidr::deserialize_list")]
    pub trusted_proxies: Vec<IpNet>,
    #[serde(default)]
    pub xdp: Xdp,
    /// Named upstream services.
    #[serde(default)]
    pub upstreams: BTreeMap<String, Upstream>,
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Callers the gateway knows, with their credentials.
    #[serde(default)]
    pub consumers: Vec<Consumer>,
    /// Policies of every route that declares none (a listener's
    /// `policy_defaults` come first).
    #[serde(default)]
    pub policy_defaults: PolicyDefaults,
    /// The gateway as an OAuth 2.0 authorization server: a token endpoint
    /// for `consumers[].oauth2_clients`, revocation, and its JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2_server: Option<OAuth2Server>,
    /// The Redis server that state shared between gateways lives in
    /// (rate limits with `storage: redis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<Redis>,
    #[serde(default)]
    pub limits: Limits,
    /// How request targets and header names are made unambiguous before
    /// routing (docs/routing.md, "Normalization").
    #[serde(default)]
    pub normalization: Normalization,
    #[serde(default)]
    pub access_log: AccessLog,
    /// How upstream targets given by DNS name are resolved.
    #[serde(default)]
    pub resolver: Resolver,
    /// How connections end when the daemon stops or a listener is removed.
    #[serde(default)]
    pub shutdown: Shutdown,
    /// Rules that ban sources whose requests keep being refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_ban: Option<AutoBan>,
    /// Runtime lists shared with other gateways through Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Cluster>,
    /// The daemon's own log: level and format.
    #[serde(default)]
    pub log: super::Log,
}

/// Request limits that apply to every route (a route may lower or raise
/// `max_body_bytes`).
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Longest request target (path and query) accepted; longer gets 414.
    /// 8 KiB is what nginx and most CDNs accept.
    #[serde(default = "default_max_uri_bytes")]
    pub max_uri_bytes: usize,
    /// Largest request body accepted; larger gets 413. Absent: no limit.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_uri_bytes: default_max_uri_bytes(),
            max_body_bytes: None,
        }
    }
}

fn default_max_uri_bytes() -> usize {
    8 * 1024
}

/// What the proxy does to a request's path and header names before it
/// routes it, so that routing, policies, the access log and the upstream
/// all see one request. Envoy's `normalize_path`, `merge_slashes`,
/// `path_with_escaped_slashes_action` and `headers_with_underscores_action`
/// are the model.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    /// `//a///b` becomes `/a/b`. On by default: no server gives an empty
    /// path segment a meaning that routing should see differently.
    #[serde(default = "default_true")]
    pub merge_slashes: bool,
    /// What `%2F`, `%5C` and a bare `\` in a path are.
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
    /// What goes upstream: the normalized path, or the client's own bytes
    /// (a path that normalization would change is then refused).
    #[serde(default)]
    pub forward: ForwardPath,
    /// Header names with `_`, which CGI-style servers read as the same
    /// variable as the name with `-` (`Transfer_Encoding`).
    #[serde(default)]
    pub headers_with_underscores: UnderscoreHeaders,
}

impl Default for Normalization {
    fn default() -> Self {
        Self {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::default(),
            forward: ForwardPath::default(),
            headers_with_underscores: UnderscoreHeaders::default(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// `%2F` and `%5C` (and a bare backslash) in a path.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// Data, not a separator: forwarded as `%2F` / `%5C` (a bare `\` as
    /// `%5C`). Envoy's default; APIs with encoded ids keep working.
    #[default]
    Keep,
    /// A separator: decoded to `/` before dot segments and slashes are
    /// resolved.
    Decode,
    /// 400.
    Reject,
}

/// The path sent upstream.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ForwardPath {
    /// The normalized path, the one routing saw.
    #[default]
    Normalized,
    /// The client's bytes; a request whose path is not already in normal
    /// form gets 400, so the two never differ.
    Original,
}

/// Header fields whose names contain `_`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum UnderscoreHeaders {
    /// Removed before the request goes upstream (nginx's
    /// `underscores_in_headers off`).
    #[default]
    Drop,
    /// 400.
    Reject,
    /// Forwarded.
    Allow,
}

/// One line per request, also for rejected ones, written by a thread of its
/// own (not through the daemon's log: `RUST_LOG` does not touch it).
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    #[serde(default)]
    pub format: AccessLogFormat,
    /// File to append to; absent: standard output.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Lines held in memory before the writer thread writes them, in bytes;
    /// absent: [`AccessLog::DEFAULT_BUFFER_BYTES`]; 0: each line is written
    /// by the worker that made it, as it is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer_bytes: Option<usize>,
    /// The longest a line waits in the buffer.
    #[schemars(with = "Option<crate::config::schema::DurationText>")]
    #[serde(
        default,
        with = "crate::duration::serde_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub flush_interval: Option<Duration>,
}

impl AccessLog {
    /// Smallest and largest `buffer_bytes` (besides 0).
    pub const BUFFER_BYTES: std::ops::RangeInclusive<usize> = 4096..=16 * 1024 * 1024;
    /// Shortest and longest `flush_interval`.
    pub const FLUSH_INTERVAL: std::ops::RangeInclusive<Duration> =
        Duration::from_millis(10)..=Duration::from_secs(60);
    /// 64 KiB: about 200 lines, a write every few hundred requests at full
    /// load instead of one per request.
    pub const DEFAULT_BUFFER_BYTES: usize = 64 * 1024;
    /// Lines reach the file within a second, as `tail -f` users expect.
    pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

    pub fn buffer_bytes(&self) -> usize {
        self.buffer_bytes.unwrap_or(Self::DEFAULT_BUFFER_BYTES)
    }

    pub fn flush_interval(&self) -> Duration {
        self.flush_interval.unwrap_or(Self::DEFAULT_FLUSH_INTERVAL)
    }

    pub(super) fn validate(&self, errors: &mut super::validate::Errors) {
        if let Some(bytes) = self.buffer_bytes.filter(|b| *b != 0) {
            let range = Self::BUFFER_BYTES;
            if !range.contains(&bytes) {
                errors.push(
                    "access_log.buffer_bytes",
                    format!(
                        "{bytes} is out of range: {} to {} (or 0 to write each line as it is made)",
                        range.start(),
                        range.end()
                    ),
                );
            }
        }
        if let Some(interval) = self.flush_interval {
            let range = Self::FLUSH_INTERVAL;
            if !range.contains(&interval) {
                errors.push(
                    "access_log.flush_interval",
                    format!(
                        "{} is out of range: {} to {}",
                        crate::duration::format(interval),
                        crate::duration::format(*range.start()),
                        crate::duration::format(*range.end())
                    ),
                );
            }
            if self.buffer_bytes == Some(0) {
                errors.push(
                    "access_log.flush_interval",
                    "has no effect with buffer_bytes: 0 (every line is written at once)",
                );
            }
        }
    }
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// logfmt: `key=value` pairs in a fixed order.
    #[default]
    Text,
    /// One JSON object per line, the same fields.
    Json,
    /// No access log.
    Off,
}

#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Unix socket of the admin API (mode 0660, this group; 0600 without).
    #[serde(default = "default_admin_socket")]
    pub socket: PathBuf,
    /// The group whose members may use the admin API besides root.
    /// Absent: `xgate` when that group exists, else root only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The TCP listener for Prometheus (`/metrics`), probes (`/livez`,
    /// `/readyz`) and the status page (`/status`, `/status.json`).
    /// Absent: 127.0.0.1:9464, and when another process holds that port a
    /// warning and no listener; an address set here must bind or the start
    /// fails; `off`: none (all of it stays on the admin socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub metrics_address: Option<super::MetricsAddress>,
    /// The token a client that is not on loopback must send to read the
    /// status page (`Authorization: Bearer TOKEN`, or once as `?token=` in
    /// a browser, which then gets a cookie). Absent: such clients get 403.
    /// `status_token_file: PATH` reads it from a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_token: Option<String>,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            socket: default_admin_socket(),
            group: None,
            metrics_address: None,
            status_token: None,
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}
fn default_admin_socket() -> PathBuf {
    PathBuf::from(DEFAULT_ADMIN_SOCKET)
}
