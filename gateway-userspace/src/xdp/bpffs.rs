//! Making sure the pin directory sits on a mounted bpffs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// Where bpffs is conventionally mounted; a fresh machine may not have it.
const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Mounts bpffs at /sys/fs/bpf when `dir` is under it and nothing is mounted
/// there yet, then creates `dir`.
pub fn prepare(dir: &Path) -> Result<(), String> {
    let mounts = bpf_mounts()?;
    if !mounts.iter().any(|m| dir.starts_with(m)) {
        if dir.starts_with(BPFFS_ROOT) {
            mount_bpffs()?;
        } else {
            return Err(format!(
                "{} is not on a bpffs mount (bpffs is mounted at: {}); set xdp.pin_path under one",
                dir.display(),
                if mounts.is_empty() {
                    "nowhere".to_string()
                } else {
                    mounts
                        .iter()
                        .map(|m| m.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
        }
    }
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

fn bpf_mounts() -> Result<Vec<PathBuf>, String> {
    let mounts = fs::read_to_string("/proc/self/mounts")
        .map_err(|e| format!("cannot read /proc/self/mounts: {e}"))?;
    Ok(mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next()?;
            let target = fields.next()?;
            let fstype = fields.next()?;
            (fstype == "bpf").then(|| PathBuf::from(target))
        })
        .collect())
}

fn mount_bpffs() -> Result<(), String> {
    tracing::info!("mounting bpffs at {BPFFS_ROOT}");
    let status = Command::new("mount")
        .args(["-t", "bpf", "bpf", BPFFS_ROOT])
        .status()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`mount -t bpf bpf {BPFFS_ROOT}` failed ({status})"))
    }
}
