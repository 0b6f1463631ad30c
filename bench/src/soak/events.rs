//! The soak's periodic events, run one after another on their own thread
//! while the traffic flows: valid reloads, a broken reload that must be
//! refused while the old config keeps serving, blocklist churn through the
//! CLI, an upstream target killed and restarted, and (root only) a bounded
//! flood against the XDP-attached veth.

use std::{
    fmt,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use super::{traffic::Shared, Lab};
use crate::sys::Spawned;

/// How long a killed upstream target stays down.
const TARGET_DOWN: Duration = Duration::from_secs(4);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A valid reload that changes the rate limit.
    Reload,
    /// A reload with a config validation refuses.
    BrokenReload,
    /// Blocklist entries added and removed through the CLI.
    Blocklist,
    /// One of the pool's two targets killed, then restarted.
    UpstreamRestart,
    /// A bounded trafgen flood from the denied range (root only).
    Flood,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Event::Reload => "reload",
            Event::BrokenReload => "broken reload",
            Event::Blocklist => "blocklist churn",
            Event::UpstreamRestart => "upstream restart",
            Event::Flood => "flood",
        })
    }
}

/// Where in each cycle (as a share of its length) each event runs: the
/// blocklist every sixth of a cycle, the rest once (reload twice).
const CYCLE: &[(f64, Event)] = &[
    (0.08, Event::Blocklist),
    (0.20, Event::Reload),
    (0.25, Event::Blocklist),
    (0.33, Event::UpstreamRestart),
    (0.42, Event::Blocklist),
    (0.55, Event::BrokenReload),
    (0.58, Event::Blocklist),
    (0.67, Event::Flood),
    (0.75, Event::Blocklist),
    (0.83, Event::Reload),
    (0.92, Event::Blocklist),
];

/// The events of a run of `total`, with their offsets from its start.
pub fn schedule(cycle: Duration, total: Duration, flood: bool) -> Vec<(Duration, Event)> {
    let mut out = Vec::new();
    let mut base = Duration::ZERO;
    while base < total {
        for &(at, event) in CYCLE {
            let when = base + cycle.mul_f64(at);
            if when < total && (flood || event != Event::Flood) {
                out.push((when, event));
            }
        }
        base += cycle;
    }
    out
}

/// One event as it happened.
pub struct Record {
    pub at_s: f64,
    pub event: Event,
    pub result: Result<String>,
}

/// Runs the schedule until it ends or `shared.stop`; returns what happened.
pub fn run(
    lab: &Lab,
    target_b: &mut Option<Spawned>,
    shared: &Shared,
    plan: &[(Duration, Event)],
) -> Vec<Record> {
    let mut records = Vec::new();
    let mut reloads = 0u32;
    let mut blocklist = 0u32;
    for &(when, event) in plan {
        while shared.started.elapsed() < when {
            if shared.stop.load(std::sync::atomic::Ordering::Relaxed) {
                return records;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Late (a slow event before it) past the end: not run.
        if shared.stop.load(std::sync::atomic::Ordering::Relaxed) {
            return records;
        }
        let at_s = shared.started.elapsed().as_secs_f64();
        let result = match event {
            Event::Reload => {
                reloads += 1;
                reload(lab, lab.limit + reloads % 2)
            }
            Event::BrokenReload => broken_reload(lab),
            Event::Blocklist => {
                blocklist += 1;
                blocklist_churn(lab, blocklist)
            }
            Event::UpstreamRestart => upstream_restart(lab, target_b, shared),
            Event::Flood => flood(lab),
        };
        let shown = match &result {
            Ok(text) => text.clone(),
            Err(e) => format!("FAILED: {e:#}"),
        };
        eprintln!("soak: {at_s:6.1} s  {event}: {shown}");
        records.push(Record {
            at_s,
            event,
            result,
        });
    }
    records
}

fn reload(lab: &Lab, limit: u32) -> Result<String> {
    lab.write_config(&super::config::render(&lab.params(limit)))?;
    lab.cli(&["reload"]).context("a valid reload failed")?;
    Ok(format!("accepted (rate limit now {limit}/s)"))
}

fn broken_reload(lab: &Lab) -> Result<String> {
    let good = std::fs::read_to_string(&lab.config)?;
    lab.write_config(&super::config::broken(&lab.params(lab.limit)))?;
    let refused = lab.cli(&["reload"]);
    // The file goes back to the running config whatever happened, so the
    // next reload starts from it.
    std::fs::write(&lab.config, good)?;
    let Err(e) = refused else {
        bail!("a config naming an unknown upstream was accepted");
    };
    let message = format!("{e:#}");
    ensure!(
        message.contains("no-such-upstream"),
        "refused, but the error does not name the bad upstream: {message}"
    );
    // Still serving the previous config.
    let status = lab
        .cli(&["status"])
        .context("status after the refused reload")?;
    Ok(format!(
        "refused as expected; still serving ({})",
        status.stdout.lines().next().unwrap_or("").trim()
    ))
}

/// Adds two entries (one with a TTL, left to expire), removes the one the
/// previous churn added.
fn blocklist_churn(lab: &Lab, n: u32) -> Result<String> {
    let entry = |i: u32| format!("203.0.113.{}/32", i % 250 + 1);
    let expiring = format!("198.51.100.{}/32", n % 250 + 1);
    lab.cli(&["blocklist", "add", &entry(n), "--reason", "soak churn"])?;
    lab.cli(&[
        "blocklist",
        "add",
        &expiring,
        "--ttl",
        "15s",
        "--reason",
        "soak ttl",
    ])
    .or_else(|e| {
        // The same address from an earlier cycle may still be listed.
        if format!("{e:#}").contains("already") {
            Ok(crate::sys::Output {
                stdout: String::new(),
                stderr: String::new(),
            })
        } else {
            Err(e)
        }
    })?;
    let mut removed = String::new();
    if n > 1 {
        lab.cli(&["blocklist", "rm", &entry(n - 1)])?;
        removed = format!(", removed {}", entry(n - 1));
    }
    let listed = lab.cli(&["blocklist", "ls", "--json"])?;
    ensure!(
        listed.stdout.contains(&entry(n).replace("/32", "")),
        "{} is not in `blocklist ls --json` after adding it",
        entry(n)
    );
    Ok(format!(
        "added {} and {expiring} (ttl 15s){removed}",
        entry(n)
    ))
}

fn upstream_restart(lab: &Lab, target_b: &mut Option<Spawned>, shared: &Shared) -> Result<String> {
    shared.restarts.open();
    let result = (|| {
        drop(target_b.take());
        let down = Instant::now();
        while down.elapsed() < TARGET_DOWN
            && !shared.stop.load(std::sync::atomic::Ordering::Relaxed)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        *target_b = Some(lab.start_upstream(1)?);
        Ok(format!(
            "{} killed, restarted after {:.1} s",
            lab.targets[1],
            down.elapsed().as_secs_f64()
        ))
    })();
    shared.restarts.close();
    result
}

fn flood(lab: &Lab) -> Result<String> {
    let Some(flood) = &lab.flood else {
        bail!("no flood lab (not root)");
    };
    let before = lab.denied_counter()?;
    let (sent, seconds) = flood.run()?;
    // The counters are summed from per-CPU maps when status asks.
    let after = lab.denied_counter()?;
    let dropped = after.saturating_sub(before);
    ensure!(
        dropped > 0,
        "XDP dropped none of the {sent} flood packets from {}",
        super::config::DENY_CIDR
    );
    ensure!(sent > 0, "trafgen sent nothing");
    Ok(format!(
        "{sent} packets in {seconds:.1} s from {}; XDP dropped {dropped}",
        super::config::DENY_CIDR
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_runs_in_a_cycle() {
        let plan = schedule(Duration::from_secs(60), Duration::from_secs(60), true);
        for event in [
            Event::Reload,
            Event::BrokenReload,
            Event::Blocklist,
            Event::UpstreamRestart,
            Event::Flood,
        ] {
            assert!(plan.iter().any(|(_, e)| *e == event), "{event} missing");
        }
        assert!(plan.windows(2).all(|w| w[0].0 < w[1].0), "in time order");
        let no_flood = schedule(Duration::from_secs(60), Duration::from_secs(600), false);
        assert!(!no_flood.iter().any(|(_, e)| *e == Event::Flood));
        assert_eq!(no_flood.len(), 10 * (CYCLE.len() - 1));
    }
}
