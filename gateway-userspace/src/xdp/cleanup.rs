//! `xgate xdp cleanup`: removes what xgate pinned under its pin path (the
//! maps of every layout version, and the empty directories), so that the
//! kernel frees their memory. Pinned maps outlive the daemon on purpose
//! (lists and rate state survive restarts); this is for when xgate is
//! stopped for good or moved to another pin path.

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::links_dir;

/// What was removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub maps: usize,
    pub dirs: Vec<PathBuf>,
}

/// Removes the pinned maps under `pin_root`. Refused while an XDP link is
/// pinned there: the program is attached and enforcing with these maps (a
/// running daemon, `xdp.on_exit: keep`, or `xgate xdp attach`).
pub fn cleanup(pin_root: &Path) -> Result<Removed, String> {
    if !pin_root.exists() {
        return Ok(Removed::default());
    }
    let links = entries(&links_dir(pin_root))?;
    if !links.is_empty() {
        let names: Vec<String> = links
            .iter()
            .filter_map(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        let interfaces: Vec<&str> = names
            .iter()
            .map(|n| n.split('@').next().unwrap_or(n))
            .collect();
        return Err(format!(
            "XDP is still attached with these maps ({} pinned under {}); stop the daemon, \
             or detach first: xgate xdp detach --iface {}",
            names.join(", "),
            links_dir(pin_root).display(),
            interfaces.first().copied().unwrap_or("IFACE")
        ));
    }
    let mut removed = Removed::default();
    for dir in entries(pin_root)? {
        let is_layout_dir = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('v') && n[1..].chars().all(|c| c.is_ascii_digit()));
        if !is_layout_dir || !dir.is_dir() {
            continue;
        }
        for map in entries(&dir)? {
            fs::remove_file(&map).map_err(|e| format!("cannot remove {}: {e}", map.display()))?;
            removed.maps += 1;
        }
        remove_dir(&dir, &mut removed)?;
    }
    let links = links_dir(pin_root);
    if links.exists() {
        remove_dir(&links, &mut removed)?;
    }
    // The root goes too when nothing else lives there.
    if entries(pin_root)?.is_empty() {
        remove_dir(pin_root, &mut removed)?;
    }
    Ok(removed)
}

fn remove_dir(dir: &Path, removed: &mut Removed) -> Result<(), String> {
    fs::remove_dir(dir).map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
    removed.dirs.push(dir.to_path_buf());
    Ok(())
}

/// The entries of `dir`, none when it does not exist.
fn entries(dir: &Path) -> Result<Vec<PathBuf>, String> {
    match fs::read_dir(dir) {
        Ok(read) => read
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("cannot list {}: {e}", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot list {}: {e}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain directory stands in for bpffs: unlinking a pin is unlinking
    /// a file.
    fn tree(name: &str) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("xgate-cleanup-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("v3")).unwrap();
        fs::create_dir_all(root.join("v2")).unwrap();
        for map in ["DENY_V4", "ALLOW_V4", "STATS@eth0", "STATS@eth1"] {
            fs::write(root.join("v3").join(map), "").unwrap();
        }
        fs::write(root.join("v2").join("OLD"), "").unwrap();
        root
    }

    #[test]
    fn removes_every_layout_version_and_the_root() {
        let root = tree("ok");
        fs::create_dir_all(links_dir(&root)).unwrap();
        let removed = cleanup(&root).unwrap();
        assert_eq!(removed.maps, 5, "every map, each interface's counters too");
        assert!(!root.exists());
        assert_eq!(cleanup(&root).unwrap(), Removed::default());
    }

    #[test]
    fn refuses_while_a_link_is_pinned() {
        let root = tree("attached");
        fs::create_dir_all(links_dir(&root)).unwrap();
        fs::write(links_dir(&root).join("eth0@native"), "").unwrap();
        let e = cleanup(&root).unwrap_err();
        assert!(e.contains("eth0@native"), "{e}");
        assert!(e.contains("xgate xdp detach --iface eth0"), "{e}");
        assert!(root.join("v3").join("DENY_V4").exists());
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn leaves_what_it_did_not_pin() {
        let root = tree("foreign");
        fs::write(root.join("someone-else"), "").unwrap();
        cleanup(&root).unwrap();
        assert!(root.join("someone-else").exists());
        assert!(!root.join("v3").exists());
        let _ = fs::remove_dir_all(&root);
    }
}
