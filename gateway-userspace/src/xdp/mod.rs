//! The kernel half, seen from userspace: load the XDP program, attach it
//! (pinned links, adopted across restarts), pin its maps, and read/write
//! them. Rule sets are double-buffered: see [`XdpDataPlane::replace_rules`].

mod attach;
mod bpffs;
mod cleanup;
mod list_maps;
mod maps;

use std::{
    fmt,
    path::{Path, PathBuf},
};

use aya::{
    maps::MapError,
    programs::{ProgramError, Xdp},
    Ebpf, EbpfError, EbpfLoader,
};
use gateway_common::{map_names, Stat, MAP_LAYOUT_VERSION, XDP_PROGRAM};
use serde::Serialize;

use self::maps::Maps;
pub use self::{
    attach::{detach_pinned, links_dir, AttachMode, Attachment, OnExit},
    cleanup::{cleanup, Removed},
    maps::{KernelRules, ListKind},
};

/// The compiled XDP program, built by this crate's build script.
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xgate-xdp"));

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("loading the XDP object failed: {0}")]
    Load(#[from] EbpfError),
    #[error("XDP program: {0}")]
    Program(#[from] ProgramError),
    #[error("BPF map: {0}")]
    Map(#[from] MapError),
    #[error("the kernel {list} for {family} is full ({capacity} entries); remove entries or aggregate them into shorter prefixes")]
    Full {
        list: &'static str,
        family: &'static str,
        capacity: u32,
    },
    #[error("the object file has no {0}")]
    Missing(&'static str),
    #[error("attaching to {interface} in {mode} mode failed: {source}")]
    Attach {
        interface: String,
        mode: AttachMode,
        source: ProgramError,
    },
    #[error("{0}")]
    Link(String),
    #[error("bpffs: {0}")]
    Bpffs(String),
}

/// Packet counters summed over every CPU, by [`Stat`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters([u64; Stat::COUNT as usize]);

impl Counters {
    pub fn get(&self, stat: Stat) -> u64 {
        self.0[stat as usize]
    }
}

impl Serialize for Counters {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(Stat::ALL.len()))?;
        for stat in Stat::ALL {
            map.serialize_entry(stat.name(), &self.get(stat))?;
        }
        map.end()
    }
}

/// The loaded program and its maps. Dropping it closes our handles: links
/// that are pinned stay attached (see [`OnExit`]); maps stay pinned.
pub struct XdpDataPlane {
    ebpf: Ebpf,
    maps: Maps,
    attachments: Vec<Attachment>,
    pin_root: Option<PathBuf>,
}

impl XdpDataPlane {
    /// Loads (verifies) the program. With `pin_root`, maps are pinned under
    /// `<pin_root>/v<layout>/` and reused if already there, so rules and rate
    /// state survive daemon restarts; without it (tests) they live as long
    /// as `self`.
    pub fn load(object: &[u8], pin_root: Option<&Path>) -> Result<Self, XdpError> {
        Self::load_with_capacity(object, pin_root, None)
    }

    /// Like [`XdpDataPlane::load`], with every allow/deny trie and
    /// exact-length map holding at most `list_capacity` entries instead of
    /// [`gateway_common::LIST_MAX_ENTRIES`] (tests use it to reach "full").
    pub fn load_with_capacity(
        object: &[u8],
        pin_root: Option<&Path>,
        list_capacity: Option<u32>,
    ) -> Result<Self, XdpError> {
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
        if let Some(root) = pin_root {
            let dir = root.join(format!("v{MAP_LAYOUT_VERSION}"));
            bpffs::prepare(&dir).map_err(XdpError::Bpffs)?;
            for name in map_names::ALL {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(object)?;
        let program: &mut Xdp = ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or(XdpError::Missing("XDP program"))?
            .try_into()?;
        program.load()?;
        let maps = Maps::take(&mut ebpf)?;
        Ok(Self {
            ebpf,
            maps,
            attachments: Vec::new(),
            pin_root: pin_root.map(Path::to_path_buf),
        })
    }

    /// A program from the object by name, loaded (e.g. the `xgate_pass`
    /// floor for benchmarks).
    pub fn extra_program(&mut self, name: &'static str) -> Result<&mut Xdp, XdpError> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(XdpError::Missing(name))?
            .try_into()?;
        if program.fd().is_err() {
            program.load()?;
        }
        Ok(program)
    }

    /// The policy program, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program_mut(&mut self) -> Result<&mut Xdp, XdpError> {
        Ok(self
            .ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or(XdpError::Missing("XDP program"))?
            .try_into()?)
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    pub fn pin_root(&self) -> Option<&Path> {
        self.pin_root.as_deref()
    }

    /// Replaces the whole rule set atomically for the packet path: the
    /// inactive slot is cleared and filled, then made active with one map
    /// write. A packet sees the old set or the new one, never a mix.
    pub fn replace_rules(&mut self, rules: &KernelRules) -> Result<(), XdpError> {
        self.maps.replace(rules)
    }

    /// Adds or replaces one entry in the active rule set.
    pub fn insert(
        &mut self,
        kind: ListKind,
        net: ipnet::IpNet,
        rule: gateway_common::Rule,
    ) -> Result<(), XdpError> {
        self.maps.insert_active(kind, net, rule)
    }

    /// Removes one entry from the active rule set; absent is not an error.
    pub fn remove(&mut self, kind: ListKind, net: ipnet::IpNet) -> Result<(), XdpError> {
        self.maps.remove_active(kind, net)
    }

    /// Every prefix in the active rule set's list.
    pub fn prefixes(&self, kind: ListKind) -> Result<Vec<ipnet::IpNet>, XdpError> {
        self.maps.prefixes_active(kind)
    }

    /// The slot the program reads (0 or 1).
    pub fn active_slot(&self) -> Result<u32, XdpError> {
        self.maps.active()
    }

    /// Counters summed over all CPUs.
    pub fn counters(&self) -> Result<Counters, XdpError> {
        let mut counters = Counters::default();
        for stat in Stat::ALL {
            counters.0[stat as usize] = self.maps.stat(stat)?;
        }
        Ok(counters)
    }

    /// Whether the program currently skips the list lookups for `src`
    /// because its bucket remembers it as on no list at the current
    /// generation (the verdict cache; see docs/xdp.md).
    pub fn verdict_cached(&self, src: std::net::IpAddr) -> Result<bool, XdpError> {
        self.maps.verdict_cached(src)
    }

    /// Number of token buckets currently held.
    pub fn bucket_count(&self) -> usize {
        self.maps.bucket_count()
    }
}

impl fmt::Debug for XdpDataPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdpDataPlane")
            .field("attachments", &self.attachments)
            .field("pin_root", &self.pin_root)
            .finish()
    }
}
