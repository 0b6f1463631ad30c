//! Scenario `proxy`: xgate as a plain reverse proxy against nginx, HAProxy
//! and Envoy, all in front of the same upstream (bench/src/upstream.rs),
//! loaded by the same generator with the same connections and duration.
//!
//! 1. HTTP/1.1 keep-alive (wrk), 64-byte and 64 KiB responses; the
//!    upstream alone ("direct") as the ceiling.
//! 2. HTTP/2 over TLS downstream (h2load, ALPN h2 only), same two sizes;
//!    HTTP/1.1 to the upstream.
//!
//! Every proxy runs at once, each with its own config (bench/peers/) and
//! temp dir, and the rounds are interleaved (round 1 of every case, then
//! round 2, ...; within each table in a Williams design, so every proxy
//! runs equally often in every position and right after every other one)
//! so that drift lands on all of them alike. Each measured run comes right
//! after an unmeasured warm-up run of the same case, so that no run pays
//! for what the case before it left behind. Per run the proxy's CPU time
//! (utime+stime of it and its children, /proc/PID/stat) and peak RSS
//! (VmHWM, reset before the run) are taken; medians over the rounds are
//! reported (peak RSS: the largest).
//!
//! The target, judged on the HTTP/1.1 rows: xgate's req/s at least 1.0x the
//! faster of nginx and HAProxy, with a p99 no worse than that peer's.

use std::{net::SocketAddr, path::Path};

use anyhow::Result;
use serde_json::{json, Value};

use crate::{
    keys::{self, TlsFiles},
    load::{H2load, LoadResult, Shape, TlsInfo, Wrk},
    peers::{self, Binary, Instance, Kind, Template},
    report::{self, Report},
    stats::{ratio, Samples},
    sys::{self, Spawned},
    upstream, Settings,
};

/// Ten: one whole period of the Williams design for the HTTP/1.1 tables'
/// five cases (four proxies and the bare upstream), so that each runs right
/// after every other twice.
pub const DEFAULT_ROUNDS: usize = 10;
pub const DEFAULT_DURATION_S: u64 = 3;
/// Length of the unmeasured run of a case right before each measured one.
pub const WARM_UP_S: u64 = 1;
/// The target: xgate's req/s over the faster of nginx and HAProxy.
const TARGET_RPS_RATIO: f64 = 1.0;

/// HTTP/1.1 load: 2 wrk threads, 64 keep-alive connections.
pub const H1_THREADS: u32 = 2;
pub const H1_CONNECTIONS: u32 = 64;
/// HTTP/2 load: 2 h2load threads, 16 connections x 4 streams (64 requests
/// in flight, as with HTTP/1.1).
pub const H2_THREADS: u32 = 2;
pub const H2_CONNECTIONS: u32 = 16;
pub const H2_STREAMS: u32 = 4;

/// The proxies, in table order.
pub const PROXIES: [Kind; 4] = [Kind::Xgate, Kind::Nginx, Kind::Haproxy, Kind::Envoy];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

/// One measurement of one case.
#[derive(Debug, Clone)]
pub struct Sample {
    pub load: LoadResult,
    /// The measured server's CPU seconds per 100k requests (none for the
    /// upstream measured directly: see `upstream_cpu_per_100k`).
    pub cpu_per_100k: Option<f64>,
    pub upstream_cpu_per_100k: f64,
    pub peak_rss_kib: Option<u64>,
    /// User CPU used during the run by processes that are not part of the
    /// benchmark (not the proxy, the upstream or the load generator), in
    /// cores: a measure of how disturbed the run was.
    pub other_user_cores: f64,
}

/// Something measured in several rounds: a proxy (or the bare upstream) on
/// one kind of request.
#[derive(Debug, Clone)]
pub struct Case {
    /// Which table: e.g. `h1_small`.
    pub group: &'static str,
    /// `xgate`, `nginx`, ..., `direct`.
    pub target: String,
    pub label: String,
    pub proto: Proto,
    pub url: String,
    pub headers: Vec<String>,
    /// Smallest acceptable response (the body size).
    pub min_bytes: usize,
    /// Index of the measured server in [`Fleet::servers`]; None: the
    /// upstream itself.
    pub server: Option<usize>,
    /// The load's threads and connections when not the protocol's default
    /// (`xgate-bench shapes`).
    pub load: Option<(u32, u32)>,
    /// The CPU the load generator is pinned to, if any.
    pub load_cpu: Option<usize>,
    /// Why the case is not measured (tool or peer missing, feature absent).
    pub unavailable: Option<String>,
    /// Why a run failed; the case is not compared then.
    pub failed: Option<String>,
    pub samples: Vec<Sample>,
}

impl Case {
    pub fn new(group: &'static str, target: &str, label: &str, proto: Proto) -> Self {
        Self {
            group,
            target: target.to_string(),
            label: label.to_string(),
            proto,
            url: String::new(),
            headers: Vec::new(),
            min_bytes: 0,
            server: None,
            load: None,
            load_cpu: None,
            unavailable: None,
            failed: None,
            samples: Vec::new(),
        }
    }

    fn active(&self) -> bool {
        self.unavailable.is_none() && self.failed.is_none()
    }

    /// Whether the case has numbers to compare.
    pub fn ok(&self) -> bool {
        self.active() && !self.samples.is_empty()
    }

    fn series(&self, f: impl Fn(&Sample) -> f64) -> Samples {
        Samples(self.samples.iter().map(f).collect())
    }

    pub fn rps(&self) -> Samples {
        self.series(|s| s.load.rps)
    }

    pub fn p50_ms(&self) -> f64 {
        self.series(|s| s.load.p50_us).median() / 1e3
    }

    pub fn p99_ms(&self) -> f64 {
        self.series(|s| s.load.p99_us).median() / 1e3
    }

    pub fn cpu_per_100k(&self) -> Option<f64> {
        let v: Vec<f64> = self.samples.iter().filter_map(|s| s.cpu_per_100k).collect();
        (!v.is_empty()).then(|| Samples(v).median())
    }

    pub fn peak_rss_mib(&self) -> Option<f64> {
        self.samples
            .iter()
            .filter_map(|s| s.peak_rss_kib)
            .max()
            .map(|k| k as f64 / 1024.0)
    }

    pub fn tls(&self) -> Option<&TlsInfo> {
        self.samples.iter().find_map(|s| s.load.tls.as_ref())
    }

    /// Medians and every round, for results.json.
    pub fn json(&self) -> Value {
        json!({
            "group": self.group,
            "target": self.target,
            "label": self.label,
            "url": self.url,
            "unavailable": self.unavailable,
            "failed": self.failed,
            "rps_median": finite(self.rps().median()),
            "rps_min": finite(self.rps().min()),
            "rps_max": finite(self.rps().max()),
            "p50_ms_median": finite(self.p50_ms()),
            "p99_ms_median": finite(self.p99_ms()),
            "cpu_s_per_100k_requests_median": self.cpu_per_100k(),
            "peak_rss_mib_max": self.peak_rss_mib(),
            "tls": self.tls().map(|t| json!({"protocol": t.protocol, "cipher": t.cipher, "alpn": t.alpn})),
            "rounds": self.samples.iter().map(|s| json!({
                "requests": s.load.requests,
                "seconds": s.load.seconds,
                "rps": s.load.rps,
                "p50_us": s.load.p50_us,
                "p99_us": s.load.p99_us,
                "max_us": s.load.max_us,
                "bytes_per_response": s.load.bytes_per_request,
                "cpu_s_per_100k_requests": s.cpu_per_100k,
                "upstream_cpu_s_per_100k_requests": s.upstream_cpu_per_100k,
                "peak_rss_kib": s.peak_rss_kib,
                "other_processes_user_cpu_cores": finite(s.other_user_cores),
            })).collect::<Vec<_>>(),
        })
    }
}

/// How much other work ran on the machine during the runs: a sentence for
/// the report and the numbers for results.json.
pub fn disturbance(cases: &[Case]) -> (String, Value) {
    let all: Vec<f64> = cases
        .iter()
        .flat_map(|c| c.samples.iter().map(|s| s.other_user_cores))
        .filter(|v| v.is_finite())
        .collect();
    if all.is_empty() {
        return (String::new(), Value::Null);
    }
    let samples = Samples(all);
    let (median, max) = (samples.median(), samples.max());
    let mut text = format!(
        "Other processes on the machine (not the proxy, the upstream or the load generator) used \
         a median of {median:.2} cores of user CPU during the runs (max {max:.2})."
    );
    if median > 0.1 {
        text.push_str(
            " **The machine was not idle: these numbers are disturbed. Compare the ratios within this run (the rounds are interleaved, so the disturbance lands on every proxy alike), not absolute req/s across runs.**",
        );
    }
    (
        text,
        json!({"median_cores": median, "max_cores": max, "what": "user CPU of processes outside the benchmark, per run"}),
    )
}

/// A number for JSON: NaN becomes null.
pub fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// The processes a scenario measures: the upstream and the proxies.
pub struct Fleet {
    pub upstream: Spawned,
    pub servers: Vec<Instance>,
}

/// The load generators of a run.
pub struct Tools {
    pub wrk: Wrk,
    pub h2load: std::result::Result<H2load, String>,
}

impl Tools {
    pub fn new(dir: &Path) -> Result<Self> {
        Ok(Self {
            wrk: Wrk::new(dir)?,
            h2load: H2load::new(dir).map_err(|e| format!("{e:#}")),
        })
    }
}

fn ticks_to_seconds(ticks: u64) -> f64 {
    ticks as f64 / sys::clock_ticks()
}

/// A failed run's error with what may say why: how many connections the
/// kernel dropped at a full accept queue during it (the proxy's or the
/// origin's), and what the proxy logged since `log_mark`, by kind.
fn explain_failure(
    error: anyhow::Error,
    fleet: &Fleet,
    case: &Case,
    server: Option<usize>,
    log_mark: Option<u64>,
    overflows_before: Option<u64>,
) -> anyhow::Error {
    let mut why = Vec::new();
    if let Some((before, after)) = overflows_before.zip(sys::listen_overflows()) {
        why.push(format!(
            "connections dropped at a full accept queue meanwhile: {}",
            after.saturating_sub(before)
        ));
    }
    if let Some((i, mark)) = server.zip(log_mark) {
        let logged = fleet.servers[i].process.log_summary(mark, 3);
        if !logged.is_empty() {
            why.push(format!("{} logged: {logged}", case.label));
        }
    }
    match why.is_empty() {
        true => error,
        false => error.context(why.join("; ")),
    }
}

/// One timed load run on `case`, with the server's CPU time and peak RSS
/// taken around it, the result checked (all 2xx, full bodies, no errors).
pub fn measure(fleet: &mut Fleet, tools: &Tools, case: &Case, seconds: u64) -> Result<Sample> {
    sys::check_interrupted()?;
    fleet.upstream.check_running()?;
    let server = match case.server {
        Some(i) => {
            let s = &mut fleet.servers[i].process;
            s.check_running()?;
            s.reset_peak_rss();
            Some(i)
        }
        None => None,
    };
    let cpu = |fleet: &Fleet| server.map(|i| fleet.servers[i].process.cpu_ticks());
    // For a failed run (see `explain_failure`).
    let log_mark = server.map(|i| fleet.servers[i].process.log_len());
    let overflows_before = sys::listen_overflows();
    // User time of everything that belongs to the benchmark, against the
    // machine's: the rest is other work disturbing the run.
    let ours_user = |fleet: &Fleet| {
        ticks_to_seconds(
            server.map_or(0, |i| fleet.servers[i].process.user_ticks())
                + fleet.upstream.user_ticks(),
        ) + sys::children_user_seconds()
    };
    let machine_user = || sys::machine_user_ticks().map(ticks_to_seconds);
    let started = std::time::Instant::now();
    let (machine_before, ours_before) = (machine_user(), ours_user(fleet));
    let cpu_before = cpu(fleet);
    let upstream_before = fleet.upstream.cpu_ticks();
    if let Some(cpu) = case.load_cpu {
        anyhow::ensure!(
            sys::pin_to(cpu),
            "cannot pin the load generator to CPU {cpu}"
        );
    }
    let load = run_load(tools, case, seconds);
    if case.load_cpu.is_some() {
        sys::unpin();
    }
    let load = load?;
    let cpu_after = cpu(fleet);
    let upstream_after = fleet.upstream.cpu_ticks();
    let (machine_after, ours_after) = (machine_user(), ours_user(fleet));
    let other_user_cores = machine_before
        .zip(machine_after)
        .map(|(b, a)| {
            ((a - b) - (ours_after - ours_before)).max(0.0) / started.elapsed().as_secs_f64()
        })
        .unwrap_or(f64::NAN);
    let peak_rss_kib = server.map(|i| fleet.servers[i].process.peak_rss_kib());
    if let Some(i) = server {
        fleet.servers[i].process.check_running()?;
    }
    load.check(case.min_bytes)
        .map_err(|e| explain_failure(e, fleet, case, server, log_mark, overflows_before))?;
    let per_100k = |ticks: u64| ticks_to_seconds(ticks) / load.requests as f64 * 100_000.0;
    Ok(Sample {
        cpu_per_100k: cpu_before
            .zip(cpu_after)
            .map(|(b, a)| per_100k(a.saturating_sub(b))),
        upstream_cpu_per_100k: per_100k(upstream_after.saturating_sub(upstream_before)),
        peak_rss_kib,
        other_user_cores,
        load,
    })
}

/// The load generator's run for `case`: its protocol's default shape, or
/// the case's own threads and connections.
fn run_load(tools: &Tools, case: &Case, seconds: u64) -> Result<LoadResult> {
    match case.proto {
        Proto::H1 => {
            let (threads, connections) = case.load.unwrap_or((H1_THREADS, H1_CONNECTIONS));
            let shape = Shape {
                threads,
                connections,
                streams: 1,
                seconds,
            };
            tools.wrk.run(&case.url, shape, &case.headers)
        }
        Proto::H2 => {
            let shape = Shape {
                threads: H2_THREADS,
                connections: H2_CONNECTIONS,
                streams: H2_STREAMS,
                seconds,
            };
            let h2load = tools.h2load.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
            h2load.run(&case.url, shape, &case.headers)
        }
    }
}

/// Runs `rounds` interleaved rounds (see [`round_order`]). Each measured run
/// comes right after an unmeasured [`WARM_UP_S`] run of the same case: the
/// load of the case before (the bare upstream at full speed, above all)
/// leaves the machine in a state that lasts about a second and costs the
/// next case's tail latency (in a paired test, p99 4.4-4.5 ms right after
/// the upstream against 3.1-3.9 ms right after another proxy). A case whose
/// run fails is marked failed and skipped from then on; a signal stops
/// everything.
pub fn run_rounds(
    fleet: &mut Fleet,
    tools: &Tools,
    cases: &mut [Case],
    rounds: usize,
    seconds: u64,
) -> Result<()> {
    let active = cases.iter().filter(|c| c.active()).count();
    eprintln!(
        "    {rounds} rounds of {seconds} s per case, each after a {WARM_UP_S} s warm-up run, \
         {active} cases (about {} s)",
        active as u64 * rounds as u64 * (WARM_UP_S + seconds)
    );
    for round in 0..rounds {
        let groups: Vec<&str> = cases.iter().map(|c| c.group).collect();
        for index in round_order(&groups, round) {
            let case = &mut cases[index];
            if !case.active() {
                continue;
            }
            let measured = measure(fleet, tools, case, WARM_UP_S)
                .map_err(|e| e.context("warm-up run"))
                .and_then(|_| measure(fleet, tools, case, seconds));
            match measured {
                Ok(sample) => {
                    eprintln!(
                        "    round {}/{rounds} {:<9} {:<28} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  cpu {}",
                        round + 1,
                        case.group,
                        case.label,
                        sample.load.rps,
                        sample.load.p50_us / 1e3,
                        sample.load.p99_us / 1e3,
                        sample
                            .cpu_per_100k
                            .map(|c| format!("{c:.2} s/100k"))
                            .unwrap_or_else(|| "-".into())
                    );
                    case.samples.push(sample);
                }
                Err(e) => {
                    sys::check_interrupted()?;
                    eprintln!(
                        "    round {}/{rounds} {} / {}: FAILED: {e:#}",
                        round + 1,
                        case.group,
                        case.label
                    );
                    case.failed = Some(format!("round {}: {e:#}", round + 1));
                }
            }
        }
    }
    Ok(())
}

/// How the rounds are run, for the reports: rounds, warm-up, order.
pub fn schedule_text(rounds: usize, seconds: u64) -> String {
    format!(
        "{rounds} round(s) of {seconds} s per case, each run right after an unmeasured \
         {WARM_UP_S} s run of the same case (so that no run inherits what the load before it \
         left behind), interleaved: round 1 of every case, then round 2, ...; within each table \
         the order is a Williams design (over as many rounds as the table has cases, twice that \
         if odd, every case runs once in every position and right after every other case \
         equally often)"
    )
}

/// The order of the cases in round `round`: group after group (a group is
/// one table: one load shape), and within a group a row of a Williams
/// design, balanced for position and for carry-over. For `n` cases, row
/// `r` is `r, r+1, r-1, r+2, r-2, ...` (mod `n`). For even `n` the `n` rows
/// are balanced: every case runs once in every position and right after
/// every other case once. For odd `n` rows `n..2n` are the first `n`
/// reversed, and the `2n` rows put every case right after every other
/// twice. (A plain rotation keeps the cyclic order: a proxy would follow
/// the same neighbour, e.g. the bare upstream's run at full speed, in all
/// but one round.)
/// `groups`: each case's group, in table order.
fn round_order(groups: &[&str], round: usize) -> Vec<usize> {
    let mut order = Vec::with_capacity(groups.len());
    let mut start = 0;
    while start < groups.len() {
        let group = groups[start];
        let len = groups[start..].iter().take_while(|g| **g == group).count();
        order.extend(williams_row(len, round).into_iter().map(|k| start + k));
        start += len;
    }
    order
}

/// Row `round` of a Williams design for `n` treatments (see
/// [`round_order`]), repeating after `n` rows (even `n`) or `2n` (odd).
fn williams_row(n: usize, round: usize) -> Vec<usize> {
    let period = if n.is_multiple_of(2) { n } else { 2 * n };
    let r = round % period.max(1);
    let shift = r % n.max(1);
    let mut row: Vec<usize> = (0..n)
        .map(|k| {
            // 0, 1, n-1, 2, n-2, ...
            let base = if k % 2 == 1 {
                k.div_ceil(2)
            } else {
                (n - k / 2) % n
            };
            (base + shift) % n
        })
        .collect();
    if r >= n {
        row.reverse();
    }
    row
}

/// A proxy as the run found it: started, or why not.
pub struct Peer {
    pub kind: Kind,
    pub binary: Option<Binary>,
    /// Index in [`Fleet::servers`].
    pub server: Option<usize>,
    pub unavailable: Option<String>,
    pub plain_port: u16,
    /// The TLS (h2) port, or why there is none.
    pub tls: std::result::Result<u16, String>,
    pub tls_info: Option<TlsInfo>,
}

fn proxy_template(kind: Kind) -> Template {
    match kind {
        Kind::Xgate => peers::XGATE_PROXY,
        Kind::Nginx => peers::NGINX_PROXY,
        Kind::Haproxy => peers::HAPROXY_PROXY,
        Kind::Envoy => peers::ENVOY_PROXY,
    }
}

/// Starts `kind` for the proxy scenario: with its TLS listener if it can
/// (else without it, the reason kept), checked on both response sizes.
fn start_peer(
    kind: Kind,
    dir: &Path,
    fleet: &mut Fleet,
    upstream_port: u16,
    tls: &std::result::Result<TlsFiles, String>,
    h2load: &std::result::Result<H2load, String>,
) -> Peer {
    let mut peer = Peer {
        kind,
        binary: None,
        server: None,
        unavailable: None,
        plain_port: 0,
        tls: Err(String::new()),
        tls_info: None,
    };
    let binary = match peers::find(kind) {
        Ok(b) => b,
        Err(e) => {
            peer.unavailable = Some(format!("{e:#}"));
            return peer;
        }
    };
    let ports = (
        xgate_tests::ports::free_tcp_port(),
        xgate_tests::ports::free_tcp_port(),
    );
    let (Ok(plain), Ok(tls_port)) = ports else {
        peer.unavailable = Some("no free port".into());
        return peer;
    };
    let mut vars = vec![
        ("LISTEN_PORT", plain.to_string()),
        ("TLS_PORT", tls_port.to_string()),
        ("UPSTREAM_PORT", upstream_port.to_string()),
    ];
    if let Ok(files) = tls {
        vars.push(("CERT", files.cert.display().to_string()));
        vars.push(("KEY", files.key.display().to_string()));
        vars.push(("TLS_BUNDLE", files.bundle.display().to_string()));
    }
    let dir = dir.join(kind.id());
    let template = proxy_template(kind);
    let start = |with_tls: bool| {
        peers::start(kind, &binary, template, &dir, &vars, with_tls, plain)
            .and_then(|instance| check_sizes(plain).map(|()| instance))
    };
    let with_tls = match (tls, h2load) {
        (Err(e), _) => Err(format!("no TLS certificate: {e}")),
        (_, Err(e)) => Err(e.clone()),
        (Ok(_), Ok(_)) => Ok(()),
    };
    let instance = match with_tls {
        Ok(()) => match start(true) {
            Ok(instance) => {
                peer.tls = Ok(tls_port);
                instance
            }
            Err(e) => {
                let reason = format!("did not start with its TLS listener: {e:#}");
                eprintln!(
                    "    {} {reason}\n    starting {} without TLS",
                    kind.name(),
                    kind.name()
                );
                peer.tls = Err(reason);
                match start(false) {
                    Ok(instance) => instance,
                    Err(e) => {
                        peer.unavailable = Some(format!("did not start: {e:#}"));
                        return peer;
                    }
                }
            }
        },
        Err(reason) => {
            peer.tls = Err(reason);
            match start(false) {
                Ok(instance) => instance,
                Err(e) => {
                    peer.unavailable = Some(format!("did not start: {e:#}"));
                    return peer;
                }
            }
        }
    };
    if let (Ok(port), Ok(h2load)) = (&peer.tls, h2load) {
        let url = format!("https://127.0.0.1:{port}{}", upstream::SMALL_PATH);
        match h2load.probe(&url, &[]) {
            Ok(info) => peer.tls_info = Some(info),
            Err(e) => peer.tls = Err(format!("HTTP/2 over TLS does not work: {e:#}")),
        }
    }
    peer.plain_port = plain;
    peer.binary = Some(binary);
    fleet.servers.push(instance);
    peer.server = Some(fleet.servers.len() - 1);
    peer
}

/// `peer`'s case in the table `group`: `path` over `proto`, a `body`-byte
/// response.
fn peer_case(peer: &Peer, group: &'static str, proto: Proto, path: &str, body: usize) -> Case {
    let label = match &peer.binary {
        Some(b) => format!("{} {}", peer.kind.name(), b.version),
        None => peer.kind.name().to_string(),
    };
    let mut case = Case::new(group, peer.kind.id(), &label, proto);
    case.min_bytes = body;
    case.server = peer.server;
    case.unavailable = peer.unavailable.clone();
    match proto {
        Proto::H1 => case.url = format!("http://127.0.0.1:{}{path}", peer.plain_port),
        Proto::H2 => match &peer.tls {
            Ok(port) => case.url = format!("https://127.0.0.1:{port}{path}"),
            Err(why) => {
                case.unavailable.get_or_insert_with(|| why.clone());
            }
        },
    }
    case
}

/// Both bodies come through whole before any load is put on a proxy.
fn check_sizes(port: u16) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let r = peers::http_get(addr, upstream::LARGE_PATH, &[])?;
    if r.status != 200 || r.body.len() != upstream::LARGE_LEN {
        anyhow::bail!(
            "GET {} answered {} with {} bytes, expected 200 with {}",
            upstream::LARGE_PATH,
            r.status,
            r.body.len(),
            upstream::LARGE_LEN
        );
    }
    Ok(())
}

/// The groups of the scenario: (id, protocol, path, body size, title).
const GROUPS: [(&str, Proto, &str, usize, &str); 4] = [
    (
        "h1_small",
        Proto::H1,
        upstream::SMALL_PATH,
        upstream::SMALL_BODY.len(),
        "HTTP/1.1 keep-alive, 64-byte responses",
    ),
    (
        "h1_large",
        Proto::H1,
        upstream::LARGE_PATH,
        upstream::LARGE_LEN,
        "HTTP/1.1 keep-alive, 64 KiB responses",
    ),
    (
        "h2_small",
        Proto::H2,
        upstream::SMALL_PATH,
        upstream::SMALL_BODY.len(),
        "HTTP/2 over TLS, 64-byte responses",
    ),
    (
        "h2_large",
        Proto::H2,
        upstream::LARGE_PATH,
        upstream::LARGE_LEN,
        "HTTP/2 over TLS, 64 KiB responses",
    ),
];

pub fn run(settings: &Settings) -> Result<Report> {
    // The xdp scenario pins the harness to one CPU; the proxies must not
    // inherit that.
    sys::unpin();
    let rounds = settings.rounds_or(DEFAULT_ROUNDS);
    let seconds = settings.duration_or(DEFAULT_DURATION_S);
    let started = report::utc_now();
    let tmp = sys::temp_dir("proxy")?;
    let tools = Tools::new(tmp.path())?;
    if let Err(e) = &tools.h2load {
        eprintln!("\n******** h2load is missing: the HTTP/2 rows are unavailable: {e} ********\n");
    }
    let tls = keys::tls_certificate(tmp.path()).map_err(|e| format!("{e:#}"));

    eprintln!("    starting the bench upstream");
    let (upstream_process, upstream_port) = peers::start_upstream(tmp.path())?;
    let mut fleet = Fleet {
        upstream: upstream_process,
        servers: Vec::new(),
    };
    let mut peers_found = Vec::new();
    for kind in PROXIES {
        eprintln!("    starting {}", kind.name());
        let peer = start_peer(
            kind,
            tmp.path(),
            &mut fleet,
            upstream_port,
            &tls,
            &tools.h2load,
        );
        if let Some(why) = &peer.unavailable {
            eprintln!(
                "\n******** {} is NOT AVAILABLE; its rows say why: {why} ********\n",
                kind.name()
            );
        } else if let Err(why) = &peer.tls {
            eprintln!(
                "\n******** {}: no HTTP/2 over TLS; its h2 rows say why: {why} ********\n",
                kind.name()
            );
        }
        peers_found.push(peer);
    }

    let mut cases = Vec::new();
    for (group, proto, path, body, _) in GROUPS {
        if proto == Proto::H1 {
            let mut direct = Case::new(group, "direct", "upstream alone (no proxy)", proto);
            direct.url = format!("http://127.0.0.1:{upstream_port}{path}");
            direct.min_bytes = body;
            cases.push(direct);
        }
        for peer in &peers_found {
            cases.push(peer_case(peer, group, proto, path, body));
        }
    }

    run_rounds(&mut fleet, &tools, &mut cases, rounds, seconds)?;
    let versions: Vec<Value> = peers_found
        .iter()
        .map(|p| {
            json!({
                "proxy": p.kind.id(),
                "version": p.binary.as_ref().map(|b| b.full_version.clone()),
                "binary": p.binary.as_ref().map(|b| b.path.display().to_string()),
                "unavailable": p.unavailable,
                "http2_tls": match &p.tls { Ok(_) => Value::Null, Err(e) => json!(e) },
                "tls_negotiated": p.tls_info.as_ref().map(|t| json!({"protocol": t.protocol, "cipher": t.cipher, "alpn": t.alpn})),
            })
        })
        .collect();
    let info = RunInfo {
        started,
        rounds,
        seconds,
        wrk: tools.wrk.version.clone(),
        h2load: tools
            .h2load
            .as_ref()
            .map(|h| h.version.clone())
            .map_err(Clone::clone),
        tls: tls
            .as_ref()
            .map(|t| t.description.clone())
            .map_err(Clone::clone),
        versions,
        peers: &peers_found,
    };
    drop(fleet);
    Ok(build_report(&cases, &info))
}

/// `xgate-bench pgo-train`: not a scenario, the training run of a
/// profile-guided build (`cargo xtask dist`). It starts the xgate binary the
/// harness is given (`XGATE_BENCH_XGATE`, built with `-Cprofile-generate`)
/// as the proxy scenario does, puts each of the scenario's four loads on it
/// once for `seconds` (HTTP/1.1 and HTTP/2 over TLS, 64-byte and 64 KiB
/// responses), then HTTP/1.1 uploads of 16 KiB, every response checked,
/// and stops it with SIGTERM, so that it writes its profile as it exits.
/// Nothing is reported.
pub fn train(seconds: u64) -> Result<()> {
    sys::unpin();
    let tmp = sys::temp_dir("pgo-train")?;
    let tools = Tools::new(tmp.path())?;
    let tls = keys::tls_certificate(tmp.path()).map_err(|e| format!("{e:#}"));
    let (upstream_process, upstream_port) = peers::start_upstream(tmp.path())?;
    let mut fleet = Fleet {
        upstream: upstream_process,
        servers: Vec::new(),
    };
    let peer = start_peer(
        Kind::Xgate,
        tmp.path(),
        &mut fleet,
        upstream_port,
        &tls,
        &tools.h2load,
    );
    for (group, proto, path, body, title) in GROUPS {
        let case = peer_case(&peer, group, proto, path, body);
        // A load left out would leave its code without a profile, compiled
        // as cold: training stops instead.
        if let Some(why) = &case.unavailable {
            anyhow::bail!("cannot train on {title}: {why}");
        }
        let sample = measure(&mut fleet, &tools, &case, seconds)?;
        eprintln!("    trained on {title}: {:.0} req/s", sample.load.rps);
    }
    // Uploads: the request-body path, which none of the loads above takes.
    let url = format!(
        "http://127.0.0.1:{}{}",
        peer.plain_port,
        upstream::SMALL_PATH
    );
    let shape = Shape {
        threads: H1_THREADS,
        connections: H1_CONNECTIONS,
        streams: 1,
        seconds,
    };
    let load = tools.wrk.run_upload(&url, shape, TRAINING_UPLOAD_BYTES)?;
    load.check(upstream::SMALL_BODY.len())?;
    eprintln!(
        "    trained on HTTP/1.1 keep-alive, {} KiB uploads: {:.0} req/s",
        TRAINING_UPLOAD_BYTES / 1024,
        load.rps
    );
    drop(fleet);
    Ok(())
}

/// The request body of the training's uploads.
const TRAINING_UPLOAD_BYTES: usize = 16 * 1024;

struct RunInfo<'a> {
    started: String,
    rounds: usize,
    seconds: u64,
    wrk: String,
    h2load: std::result::Result<String, String>,
    tls: std::result::Result<String, String>,
    versions: Vec<Value>,
    peers: &'a [Peer],
}

/// The faster of nginx and HAProxy in `group` (by median req/s).
pub fn reference<'a>(cases: &'a [Case], group: &str) -> Option<&'a Case> {
    cases
        .iter()
        .filter(|c| c.group == group && (c.target == "nginx" || c.target == "haproxy") && c.ok())
        .max_by(|a, b| a.rps().median().total_cmp(&b.rps().median()))
}

/// The target on one HTTP/1.1 group: Some(met) or None when it cannot be
/// judged, with the reason or the numbers.
fn judge(cases: &[Case], group: &str) -> (Option<bool>, String) {
    let Some(ours) = cases
        .iter()
        .find(|c| c.group == group && c.target == "xgate")
    else {
        return (None, "no xgate row".into());
    };
    if let Some(why) = ours.unavailable.as_ref().or(ours.failed.as_ref()) {
        return (None, format!("xgate not measured: {why}"));
    }
    let Some(peer) = reference(cases, group) else {
        return (
            None,
            "neither nginx nor HAProxy was measured, nothing to compare with".into(),
        );
    };
    let rps = ratio(ours.rps().median(), peer.rps().median());
    let p99 = ratio(ours.p99_ms(), peer.p99_ms());
    let met = rps >= TARGET_RPS_RATIO && ours.p99_ms() <= peer.p99_ms();
    (
        Some(met),
        format!(
            "{:.2}x {}'s req/s, p99 {:.2} ms vs {:.2} ms ({:.2}x)",
            rps,
            peer.label,
            ours.p99_ms(),
            peer.p99_ms(),
            p99
        ),
    )
}

fn ms(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        "-".into()
    }
}

fn times(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}x")
    } else {
        "-".into()
    }
}

/// One Markdown table of a group: every case with its medians and its ratio
/// to the faster of nginx and HAProxy. `target` says whether the target is
/// judged on this table.
pub fn table(cases: &[Case], group: &str, target: bool) -> String {
    let reference = reference(cases, group);
    let mut md = String::from(
        "| proxy | req/s (median) | min-max | p50 ms | p99 ms | CPU s / 100k req | peak RSS MiB \
         | req/s vs ref | p99 vs ref | target |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    let mut notes = Vec::new();
    for case in cases.iter().filter(|c| c.group == group) {
        let is_ref = reference.is_some_and(|r| std::ptr::eq(r, case));
        let name = if is_ref {
            format!("{} (ref)", case.label)
        } else {
            case.label.clone()
        };
        if let Some(why) = &case.unavailable {
            let verdict = if target && case.target == "xgate" {
                "not judged"
            } else {
                "-"
            };
            md.push_str(&format!(
                "| {name} | not available | | | | | | | | {verdict} |\n"
            ));
            notes.push(format!("{}: not available: {}", case.label, one_line(why)));
            continue;
        }
        if let Some(why) = &case.failed {
            let verdict = if target && case.target == "xgate" {
                "NOT met (failed)"
            } else {
                "-"
            };
            md.push_str(&format!("| {name} | failed | | | | | | | | {verdict} |\n"));
            notes.push(format!("{}: failed: {}", case.label, one_line(why)));
            continue;
        }
        let rps = case.rps();
        let (vs_rps, vs_p99) = match reference {
            Some(r) if case.target != "direct" => (
                times(ratio(rps.median(), r.rps().median())),
                times(ratio(case.p99_ms(), r.p99_ms())),
            ),
            _ => ("-".into(), "-".into()),
        };
        let verdict = if target && case.target == "xgate" {
            match judge(cases, group).0 {
                Some(true) => "met".to_string(),
                Some(false) => "**NOT met**".to_string(),
                None => "not judged".to_string(),
            }
        } else {
            "-".into()
        };
        md.push_str(&format!(
            "| {name} | {:.0} | {:.0}-{:.0} | {} | {} | {} | {} | {vs_rps} | {vs_p99} | {verdict} |\n",
            rps.median(),
            rps.min(),
            rps.max(),
            ms(case.p50_ms()),
            ms(case.p99_ms()),
            case.cpu_per_100k()
                .map(|c| format!("{c:.2}"))
                .unwrap_or_else(|| "-".into()),
            case.peak_rss_mib()
                .map(|m| format!("{m:.1}"))
                .unwrap_or_else(|| "-".into()),
        ));
    }
    if !notes.is_empty() {
        md.push('\n');
        for note in notes {
            md.push_str(&format!("- {note}\n"));
        }
    }
    md
}

/// A reason on one line, cut to a readable length, for a table note.
pub fn one_line(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() > 400 {
        let cut: String = joined.chars().take(400).collect();
        format!("{cut}... (full text in results.json)")
    } else {
        joined
    }
}

fn build_report(cases: &[Case], info: &RunInfo) -> Report {
    let machine = report::machine();
    let mut md = String::from("## L7 reverse proxy (`xgate-bench proxy`)\n\n");
    md.push_str(&format!(
        "Run {} on {} cores ({}), kernel `{}`. Every proxy in front of the same upstream \
         (bench/src/upstream.rs: hyper, fixed bodies from memory), all running at once on \
         127.0.0.1 and loaded one at a time: {}; median reported (req/s min-max over the rounds). HTTP/1.1: {}, {} threads, \
         {} keep-alive connections. HTTP/2: {}, {} threads, {} connections x {} streams, TLS \
         1.3 with {} (the only suite offered), ALPN h2 only. The load generator, the proxy and \
         the upstream share the machine's cores.\n\n",
        info.started,
        machine["cores"],
        machine["cpu"].as_str().unwrap_or("?"),
        machine["kernel"].as_str().unwrap_or("?"),
        schedule_text(info.rounds, info.seconds),
        info.wrk,
        H1_THREADS,
        H1_CONNECTIONS,
        info.h2load.as_deref().unwrap_or("h2load missing"),
        H2_THREADS,
        H2_CONNECTIONS,
        H2_STREAMS,
        crate::load::TLS13_CIPHER,
    ));
    let verdicts: Vec<(&str, (Option<bool>, String))> = ["h1_small", "h1_large"]
        .into_iter()
        .map(|g| (g, judge(cases, g)))
        .collect();
    let overall = if verdicts.iter().all(|(_, (v, _))| *v == Some(true)) {
        "met"
    } else if verdicts.iter().any(|(_, (v, _))| *v == Some(false)) {
        "NOT met"
    } else {
        "not judged"
    };
    md.push_str(&format!(
        "**Target (HTTP/1.1, both sizes: xgate's req/s at least {TARGET_RPS_RATIO:.1}x the faster \
         of nginx and HAProxy, with a p99 no worse): {overall}.** {}\n\n",
        verdicts
            .iter()
            .map(|(g, (_, text))| format!("{}: {text}", g.replace('_', " ")))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    let (disturbed, disturbance_json) = disturbance(cases);
    if !disturbed.is_empty() {
        md.push_str(&disturbed);
        md.push_str("\n\n");
    }
    for (group, _, _, _, title) in GROUPS {
        md.push_str(&format!("### {title}\n\n"));
        md.push_str(&table(cases, group, group.starts_with("h1")));
        md.push('\n');
    }
    md.push_str("\"ref\" is the faster of nginx and HAProxy in each table (by median req/s); \"vs ref\" divides by its medians. CPU is the proxy's utime+stime (all its threads and processes: nginx's master and workers) per 100,000 requests, median over the rounds; peak RSS is VmHWM, reset before each run, summed over the proxy's processes, largest of the rounds.\n\n");
    md.push_str("### Setup\n\n");
    for peer in info.peers {
        let version = peer
            .binary
            .as_ref()
            .map(|b| b.full_version.clone())
            .unwrap_or_else(|| "not available".into());
        let tls = match (&peer.tls, &peer.tls_info) {
            (Ok(_), Some(t)) => format!(
                "HTTP/2 over TLS: {} {} ALPN {}",
                t.protocol, t.cipher, t.alpn
            ),
            (Ok(_), None) => "HTTP/2 over TLS".into(),
            (Err(e), _) if e.is_empty() => "-".into(),
            (Err(e), _) => format!("no HTTP/2 over TLS: {}", one_line(e)),
        };
        md.push_str(&format!("- {}: {version}; {tls}.\n", peer.kind.name()));
    }
    md.push_str(&format!(
        "- Configs: [bench/peers/](peers/) `xgate.yaml`, `nginx.conf`, `haproxy.cfg`, \
         `envoy.yaml` (templates; the harness fills in ports and paths). Equivalent on purpose: \
         one upstream with keep-alive connections to it, no access logging, connect timeout 2 s, \
         upstream response timeout 30 s, client idle keep-alive 30 s, the same forwarding \
         headers (X-Forwarded-For/-Proto/-Host, Forwarded, X-Request-Id), one worker per core \
         (nginx `worker_processes auto`, HAProxy `nbthread {t}`, Envoy `--concurrency {t}`, \
         xgate's tokio runtime on every core). See [bench/peers/README.md](peers/README.md).\n\
         - TLS: {}.\n",
        match &info.tls {
            Ok(d) => d.clone(),
            Err(e) => format!("no certificate: {e}"),
        },
        t = peers::threads()
    ));
    md.push_str(
        "- Each run is checked: every response 2xx, no socket error, as many bytes per response as the body; a proxy is checked to answer both sizes before it is loaded.\n",
    );
    let json = json!({
        "date": info.started,
        "machine": machine,
        "rounds": info.rounds,
        "seconds_per_run": info.seconds,
        "warm_up_seconds": WARM_UP_S,
        "http1": {"tool": info.wrk, "threads": H1_THREADS, "connections": H1_CONNECTIONS},
        "http2": {"tool": info.h2load.as_ref().ok(), "missing": info.h2load.as_ref().err(), "threads": H2_THREADS, "connections": H2_CONNECTIONS, "streams_per_connection": H2_STREAMS},
        "response_bytes": {"small": upstream::SMALL_BODY.len(), "large": upstream::LARGE_LEN},
        "tls_certificate": info.tls.as_ref().ok(),
        "other_processes_user_cpu": disturbance_json,
        "proxies": info.versions,
        "target": {
            "rule": format!("xgate req/s >= {TARGET_RPS_RATIO}x the faster of nginx and HAProxy, p99 no worse (HTTP/1.1, both sizes)"),
            "overall": overall,
            "groups": verdicts.iter().map(|(g, (v, text))| json!({"group": g, "met": v, "detail": text})).collect::<Vec<_>>(),
        },
        "cases": cases.iter().map(Case::json).collect::<Vec<_>>(),
    });
    Report {
        scenario: "proxy",
        json,
        markdown: md,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_orders_are_permutations_table_after_table() {
        let groups = ["a", "a", "a", "b", "b"];
        for round in 0..12 {
            let order = round_order(&groups, round);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2, 3, 4], "{order:?}");
            assert!(order[..3].iter().all(|&i| i < 3), "{order:?}");
        }
        // Table b (two cases) alternates.
        assert_eq!(&round_order(&groups, 0)[3..], [3, 4]);
        assert_eq!(&round_order(&groups, 1)[3..], [4, 3]);
    }

    /// Over a design's period every case runs equally often in every
    /// position and right after every other case equally often: the
    /// property a rotation lacks (there case 1 follows case 0 in every
    /// round but one).
    #[test]
    fn williams_rows_balance_position_and_carry_over() {
        for n in 1..=7usize {
            let period = if n.is_multiple_of(2) { n } else { 2 * n };
            let rows: Vec<Vec<usize>> = (0..period).map(|r| williams_row(n, r)).collect();
            let mut position = vec![vec![0; n]; n];
            let mut after = vec![vec![0; n]; n];
            for row in &rows {
                for (pos, &case) in row.iter().enumerate() {
                    position[case][pos] += 1;
                }
                for pair in row.windows(2) {
                    after[pair[0]][pair[1]] += 1;
                }
            }
            let per_position = period / n;
            assert!(
                position.iter().flatten().all(|&c| c == per_position),
                "n={n}: {position:?}"
            );
            for (a, row) in after.iter().enumerate() {
                for (b, &count) in row.iter().enumerate() {
                    let want = if a == b { 0 } else { period / n };
                    assert_eq!(count, want, "n={n}: {b} after {a}: {rows:?}");
                }
            }
            // The design repeats after its period.
            assert_eq!(williams_row(n, period), rows[0]);
        }
    }

    fn case(group: &'static str, target: &str, rps: &[f64], p99_us: f64) -> Case {
        let mut c = Case::new(group, target, target, Proto::H1);
        for &r in rps {
            c.samples.push(Sample {
                load: LoadResult {
                    requests: 1000,
                    rps: r,
                    p50_us: p99_us / 2.0,
                    p99_us,
                    ..Default::default()
                },
                cpu_per_100k: Some(1.0),
                upstream_cpu_per_100k: 0.5,
                peak_rss_kib: Some(2048),
                other_user_cores: 0.0,
            });
        }
        c
    }

    #[test]
    fn the_target_is_judged_against_the_faster_of_nginx_and_haproxy() {
        let mut cases = vec![
            case("h1_small", "xgate", &[105.0, 100.0, 110.0], 900.0),
            case("h1_small", "nginx", &[90.0, 95.0, 99.0], 1000.0),
            case("h1_small", "haproxy", &[101.0, 102.0, 103.0], 950.0),
            case("h1_small", "envoy", &[500.0], 10.0),
        ];
        assert_eq!(reference(&cases, "h1_small").unwrap().target, "haproxy");
        assert_eq!(judge(&cases, "h1_small").0, Some(true));
        // Faster but a worse p99: not met.
        cases[0] = case("h1_small", "xgate", &[200.0], 960.0);
        assert_eq!(judge(&cases, "h1_small").0, Some(false));
        // Slower: not met.
        cases[0] = case("h1_small", "xgate", &[100.0], 100.0);
        assert_eq!(judge(&cases, "h1_small").0, Some(false));
        let md = table(&cases, "h1_small", true);
        assert!(md.contains("**NOT met**"), "{md}");
        assert!(md.contains("haproxy (ref)"), "{md}");
        // xgate unavailable: not judged, and the table says why.
        cases[0].unavailable = Some("xgate has no TLS yet".into());
        assert_eq!(judge(&cases, "h1_small").0, None);
        let md = table(&cases, "h1_small", true);
        assert!(
            md.contains("not available") && md.contains("xgate has no TLS yet"),
            "{md}"
        );
        // No nginx/HAProxy numbers: nothing to judge against.
        cases[1].failed = Some("x".into());
        cases[2].unavailable = Some("y".into());
        cases[0].unavailable = None;
        assert!(reference(&cases, "h1_small").is_none());
        assert_eq!(judge(&cases, "h1_small").0, None);
    }
}
