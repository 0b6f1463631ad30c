//! Scenario `xdp`: what our XDP program costs per packet, measured in the
//! kernel with BPF_PROG_TEST_RUN (the kernel runs the program `repeat` times
//! on one frame and reports the average time per run), against the empty
//! program from the same object (the floor: the test-run loop itself) and
//! against xdp-filter from xdp-tools on the same frames.
//!
//! Two methods, both BPF_PROG_TEST_RUN, on the same programs:
//! - `aya`: aya's `TestRun::test_run` from this process (every case);
//! - `bpftool`: `bpftool prog run id ID data_in FILE repeat N`, the way one
//!   would measure xdp-filter by hand (a cross-check on a subset).
//!
//! Rounds are interleaved (round 1 of every case, then round 2, ...) so that
//! noise from other work on the machine lands on every case alike; each
//! case's median over the rounds is reported, ratios are between medians.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{bail, ensure, Context, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use gateway_common::{flags, RateLimit, Rule, RuleSource, Stat, XdpConfig, XDP_PASS_PROGRAM};
use gateway_userspace::xdp::{KernelRules, XdpDataPlane, XDP_OBJECT};
use ipnet::IpNet;
use serde_json::{json, Value};
use xgate_tests::frames::{udp4_frame, udp6_frame};

use crate::{
    report::{self, Report},
    rules,
    stats::{ratio, Samples},
    sys::{self, TempDir},
    xdp_filter::XdpFilter,
    Settings,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// The target: every pass and deny-hit case of ours (IPv4 and IPv6,
/// rate limiting on or off) within this factor of default xdp-filter's pass
/// and drop...
const TARGET_RATIO: f64 = 1.5;
/// ... and the IPv4 pass within this factor of xdp-filter built with only
/// its IP features (the lean peer).
const LEAN_TARGET_RATIO: f64 = 2.0;
/// Rounds when `--rounds` is not given.
pub const DEFAULT_ROUNDS: usize = 9;
/// Deny prefixes loaded per address family.
const DENY_ENTRIES: usize = 10_000;

const PASS_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const LIMITED_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 77);
const DENY_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const DENY_V4_NET: &str = "203.0.113.0/24";
const DST_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const PASS_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x900d, 0, 0, 0, 0, 1);
const DENY_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 1);
const DENY_V6_NET: &str = "2001:db8:bad::/48";
const DST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);

/// xdp-filter as `xdp-filter load IFACE` loads it (all features), and a lean
/// build with only the IP features.
const PEER_IFACE: &str = "xgb0";
const PEER_FEATURES: &str = "tcp,udp,ipv6,ipv4,ethernet";
const LEAN_IFACE: &str = "xgb1";
const LEAN_FEATURES: &str = "ipv4,ipv6";

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Frame {
    Pass4,
    Deny4,
    Limited4,
    Pass6,
    Deny6,
}

impl Frame {
    const ALL: [Frame; 5] = [
        Frame::Pass4,
        Frame::Deny4,
        Frame::Limited4,
        Frame::Pass6,
        Frame::Deny6,
    ];

    fn bytes(self) -> Vec<u8> {
        match self {
            Frame::Pass4 => udp4_frame(PASS_V4, DST_V4),
            Frame::Deny4 => udp4_frame(DENY_V4, DST_V4),
            Frame::Limited4 => udp4_frame(LIMITED_V4, DST_V4),
            Frame::Pass6 => udp6_frame(PASS_V6, DST_V6),
            Frame::Deny6 => udp6_frame(DENY_V6, DST_V6),
        }
    }

    fn describe(self) -> String {
        let (src, dst) = match self {
            Frame::Pass4 => (IpAddr::V4(PASS_V4), IpAddr::V4(DST_V4)),
            Frame::Deny4 => (IpAddr::V4(DENY_V4), IpAddr::V4(DST_V4)),
            Frame::Limited4 => (IpAddr::V4(LIMITED_V4), IpAddr::V4(DST_V4)),
            Frame::Pass6 => (IpAddr::V6(PASS_V6), IpAddr::V6(DST_V6)),
            Frame::Deny6 => (IpAddr::V6(DENY_V6), IpAddr::V6(DST_V6)),
        };
        format!("UDP {src} -> {dst}:8080")
    }
}

/// Which program a case runs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Prog {
    /// `xgate_pass`: returns XDP_PASS, nothing else (in `Ours`'s object).
    Floor,
    /// `xgate_xdp` with 10k+10k deny prefixes and a huge rate budget.
    Ours,
    /// `xgate_xdp` with the same lists and a 1 pps / burst 1 budget.
    Limited,
    /// `Ours` with rate limiting off (lists only).
    NoRateLimit,
    /// Diagnostic: `Ours` with empty lists (rate limiting only).
    NoLists,
    /// xdp-filter attached to this interface.
    Peer(&'static str),
}

impl Prog {
    /// The data plane whose program (and counters) this is.
    fn plane(self) -> Option<Prog> {
        match self {
            Prog::Floor | Prog::Ours => Some(Prog::Ours),
            Prog::Peer(_) => None,
            other => Some(other),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    Aya,
    Bpftool,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Aya => "aya test_run",
            Method::Bpftool => "bpftool prog run",
        }
    }
}

/// What a run must show, checked on every run.
#[derive(Clone, Copy, Debug)]
enum Check {
    /// No counter of ours moved (the floor).
    NoCounter,
    /// This counter moved by exactly `repeat`, no other.
    Exactly(Stat),
    /// At least 99 % of the runs landed in this counter (a token or two is
    /// earned while the rounds run).
    Mostly(Stat),
    /// Not our program: only the verdict is checked.
    Verdict,
}

struct Case {
    id: &'static str,
    label: &'static str,
    prog: Prog,
    method: Method,
    frame: Frame,
    verdict: u32,
    check: Check,
    /// The peer case this one is compared with.
    versus: Option<&'static str>,
    samples: Samples,
}

#[allow(clippy::too_many_arguments)]
fn case(
    id: &'static str,
    label: &'static str,
    prog: Prog,
    method: Method,
    frame: Frame,
    verdict: u32,
    check: Check,
    versus: Option<&'static str>,
) -> Case {
    Case {
        id,
        label,
        prog,
        method,
        frame,
        verdict,
        check,
        versus,
        samples: Samples::default(),
    }
}

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    use Check::*;
    use Frame::*;
    use Method::*;
    let peer = Prog::Peer(PEER_IFACE);
    let lean = Prog::Peer(LEAN_IFACE);
    let floor = Prog::Floor;
    let ours = Prog::Ours;
    vec![
        case("floor", "floor: empty program (xgate_pass)", floor, Aya, Pass4, XDP_PASS, NoCounter, None),
        case("pass_v4", "xgate pass, IPv4 (10k deny CIDRs, bucket charged)", ours, Aya, Pass4, XDP_PASS, Exactly(Stat::Passed), Some("xdpf_pass_v4")),
        case("deny_v4", "xgate deny hit, IPv4 (1 of 10k CIDRs)", ours, Aya, Deny4, XDP_DROP, Exactly(Stat::DeniedV4), Some("xdpf_drop_v4")),
        case("rate_limited_v4", "xgate rate-limited drop, IPv4 (empty bucket)", Prog::Limited, Aya, Limited4, XDP_DROP, Mostly(Stat::RateLimited), None),
        case("pass_v6", "xgate pass, IPv6 (10k deny prefixes incl. /128 entries, bucket charged)", ours, Aya, Pass6, XDP_PASS, Exactly(Stat::Passed), Some("xdpf_pass_v6")),
        case("deny_v6", "xgate deny hit, IPv6 (1 of 10k prefixes)", ours, Aya, Deny6, XDP_DROP, Exactly(Stat::DeniedV6), Some("xdpf_drop_v6")),
        case("xdpf_pass_v4", "xdp-filter pass, IPv4 (default features)", peer, Aya, Pass4, XDP_PASS, Verdict, None),
        case("xdpf_drop_v4", "xdp-filter drop, IPv4 src (default features)", peer, Aya, Deny4, XDP_DROP, Verdict, None),
        case("xdpf_pass_v6", "xdp-filter pass, IPv6 (default features)", peer, Aya, Pass6, XDP_PASS, Verdict, None),
        case("xdpf_drop_v6", "xdp-filter drop, IPv6 src (default features)", peer, Aya, Deny6, XDP_DROP, Verdict, None),
        case("xdpf_lean_pass_v4", "xdp-filter pass, IPv4 (features ipv4,ipv6)", lean, Aya, Pass4, XDP_PASS, Verdict, None),
        case("xdpf_lean_drop_v4", "xdp-filter drop, IPv4 src (features ipv4,ipv6)", lean, Aya, Deny4, XDP_DROP, Verdict, None),
        case("pass_v4_no_rate_limit", "xgate pass, IPv4 (10k deny CIDRs, rate limiting off)", Prog::NoRateLimit, Aya, Pass4, XDP_PASS, Exactly(Stat::Passed), Some("xdpf_pass_v4")),
        case("pass_v6_no_rate_limit", "xgate pass, IPv6 (10k deny prefixes incl. /128 entries, rate limiting off)", Prog::NoRateLimit, Aya, Pass6, XDP_PASS, Exactly(Stat::Passed), Some("xdpf_pass_v6")),
        case("diag_pass_v4_no_lists", "diagnostic: xgate pass, IPv4, empty lists, rate limiting on", Prog::NoLists, Aya, Pass4, XDP_PASS, Exactly(Stat::Passed), None),
        case("bt_floor", "floor: empty program (xgate_pass)", floor, Bpftool, Pass4, XDP_PASS, Verdict, None),
        case("bt_pass_v4", "xgate pass, IPv4", ours, Bpftool, Pass4, XDP_PASS, Verdict, Some("bt_xdpf_pass_v4")),
        case("bt_deny_v4", "xgate deny hit, IPv4", ours, Bpftool, Deny4, XDP_DROP, Verdict, Some("bt_xdpf_drop_v4")),
        case("bt_xdpf_pass_v4", "xdp-filter pass, IPv4 (default features)", peer, Bpftool, Pass4, XDP_PASS, Verdict, None),
        case("bt_xdpf_drop_v4", "xdp-filter drop, IPv4 src (default features)", peer, Bpftool, Deny4, XDP_DROP, Verdict, None),
    ]
}

/// Comparisons the target is judged on: (ours, peer, largest ratio within
/// the target, counts for the target).
const TARGET_PAIRS: &[(&str, &str, f64, bool)] = &[
    ("pass_v4", "xdpf_pass_v4", TARGET_RATIO, true),
    ("deny_v4", "xdpf_drop_v4", TARGET_RATIO, true),
    ("pass_v6", "xdpf_pass_v6", TARGET_RATIO, true),
    ("deny_v6", "xdpf_drop_v6", TARGET_RATIO, true),
    ("pass_v4_no_rate_limit", "xdpf_pass_v4", TARGET_RATIO, true),
    ("pass_v6_no_rate_limit", "xdpf_pass_v6", TARGET_RATIO, true),
    ("pass_v4", "xdpf_lean_pass_v4", LEAN_TARGET_RATIO, true),
    ("deny_v4", "xdpf_lean_drop_v4", LEAN_TARGET_RATIO, false),
    ("bt_pass_v4", "bt_xdpf_pass_v4", TARGET_RATIO, false),
    ("bt_deny_v4", "bt_xdpf_drop_v4", TARGET_RATIO, false),
];

/// The target as one sentence, for the report.
const TARGET_TEXT: &str = "every xgate pass and deny-hit case (IPv4 and IPv6, rate limiting \
    on or off, /128 entries under /64 aggregation) within 1.5x default xdp-filter's pass and \
    drop, and the IPv4 pass within 2x xdp-filter loaded with only its ipv4,ipv6 features \
    (aya test_run medians)";

fn permanent() -> Rule {
    Rule {
        expires_at_ns: 0,
        source: RuleSource::Config as u32,
        _pad: 0,
    }
}

fn rule_set(deny: &[IpNet], rate: RateLimit) -> KernelRules {
    KernelRules {
        config: XdpConfig {
            flags: flags::RATE_LIMIT,
            v4_prefix_len: 32,
            v6_prefix_len: 64,
            rate,
            // As the daemon runs it: drops counted per source, sampled.
            drop_sample: gateway_common::DROP_SAMPLE_DEFAULT,
            ..XdpConfig::default()
        },
        ports: None,
        deny: deny.iter().map(|n| (*n, permanent())).collect(),
        allow: Vec::new(),
        rate_overrides: Vec::new(),
    }
}

/// Everything the cases run on.
struct Bench {
    /// xgate's data planes, by the program that owns them.
    planes: HashMap<Prog, XdpDataPlane>,
    // Declared before `_tmp`: dropped first (it unloads xdp-filter).
    peer: XdpFilter,
    frames: HashMap<Frame, Vec<u8>>,
    frame_files: HashMap<Frame, PathBuf>,
    ids: HashMap<Prog, u32>,
    /// Holds the frame files; removed on drop.
    _tmp: TempDir,
    repeat: u32,
}

impl Bench {
    fn program(&mut self, prog: Prog) -> Result<&mut Xdp> {
        if let Prog::Peer(iface) = prog {
            return self.peer.program(iface);
        }
        let plane = prog
            .plane()
            .and_then(|p| self.planes.get_mut(&p))
            .with_context(|| format!("no data plane for {prog:?}"))?;
        Ok(if prog == Prog::Floor {
            plane.extra_program(XDP_PASS_PROGRAM)?
        } else {
            plane.program_mut()?
        })
    }

    fn plane(&self, prog: Prog) -> Option<&XdpDataPlane> {
        prog.plane().and_then(|p| self.planes.get(&p))
    }

    fn prog_id(&mut self, prog: Prog) -> Result<u32> {
        if let Some(id) = self.ids.get(&prog) {
            return Ok(*id);
        }
        let id = self.program(prog)?.info()?.id();
        self.ids.insert(prog, id);
        Ok(id)
    }

    /// One BPF_PROG_TEST_RUN through aya: (verdict of the last run, average ns).
    fn aya_run(&mut self, prog: Prog, frame: Frame, repeat: u32) -> Result<(u32, f64)> {
        let data = self.frames[&frame].clone();
        let result = self
            .program(prog)?
            .test_run(TestRunOptions {
                data_in: Some(&data),
                repeat,
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        Ok((result.return_value, result.duration.as_nanos() as f64))
    }

    /// One `bpftool prog run`: (verdict, average ns).
    fn bpftool_run(&mut self, prog: Prog, frame: Frame, repeat: u32) -> Result<(u32, f64)> {
        let id = self.prog_id(prog)?.to_string();
        let file = &self.frame_files[&frame];
        let out = sys::run(
            sys::command("bpftool", ["-j", "prog", "run", "id", &id, "data_in"])
                .arg(file)
                .args(["repeat", &repeat.to_string()]),
        )?;
        let v: Value = serde_json::from_str(out.stdout.trim())
            .with_context(|| format!("bpftool prog run: not JSON: {}", out.stdout))?;
        let retval = v.get("retval").and_then(Value::as_u64);
        let duration = v.get("duration").and_then(Value::as_u64);
        match (retval, duration) {
            (Some(r), Some(d)) => Ok((r as u32, d as f64)),
            _ => bail!("bpftool prog run printed {v}"),
        }
    }

    /// Runs `case` once with `repeat` repetitions, checks what it did, and
    /// returns the average ns per packet.
    fn measure(&mut self, case: &Case, repeat: u32) -> Result<f64> {
        sys::check_interrupted()?;
        let before = match self.plane(case.prog) {
            Some(plane) => Some(plane.counters()?),
            None => None,
        };
        let (verdict, ns) = match case.method {
            Method::Aya => self.aya_run(case.prog, case.frame, repeat)?,
            Method::Bpftool => self.bpftool_run(case.prog, case.frame, repeat)?,
        };
        ensure!(
            verdict == case.verdict,
            "{}: verdict {verdict}, expected {}",
            case.id,
            case.verdict
        );
        if let (Some(before), Some(plane)) = (before, self.plane(case.prog)) {
            let after = plane.counters()?;
            let moved: Vec<(Stat, u64)> = Stat::ALL
                .into_iter()
                .map(|s| (s, after.get(s) - before.get(s)))
                .filter(|(_, d)| *d > 0)
                .collect();
            let n = u64::from(repeat);
            let ok = match case.check {
                Check::NoCounter => moved.is_empty(),
                Check::Exactly(stat) => moved == [(stat, n)],
                // A token or two may be earned during the rounds: a few
                // passes are fine, everything else must be this counter.
                Check::Mostly(stat) => {
                    let hits = moved.iter().find(|(s, _)| *s == stat).map_or(0, |m| m.1);
                    hits * 100 >= n * 99
                        && moved.iter().all(|(s, _)| *s == stat || *s == Stat::Passed)
                }
                Check::Verdict => true,
            };
            ensure!(
                ok,
                "{}: counters moved by {moved:?}, expected {:?} over {n} runs",
                case.id,
                case.check
            );
        }
        Ok(ns)
    }
}

pub fn run(settings: &Settings) -> Result<Report> {
    let repeat = settings.repeat;
    let rounds = settings.rounds_or(DEFAULT_ROUNDS);
    let started = report::utc_now();

    eprintln!("    generating {DENY_ENTRIES} IPv4 and {DENY_ENTRIES} IPv6 deny prefixes");
    let deny_v4 = rules::deny_v4(
        DENY_ENTRIES,
        DENY_V4_NET.parse()?,
        &[PASS_V4, LIMITED_V4, DST_V4],
    )?;
    let deny_v6 = rules::deny_v6(DENY_ENTRIES, DENY_V6_NET.parse()?, &[PASS_V6, DST_V6])?;
    let all_deny: Vec<IpNet> = deny_v4.iter().chain(&deny_v6).copied().collect();

    eprintln!("    loading xgate's XDP program (4 instances, private maps) and the rule sets");
    // Rate limiting on, budget never exhausted: a 2^40 burst with 10^6 pps.
    // Every pass finds the source's bucket and spends a token (atomic add).
    let huge = RateLimit::per_second(1_000_000, 1 << 40);
    let tight = RateLimit::per_second(1, 1);
    let mut no_rate_limit = rule_set(&all_deny, huge);
    no_rate_limit.config.flags = 0;
    let object = xgate_object()?;
    let mut planes = HashMap::new();
    for (prog, rules) in [
        (Prog::Ours, rule_set(&all_deny, huge)),
        (Prog::Limited, rule_set(&all_deny, tight)),
        (Prog::NoRateLimit, no_rate_limit),
        (Prog::NoLists, rule_set(&[], huge)),
    ] {
        let mut plane =
            XdpDataPlane::load(object.1, None).context("loading xgate's XDP program")?;
        plane
            .replace_rules(&rules)
            .with_context(|| format!("loading the rule set for {prog:?}"))?;
        planes.insert(prog, plane);
    }

    let tmp = sys::temp_dir("frames")?;
    let mut frames = HashMap::new();
    let mut frame_files = HashMap::new();
    for frame in Frame::ALL {
        let bytes = frame.bytes();
        let file = tmp.path().join(format!("{frame:?}.bin"));
        std::fs::write(&file, &bytes)?;
        frames.insert(frame, bytes);
        frame_files.insert(frame, file);
    }

    eprintln!("    setting up xdp-filter on a veth pair in a private network and mount namespace");
    let mut peer = XdpFilter::new()?;
    peer.load(PEER_IFACE, PEER_FEATURES)?;
    peer.load(LEAN_IFACE, LEAN_FEATURES)?;
    // Exact addresses for xdp-filter: the first address of each of our
    // prefixes, topped up with random ones; never a passing source.
    let keep_out: Vec<IpAddr> = [PASS_V4, LIMITED_V4, DST_V4]
        .map(IpAddr::V4)
        .into_iter()
        .chain([PASS_V6, DST_V6].map(IpAddr::V6))
        .chain([IpAddr::V4(DENY_V4), IpAddr::V6(DENY_V6)])
        .collect();
    let others_v4 = rules::exact_addresses(&deny_v4, DENY_ENTRIES, &keep_out)?;
    let others_v6 = rules::exact_addresses(&deny_v6, DENY_ENTRIES, &keep_out)?;
    let n4 = peer.deny_sources(IpAddr::V4(DENY_V4), &others_v4, &tmp)?;
    let n6 = peer.deny_sources(IpAddr::V6(DENY_V6), &others_v6, &tmp)?;
    eprintln!("    xdp-filter holds {n4} IPv4 and {n6} IPv6 source addresses");

    let ids = peer
        .loaded
        .iter()
        .map(|l| (Prog::Peer(l.iface), l.id))
        .collect();

    let mut bench = Bench {
        planes,
        peer,
        frames,
        frame_files,
        ids,
        _tmp: tmp,
        repeat,
    };

    // Sanity: a bulk-added address is dropped by xdp-filter like the target.
    if let Some(IpAddr::V4(sample)) = others_v4.first() {
        let frame = udp4_frame(*sample, DST_V4);
        let result = bench.peer.program(PEER_IFACE)?.test_run(TestRunOptions {
            data_in: Some(&frame),
            ..TestRunOptions::default()
        })?;
        ensure!(
            result.return_value == XDP_DROP,
            "xdp-filter did not drop {sample}, an address added to its map in bulk"
        );
    }
    // Empty the rate-limited source's bucket: burst 1, then drops.
    let mut last = XDP_PASS;
    for _ in 0..5 {
        last = bench.aya_run(Prog::Limited, Frame::Limited4, 1)?.0;
    }
    ensure!(
        last == XDP_DROP,
        "the 1 pps / burst 1 source was not rate-limited"
    );

    // One CPU for every measurement (child processes such as bpftool inherit
    // it): per-CPU maps and caches are then the same for every case.
    let cpu = sys::pin_to_last_cpu();
    let mut cases = cases();
    eprintln!(
        "    warming up {} cases, then {rounds} rounds of {repeat} repetitions each",
        cases.len()
    );
    let warm = (bench.repeat / 10).max(1);
    for case in &cases {
        bench
            .measure(case, warm)
            .with_context(|| format!("warm-up of {}", case.id))?;
    }
    let order = schedule(&cases);
    for round in 1..=rounds {
        // Rotate the start each round so no case always runs first or last.
        for k in 0..order.len() {
            let case = &mut cases[order[(k + round - 1) % order.len()]];
            let ns = bench
                .measure(case, repeat)
                .with_context(|| format!("round {round} of {}", case.id))?;
            case.samples.push(ns);
        }
        let show = |id: &str| {
            cases
                .iter()
                .find(|c| c.id == id)
                .and_then(|c| c.samples.0.last().copied())
                .unwrap_or(f64::NAN)
        };
        eprintln!(
            "    round {round}/{rounds}: floor {:.0} ns, pass {:.0}, deny {:.0}, xdp-filter pass {:.0}, drop {:.0}",
            show("floor"),
            show("pass_v4"),
            show("deny_v4"),
            show("xdpf_pass_v4"),
            show("xdpf_drop_v4")
        );
    }
    let buckets = bench
        .plane(Prog::Ours)
        .map(XdpDataPlane::bucket_count)
        .unwrap_or(0);

    let info = RunInfo {
        started,
        object: object.0.clone(),
        cpu,
        repeat,
        rounds,
        buckets,
        mix_v4: rules::length_mix(&deny_v4),
        mix_v6: rules::length_mix(&deny_v6),
        xdp_filter_version: bench.peer.version.clone(),
        xdp_filter_package: package_version("xdp-tools"),
        bpftool: package_version("bpftool"),
        peers: bench
            .peer
            .loaded
            .iter()
            .map(|l| {
                json!({
                    "interface": l.iface,
                    "features": l.features,
                    "program": l.name,
                    "id": l.id,
                    "attach_mode": l.mode,
                })
            })
            .collect(),
        peer_entries: (bench.peer.entries_v4, bench.peer.entries_v6),
    };
    let report = build_report(&cases, &info);
    drop(bench);
    Ok(report)
}

/// xgate's XDP object: the one built into this binary, or the file
/// `$XGATE_BENCH_XDP_OBJECT` names (another build of the program, e.g. the
/// previous commit's, to see whether a change moved its cost: each run
/// measures it against xdp-filter on the same machine). With a description
/// for the report.
/// The program keeps its object for its life (`'static`): a file's bytes are
/// leaked, once per run.
fn xgate_object() -> Result<(String, &'static [u8])> {
    match std::env::var_os("XGATE_BENCH_XDP_OBJECT") {
        Some(path) => {
            let bytes = std::fs::read(&path).with_context(|| {
                format!(
                    "reading $XGATE_BENCH_XDP_OBJECT ({})",
                    Path::new(&path).display()
                )
            })?;
            Ok((
                format!("`{}` ($XGATE_BENCH_XDP_OBJECT)", Path::new(&path).display()),
                Box::leak(bytes.into_boxed_slice()),
            ))
        }
        None => Ok((
            "the workspace's object (built into xgate-bench)".into(),
            XDP_OBJECT,
        )),
    }
}

/// The order cases run in within a round: every compared pair back to back
/// (xgate, then the xdp-filter case it is compared with), so that slow drift
/// in the machine's speed (a busy neighbour, a shared host) hits both sides
/// of a ratio alike; the rest in list order.
fn schedule(cases: &[Case]) -> Vec<usize> {
    let index = |id: &str| cases.iter().position(|c| c.id == id);
    let mut order = Vec::with_capacity(cases.len());
    for (i, case) in cases.iter().enumerate() {
        if !order.contains(&i) {
            order.push(i);
        }
        if let Some(j) = case.versus.and_then(index) {
            if !order.contains(&j) {
                order.push(j);
            }
        }
    }
    order
}

fn package_version(package: &str) -> String {
    sys::run(sys::command(
        "dpkg-query",
        ["-W", "-f", "${Version}", package],
    ))
    .map(|o| o.stdout.trim().to_string())
    .unwrap_or_else(|_| "unknown".into())
}

struct RunInfo {
    started: String,
    /// Where xgate's program came from (see [`xgate_object`]).
    object: String,
    cpu: Option<usize>,
    repeat: u32,
    rounds: usize,
    buckets: usize,
    mix_v4: String,
    mix_v6: String,
    xdp_filter_version: String,
    xdp_filter_package: String,
    bpftool: String,
    peers: Vec<Value>,
    peer_entries: (usize, usize),
}

/// xgate against xdp-filter, one pair of cases.
struct Comparison {
    ours: String,
    peer: String,
    method: &'static str,
    ours_ns: f64,
    peer_ns: f64,
    ratio: f64,
    /// Median of the per-round ratios (each round's two measurements were
    /// taken back to back): less sensitive to drift than the ratio of medians.
    paired: f64,
    /// The largest ratio within the target.
    limit: f64,
    within: bool,
    /// Whether the target is judged on this pair.
    counts: bool,
}

fn paired_ratio(cases: &[Case], ours: &str, peer: &str) -> f64 {
    let samples = |id: &str| {
        cases
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.samples.0.clone())
            .unwrap_or_default()
    };
    let (a, b) = (samples(ours), samples(peer));
    Samples(a.iter().zip(&b).map(|(x, y)| ratio(*x, *y)).collect()).median()
}

fn floor_of(cases: &[Case], method: Method) -> f64 {
    cases
        .iter()
        .find(|c| c.prog == Prog::Floor && c.method == method)
        .map(|c| c.samples.median())
        .unwrap_or(f64::NAN)
}

fn median_of(cases: &[Case], id: &str) -> f64 {
    cases
        .iter()
        .find(|c| c.id == id)
        .map(|c| c.samples.median())
        .unwrap_or(f64::NAN)
}

fn build_report(cases: &[Case], ctx: &RunInfo) -> Report {
    let machine = report::machine();
    let yes_no = |b: bool| if b { "yes" } else { "no" };

    let case_json: Vec<Value> = cases
        .iter()
        .map(|c| {
            let floor = floor_of(cases, c.method);
            let median = c.samples.median();
            json!({
                "id": c.id,
                "case": c.label,
                "program": match c.prog {
                    Prog::Floor => "xgate_pass".to_string(),
                    Prog::Peer(iface) => format!("xdp-filter on {iface}"),
                    _ => "xgate_xdp".to_string(),
                },
                "method": c.method.name(),
                "frame": c.frame.describe(),
                "expected_verdict": if c.verdict == XDP_PASS { "XDP_PASS" } else { "XDP_DROP" },
                "ns_per_packet_median": median,
                "ns_min": c.samples.min(),
                "ns_max": c.samples.max(),
                "ns_rounds": c.samples.0,
                "ratio_to_floor": ratio(median, floor),
                "ns_above_floor": median - floor,
                "versus": c.versus,
                "ratio_to_xdp_filter": c.versus.map(|v| ratio(median, median_of(cases, v))),
            })
        })
        .collect();

    let comparisons: Vec<Comparison> = TARGET_PAIRS
        .iter()
        .map(|&(ours, peer, limit, counts)| {
            let case = cases.iter().find(|c| c.id == ours);
            let label = |id: &str| {
                cases
                    .iter()
                    .find(|c| c.id == id)
                    .map(|c| c.label.to_string())
                    .unwrap_or_default()
            };
            let method = case.map(|c| c.method.name()).unwrap_or("?");
            let (a, b) = (median_of(cases, ours), median_of(cases, peer));
            let r = ratio(a, b);
            let paired = paired_ratio(cases, ours, peer);
            Comparison {
                ours: label(ours),
                peer: label(peer),
                method,
                ours_ns: a,
                peer_ns: b,
                ratio: r,
                paired,
                limit,
                within: r <= limit,
                counts,
            }
        })
        .collect();
    let target_rows: Vec<_> = comparisons.iter().filter(|c| c.counts).collect();
    let target_met = !target_rows.is_empty() && target_rows.iter().all(|c| c.within);

    let json = json!({
        "scenario": "xdp",
        "date": ctx.started,
        "machine": machine,
        "repeat": ctx.repeat,
        "rounds": ctx.rounds,
        "pinned_cpu": ctx.cpu,
        "statistic": "median over rounds of the kernel's average ns per repetition",
        "deny_entries": {
            "xgate_ipv4_cidrs": DENY_ENTRIES,
            "xgate_ipv6_prefixes": DENY_ENTRIES,
            "xgate_ipv4_prefix_lengths": ctx.mix_v4,
            "xgate_ipv6_prefix_lengths": ctx.mix_v6,
            "xdp_filter_ipv4_addresses": ctx.peer_entries.0,
            "xdp_filter_ipv6_addresses": ctx.peer_entries.1,
        },
        "xgate_rate_limit": {
            "pass_cases": "on: 1,000,000 pps, burst 2^40 (never exhausted)",
            "rate_limited_case": "on: 1 pps, burst 1, bucket emptied first",
            "buckets_after_run": ctx.buckets,
        },
        "xdp_filter": {
            "version": ctx.xdp_filter_version,
            "package": ctx.xdp_filter_package,
            "programs": ctx.peers,
            "loaded_with": "xdp-filter load --mode native --features F IFACE (LIBXDP_SKIP_DISPATCHER=1), in a network namespace with a private bpffs",
        },
        "bpftool_package": ctx.bpftool,
        "methods": {
            "aya test_run": "BPF_PROG_TEST_RUN from the harness via aya's TestRun::test_run (xdp-filter's program opened by id)",
            "bpftool prog run": "`bpftool -j prog run id ID data_in FILE repeat N`, same programs",
        },
        "cases": case_json,
        "comparisons": comparisons.iter().map(|c| json!({
            "ours": c.ours, "xdp_filter": c.peer, "method": c.method,
            "ours_ns": c.ours_ns, "xdp_filter_ns": c.peer_ns, "ratio": c.ratio,
            "paired_ratio_median": c.paired,
            "target_ratio": c.limit, "within_target": c.within, "counts_for_target": c.counts,
        })).collect::<Vec<_>>(),
        "target": {
            "text": TARGET_TEXT,
            "ratio": TARGET_RATIO,
            "lean_ratio": LEAN_TARGET_RATIO,
            "met": target_met,
        },
    });

    let mut md = String::new();
    md.push_str("## XDP per-packet cost (`xgate-bench xdp`)\n\n");
    md.push_str(&format!(
        "Run {} on {} cores ({}), kernel `{}`, BPF JIT {}, harness pinned to CPU {}; \
         BPF_PROG_TEST_RUN with repeat {} per measurement, {} rounds interleaved across \
         cases, median reported (min-max over the rounds).\n\n",
        ctx.started,
        machine["cores"],
        machine["cpu"].as_str().unwrap_or("?"),
        machine["kernel"].as_str().unwrap_or("?"),
        machine["bpf_jit_enable"].as_str().unwrap_or("?"),
        ctx.cpu
            .map_or("none (pinning failed)".to_string(), |c| c.to_string()),
        group(u64::from(ctx.repeat)),
        ctx.rounds
    ));
    md.push_str(&format!(
        "**Target ({TARGET_TEXT}): {}.** {}\n\n",
        if target_met { "met" } else { "NOT met" },
        target_rows
            .iter()
            .map(|c| format!("{}: {:.2}x (paired {:.2}x)", c.ours, c.ratio, c.paired))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    md.push_str("| case | method | ns/pkt | min-max | ratio to floor | ratio to xdp-filter |\n");
    md.push_str("|---|---|---:|---:|---:|---:|\n");
    for c in cases {
        let floor = floor_of(cases, c.method);
        let median = c.samples.median();
        let versus = c
            .versus
            .map(|v| format!("{:.2}x", ratio(median, median_of(cases, v))))
            .unwrap_or_else(|| "-".into());
        md.push_str(&format!(
            "| {} | {} | {} | {}-{} | {:.2}x | {} |\n",
            c.label,
            c.method.name(),
            ns(median),
            ns(c.samples.min()),
            ns(c.samples.max()),
            ratio(median, floor),
            versus
        ));
    }
    md.push_str(&format!(
        "\n### xgate against xdp-filter (target: at most {TARGET_RATIO}x default, \
         {LEAN_TARGET_RATIO}x lean)\n\n"
    ));
    md.push_str(
        "\"ratio\" is the ratio of the two medians (what the target is judged on); \
         \"paired\" is the median of the per-round ratios, each round measuring the two \
         cases back to back (a check on drift).\n\n",
    );
    md.push_str("| xgate | xdp-filter | method | xgate ns | xdp-filter ns | ratio | paired | target | within | counts for the target |\n");
    md.push_str("|---|---|---|---:|---:|---:|---:|---:|---|---|\n");
    for c in &comparisons {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.2}x | {:.2}x | {:.1}x | {} | {} |\n",
            c.ours,
            c.peer,
            c.method,
            ns(c.ours_ns),
            ns(c.peer_ns),
            c.ratio,
            c.paired,
            c.limit,
            yes_no(c.within),
            yes_no(c.counts)
        ));
    }
    let entries = group(DENY_ENTRIES as u64);
    md.push_str(&format!(
        "\n### Setup\n\n\
         - xgate: `xgate_xdp` loaded with aya from {}, private unpinned maps. \
         Deny lists: {entries} IPv4 CIDRs ({}) and {entries} IPv6 prefixes ({}) (IPv4 /24 and \
         /32, IPv6 /48, /64 and /128 in hash maps found through the /24 or /48 network, the \
         other lengths in LPM tries); the \
         deny-hit source matches `{DENY_V4_NET}` / `{DENY_V6_NET}`. Rate limiting \
         on in every xgate case but the two \"rate limiting off\" ones: the pass cases have a \
         10^6 pps budget with a 2^40 burst (never exhausted: the source's bucket is looked up \
         and charged on every packet; {} buckets at the end), the rate-limited case a 1 pps / \
         burst 1 budget whose bucket was emptied first. The pass and rate-limited cases repeat \
         one source, so from its second packet on the verdict cache (\"on no list at this \
         rule-set generation\", docs/xdp.md) skips the list lookups, as it does for any \
         legitimate source that keeps sending: for IPv4 with rate limiting on the source's \
         bucket holds it (no entry is longer than the /32 aggregation); for IPv6 (the /128 \
         entries are longer than the /64 aggregation) and with rate limiting off, the \
         per-source cache (one LRU hash lookup by exact address).\n\
         - Diagnostic (not compared with xdp-filter): the IPv4 pass with empty lists (what \
         rate limiting costs), to show where the pass path's time goes.\n\
         - Floor: `xgate_pass` from the same object (returns XDP_PASS): the cost of the test-run \
         loop itself. \"ratio to floor\" divides by the floor measured with the same method.\n\
         - xdp-filter (`{}`; Debian package {}): `xdp-filter load --mode native --features F IFACE` on \
         a veth pair in a network namespace created for the run, with its pins in a private bpffs \
         (a mount namespace of the run's own), libxdp's dispatcher skipped so the measured program \
         is xdp-filter's own. Default features (`{PEER_FEATURES}`, what `xdp-filter load IFACE` \
         loads) and a lean build (`{LEAN_FEATURES}`). Source deny lists: `xdp-filter ip ADDR \
         --mode src` for the target, filled to {} IPv4 and {} IPv6 addresses (the maps' \
         capacity) with `bpftool batch` using the value xdp-filter wrote. xdp-filter matches \
         exact addresses in a hash map; xgate matches CIDRs.\n\
         - Methods: \"aya test_run\" = BPF_PROG_TEST_RUN from the harness (aya `TestRun`; \
         xdp-filter's program opened by id); \"bpftool prog run\" = `bpftool prog run id ID \
         data_in FILE repeat N` (bpftool {}) on the same programs, as a cross-check. Ratios \
         between xgate and xdp-filter are always within one method. Every measurement checks \
         the verdict, and for xgate that exactly the expected counter moved by `repeat`.\n\
         - BPF_PROG_TEST_RUN measures the program on a frame already in memory: no driver, no \
         DMA, no cache misses on packet data. It ranks programs; it does not predict line rate.\n",
        ctx.object,
        ctx.mix_v4,
        ctx.mix_v6,
        ctx.buckets,
        ctx.xdp_filter_version,
        ctx.xdp_filter_package,
        group(ctx.peer_entries.0 as u64),
        group(ctx.peer_entries.1 as u64),
        ctx.bpftool,
    ));

    Report {
        scenario: "xdp",
        json,
        markdown: md,
    }
}

fn ns(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// `1000000` as `1,000,000`.
fn group(mut n: u64) -> String {
    let mut parts = Vec::new();
    while n >= 1_000 {
        parts.push(format!("{:03}", n % 1_000));
        n /= 1_000;
    }
    parts.push(n.to_string());
    parts.reverse();
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_comparison_and_versus_names_a_case() {
        let cases = cases();
        let known = |id: &str| cases.iter().any(|c| c.id == id);
        for (a, b, _, _) in TARGET_PAIRS {
            assert!(known(a) && known(b), "{a} / {b}");
        }
        for c in &cases {
            if let Some(v) = c.versus {
                assert!(known(v), "{v}");
            }
        }
        assert_eq!(group(1_000_000), "1,000,000");
        assert_eq!(group(999), "999");
        assert_eq!(group(1_000), "1,000");
    }
}
