//! Admin API documents, shared by the server and the CLI client.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::lists::XdpStatus;

/// `POST /blocklist` and `POST /allowlist`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A duration such as `90s`, `1h`, `7d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Needed for a prefix of length 0 (`0.0.0.0/0`, `::/0`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// One row of `GET /bans` (`xgate bans ls`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Ban {
    /// The banned address or network.
    pub source: ipnet::IpNet,
    /// The auto-ban rule that banned it.
    pub rule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unix seconds.
    pub added_at: u64,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl From<crate::lists::Entry> for Ban {
    fn from(e: crate::lists::Entry) -> Self {
        Self {
            source: e.cidr,
            rule: e.rule.unwrap_or_default(),
            reason: e.reason,
            added_at: e.added_at,
            expires_at: e.expires_at,
        }
    }
}

/// `GET /status`.
#[derive(Debug, Serialize)]
pub struct Status {
    pub version: String,
    pub uptime_secs: u64,
    pub listeners: Vec<SocketAddr>,
    pub routes: usize,
    pub blocklist_entries: usize,
    pub allowlist_entries: usize,
    /// Of the blocklist entries, those an auto-ban rule made.
    pub bans: usize,
    /// Cluster mode: this node and whether it is synced with Redis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::lists::cluster::ClusterStatus>,
    pub l7_denied_connections: u64,
    /// The sources dropped most, XDP and L7 merged (as on the status page).
    pub top_dropped_sources: Vec<crate::telemetry::dropped_sources::DroppedSourceRow>,
    pub reloads: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xdp: Option<XdpStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xdp_off_reason: Option<String>,
    /// `admin.metrics_address`: the address (metrics, probes, status
    /// page), `off`, or why the default one is not listening.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listener: Option<String>,
}

/// `POST /reload` on success.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReloadReport {
    /// The file the daemon loaded: always the one it was started with
    /// (absolute), as nginx's and HAProxy's reloads re-read theirs.
    pub path: String,
    /// Settings in the file that differ from what is running and that only
    /// a restart applies: reported on every reload until a restart.
    pub needs_restart: Vec<String>,
}

/// `DELETE /oauth2/refresh-tokens/<client_id>`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RevokedTokens {
    pub client_id: String,
    /// Refresh token families revoked (each was one usable token).
    pub revoked: usize,
}
