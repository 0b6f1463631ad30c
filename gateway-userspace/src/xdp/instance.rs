//! One loaded copy of the program per attached interface, so that each
//! interface has its own packet counters without the packet path looking
//! anything up to find them: every copy runs the same bytecode, and its
//! `STATS` map is its own (pinned as `STATS@<interface>`), while every other
//! map (lists, rule-set slots, buckets) is the one pinned map all copies
//! share. A list change written once reaches every interface. (The
//! program's per-CPU clock cache, `CLOCK`, is neither: it is not in
//! `map_names::ALL`, so each copy has its own, unpinned; it holds nothing
//! that must outlive the copy.)

use std::path::{Path, PathBuf};

use aya::{
    maps::{MapData, PerCpuArray},
    programs::Xdp,
    Ebpf, EbpfLoader,
};
use gateway_common::{map_names, Stat, XDP_PROGRAM};

use super::{Counters, XdpError};

/// The maps every copy of the program shares through their pins: all but
/// the counters.
pub(super) fn shared_maps() -> impl Iterator<Item = &'static str> {
    map_names::ALL
        .into_iter()
        .filter(|name| *name != map_names::STATS)
}

/// Where `interface`'s counters are pinned inside the layout directory.
/// Interface names never hold `/` (the kernel and the config refuse it), so
/// the name is one path component.
pub(super) fn stats_pin(layout_dir: &Path, interface: &str) -> PathBuf {
    layout_dir.join(format!("{}@{interface}", map_names::STATS))
}

/// Layouts before per-interface counters pinned one `STATS` map shared by
/// every interface. Its counts cannot be split by interface, so the pin is
/// removed (the kernel frees the map once no program uses it); each
/// interface's counters start at zero. Returns whether there was one.
pub(super) fn retire_shared_stats(layout_dir: &Path) -> Result<bool, XdpError> {
    let legacy = layout_dir.join(map_names::STATS);
    match std::fs::remove_file(&legacy) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(XdpError::Bpffs(format!(
            "cannot remove the shared counters of an older layout ({}): {e}",
            legacy.display()
        ))),
    }
}

/// A loader for the object: list capacities and, with a layout directory,
/// the shared maps' pins; `stats` pins this copy's counters.
pub(super) fn loader<'a>(
    layout_dir: Option<&Path>,
    list_capacity: Option<u32>,
    stats: Option<PathBuf>,
) -> EbpfLoader<'a> {
    let mut loader = EbpfLoader::new();
    if let Some(capacity) = list_capacity {
        for names in [
            map_names::DENY_V4,
            map_names::DENY_V6,
            map_names::ALLOW_V4,
            map_names::ALLOW_V6,
            map_names::DENY_V4_NETS,
            map_names::DENY_V4_HOSTS,
            map_names::DENY_V6_NETS,
            map_names::DENY_V6_SUBNETS,
            map_names::DENY_V6_HOSTS,
            map_names::ALLOW_V4_NETS,
            map_names::ALLOW_V4_HOSTS,
            map_names::ALLOW_V6_NETS,
            map_names::ALLOW_V6_SUBNETS,
            map_names::ALLOW_V6_HOSTS,
        ] {
            for name in names {
                loader.map_max_entries(name, capacity);
            }
        }
    }
    if let Some(dir) = layout_dir {
        for name in shared_maps() {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    if let Some(pin) = stats {
        loader.map_pin_path(map_names::STATS, pin);
    }
    loader
}

/// Takes the program out of a loaded object and verifies it.
pub(super) fn load_program(ebpf: &mut Ebpf) -> Result<(), XdpError> {
    let program: &mut Xdp = ebpf
        .program_mut(XDP_PROGRAM)
        .ok_or(XdpError::Missing("XDP program"))?
        .try_into()?;
    program.load()?;
    Ok(())
}

/// Takes the counters map out of a loaded object.
pub(super) fn take_stats(ebpf: &mut Ebpf) -> Result<PerCpuArray<MapData, u64>, XdpError> {
    let map = ebpf
        .take_map(map_names::STATS)
        .ok_or(XdpError::Missing(map_names::STATS))?;
    Ok(PerCpuArray::try_from(map)?)
}

/// One counters map, summed over every CPU.
pub(super) fn read(stats: &PerCpuArray<MapData, u64>) -> Result<Counters, XdpError> {
    let mut counters = Counters::default();
    for stat in Stat::ALL {
        counters.0[stat as usize] = stats.get(&(stat as u32), 0)?.iter().sum();
    }
    Ok(counters)
}

/// The copy of the program attached to one interface.
pub(super) struct Instance {
    pub(super) interface: String,
    ebpf: Ebpf,
    stats: PerCpuArray<MapData, u64>,
}

impl Instance {
    /// Loads a copy for `interface` that shares the maps pinned in
    /// `layout_dir` and keeps its counters in its own pinned map (reused
    /// when a previous daemon left it, so counters continue across
    /// restarts and upgrades).
    pub(super) fn load(
        object: &[u8],
        layout_dir: &Path,
        list_capacity: Option<u32>,
        interface: &str,
    ) -> Result<Self, XdpError> {
        let mut ebpf = loader(
            Some(layout_dir),
            list_capacity,
            Some(stats_pin(layout_dir, interface)),
        )
        .load(object)?;
        load_program(&mut ebpf)?;
        let stats = take_stats(&mut ebpf)?;
        Ok(Self {
            interface: interface.to_string(),
            ebpf,
            stats,
        })
    }

    pub(super) fn program_mut(&mut self) -> Result<&mut Xdp, XdpError> {
        Ok(self
            .ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or(XdpError::Missing("XDP program"))?
            .try_into()?)
    }

    pub(super) fn counters(&self) -> Result<Counters, XdpError> {
        read(&self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_interface_has_its_own_counters_pin_and_everything_else_is_shared() {
        let dir = Path::new("/sys/fs/bpf/xgate/v4");
        assert_eq!(
            stats_pin(dir, "eth0"),
            Path::new("/sys/fs/bpf/xgate/v4/STATS@eth0")
        );
        assert_ne!(stats_pin(dir, "eth0"), stats_pin(dir, "eth1"));
        // A VLAN interface's dot stays inside the one path component.
        assert_eq!(
            stats_pin(dir, "eth0.100").parent(),
            Some(dir),
            "one component"
        );
        let shared: Vec<_> = shared_maps().collect();
        assert_eq!(shared.len(), map_names::ALL.len() - 1);
        assert!(!shared.contains(&map_names::STATS));
        assert!(shared.contains(&map_names::BUCKETS_V4) && shared.contains(&map_names::ACTIVE));
    }

    #[test]
    fn the_shared_counters_of_an_older_layout_are_retired_once() {
        let dir = std::env::temp_dir().join(format!("xgate-retire-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("STATS"), "").unwrap();
        std::fs::write(stats_pin(&dir, "eth0"), "").unwrap();
        std::fs::write(dir.join("BUCKETS_V4"), "").unwrap();
        assert!(retire_shared_stats(&dir).unwrap());
        assert!(!dir.join("STATS").exists());
        assert!(stats_pin(&dir, "eth0").exists(), "per-interface pins stay");
        assert!(dir.join("BUCKETS_V4").exists(), "shared maps stay");
        assert!(
            !retire_shared_stats(&dir).unwrap(),
            "nothing left to retire"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
