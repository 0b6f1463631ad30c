//! The few libc calls userspace needs, fenced in one place.
#![allow(unsafe_code)]

use std::time::Duration;

/// `CLOCK_MONOTONIC` now: the clock `bpf_ktime_get_ns` reads in the kernel,
/// so rule expiries written by userspace compare correctly there.
pub fn monotonic_now() -> Duration {
    clock(libc::CLOCK_MONOTONIC)
}

/// `clock_gettime(id)`, for clocks every Linux process has.
fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the callers pass clocks
    // Linux always has (CLOCK_MONOTONIC, CLOCK_THREAD_CPUTIME_ID).
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime({id}) cannot fail");
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

/// The process's effective user id.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// A group of the system's group database (/etc/group, or NSS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    /// The users listed as members (not those whose primary group it is).
    pub members: Vec<String>,
}

/// The group named `name`, if there is one.
pub fn group_by_name(name: &str) -> std::io::Result<Option<Group>> {
    let c_name = std::ffi::CString::new(name)
        .map_err(|_| std::io::Error::other("a group name has no NUL byte"))?;
    let mut buffer = vec![0u8; 4096];
    loop {
        // SAFETY: all-zero is a valid `group` (null pointers, gid 0).
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `buffer` outlives the
        // reads of `group`'s strings below, which point into it.
        let rc = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                &mut group,
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buffer.len() < 1 << 20 {
            buffer.resize(buffer.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        if found.is_null() {
            return Ok(None);
        }
        let mut members = Vec::new();
        let mut member = group.gr_mem;
        // SAFETY: gr_mem is a null-terminated array of C strings inside
        // `buffer`, as getgrnam_r(3) fills it.
        unsafe {
            while !member.is_null() && !(*member).is_null() {
                members.push(
                    std::ffi::CStr::from_ptr(*member)
                        .to_string_lossy()
                        .into_owned(),
                );
                member = member.add(1);
            }
        }
        return Ok(Some(Group {
            name: name.to_string(),
            gid: group.gr_gid,
            members,
        }));
    }
}

/// The login name of `uid`, if the user database has it.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buffer = vec![0u8; 4096];
    loop {
        // SAFETY: all-zero is a valid `passwd` (null pointers, ids 0).
        let mut passwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `buffer` outlives the
        // read of `pw_name`, which points into it.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut passwd,
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buffer.len() < 1 << 20 {
            buffer.resize(buffer.len() * 4, 0);
            continue;
        }
        if rc != 0 || found.is_null() || passwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: pw_name is a C string inside `buffer`.
        let name = unsafe { std::ffi::CStr::from_ptr(passwd.pw_name) };
        return Some(name.to_string_lossy().into_owned());
    }
}

/// The CPUs the calling thread may run on (its affinity mask, which the
/// threads and processes it starts inherit), in ascending order.
pub fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; the call fills it with this
    // thread's mask.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect())
    }
}

/// Binds the calling thread to `cpu` alone.
pub fn bind_thread_to(cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: cpu_set_t is plain data; the call sets this thread's mask.
    unsafe {
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The CPU time the calling thread has used: what an evaluation costs its
/// worker, without the time the thread waited preempted (wall time on a
/// busy machine is mostly that).
pub fn thread_cpu_time() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// `TCP_NOTSENT_LOWAT` on `socket`: writes wait once `bytes` written are
/// not yet sent (sent but unacknowledged data is not counted, so a fast
/// peer's throughput is not limited; a peer that stops reading holds at
/// most this much in the kernel beyond its own window).
pub fn set_notsent_lowat(socket: &impl std::os::fd::AsRawFd, bytes: u32) -> std::io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid descriptor (borrowed for the call) and a c_int option
    // value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
