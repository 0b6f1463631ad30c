//! The kernel half, seen from userspace: load the XDP program, attach it,
//! pin its maps, and read/write them.

mod bpffs;

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    maps::{lpm_trie::Key, LpmTrie, MapData, MapError, PerCpuArray},
    programs::{ProgramError, Xdp, XdpMode as AyaMode},
    Ebpf, EbpfError, EbpfLoader,
};
use gateway_common::{map_names, Rule, Stat, MAP_LAYOUT_VERSION, XDP_PROGRAM};
use ipnet::IpNet;
use serde::Serialize;

use crate::config::XdpMode;

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
    #[error("the object file has no {0}")]
    Missing(&'static str),
    #[error("attaching to {interface} in {mode} mode failed: {source}")]
    Attach {
        interface: String,
        mode: AttachMode,
        source: ProgramError,
    },
    #[error("bpffs: {0}")]
    Bpffs(String),
}

/// The mode an attachment actually got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver, before an skb exists.
    Native,
    /// In the generic (skb) path, for drivers without XDP support.
    Generic,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Attachment {
    pub interface: String,
    pub mode: AttachMode,
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

/// The loaded program and its maps. Dropping it detaches every attachment;
/// pinned maps (and so the rules in them) stay in the kernel.
pub struct XdpDataPlane {
    ebpf: Ebpf,
    deny_v4: LpmTrie<MapData, [u8; 4], Rule>,
    deny_v6: LpmTrie<MapData, [u8; 16], Rule>,
    stats: PerCpuArray<MapData, u64>,
    attachments: Vec<Attachment>,
    pin_dir: Option<PathBuf>,
}

impl XdpDataPlane {
    /// Loads (verifies) the program. With `pin_root`, maps are pinned under
    /// `<pin_root>/v<layout>/` and reused if already there, so rules survive
    /// daemon restarts; without it (tests) they live as long as `self`.
    pub fn load(object: &[u8], pin_root: Option<&Path>) -> Result<Self, XdpError> {
        let mut loader = EbpfLoader::new();
        let pin_dir = match pin_root {
            Some(root) => {
                let dir = versioned_pin_dir(root);
                bpffs::prepare(&dir).map_err(XdpError::Bpffs)?;
                for name in map_names::ALL {
                    loader.map_pin_path(name, dir.join(name));
                }
                Some(dir)
            }
            None => None,
        };
        let mut ebpf = loader.load(object)?;
        let program: &mut Xdp = ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or(XdpError::Missing("XDP program"))?
            .try_into()?;
        program.load()?;
        let deny_v4 = LpmTrie::try_from(take(&mut ebpf, map_names::DENY_V4)?)?;
        let deny_v6 = LpmTrie::try_from(take(&mut ebpf, map_names::DENY_V6)?)?;
        let stats = PerCpuArray::try_from(take(&mut ebpf, map_names::STATS)?)?;
        Ok(Self {
            ebpf,
            deny_v4,
            deny_v6,
            stats,
            attachments: Vec::new(),
            pin_dir,
        })
    }

    /// Attaches to `interface`. `auto` tries native mode first and falls back
    /// to generic; the mode used is returned (and kept for `status`).
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<AttachMode, XdpError> {
        let attempts: &[AttachMode] = match mode {
            XdpMode::Auto => &[AttachMode::Native, AttachMode::Generic],
            XdpMode::Native => &[AttachMode::Native],
            XdpMode::Generic => &[AttachMode::Generic],
        };
        let program = self.program_mut()?;
        let mut last_error = None;
        for &attempt in attempts {
            let aya_mode = match attempt {
                AttachMode::Native => AyaMode::Driver,
                AttachMode::Generic => AyaMode::Skb,
            };
            match program.attach(interface, aya_mode) {
                Ok(_) => {
                    self.attachments.push(Attachment {
                        interface: interface.to_string(),
                        mode: attempt,
                    });
                    return Ok(attempt);
                }
                Err(source) => {
                    tracing::debug!(interface, mode = %attempt, error = %source, "XDP attach attempt failed");
                    last_error = Some(XdpError::Attach {
                        interface: interface.to_string(),
                        mode: attempt,
                        source,
                    });
                }
            }
        }
        Err(last_error.expect("at least one attach attempt"))
    }

    /// The program itself, e.g. for `BPF_PROG_TEST_RUN`.
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

    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// Adds or replaces the deny rule for `net`.
    pub fn insert_deny(&mut self, net: IpNet, rule: Rule) -> Result<(), XdpError> {
        match net {
            IpNet::V4(n) => self.deny_v4.insert(
                &Key::new(n.prefix_len().into(), n.network().octets()),
                rule,
                0,
            )?,
            IpNet::V6(n) => self.deny_v6.insert(
                &Key::new(n.prefix_len().into(), n.network().octets()),
                rule,
                0,
            )?,
        }
        Ok(())
    }

    /// Removes the deny rule for exactly `net`; absent is not an error.
    pub fn remove_deny(&mut self, net: IpNet) -> Result<(), XdpError> {
        let result = match net {
            IpNet::V4(n) => self
                .deny_v4
                .remove(&Key::new(n.prefix_len().into(), n.network().octets())),
            IpNet::V6(n) => self
                .deny_v6
                .remove(&Key::new(n.prefix_len().into(), n.network().octets())),
        };
        match result {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every prefix currently in the deny tries.
    pub fn deny_prefixes(&self) -> Result<Vec<IpNet>, XdpError> {
        let mut out = Vec::new();
        for key in self.deny_v4.keys() {
            let key = key?;
            let net = IpNet::new(IpAddr::from(key.data()), key.prefix_len() as u8)
                .expect("kernel keys have valid prefix lengths");
            out.push(net);
        }
        for key in self.deny_v6.keys() {
            let key = key?;
            let net = IpNet::new(IpAddr::from(key.data()), key.prefix_len() as u8)
                .expect("kernel keys have valid prefix lengths");
            out.push(net);
        }
        Ok(out)
    }

    /// Counters summed over all CPUs.
    pub fn counters(&self) -> Result<Counters, XdpError> {
        let mut counters = Counters::default();
        for stat in Stat::ALL {
            let per_cpu = self.stats.get(&(stat as u32), 0)?;
            counters.0[stat as usize] = per_cpu.iter().sum();
        }
        Ok(counters)
    }
}

fn versioned_pin_dir(root: &Path) -> PathBuf {
    root.join(format!("v{MAP_LAYOUT_VERSION}"))
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, XdpError> {
    ebpf.take_map(name).ok_or(XdpError::Missing(name))
}
