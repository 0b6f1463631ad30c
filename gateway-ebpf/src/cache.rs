//! The per-source verdict cache: "this exact source was on no deny or allow
//! list at generation G", or "denied by a deny entry without expiry at
//! generation G". The first serves every packet whose bucket cannot hold
//! that verdict (rate limiting off, a packet that is not policed, or a slot
//! whose entries are longer than the rate-limit aggregation), so a source
//! that keeps sending costs one hash lookup whatever the configuration; the
//! second spares a denied source that keeps sending its list lookups.
//!
//! Invalidation is by generation (see `XdpConfig::generation`): every list
//! change that could change a cached verdict (a new rule set, an added
//! entry, a removed deny entry) writes a new one, and an entry stamped with
//! any other value is looked up in the lists again. Entries that expire are
//! never cached as denials (the program would have to check the time), and
//! allow-listed sources are never cached at all.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_get_prandom_u32, macros::map, maps::LruHashMap};
use gateway_common::{DENIED_CACHE_SAMPLE, DENIED_STAMP, VERDICT_MAX_ENTRIES};

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
    if src.v6 {
        PASSED_V6.get_ptr_mut(src.addr)
    } else {
        PASSED_V4.get_ptr_mut(src.v4_addr())
    }
}

/// What a cache entry says about its source at the current generation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cached {
    /// Nothing current: look the source up in the lists.
    Unknown,
    /// On no list.
    Passed,
    /// On the deny list, by an entry without expiry.
    Denied,
}

/// What `entry` says at `generation` (nothing for generation 0: a slot
/// userspace has not written).
#[inline(always)]
pub(crate) fn verdict(entry: Option<*mut u64>, generation: u64) -> Cached {
    let Some(stamp) = entry else {
        return Cached::Unknown;
    };
    if generation == 0 {
        return Cached::Unknown;
    }
    // SAFETY: `lookup`'s pointer, valid for this program run.
    let stamp = unsafe { *stamp };
    if stamp == generation {
        Cached::Passed
    } else if stamp == generation | DENIED_STAMP {
        Cached::Denied
    } else {
        Cached::Unknown
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
        // SAFETY: as in `verdict`. A racing CPU writes a generation at which it
        // found the source on no list too: never a wrong verdict, at worst a
        // stale stamp that costs one more round of lookups.
        Some(stamp) => unsafe { *stamp = generation },
        None => insert(src, generation),
    }
}

/// Records that the source was just found on the deny list by an entry
/// without expiry, at `generation` (read before the lookups, as for
/// [`remember`]): in place when it has an entry; else a new entry for one
/// such packet in [`DENIED_CACHE_SAMPLE`], so that a flood of spoofed
/// denied sources neither pays an LRU insert per packet nor evicts the
/// cached passes of legitimate sources at its own rate.
#[inline(always)]
pub(crate) fn remember_denied(src: &Src, entry: Option<*mut u64>, generation: u64) {
    if generation == 0 {
        return;
    }
    let stamp = generation | DENIED_STAMP;
    match entry {
        // SAFETY: as in `remember`. Racing CPUs may write different
        // verdicts for one generation only while a list change is between
        // its map write and its new generation, which makes both stale.
        Some(entry) => unsafe { *entry = stamp },
        None => {
            // SAFETY: helper without arguments.
            if unsafe { bpf_get_prandom_u32() } % DENIED_CACHE_SAMPLE == 0 {
                insert(src, stamp);
            }
        }
    }
}

#[inline(always)]
fn insert(src: &Src, stamp: u64) {
    // A racing CPU may insert first; either entry is correct.
    let _ = if src.v6 {
        PASSED_V6.insert(src.addr, stamp, u64::from(BPF_ANY))
    } else {
        PASSED_V4.insert(src.v4_addr(), stamp, u64::from(BPF_ANY))
    };
}
