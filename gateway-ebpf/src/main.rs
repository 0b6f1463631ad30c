//! xgate's XDP program: drops packets from denied sources, and from sources
//! over their rate budget, before the network stack allocates anything.
//!
//! Packet path: Ethernet → up to two VLAN tags (802.1ad / 802.1Q) → IPv4
//! (version and IHL checked, options skipped) or IPv6 (bounded walk over
//! extension headers) → L4 ports and TCP flags when present. Then:
//! non-IP and ICMPv6 neighbour discovery pass (the host must never be cut off
//! its link) → allow list passes → deny list drops → token bucket per source
//! (on protected ports, optionally SYNs only) drops over budget → pass.
//! The verdict cache comes first: when the source's bucket (policed, and
//! the slot lets buckets cache) or its per-source entry (every other case,
//! `cache.rs`) records that it was on no list at the current rule-set
//! generation, or its per-source entry that a deny entry without expiry
//! denied it, the list lookups are skipped (see `docs/xdp.md`). Lists keep
//! entries of common lengths in hash maps and the rest in LPM tries.
//! Every packet is counted under exactly one [`Stat`]; dropped packets are
//! also counted per source, sampled (`drops.rs`).
//
// Built for real only for the BPF target; on the host (`cargo clippy
// --workspace`, `cargo build --workspace`) it compiles to an empty binary so
// the workspace-wide commands keep working.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The BPF target has no atomic RMW in `core::sync::atomic`; the intrinsic
// compiles to BPF_XADD when its result is unused.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

mod cache;
mod clock;
mod drops;
mod parse;
mod syncookie;

use aya_ebpf::{
    bindings::{xdp_action, xdp_md, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::{map, xdp},
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, LruHashMap, PerCpuArray,
    },
    programs::XdpContext,
};
use gateway_common::{
    flags, present, Bucket, BucketKey, NetEntry, RateLimit, Rule, Stat, XdpConfig,
    BUCKET_MAX_ENTRIES, LIST_MAX_ENTRIES, PORT_WORDS, RATE_OVERRIDE_MAX_ENTRIES, SLOTS,
    SPLIT_MAX_ENTRIES,
};

use crate::parse::{Frame, Packet, Src};

impl Frame for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

/// The active rule-set slot (0 or 1), element 0. Flipped by userspace after
/// it has filled the other slot, so a swap is atomic for the packet path.
#[map(name = "ACTIVE")]
static ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// Per-slot policy settings (flags, aggregation, default budget).
#[map(name = "CONFIG")]
static CONFIG: Array<XdpConfig> = Array::with_max_entries(SLOTS, 0);

/// Packet counters, one slot per [`Stat`], per CPU (no atomics needed on the
/// hot path; userspace sums the CPUs). Userspace loads one copy of this
/// program per interface, each with its own `STATS` and every other map
/// shared, so the counters are per interface at no cost here.
#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Stat::COUNT, 0);

/// Token buckets by aggregated source, one map per family so that a key is
/// no longer than its address (a 20-byte key cost about 30 ns more per
/// packet to hash and compare than a 4-byte one). LRU: under a flood of
/// spoofed sources the least recently seen buckets of that family are
/// evicted, which only refills them.
#[map(name = "BUCKETS_V4")]
static BUCKETS_V4: LruHashMap<[u8; 4], Bucket> =
    LruHashMap::with_max_entries(BUCKET_MAX_ENTRIES, 0);
#[map(name = "BUCKETS_V6")]
static BUCKETS_V6: LruHashMap<[u8; 16], Bucket> =
    LruHashMap::with_max_entries(BUCKET_MAX_ENTRIES, 0);

/// The bucket of `key`'s source, if it has one.
#[inline(always)]
fn bucket_lookup(key: &BucketKey) -> Option<*mut Bucket> {
    if key.family == 4 {
        BUCKETS_V4.get_ptr_mut(v4_key(key))
    } else {
        BUCKETS_V6.get_ptr_mut(key.addr)
    }
}

/// The IPv4 bucket key: the first four bytes.
#[inline(always)]
fn v4_key(key: &BucketKey) -> [u8; 4] {
    [key.addr[0], key.addr[1], key.addr[2], key.addr[3]]
}

/// Source deny lists per slot. Key: source prefix (network byte order) and
/// its length; value: [`Rule`] (expiry, origin). Longest prefix wins.
#[map(name = "DENY_V4_0")]
static DENY_V4_0: LpmTrie<[u8; 4], Rule> = LpmTrie::with_max_entries(LIST_MAX_ENTRIES, 0);
#[map(name = "DENY_V4_1")]
static DENY_V4_1: LpmTrie<[u8; 4], Rule> = LpmTrie::with_max_entries(LIST_MAX_ENTRIES, 0);
#[map(name = "DENY_V6_0")]
static DENY_V6_0: LpmTrie<[u8; 16], Rule> = LpmTrie::with_max_entries(LIST_MAX_ENTRIES, 0);
#[map(name = "DENY_V6_1")]
static DENY_V6_1: LpmTrie<[u8; 16], Rule> = LpmTrie::with_max_entries(LIST_MAX_ENTRIES, 0);

/// Source allow lists per slot: same key and value as the deny lists. An
/// allowed source is never denied or policed.
#[map(name = "ALLOW_V4_0")]
static ALLOW_V4_0: LpmTrie<[u8; 4], Rule> = LpmTrie::with_max_entries(LIST_MAX_ENTRIES, 0);
#[map(name = "ALLOW_V4_1")]
static ALLOW_V4_1: LpmTrie<[u8; 4], Rule> = LpmTrie::with_max_entries(LIST_MAX_ENTRIES, 0);
#[map(name = "ALLOW_V6_0")]
static ALLOW_V6_0: LpmTrie<[u8; 16], Rule> = LpmTrie::with_max_entries(LIST_MAX_ENTRIES, 0);
#[map(name = "ALLOW_V6_1")]
static ALLOW_V6_1: LpmTrie<[u8; 16], Rule> = LpmTrie::with_max_entries(LIST_MAX_ENTRIES, 0);

/// The lists' IPv4 /24 and /32 entries and IPv6 /48, /64 and /128 entries,
/// per slot, in hash maps (see [`NetEntry`]): a lookup or two instead of a
/// trie walk. A source is on a list when any of its structures holds a live
/// entry for it.
#[map(name = "DENY_V4_NETS_0")]
static DENY_V4_NETS_0: HashMap<[u8; 4], NetEntry> =
    HashMap::with_max_entries(LIST_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "DENY_V4_NETS_1")]
static DENY_V4_NETS_1: HashMap<[u8; 4], NetEntry> =
    HashMap::with_max_entries(LIST_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "DENY_V4_HOSTS_0")]
static DENY_V4_HOSTS_0: HashMap<[u8; 4], Rule> =
    HashMap::with_max_entries(LIST_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "DENY_V4_HOSTS_1")]
static DENY_V4_HOSTS_1: HashMap<[u8; 4], Rule> =
    HashMap::with_max_entries(LIST_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "DENY_V6_NETS_0")]
static DENY_V6_NETS_0: HashMap<[u8; 8], NetEntry> =
    HashMap::with_max_entries(LIST_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "DENY_V6_SUBNETS_0")]
static DENY_V6_SUBNETS_0: HashMap<[u8; 8], Rule> =
    HashMap::with_max_entries(LIST_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "DENY_V6_HOSTS_0")]
static DENY_V6_HOSTS_0: HashMap<[u8; 16], Rule> =
    HashMap::with_max_entries(LIST_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "DENY_V6_NETS_1")]
static DENY_V6_NETS_1: HashMap<[u8; 8], NetEntry> =
    HashMap::with_max_entries(LIST_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "DENY_V6_SUBNETS_1")]
static DENY_V6_SUBNETS_1: HashMap<[u8; 8], Rule> =
    HashMap::with_max_entries(LIST_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "DENY_V6_HOSTS_1")]
static DENY_V6_HOSTS_1: HashMap<[u8; 16], Rule> =
    HashMap::with_max_entries(LIST_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "ALLOW_V4_NETS_0")]
static ALLOW_V4_NETS_0: HashMap<[u8; 4], NetEntry> =
    HashMap::with_max_entries(LIST_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "ALLOW_V4_NETS_1")]
static ALLOW_V4_NETS_1: HashMap<[u8; 4], NetEntry> =
    HashMap::with_max_entries(LIST_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "ALLOW_V4_HOSTS_0")]
static ALLOW_V4_HOSTS_0: HashMap<[u8; 4], Rule> =
    HashMap::with_max_entries(LIST_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "ALLOW_V4_HOSTS_1")]
static ALLOW_V4_HOSTS_1: HashMap<[u8; 4], Rule> =
    HashMap::with_max_entries(LIST_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "ALLOW_V6_NETS_0")]
static ALLOW_V6_NETS_0: HashMap<[u8; 8], NetEntry> =
    HashMap::with_max_entries(LIST_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "ALLOW_V6_SUBNETS_0")]
static ALLOW_V6_SUBNETS_0: HashMap<[u8; 8], Rule> =
    HashMap::with_max_entries(LIST_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "ALLOW_V6_HOSTS_0")]
static ALLOW_V6_HOSTS_0: HashMap<[u8; 16], Rule> =
    HashMap::with_max_entries(LIST_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "ALLOW_V6_NETS_1")]
static ALLOW_V6_NETS_1: HashMap<[u8; 8], NetEntry> =
    HashMap::with_max_entries(LIST_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "ALLOW_V6_SUBNETS_1")]
static ALLOW_V6_SUBNETS_1: HashMap<[u8; 8], Rule> =
    HashMap::with_max_entries(LIST_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "ALLOW_V6_HOSTS_1")]
static ALLOW_V6_HOSTS_1: HashMap<[u8; 16], Rule> =
    HashMap::with_max_entries(LIST_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Per-CIDR budgets that replace the default for sources inside them.
#[map(name = "RATE_V4_0")]
static RATE_V4_0: LpmTrie<[u8; 4], RateLimit> =
    LpmTrie::with_max_entries(RATE_OVERRIDE_MAX_ENTRIES, 0);
#[map(name = "RATE_V4_1")]
static RATE_V4_1: LpmTrie<[u8; 4], RateLimit> =
    LpmTrie::with_max_entries(RATE_OVERRIDE_MAX_ENTRIES, 0);
#[map(name = "RATE_V6_0")]
static RATE_V6_0: LpmTrie<[u8; 16], RateLimit> =
    LpmTrie::with_max_entries(RATE_OVERRIDE_MAX_ENTRIES, 0);
#[map(name = "RATE_V6_1")]
static RATE_V6_1: LpmTrie<[u8; 16], RateLimit> =
    LpmTrie::with_max_entries(RATE_OVERRIDE_MAX_ENTRIES, 0);

/// Protected destination ports per slot: bit `p % 64` of word `p / 64`.
#[map(name = "PORTS_0")]
static PORTS_0: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);
#[map(name = "PORTS_1")]
static PORTS_1: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);

/// Buckets (by [`BucketKey`]) that hold a deny or allow entry longer than
/// the aggregation, per slot: their sources can get different verdicts, so
/// such a bucket never caches one (its sources use the per-source cache).
/// Looked up only when a bucket is about to be stamped and the slot's
/// `CACHE_V4`/`CACHE_V6` flag is off. Value unused (1).
#[map(name = "SPLIT_0")]
static SPLIT_0: HashMap<BucketKey, u32> =
    HashMap::with_max_entries(SPLIT_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "SPLIT_1")]
static SPLIT_1: HashMap<BucketKey, u32> =
    HashMap::with_max_entries(SPLIT_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[xdp]
pub fn xgate_xdp(ctx: XdpContext) -> u32 {
    let mut stat = lists_and_limits(ctx.ctx);
    if stat == Stat::Passed && syncookie::configured() {
        // SYN cookies see what the lists and rate limits let through.
        stat = syn_cookies(ctx.ctx);
    }
    count(stat);
    if stat.dropped() {
        // Per-source drop counting, sampled (see `drops.rs`); malformed
        // frames have no source worth counting.
        if !matches!(stat, Stat::Malformed) {
            drops::count(ctx.ctx, stat);
        }
        xdp_action::XDP_DROP
    } else if stat.transmitted() {
        xdp_action::XDP_TX
    } else {
        xdp_action::XDP_PASS
    }
}

/// [`classify`] as a BPF subprogram. It and [`syncookie::guard`] each
/// need most of BPF's 512-byte stack; inlined into one function their
/// frames add up past it (LLVM refuses to build the program), while as two
/// calls in turn only one of them is on the stack at a time. A call costs
/// about a nanosecond.
#[inline(never)]
fn lists_and_limits(ctx: *mut xdp_md) -> Stat {
    keep_context(ctx);
    classify(&XdpContext::new(ctx))
}

/// [`syncookie::guard`] as a BPF subprogram (see [`lists_and_limits`]).
#[inline(never)]
fn syn_cookies(ctx: *mut xdp_md) -> Stat {
    keep_context(ctx);
    syncookie::guard(&XdpContext::new(ctx))
}

/// The active slot's `drop_sample` (read only when a sample is due).
#[inline(always)]
pub(crate) fn drop_sample() -> u32 {
    let index = ACTIVE.get(0).copied().unwrap_or(0) & 1;
    CONFIG.get(index).map_or(0, |c| c.drop_sample)
}

/// A volatile read through the context pointer. Without it LLVM may
/// replace a subprogram's pointer argument by the values loaded through it
/// (`data`, `data_end`: argument promotion), and the verifier refuses a
/// subprogram whose context argument is not the context ("arg#0 expects
/// pointer to ctx").
#[inline(always)]
pub(crate) fn keep_context(ctx: *mut xdp_md) {
    // SAFETY: `ctx` is the program's context, valid for the whole run.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*ctx).data)) };
}

/// Passes everything: the floor the benchmarks measure against.
#[xdp]
pub fn xgate_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// One list's IPv4 structures (see [`listed_v4`]).
struct V4List {
    nets: &'static HashMap<[u8; 4], NetEntry>,
    hosts: &'static HashMap<[u8; 4], Rule>,
    trie: &'static LpmTrie<[u8; 4], Rule>,
}

/// One list's IPv6 structures (see [`listed_v6`]).
struct V6List {
    nets: &'static HashMap<[u8; 8], NetEntry>,
    subnets: &'static HashMap<[u8; 8], Rule>,
    hosts: &'static HashMap<[u8; 16], Rule>,
    trie: &'static LpmTrie<[u8; 16], Rule>,
}

/// One slot's maps.
struct Slot {
    deny_v4: V4List,
    deny_v6: V6List,
    allow_v4: V4List,
    allow_v6: V6List,
    rate_v4: &'static LpmTrie<[u8; 4], RateLimit>,
    rate_v6: &'static LpmTrie<[u8; 16], RateLimit>,
    ports: &'static Array<u64>,
    split: &'static HashMap<BucketKey, u32>,
}

#[inline(always)]
fn slot(index: u32) -> Slot {
    if index == 0 {
        Slot {
            deny_v4: V4List {
                nets: &DENY_V4_NETS_0,
                hosts: &DENY_V4_HOSTS_0,
                trie: &DENY_V4_0,
            },
            deny_v6: V6List {
                nets: &DENY_V6_NETS_0,
                subnets: &DENY_V6_SUBNETS_0,
                hosts: &DENY_V6_HOSTS_0,
                trie: &DENY_V6_0,
            },
            allow_v4: V4List {
                nets: &ALLOW_V4_NETS_0,
                hosts: &ALLOW_V4_HOSTS_0,
                trie: &ALLOW_V4_0,
            },
            allow_v6: V6List {
                nets: &ALLOW_V6_NETS_0,
                subnets: &ALLOW_V6_SUBNETS_0,
                hosts: &ALLOW_V6_HOSTS_0,
                trie: &ALLOW_V6_0,
            },
            rate_v4: &RATE_V4_0,
            rate_v6: &RATE_V6_0,
            ports: &PORTS_0,
            split: &SPLIT_0,
        }
    } else {
        Slot {
            deny_v4: V4List {
                nets: &DENY_V4_NETS_1,
                hosts: &DENY_V4_HOSTS_1,
                trie: &DENY_V4_1,
            },
            deny_v6: V6List {
                nets: &DENY_V6_NETS_1,
                subnets: &DENY_V6_SUBNETS_1,
                hosts: &DENY_V6_HOSTS_1,
                trie: &DENY_V6_1,
            },
            allow_v4: V4List {
                nets: &ALLOW_V4_NETS_1,
                hosts: &ALLOW_V4_HOSTS_1,
                trie: &ALLOW_V4_1,
            },
            allow_v6: V6List {
                nets: &ALLOW_V6_NETS_1,
                subnets: &ALLOW_V6_SUBNETS_1,
                hosts: &ALLOW_V6_HOSTS_1,
                trie: &ALLOW_V6_1,
            },
            rate_v4: &RATE_V4_1,
            rate_v6: &RATE_V6_1,
            ports: &PORTS_1,
            split: &SPLIT_1,
        }
    }
}

/// Decides what happens to one frame. Every branch names the counter it
/// lands in, so verdicts and statistics cannot drift apart.
#[inline(always)]
fn classify(ctx: &XdpContext) -> Stat {
    let packet = match parse::parse(ctx) {
        Ok(Some(packet)) => packet,
        Ok(None) => return Stat::NonIp,
        Err(parse::Malformed) => return Stat::Malformed,
    };
    if packet.neighbor_discovery {
        return Stat::NeighborDiscovery;
    }
    let index = ACTIVE.get(0).copied().unwrap_or(0) & 1;
    let Some(config) = CONFIG.get(index) else {
        return Stat::Passed;
    };
    let maps = slot(index);
    // Lookups in maps known to be empty are skipped.
    let has_allow = config.flags & flags::HAS_ALLOW != 0;
    let has_overrides = config.flags & flags::HAS_OVERRIDES != 0;
    // Read the clock only when something needs it (expiring rules, buckets).
    let mut now = 0u64;
    // The verdict cache: a source found on no list at the current
    // generation skips the list lookups. A policed source's bucket holds
    // that stamp when every source it aggregates gets the same verdict (one
    // lookup for both); every other packet uses the per-source cache (see
    // `cache.rs`), which also remembers sources denied by a permanent entry.
    let policing = config.flags & flags::RATE_LIMIT != 0 && policed(&packet, config, &maps);
    let policed_key = if policing {
        Some(bucket_key(&packet.src, config))
    } else {
        None
    };
    let bucket = match &policed_key {
        Some((key, _)) => bucket_lookup(key),
        None => None,
    };
    let generation = config.generation;
    let mut stamp = match bucket {
        // SAFETY: `b` points into the map value, valid for this program run.
        Some(b) if generation != 0 && unsafe { (*b).list_gen } == generation => generation,
        _ => 0,
    };
    let mut cached = stamp != 0;
    let mut entry = None;
    if !cached {
        entry = cache::lookup(&packet.src);
        match cache::verdict(entry, generation) {
            cache::Cached::Passed => cached = true,
            cache::Cached::Denied => return denied(&packet.src),
            cache::Cached::Unknown => {}
        }
    }
    if !cached {
        let bits = config.present;
        let deny = if packet.src.v6 {
            let src = packet.src.addr;
            if has_allow && listed_v6(present::ALLOW, &maps.allow_v6, bits, src, &mut now).any() {
                return Stat::AllowListed;
            }
            listed_v6(present::DENY, &maps.deny_v6, bits, src, &mut now)
        } else {
            let src = packet.src.v4_addr();
            if has_allow && listed_v4(present::ALLOW, &maps.allow_v4, bits, src, &mut now).any() {
                return Stat::AllowListed;
            }
            listed_v4(present::DENY, &maps.deny_v4, bits, src, &mut now)
        };
        match deny {
            Listed::No => {}
            Listed::Expiring => return denied(&packet.src),
            Listed::Permanent => {
                cache::remember_denied(&packet.src, entry, generation);
                return denied(&packet.src);
            }
        }
        // On no list. The bucket may say so for all its sources unless a
        // list entry longer than the aggregation lies inside it.
        match policed_key {
            Some((_, true)) => stamp = generation,
            Some((key, false))
                if config.flags & flags::SPLIT_LISTED != 0 && maps.split.get_ptr(key).is_none() =>
            {
                stamp = generation
            }
            _ => cache::remember(&packet.src, entry, generation),
        }
    }
    let Some((key, _)) = policed_key else {
        return Stat::Passed;
    };
    let limit = if has_overrides {
        if packet.src.v6 {
            let lookup = AlignedKey {
                key: Key::new(128, packet.src.addr),
            };
            maps.rate_v6.get(&lookup.key).copied()
        } else {
            let lookup = AlignedKey {
                key: Key::new(32, packet.src.v4_addr()),
            };
            maps.rate_v4.get(&lookup.key).copied()
        }
        .unwrap_or(config.rate)
    } else {
        config.rate
    };
    if limit.cost_ns == 0 {
        return Stat::Passed;
    }
    if now == 0 {
        now = clock::coarse_ns();
    }
    if admit(bucket, &key, &limit, now, stamp) {
        Stat::Passed
    } else {
        Stat::RateLimited
    }
}

/// The source's bucket key (its address masked to the aggregation prefix),
/// and whether the slot lets every bucket of its family cache the list
/// verdict without looking in the slot's `SPLIT` map.
#[inline(always)]
fn bucket_key(src: &Src, config: &XdpConfig) -> (BucketKey, bool) {
    if src.v6 {
        (
            BucketKey {
                addr: mask_v6(src.addr, config.v6_prefix_len),
                family: 6,
            },
            config.flags & flags::CACHE_V6 != 0,
        )
    } else {
        let mut addr = [0u8; 16];
        let masked = mask(u32::from_be_bytes(src.v4_addr()), config.v4_prefix_len).to_be_bytes();
        addr[0] = masked[0];
        addr[1] = masked[1];
        addr[2] = masked[2];
        addr[3] = masked[3];
        (
            BucketKey { addr, family: 4 },
            config.flags & flags::CACHE_V4 != 0,
        )
    }
}

/// Whether this packet is subject to the token bucket at all.
#[inline(always)]
fn policed(packet: &Packet, config: &XdpConfig, maps: &Slot) -> bool {
    if config.flags & flags::SYN_ONLY != 0 && !packet.tcp_syn {
        return false;
    }
    if config.flags & flags::PROTECTED_PORTS != 0 {
        // Non-first fragments carry no ports: they are policed (a flood must
        // not slip through by fragmenting). Other protocols without ports
        // (ICMP, ...) are not: they never reach a protected listener.
        if packet.fragment {
            return true;
        }
        let Some(port) = packet.port() else {
            return false;
        };
        let word = maps.ports.get(u32::from(port >> 6)).copied().unwrap_or(0);
        return word & (1u64 << (port & 63)) != 0;
    }
    true
}

/// Token bucket admission (see [`Bucket`]). Existing buckets are updated in
/// place; a new source inserts a bucket that has just spent one token.
/// `stamp` (non-zero) records that the source is on no list at that
/// generation.
#[inline(always)]
fn admit(
    bucket: Option<*mut Bucket>,
    key: &BucketKey,
    limit: &RateLimit,
    now: u64,
    stamp: u64,
) -> bool {
    let Some(bucket) = bucket else {
        let fresh = Bucket {
            start_ns: now,
            admitted: 1,
            list_gen: stamp,
        };
        // Another CPU may have inserted it first; either way this packet is
        // the source's first and is admitted.
        let _ = if key.family == 4 {
            BUCKETS_V4.insert(v4_key(key), fresh, u64::from(BPF_NOEXIST))
        } else {
            BUCKETS_V6.insert(key.addr, fresh, u64::from(BPF_NOEXIST))
        };
        return true;
    };
    // SAFETY: `bucket` points into the map value, valid for this program run.
    let (start, admitted) = unsafe { ((*bucket).start_ns, (*bucket).admitted) };
    // A racing CPU writes the same value.
    // SAFETY: as above.
    unsafe {
        if stamp != 0 && (*bucket).list_gen != stamp {
            (*bucket).list_gen = stamp;
        }
    }
    // tokens = burst + floor(elapsed / cost) - admitted, compared without a
    // 64-bit division: n * cost is exact while n <= max_tokens.
    let elapsed = now.saturating_sub(start);
    let scaled = |n: u64| {
        if n > limit.max_tokens {
            u64::MAX
        } else {
            n * limit.cost_ns
        }
    };
    // Empty: floor(elapsed / cost) <= admitted - burst.
    if admitted >= limit.burst && elapsed < scaled(admitted - limit.burst + 1) {
        return false;
    }
    // More than full: floor(elapsed / cost) > admitted.
    if elapsed >= scaled(admitted + 1) {
        // More than a full bucket: re-base so the source holds `burst`
        // tokens, minus the one this packet spends. A racing CPU doing the
        // same writes the same values.
        // SAFETY: as above.
        unsafe {
            (*bucket).start_ns = now;
            (*bucket).admitted = 1;
        }
        return true;
    }
    // SAFETY: as above; an aligned u64 inside the map value.
    unsafe { atomic_add(&mut (*bucket).admitted) };
    true
}

/// `*counter += 1`, atomically across CPUs. The old value is not read (that
/// would need BPF_FETCH); this is a plain BPF atomic add.
#[cfg(target_arch = "bpf")]
#[inline(always)]
unsafe fn atomic_add(counter: *mut u64) {
    core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
        counter, 1,
    );
}

/// Host builds never run the program; keep the type checker happy.
#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
unsafe fn atomic_add(counter: *mut u64) {
    *counter += 1;
}

/// `*counter += n`, atomically across CPUs (see [`atomic_add`]).
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub(crate) unsafe fn atomic_add_n(counter: *mut u64, n: u64) {
    core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
        counter, n,
    );
}

#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
pub(crate) unsafe fn atomic_add_n(counter: *mut u64, n: u64) {
    *counter += n;
}

/// Whether a source is on a list, and by what kind of entry (the first
/// live one found; a permanent entry found after an expiring one may be
/// reported as expiring, which only leaves the verdict uncached).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Listed {
    No,
    /// By an entry with an expiry time: its verdict must not be cached.
    Expiring,
    /// By an entry without expiry.
    Permanent,
}

impl Listed {
    #[inline(always)]
    fn any(self) -> bool {
        self != Listed::No
    }

    /// This, or when not listed here, what `next` finds.
    #[inline(always)]
    fn or_else(self, next: impl FnOnce() -> Listed) -> Listed {
        if self.any() {
            self
        } else {
            next()
        }
    }
}

/// The deny counter of the source's family.
#[inline(always)]
fn denied(src: &Src) -> Stat {
    if src.v6 {
        Stat::DeniedV6
    } else {
        Stat::DeniedV4
    }
}

/// Whether `src` is on one list (deny or allow, IPv4): a live /24 entry or
/// /32 entry (one lookup by /24, a second only when that /24 has /32
/// entries), else the trie's longest match. Structures `present` says are
/// empty are skipped.
#[inline(always)]
fn listed_v4(list: u32, maps: &V4List, present: u32, src: [u8; 4], now: &mut u64) -> Listed {
    if present & present::bit(list, 4, present::HASH) != 0 {
        let net = [src[0], src[1], src[2], 0];
        if let Some(entry) = maps.nets.get_ptr(net) {
            // SAFETY: the pointer is into the map value, valid for this run.
            let entry = unsafe { &*entry };
            let found = own_rule(entry, now)
                .or_else(|| inner_rule(entry, NetEntry::HOSTS, maps.hosts, src, now));
            if found.any() {
                return found;
            }
        }
    }
    if present & present::bit(list, 4, present::TRIE) == 0 {
        return Listed::No;
    }
    let key = AlignedKey {
        key: Key::new(32, src),
    };
    matches(maps.trie.get(&key.key), now)
}

/// [`listed_v4`] for IPv6: a live /48 entry, or /64 or /128 entry when its
/// /48 has such entries, else the trie's longest match.
#[inline(always)]
fn listed_v6(list: u32, maps: &V6List, present: u32, src: [u8; 16], now: &mut u64) -> Listed {
    if present & present::bit(list, 6, present::HASH) != 0 {
        let net = [src[0], src[1], src[2], src[3], src[4], src[5], 0, 0];
        if let Some(entry) = maps.nets.get_ptr(net) {
            // SAFETY: the pointer is into the map value, valid for this run.
            let entry = unsafe { &*entry };
            let subnet = [
                src[0], src[1], src[2], src[3], src[4], src[5], src[6], src[7],
            ];
            let found = own_rule(entry, now)
                .or_else(|| inner_rule(entry, NetEntry::SUBNETS, maps.subnets, subnet, now))
                .or_else(|| inner_rule(entry, NetEntry::HOSTS, maps.hosts, src, now));
            if found.any() {
                return found;
            }
        }
    }
    if present & present::bit(list, 6, present::TRIE) == 0 {
        return Listed::No;
    }
    let key = AlignedKey {
        key: Key::new(128, src),
    };
    matches(maps.trie.get(&key.key), now)
}

/// A network entry's own rule (a /24 or /48 entry), if it has a live one.
#[inline(always)]
fn own_rule(entry: &NetEntry, now: &mut u64) -> Listed {
    if entry.flags & NetEntry::RULE == 0 {
        return Listed::No;
    }
    matches(Some(&entry.rule), now)
}

/// The live rule under `key` in `map`, one of the longer entries inside a
/// network entry, looked up only when the entry's `flag` says that it has
/// such entries.
#[inline(always)]
fn inner_rule<K>(
    entry: &NetEntry,
    flag: u32,
    map: &HashMap<K, Rule>,
    key: K,
    now: &mut u64,
) -> Listed {
    if entry.flags & flag == 0 {
        return Listed::No;
    }
    // SAFETY: the pointer is into the map value, valid for this run.
    matches(map.get_ptr(key).map(|r| unsafe { &*r }), now)
}

/// Whether a deny/allow lookup result is a live (unexpired) rule, and of
/// which kind.
#[inline(always)]
fn matches(rule: Option<&Rule>, now: &mut u64) -> Listed {
    let Some(rule) = rule else {
        return Listed::No;
    };
    let expires = rule.expires_at_ns;
    if expires == 0 {
        return Listed::Permanent;
    }
    if *now == 0 {
        // SAFETY: helper without arguments. Only expiring rules get here:
        // the cached clock (`clock.rs`) is kept for the hot path, where one
        // inlined copy fits the subprogram's stack.
        *now = unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() };
    }
    if *now < expires {
        Listed::Expiring
    } else {
        Listed::No
    }
}

#[inline(always)]
fn mask(addr: u32, prefix_len: u32) -> u32 {
    if prefix_len == 0 {
        0
    } else if prefix_len >= 32 {
        addr
    } else {
        addr & (u32::MAX << (32 - prefix_len))
    }
}

#[inline(always)]
fn mask_v6(addr: [u8; 16], prefix_len: u32) -> [u8; 16] {
    let hi = u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let lo = u64::from_be_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    let (hi, lo) = if prefix_len == 0 {
        (0, 0)
    } else if prefix_len < 64 {
        (hi & (u64::MAX << (64 - prefix_len)), 0)
    } else if prefix_len == 64 {
        (hi, 0)
    } else if prefix_len < 128 {
        (hi, lo & (u64::MAX << (128 - prefix_len)))
    } else {
        (hi, lo)
    };
    let hi = hi.to_be_bytes();
    let lo = lo.to_be_bytes();
    [
        hi[0], hi[1], hi[2], hi[3], hi[4], hi[5], hi[6], hi[7], lo[0], lo[1], lo[2], lo[3], lo[4],
        lo[5], lo[6], lo[7],
    ]
}

/// LPM keys are `repr(packed)`; keeping the stack copy 8-byte aligned lets the
/// compiler use word stores the verifier accepts on the stack.
#[repr(C, align(8))]
struct AlignedKey<K> {
    key: Key<K>,
}

#[inline(always)]
fn count(stat: Stat) {
    if let Some(counter) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot; XDP runs with migration disabled, so no other
        // writer touches this CPU's copy while we increment it.
        unsafe { *counter += 1 };
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

/// GPL-compatible licence, required by the kernel for some helpers.
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
