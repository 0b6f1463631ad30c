//! Results on disk: `bench/results.json` and `bench/RESULTS.md`, rewritten on
//! every run. Each scenario owns one entry in the JSON (`scenarios.<name>`)
//! and one marked section in the Markdown; a run replaces the sections of the
//! scenarios it ran and keeps the others, so scenarios can be run one at a
//! time.
#![allow(unsafe_code)]

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

/// One scenario's results.
pub struct Report {
    pub scenario: &'static str,
    pub json: Value,
    pub markdown: String,
}

/// Where results go: `bench/` next to this crate's manifest, unless
/// `XGATE_BENCH_OUT` names another directory.
pub fn out_dir() -> PathBuf {
    std::env::var_os("XGATE_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Facts about the machine every report carries.
pub fn machine() -> Value {
    // Online CPUs, not this thread's affinity (the harness pins itself).
    // SAFETY: sysconf has no preconditions.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(0);
    let kernel = read_trimmed("/proc/sys/kernel/osrelease");
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    json!({
        "cores": cores,
        "kernel": kernel,
        "cpu": cpu,
        "bpf_jit_enable": read_trimmed("/proc/sys/net/core/bpf_jit_enable"),
    })
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Now, UTC, as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

const MD_HEADER: &str = "# Benchmark results\n\n\
Written by `cargo xtask bench` (the `xgate-bench` harness); do not edit by hand: \
every run rewrites the sections of the scenarios it ran. Raw numbers: \
[results.json](results.json).\n";

fn begin_marker(scenario: &str) -> String {
    format!("<!-- scenario:{scenario} -->")
}

fn end_marker(scenario: &str) -> String {
    format!("<!-- /scenario:{scenario} -->")
}

/// Writes `reports` into `dir`, keeping other scenarios' earlier results.
pub fn write(dir: &Path, reports: &[Report]) -> Result<(PathBuf, PathBuf)> {
    let json_path = dir.join("results.json");
    let md_path = dir.join("RESULTS.md");

    let mut scenarios: Map<String, Value> = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| v.get("scenarios").and_then(Value::as_object).cloned())
        .unwrap_or_default();
    for report in reports {
        scenarios.insert(report.scenario.to_string(), report.json.clone());
    }
    let doc = json!({
        "note": "written by `cargo xtask bench`; one entry per scenario, each with its own date and machine",
        "scenarios": scenarios,
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("write {}", json_path.display()))?;

    let old = std::fs::read_to_string(&md_path).unwrap_or_default();
    let mut sections: Vec<(String, String)> = scenarios
        .keys()
        .filter(|name| !reports.iter().any(|r| r.scenario == name.as_str()))
        .filter_map(|name| section(&old, name).map(|s| (name.clone(), s)))
        .collect();
    for report in reports {
        sections.push((report.scenario.to_string(), report.markdown.clone()));
    }
    sections.sort_by(|a, b| a.0.cmp(&b.0));
    let mut md = String::from(MD_HEADER);
    for (name, body) in sections {
        md.push('\n');
        md.push_str(&begin_marker(&name));
        md.push('\n');
        md.push_str(body.trim_matches('\n'));
        md.push('\n');
        md.push_str(&end_marker(&name));
        md.push('\n');
    }
    std::fs::write(&md_path, md).with_context(|| format!("write {}", md_path.display()))?;
    Ok((md_path, json_path))
}

/// The body of `scenario`'s marked section in `md`.
fn section(md: &str, scenario: &str) -> Option<String> {
    let begin = begin_marker(scenario);
    let start = md.find(&begin)? + begin.len();
    let len = md[start..].find(&end_marker(scenario))?;
    Some(md[start..start + len].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_767_225_599), "2025-12-31T23:59:59Z");
    }

    #[test]
    fn sections_of_other_scenarios_survive_a_rewrite() {
        let tmp = xgate_tests::TempDir::new("bench-report");
        let dir = tmp.path();
        let report = |name: &'static str, text: &str| Report {
            scenario: name,
            json: json!({ "text": text }),
            markdown: format!("## {name}\n\n{text}\n"),
        };
        write(dir, &[report("xdp", "one"), report("http", "two")]).unwrap();
        write(dir, &[report("xdp", "three")]).unwrap();
        let md = std::fs::read_to_string(dir.join("RESULTS.md")).unwrap();
        assert!(md.contains("three") && md.contains("two") && !md.contains("one"));
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap())
                .unwrap();
        assert_eq!(json["scenarios"]["http"]["text"], "two");
        assert_eq!(json["scenarios"]["xdp"]["text"], "three");
    }
}
