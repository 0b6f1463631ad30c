//! The program's clock: `CLOCK_MONOTONIC` at tick resolution, what
//! `bpf_ktime_get_coarse_ns` returns, read through a per-CPU cache keyed by
//! `jiffies`.
//!
//! The coarse clock only moves at the timer tick, when `jiffies` moves, so
//! within one value of `jiffies` every read returns the same time (or, in
//! the instant between the two updates of a tick, the time of the tick
//! before). The verifier inlines `bpf_jiffies64` into one load of the
//! kernel's `jiffies`, while the coarse clock is a helper call, which costs
//! about 20 ns per packet where the kernel guards every return against
//! speculation (AMD's Safe RET, retpolines): a source that keeps sending
//! pays that once per tick per CPU instead of on every packet.
//!
//! A CPU's cached time is at most one tick behind the coarse clock and
//! never goes backwards on that CPU; across CPUs the clock was already only
//! tick-accurate, and every user of it (token buckets, rule expiry, the
//! SYN-cookie refresh, the last-drop time) tolerates a tick.

use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::map,
    maps::PerCpuArray,
};

/// The last coarse time read on this CPU and the `jiffies` it was read at.
#[repr(C)]
pub struct Tick {
    jiffies: u64,
    ns: u64,
}

/// One [`Tick`] per CPU. Not pinned and not shared between the copies of
/// the program: it holds nothing that must outlive a copy.
#[map(name = "CLOCK")]
static CLOCK: PerCpuArray<Tick> = PerCpuArray::with_max_entries(1, 0);

/// `CLOCK_MONOTONIC` nanoseconds at tick resolution (see the module).
#[inline(always)]
pub(crate) fn coarse_ns() -> u64 {
    // SAFETY: helper without arguments.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(tick) = CLOCK.get_ptr_mut(0) else {
        // SAFETY: helper without arguments.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: this CPU's element, valid for this run; XDP runs with
    // migration disabled, so no other writer touches it meanwhile.
    unsafe {
        if (*tick).jiffies == jiffies && (*tick).ns != 0 {
            return (*tick).ns;
        }
        let ns = bpf_ktime_get_coarse_ns();
        (*tick).jiffies = jiffies;
        (*tick).ns = ns;
        ns
    }
}
