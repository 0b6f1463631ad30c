//! The kernel half, seen from userspace: load the XDP program, attach it
//! (pinned links, adopted across restarts), pin its maps, and read/write
//! them. Rule sets are double-buffered: see [`XdpDataPlane::replace_rules`].

mod attach;
mod bpffs;
mod cleanup;
mod drops;
mod instance;
mod list_maps;
mod maps;
mod syncookie;

use std::{
    fmt,
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, MapError, PerCpuArray},
    programs::{ProgramError, Xdp},
    Ebpf, EbpfError,
};
use gateway_common::{Stat, MAP_LAYOUT_VERSION, XDP_PROGRAM};
use serde::Serialize;

pub use self::{
    attach::{detach_pinned, links_dir, AttachMode, Attachment, OnExit},
    cleanup::{cleanup, Removed},
    drops::DroppedSource,
    maps::{CachedIn, KernelRules, ListKind},
    syncookie::{kernel_wscale, SynCookiePolicy, SynCookieStatus},
};
use self::{drops::Drops, instance::Instance, maps::Maps, syncookie::SynCookies};

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

    fn add(&mut self, other: &Counters) {
        for (sum, n) in self.0.iter_mut().zip(other.0) {
            *sum += n;
        }
    }
}

impl From<[u64; Stat::COUNT as usize]> for Counters {
    /// Counters by [`Stat`] index.
    fn from(values: [u64; Stat::COUNT as usize]) -> Self {
        Self(values)
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
///
/// The object is loaded once as the "base", which owns the shared maps
/// (lists, rule-set slots, buckets) and whose program serves test runs, and
/// once more per attached interface (see [`instance`]): each interface's
/// copy counts into its own `STATS` map, so the counters are per interface
/// with no extra work on the packet path.
pub struct XdpDataPlane {
    ebpf: Ebpf,
    object: &'static [u8],
    list_capacity: Option<u32>,
    /// The base program's counters (test runs; never attached).
    stats: PerCpuArray<MapData, u64>,
    maps: Maps,
    syn_cookies: SynCookies,
    drops: Drops,
    instances: Vec<Instance>,
    attachments: Vec<Attachment>,
    pin_root: Option<PathBuf>,
}

impl XdpDataPlane {
    /// Loads (verifies) the program. With `pin_root`, maps are pinned under
    /// `<pin_root>/v<layout>/` and reused if already there, so rules, rate
    /// state and each interface's counters survive daemon restarts; without
    /// it (tests) they live as long as `self`, and nothing can be attached.
    pub fn load(object: &'static [u8], pin_root: Option<&Path>) -> Result<Self, XdpError> {
        Self::load_with_capacity(object, pin_root, None)
    }

    /// Like [`XdpDataPlane::load`], with every allow/deny trie and
    /// exact-length map holding at most `list_capacity` entries instead of
    /// [`gateway_common::LIST_MAX_ENTRIES`] (tests use it to reach "full").
    pub fn load_with_capacity(
        object: &'static [u8],
        pin_root: Option<&Path>,
        list_capacity: Option<u32>,
    ) -> Result<Self, XdpError> {
        let layout_dir = pin_root.map(layout_dir);
        if let Some(dir) = &layout_dir {
            bpffs::prepare(dir).map_err(XdpError::Bpffs)?;
            if instance::retire_shared_stats(dir)? {
                tracing::info!(
                    dir = %dir.display(),
                    "removed the XDP counters an older xgate shared between interfaces; \
                     counting per interface from zero"
                );
            }
        }
        let mut ebpf = instance::loader(layout_dir.as_deref(), list_capacity, None).load(object)?;
        instance::load_program(&mut ebpf)?;
        let stats = instance::take_stats(&mut ebpf)?;
        let maps = Maps::take(&mut ebpf)?;
        let syn_cookies = SynCookies::take(&mut ebpf)?;
        let drops = ebpf
            .take_map(gateway_common::map_names::DROPS)
            .ok_or(XdpError::Missing(gateway_common::map_names::DROPS))?;
        let drops = Drops::new(aya::maps::HashMap::try_from(drops)?);
        Ok(Self {
            ebpf,
            object,
            list_capacity,
            stats,
            maps,
            syn_cookies,
            drops,
            instances: Vec::new(),
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

    /// Counters summed over all CPUs and every copy of the program: the
    /// attached interfaces and the base (test runs).
    pub fn counters(&self) -> Result<Counters, XdpError> {
        let mut counters = instance::read(&self.stats)?;
        for instance in &self.instances {
            counters.add(&instance.counters()?);
        }
        Ok(counters)
    }

    /// Each attached interface's counters, summed over all CPUs, in attach
    /// order.
    pub fn interface_counters(&self) -> Result<Vec<(String, Counters)>, XdpError> {
        self.instances
            .iter()
            .map(|i| Ok((i.interface.clone(), i.counters()?)))
            .collect()
    }

    /// Whether the program currently skips the list lookups for `src`
    /// because its bucket or its per-source entry remembers it as on no
    /// list at the current generation, and which (the verdict cache; see
    /// docs/xdp.md).
    pub fn verdict_cached(&self, src: std::net::IpAddr) -> Result<Option<CachedIn>, XdpError> {
        self.maps.verdict_cached(src)
    }

    /// Applies `xdp.syn_cookies` (at start and on reload): the protected
    /// ports, the mode, and `net.ipv4.tcp_syncookies = 2` when not off.
    pub fn set_syn_cookies(&mut self, policy: &SynCookiePolicy) -> Result<(), XdpError> {
        let interfaces = self.interface_names();
        self.syn_cookies.apply(policy, &interfaces)
    }

    /// Auto mode's once-a-second look at the SYN rate.
    pub fn syn_cookie_tick(&mut self, now: std::time::Instant) -> Result<(), XdpError> {
        let interfaces = self.interface_names();
        self.syn_cookies.tick(now, &interfaces)
    }

    pub fn syn_cookie_status(&self) -> Result<SynCookieStatus, XdpError> {
        self.syn_cookies.status()
    }

    fn interface_names(&self) -> Vec<String> {
        self.attachments
            .iter()
            .map(|a| a.interface.clone())
            .collect()
    }

    /// The `n` sources with the most packets dropped in XDP (every
    /// interface), most first: sampled counts (see docs/xdp.md).
    pub fn top_dropped(&self, n: usize) -> Result<Vec<DroppedSource>, XdpError> {
        self.drops.top(n)
    }

    /// The active slot's per-source drop sampling (`XdpConfig::drop_sample`).
    pub fn drop_sample(&self) -> Result<u32, XdpError> {
        self.maps.drop_sample()
    }

    /// Number of token buckets currently held.
    pub fn bucket_count(&self) -> usize {
        self.maps.bucket_count()
    }
}

/// Where the maps of this build's layout are pinned under `pin_root`.
fn layout_dir(pin_root: &Path) -> PathBuf {
    pin_root.join(format!("v{MAP_LAYOUT_VERSION}"))
}

impl fmt::Debug for XdpDataPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdpDataPlane")
            .field("attachments", &self.attachments)
            .field("pin_root", &self.pin_root)
            .finish()
    }
}
