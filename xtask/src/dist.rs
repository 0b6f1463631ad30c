//! `cargo xtask dist`: the production `xgate` binary, built with
//! profile-guided optimization (PGO).
//!
//! 1. An instrumented release build (`-Cprofile-generate`), in a target
//!    directory of its own so that the ordinary builds keep their cache.
//! 2. A training run: `xgate-bench pgo-train` puts the proxy benchmark's
//!    four loads on it (HTTP/1.1 and HTTP/2 over TLS, 64-byte and 64 KiB
//!    responses) and HTTP/1.1 uploads, a few seconds each, and stops it,
//!    which writes the profile.
//! 3. `llvm-profdata merge` (rustup's `llvm-tools`, the LLVM of the compiler
//!    in use), then the release build again with `-Cprofile-use`.
//!
//! The binary is copied to `target/dist/xgate`. A profile is reused while
//! the instrumented binary it came from and the training harness are
//! unchanged, so a second run with no source change only checks.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{bench, cargo, run_cmd, step};

/// Where the three steps keep their files, under the cargo target dir.
const PGO_DIR: &str = "pgo";

/// The production binary, `target/dist/xgate`: builds it (see the module
/// doc) and returns its absolute path.
pub fn run() -> Result<PathBuf> {
    let host = host_triple()?;
    let profdata_tool = llvm_profdata(&host)?;
    bench::debian_packages(&["pgo".to_string()])?;
    let target = target_dir()?;
    let pgo = target.join(PGO_DIR);
    let profiles = pgo.join("profiles");
    let merged = pgo.join("xgate.profdata");

    step("building the PGO training harness (xgate-bench, release)");
    run_cmd(cargo_release().args(["-p", "xgate-bench"]))?;

    step("building the instrumented xgate (-Cprofile-generate)");
    let instrumented_dir = pgo.join("instrumented");
    build_xgate(
        &host,
        &instrumented_dir,
        &format!("-Cprofile-generate={}", profiles.display()),
    )?;
    let instrumented = instrumented_dir.join(&host).join("release/xgate");

    let trainer = target.join("release/xgate-bench");
    if newer(&merged, &instrumented) && newer(&merged, &trainer) {
        step(&format!(
            "profile {} is newer than the instrumented binary and the training: reused",
            merged.display()
        ));
    } else {
        step("training the instrumented xgate (xgate-bench pgo-train)");
        // Profiles of an earlier binary would not match this one.
        if profiles.exists() {
            std::fs::remove_dir_all(&profiles)
                .with_context(|| format!("cannot empty {}", profiles.display()))?;
        }
        let _ = std::fs::remove_file(&merged);
        run_cmd(
            Command::new(&trainer)
                .arg("pgo-train")
                .env("XGATE_BENCH_XGATE", &instrumented),
        )
        .context("the PGO training run failed")?;
        let written = std::fs::read_dir(&profiles)
            .map(|entries| entries.count())
            .unwrap_or(0);
        if written == 0 {
            bail!(
                "the training run wrote no profile into {}: the instrumented xgate \
                 did not exit normally",
                profiles.display()
            );
        }
        step(&format!("merging {written} profile(s) with llvm-profdata"));
        run_cmd(
            Command::new(&profdata_tool)
                .args(["merge", "-o"])
                .arg(&merged)
                .arg(&profiles),
        )?;
    }

    step("building the optimized xgate (-Cprofile-use)");
    let optimized_dir = pgo.join("optimized");
    build_xgate(
        &host,
        &optimized_dir,
        &format!("-Cprofile-use={}", merged.display()),
    )?;
    let dist = target.join("dist");
    std::fs::create_dir_all(&dist)?;
    let binary = dist.join("xgate");
    // Replaced, not overwritten in place: a running copy keeps its file.
    let staged = dist.join(".xgate.new");
    let built = optimized_dir.join(&host).join("release/xgate");
    std::fs::copy(&built, &staged).context("cannot copy the optimized binary")?;
    // The copy keeps the build's time: the benchmark reports it as such.
    if let Ok(modified) = std::fs::metadata(&built).and_then(|m| m.modified()) {
        std::fs::File::options()
            .write(true)
            .open(&staged)?
            .set_modified(modified)?;
    }
    std::fs::rename(&staged, &binary)?;
    step(&format!("production binary: {}", binary.display()));
    Ok(binary)
}

/// `cargo build --quiet --release`.
pub fn cargo_release() -> Command {
    let mut cmd = cargo("build");
    cmd.arg("--release");
    cmd
}

/// A release build of xgate for `host` into `target_dir`, with `rustflags`
/// (which replace any the environment sets).
fn build_xgate(host: &str, target_dir: &Path, rustflags: &str) -> Result<()> {
    run_cmd(
        cargo_release()
            .args([
                "-p",
                "gateway-userspace",
                "--bin",
                "xgate",
                "--target",
                host,
            ])
            .arg("--target-dir")
            .arg(target_dir)
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env("RUSTFLAGS", rustflags),
    )
}

/// The cargo target directory, absolute (the RUSTFLAGS paths must be).
pub fn target_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    std::fs::create_dir_all(&dir)?;
    std::fs::canonicalize(&dir).with_context(|| format!("cannot resolve {}", dir.display()))
}

fn rustc() -> Command {
    Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
}

fn rustc_output(args: &[&str]) -> Result<String> {
    let out = rustc().args(args).output().context("cannot run rustc")?;
    if !out.status.success() {
        bail!(
            "rustc {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The compiler's host triple: the PGO builds name it with `--target`, so
/// that RUSTFLAGS reach xgate and its dependencies but not build scripts.
fn host_triple() -> Result<String> {
    parse_host(&rustc_output(&["-vV"])?).context("`rustc -vV` printed no `host:` line")
}

fn parse_host(version: &str) -> Option<String> {
    version
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(|host| host.trim().to_string())
}

/// `llvm-profdata` from the active toolchain's `llvm-tools` component
/// (added with rustup if missing): its profile format is the compiler's.
fn llvm_profdata(host: &str) -> Result<PathBuf> {
    let sysroot = PathBuf::from(rustc_output(&["--print", "sysroot"])?.trim());
    let tool = sysroot
        .join("lib/rustlib")
        .join(host)
        .join("bin/llvm-profdata");
    if tool.is_file() {
        return Ok(tool);
    }
    step("adding the rustup component llvm-tools (llvm-profdata, for the PGO build)");
    run_cmd(Command::new("rustup").args(["component", "add", "llvm-tools"]))
        .context("rustup could not add llvm-tools, which the PGO build needs")?;
    if !tool.is_file() {
        bail!(
            "rustup added llvm-tools but {} is not there",
            tool.display()
        );
    }
    Ok(tool)
}

/// Whether `a` exists and was modified after `b` (which exists).
fn newer(a: &Path, b: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(a), modified(b)) {
        (Some(a), Some(b)) => a > b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn host_comes_from_the_host_line() {
        let printed = "rustc 1.95.0 (59807616e 2026-04-14)\nbinary: rustc\n\
                       host: x86_64-unknown-linux-gnu\nrelease: 1.95.0\n";
        assert_eq!(
            parse_host(printed).as_deref(),
            Some("x86_64-unknown-linux-gnu")
        );
        assert_eq!(parse_host("rustc 1.95.0\n"), None);
    }

    #[test]
    fn a_profile_is_reused_only_when_newer_than_its_binary() {
        let dir = std::env::temp_dir().join(format!("xtask-dist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let binary = dir.join("xgate");
        let profile = dir.join("xgate.profdata");
        assert!(!newer(&profile, &binary), "neither exists");
        std::fs::write(&binary, b"bin").unwrap();
        assert!(!newer(&profile, &binary), "no profile yet");
        std::fs::write(&profile, b"profile").unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&profile)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(newer(&profile, &binary), "profile made after the binary");
        let even_later = later + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&binary)
            .unwrap()
            .set_modified(even_later)
            .unwrap();
        assert!(!newer(&profile, &binary), "binary rebuilt since");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
