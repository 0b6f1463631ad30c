//! Helpers of the `flood` and `scale` scenarios: veth pairs between the
//! harness's network namespaces, commands and threads inside a namespace,
//! CPU placement, per-CPU and per-process CPU time, interface counters, and
//! bounded packet floods (trafgen) stopped by PID.
//!
//! Everything created here lives inside namespaces made by [`sys::netns`]
//! (removed on drop, with their interfaces); processes are stopped by PID on
//! drop, also on error, panic or Ctrl-C.
#![allow(unsafe_code)]

use std::{
    fs::File,
    net::SocketAddr,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use xgate_tests::procfs::live_start_time;
pub use xgate_tests::procfs::{cpu_times, kernel_threads, rss_kib, CpuTimes};

use crate::{
    peers,
    sys::{self, command, NetNs, Spawned},
};

/// `ip netns exec <ns> sh -c SCRIPT`: for sysfs writes, which need the
/// namespace's own /sys (`ip netns exec` mounts it). `script` is built by
/// the harness from its own constants only.
pub fn ns_sh(ns: &NetNs, script: &str) -> Result<()> {
    sys::run(command(
        "ip",
        ["netns", "exec", &ns.name, "sh", "-c", script],
    ))?;
    Ok(())
}

fn link_json(ns: &NetNs, ifname: &str) -> Result<Value> {
    let out = ns.try_ip(&["-s", "-j", "link", "show", "dev", ifname])?;
    let v: Value = serde_json::from_str(out.trim())
        .with_context(|| format!("ip -j link show {ifname}: not JSON"))?;
    v.get(0)
        .cloned()
        .with_context(|| format!("ip -j link show {ifname}: empty"))
}

/// The interface's MAC address, as `aa:bb:cc:dd:ee:ff`.
pub fn mac(ns: &NetNs, ifname: &str) -> Result<String> {
    Ok(ns.try_mac(ifname)?.map(|b| format!("{b:02x}")).join(":"))
}

/// veth's own counters of an interface (`ethtool -S`, run in `ns`): its
/// per-queue XDP counters (`rx_queue_0_xdp_packets`, `tx_queue_0_xdp_xmit`,
/// `tx_queue_0_xdp_xmit_errors`, ...).
pub fn ethtool_stats(ns: &NetNs, ifname: &str) -> Result<std::collections::HashMap<String, u64>> {
    let out = sys::run(ns.command("ethtool").args(["-S", ifname]))
        .with_context(|| format!("ethtool -S {ifname} (Debian package ethtool)"))?;
    Ok(out
        .stdout
        .lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect())
}

/// Packet counters of an interface (`ip -s -j link`).
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub tx_dropped: u64,
}

pub fn link_stats(ns: &NetNs, ifname: &str) -> Result<LinkStats> {
    let v = link_json(ns, ifname)?;
    let s = &v["stats64"];
    let get = |dir: &str, key: &str| s[dir][key].as_u64().unwrap_or(0);
    Ok(LinkStats {
        rx_packets: get("rx", "packets"),
        tx_dropped: get("tx", "dropped"),
    })
}

/// Runs `f` on a new thread that has entered `ns` (and, with `cpu`, is
/// pinned to that CPU): sockets it opens and processes it starts live there.
pub fn in_netns<T: Send>(
    ns: &NetNs,
    cpu: Option<usize>,
    f: impl FnOnce() -> T + Send,
) -> Result<T> {
    let file = File::open(ns.path()).with_context(|| format!("open {}", ns.path().display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> Result<T> {
                // SAFETY: setns on a valid namespace fd changes only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    bail!("setns: {}", std::io::Error::last_os_error());
                }
                if let Some(cpu) = cpu {
                    pin_thread(cpu);
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
    })
}

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        set
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_thread(cpu: usize) {
    let set = cpu_set(&[cpu]);
    // SAFETY: sets this thread's mask from a valid cpu_set_t.
    unsafe {
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Makes the process `cmd` starts run on `cpus` only (set between fork and
/// exec, so its first thread and all it creates inherit it).
pub fn run_on(cmd: &mut Command, cpus: &[usize]) {
    let set = cpu_set(cpus);
    // SAFETY: the closure only makes one async-signal-safe system call.
    unsafe {
        cmd.pre_exec(move || {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            Ok(())
        });
    }
}

/// Pins every thread of `pid` to `cpus`; false if any could not be.
pub fn set_affinity(pid: u32, cpus: &[usize]) -> bool {
    let set = cpu_set(cpus);
    let tasks: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_else(|_| vec![pid]);
    let mut ok = !tasks.is_empty();
    for tid in tasks {
        // SAFETY: sets a task's mask from a valid cpu_set_t.
        let rc = unsafe {
            libc::sched_setaffinity(
                tid as libc::pid_t,
                std::mem::size_of::<libc::cpu_set_t>(),
                &set,
            )
        };
        ok &= rc == 0;
    }
    ok
}

/// Gives a thread (or kernel thread) the real-time policy SCHED_FIFO at
/// `priority`; false if that failed.
pub fn set_fifo(tid: u32, priority: i32) -> bool {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: a valid sched_param for a task id; no memory is retained.
    unsafe { libc::sched_setscheduler(tid as libc::pid_t, libc::SCHED_FIFO, &param) == 0 }
}

/// CPU time (utime + stime, clock ticks) of a process or kernel thread.
pub fn ticks(pid: u32) -> u64 {
    sys::cpu_ticks(pid).unwrap_or(0)
}

/// Waits until `GET path` on `addr`, sent from inside `ns`, answers 200
/// with `body`; fails early if `process` exits.
pub fn wait_http(
    ns: &NetNs,
    process: &mut Spawned,
    addr: SocketAddr,
    path: &str,
    body: &[u8],
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        sys::check_interrupted()?;
        process.check_running()?;
        let answer = in_netns(ns, None, move || peers::http_get(addr, path, &[]))?;
        let last = match answer {
            Ok(r) if r.status == 200 && r.body == body => return Ok(()),
            Ok(r) => format!("answered {} with {} bytes", r.status, r.body.len()),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "{} did not answer GET {path} on {addr} within {within:?} ({last}); end of its log:\n{}",
                process.name,
                process.log_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kill(pid: u32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// A trafgen run: a packet flood bounded by its own count (`-n`), started
/// in a namespace on one CPU at a lower priority (`nice`), and ended either
/// by itself or by [`Flood::end`] (SIGINT to trafgen and to each worker it
/// forked, by PID). On drop, on a deadline or a signal, whatever of it is
/// still alive is killed by PID.
pub struct Flood {
    child: Child,
    /// trafgen's workers (it may fork one per `-P`), with their start times.
    forked: Vec<(u32, Option<u64>)>,
    started: Instant,
    log: PathBuf,
    pub count: u64,
}

/// What a finished flood reports.
#[derive(Debug, Clone, Copy)]
pub struct FloodDone {
    /// Packets trafgen says it sent.
    pub sent: u64,
    /// From start to exit.
    pub seconds: f64,
    /// Whether it was ended before sending its whole count.
    pub ended: bool,
}

impl Flood {
    /// `trafgen -o IFACE -i CFG -n COUNT -P 1 -b RATEpps` in `ns`, on `cpu`,
    /// at niceness `nice`. `-b` (rate) makes trafgen send with blocking
    /// `sendto`, which waits when the receiver's ring is full instead of
    /// failing as its TX_RING mode does.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        ns: &NetNs,
        iface: &str,
        config: &Path,
        count: u64,
        rate_pps: u64,
        cpu: usize,
        nice: i32,
        log: &Path,
    ) -> Result<Self> {
        sys::check_interrupted()?;
        let out =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = ns.command("trafgen");
        cmd.args(["-o", iface, "-i"])
            .arg(config)
            .args(["-n", &count.to_string(), "-P", "1", "--no-sock-mem"])
            .args(["-b", &format!("{rate_pps}pps")]);
        run_on(&mut cmd, &[cpu]);
        // SAFETY: the closure only makes one async-signal-safe system call.
        unsafe {
            cmd.pre_exec(move || {
                libc::setpriority(libc::PRIO_PROCESS, 0, nice);
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("cannot start trafgen (Debian package netsniff-ng)")?;
        let mut flood = Self {
            child,
            forked: Vec::new(),
            started: Instant::now(),
            log: log.to_path_buf(),
            count,
        };
        flood.note_forked();
        Ok(flood)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn note_forked(&mut self) {
        for p in sys::descendants(self.pid()) {
            if !self.forked.iter().any(|(q, _)| *q == p) {
                self.forked.push((p, live_start_time(p)));
            }
        }
    }

    fn finished(&mut self, ended: bool) -> Result<Option<FloodDone>> {
        let Some(status) = self.child.try_wait()? else {
            return Ok(None);
        };
        let seconds = self.started.elapsed().as_secs_f64();
        self.reap_forked();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        match (status.success() || ended, sent_count(&log)) {
            (true, Some(sent)) => Ok(Some(FloodDone {
                sent,
                seconds,
                ended,
            })),
            _ => bail!("trafgen exited ({status}); its output:\n{}", log.trim()),
        }
    }

    /// Waits for trafgen to send its count and exit, at most `within`;
    /// then kills it.
    pub fn wait(&mut self, within: Duration) -> Result<FloodDone> {
        let deadline = self.started + within;
        loop {
            if let Some(done) = self.finished(false)? {
                return Ok(done);
            }
            self.note_forked();
            if sys::check_interrupted().is_err() || Instant::now() >= deadline {
                self.kill_all();
                sys::check_interrupted()?;
                bail!(
                    "trafgen (pid {}) did not finish its {} packets within {within:?}; killed",
                    self.pid(),
                    self.count
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ends the flood now if it still runs: SIGINT to each worker and to
    /// trafgen, by PID (it prints its totals and exits); killed if it has
    /// not exited within 5 s.
    pub fn end(&mut self) -> Result<FloodDone> {
        self.note_forked();
        if let Some(done) = self.finished(false)? {
            return Ok(done);
        }
        for &(pid, started) in &self.forked {
            if started.is_some() && live_start_time(pid) == started {
                kill(pid, libc::SIGINT);
            }
        }
        kill(self.pid(), libc::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(done) = self.finished(true)? {
                return Ok(done);
            }
            if Instant::now() >= deadline {
                self.kill_all();
                bail!(
                    "trafgen (pid {}) did not stop within 5 s of SIGINT; killed",
                    self.pid()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills trafgen and its workers by PID (each checked by start time).
    fn kill_all(&mut self) {
        self.note_forked();
        for &(pid, started) in &self.forked {
            if started.is_some() && live_start_time(pid) == started {
                kill(pid, libc::SIGKILL);
            }
        }
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.reap_forked();
    }

    /// Waits briefly for the workers to go, then kills any left.
    fn reap_forked(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        for &(pid, started) in &self.forked {
            while started.is_some() && live_start_time(pid) == started {
                if Instant::now() >= deadline {
                    eprintln!("xgate-bench: killing trafgen worker {pid}");
                    kill(pid, libc::SIGKILL);
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// PIDs of trafgen and its workers that are still alive (none once
    /// [`Flood::wait`] or [`Flood::end`] has returned).
    pub fn left_alive(&mut self) -> Vec<u32> {
        let mut left: Vec<u32> = self
            .forked
            .iter()
            .filter(|(pid, started)| started.is_some() && live_start_time(*pid) == *started)
            .map(|(pid, _)| *pid)
            .collect();
        if self.child.try_wait().ok().flatten().is_none() {
            left.insert(0, self.pid());
        }
        left
    }
}

/// Packets sent, from trafgen's summary: `1000 packets outgoing`, or the
/// per-CPU line `... usec on CPU0 (1000 packets)` (summed).
fn sent_count(log: &str) -> Option<u64> {
    let per_cpu: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("usec on CPU"))
        .filter_map(|l| {
            let inner = l.rsplit_once('(')?.1;
            inner.split_whitespace().next()?.parse().ok()
        })
        .collect();
    if !per_cpu.is_empty() {
        return Some(per_cpu.iter().sum());
    }
    log.lines()
        .find(|l| l.contains("packets outgoing"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Keeps every CPU out of idle states that take time to leave, while it
/// lives: a PM QoS request of 0 µs on `/dev/cpu_dma_latency` (the kernel
/// drops it when the file is closed, also when the process dies). In a
/// virtual machine whose idle CPUs halt, each wake-up otherwise costs an
/// exit to the host, and a half-idle request path measures that instead of
/// the software; this keeps the comparison about the software.
pub struct NoDeepIdle {
    held: Option<File>,
}

impl NoDeepIdle {
    pub fn hold() -> Self {
        use std::io::Write;
        let held = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/cpu_dma_latency")
            .and_then(|mut f| {
                f.write_all(&0i32.to_ne_bytes())?;
                Ok(f)
            })
            .map_err(|e| eprintln!("xgate-bench: cannot hold /dev/cpu_dma_latency at 0: {e}"))
            .ok();
        Self { held }
    }

    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }
}
