//! `cargo xtask`: the project's own set-up, build, run and test commands.
//! Every command installs what it needs first, idempotently: a second run
//! only checks, and takes seconds.

mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "xgate developer tasks")]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces and Debian packages the build and tests need.
    Setup,
    /// Build everything (the eBPF object is built by gateway-userspace's build script).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run the gateway on examples/quickstart.yaml in front of the demo upstream.
    Run {
        #[arg(long, default_value = "examples/quickstart.yaml")]
        config: PathBuf,
    },
    /// The whole test suite: fmt, clippy, unit and integration tests (run as root for XDP).
    Test,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let root = workspace_root();
    if let Err(e) = std::env::set_current_dir(&root) {
        eprintln!("xtask: cannot enter {}: {e}", root.display());
        return ExitCode::FAILURE;
    }
    let result = match args.task {
        Task::Setup => setup::all(),
        Task::Build { release } => setup::all().and_then(|()| build(release)),
        Task::Run { config } => setup::all().and_then(|()| run(&config)),
        Task::Test => setup::all().and_then(|()| test()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Prints a step header, the way every task reports progress.
pub fn step(text: &str) {
    eprintln!("==> {text}");
}

/// Runs a command, failing with its command line if it fails.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// `cargo SUBCOMMAND --quiet`: progress lines only for what fails.
fn cargo(subcommand: &str) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args([subcommand, "--quiet"]);
    cmd
}

fn build(release: bool) -> Result<()> {
    step(&format!(
        "building the workspace ({})",
        if release { "release" } else { "debug" }
    ));
    let mut cmd = cargo("build");
    cmd.args(["--workspace", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd)
}

fn run(config: &Path) -> Result<()> {
    build(true)?;
    let bin = Path::new("target/release");
    step("starting the demo upstream (xgate-echo on 127.0.0.1:9001)");
    let mut echo = Command::new(bin.join("xgate-echo"))
        .args(["--listen", "127.0.0.1:9001"])
        .spawn()
        .context("cannot start xgate-echo")?;
    step(&format!("starting xgate on {}", config.display()));
    eprintln!("    try:  curl -i localhost:8080/api/hello");
    eprintln!(
        "          ./target/release/xgate -c {} status",
        config.display()
    );
    eprintln!("    stop: Ctrl-C");
    let status = Command::new(bin.join("xgate"))
        .arg("run")
        .arg("--config")
        .arg(config)
        .status();
    let _ = echo.kill();
    let _ = echo.wait();
    let status = status.context("cannot start xgate")?;
    if !status.success() {
        bail!("xgate exited with {status}");
    }
    Ok(())
}

fn test() -> Result<()> {
    step("cargo fmt --check");
    run_cmd(cargo("fmt").args(["--all", "--", "--check"]))?;
    step("cargo clippy --workspace --all-targets -- -D warnings");
    run_cmd(cargo("clippy").args(["--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // The integration tests start the real binaries; build them first.
    build(false)?;
    if !setup::is_root() {
        eprintln!(
            "\n*** NOT ROOT: the XDP and network-namespace tests will be SKIPPED (each says so). \
             Run `cargo xtask test` as root to run them (CI does). ***\n"
        );
    }
    step("cargo test --workspace");
    run_cmd(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())).args([
            "test",
            "--workspace",
            "--no-fail-fast",
        ]),
    )
}
