//! `cargo xtask fuzz --time N [TARGET...]`: builds the cargo-fuzz targets in
//! fuzz/ (nightly, address sanitizer, debug assertions) and runs each for N
//! seconds on one worker, starting from fuzz/seeds/TARGET and the corpus
//! kept in fuzz/corpus/TARGET. Prints executions and findings per target;
//! libFuzzer writes crashing inputs to fuzz/artifacts/TARGET/.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{run_cmd, step};

/// What the fuzzer may use per input before it counts as a finding.
const INPUT_TIMEOUT_SECS: u32 = 10;
const RSS_LIMIT_MB: u32 = 2048;

struct Outcome {
    target: String,
    seconds: u64,
    executions: Option<u64>,
    finding: Option<String>,
}

pub fn run(time: u64, requested: &[String]) -> Result<()> {
    if time == 0 {
        bail!("--time must be at least 1 second");
    }
    let all = targets()?;
    let chosen: Vec<String> = if requested.is_empty() {
        all.clone()
    } else {
        for name in requested {
            if !all.contains(name) {
                bail!("no fuzz target {name:?}; the targets: {}", all.join(", "));
            }
        }
        requested.to_vec()
    };
    cargo_fuzz()?;
    step("building the fuzz targets (nightly, address sanitizer, debug assertions)");
    run_cmd(&mut fuzz_command(&["build", "-a"]))?;
    let mut outcomes = Vec::new();
    for target in &chosen {
        outcomes.push(fuzz_one(target, time)?);
    }
    println!();
    println!(
        "{:<20} {:>8} {:>14} {:>10}  finding",
        "target", "seconds", "executions", "exec/s"
    );
    for o in &outcomes {
        let executions = o.executions.map_or("?".into(), |n| n.to_string());
        let rate = o
            .executions
            .map_or("?".into(), |n| (n / o.seconds.max(1)).to_string());
        println!(
            "{:<20} {:>8} {:>14} {:>10}  {}",
            o.target,
            o.seconds,
            executions,
            rate,
            o.finding.as_deref().unwrap_or("none")
        );
    }
    let found = outcomes.iter().filter(|o| o.finding.is_some()).count();
    if found > 0 {
        bail!("{found} target(s) found a crash: see fuzz/artifacts/");
    }
    Ok(())
}

/// The targets, by the file names in fuzz/fuzz_targets.
fn targets() -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir("fuzz/fuzz_targets")
        .context("reading fuzz/fuzz_targets")?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            (path.extension()? == "rs").then(|| path.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    names.sort();
    Ok(names)
}

/// Installs cargo-fuzz if it is missing.
fn cargo_fuzz() -> Result<()> {
    let present = Command::new("cargo-fuzz")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        step("cargo-fuzz: present");
        return Ok(());
    }
    step("installing cargo-fuzz");
    run_cmd(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

/// `cargo fuzz ARGS` with nightly, building into fuzz/target (never the
/// workspace's target: other flags, other toolchain).
fn fuzz_command(args: &[&str]) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz"]).args(args);
    // What `cargo xtask` itself was started with must not leak into the
    // nightly build.
    for key in [
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(key);
    }
    cmd.env(
        "CARGO_TARGET_DIR",
        Path::new("fuzz/target")
            .canonicalize()
            .unwrap_or_else(|_| PathBuf::from("fuzz/target")),
    );
    cmd
}

fn fuzz_one(target: &str, time: u64) -> Result<Outcome> {
    step(&format!("fuzzing {target} for {time} s"));
    let corpus = PathBuf::from("fuzz/corpus").join(target);
    let artifacts = PathBuf::from("fuzz/artifacts").join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    fs::create_dir_all(&artifacts).with_context(|| format!("creating {}", artifacts.display()))?;
    let log = artifacts.join("last-run.log");
    let log_file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let seeds = format!("fuzz/seeds/{target}");
    let options = [
        format!("-max_total_time={time}"),
        format!("-timeout={INPUT_TIMEOUT_SECS}"),
        format!("-rss_limit_mb={RSS_LIMIT_MB}"),
        "-print_final_stats=1".to_string(),
    ];
    let mut args = vec![
        "run",
        "-a",
        target,
        corpus.to_str().expect("UTF-8 path"),
        &seeds,
        "--",
    ];
    args.extend(options.iter().map(String::as_str));
    let started = Instant::now();
    let status = fuzz_command(&args)
        .stdout(Stdio::null())
        .stderr(log_file)
        .status()
        .context("cannot start cargo fuzz")?;
    let seconds = started.elapsed().as_secs();
    let text = fs::read_to_string(&log).unwrap_or_default();
    let executions = text
        .lines()
        .find_map(|line| line.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok());
    let written = text.lines().find_map(|line| {
        line.split("Test unit written to ")
            .nth(1)
            .map(|path| path.trim().to_string())
    });
    let finding = match (status.success(), written) {
        (true, _) => None,
        (false, Some(path)) => Some(format!("crash, input in {path} (log: {})", log.display())),
        (false, None) => Some(format!("failed ({status}); log: {}", log.display())),
    };
    Ok(Outcome {
        target: target.to_string(),
        seconds,
        executions,
        finding,
    })
}
