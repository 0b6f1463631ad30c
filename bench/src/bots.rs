//! Scenario `bots`: what bot detection costs per request, in process, with
//! a 1,000-pattern deny list plus the built-in signatures (one compiled
//! regex set): nanoseconds per decision with the decision cache hit, with
//! every agent new (matched, cached, an old entry evicted) and with the
//! cache off (matched every time). The HTTP-level cost against plain
//! proxying is the `policies` scenario's `bot_detection` case.
//!
//! Like the `xdp` scenario, each case runs `repeat`-sized batches (capped,
//! see [`batch`]) timed with a monotonic clock, `rounds` times; the median
//! is reported.

use std::{hint::black_box, time::Instant};

use anyhow::Result;
use gateway_userspace::{
    config::{BotDetection as Config, MissingUserAgent},
    policy::bot_detection::{BotDetection, Decision},
};
use serde_json::json;

use crate::{
    report::{self, Report},
    stats::Samples,
    Settings,
};

pub const DEFAULT_ROUNDS: usize = 11;
/// The user deny list's size.
const PATTERNS: usize = 1_000;
/// Distinct agents the miss cases cycle through (more than the cache
/// holds, so "every agent new" never hits).
const AGENTS: usize = 50_000;
const CACHE_ENTRIES: usize = 10_000;

/// A deny list of `n` patterns in the shapes users write: product tokens
/// with versions, anchored names, alternations, case-insensitive words.
pub fn deny_patterns(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 4 {
            0 => format!("(?i)badtool{i}/[0-9.]+"),
            1 => format!("^crawler-{i}\\b"),
            2 => format!("scan(ner)?-{i}-[a-z]+"),
            _ => format!("(?i)\\bfetch{i}\\b"),
        })
        .collect()
}

/// Browser-like agents, all different, none denied.
fn agents(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            format!(
                "Mozilla/5.0 (X11; Linux x86_64; rv:{}.0) Gecko/20100101 Firefox/{}.{}",
                100 + i % 50,
                100 + i % 50,
                i
            )
            .into_bytes()
        })
        .collect()
}

fn policy(cache_entries: usize) -> Result<BotDetection> {
    BotDetection::new(&Config {
        allow: vec!["^internal-monitor/".into()],
        deny: deny_patterns(PATTERNS),
        builtin: true,
        missing_user_agent: MissingUserAgent::Allow,
        cache_entries,
        status: 403,
        message: "forbidden".into(),
    })
    .map_err(anyhow::Error::msg)
}

/// Decisions per timed batch: `--repeat`, capped so that a round of the
/// slowest case (no cache) stays around a second.
fn batch(settings: &Settings) -> usize {
    (settings.repeat as usize).clamp(1, 200_000)
}

/// Nanoseconds per decision over `count` decisions of `agent(i)`.
fn time(
    policy: &BotDetection,
    count: usize,
    agent: impl Fn(usize) -> usize,
    agents: &[Vec<u8>],
) -> f64 {
    let started = Instant::now();
    for i in 0..count {
        black_box(policy.decide(black_box(&agents[agent(i)])));
    }
    started.elapsed().as_nanos() as f64 / count as f64
}

pub fn run(settings: &Settings) -> Result<Report> {
    let rounds = settings.rounds_or(DEFAULT_ROUNDS);
    let started = report::utc_now();
    let count = batch(settings);
    let compile = Instant::now();
    let cached = policy(CACHE_ENTRIES)?;
    let compile_ms = compile.elapsed().as_secs_f64() * 1e3;
    let uncached = policy(0)?;
    let agents = agents(AGENTS);
    // The set is right before it is timed.
    assert_eq!(
        cached.decide(b"x badtool0/1.2"),
        uncached.decide(b"x badtool0/1.2")
    );
    assert!(matches!(
        uncached.decide(b"sqlmap/1.7"),
        Decision::Denied(_)
    ));
    assert_eq!(uncached.decide(&agents[7]), Decision::Pass);

    let mut hit = Samples::default();
    let mut new_agent = Samples::default();
    let mut no_cache = Samples::default();
    let mut offset = 0;
    for _ in 0..rounds {
        // Warm: the agent is in the cache, the lazy DFA has its states.
        cached.decide(&agents[0]);
        hit.push(time(&cached, count, |_| 0, &agents));
        new_agent.push(time(&cached, count, |i| (offset + i) % AGENTS, &agents));
        offset += count;
        no_cache.push(time(&uncached, count, |i| i % AGENTS, &agents));
    }
    let cases = [
        ("hit", "cache hit (the agent seen before)", &hit),
        (
            "miss",
            "cache miss (every agent new: matched, cached, one evicted)",
            &new_agent,
        ),
        ("no_cache", "cache off (matched every time)", &no_cache),
    ];
    let mut md = String::from("## Bot detection per request (`xgate-bench bots`)\n\n");
    md.push_str(&format!(
        "Run {started}. In process: one `bot-detection` policy with {PATTERNS} deny patterns, \
         one allow pattern and the built-in signatures compiled into one regex set \
         ({compile_ms:.0} ms to compile); browser agents of about 80 bytes, none denied; \
         {count} decisions per measurement, {rounds} measurements, medians. The cache holds \
         {CACHE_ENTRIES} agents; the miss case cycles through {AGENTS}.\n\n\
         | case | ns per request (median) | min-max |\n|---|---:|---:|\n"
    ));
    for (_, title, samples) in &cases {
        md.push_str(&format!(
            "| {title} | {:.0} | {:.0}-{:.0} |\n",
            samples.median(),
            samples.min(),
            samples.max()
        ));
    }
    let json = json!({
        "date": started,
        "machine": report::machine(),
        "rounds": rounds,
        "decisions_per_round": count,
        "deny_patterns": PATTERNS,
        "compile_ms": compile_ms,
        "cache_entries": CACHE_ENTRIES,
        "distinct_agents": AGENTS,
        "cases": cases.iter().map(|(id, title, s)| json!({
            "case": id,
            "title": title,
            "ns_per_request_median": s.median(),
            "min": s.min(),
            "max": s.max(),
        })).collect::<Vec<_>>(),
    });
    Ok(Report {
        scenario: "bots",
        json,
        markdown: md,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_benchmark_policy_compiles_and_decides() {
        let p = policy(100).unwrap();
        assert_eq!(deny_patterns(PATTERNS).len(), PATTERNS);
        assert!(matches!(p.decide(b"crawler-1 x"), Decision::Denied(_)));
        assert!(matches!(p.decide(b"x SCAN-2-abc"), Decision::Pass));
        assert!(matches!(p.decide(b"x scanner-2-abc"), Decision::Denied(_)));
        assert!(matches!(
            p.decide(b"internal-monitor/2 sqlmap"),
            Decision::Allowed(0)
        ));
        for agent in agents(100) {
            assert_eq!(p.decide(&agent), Decision::Pass);
        }
    }
}
