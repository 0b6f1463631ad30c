//! The config file's root and the small sections that need no file of their
//! own. Each larger section lives in its own module with its validation.

use std::{collections::BTreeMap, path::PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{Listener, Route, Upstream, Xdp};

/// Where the daemon keeps runtime changes (CLI list entries) across
/// restarts, when the config does not say.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/xgate";
/// The admin API's Unix socket, when the config does not say. `/run` is
/// cleared at boot, which is what a socket path wants.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/xgate/admin.sock";

/// The whole file.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    #[serde(default)]
    pub xdp: Xdp,
    /// Named upstream services.
    #[serde(default)]
    pub upstreams: BTreeMap<String, Upstream>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub access_log: AccessLog,
}

/// Request limits that apply to every route (a route may lower or raise
/// `max_body_bytes`).
#[derive(Debug, Clone, Deserialize, Serialize)]
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

/// One line per request, also for rejected ones.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    #[serde(default)]
    pub format: AccessLogFormat,
    /// File to append to; absent: standard output (json) or the log (text).
    #[serde(default)]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// A `tracing` event on the daemon's log.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
    /// No access log.
    Off,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Unix socket of the admin API (mode 0600).
    #[serde(default = "default_admin_socket")]
    pub socket: PathBuf,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            socket: default_admin_socket(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}
fn default_admin_socket() -> PathBuf {
    PathBuf::from(DEFAULT_ADMIN_SOCKET)
}
