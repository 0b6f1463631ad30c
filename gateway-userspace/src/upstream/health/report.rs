//! An upstream's health as the operator sees it: each target's state and
//! why (`GET /upstreams`, `xgate upstreams`), and the series on /metrics,
//! made from the live state so that a target removed by a reload takes its
//! series with it.

use std::{
    fmt::Write,
    sync::atomic::Ordering,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{passive, Availability, Forced, Health, TargetHealth};

/// `GET /upstreams`: one upstream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpstreamStatus {
    pub name: String,
    /// The circuit breakers: `max_requests`, `max_connections`,
    /// `max_pending_requests`.
    pub limits: Vec<LimitStatus>,
    pub targets: Vec<TargetStatus>,
}

/// One circuit breaker limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LimitStatus {
    pub limit: String,
    /// What it counts now (requests in flight, open connections, connects
    /// under way), and its maximum.
    pub now: usize,
    pub max: usize,
    /// Requests refused at once because it was reached.
    pub shed: u64,
}

/// One target's state and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetStatus {
    pub target: String,
    /// `healthy`, `ejected`, `probing`, `unhealthy` (failing active checks),
    /// `forced_up` or `forced_down`.
    pub state: String,
    /// Whether the balancer sends requests to it (when no target does,
    /// those not forced down still get them).
    pub takes_traffic: bool,
    pub reason: String,
    /// Until when an ejection lasts (HTTP date).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejected_until: Option<String>,
    /// Passive failures in a row now.
    pub consecutive_failures: u32,
    pub ejections: u64,
    pub failed_checks: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced: Option<Forced>,
}

impl Health {
    /// Every target's state now.
    pub fn statuses(&self) -> Vec<TargetStatus> {
        let now = Instant::now();
        self.targets()
            .iter()
            .map(|target| self.status(target, now))
            .collect()
    }

    fn status(&self, target: &TargetHealth, now: Instant) -> TargetStatus {
        let availability = target.availability(now, self.passive.as_ref());
        let state = target.lock();
        let checks = if self.active.is_some() {
            "passes its health checks"
        } else {
            "no failures in a row"
        };
        let mut ejected_until = None;
        let (name, reason) = match (state.forced, state.passive.state()) {
            (Some(Forced::Down), _) => ("forced_down", "forced down by the operator".to_string()),
            (Some(Forced::Up), _) => ("forced_up", "forced up by the operator".to_string()),
            (None, _) if !state.active.healthy => (
                "unhealthy",
                format!(
                    "failing active health checks ({} in a row; last: {})",
                    state.active.failures(),
                    state.active.last_error.as_deref().unwrap_or("-")
                ),
            ),
            (None, passive::State::Ejected { until, after, last }) => {
                let left = until.saturating_duration_since(now);
                let date = httpdate::fmt_http_date(SystemTime::now() + left);
                let reason = format!(
                    "ejected until {date} ({}s more) after {after} consecutive {}",
                    ceil_secs(left),
                    last.describe()
                );
                ejected_until = Some(date);
                ("ejected", reason)
            }
            (None, passive::State::Probing { .. }) => (
                "probing",
                "ejection over: the next request (or a passing check) decides".to_string(),
            ),
            (None, passive::State::Serving) => ("healthy", checks.to_string()),
        };
        TargetStatus {
            target: target.addr.to_string(),
            state: name.to_string(),
            takes_traffic: availability == Availability::Up,
            reason,
            ejected_until,
            consecutive_failures: state.passive.consecutive(),
            ejections: target.ejections.load(Ordering::Relaxed),
            failed_checks: target.checks_failed.load(Ordering::Relaxed),
            forced: state.forced,
        }
    }
}

/// The upstream series of /metrics for `upstreams` (Prometheus text, no
/// `# EOF`).
pub fn render(upstreams: &[UpstreamStatus], out: &mut String) {
    type Value = fn(&TargetStatus) -> u64;
    let families: [(&str, &str, &str, Value); 3] = [
        (
            "upstream_target_healthy",
            "gauge",
            "1 when the target takes traffic, 0 when it is ejected, failing its checks or forced down",
            |t| u64::from(t.takes_traffic),
        ),
        (
            "upstream_target_ejections",
            "counter",
            "Times passive health (outlier detection) ejected the target",
            |t| t.ejections,
        ),
        (
            "upstream_target_failed_health_checks",
            "counter",
            "Active health checks of the target that failed",
            |t| t.failed_checks,
        ),
    ];
    for (name, kind, help, value) in families {
        let suffix = if kind == "counter" { "_total" } else { "" };
        let _ = writeln!(out, "# HELP xgate_{name} {help}.");
        let _ = writeln!(out, "# TYPE xgate_{name} {kind}");
        for upstream in upstreams {
            for target in &upstream.targets {
                let _ = writeln!(
                    out,
                    "xgate_{name}{suffix}{{upstream=\"{}\",target=\"{}\"}} {}",
                    escape(&upstream.name),
                    target.target,
                    value(target)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP xgate_upstream_circuit_breaker What each circuit breaker limit counts now (requests in flight, open connections, connects under way).\n\
         # TYPE xgate_upstream_circuit_breaker gauge"
    );
    for upstream in upstreams {
        for limit in &upstream.limits {
            let _ = writeln!(
                out,
                "xgate_upstream_circuit_breaker{{upstream=\"{}\",limit=\"{}\"}} {}",
                escape(&upstream.name),
                limit.limit,
                limit.now
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP xgate_upstream_shed_requests Requests refused with 503 at once because a circuit breaker limit was reached.\n\
         # TYPE xgate_upstream_shed_requests counter"
    );
    for upstream in upstreams {
        for limit in &upstream.limits {
            let _ = writeln!(
                out,
                "xgate_upstream_shed_requests_total{{upstream=\"{}\",limit=\"{}\"}} {}",
                escape(&upstream.name),
                limit.limit,
                limit.shed
            );
        }
    }
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Whole seconds, rounded up (an ejection "0s more" would read as over).
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}
