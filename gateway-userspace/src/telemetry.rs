//! Logging set-up and the process-wide counters exported on /metrics.

use std::{
    fmt::Write as _,
    io::IsTerminal,
    sync::atomic::{AtomicU64, Ordering},
};

use gateway_common::Stat;
use tracing_subscriber::EnvFilter;

use crate::xdp::Counters;

/// Logs to stderr; `RUST_LOG` overrides the default `info` level.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

#[derive(Debug, Default)]
pub struct Metrics {
    l7_denied_connections: AtomicU64,
    reloads: AtomicU64,
}

impl Metrics {
    pub fn reloaded(&self) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    pub fn l7_denied_connection(&self) {
        self.l7_denied_connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn l7_denied_connections(&self) -> u64 {
        self.l7_denied_connections.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition format.
    pub fn render(&self, xdp: Option<&Counters>) -> String {
        let mut out = String::new();
        out.push_str("# HELP xgate_l7_denied_connections_total Connections closed at accept because the source is on the blocklist.\n");
        out.push_str("# TYPE xgate_l7_denied_connections_total counter\n");
        let _ = writeln!(
            out,
            "xgate_l7_denied_connections_total {}",
            self.l7_denied_connections()
        );
        if let Some(counters) = xdp {
            out.push_str("# HELP xgate_xdp_packets_total Packets seen by the XDP program, by verdict and reason.\n");
            out.push_str("# TYPE xgate_xdp_packets_total counter\n");
            for stat in Stat::ALL {
                let verdict = if stat.dropped() { "drop" } else { "pass" };
                let _ = writeln!(
                    out,
                    "xgate_xdp_packets_total{{verdict=\"{verdict}\",reason=\"{}\"}} {}",
                    stat.name(),
                    counters.get(stat)
                );
            }
        }
        out
    }
}
