//! `xgate-bench soak` (run by `cargo xtask soak`): xgate under mixed traffic
//! for a fixed time while it is reloaded, its blocklist churned, an upstream
//! target restarted and (as root) a flood sent at its XDP-attached veth;
//! sampled every ten seconds, then judged ([`verdict`]): no unexpected
//! errors, bounded p99 drift, RSS and open files on a plateau.
//!
//! As root everything runs in a network namespace of its own (the daemon
//! with its XDP program in a private bpffs, the upstreams, the client) and
//! the flood comes from a second one; otherwise on loopback, without XDP and
//! without the flood (said loudly).

mod config;
mod events;
mod traffic;
mod verdict;

use std::{
    fs::File,
    net::SocketAddr,
    os::fd::AsRawFd,
    path::PathBuf,
    process::Command,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use xgate_tests::{netns::try_veth, ports::free_tcp_port};

use crate::{
    lab, peers,
    sys::{self, NetNs, PrivateBpffs, Spawned, TempDir},
    upstream,
};

/// `xgate-bench soak`: the name main.rs dispatches on.
pub const SUBCOMMAND: &str = "soak";

const DEFAULT_RPS: u32 = 200;
const DEFAULT_SAMPLE_S: u64 = 10;
/// Length of one cycle of periodic events.
const DEFAULT_CYCLE_S: u64 = 60;
/// Generous: the machines it runs on are shared (see docs/reliability.md).
const DEFAULT_MAX_P99_DRIFT: f64 = 3.0;

// The namespaces' addresses (198.18.0.0/15 is reserved for benchmarks).
const GW_IF: &str = "xgssg0";
const ATTACKER_IF: &str = "xgssa0";
const GW_CIDR: &str = "198.18.1.1/24";
const ATTACKER_CIDR: &str = "198.18.1.2/24";
const ATTACKER_ADDR: &str = "198.18.1.2";
const GW_ADDR: [u8; 4] = [198, 18, 1, 1];
/// Each flood: this many packets a second for [`FLOOD_SECONDS`].
const FLOOD_PPS: u64 = 50_000;
const FLOOD_SECONDS: u64 = 3;
/// The flood scenario's trafgen template (UDP and SYN from a source range).
const TRAFGEN_TEMPLATE: &str = include_str!("../../peers/trafgen-flood.cfg");

const USAGE: &str =
    "usage: xgate-bench soak (--minutes N | --seconds N) [--rps R] [--report FILE]\n\
    [--sample-seconds S] [--cycle-seconds C] [--max-p99-drift X] [--rss-slack-mib M]\n\n\
    Mixed HTTP/1.1 and HTTP/2 traffic through xgate for exactly the given time, with\n\
    reloads (one broken), blocklist churn, upstream restarts and, as root, a flood\n\
    against the XDP-attached veth; prints a table per window and a verdict, and exits\n\
    non-zero when the verdict fails. Ctrl-C stops early and still reports.\n\
    --rss-slack-mib: MiB the last third's RSS peak may exceed the middle third's\n\
    beyond 10% (default 4; a run of seconds cannot tell warm-up from a plateau).\n";

#[derive(Debug, Clone)]
struct Options {
    duration: Duration,
    rps: u32,
    report: Option<PathBuf>,
    sample: Duration,
    cycle: Duration,
    max_p99_drift: f64,
    rss_slack_mib: u64,
}

fn number<T: std::str::FromStr>(name: &str, value: Option<&String>) -> Result<T> {
    let value = value.with_context(|| format!("{name} needs a value"))?;
    value
        .parse()
        .map_err(|_| anyhow::anyhow!("{name} {value}: not a number"))
}

fn parse(args: &[String]) -> Result<Option<Options>> {
    let mut o = Options {
        duration: Duration::ZERO,
        rps: DEFAULT_RPS,
        report: None,
        sample: Duration::from_secs(DEFAULT_SAMPLE_S),
        cycle: Duration::from_secs(DEFAULT_CYCLE_S),
        max_p99_drift: DEFAULT_MAX_P99_DRIFT,
        rss_slack_mib: verdict::RSS_GROWTH_SLACK_KIB / 1024,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--minutes" => {
                o.duration =
                    Duration::from_secs(number::<u64>(arg, args.next())?.saturating_mul(60))
            }
            "--seconds" => o.duration = Duration::from_secs(number(arg, args.next())?),
            "--rps" => o.rps = number(arg, args.next())?,
            "--report" => o.report = Some(args.next().context("--report needs a file")?.into()),
            "--sample-seconds" => o.sample = Duration::from_secs(number(arg, args.next())?),
            "--cycle-seconds" => o.cycle = Duration::from_secs(number(arg, args.next())?),
            "--max-p99-drift" => o.max_p99_drift = number(arg, args.next())?,
            "--rss-slack-mib" => o.rss_slack_mib = number(arg, args.next())?,
            other => bail!("unknown argument {other}\n\n{USAGE}"),
        }
    }
    ensure!(
        !o.duration.is_zero(),
        "give --minutes N (or --seconds N)\n\n{USAGE}"
    );
    ensure!(
        o.duration <= Duration::from_secs(24 * 3600),
        "at most 24 hours"
    );
    ensure!(
        (1..=20_000).contains(&o.rps),
        "--rps must be between 1 and 20000"
    );
    ensure!(
        o.sample >= Duration::from_secs(1),
        "--sample-seconds must be at least 1"
    );
    ensure!(
        o.cycle >= Duration::from_secs(10),
        "--cycle-seconds must be at least 10"
    );
    ensure!(o.max_p99_drift >= 1.0, "--max-p99-drift must be at least 1");
    Ok(Some(o))
}

/// The flood's side of the lab: the attacker's namespace and trafgen config.
struct FloodLab {
    attacker: NetNs,
    config: PathBuf,
    log: PathBuf,
}

impl FloodLab {
    /// One bounded flood: at most [`FLOOD_PPS`] × [`FLOOD_SECONDS`]
    /// packets (trafgen's own count), ended after [`FLOOD_SECONDS`] + 2 s
    /// if a busy machine has not let trafgen send them all; returns
    /// (packets sent, seconds).
    fn run(&self) -> Result<(u64, f64)> {
        let cpu = lab::cpu_times().len().saturating_sub(1);
        let mut flood = lab::Flood::start(
            &self.attacker,
            ATTACKER_IF,
            &self.config,
            FLOOD_PPS * FLOOD_SECONDS,
            FLOOD_PPS,
            cpu,
            10,
            &self.log,
        )?;
        std::thread::sleep(Duration::from_secs(FLOOD_SECONDS + 2));
        let done = flood.end()?;
        let left = flood.left_alive();
        ensure!(left.is_empty(), "trafgen processes {left:?} still alive");
        Ok((done.sent, done.seconds))
    }
}

/// Everything the run set up; dropped (stopped, removed) at the end.
pub struct Lab {
    tmp: TempDir,
    xgate: PathBuf,
    gw: Option<NetNs>,
    bpffs: Option<PrivateBpffs>,
    flood: Option<FloodLab>,
    listen: SocketAddr,
    targets: [SocketAddr; 2],
    config: PathBuf,
    admin: PathBuf,
    limit: u32,
}

impl Lab {
    fn params(&self, limit: u32) -> config::Params<'_> {
        config::Params {
            listen: self.listen,
            dir: self.tmp.path(),
            targets: self.targets,
            xdp_iface: self.gw.as_ref().map(|_| GW_IF),
            limit,
        }
    }

    fn write_config(&self, text: &str) -> Result<()> {
        std::fs::write(&self.config, text)
            .with_context(|| format!("write {}", self.config.display()))
    }

    /// `xgate --admin-socket SOCK ARGS`: fails with its stderr on a non-zero exit.
    fn cli(&self, args: &[&str]) -> Result<sys::Output> {
        let mut cmd = Command::new(&self.xgate);
        cmd.arg("--admin-socket").arg(&self.admin).args(args);
        sys::run(cmd)
    }

    fn denied_counter(&self) -> Result<u64> {
        let out = self.cli(&["status", "--json"])?;
        let v: serde_json::Value =
            serde_json::from_str(out.stdout.trim()).context("status --json")?;
        v["xdp"]["counters"]["denied_v4"]
            .as_u64()
            .with_context(|| format!("no XDP counter denied_v4 in {v}"))
    }

    /// `command` in the gateway's namespace when there is one.
    fn in_gw(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.gw {
            Some(ns) => ns.command(program),
            None => Command::new(program),
        }
    }

    /// Upstream target `i` (the bench's upstream, one thread).
    fn start_upstream(&self, i: usize) -> Result<Spawned> {
        // The harness's own image through /proc: it still runs if the file
        // was rebuilt (replaced) during a long soak, when its path would not.
        let exe = PathBuf::from(format!("/proc/{}/exe", std::process::id()));
        let mut cmd = self.in_gw(exe);
        cmd.args([
            upstream::SUBCOMMAND,
            "--listen",
            &self.targets[i].to_string(),
            "--threads",
            "1",
        ]);
        let log = self.tmp.path().join(format!("upstream-{i}.log"));
        let mut spawned = Spawned::start(&format!("upstream {}", self.targets[i]), cmd, &log)?;
        // Listening within a few seconds, or it has failed.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.listening(self.targets[i]) {
            spawned.check_running()?;
            ensure!(
                Instant::now() < deadline,
                "{} not listening after 10 s",
                spawned.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(spawned)
    }

    /// Whether something accepts TCP on `addr` (from the gateway's namespace).
    fn listening(&self, addr: SocketAddr) -> bool {
        let probe =
            move || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok();
        match &self.gw {
            Some(ns) => lab::in_netns(ns, None, probe).unwrap_or(false),
            None => probe(),
        }
    }

    fn start_xgate(&self) -> Result<Spawned> {
        let mut cmd = match &self.bpffs {
            Some(bpffs) => bpffs.nsenter(self.gw.as_ref(), "env"),
            None => Command::new("env"),
        };
        cmd.arg("RUST_LOG=warn")
            .arg(&self.xgate)
            .arg("run")
            .arg("-c")
            .arg(&self.config)
            .current_dir(self.tmp.path());
        let mut xgate = Spawned::start("xgate", cmd, &self.tmp.path().join("xgate.log"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(self.admin.exists() && self.listening(self.listen)) {
            xgate.check_running()?;
            ensure!(
                Instant::now() < deadline,
                "xgate not ready within 30 s; end of its log:\n{}",
                xgate.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(xgate)
    }
}

/// The xgate process itself among what was spawned (nsenter and env exec it).
fn xgate_pid(spawned: &Spawned) -> u32 {
    spawned
        .pids()
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "xgate")
        })
        .unwrap_or(spawned.pid())
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

fn free_port_in(gw: Option<&NetNs>) -> Result<u16> {
    match gw {
        Some(ns) => Ok(lab::in_netns(ns, None, free_tcp_port)??),
        None => Ok(free_tcp_port()?),
    }
}

fn set_up(root: bool) -> Result<Lab> {
    let xgate = peers::find_xgate()?.path;
    let tmp = sys::temp_dir("soak")?;
    let (gw, bpffs, flood) = if root {
        let bpffs = PrivateBpffs::create("soak-bpf")?;
        let gw = sys::netns("sgw")?;
        let attacker = sys::netns("sat")?;
        try_veth(
            &gw,
            GW_IF,
            &[GW_CIDR],
            &attacker,
            ATTACKER_IF,
            &[ATTACKER_CIDR],
        )?;
        // Answers to flood packets that got through would go back to the
        // attacker's namespace, which forwards nothing: nothing leaves.
        gw.try_ip(&["route", "add", config::DENY_CIDR, "via", ATTACKER_ADDR])?;
        let flood_config = tmp.path().join("trafgen-soak.cfg");
        (Some(gw), Some(bpffs), Some((attacker, flood_config)))
    } else {
        (None, None, None)
    };
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port_in(gw.as_ref())?));
    let mut targets = [listen; 2];
    for t in &mut targets {
        *t = SocketAddr::from(([127, 0, 0, 1], free_port_in(gw.as_ref())?));
    }
    ensure!(
        targets[0] != targets[1] && targets[0] != listen,
        "free ports collided; run again"
    );
    let flood = match flood {
        Some((attacker, path)) => {
            let gw_ns = gw.as_ref().expect("root");
            let text = peers::render(
                TRAFGEN_TEMPLATE,
                &[
                    ("DST_MAC", mac_bytes(&lab::mac(gw_ns, GW_IF)?)),
                    ("SRC_MAC", mac_bytes(&lab::mac(&attacker, ATTACKER_IF)?)),
                    ("SOURCE", "19, drnd(2)".into()),
                    ("DST_IP", GW_ADDR.map(|o| o.to_string()).join(", ")),
                    ("DST_PORT", listen.port().to_string()),
                ],
                false,
            )?;
            std::fs::write(&path, text)?;
            Some(FloodLab {
                attacker,
                config: path,
                log: tmp.path().join("trafgen.log"),
            })
        }
        None => None,
    };
    let config = tmp.path().join("xgate.yaml");
    let admin = tmp.path().join("admin.sock");
    Ok(Lab {
        tmp,
        xgate,
        gw,
        bpffs,
        flood,
        listen,
        targets,
        config,
        admin,
        limit: 1,
    })
}

/// `aa:bb:..` as trafgen's `0xaa, 0xbb, ..`.
fn mac_bytes(mac: &str) -> String {
    mac.split(':')
        .map(|b| format!("0x{b}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `xgate-bench soak ...`: Ok when the verdict passes.
pub fn main(args: &[String]) -> Result<()> {
    let Some(options) = parse(args)? else {
        print!("{USAGE}");
        return Ok(());
    };
    sys::install_signal_handlers();
    sys::sweep_stale();
    let root = gateway_userspace::sys::is_root();
    if !root {
        eprintln!(
            "\n******** NOT ROOT: the flood part of the soak is SKIPPED (and XDP is not attached); \
             run as root for the full soak ********\n"
        );
    }
    let mut lab = set_up(root)?;
    // Half the limited route's share of the traffic: about half its
    // requests are refused with 429.
    lab.limit = ((options.rps as f64 * 0.2) / 2.0).ceil().max(1.0) as u32;
    lab.write_config(&config::render(&lab.params(lab.limit)))?;
    sys::run(
        Command::new(&lab.xgate)
            .arg("validate")
            .arg("-c")
            .arg(&lab.config),
    )
    .context("xgate refuses the soak config")?;
    let broken = lab.tmp.path().join("broken.yaml");
    std::fs::write(&broken, config::broken(&lab.params(lab.limit)))?;
    ensure!(
        sys::run(
            Command::new(&lab.xgate)
                .arg("validate")
                .arg("-c")
                .arg(&broken)
        )
        .is_err(),
        "xgate validates the broken config"
    );
    let _target_a = lab.start_upstream(0)?;
    let mut target_b = Some(lab.start_upstream(1)?);
    let mut xgate = lab.start_xgate()?;
    let pid = xgate_pid(&xgate);
    eprintln!(
        "soak: xgate (pid {pid}) on {}{}, {} req/s for {} s, windows of {} s",
        lab.listen,
        if root {
            " in a network namespace, XDP on its veth"
        } else {
            ""
        },
        options.rps,
        options.duration.as_secs(),
        options.sample.as_secs()
    );

    let shared = Arc::new(traffic::Shared::new());
    let plan = events::schedule(options.cycle, options.duration, lab.flood.is_some());
    let (samples, records, interrupted, died) = std::thread::scope(|scope| -> Result<_> {
        let client_shared = shared.clone();
        let netns = match &lab.gw {
            Some(ns) => Some(File::open(ns.path())?),
            None => None,
        };
        let listen = lab.listen;
        let rps = options.rps;
        let client = scope.spawn(move || -> Result<()> {
            if let Some(file) = netns {
                // SAFETY: setns on a valid namespace fd changes only this
                // thread; the runtime's threads are created from it and
                // inherit the namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                ensure!(rc == 0, "setns: {}", std::io::Error::last_os_error());
            }
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(traffic::run(listen, rps, client_shared));
            Ok(())
        });
        let events_shared = shared.clone();
        let lab_ref = &lab;
        let target_b = &mut target_b;
        let events = scope.spawn(move || events::run(lab_ref, target_b, &events_shared, &plan));

        let mut samples = Vec::new();
        let mut interrupted = false;
        let mut died = None;
        let end = shared.started + options.duration;
        let mut next = shared.started + options.sample;
        loop {
            let now = Instant::now();
            let due = next.min(end);
            if now < due {
                std::thread::sleep((due - now).min(Duration::from_millis(100)));
                if sys::check_interrupted().is_err() {
                    interrupted = true;
                } else {
                    continue;
                }
            }
            let mut sample = shared.take_window();
            sample.at_s = shared.started.elapsed().as_secs_f64();
            sample.rss_kib = lab::rss_kib(pid).unwrap_or(0);
            sample.fds = open_fds(pid);
            eprintln!(
                "soak: {:6.1} s  {} requests, {} unexpected, p99 {:.2} ms, RSS {:.1} MiB, {} fds",
                sample.at_s,
                sample.requests,
                sample.unexpected,
                sample.p99_us / 1000.0,
                sample.rss_kib as f64 / 1024.0,
                sample.fds
            );
            samples.push(sample);
            if let Err(e) = xgate.check_running() {
                died = Some(format!("{e:#}"));
                break;
            }
            if interrupted || Instant::now() >= end {
                break;
            }
            next += options.sample;
        }
        shared.stop.store(true, Ordering::SeqCst);
        let records = events
            .join()
            .map_err(|_| anyhow::anyhow!("events thread panicked"))?;
        client
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        Ok((samples, records, interrupted, died))
    })?;

    let mut failures: Vec<String> = records
        .iter()
        .filter_map(|r| {
            r.result
                .as_ref()
                .err()
                .map(|e| format!("{} at {:.0} s: {e:#}", r.event, r.at_s))
        })
        .collect();
    if let Some(died) = died {
        failures.push(format!("xgate died: {died}"));
    }
    let verdict = verdict::judge(
        &samples,
        &failures,
        verdict::Limits {
            max_p99_drift: options.max_p99_drift,
            rss_slack_kib: options.rss_slack_mib.saturating_mul(1024),
        },
    );
    let report = render_report(
        &options,
        root,
        interrupted,
        &samples,
        &records,
        &shared.examples(),
        &verdict,
    );
    println!("{report}");
    if let Some(path) = &options.report {
        std::fs::write(path, &report).with_context(|| format!("write {}", path.display()))?;
        eprintln!("soak: wrote {}", path.display());
    }
    drop(xgate);
    ensure!(
        verdict.passed(),
        "the soak verdict is FAIL (see the report above)"
    );
    Ok(())
}

fn render_report(
    options: &Options,
    root: bool,
    interrupted: bool,
    samples: &[verdict::Sample],
    records: &[events::Record],
    examples: &[String],
    verdict: &verdict::Verdict,
) -> String {
    let mut out = format!(
        "## Soak: {} s at {} req/s (HTTP/1.1 keep-alive 50%, new connections 15%, HTTP/2 35%)\n\n",
        options.duration.as_secs(),
        options.rps
    );
    if interrupted {
        out.push_str("**Interrupted** before the planned end: the table covers what ran.\n\n");
    }
    if !root {
        out.push_str("**Not root: no XDP and no flood** (run as root for the full soak).\n\n");
    }
    out.push_str(&verdict::table(samples));
    out.push_str("\nEvents:\n\n");
    let mut kinds: Vec<(String, usize, usize)> = Vec::new();
    for r in records {
        let name = r.event.to_string();
        match kinds.iter_mut().find(|k| k.0 == name) {
            Some(k) => {
                k.1 += 1;
                k.2 += usize::from(r.result.is_err());
            }
            None => kinds.push((name, 1, usize::from(r.result.is_err()))),
        }
    }
    for (name, count, failed) in &kinds {
        let last = records
            .iter()
            .rev()
            .find(|r| r.event.to_string() == *name)
            .map(|r| match &r.result {
                Ok(t) => t.clone(),
                Err(e) => format!("FAILED: {e:#}"),
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "- {name}: {count} times, {failed} failed; last: {last}\n"
        ));
    }
    if !examples.is_empty() {
        out.push_str("\nFirst unexpected outcomes:\n\n");
        for e in examples {
            out.push_str(&format!("- {e}\n"));
        }
    }
    out.push_str("\nVerdict:\n\n");
    out.push_str(&verdict::render(verdict));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options() {
        let o = parse(&args(&["--minutes", "10", "--rps", "50"]))
            .unwrap()
            .unwrap();
        assert_eq!((o.duration.as_secs(), o.rps), (600, 50));
        assert!(parse(&args(&[])).is_err(), "a length is required");
        assert!(parse(&args(&["--minutes", "x"])).is_err());
        assert!(parse(&args(&["--seconds", "20", "--rps", "0"])).is_err());
        assert!(parse(&args(&["--help"])).unwrap().is_none());
    }
}
