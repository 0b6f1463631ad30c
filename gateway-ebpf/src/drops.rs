//! Dropped packets per source, for "the top dropped sources": a bounded
//! LRU map by source address, fed by samples so that the drop path stays
//! as cheap as it was.
//!
//! Each CPU counts down to its next sample from a random gap drawn in
//! `1..=2N-1` (mean N, the slot's `drop_sample`): between samples a drop
//! costs one per-CPU array access and a decrement; the sampled drop adds
//! the whole gap (the drops it stands for) to its source's count. The sum
//! over all sources is therefore exact up to each CPU's gap in progress,
//! and a source's share is estimated without bias; random gaps keep a
//! sender that cycles through N addresses from aliasing with the sampler.
//! A heavy dropper, which is what "top" means under a flood, is sampled
//! every N of its packets on average and keeps its place in the LRU.

use aya_ebpf::{
    bindings::{xdp_md, BPF_NOEXIST},
    helpers::bpf_get_prandom_u32,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use gateway_common::{BucketKey, DropCounts, DropReason, Stat, DROPS_MAX_ENTRIES};

use crate::parse;

/// Source (full address, `family` 4 or 6; IPv4 in the first four bytes)
/// → its dropped packets by [`DropReason`] and when it was last sampled.
/// LRU: a flood of spoofed sources evicts the least recently sampled.
#[map(name = "DROPS")]
static DROPS: LruHashMap<BucketKey, DropCounts> =
    LruHashMap::with_max_entries(DROPS_MAX_ENTRIES, 0);

/// Per-CPU sampler state: `[drops left until the next sample, the gap that
/// sample closes]`. Private to each loaded copy of the program (not
/// pinned): it holds no result, only where this CPU is in its gap.
#[map(name = "DROP_SAMPLER")]
static DROP_SAMPLER: PerCpuArray<[u32; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Counts one dropped frame (sampled): a BPF subprogram, so that the
/// program's entry function keeps a frame small enough to call
/// `lists_and_limits`, which needs most of the 512-byte stack (the two
/// frames add up).
#[inline(never)]
pub(crate) fn count(ctx: *mut xdp_md, stat: Stat) {
    crate::keep_context(ctx);
    let weight = sample(crate::drop_sample);
    if weight != 0 {
        record(ctx, stat, weight);
    }
}

/// How many drops this one stands for if it is to be recorded (0: not
/// sampled). `period` reads the slot's `drop_sample`; it is called only
/// when a sample is due.
#[inline(always)]
fn sample(period: impl FnOnce() -> u32) -> u32 {
    let Some(state) = DROP_SAMPLER.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's element; XDP runs with migration disabled, so no
    // other writer touches it during this run.
    let state = unsafe { &mut *state };
    if state[0] > 1 {
        state[0] -= 1;
        return 0;
    }
    let weight = state[1];
    let period = period();
    let gap = match period {
        // Off: look at the setting again after this many drops.
        0 => 65_536,
        1 => 1,
        // SAFETY: helper without arguments.
        n => 1 + unsafe { bpf_get_prandom_u32() } % (2 * n - 1),
    };
    state[0] = gap;
    state[1] = if period == 0 { 0 } else { gap };
    // The first drop a CPU sees after start (or after counting was off)
    // stands for itself.
    if period == 0 {
        0
    } else if weight == 0 {
        1
    } else {
        weight
    }
}

/// Adds `weight` drops for `stat`'s reason to the frame's source: runs on
/// sampled drops only and parses the frame again to find the source.
#[inline(always)]
fn record(ctx: *mut xdp_md, stat: Stat, weight: u32) {
    let Some(reason) = DropReason::of(stat) else {
        return;
    };
    let Ok(Some(packet)) = parse::parse(&XdpContext::new(ctx)) else {
        return;
    };
    let key = BucketKey {
        addr: packet.src.addr,
        family: if packet.src.v6 { 6 } else { 4 },
    };
    let now = crate::clock::coarse_ns();
    let weight = u64::from(weight);
    if let Some(counts) = DROPS.get_ptr_mut(key) {
        // SAFETY: the pointer is into the map value, valid for this run.
        // Other CPUs may update the same source: the add is atomic, the
        // time a plain store.
        unsafe {
            crate::atomic_add_n(slot(&mut (*counts).packets, reason), weight);
            (*counts).last_ns = now;
        }
        return;
    }
    let mut fresh = DropCounts {
        packets: [0; DropReason::COUNT],
        last_ns: now,
    };
    *slot(&mut fresh.packets, reason) = weight;
    // A racing CPU may insert first: this sample is then lost, which only
    // undercounts by one sample.
    let _ = DROPS.insert(key, fresh, u64::from(BPF_NOEXIST));
}

/// The reason's counter, indexed without a bounds check the verifier would
/// have to follow.
#[inline(always)]
fn slot(packets: &mut [u64; DropReason::COUNT], reason: DropReason) -> &mut u64 {
    let [denied, rate_limited, syn_cookie_invalid] = packets;
    match reason {
        DropReason::Denied => denied,
        DropReason::RateLimited => rate_limited,
        DropReason::SynCookieInvalid => syn_cookie_invalid,
    }
}
