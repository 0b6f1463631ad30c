//! `cargo xtask deb`: the Debian package, built with dpkg-deb alone (no
//! cargo-deb: one tool fewer, and every file it ships is listed here).
//!
//! Contents: /usr/bin/xgate, the systemd unit (packaging/xgate.service, when
//! the repository has it), /etc/xgate/xgate.yaml (a conffile), the `xgate`
//! system user and group (postinst; removed on purge), /var/lib/xgate, the
//! manual pages and the bash, zsh and fish completions, made by the packaged
//! binary itself.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{cargo, run_cmd, step};

/// Which binary goes into the package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Binary {
    /// target/dist/xgate (`cargo xtask dist`, profile-guided) if it exists, else a release build.
    Production,
    /// A fresh release build (target/release/xgate).
    Release,
    /// The debug build (target/debug/xgate): for testing the packaging, not for hosts.
    Debug,
}

/// Builds the package into `out_dir`; returns its path.
pub fn run(kind: Binary, out_dir: &Path) -> Result<PathBuf> {
    let binary = binary_path(kind)?;
    let version = env!("CARGO_PKG_VERSION");
    let arch = command_output(Command::new("dpkg").arg("--print-architecture"))?;
    let stage = out_dir.join(format!("xgate_{version}_{arch}"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("cannot empty {}", stage.display()))?;
    }
    step(&format!("staging the package in {}", stage.display()));
    install(&binary, &stage.join("usr/bin/xgate"), 0o755)?;
    let unit = Path::new("packaging/xgate.service");
    if unit.exists() {
        install(
            unit,
            &stage.join("usr/lib/systemd/system/xgate.service"),
            0o644,
        )?;
    } else {
        eprintln!("    (no packaging/xgate.service in this tree: the package has no unit)");
    }
    install(
        Path::new("packaging/xgate.yaml"),
        &stage.join("etc/xgate/xgate.yaml"),
        0o640,
    )?;
    fs::create_dir_all(stage.join("var/lib/xgate"))?;
    install(
        Path::new("docs/xgate.schema.json"),
        &stage.join("usr/share/xgate/xgate.schema.json"),
        0o644,
    )?;
    let doc = stage.join("usr/share/doc/xgate");
    write(&doc.join("copyright"), &copyright(), 0o644)?;
    for page in ["configuration.md", "packaging.md"] {
        install(&Path::new("docs").join(page), &doc.join(page), 0o644)?;
    }
    man_pages(&stage, &binary)?;
    completions(&stage, &binary)?;

    let control = stage.join("DEBIAN");
    let installed_kib = disk_usage_kib(&stage)?;
    write(
        &control.join("control"),
        &control_file(version, &arch, installed_kib),
        0o644,
    )?;
    write(&control.join("conffiles"), "/etc/xgate/xgate.yaml\n", 0o644)?;
    for script in ["postinst", "prerm", "postrm"] {
        install(
            &Path::new("packaging").join(script),
            &control.join(script),
            0o755,
        )?;
    }

    let deb = out_dir.join(format!("xgate_{version}_{arch}.deb"));
    step(&format!("dpkg-deb --build {}", deb.display()));
    run_cmd(
        Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group"])
            // xz for what ships; the 80 MB debug binary of the package test
            // compresses in seconds with fast gzip instead of minutes.
            .args(if kind == Binary::Debug {
                ["-Zgzip", "-z1"]
            } else {
                ["-Zxz", "-z6"]
            })
            .arg(&stage)
            .arg(&deb),
    )?;
    fs::remove_dir_all(&stage)?;
    let shown = if deb.is_absolute() {
        deb.display().to_string()
    } else {
        format!("./{}", deb.display())
    };
    eprintln!("    install it with: sudo apt install {shown}");
    Ok(deb)
}

fn binary_path(binary: Binary) -> Result<PathBuf> {
    let dist = PathBuf::from("target/dist/xgate");
    match binary {
        Binary::Production if dist.exists() => {
            step("packaging target/dist/xgate (the profile-guided production build)");
            Ok(dist)
        }
        Binary::Production | Binary::Release => {
            step("building the release binary (no target/dist/xgate: `cargo xtask dist` makes it)");
            run_cmd(cargo("build").args(["--release", "-p", "gateway-userspace", "--bins"]))?;
            Ok(target_dir().join("release/xgate"))
        }
        Binary::Debug => {
            let path = target_dir().join("debug/xgate");
            if !path.exists() {
                run_cmd(cargo("build").args(["-p", "gateway-userspace", "--bins"]))?;
            }
            Ok(path)
        }
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// gzip'd pages from `xgate man` into /usr/share/man/man1.
fn man_pages(stage: &Path, binary: &Path) -> Result<()> {
    let dir = stage.join("usr/share/man/man1");
    run_cmd(
        Command::new(binary)
            .args(["man", "--out-dir"])
            .arg(&dir)
            .stdout(std::process::Stdio::null()),
    )?;
    let mut pages = 0;
    for entry in fs::read_dir(&dir)? {
        let path = entry?.path();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        run_cmd(Command::new("gzip").args(["-9n"]).arg(&path))?;
        pages += 1;
    }
    if pages == 0 {
        bail!("`xgate man` wrote no pages");
    }
    Ok(())
}

fn completions(stage: &Path, binary: &Path) -> Result<()> {
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/xgate"),
        ("zsh", "usr/share/zsh/vendor-completions/_xgate"),
        ("fish", "usr/share/fish/vendor_completions.d/xgate.fish"),
    ] {
        let script = command_output(Command::new(binary).args(["completions", shell]))?;
        write(&stage.join(path), &format!("{script}\n"), 0o644)?;
    }
    Ok(())
}

fn control_file(version: &str, arch: &str, installed_kib: u64) -> String {
    format!(
        "Package: xgate
Version: {version}
Architecture: {arch}
Maintainer: xgate maintainers <xgate@localhost>
Installed-Size: {installed_kib}
Depends: libc6, adduser
Section: net
Priority: optional
Description: API gateway that drops unwanted packets in the kernel (XDP)
 xgate is an HTTP/1.1 and HTTP/2 API gateway and reverse proxy with
 authentication (API keys, JWT, OAuth 2.0, OIDC, mTLS), rate limits, bans
 and deny lists enforced by an XDP program before packets reach the stack.
"
    )
}

fn copyright() -> String {
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: xgate

Files: *
License: Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
"
    .to_string()
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(to, text).with_context(|| format!("cannot write {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn command_output(cmd: &mut Command) -> Result<String> {
    let output = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn disk_usage_kib(dir: &Path) -> Result<u64> {
    let text = command_output(Command::new("du").args(["-sk"]).arg(dir))?;
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("cannot read du's output")
}
