//! `cargo xtask`: the project's own set-up, build, run and test commands.
//! Every command installs what it needs first, idempotently: a second run
//! only checks, and takes seconds.

mod bench;
mod deb;
mod dist;
mod fuzz;
mod setup;
mod soak;

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
    /// Install the toolchain pieces, Debian packages and npm test dependencies the build and tests need.
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
    /// Build the production binary, target/dist/xgate: release, profile-guided
    /// (an instrumented build, a short training load, then the optimized build).
    Dist,
    /// Build the Debian package (dpkg-deb): binary, systemd unit, /etc/xgate/xgate.yaml,
    /// the xgate user, man pages and completions. See docs/packaging.md.
    Deb {
        /// Which binary to package: production is target/dist/xgate when `cargo xtask dist`
        /// made it, else a release build.
        #[arg(long, value_enum, default_value = "production")]
        binary: deb::Binary,
        /// Where the .deb is written.
        #[arg(long, default_value = "target/deb")]
        out_dir: PathBuf,
    },
    /// Run the benchmarks (as root) and write bench/RESULTS.md and bench/results.json
    Bench {
        /// Scenarios to run (`xgate-bench --help` lists them; `all` runs every one),
        /// and the harness's options (`--rounds 3`, `--only redis-ratelimit-keys`).
        #[arg(
            default_value = "xdp",
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        scenarios: Vec<String>,
    },
    /// Run the fuzz targets in fuzz/ (cargo-fuzz, nightly) for --time seconds
    /// each on one worker; prints executions and findings per target, and
    /// libFuzzer writes crashing inputs to fuzz/artifacts/TARGET/.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Targets to run (default: all, as named in fuzz/fuzz_targets/).
        targets: Vec<String>,
    },
    /// Soak test: xgate (release) under mixed HTTP/1.1 and HTTP/2 traffic for exactly
    /// --minutes, with config reloads (one broken, which must be refused), blocklist churn,
    /// upstream restarts and, as root, a bounded flood against its XDP-attached veth.
    /// Prints requests, status classes, p50/p99, RSS and open files per 10 s window and a
    /// verdict (no unexpected errors, p99 drift, RSS plateau); exits non-zero if it fails.
    /// Ctrl-C stops early and still reports. See docs/reliability.md.
    Soak {
        /// Length of the run in minutes (the lead's reference run: 60).
        #[arg(long, required_unless_present = "seconds")]
        minutes: Option<u64>,
        /// Length in seconds instead (short runs, the driver's own test).
        #[arg(long, hide = true, conflicts_with = "minutes")]
        seconds: Option<u64>,
        /// Requests per second offered, over every protocol and route.
        #[arg(long, default_value_t = 200)]
        rps: u32,
        /// Also write the report (Markdown) to this file.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Build, then attach the XDP program to an interface without a daemon (development; root).
    Attach {
        #[arg(long)]
        iface: String,
        /// Load this config's lists and rate limit (default: an empty rule set).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value = "/sys/fs/bpf/xgate")]
        pin_path: PathBuf,
    },
    /// Detach what `attach` left on an interface.
    Detach {
        #[arg(long)]
        iface: String,
        #[arg(long, default_value = "/sys/fs/bpf/xgate")]
        pin_path: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let root = workspace_root();
    if let Err(e) = std::env::set_current_dir(&root) {
        eprintln!("xtask: cannot enter {}: {e}", root.display());
        return ExitCode::FAILURE;
    }
    let result = match args.task {
        Task::Setup => setup::all().and_then(|()| setup::test_dependencies()),
        Task::Build { release } => setup::all().and_then(|()| build(release)),
        Task::Run { config } => setup::all().and_then(|()| run(&config)),
        Task::Test => setup::all()
            .and_then(|()| setup::test_dependencies())
            .and_then(|()| test()),
        Task::Dist => setup::all().and_then(|()| dist::run().map(drop)),
        Task::Deb { binary, out_dir } => {
            // A release build needs the eBPF toolchain; the debug package
            // (the package test) reuses the binary the tests run.
            let ready = if binary == deb::Binary::Debug {
                Ok(())
            } else {
                setup::all()
            };
            ready
                .and_then(|()| std::fs::create_dir_all(&out_dir).map_err(anyhow::Error::from))
                .and_then(|()| deb::run(binary, &out_dir).map(drop))
        }
        Task::Fuzz { time, targets } => setup::all().and_then(|()| fuzz::run(time, &targets)),
        Task::Soak {
            minutes,
            seconds,
            rps,
            report,
        } => setup::all().and_then(|()| {
            soak::run(soak::Soak {
                minutes,
                seconds,
                rps,
                report,
            })
        }),
        Task::Bench { scenarios } => setup::all().and_then(|()| bench::run(&scenarios)),
        Task::Attach {
            iface,
            config,
            pin_path,
        } => setup::all().and_then(|()| attach(&iface, config.as_deref(), &pin_path)),
        Task::Detach { iface, pin_path } => xgate(&[
            "xdp",
            "detach",
            "--iface",
            &iface,
            "--pin-path",
            &pin_path.display().to_string(),
        ]),
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
pub fn cargo(subcommand: &str) -> Command {
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

/// `xgate xdp attach` from a fresh release build.
fn attach(iface: &str, config: Option<&Path>, pin_path: &Path) -> Result<()> {
    build(true)?;
    let pin = pin_path.display().to_string();
    let mut args = vec!["xdp", "attach", "--iface", iface, "--pin-path", &pin];
    let config = config.map(|c| c.display().to_string());
    if let Some(config) = &config {
        args.extend(["--config", config.as_str()]);
    }
    xgate(&args)
}

/// Runs the release `xgate` binary (built by `attach`; `detach` builds it if missing).
fn xgate(args: &[&str]) -> Result<()> {
    let bin = Path::new("target/release/xgate");
    if !bin.exists() {
        build(true)?;
    }
    run_cmd(Command::new(bin).args(args))
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
