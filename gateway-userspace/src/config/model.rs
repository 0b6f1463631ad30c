//! The config file's shape: what operators write, with named defaults.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use crate::xdp::OnExit;

/// Where the daemon keeps runtime changes (CLI blocklist entries) across
/// restarts, when the config does not say.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/xgate";
/// The admin API's Unix socket, when the config does not say. `/run` is
/// cleared at boot, which is what a socket path wants.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/xgate/admin.sock";
/// Root of the pinned BPF objects. Maps live in `<root>/v<layout version>/`.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/xgate";
/// Long enough for a TCP handshake across a slow network, short enough that a
/// dead target fails fast.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed for the upstream to send response headers (nginx's
/// proxy_read_timeout default is 60s; APIs answer sooner).
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle keep-alive connections to an upstream are closed after this.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle keep-alive connections kept per target.
pub const DEFAULT_POOL_MAX_IDLE: usize = 128;

/// The whole file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// TCP listeners that accept client traffic.
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub admin: Admin,
    /// Directory for persisted runtime state (CLI blocklist entries).
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
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Optional label used in logs.
    #[serde(default)]
    pub name: Option<String>,
    /// `IP:port` to bind, e.g. `0.0.0.0:8080` or `[::]:8080`.
    pub address: SocketAddr,
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

/// The kernel half. XDP is attached when `interfaces` is non-empty and the
/// daemon has the privilege; otherwise the same rules apply at L7 only.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Xdp {
    /// Interfaces to attach the XDP program to.
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub mode: XdpMode,
    /// bpffs directory for pinned maps.
    #[serde(default = "default_pin_path")]
    pub pin_path: PathBuf,
    /// What a clean exit does to the attachments (a crash always leaves
    /// them enforcing).
    #[serde(default)]
    pub on_exit: OnExit,
    /// Source prefixes dropped in the kernel (and refused at L7).
    #[serde(default)]
    pub deny: Vec<IpNet>,
    /// Source prefixes never denied or policed (they win over `deny`).
    #[serde(default)]
    pub allow: Vec<IpNet>,
    /// Per-source packet rate limit in the kernel; absent means none.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

impl Default for Xdp {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            mode: XdpMode::default(),
            pin_path: default_pin_path(),
            on_exit: OnExit::default(),
            deny: Vec::new(),
            allow: Vec::new(),
            rate_limit: None,
        }
    }
}

/// Token bucket per source, enforced in XDP, global across CPUs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Packets per second each source may send.
    pub rate: u64,
    /// Packets a source may send at once; defaults to one second's worth.
    #[serde(default)]
    pub burst: Option<u64>,
    /// IPv4 sources are aggregated to this prefix (32: every address).
    #[serde(default = "default_prefix_v4")]
    pub source_prefix_v4: u8,
    /// IPv6 sources are aggregated to this prefix (64: one network, since a
    /// single host can own a whole /64).
    #[serde(default = "default_prefix_v6")]
    pub source_prefix_v6: u8,
    /// Police only TCP SYNs (new connections) instead of every packet.
    #[serde(default)]
    pub syn_only: bool,
    /// Which destination ports are policed.
    #[serde(default)]
    pub ports: Ports,
    /// Different budgets for sources inside these prefixes.
    #[serde(default)]
    pub overrides: Vec<RateOverride>,
}

impl RateLimit {
    pub fn burst(&self) -> u64 {
        self.burst.unwrap_or(self.rate)
    }
}

/// `listeners` (default: the gateway's own listener ports), `all`, or a
/// list of ports.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Ports {
    Keyword(PortsKeyword),
    List(Vec<u16>),
}

impl Default for Ports {
    fn default() -> Self {
        Ports::Keyword(PortsKeyword::Listeners)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PortsKeyword {
    Listeners,
    All,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateOverride {
    pub cidr: IpNet,
    /// Packets per second; 0 exempts these sources from policing.
    pub rate: u64,
    #[serde(default)]
    pub burst: Option<u64>,
}

/// How to attach: `auto` tries native (driver) mode and falls back to
/// generic; the mode actually used is logged and shown in `xgate status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    #[default]
    Auto,
    Native,
    Generic,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `IP:port` of each target; requests are spread round-robin.
    pub targets: Vec<SocketAddr>,
    #[serde(default = "default_connect_timeout", with = "crate::duration::serde")]
    pub connect_timeout: Duration,
    /// Time for the upstream to answer with response headers (else 504).
    #[serde(default = "default_upstream_timeout", with = "crate::duration::serde")]
    pub timeout: Duration,
    #[serde(default = "default_pool_idle_timeout", with = "crate::duration::serde")]
    pub pool_idle_timeout: Duration,
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle_per_target: usize,
}

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

fn default_prefix_v4() -> u8 {
    32
}
fn default_prefix_v6() -> u8 {
    64
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}
fn default_admin_socket() -> PathBuf {
    PathBuf::from(DEFAULT_ADMIN_SOCKET)
}
fn default_pin_path() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_PATH)
}
fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}
fn default_upstream_timeout() -> Duration {
    DEFAULT_UPSTREAM_TIMEOUT
}
fn default_pool_idle_timeout() -> Duration {
    DEFAULT_POOL_IDLE_TIMEOUT
}
fn default_pool_max_idle() -> usize {
    DEFAULT_POOL_MAX_IDLE
}
