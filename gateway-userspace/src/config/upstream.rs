//! `upstreams.<name>`: the services behind the gateway.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use super::Errors;

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

impl Upstream {
    pub(super) fn validate(&self, name: &str, errors: &mut Errors) {
        let base = format!("upstreams.{name}");
        if self.targets.is_empty() {
            errors.push(format!("{base}.targets"), "at least one target is required");
        }
        let mut seen = BTreeSet::new();
        for (i, target) in self.targets.iter().enumerate() {
            if target.port() == 0 {
                errors.push(
                    format!("{base}.targets[{i}]"),
                    "port 0 is not a valid target port",
                );
            } else if !seen.insert(target) {
                errors.push(
                    format!("{base}.targets[{i}]"),
                    format!("{target} is listed twice"),
                );
            }
        }
        for (field, value) in [
            ("connect_timeout", self.connect_timeout),
            ("timeout", self.timeout),
        ] {
            if value.is_zero() {
                errors.push(format!("{base}.{field}"), "must be greater than zero");
            }
        }
    }
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
