//! `cargo xtask soak`: release builds of xgate and the harness, then
//! `xgate-bench soak` (bench/src/soak/), which runs for exactly the time
//! asked, prints a table over time and a verdict, and fails when the verdict
//! does. See docs/reliability.md.

use std::{os::unix::process::CommandExt, path::PathBuf, process::Command};

use anyhow::{bail, Result};

use crate::{bench, dist, run_cmd, setup, step};

/// What `cargo xtask soak` was asked for.
pub struct Soak {
    pub minutes: Option<u64>,
    pub seconds: Option<u64>,
    pub rps: u32,
    pub report: Option<PathBuf>,
}

pub fn run(soak: Soak) -> Result<()> {
    let length = match (soak.minutes, soak.seconds) {
        (Some(m), None) => ["--minutes".to_string(), m.to_string()],
        (None, Some(s)) => ["--seconds".to_string(), s.to_string()],
        _ => bail!("give the length of the soak: --minutes N"),
    };
    if setup::is_root() {
        // trafgen for the flood, ip and nsenter for the namespaces.
        bench::debian_packages(&["flood".to_string()])?;
    } else {
        eprintln!(
            "\n******** NOT ROOT: the soak runs without XDP and SKIPS THE FLOOD; \
             run `cargo xtask soak` as root for the full soak ********\n"
        );
    }
    step("building xgate and the harness (release)");
    run_cmd(dist::cargo_release().args([
        "-p",
        "gateway-userspace",
        "--bin",
        "xgate",
        "-p",
        "xgate-bench",
    ]))?;
    let target = dist::target_dir()?;
    let mut harness = Command::new(target.join("release/xgate-bench"));
    harness
        .arg("soak")
        .args(length)
        .args(["--rps", &soak.rps.to_string()])
        .env("XGATE_BENCH_XGATE", target.join("release/xgate"));
    if let Some(report) = &soak.report {
        harness.arg("--report").arg(report);
    }
    step("running the soak (Ctrl-C stops it early and still reports)");
    // The harness replaces this process: Ctrl-C reaches it alone, and its
    // exit status (the verdict) is this command's.
    let error = harness.exec();
    bail!(
        "cannot start {}: {error}",
        target.join("release/xgate-bench").display()
    )
}
