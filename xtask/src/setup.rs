//! Toolchain pieces and packages a fresh machine lacks (see TOOLCHAIN notes
//! in the README): rust-src for nightly, bpf-linker built against the LLVM
//! inside the nightly toolchain, the Debian packages the tests use, and the
//! npm packages of the identity providers the oidc tests run (`tests/idp`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{run_cmd, step};

/// bpf-linker release known to work with nightly 1.97's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Commands the build and the tests run, and the Debian package that
/// provides each.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("mount", "mount"),
    // Linking, and mimalloc's C sources.
    ("cc", "gcc"),
    // The shared rate limits and cluster-wide lists are tested against a
    // real Redis.
    ("redis-server", "redis-server"),
    // Upstream targets by DNS name are tested against a real DNS server
    // (the binary alone: dnsmasq-base has no service that would start).
    ("dnsmasq", "dnsmasq-base"),
    // The live-frames flood generator's test reads veth's XDP counters.
    ("ethtool", "ethtool"),
    // The service tests: the unit is checked with `systemd-analyze verify`,
    // the daemon runs unprivileged under setpriv, and on a terminal (script).
    ("systemd-analyze", "systemd"),
    ("setpriv", "util-linux"),
    ("script", "bsdutils"),
    // The JSON Schema of the config is checked with a real validator, run
    // by Debian's python3 (a pyenv or venv python on PATH may lack it): an
    // absolute path is checked as it is.
    (
        "/usr/lib/python3/dist-packages/jsonschema/__init__.py",
        "python3-jsonschema",
    ),
    // /metrics is checked by Prometheus's own linter.
    ("promtool", "prometheus"),
    // The package test unpacks the .deb it builds.
    ("dpkg-deb", "dpkg"),
    // The status page is loaded in a real browser, headless.
    ("chromium", "chromium"),
];

/// Node.js the npm test dependencies need: oauth2-mock-server 8.2.3 and
/// oidc-provider 9 both declare `^20.19 || ^22.12 || ^24`.
const NODE_MIN: (u32, u32) = (20, 19);
/// Where the npm test dependencies live (package.json + lock file).
const NPM_DIR: &str = "tests/idp";
/// Written into node_modules after an install: a copy of the lock file it
/// was installed from, so an unchanged lock installs nothing.
const NPM_STAMP: &str = "node_modules/.xgate-installed-lock.json";

pub fn all() -> Result<()> {
    nightly()?;
    rust_src()?;
    bpf_linker()?;
    debian_packages()?;
    Ok(())
}

/// What only the tests need: Node.js and the npm packages in `tests/idp`.
pub fn test_dependencies() -> Result<()> {
    node()?;
    npm_packages()
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is required (the eBPF half builds with a nightly toolchain)")?;
    if toolchains.lines().any(|l| l.starts_with("nightly")) {
        step("nightly toolchain: present");
        return Ok(());
    }
    step("installing the nightly toolchain (minimal profile)");
    run_cmd(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
    ]))
}

fn rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        step("rust-src (nightly): present");
        return Ok(());
    }
    step("installing rust-src for nightly (build-std needs it)");
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// The LLVM directory bpf-linker is linked against (it keeps an rpath to it,
/// so it must outlive the install: not a temporary directory).
fn llvm_dir() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(Path::new(&home).join(".local/share/xgate/llvm"))
}

fn bpf_linker() -> Result<()> {
    let works = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
        .unwrap_or(false);
    if works {
        step(&format!("bpf-linker {BPF_LINKER_VERSION}: present"));
        return Ok(());
    }
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM (about a minute on 2 cores)"
    ));
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let prefix = llvm_dir()?;
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    // `libLLVM.so` is what bpf-linker's build links against; the versioned
    // name is its soname, found through the rpath when bpf-linker runs
    // outside `rustup run nightly` (which would otherwise supply it).
    let soname = libllvm.file_name().expect("file name");
    for name in [std::ffi::OsStr::new("libLLVM.so"), soname] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)?;
    }
    let major = libllvm
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libLLVM.so."))
        .and_then(|v| v.split('.').next())
        .context("cannot read LLVM's major version")?
        .to_string();
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "--quiet",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
            ])
            .args(["--features", &format!("llvm-{major}")])
            .env("LLVM_PREFIX", &prefix),
    )
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(command, _)| !on_path(command))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        step("Debian packages: present");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {}; install them with: sudo apt-get install -y {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Whether `command` is on PATH (an absolute path: whether that file exists).
fn on_path(command: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(command).is_file()))
        .unwrap_or(false)
}

fn node() -> Result<()> {
    let missing: Vec<&str> = [("node", "nodejs"), ("npm", "npm")]
        .iter()
        .filter(|(command, _)| !on_path(command))
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!(
                "the oidc tests need Node.js {}.{}+ and npm; install them (sudo apt-get install -y {})",
                NODE_MIN.0,
                NODE_MIN.1,
                missing.join(" ")
            );
        }
        step(&format!(
            "installing Debian packages: {}",
            missing.join(" ")
        ));
        run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-qq"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    let version = output(Command::new("node").arg("--version"))?;
    let version = version.trim();
    let mut numbers = version
        .trim_start_matches('v')
        .split('.')
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let found = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    if found < NODE_MIN {
        // Debian 12's own nodejs is 18.
        bail!(
            "node is {version}; the identity providers in {NPM_DIR} need Node.js {}.{} or later \
             (install a newer nodejs package, e.g. a Node.js 20 or 22 LTS build for Debian)",
            NODE_MIN.0,
            NODE_MIN.1
        );
    }
    step(&format!("Node.js {version}: present"));
    Ok(())
}

fn npm_packages() -> Result<()> {
    let dir = Path::new(NPM_DIR);
    let lock = std::fs::read(dir.join("package-lock.json"))
        .with_context(|| format!("cannot read {NPM_DIR}/package-lock.json"))?;
    if std::fs::read(dir.join(NPM_STAMP)).is_ok_and(|installed| installed == lock) {
        step(&format!("npm packages in {NPM_DIR}: present"));
        return Ok(());
    }
    step(&format!(
        "installing the npm packages of {NPM_DIR} from its lock file"
    ));
    run_cmd(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir),
    )?;
    std::fs::write(dir.join(NPM_STAMP), lock)
        .with_context(|| format!("cannot write {NPM_DIR}/{NPM_STAMP}"))
}
