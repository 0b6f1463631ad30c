//! `upstreams.<name>.health_checks` (active probes and passive outlier
//! detection) and `upstreams.<name>.circuit_breakers` (load shedding). See
//! docs/upstreams.md.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Errors;

/// Envoy's `consecutive_5xx` default: one bad answer is noise, five in a
/// row are a pattern.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// Envoy's `base_ejection_time`: long enough for a restart, short enough
/// that a recovered target is not left idle for long.
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
/// Envoy's `max_ejection_time`: a target that keeps failing is tried again
/// at least every five minutes.
pub const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
/// Envoy's `max_ejection_percent`; one target can always be ejected.
pub const DEFAULT_MAX_EJECTION_PERCENT: u8 = 10;
/// Often enough to see a restart within seconds, rare enough to be free.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// A health endpoint answers at once; two seconds is a sick target.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Envoy's and Kong's usual: two passes to come back...
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
/// ...three failures to go down (one lost probe is not an outage).
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// Envoy's circuit breaker defaults (1024 each): far above what a single
/// service should see from one gateway, low enough to stop a pile-up.
pub const DEFAULT_MAX_REQUESTS: usize = 1024;

/// `health_checks`: both kinds may run; a target takes traffic while
/// neither holds it down.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HealthChecks {
    /// Probes sent in the background; absent: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveCheck>,
    /// Outlier detection on real traffic; on by default.
    pub passive: PassiveHealth,
}

/// `health_checks.passive`: Envoy's outlier detection.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PassiveHealth {
    pub enabled: bool,
    /// Failures in a row (connect failure, no response headers within
    /// `timeout`, a broken exchange, a 5xx answer) that eject a target.
    pub consecutive_failures: u32,
    /// The first ejection's length; the n-th lasts n times this...
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(with = "crate::duration::serde")]
    pub base_ejection_time: Duration,
    /// ...up to this.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(with = "crate::duration::serde")]
    pub max_ejection_time: Duration,
    /// At most this share of the targets is ejected at once (at least one
    /// target can always be).
    pub max_ejection_percent: u8,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        Self {
            enabled: true,
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
            base_ejection_time: DEFAULT_BASE_EJECTION_TIME,
            max_ejection_time: DEFAULT_MAX_EJECTION_TIME,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
        }
    }
}

/// What an active check does.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, Serialize, schemars::JsonSchema, PartialEq, Eq,
)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// `GET path`; healthy when the status is expected.
    #[default]
    Http,
    /// Healthy when a TCP connection (and the TLS handshake, with `tls`)
    /// succeeds.
    Tcp,
}

/// `health_checks.active`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ActiveCheck {
    #[serde(rename = "type")]
    pub kind: CheckKind,
    /// `http`: the path requested.
    pub path: String,
    /// `http`: the Host header; absent: the target's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `http`: the statuses that pass; empty: any 2xx.
    pub expected_statuses: Vec<u16>,
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(with = "crate::duration::serde")]
    pub interval: Duration,
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(with = "crate::duration::serde")]
    pub timeout: Duration,
    /// Passes in a row that bring a target back.
    pub healthy_threshold: u32,
    /// Failures in a row that take a target down.
    pub unhealthy_threshold: u32,
    /// Up to this much is added at random to each interval, so that
    /// gateways started together do not probe in step.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(with = "crate::duration::serde")]
    pub jitter: Duration,
}

impl Default for ActiveCheck {
    fn default() -> Self {
        Self {
            kind: CheckKind::Http,
            path: "/".to_string(),
            host: None,
            expected_statuses: Vec::new(),
            interval: DEFAULT_CHECK_INTERVAL,
            timeout: DEFAULT_CHECK_TIMEOUT,
            healthy_threshold: DEFAULT_HEALTHY_THRESHOLD,
            unhealthy_threshold: DEFAULT_UNHEALTHY_THRESHOLD,
            jitter: Duration::ZERO,
        }
    }
}

impl ActiveCheck {
    /// Whether an `http` check's answer passes.
    pub fn passes(&self, status: u16) -> bool {
        if self.expected_statuses.is_empty() {
            (200..300).contains(&status)
        } else {
            self.expected_statuses.contains(&status)
        }
    }
}

/// `circuit_breakers`: Envoy's per-cluster limits (its defaults). A request
/// over one is answered 503 at once instead of waiting.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakers {
    /// Requests in flight to the upstream's targets (from the first
    /// attempt until the response body ends).
    pub max_requests: usize,
    /// HTTP/1.1: connections open to the upstream's targets, idle ones
    /// included.
    pub max_connections: usize,
    /// HTTP/1.1: new connections under way (TCP connect and TLS
    /// handshake), each for a request waiting that no other connect covers.
    pub max_pending_requests: usize,
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        Self {
            max_requests: DEFAULT_MAX_REQUESTS,
            max_connections: DEFAULT_MAX_REQUESTS,
            max_pending_requests: DEFAULT_MAX_REQUESTS,
        }
    }
}

impl HealthChecks {
    pub(super) fn validate(&self, base: &str, errors: &mut Errors) {
        let passive = &self.passive;
        let at = |field: &str| format!("{base}.passive.{field}");
        if passive.enabled {
            if passive.consecutive_failures == 0 {
                errors.push(at("consecutive_failures"), "must be at least 1");
            }
            if passive.base_ejection_time.is_zero() {
                errors.push(at("base_ejection_time"), "must be greater than zero");
            }
            if passive.max_ejection_time < passive.base_ejection_time {
                errors.push(
                    at("max_ejection_time"),
                    "must be at least base_ejection_time",
                );
            }
            if passive.max_ejection_percent > 100 {
                errors.push(at("max_ejection_percent"), "must be between 0 and 100");
            }
        }
        let Some(active) = &self.active else {
            return;
        };
        let at = |field: &str| format!("{base}.active.{field}");
        if active.interval.is_zero() {
            errors.push(at("interval"), "must be greater than zero");
        }
        if active.timeout.is_zero() {
            errors.push(at("timeout"), "must be greater than zero");
        } else if active.timeout > active.interval {
            errors.push(at("timeout"), "must not be longer than interval");
        }
        for field in ["healthy_threshold", "unhealthy_threshold"] {
            let value = if field == "healthy_threshold" {
                active.healthy_threshold
            } else {
                active.unhealthy_threshold
            };
            if value == 0 {
                errors.push(at(field), "must be at least 1");
            }
        }
        if active.kind == CheckKind::Http {
            if !active.path.starts_with('/') {
                errors.push(at("path"), "must start with /");
            } else if active.path.parse::<http::uri::PathAndQuery>().is_err() {
                errors.push(at("path"), "is not a valid request path");
            }
            if let Some(host) = &active.host {
                if http::HeaderValue::from_str(host).is_err() || host.is_empty() {
                    errors.push(at("host"), "is not a valid Host header value");
                }
            }
            for (i, status) in active.expected_statuses.iter().enumerate() {
                if !(100..=599).contains(status) {
                    errors.push(
                        format!("{base}.active.expected_statuses[{i}]"),
                        format!("{status} is not an HTTP status"),
                    );
                }
            }
        } else {
            for (field, set) in [
                ("path", active.path != "/"),
                ("host", active.host.is_some()),
                ("expected_statuses", !active.expected_statuses.is_empty()),
            ] {
                if set {
                    errors.push(at(field), "only used with `type: http`");
                }
            }
        }
    }
}

impl CircuitBreakers {
    pub(super) fn validate(&self, base: &str, errors: &mut Errors) {
        for (field, value) in [
            ("max_requests", self.max_requests),
            ("max_connections", self.max_connections),
            ("max_pending_requests", self.max_pending_requests),
        ] {
            if value == 0 {
                errors.push(
                    format!("{base}.{field}"),
                    "must be at least 1 (0 would refuse every request)",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Upstream};

    fn errors(upstream: &str) -> Vec<String> {
        let yaml = format!(
            "listeners: [{{address: '127.0.0.1:8080'}}]\n\
             upstreams:\n  u: {upstream}\n\
             routes: [{{match: {{path_prefix: /}}, upstream: u}}]\n"
        );
        match Config::from_yaml(&yaml, "test.yaml") {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn defaults_are_envoys() {
        let u: Upstream = serde_yaml::from_str("{targets: ['127.0.0.1:1']}").unwrap();
        let passive = &u.health_checks.passive;
        assert!(passive.enabled);
        assert_eq!(passive.consecutive_failures, 5);
        assert_eq!(passive.base_ejection_time.as_secs(), 30);
        assert_eq!(passive.max_ejection_time.as_secs(), 300);
        assert_eq!(passive.max_ejection_percent, 10);
        assert!(u.health_checks.active.is_none());
        assert_eq!(u.circuit_breakers.max_requests, 1024);
        assert_eq!(u.circuit_breakers.max_connections, 1024);
        assert_eq!(u.circuit_breakers.max_pending_requests, 1024);
        let u: Upstream =
            serde_yaml::from_str("{targets: ['127.0.0.1:1'], health_checks: {active: {}}}")
                .unwrap();
        let active = u.health_checks.active.unwrap();
        assert_eq!(active.path, "/");
        assert!(active.passes(204) && !active.passes(301) && !active.passes(500));
    }

    #[test]
    fn bad_settings_are_named() {
        let found = errors(
            "{targets: ['127.0.0.1:1'], circuit_breakers: {max_requests: 0}, \
              health_checks: {\
                passive: {consecutive_failures: 0, base_ejection_time: 10s, \
                          max_ejection_time: 5s, max_ejection_percent: 150}, \
                active: {type: tcp, path: /x, interval: 1s, timeout: 2s, \
                         healthy_threshold: 0}}}",
        );
        for expected in [
            "upstreams.u.circuit_breakers.max_requests",
            "upstreams.u.health_checks.passive.consecutive_failures",
            "upstreams.u.health_checks.passive.max_ejection_time",
            "upstreams.u.health_checks.passive.max_ejection_percent",
            "upstreams.u.health_checks.active.path: only used with `type: http`",
            "upstreams.u.health_checks.active.timeout: must not be longer than interval",
            "upstreams.u.health_checks.active.healthy_threshold",
        ] {
            assert!(
                found.iter().any(|e| e.starts_with(expected)),
                "{expected} not in {found:?}"
            );
        }
        let found = errors(
            "{targets: ['127.0.0.1:1'], \
              health_checks: {active: {path: health, expected_statuses: [700]}}}",
        );
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(errors("{targets: ['127.0.0.1:1'], health_checks: {active: {}}}").is_empty());
    }
}
