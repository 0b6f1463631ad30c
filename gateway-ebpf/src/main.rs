//! xgate's XDP program: drops packets from denied sources before the network
//! stack allocates anything for them.
//!
//! Packet path: Ethernet → up to two VLAN tags (802.1Q / 802.1ad) → IPv4
//! (version and IHL checked) or IPv6 → source lookup in the deny LPM tries.
//! Frames that are not IP always pass, and so does ICMPv6 neighbour
//! discovery: the gateway must never cut its own host off the link.
//! Every packet is counted under exactly one [`Stat`].
// Built for real only for the BPF target; on the host (`cargo clippy
// --workspace`, `cargo build --workspace`) it compiles to an empty binary so
// the workspace-wide commands keep working.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use core::mem;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{
        lpm_trie::{Key, LpmTrie},
        PerCpuArray,
    },
    programs::XdpContext,
};
use gateway_common::{Rule, Stat, DENY_MAX_ENTRIES};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

/// IPv4 source deny list. Key: source prefix (network byte order) with its
/// length; value: the [`Rule`] (expiry and origin). Longest prefix wins.
#[map(name = "DENY_V4")]
static DENY_V4: LpmTrie<[u8; 4], Rule> = LpmTrie::with_max_entries(DENY_MAX_ENTRIES, 0);

/// IPv6 source deny list; same contract as [`DENY_V4`] with 128-bit keys.
#[map(name = "DENY_V6")]
static DENY_V6: LpmTrie<[u8; 16], Rule> = LpmTrie::with_max_entries(DENY_MAX_ENTRIES, 0);

/// Packet counters, one slot per [`Stat`], per CPU (no atomics needed on the
/// hot path; userspace sums the CPUs).
#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Stat::COUNT, 0);

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const VLAN_HDR_LEN: usize = 4;
const IPPROTO_ICMPV6: u8 = 58;
/// ICMPv6 router solicitation .. redirect (RFC 4861 types 133-137).
const ND_FIRST: u8 = 133;
const ND_LAST: u8 = 137;

#[xdp]
pub fn xgate_xdp(ctx: XdpContext) -> u32 {
    let stat = classify(&ctx);
    count(stat);
    if stat.dropped() {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// Decides what happens to one frame. Every branch names the counter it
/// lands in, so verdicts and statistics cannot drift apart.
#[inline(always)]
fn classify(ctx: &XdpContext) -> Stat {
    let Some(mut ether_type) = read_be16(ctx, mem::offset_of!(EthHdr, ether_type)) else {
        return Stat::Malformed;
    };
    let mut offset = EthHdr::LEN;
    // Two explicit steps rather than a loop: at most an outer (802.1ad) and
    // an inner (802.1Q) tag.
    if is_vlan(ether_type) {
        let Some(inner) = read_be16(ctx, offset + 2) else {
            return Stat::Malformed;
        };
        ether_type = inner;
        offset += VLAN_HDR_LEN;
    }
    if is_vlan(ether_type) {
        let Some(inner) = read_be16(ctx, offset + 2) else {
            return Stat::Malformed;
        };
        ether_type = inner;
        offset += VLAN_HDR_LEN;
    }
    match ether_type {
        ETH_P_IPV4 => classify_v4(ctx, offset),
        ETH_P_IPV6 => classify_v6(ctx, offset),
        _ => Stat::NonIp,
    }
}

#[inline(always)]
fn classify_v4(ctx: &XdpContext, offset: usize) -> Stat {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, offset) else {
        return Stat::Malformed;
    };
    // SAFETY: `ptr_at` checked that the whole header lies inside the frame.
    let (vihl, src) = unsafe { ((*ip).vihl, (*ip).src_addr) };
    let header_len = usize::from(vihl & 0x0F) * 4;
    if vihl >> 4 != 4
        || header_len < Ipv4Hdr::LEN
        || offset + header_len > ctx.data_end() - ctx.data()
    {
        return Stat::Malformed;
    }
    let key = AlignedKey {
        key: Key::new(32, src),
    };
    match DENY_V4.get(&key.key) {
        Some(rule) => rule_verdict(rule, Stat::DeniedV4),
        None => Stat::Passed,
    }
}

#[inline(always)]
fn classify_v6(ctx: &XdpContext, offset: usize) -> Stat {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, offset) else {
        return Stat::Malformed;
    };
    // SAFETY: `ptr_at` checked that the whole header lies inside the frame.
    let (version, next_hdr, src) = unsafe { ((*ip).vcf[0] >> 4, (*ip).next_hdr, (*ip).src_addr) };
    if version != 6 {
        return Stat::Malformed;
    }
    if next_hdr == IPPROTO_ICMPV6 {
        let Some(icmp_type) = ptr_at::<u8>(ctx, offset + Ipv6Hdr::LEN) else {
            return Stat::Malformed;
        };
        // SAFETY: bounds checked by `ptr_at`.
        let icmp_type = unsafe { *icmp_type };
        if (ND_FIRST..=ND_LAST).contains(&icmp_type) {
            return Stat::NeighborDiscovery;
        }
    }
    let key = AlignedKey {
        key: Key::new(128, src),
    };
    match DENY_V6.get(&key.key) {
        Some(rule) => rule_verdict(rule, Stat::DeniedV6),
        None => Stat::Passed,
    }
}

/// A matching rule denies unless it has expired.
#[inline(always)]
fn rule_verdict(rule: &Rule, denied: Stat) -> Stat {
    let expires = rule.expires_at_ns;
    // SAFETY: helper call with no arguments.
    if expires != 0 && unsafe { bpf_ktime_get_ns() } >= expires {
        Stat::ExpiredRule
    } else {
        denied
    }
}

/// LPM keys are `repr(packed)`; keeping the stack copy 8-byte aligned lets the
/// compiler use word stores the verifier accepts on the stack.
#[repr(C, align(8))]
struct AlignedKey<K> {
    key: Key<K>,
}

#[inline(always)]
fn is_vlan(ether_type: u16) -> bool {
    ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD
}

#[inline(always)]
fn count(stat: Stat) {
    if let Some(counter) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot; XDP runs with migration disabled, so no other
        // writer touches this CPU's copy while we increment it.
        unsafe { *counter += 1 };
    }
}

/// A pointer to a `T` at `offset` in the frame, if the whole `T` is inside it.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
fn read_be16(ctx: &XdpContext, offset: usize) -> Option<u16> {
    let bytes = ptr_at::<[u8; 2]>(ctx, offset)?;
    // SAFETY: bounds checked by `ptr_at`.
    Some(u16::from_be_bytes(unsafe { *bytes }))
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
