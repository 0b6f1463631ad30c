//! What the harness creates outside its own memory, each behind a guard that
//! removes it on drop (so also on error and on panic): network namespaces, a
//! private mount namespace with its own bpffs, temporary files, server
//! processes ([`Spawned`]: stopped by PID, with every process they forked).
//! Every
//! external command runs with a deadline, and SIGINT/SIGTERM/SIGHUP turn into
//! an ordinary error at the next check so the guards still run.
#![allow(unsafe_code)]

use std::{
    borrow::BorrowMut,
    ffi::OsStr,
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
pub use xgate_tests::procfs::{
    clock_ticks, cpu_ticks, descendants, machine_user_ticks, peak_rss_kib, reset_peak_rss,
    user_ticks,
};
use xgate_tests::procfs::{live_start_time, start_time};
pub use xgate_tests::{netns::NetNs, TempDir};

/// Prefix of every name the harness gives to something outside the process
/// (namespaces, directories); followed by `-<pid>`.
pub const PREFIX: &str = "xgate-bench";

/// Longest any single external command may run.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT, SIGTERM and SIGHUP into a flag checked by [`check_interrupted`].
pub fn install_signal_handlers() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe {
            libc::signal(signal, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Fails once a termination signal has arrived.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted by a signal; cleaning up");
    }
    Ok(())
}

/// Output of a finished command.
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion within [`COMMAND_DEADLINE`], killing it (by its
/// PID) if it takes longer or a signal arrives; fails with its stderr if it
/// exits non-zero.
pub fn run(cmd: impl BorrowMut<Command>) -> Result<Output> {
    run_inner(cmd, true, true)
}

/// Like [`run`], but a non-zero exit status is not an error (for tools that
/// exit 1 after printing their version).
pub fn run_unchecked(cmd: impl BorrowMut<Command>) -> Result<Output> {
    run_inner(cmd, false, true)
}

/// A cleanup step: runs even after a termination signal (only the deadline
/// stops it); a failure is reported on stderr and returned as false.
pub fn run_cleanup(cmd: impl BorrowMut<Command>) -> bool {
    match run_inner(cmd, true, false) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("xgate-bench: cleanup: {e:#}");
            false
        }
    }
}

/// [`run_cleanup`] for steps that may fail harmlessly (nothing to undo).
fn run_cleanup_silently(cmd: impl BorrowMut<Command>) {
    let _ = run_inner(cmd, true, false);
}

fn run_inner(
    mut cmd: impl BorrowMut<Command>,
    check_status: bool,
    interruptible: bool,
) -> Result<Output> {
    let cmd = cmd.borrow_mut();
    let shown = show(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    // Drain both pipes on threads so a chatty child never blocks on a full pipe.
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out_pipe.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err_pipe.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + COMMAND_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Ok(status);
        }
        let stop = if interruptible && INTERRUPTED.load(Ordering::SeqCst) {
            Some("was stopped: interrupted by a signal".to_string())
        } else if Instant::now() >= deadline {
            Some(format!("timed out after {COMMAND_DEADLINE:?}"))
        } else {
            None
        };
        if let Some(why) = stop {
            let _ = child.kill();
            let _ = child.wait();
            break Err(why);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    let status = match status {
        Ok(status) => status,
        Err(why) => bail!("`{shown}` {why}"),
    };
    if check_status && !status.success() {
        bail!("`{shown}` failed ({status}): {}", stderr.trim());
    }
    Ok(Output { stdout, stderr })
}

fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `program ARGS...` as a [`Command`].
pub fn command<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

fn name(tag: &str) -> String {
    format!("{PREFIX}-{tag}-{}", std::process::id())
}

/// A network namespace `xgate-bench-<tag>-<pid>` (so that [`sweep_stale`]
/// finds it after a crash), deleted on drop with its veth pairs and any XDP
/// program attached to them.
pub fn netns(tag: &str) -> Result<NetNs> {
    let name = name(tag);
    NetNs::named(name.clone()).with_context(|| format!("creating network namespace {name}"))
}

/// A veth pair with both ends inside `ns`, both up.
pub fn veth_pair(ns: &NetNs, a: &str, b: &str) -> Result<()> {
    ns.try_ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
    ns.try_ip(&["link", "set", a, "up"])?;
    ns.try_ip(&["link", "set", b, "up"])?;
    Ok(())
}

/// A persistent mount namespace (bind-mounted on a file under
/// `/run/xgate-bench-<tag>-<pid>/`) in which a fresh, private bpffs is mounted
/// on /sys/fs/bpf. Tools run in it through `nsenter --mount=...` pin into that
/// bpffs, never into the host's; on drop the namespace is released, and with
/// it every pinned object.
pub struct PrivateBpffs {
    dir: PathBuf,
    dir_mounted: bool,
    ns_file: Option<PathBuf>,
}

impl PrivateBpffs {
    pub fn create(tag: &str) -> Result<Self> {
        let dir = Path::new("/run").join(name(tag));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let mut guard = Self {
            dir: dir.clone(),
            dir_mounted: false,
            ns_file: None,
        };
        // `unshare --mount=FILE` needs FILE on a mount that is not shared.
        run(command(
            "mount",
            [OsStr::new("--bind"), dir.as_os_str(), dir.as_os_str()],
        ))?;
        guard.dir_mounted = true;
        run(command(
            "mount",
            [OsStr::new("--make-private"), dir.as_os_str()],
        ))?;
        let file = dir.join("mnt");
        std::fs::write(&file, b"").with_context(|| format!("create {}", file.display()))?;
        let mut unshare = Command::new("unshare");
        unshare
            .arg(format!("--mount={}", file.display()))
            .args(["--propagation", "private", "--"])
            .args(["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"]);
        let created = run(&mut unshare);
        // unshare may have bind-mounted the namespace even if mount failed.
        guard.ns_file = Some(file);
        created.context("creating a mount namespace with a private bpffs")?;
        Ok(guard)
    }

    /// `nsenter --mount=<this> [--net=<netns>] program`.
    pub fn nsenter(&self, net: Option<&NetNs>, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        if let Some(file) = &self.ns_file {
            cmd.arg(format!("--mount={}", file.display()));
        }
        if let Some(ns) = net {
            cmd.arg(format!("--net={}", ns.path().display()));
        }
        cmd.arg(program);
        cmd
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        if let Some(file) = &self.ns_file {
            // Not mounted if unshare failed early: ignore that error.
            run_cleanup_silently(command("umount", [file]));
            let _ = std::fs::remove_file(file);
        }
        if self.dir_mounted {
            run_cleanup(command("umount", [&self.dir]));
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A directory under /tmp (`xgate-bench-<tag>-<pid>`, so that
/// [`sweep_stale`] finds it after a crash), removed on drop.
pub fn temp_dir(tag: &str) -> Result<TempDir> {
    let path = std::env::temp_dir().join(name(tag));
    TempDir::at(path.clone()).with_context(|| format!("create {}", path.display()))
}

/// Pins the calling thread (and the processes it starts) to the highest
/// CPU it may run on; returns that CPU, or None if pinning failed.
pub fn pin_to_last_cpu() -> Option<usize> {
    let cpu = *gateway_userspace::sys::allowed_cpus().ok()?.last()?;
    pin_to(cpu).then_some(cpu)
}

/// Pins the calling thread (and the processes it starts from now on) to
/// `cpu`; false if the kernel refused (no such CPU).
pub fn pin_to(cpu: usize) -> bool {
    gateway_userspace::sys::bind_thread_to(cpu).is_ok()
}

/// Lets the calling thread (and the processes it starts from now on) run on
/// every online CPU again, undoing [`pin_to_last_cpu`].
pub fn unpin() {
    // SAFETY: cpu_set_t is plain data; the calls get/set this thread's mask.
    unsafe {
        let cpus = libc::sysconf(libc::_SC_NPROCESSORS_CONF).clamp(1, libc::CPU_SETSIZE as i64);
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..cpus as usize {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// User CPU seconds of this process's terminated, waited-for children (the
/// load generators once they have exited).
pub fn children_user_seconds() -> f64 {
    // SAFETY: rusage is plain data filled by the kernel.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) != 0 {
            return 0.0;
        }
        usage.ru_utime.tv_sec as f64 + usage.ru_utime.tv_usec as f64 / 1e6
    }
}

/// A server process the harness started, with its output in a log file.
/// Dropping it stops it, also on error and on panic: SIGTERM to it, a grace
/// period, then SIGKILL to it and to every process it forked that is still
/// there (each by PID, checked by start time against PID reuse).
pub struct Spawned {
    pub name: String,
    child: Child,
    log: PathBuf,
}

/// How long a server gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

impl Spawned {
    /// Starts `cmd` with stdin closed and stdout/stderr appended to `log`.
    /// The process gets SIGTERM if the harness dies without dropping the
    /// guard (SIGKILL), so it never outlives the run.
    pub fn start(name: &str, mut cmd: Command, log: &Path) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec only async-signal-safe calls
        // (prctl, getppid) are made.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The harness may have died before prctl: then exit at once.
                if libc::getppid() == 1 {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let shown = show(&cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {name}: `{shown}`"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process and every process it forked (nginx's workers).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.pid()];
        pids.extend(descendants(self.pid()));
        pids
    }

    /// Fails, with the end of its log, if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); end of its log {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(20)
            );
        }
        Ok(())
    }

    /// How many bytes its log holds now: a mark for [`Spawned::log_summary`].
    pub fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    /// What the process logged since `mark` (a [`Spawned::log_len`]), each
    /// kind of line once with its count, the most frequent first (at most
    /// `kinds`): say, why the requests of a failed run were refused.
    pub fn log_summary(&self, mark: u64, kinds: usize) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            if file.seek(SeekFrom::Start(mark)).is_ok() {
                let _ = file.take(16 << 20).read_to_string(&mut text);
            }
        }
        summarize_log(&text, kinds)
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// CPU time of the process and its descendants, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        self.pids().into_iter().filter_map(cpu_ticks).sum()
    }

    /// User CPU time of the process and its descendants, in clock ticks.
    pub fn user_ticks(&self) -> u64 {
        self.pids().into_iter().filter_map(user_ticks).sum()
    }

    /// Sum of VmHWM over the process and its descendants, in KiB (pages
    /// shared between them are counted once per process).
    pub fn peak_rss_kib(&self) -> u64 {
        self.pids().into_iter().filter_map(peak_rss_kib).sum()
    }

    pub fn reset_peak_rss(&self) {
        for pid in self.pids() {
            reset_peak_rss(pid);
        }
    }

    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return None,
            }
        }
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let pid = self.pid();
        let forked: Vec<(u32, Option<u64>)> = descendants(pid)
            .into_iter()
            .map(|p| (p, start_time(p)))
            .collect();
        if self.child.try_wait().ok().flatten().is_none() {
            signal(pid, libc::SIGTERM);
            if self.wait_exit(STOP_GRACE).is_none() {
                eprintln!(
                    "xgate-bench: {} (pid {pid}) did not stop within {STOP_GRACE:?} of SIGTERM; killing it",
                    self.name
                );
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        // What it forked, if it left any behind (nginx's workers outlive a
        // killed master).
        let deadline = Instant::now() + Duration::from_secs(2);
        for (p, started) in forked {
            while started.is_some() && live_start_time(p) == started {
                if Instant::now() >= deadline {
                    eprintln!("xgate-bench: killing pid {p}, left behind by {}", self.name);
                    signal(p, libc::SIGKILL);
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The PID in a name `xgate-bench-<tag>-<pid>`, if it has that form.
fn pid_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?.strip_prefix('-')?;
    rest.rsplit('-').next()?.parse().ok()
}

fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes what an earlier run killed without a chance to clean up (SIGKILL,
/// power loss) left behind: only names of the harness's own form whose
/// process is gone.
pub fn sweep_stale() {
    if let Ok(out) = run(command("ip", ["netns", "list"])) {
        for line in out.stdout.lines().take(10_000) {
            let ns = line.split_whitespace().next().unwrap_or("");
            if pid_of(ns).is_some_and(|pid| !alive(pid)) {
                eprintln!("xgate-bench: removing stale network namespace {ns}");
                run_cleanup(command("ip", ["netns", "del", ns]));
            }
        }
    }
    for parent in [Path::new("/run").to_path_buf(), std::env::temp_dir()] {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.take(100_000).flatten() {
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else {
                continue;
            };
            if pid_of(name).is_none_or(alive) {
                continue;
            }
            let path = entry.path();
            eprintln!("xgate-bench: removing stale {}", path.display());
            let ns_file = path.join("mnt");
            if ns_file.exists() {
                run_cleanup_silently(command("umount", [&ns_file]));
                run_cleanup_silently(command("umount", [&path]));
            }
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Lines of a log counted by kind: a line's kind is the line without its
/// timestamp (a leading token starting with a digit) and without the
/// values that differ per request (`request_id=...`, `client.port=...`).
/// `"N x kind"` per kind, the most frequent first, at most `kinds`, and how
/// many kinds were left out.
pub fn summarize_log(text: &str, kinds: usize) -> String {
    let mut counted: std::collections::HashMap<String, usize> = Default::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut tokens = line.split_whitespace().peekable();
        if tokens
            .peek()
            .is_some_and(|t| t.starts_with(|c: char| c.is_ascii_digit()))
        {
            tokens.next();
        }
        let kind = tokens
            .filter(|t| !t.starts_with("request_id=") && !t.starts_with("client.port="))
            .collect::<Vec<_>>()
            .join(" ");
        *counted.entry(kind).or_default() += 1;
    }
    let mut counts: Vec<(String, usize)> = counted.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut out: Vec<String> = counts
        .iter()
        .take(kinds)
        .map(|(kind, n)| format!("{n} x {kind}"))
        .collect();
    if counts.len() > kinds {
        out.push(format!("({} more kinds)", counts.len() - kinds));
    }
    out.join("; ")
}

/// The kernel's count of connections dropped because a listener's accept
/// queue was full (`TcpExt: ListenOverflows` in /proc/net/netstat), on the
/// whole machine (this namespace).
pub fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let index = names
            .split_whitespace()
            .position(|n| n == "ListenOverflows")?;
        return values.split_whitespace().nth(index)?.parse().ok();
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_log_is_summarized_by_kind_without_timestamps_and_request_ids() {
        let log = "2026-12-07T08:03:40.26Z  WARN proxy: request failed request_id=ab route=all error=shed\n\
                   2026-12-07T08:03:40.27Z  WARN proxy: request failed request_id=cd route=all error=shed\n\
                   2026-12-07T08:03:41.00Z  WARN proxy: request failed request_id=ef route=all error=timeout\n";
        assert_eq!(
            super::summarize_log(log, 5),
            "2 x WARN proxy: request failed route=all error=shed; \
             1 x WARN proxy: request failed route=all error=timeout"
        );
        assert_eq!(
            super::summarize_log(log, 1),
            "2 x WARN proxy: request failed route=all error=shed; (1 more kinds)"
        );
        assert_eq!(super::summarize_log("", 3), "");
    }

    #[test]
    fn listen_overflows_are_read_from_the_kernel() {
        assert!(super::listen_overflows().is_some());
    }

    use super::*;

    #[test]
    fn stale_names_are_recognised_by_their_pid() {
        assert_eq!(pid_of("xgate-bench-xdp-1234"), Some(1234));
        assert_eq!(pid_of("xgate-bench-xdp-filter-77"), Some(77));
        assert_eq!(pid_of("xgt-polc-3722"), None);
        assert_eq!(pid_of("xgate-bench-xdp"), None);
        assert_eq!(pid_of("other-xgate-bench-xdp-1"), None);
    }
}
