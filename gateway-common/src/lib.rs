//! Types shared by the xgate XDP program and userspace.
//!
//! Everything here is `#[repr(C)]` and plain data, so that the kernel and
//! userspace halves agree on map layouts by construction. The `user` feature
//! adds `aya::Pod` impls for userspace.
#![no_std]

/// Version of the map layouts below. It is part of the pin path
/// (`<pin_root>/v<N>/`), because aya silently reuses a pinned map even when
/// its definition changed: bump this whenever a key, value or map size changes.
pub const MAP_LAYOUT_VERSION: u32 = 1;

/// Name of the XDP program inside the object file.
pub const XDP_PROGRAM: &str = "xgate_xdp";

/// Map names, as userspace looks them up in the object file.
pub mod map_names {
    /// IPv4 source deny list: `LpmTrie<[u8; 4], Rule>`.
    pub const DENY_V4: &str = "DENY_V4";
    /// IPv6 source deny list: `LpmTrie<[u8; 16], Rule>`.
    pub const DENY_V6: &str = "DENY_V6";
    /// Per-CPU packet counters: `PerCpuArray<u64>` indexed by [`super::Stat`].
    pub const STATS: &str = "STATS";
    /// Every map the program owns, in the order userspace pins them.
    pub const ALL: [&str; 3] = [DENY_V4, DENY_V6, STATS];
}

/// Capacity of each deny trie. The tries are created with
/// `BPF_F_NO_PREALLOC`, so an empty slot costs no kernel memory; the limit is
/// set high enough for large threat feeds (100k prefixes) with headroom.
pub const DENY_MAX_ENTRIES: u32 = 262_144;

/// Value stored with each deny prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// Expiry as `CLOCK_MONOTONIC` nanoseconds (what `bpf_ktime_get_ns`
    /// returns); `0` means the rule never expires. An expired rule stops
    /// matching at once in the kernel; userspace reaps it later.
    pub expires_at_ns: u64,
    /// Why the entry exists (see [`RuleSource`]); counted and shown in `ls`.
    pub source: u32,
    pub _pad: u32,
}

/// Where a rule came from.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleSource {
    /// The config file's `xdp.deny` list.
    Config = 0,
    /// `xgate blocklist add` (admin API), persisted in the state directory.
    Cli = 1,
}

/// Indices into the per-CPU `STATS` array: one counter per verdict and reason.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// IPv4/IPv6 packet that matched no rule: `XDP_PASS`.
    Passed = 0,
    /// Not IPv4/IPv6 (ARP, LLDP, ...): always `XDP_PASS`, never policed.
    NonIp = 1,
    /// Source matched the IPv4 deny list: `XDP_DROP`.
    DeniedV4 = 2,
    /// Source matched the IPv6 deny list: `XDP_DROP`.
    DeniedV6 = 3,
    /// Truncated or malformed IP header: `XDP_DROP` (the kernel stack would
    /// discard it anyway; dropping here costs less).
    Malformed = 4,
    /// ICMPv6 neighbour discovery: always `XDP_PASS` so the host is never cut
    /// off its link, even from a denied source.
    NeighborDiscovery = 5,
    /// A deny rule matched but had expired: `XDP_PASS`.
    ExpiredRule = 6,
}

impl Stat {
    /// Number of counters (size of the `STATS` array).
    pub const COUNT: u32 = 7;
    /// Every counter, in index order.
    pub const ALL: [Stat; Self::COUNT as usize] = [
        Stat::Passed,
        Stat::NonIp,
        Stat::DeniedV4,
        Stat::DeniedV6,
        Stat::Malformed,
        Stat::NeighborDiscovery,
        Stat::ExpiredRule,
    ];

    /// Stable metric label for the counter.
    pub const fn name(self) -> &'static str {
        match self {
            Stat::Passed => "passed",
            Stat::NonIp => "non_ip",
            Stat::DeniedV4 => "denied_v4",
            Stat::DeniedV6 => "denied_v6",
            Stat::Malformed => "malformed",
            Stat::NeighborDiscovery => "neighbor_discovery",
            Stat::ExpiredRule => "expired_rule",
        }
    }

    /// The verdict the program returned for packets counted here.
    pub const fn dropped(self) -> bool {
        matches!(self, Stat::DeniedV4 | Stat::DeniedV6 | Stat::Malformed)
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `Rule` is `#[repr(C)]`, `Copy`, has no padding bytes left
    // implicit (`_pad` is explicit) and every bit pattern is valid.
    unsafe impl aya::Pod for super::Rule {}
}
