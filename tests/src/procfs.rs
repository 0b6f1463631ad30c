//! Readers of /proc for processes the tests and benchmarks start: CPU time,
//! memory, start time (what tells a process from a later one with the same
//! PID), the processes a server forked, and the machine's per-CPU times.
//! Every reader returns `None` (or nothing) for a process that is gone.
#![allow(unsafe_code)]

use std::collections::HashMap;

/// Clock ticks per second of /proc/PID/stat's and /proc/stat's CPU times.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// The fields of /proc/PID/stat after the command name (field 3 onwards:
/// index 0 is the state, 1 the parent PID, 11/12 utime/stime, 19 the start
/// time).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// utime + stime of a process (all its threads) or kernel thread, in clock
/// ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// utime of a process (all its threads), in clock ticks.
pub fn user_ticks(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(11)?.parse().ok()
}

/// The parent of a process.
pub fn parent(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Start time of a process (clock ticks after boot): with the PID, what
/// identifies it (a PID may be reused once the process is gone).
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// [`start_time`] of a process that is still running: `None` once it is
/// gone or a zombie.
pub fn live_start_time(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    if f.first().map(String::as_str) == Some("Z") {
        return None;
    }
    f.get(19)?.parse().ok()
}

/// A `Vm*` line of /proc/PID/status (`VmRSS`, `VmHWM`, ...), in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Resident set size (VmRSS) of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// Peak resident set size (VmHWM) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM")
}

/// Resets a process's VmHWM to its current RSS (`echo 5 > clear_refs`).
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), b"5").is_ok()
}

/// The numeric entries of /proc: every process (and kernel thread).
fn pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Every live process below `pid` (children, their children, ...), found by
/// parent PID in /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for p in pids() {
        if let Some(ppid) = parent(p) {
            children.entry(ppid).or_default().push(p);
        }
    }
    let mut found = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            if !found.contains(&c) {
                found.push(c);
                queue.push(c);
            }
        }
    }
    found
}

/// Kernel threads (or processes) whose name starts with `prefix` (e.g.
/// `napi/xgbfg0-`).
pub fn kernel_threads(prefix: &str) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end().starts_with(prefix))
        })
        .collect()
}

/// User time (user + nice) of the whole machine, in clock ticks.
pub fn machine_user_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    (f.len() == 2).then(|| f[0] + f[1])
}

/// One CPU's times from /proc/stat, in clock ticks (USER_HZ).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    pub user: u64,
    pub system: u64,
    pub idle: u64,
    pub irq: u64,
    pub softirq: u64,
    /// Everything that is not idle or iowait.
    pub busy: u64,
}

impl CpuTimes {
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            idle: self.idle.saturating_sub(earlier.idle),
            irq: self.irq.saturating_sub(earlier.irq),
            softirq: self.softirq.saturating_sub(earlier.softirq),
            busy: self.busy.saturating_sub(earlier.busy),
        }
    }
}

/// Per-CPU times (`cpuN` lines of /proc/stat), indexed by CPU number.
pub fn cpu_times() -> Vec<CpuTimes> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(name) = f.next() else { continue };
        let Some(n) = name
            .strip_prefix("cpu")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal ...
        let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
        if out.len() <= n {
            out.resize(n + 1, CpuTimes::default());
        }
        out[n] = CpuTimes {
            user: at(0) + at(1),
            system: at(2),
            idle: at(3) + at(4),
            irq: at(5),
            softirq: at(6),
            busy,
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_read_and_a_missing_one_is_not() {
        let me = std::process::id();
        assert!(rss_kib(me).is_some_and(|kib| kib > 0));
        assert!(peak_rss_kib(me) >= rss_kib(me));
        assert!(cpu_ticks(me).is_some());
        assert_eq!(live_start_time(me), start_time(me));
        assert!(start_time(me).is_some());
        assert!(parent(me).is_some());
        assert!(!cpu_times().is_empty());
        // PIDs stop well below u32::MAX (pid_max is at most 2^22).
        assert_eq!(start_time(u32::MAX), None);
        assert_eq!(rss_kib(u32::MAX), None);
    }

    #[test]
    fn a_child_is_a_descendant() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("start sleep");
        let found = descendants(std::process::id()).contains(&child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(found);
    }
}
