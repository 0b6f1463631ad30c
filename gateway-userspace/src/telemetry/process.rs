//! The process's own metrics under the names every Prometheus client
//! library exports (`process_*`, no `xgate_` prefix, so the usual
//! dashboards and alerts work as they are), read from /proc when scraped,
//! and `xgate_build_info`.

use std::{fmt::Write, time::SystemTime};

/// The version and, when the build knew it, the commit.
pub fn render_build_info(out: &mut String) {
    out.push_str("# HELP xgate_build_info The running build: version and commit; always 1.\n");
    out.push_str("# TYPE xgate_build_info gauge\n");
    let version = env!("CARGO_PKG_VERSION");
    match option_env!("XGATE_COMMIT") {
        Some(commit) => {
            let _ = writeln!(
                out,
                "xgate_build_info{{version=\"{version}\",commit=\"{commit}\"}} 1"
            );
        }
        None => {
            let _ = writeln!(out, "xgate_build_info{{version=\"{version}\"}} 1");
        }
    }
}

/// Resident memory, CPU time, open and maximum file descriptors, start
/// time. A value /proc does not give is left out, never made up.
pub fn render(out: &mut String, started: SystemTime) {
    // OpenMetrics, as the registry writes: a counter family's name has no
    // `_total`, its sample has.
    let mut family = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(value) = value {
            let sample = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{sample} {value}\n"
            );
        }
    };
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    // Fields after the command (which may hold spaces), from `state` on.
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    let (ticks, page) = crate::sys::proc_units();
    let (ticks, page) = (ticks as f64, page as f64);
    // proc(5): utime is field 14, stime 15, rss 24 (pages).
    let cpu = field(14)
        .zip(field(15))
        .filter(|_| ticks > 0.0)
        .map(|(user, system)| (user + system) / ticks);
    family(
        "process_cpu_seconds",
        "counter",
        "User and system CPU time spent, in seconds.",
        cpu,
    );
    family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size, in bytes.",
        field(24).map(|pages| pages * page),
    );
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|dir| dir.count() as f64);
    family(
        "process_open_fds",
        "gauge",
        "Open file descriptors.",
        open_fds,
    );
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|soft| soft.parse::<f64>().ok())
        });
    family(
        "process_max_fds",
        "gauge",
        "The limit on open file descriptors (soft).",
        max_fds,
    );
    let start = started
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs_f64());
    family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process, in seconds since the Unix epoch.",
        start,
    );
}
