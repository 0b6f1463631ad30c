//! The per-source verdict cache: "this exact source was on no deny or allow
//! list at generation G". It serves every packet whose bucket cannot hold
//! that verdict (rate limiting off, a packet that is not policed, or a slot
//! whose entries are longer than the rate-limit aggregation), so a source
//! that keeps sending costs one hash lookup whatever the configuration.
//!
//! Invalidation is by generation (see `XdpConfig::generation`): every list
//! change that could put a source on a list writes a new one, and an entry
//! stamped with any other value is looked up in the lists again. Only "on
//! no list" is cached: removing an entry never needs to invalidate anything.

use aya_ebpf::{bindings::BPF_ANY, macros::map, maps::LruHashMap};
use gateway_common::VERDICT_MAX_ENTRIES;

use crate::parse::Src;

/// IPv4 sources by address (network byte order) → generation at which the
/// source was found on no list. LRU: a flood of new sources evicts the
/// least recently seen, which only costs those their list lookups again.
#[map(name = "PASSED_V4")]
static PASSED_V4: LruHashMap<[u8; 4], u64> = LruHashMap::with_max_entries(VERDICT_MAX_ENTRIES, 0);

/// The same for IPv6 sources, by the full /128 address.
#[map(name = "PASSED_V6")]
static PASSED_V6: LruHashMap<[u8; 16], u64> = LruHashMap::with_max_entries(VERDICT_MAX_ENTRIES, 0);

/// The source's cache entry: a pointer into the map value, valid for this
/// program run.
#[inline(always)]
pub(crate) fn lookup(src: &Src) -> Option<*mut u64> {
    match src {
        Src::V4(addr) => PASSED_V4.get_ptr_mut(addr),
        Src::V6(addr) => PASSED_V6.get_ptr_mut(addr),
    }
}

/// Whether `entry` says the source is on no list at `generation` (never
/// for generation 0: a slot userspace has not written).
#[inline(always)]
pub(crate) fn hit(entry: Option<*mut u64>, generation: u64) -> bool {
    match entry {
        // SAFETY: `lookup`'s pointer, valid for this program run.
        Some(stamp) => generation != 0 && unsafe { *stamp } == generation,
        None => false,
    }
}

/// Records that the source was just found on no list at `generation`: in
/// place when it has an entry, else a new one. `generation` must be the
/// value read before the list lookups, so that an entry added meanwhile
/// (which writes a newer generation after the entry) is never hidden.
#[inline(always)]
pub(crate) fn remember(src: &Src, entry: Option<*mut u64>, generation: u64) {
    if generation == 0 {
        return;
    }
    match entry {
        // SAFETY: as in `hit`. A racing CPU writes a generation at which it
        // found the source on no list too: never a wrong verdict, at worst a
        // stale stamp that costs one more round of lookups.
        Some(stamp) => unsafe { *stamp = generation },
        None => {
            // A racing CPU may insert first; either entry is correct.
            let _ = match src {
                Src::V4(addr) => PASSED_V4.insert(addr, generation, u64::from(BPF_ANY)),
                Src::V6(addr) => PASSED_V6.insert(addr, generation, u64::from(BPF_ANY)),
            };
        }
    }
}
