//! Types shared by the xgate XDP program and userspace.
//!
//! Everything here is `#[repr(C)]` and plain data, so that the kernel and
//! userspace halves agree on map layouts by construction. The `user` feature
//! adds `aya::Pod` impls for userspace.
#![no_std]

/// Version of the map layouts below. It is part of the pin path
/// (`<pin_root>/v<N>/`), because aya silently reuses a pinned map even when
/// its definition changed: bump this whenever a key, value or map size changes.
pub const MAP_LAYOUT_VERSION: u32 = 7;

/// Name of the XDP program inside the object file.
pub const XDP_PROGRAM: &str = "xgate_xdp";
/// An empty program that passes every frame: the floor for benchmarks.
pub const XDP_PASS_PROGRAM: &str = "xgate_pass";

/// Rule sets are double-buffered: the program reads the slot named by
/// `ACTIVE[0]`; userspace fills the other slot and flips the index, so a
/// packet sees either the whole old rule set or the whole new one.
pub const SLOTS: u32 = 2;

/// Map names, as userspace looks them up in the object file. Per-slot maps
/// end in `_0` / `_1`.
pub mod map_names {
    /// `Array<u32>`, one element: the active slot (0 or 1).
    pub const ACTIVE: &str = "ACTIVE";
    /// `Array<XdpConfig>`, one element per slot.
    pub const CONFIG: &str = "CONFIG";
    /// Per-CPU packet counters: `PerCpuArray<u64>` indexed by [`super::Stat`].
    /// The one map that is not shared: each interface's copy of the program
    /// has its own, pinned as `STATS@<interface>` (layouts up to v4 before
    /// per-interface counters pinned one `STATS` for all).
    pub const STATS: &str = "STATS";
    /// Token buckets, shared by both slots so rate state survives rule-set
    /// swaps: `LruHashMap<[u8; 4], Bucket>` by the IPv4 source masked to
    /// the aggregation, and `LruHashMap<[u8; 16], Bucket>` by the IPv6 one.
    /// One map per family so that each key is no longer than its address
    /// (layouts up to v6 had one map keyed by the 20-byte [`super::BucketKey`]:
    /// hashing and comparing that key cost about 30 ns per IPv4 packet).
    pub const BUCKETS_V4: &str = "BUCKETS_V4";
    pub const BUCKETS_V6: &str = "BUCKETS_V6";
    /// The per-source verdict cache: `LruHashMap<[u8; 4], u64>` (IPv4) and
    /// `LruHashMap<[u8; 16], u64>` (IPv6), by exact source address; the
    /// value is the [`super::XdpConfig::generation`] at which the source was
    /// found on no deny or allow list, or that generation with
    /// [`super::DENIED_STAMP`] set when it was found on the deny list by an
    /// entry without expiry (and on no allow list). Shared by both slots,
    /// like the buckets. See [`super::VERDICT_MAX_ENTRIES`].
    pub const PASSED_V4: &str = "PASSED_V4";
    pub const PASSED_V6: &str = "PASSED_V6";
    /// Per-slot `HashMap<BucketKey, u32>`: the buckets that hold a list
    /// entry longer than the aggregation (their sources can get different
    /// verdicts, so the bucket must not cache one). Stale keys (the entry
    /// was removed) only cost a cached bucket; the slot's next rebuild drops
    /// them.
    pub const SPLIT: [&str; 2] = ["SPLIT_0", "SPLIT_1"];
    /// Per-slot maps: `LpmTrie<[u8; 4 | 16], Rule>` deny/allow lists,
    /// `LpmTrie<_, RateLimit>` per-CIDR rate overrides, and the protected
    /// destination port bitmap (`Array<u64>`, [`super::PORT_WORDS`] words).
    pub const DENY_V4: [&str; 2] = ["DENY_V4_0", "DENY_V4_1"];
    /// Per-slot hash maps for the IPv4 /32 and /24 entries of a list:
    /// `HashMap<[u8; 4], NetEntry>` by /24 network (its own rule, and
    /// whether /32 entries exist inside it) and `HashMap<[u8; 4], Rule>` by
    /// host.
    pub const DENY_V4_NETS: [&str; 2] = ["DENY_V4_NETS_0", "DENY_V4_NETS_1"];
    pub const DENY_V4_HOSTS: [&str; 2] = ["DENY_V4_HOSTS_0", "DENY_V4_HOSTS_1"];
    pub const ALLOW_V4_NETS: [&str; 2] = ["ALLOW_V4_NETS_0", "ALLOW_V4_NETS_1"];
    pub const ALLOW_V4_HOSTS: [&str; 2] = ["ALLOW_V4_HOSTS_0", "ALLOW_V4_HOSTS_1"];
    /// The same for IPv6 /48, /64 and /128 entries: `HashMap<[u8; 8],
    /// NetEntry>` by /48 (first 6 bytes, zero-padded), `HashMap<[u8; 8],
    /// Rule>` by /64 and `HashMap<[u8; 16], Rule>` by host.
    pub const DENY_V6_NETS: [&str; 2] = ["DENY_V6_NETS_0", "DENY_V6_NETS_1"];
    pub const DENY_V6_SUBNETS: [&str; 2] = ["DENY_V6_SUBNETS_0", "DENY_V6_SUBNETS_1"];
    pub const DENY_V6_HOSTS: [&str; 2] = ["DENY_V6_HOSTS_0", "DENY_V6_HOSTS_1"];
    pub const ALLOW_V6_NETS: [&str; 2] = ["ALLOW_V6_NETS_0", "ALLOW_V6_NETS_1"];
    pub const ALLOW_V6_SUBNETS: [&str; 2] = ["ALLOW_V6_SUBNETS_0", "ALLOW_V6_SUBNETS_1"];
    pub const ALLOW_V6_HOSTS: [&str; 2] = ["ALLOW_V6_HOSTS_0", "ALLOW_V6_HOSTS_1"];
    pub const DENY_V6: [&str; 2] = ["DENY_V6_0", "DENY_V6_1"];
    pub const ALLOW_V4: [&str; 2] = ["ALLOW_V4_0", "ALLOW_V4_1"];
    pub const ALLOW_V6: [&str; 2] = ["ALLOW_V6_0", "ALLOW_V6_1"];
    pub const RATE_V4: [&str; 2] = ["RATE_V4_0", "RATE_V4_1"];
    pub const RATE_V6: [&str; 2] = ["RATE_V6_0", "RATE_V6_1"];
    pub const PORTS: [&str; 2] = ["PORTS_0", "PORTS_1"];
    /// `Array<SynCookieConfig>`, one element: whether SYN cookies are
    /// configured and active (see [`super::SynCookieConfig`]).
    pub const SYNCOOKIE: &str = "SYNCOOKIE";
    /// `Array<u64>`, [`super::PORT_WORDS`] words: the ports SYN cookies
    /// protect (bit `p % 64` of word `p / 64`).
    pub const SYNCOOKIE_PORTS: &str = "SYNCOOKIE_PORTS";
    /// `PerCpuArray<u64>`, one element: SYNs seen to protected ports (the
    /// auto mode's rate; userspace sums the CPUs once a second).
    pub const SYNCOOKIE_SYNS: &str = "SYNCOOKIE_SYNS";
    /// `Array<u64>`, [`super::SYNCOOKIE_REFRESH_SLOTS`] elements: when a SYN
    /// to (family, port) was last handed to the kernel, so that its
    /// listener keeps accepting cookies (see `syncookie.rs`).
    pub const SYNCOOKIE_REFRESH: &str = "SYNCOOKIE_REFRESH";
    /// Dropped packets per source: `LruHashMap<BucketKey, DropCounts>`
    /// keyed by the full source address (see [`super::DropCounts`],
    /// [`super::DROPS_MAX_ENTRIES`]). Sampled: see
    /// [`super::XdpConfig::drop_sample`]. Shared by every interface.
    pub const DROPS: &str = "DROPS";
    /// Every map the program owns, in the order userspace pins them.
    pub const ALL: [&str; 48] = [
        ACTIVE,
        CONFIG,
        STATS,
        BUCKETS_V4,
        BUCKETS_V6,
        PASSED_V4,
        PASSED_V6,
        SPLIT[0],
        SPLIT[1],
        DENY_V4[0],
        DENY_V4[1],
        DENY_V6[0],
        DENY_V6[1],
        ALLOW_V4[0],
        ALLOW_V4[1],
        ALLOW_V6[0],
        ALLOW_V6[1],
        DENY_V4_NETS[0],
        DENY_V4_NETS[1],
        DENY_V4_HOSTS[0],
        DENY_V4_HOSTS[1],
        ALLOW_V4_NETS[0],
        ALLOW_V4_NETS[1],
        ALLOW_V4_HOSTS[0],
        ALLOW_V4_HOSTS[1],
        DENY_V6_NETS[0],
        DENY_V6_NETS[1],
        DENY_V6_SUBNETS[0],
        DENY_V6_SUBNETS[1],
        DENY_V6_HOSTS[0],
        DENY_V6_HOSTS[1],
        ALLOW_V6_NETS[0],
        ALLOW_V6_NETS[1],
        ALLOW_V6_SUBNETS[0],
        ALLOW_V6_SUBNETS[1],
        ALLOW_V6_HOSTS[0],
        ALLOW_V6_HOSTS[1],
        RATE_V4[0],
        RATE_V4[1],
        RATE_V6[0],
        RATE_V6[1],
        PORTS[0],
        PORTS[1],
        SYNCOOKIE,
        SYNCOOKIE_PORTS,
        SYNCOOKIE_SYNS,
        SYNCOOKIE_REFRESH,
        DROPS,
    ];
}

/// Elements of the SYN-cookie refresh map: one per (family, port).
pub const SYNCOOKIE_REFRESH_SLOTS: u32 = 2 * 65_536;

/// SYN-cookie settings (map `SYNCOOKIE`, element 0), written by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynCookieConfig {
    /// [`SynCookieConfig::CONFIGURED`], [`SynCookieConfig::ACTIVE`].
    pub flags: u32,
    /// MSS advertised in the SYN-ACK for IPv4 and IPv6 (the smallest
    /// attached interface's MTU minus the IP and TCP headers).
    pub mss_v4: u16,
    pub mss_v6: u16,
}

impl SynCookieConfig {
    /// `xdp.syn_cookies` is `on` or `auto`: SYNs to the protected ports are
    /// counted (the auto mode's rate) and, while not active, passed.
    pub const CONFIGURED: u32 = 1 << 0;
    /// SYNs to the protected ports are answered with cookies from XDP and
    /// ACKs to their listeners must carry a valid one.
    pub const ACTIVE: u32 = 1 << 1;
    /// `xdp.syn_cookies.tcp_options`: a SYN carrying a timestamp is answered
    /// with timestamps, and SACK and window scaling when it asks for them
    /// and the flags below allow, encoded in the low bits of the SYN-ACK's
    /// timestamp the way the kernel's `cookie_timestamp_decode` reads them
    /// back (it needs `net.ipv4.tcp_timestamps = 2`).
    pub const TCP_OPTIONS: u32 = 1 << 2;
    /// `net.ipv4.tcp_sack` is on: SACK may be granted.
    pub const SACK: u32 = 1 << 3;
    /// `net.ipv4.tcp_window_scaling` is on: window scaling may be granted.
    pub const WINDOW_SCALING: u32 = 1 << 4;
    /// Bits 8..12: the window scale to advertise, the one the kernel will
    /// pick for the connection it makes from the cookie.
    pub const WSCALE_SHIFT: u32 = 8;

    /// The window scale in [`SynCookieConfig::flags`].
    pub const fn wscale(&self) -> u8 {
        ((self.flags >> Self::WSCALE_SHIFT) & 0xF) as u8
    }
}

/// Capacity of each deny/allow trie. The tries are created with
/// `BPF_F_NO_PREALLOC`, so an empty slot costs no kernel memory; the limit is
/// set high enough for large threat feeds (100k prefixes) with headroom.
pub const LIST_MAX_ENTRIES: u32 = 262_144;
/// Value of the IPv4 /24 and IPv6 /48 list maps, keyed by that network:
/// the network's own entry when there is one, and whether longer entries
/// (IPv4 /32; IPv6 /64, /128) exist inside it. A source costs one lookup
/// here, and one more per kind of longer entry its network holds. All other
/// prefix lengths live in the LPM tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetEntry {
    /// Valid when `flags` has [`NetEntry::RULE`].
    pub rule: Rule,
    pub flags: u32,
    pub _pad: u32,
}

impl NetEntry {
    /// The network itself is on the list, with `rule`.
    pub const RULE: u32 = 1 << 0;
    /// The hosts map (IPv4 /32, IPv6 /128) may hold entries inside this
    /// network. Cleared only when the slot is rebuilt: a stale flag costs
    /// one lookup, no more.
    pub const HOSTS: u32 = 1 << 1;
    /// IPv6: the /64 map may hold entries inside this /48 (same rule).
    pub const SUBNETS: u32 = 1 << 2;
}

/// Bits of [`XdpConfig::present`]: which list structures of a slot may hold
/// entries, so the program skips lookups in empty ones.
pub mod present {
    /// Deny list (0) or allow list (1).
    pub const DENY: u32 = 0;
    pub const ALLOW: u32 = 1;
    /// Which structure of a list and family: the hash maps ([`HASH`]) or
    /// the trie ([`TRIE`]).
    pub const HASH: u32 = 0;
    pub const TRIE: u32 = 1;

    /// The bit for `list`'s `family` (4 or 6) structure `which`.
    pub const fn bit(list: u32, family: u32, which: u32) -> u32 {
        let family = if family == 4 { 0 } else { 1 };
        1 << ((list * 2 + family) * 2 + which)
    }
}

/// Capacity of each per-CIDR rate override trie.
pub const RATE_OVERRIDE_MAX_ENTRIES: u32 = 4_096;
/// Token buckets kept at once per family (`BUCKETS_V4`, `BUCKETS_V6`;
/// with the LRU's element header 24 and 26 MiB of kernel memory,
/// preallocated).
/// See `docs/xdp.md` for why an LRU of this size is safe against spoofed
/// floods: eviction only ever refills a bucket, it never blocks a source.
pub const BUCKET_MAX_ENTRIES: u32 = 262_144;
/// Sources each per-source verdict cache map (`PASSED_V4`, `PASSED_V6`)
/// remembers at once (an LRU: about 70 bytes each in the kernel, 9 MiB per
/// family, preallocated). A source evicted by a flood of new sources only
/// pays its list lookups once more; it is never given a wrong verdict.
pub const VERDICT_MAX_ENTRIES: u32 = 131_072;
/// Set in a per-source verdict cache value (`PASSED_V4`, `PASSED_V6`) next
/// to the generation: "denied by a permanent entry at this generation".
/// Generations never reach this bit (see [`next_generation`]).
pub const DENIED_STAMP: u64 = 1 << 63;
/// Of the denied sources that have no per-source cache entry yet, the
/// program adds one in this many (at random): a source that keeps sending
/// is cached after about this many packets, while a flood of spoofed denied
/// sources inserts into the LRU at a small fraction of its rate.
pub const DENIED_CACHE_SAMPLE: u32 = 64;

/// The rule-set generation after `current`: never 0 (a slot userspace has
/// not written) and never with [`DENIED_STAMP`]'s bit.
pub fn next_generation(current: u64) -> u64 {
    (current.wrapping_add(1) & !DENIED_STAMP).max(1)
}
/// Sources the per-source drop map (`DROPS`) holds at once (an LRU: about
/// 120 bytes each in the kernel, 2 MiB, preallocated). Under a flood of
/// spoofed sources the least recently sampled ones are evicted; a heavy
/// dropper is sampled again within a few of its packets and keeps its place.
pub const DROPS_MAX_ENTRIES: u32 = 16_384;
/// The default of [`XdpConfig::drop_sample`]: one drop in 64, on average,
/// updates the per-source drop map.
pub const DROP_SAMPLE_DEFAULT: u32 = 64;

/// Why the program dropped a source's packets: the index into
/// [`DropCounts::packets`]. (Malformed frames have no trustworthy source and
/// are counted only in `STATS`.)
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The source matched the deny list ([`Stat::DeniedV4`], [`Stat::DeniedV6`]).
    Denied = 0,
    /// Over its token-bucket budget ([`Stat::RateLimited`]).
    RateLimited = 1,
    /// An ACK with an invalid SYN cookie ([`Stat::SynCookieInvalid`]).
    SynCookieInvalid = 2,
}

impl DropReason {
    /// Number of reasons (length of [`DropCounts::packets`]).
    pub const COUNT: usize = 3;
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Denied,
        DropReason::RateLimited,
        DropReason::SynCookieInvalid,
    ];

    /// The reason a dropped packet counted under `stat` is recorded with.
    pub const fn of(stat: Stat) -> Option<DropReason> {
        match stat {
            Stat::DeniedV4 | Stat::DeniedV6 => Some(DropReason::Denied),
            Stat::RateLimited => Some(DropReason::RateLimited),
            Stat::SynCookieInvalid => Some(DropReason::SynCookieInvalid),
            _ => None,
        }
    }

    /// Stable label (status page, admin API, CLI).
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Denied => "deny_list",
            DropReason::RateLimited => "rate_limited",
            DropReason::SynCookieInvalid => "syn_cookie_invalid",
        }
    }
}

/// Value of the `DROPS` map: one source's dropped packets, estimated from
/// samples (each sample adds the number of drops it stands for), by
/// [`DropReason`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounts {
    pub packets: [u64; DropReason::COUNT],
    /// `CLOCK_MONOTONIC` (coarse) nanoseconds of the last sample.
    pub last_ns: u64,
}

/// Capacity of each `SPLIT` map: one key per list entry longer than the
/// aggregation at most, deny and allow lists together.
pub const SPLIT_MAX_ENTRIES: u32 = 2 * LIST_MAX_ENTRIES;
/// The protected-port bitmap: 65,536 bits in 64-bit words.
pub const PORT_WORDS: u32 = 1_024;

/// Value stored with each deny or allow prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// Expiry as `CLOCK_MONOTONIC` nanoseconds (what `bpf_ktime_get_ns`
    /// returns); `0` means the rule never expires. An expired rule stops
    /// matching at once in the kernel; userspace reaps it later.
    pub expires_at_ns: u64,
    /// Where the entry came from (see [`RuleSource`]).
    pub source: u32,
    pub _pad: u32,
}

/// Where a rule came from.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleSource {
    /// The config file's `xdp.deny` / `xdp.allow` lists.
    Config = 0,
    /// The CLI / admin API, persisted in the state directory.
    Cli = 1,
}

/// A token bucket's parameters: one token per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// Nanoseconds to earn one token (10^9 / packets per second); `0`
    /// disables policing for the sources it applies to.
    pub cost_ns: u64,
    /// Bucket depth in packets.
    pub burst: u64,
    /// `u64::MAX / cost_ns`: the largest `n` for which `n * cost_ns` does not
    /// overflow. Precomputed so the kernel compares with a multiplication
    /// instead of a 64-bit division on every packet.
    pub max_tokens: u64,
}

impl RateLimit {
    /// From packets per second and burst; a rate of 0 means unlimited.
    pub const fn per_second(rate: u64, burst: u64) -> Self {
        let cost_ns = match 1_000_000_000u64.checked_div(rate) {
            Some(cost) => cost,
            None => 0,
        };
        // A rate above 10^9 pps rounds to cost 0 (unlimited); keep it at 1 ns.
        let cost_ns = if rate != 0 && cost_ns == 0 {
            1
        } else {
            cost_ns
        };
        let max_tokens = match u64::MAX.checked_div(cost_ns) {
            Some(n) => n,
            None => u64::MAX,
        };
        Self {
            cost_ns,
            burst,
            max_tokens,
        }
    }
}

/// Flags in [`XdpConfig::flags`].
pub mod flags {
    /// Per-source rate limiting is on.
    pub const RATE_LIMIT: u32 = 1 << 0;
    /// Police only TCP SYNs (new connections), not every packet.
    pub const SYN_ONLY: u32 = 1 << 1;
    /// Police only packets to ports set in the `PORTS` bitmap.
    pub const PROTECTED_PORTS: u32 = 1 << 2;
    /// The slot's allow lists may hold entries (else their lookup is
    /// skipped). Set by userspace, never cleared while the slot is active.
    /// (Which of the allow maps hold entries is in [`XdpConfig::present`].)
    pub const HAS_ALLOW: u32 = 1 << 3;
    /// The slot has per-CIDR rate overrides (else their lookup is skipped).
    pub const HAS_OVERRIDES: u32 = 1 << 4;
    /// No IPv4 deny/allow entry of the slot is longer than `v4_prefix_len`,
    /// so every source a bucket aggregates gets the same list verdict and a
    /// bucket may remember "on no list" (see [`super::Bucket::list_gen`]).
    /// Without it, a bucket is stamped only when the slot's `SPLIT` map
    /// does not hold its key; the sources of buckets it holds have their
    /// verdict cached by exact address in `PASSED_V4`, as every source that
    /// is not policed does.
    pub const CACHE_V4: u32 = 1 << 5;
    /// The same for IPv6 and `v6_prefix_len`.
    pub const CACHE_V6: u32 = 1 << 6;
    /// The slot's `SPLIT` map lists every bucket that holds an entry longer
    /// than the aggregation (written by a daemon that maintains it), so a
    /// bucket it does not list may cache the verdict even without
    /// `CACHE_V4`/`CACHE_V6`. A slot written by an older daemon lacks it and
    /// its buckets then cache nothing while it lacks the family's flag.
    pub const SPLIT_LISTED: u32 = 1 << 7;
}

/// Per-slot settings of the kernel policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpConfig {
    pub flags: u32,
    /// Sources are aggregated to this prefix for rate limiting (IPv4).
    pub v4_prefix_len: u32,
    /// ... and for IPv6 (/64 by default: one customer network).
    pub v6_prefix_len: u32,
    /// Which list maps may hold entries: [`present::bit`] bits.
    pub present: u32,
    /// Default budget for every source without an override.
    pub rate: RateLimit,
    /// Changes (grows) with every change to the deny/allow lists that could
    /// change a cached verdict: a new rule set, an added entry, a removed
    /// deny entry. Never 0 in a slot userspace has written (see
    /// [`next_generation`]). Buckets and per-source cache entries stamped
    /// with another value are looked up in the lists again.
    pub generation: u64,
    /// Per-source drop counting (map `DROPS`): on average one drop in this
    /// many (per CPU, at random intervals) is recorded, weighted by the
    /// drops since the previous sample; 1 records every drop, 0 none.
    pub drop_sample: u32,
    pub _pad: u32,
}

/// A source address masked to the configured prefix length, with its
/// family: the key of the `SPLIT` maps (and, with the full address, of
/// `DROPS`). The buckets themselves are keyed by the address alone, the
/// first four bytes for IPv4 (`BUCKETS_V4`) or all sixteen
/// (`BUCKETS_V6`). IPv4 uses the first four bytes of `addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BucketKey {
    pub addr: [u8; 16],
    /// 4 or 6.
    pub family: u32,
}

/// A token bucket kept as "packets admitted since `start_ns`": the tokens
/// left are `burst + (now - start_ns) / cost_ns - admitted`. Admission is one
/// atomic add, so the budget is global for the source across CPUs; when the
/// bucket would hold more than `burst` tokens, it is re-based to `now`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub start_ns: u64,
    pub admitted: u64,
    /// Verdict cache: the [`XdpConfig::generation`] at which the source(s)
    /// of this bucket were last found on no deny or allow list; `0` if
    /// never. While it equals the active slot's generation the program skips
    /// the list lookups for this source. Written only when no list entry
    /// longer than the aggregation lies inside the bucket (the slot's
    /// `CACHE_V4`/`CACHE_V6` flag, or its key absent from the slot's `SPLIT`
    /// map); the sources of other buckets, and sources that are not policed,
    /// use the per-source cache (`PASSED_V4`/`PASSED_V6`) instead.
    pub list_gen: u64,
}

/// Indices into the per-CPU `STATS` array: one counter per verdict and reason.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// IPv4/IPv6 packet that no rule stopped: `XDP_PASS`.
    Passed = 0,
    /// Not IPv4/IPv6 (ARP, LLDP, ...): always `XDP_PASS`, never policed.
    NonIp = 1,
    /// Source on the allow list: `XDP_PASS`, never policed.
    AllowListed = 2,
    /// Source matched the IPv4 deny list: `XDP_DROP`.
    DeniedV4 = 3,
    /// Source matched the IPv6 deny list: `XDP_DROP`.
    DeniedV6 = 4,
    /// Source over its token-bucket budget: `XDP_DROP`.
    RateLimited = 5,
    /// Truncated or malformed headers: `XDP_DROP` (the kernel stack would
    /// discard them anyway; dropping here costs less).
    Malformed = 6,
    /// ICMPv6 neighbour discovery: always `XDP_PASS` so the host is never cut
    /// off its link, even from a denied source.
    NeighborDiscovery = 7,
    /// SYN to a port protected by SYN cookies, answered from XDP with a
    /// SYN-ACK carrying a cookie: `XDP_TX`.
    SynCookieSent = 8,
    /// ACK to a protected listener carrying a valid cookie: `XDP_PASS`
    /// (the kernel creates the connection from it).
    SynCookieValid = 9,
    /// ACK to a protected listener with an invalid (forged, expired)
    /// cookie: `XDP_DROP`.
    SynCookieInvalid = 10,
    /// SYN to a protected port handed to the kernel: cookies configured but
    /// not active (auto mode below its threshold), or the periodic SYN that
    /// keeps the listener accepting cookies. (Frames the program does not
    /// parse for cookies, e.g. VLAN-tagged ones, count as `Passed`.)
    SynPassed = 11,
    /// SYN to a protected port, while cookies are active, whose TCP
    /// checksum is wrong: `XDP_DROP`, neither answered nor handed to the
    /// kernel (which would discard it too).
    SynBadChecksum = 12,
}

impl Stat {
    /// Number of counters (size of the `STATS` array).
    pub const COUNT: u32 = 13;
    /// Every counter, in index order.
    pub const ALL: [Stat; Self::COUNT as usize] = [
        Stat::Passed,
        Stat::NonIp,
        Stat::AllowListed,
        Stat::DeniedV4,
        Stat::DeniedV6,
        Stat::RateLimited,
        Stat::Malformed,
        Stat::NeighborDiscovery,
        Stat::SynCookieSent,
        Stat::SynCookieValid,
        Stat::SynCookieInvalid,
        Stat::SynPassed,
        Stat::SynBadChecksum,
    ];

    /// Stable metric label for the counter.
    pub const fn name(self) -> &'static str {
        match self {
            Stat::Passed => "passed",
            Stat::NonIp => "non_ip",
            Stat::AllowListed => "allow_listed",
            Stat::DeniedV4 => "denied_v4",
            Stat::DeniedV6 => "denied_v6",
            Stat::RateLimited => "rate_limited",
            Stat::Malformed => "malformed",
            Stat::NeighborDiscovery => "neighbor_discovery",
            Stat::SynCookieSent => "syn_cookie_sent",
            Stat::SynCookieValid => "syn_cookie_valid",
            Stat::SynCookieInvalid => "syn_cookie_invalid",
            Stat::SynPassed => "syn_passed",
            Stat::SynBadChecksum => "syn_bad_checksum",
        }
    }

    /// The verdict the program returned for packets counted here.
    pub const fn dropped(self) -> bool {
        matches!(
            self,
            Stat::DeniedV4
                | Stat::DeniedV6
                | Stat::RateLimited
                | Stat::Malformed
                | Stat::SynCookieInvalid
                | Stat::SynBadChecksum
        )
    }

    /// Whether the program sent the (rewritten) frame back out of the
    /// interface it came in on (`XDP_TX`).
    pub const fn transmitted(self) -> bool {
        matches!(self, Stat::SynCookieSent)
    }

    /// The verdict label: `drop`, `tx` or `pass`.
    pub const fn verdict(self) -> &'static str {
        if self.dropped() {
            "drop"
        } else if self.transmitted() {
            "tx"
        } else {
            "pass"
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY (all of them): `#[repr(C)]`, `Copy`, padding made explicit, and
    // every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Rule {}
    unsafe impl aya::Pod for super::RateLimit {}
    unsafe impl aya::Pod for super::XdpConfig {}
    unsafe impl aya::Pod for super::BucketKey {}
    unsafe impl aya::Pod for super::Bucket {}
    unsafe impl aya::Pod for super::NetEntry {}
    unsafe impl aya::Pod for super::SynCookieConfig {}
    unsafe impl aya::Pod for super::DropCounts {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_never_take_zero_or_the_denied_bit() {
        assert_eq!(next_generation(0), 1);
        assert_eq!(next_generation(41), 42);
        // Past the last generation below the bit: back to 1, never a value
        // a denied stamp could be confused with.
        assert_eq!(next_generation(DENIED_STAMP - 1), 1);
        assert_eq!(next_generation(u64::MAX), 1);
    }
}
