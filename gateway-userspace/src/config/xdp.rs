//! `xdp`: the kernel half's settings: interfaces, lists, rate limit.

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{host_bits_error, ConfigError, Errors};
pub use crate::xdp::OnExit;

/// Root of the pinned BPF objects. Maps live in `<root>/v<layout version>/`.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/xgate";
/// Linux's IFNAMSIZ minus the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;

/// The kernel half. XDP is attached when `interfaces` is non-empty and the
/// daemon has the privilege; otherwise the same rules apply at L7 only.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Xdp {
    /// Interfaces to attach the XDP program to.
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub mode: XdpMode,
    /// Refuse to start when XDP cannot be attached (no privilege, no
    /// driver support) instead of serving with the lists enforced at L7
    /// only.
    #[serde(default)]
    pub required: bool,
    /// `deny` may hold a prefix of length 0 (`0.0.0.0/0`, `::/0`): every
    /// source is blocked except the `allow` entries. Without it such an
    /// entry is refused as a likely mistake.
    #[serde(default)]
    pub confirm_deny_all: bool,
    /// bpffs directory for pinned maps.
    #[serde(default = "default_pin_path")]
    pub pin_path: PathBuf,
    /// What a clean exit does to the attachments (a crash always leaves
    /// them enforcing).
    #[serde(default)]
    pub on_exit: OnExit,
    /// Source prefixes dropped in the kernel (and refused at L7).
    #[schemars(with = "Vec<crate::config::schema::Cidr>")]
    #[serde(default, deserialize_with = "super::cidr::deserialize_list")]
    pub deny: Vec<IpNet>,
    /// Source prefixes never denied or policed (they win over `deny`).
    #[schemars(with = "Vec<crate::config::schema::Cidr>")]
    #[serde(default, deserialize_with = "super::cidr::deserialize_list")]
    pub allow: Vec<IpNet>,
    /// Per-source packet rate limit in the kernel; absent means none.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// SYN-flood defense: SYN cookies from XDP for the listener ports.
    #[serde(default)]
    pub syn_cookies: super::SynCookies,
}

impl Default for Xdp {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            mode: XdpMode::default(),
            required: false,
            confirm_deny_all: false,
            pin_path: default_pin_path(),
            on_exit: OnExit::default(),
            deny: Vec::new(),
            allow: Vec::new(),
            rate_limit: None,
            syn_cookies: super::SynCookies::default(),
        }
    }
}

/// Token bucket per source, enforced in XDP, global across CPUs.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PortsKeyword {
    Listeners,
    All,
}

#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateOverride {
    #[schemars(with = "crate::config::schema::Cidr")]
    #[serde(deserialize_with = "super::cidr::deserialize_one")]
    pub cidr: IpNet,
    /// Packets per second; 0 exempts these sources from policing.
    pub rate: u64,
    #[serde(default)]
    pub burst: Option<u64>,
}

/// How to attach: `auto` tries native (driver) mode and falls back to
/// generic; the mode actually used is logged and shown in `xgate status`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    #[default]
    Auto,
    Native,
    Generic,
}

fn default_pin_path() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_PATH)
}
fn default_prefix_v4() -> u8 {
    32
}
fn default_prefix_v6() -> u8 {
    64
}

impl Xdp {
    pub(super) fn validate(&self, errors: &mut Errors) {
        let mut interfaces = BTreeSet::new();
        for (i, name) in self.interfaces.iter().enumerate() {
            let path = format!("xdp.interfaces[{i}]");
            if name.is_empty() || name.len() > MAX_IFNAME_LEN {
                errors.push(
                    path,
                    format!(
                        "'{name}' is not a valid interface name (1 to {MAX_IFNAME_LEN} characters)"
                    ),
                );
            } else if name.contains(|c: char| c == '/' || c.is_whitespace()) {
                errors.push(path, format!("'{name}' is not a valid interface name"));
            } else if !interfaces.insert(name) {
                errors.push(path, format!("'{name}' is listed twice"));
            }
        }
        if self.required && self.interfaces.is_empty() {
            errors.push(
                "xdp.required",
                "true needs xdp.interfaces (there is nothing to attach)",
            );
        }
        for (i, net) in self.deny.iter().enumerate() {
            if crate::config::is_everything(net) && !self.confirm_deny_all {
                errors.push(
                    format!("xdp.deny[{i}]"),
                    format!(
                        "{net} blocks every {} source; if you mean it (only the xdp.allow \
                         entries get through), also set xdp.confirm_deny_all: true",
                        if net.addr().is_ipv4() { "IPv4" } else { "IPv6" }
                    ),
                );
            }
        }
        if !self.pin_path.is_absolute() {
            errors.push("xdp.pin_path", "must be an absolute path on a bpffs mount");
        }
        for (list, nets) in [("deny", &self.deny), ("allow", &self.allow)] {
            let mut seen = HashMap::new();
            for (i, net) in nets.iter().enumerate() {
                let path = format!("xdp.{list}[{i}]");
                if let Some(message) = host_bits_error(net) {
                    errors.push(path, message);
                } else if let Some(first) = seen.insert(*net, i) {
                    errors.push(
                        path,
                        format!("{net} is already listed at xdp.{list}[{first}]"),
                    );
                }
            }
        }
        if let Some(rate_limit) = &self.rate_limit {
            rate_limit.validate(errors);
        }
        self.syn_cookies.validate(errors);
    }
}

impl Xdp {
    /// Settings that are valid but do less than they seem to.
    pub(super) fn warnings(&self, warnings: &mut Vec<ConfigError>) {
        self.syn_cookies
            .warnings(!self.interfaces.is_empty(), warnings);
        if self.interfaces.is_empty() {
            if self.rate_limit.is_some() {
                warnings.push(ConfigError::new(
                    "xdp.rate_limit",
                    "no xdp.interfaces are configured, so nothing enforces this packet rate \
                     limit (it exists only in the kernel); add xdp.interfaces",
                ));
            }
            for (list, nets) in [("deny", &self.deny), ("allow", &self.allow)] {
                if !nets.is_empty() {
                    warnings.push(ConfigError::new(
                        format!("xdp.{list}"),
                        "no xdp.interfaces are configured, so these entries are enforced at \
                         L7 only (connections refused after accept); no packet is dropped in \
                         the kernel",
                    ));
                }
            }
        }
        // A deny entry inside an allow entry never blocks anything (the
        // other way round is a carve-out, and intended).
        for (i, deny) in self.deny.iter().enumerate() {
            if let Some((j, allow)) = self
                .allow
                .iter()
                .enumerate()
                .find(|(_, allow)| allow.contains(deny))
            {
                warnings.push(ConfigError::new(
                    format!("xdp.deny[{i}]"),
                    format!(
                        "{deny} is inside xdp.allow[{j}] ({allow}); allow wins, so this entry never blocks anything"
                    ),
                ));
            }
        }
        for (i, net) in self.allow.iter().enumerate() {
            if crate::config::is_everything(net) {
                warnings.push(ConfigError::new(
                    format!("xdp.allow[{i}]"),
                    format!("{net} exempts every source from xdp.deny, the blocklist and the packet rate limit"),
                ));
            }
        }
    }
}

impl RateLimit {
    fn validate(&self, errors: &mut Errors) {
        let base = "xdp.rate_limit";
        if self.rate == 0 {
            errors.push(
                format!("{base}.rate"),
                "must be at least 1 packet per second",
            );
        }
        if self.burst == Some(0) {
            errors.push(format!("{base}.burst"), "must be at least 1");
        }
        if !(1..=32).contains(&self.source_prefix_v4) {
            errors.push(format!("{base}.source_prefix_v4"), "must be 1 to 32");
        }
        if !(1..=128).contains(&self.source_prefix_v6) {
            errors.push(format!("{base}.source_prefix_v6"), "must be 1 to 128");
        }
        if let Ports::List(ports) = &self.ports {
            if ports.is_empty() {
                errors.push(
                    format!("{base}.ports"),
                    "an empty list polices nothing; use `all`, `listeners` or remove rate_limit",
                );
            }
            for (i, port) in ports.iter().enumerate() {
                if *port == 0 {
                    errors.push(format!("{base}.ports[{i}]"), "port 0 is not a valid port");
                }
            }
        }
        let mut seen = HashMap::new();
        for (i, o) in self.overrides.iter().enumerate() {
            let path = format!("{base}.overrides[{i}]");
            if let Some(message) = host_bits_error(&o.cidr) {
                errors.push(format!("{path}.cidr"), message);
            } else if let Some(first) = seen.insert(o.cidr, i) {
                errors.push(
                    format!("{path}.cidr"),
                    format!(
                        "{} is already overridden at {base}.overrides[{first}]",
                        o.cidr
                    ),
                );
            }
            if o.burst == Some(0) {
                errors.push(format!("{path}.burst"), "must be at least 1");
            }
        }
    }
}
