//! The soak driver itself, so that `cargo xtask soak` does not rot: a short
//! real run (about 30 s) of `xgate-bench soak` against the debug xgate, with
//! every kind of periodic event in it, checked through its report. The
//! verdict's rules are unit-tested with synthetic samples in
//! bench/src/soak/verdict.rs.
//!
//! Build the binaries first: `cargo build -p gateway-userspace --bins`.

use std::{path::PathBuf, process::Command};

fn xgate_debug() -> PathBuf {
    let harness = PathBuf::from(env!("CARGO_BIN_EXE_xgate-bench"));
    let xgate = harness.with_file_name("xgate");
    assert!(
        xgate.exists(),
        "{} does not exist: build it first with `cargo build -p gateway-userspace --bins`",
        xgate.display()
    );
    xgate
}

/// The column `name` of the report's table, one value per window.
fn column(report: &str, name: &str) -> Vec<f64> {
    let mut lines = report.lines().skip_while(|l| !l.starts_with("| t (s)"));
    let header: Vec<&str> = lines
        .next()
        .expect("a table")
        .split('|')
        .map(str::trim)
        .collect();
    let at = header.iter().position(|h| *h == name).expect(name);
    lines
        .skip(1)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.split('|')
                .map(str::trim)
                .nth(at)
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

#[test]
fn a_short_soak_runs_every_event_and_passes() {
    let dir = std::env::temp_dir().join(format!("xgate-soak-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("soak.md");
    let out = Command::new(env!("CARGO_BIN_EXE_xgate-bench"))
        .args([
            "soak",
            "--seconds",
            "30",
            "--sample-seconds",
            "5",
            "--cycle-seconds",
            "24",
            "--rps",
            "60",
            // A debug build on a shared machine: trends are not what this
            // test is about (the rules have unit tests).
            "--max-p99-drift",
            "100",
            // Nor is a plateau: in 30 s with two reloads in the last third,
            // warm-up alone moved RSS by 10 MiB on a CI run.
            "--rss-slack-mib",
            "64",
            "--report",
        ])
        .arg(&report)
        .env("XGATE_BENCH_XGATE", xgate_debug())
        .output()
        .expect("run xgate-bench soak");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let written = std::fs::read_to_string(&report).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "soak failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("VERDICT: PASS"), "{stdout}");
    assert_eq!(
        written.trim(),
        stdout.trim(),
        "--report writes the printed report"
    );

    // Six windows of traffic, with the expected refusals counted apart.
    let requests = column(&stdout, "requests");
    assert_eq!(requests.len(), 6, "{stdout}");
    assert!(requests.iter().all(|&r| r > 0.0), "{stdout}");
    let sum = |name| column(&stdout, name).iter().sum::<f64>();
    assert!(
        sum("429 (limit)") > 0.0,
        "the rate limit refused nothing:\n{stdout}"
    );
    assert!(
        sum("401 (no key)") > 0.0,
        "no keyless request was refused:\n{stdout}"
    );
    assert_eq!(sum("unexpected"), 0.0, "{stdout}");
    assert!(
        column(&stdout, "RSS MiB").iter().all(|&m| m > 1.0),
        "{stdout}"
    );
    assert!(column(&stdout, "fds").iter().all(|&f| f > 3.0), "{stdout}");

    // Every event ran, none failed.
    for event in [
        "reload",
        "broken reload",
        "blocklist churn",
        "upstream restart",
    ] {
        assert!(
            stdout.contains(&format!("- {event}: ")) && !stdout.contains("FAILED"),
            "{event}:\n{stdout}"
        );
    }
    assert!(stdout.contains("refused as expected"), "{stdout}");
    let root = gateway_userspace::sys::is_root();
    assert_eq!(
        stdout.contains("- flood: 1 times, 0 failed"),
        root,
        "the flood runs exactly when root:\n{stdout}"
    );
    assert!(stdout.contains("- p99 drift: **pass**"), "{stdout}");
    assert!(stdout.contains("- RSS plateau: **pass**"), "{stdout}");
}
