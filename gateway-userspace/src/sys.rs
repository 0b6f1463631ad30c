//! The few libc calls userspace needs, fenced in one place.
#![allow(unsafe_code)]

use std::time::Duration;

/// `CLOCK_MONOTONIC` now: the clock `bpf_ktime_get_ns` reads in the kernel,
/// so rule expiries written by userspace compare correctly there.
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) cannot fail");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Whether the process runs as root (the daemon needs CAP_BPF and
/// CAP_NET_ADMIN for XDP; root is how operators grant them here).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Clock ticks a second (the unit of CPU times in /proc) and the page size
/// (the unit of memory sizes there); 0 when the system does not say.
pub fn proc_units() -> (u64, u64) {
    // SAFETY: sysconf only reads constants of the running system.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (ticks.max(0) as u64, page.max(0) as u64)
}

/// The CPU time the calling thread has used: what an evaluation costs its
/// worker, without the time the thread waited preempted (wall time on a
/// busy machine is mostly that).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; every Linux thread has
    // CLOCK_THREAD_CPUTIME_ID.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) cannot fail");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
