//! Scenario `scale`: does the cost of a request grow with the size of the
//! configuration? Small against large, measured in the same run:
//!
//! - routes: 10 against 10,000 prefix routes, the request matching one of
//!   them (HTTP/1.1 keep-alive, wrk): requests/s and xgate's RSS;
//! - deny CIDRs at L7: 10 against 100,000 IPv4 deny CIDRs (no XDP, so the
//!   list is checked on every accepted connection), requests/s of a client
//!   not on the list, with keep-alive and with a new connection per request
//!   (`Connection: close`, where the check runs every time); RSS;
//! - consumers: key-auth with 10 against 100,000 consumers (one API key
//!   each), the request carrying one of them (HTTP/1.1 keep-alive);
//! - rate-limit keys: a local rate limit (never triggered) keyed by a
//!   header, the requests spread over 10 against 100,000 distinct values
//!   (a wrk script cycles through them), so the counters hold that many
//!   keys; the same with the counters in Redis (a redis-server started in
//!   the run's namespace), where each distinct key is a string in Redis;
//! - deny CIDRs in XDP: the same two lists in the XDP program's lists,
//!   ns/packet with BPF_PROG_TEST_RUN for a passing source and a denied one.
//!
//! The xgate instances run side by side in a network namespace made
//! for the run (its own loopback), pinned to the last CPU with the upstream;
//! wrk runs on CPU 0. In every HTTP round the two cases of each pair run
//! back to back (their order alternating, the pairs' order rotating); the
//! cost ratio of a pair is the median of its per-round ratios (large /
//! small cost = small req/s / large req/s).
//! Target: every pair flat within ±10 %.
//!
//! `--only A,B` runs only the named comparisons ([`COMPARISONS`]), and
//! starts only the instances (and the redis-server) they need.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use gateway_common::{flags, RateLimit, Rule, RuleSource, Stat, XdpConfig};
use gateway_userspace::xdp::{KernelRules, XdpDataPlane, XDP_OBJECT};
use ipnet::IpNet;
use serde_json::{json, Value};
use xgate_tests::{frames::udp4_frame, redis::RedisServer};

use crate::{
    lab,
    load::{Shape, Wrk},
    peers::{self, Template},
    report::{self, Report},
    rules,
    stats::{ratio, Samples},
    sys::{self, NetNs, Spawned},
    upstream, Settings,
};

/// HTTP rounds: run-to-run noise here is several percent, the target ±10 %.
pub const DEFAULT_ROUNDS: usize = 5;
pub const DEFAULT_DURATION_S: u64 = 4;
/// XDP measurements are cheap: more rounds unless `--rounds` is given.
const DEFAULT_XDP_ROUNDS: usize = 9;
/// Flat means within this fraction of the small case's cost.
const TARGET: f64 = 0.10;

const SMALL_ROUTES: usize = 10;
const LARGE_ROUTES: usize = 10_000;
const SMALL_CONSUMERS: usize = 10;
const LARGE_CONSUMERS: usize = 100_000;
/// The consumers instances' key-auth route (`/keyed`, stripped), and the
/// request every consumers-case request makes.
const KEYED_PATH: &str = "/keyed/small";
/// The consumer whose key every consumers-case request carries.
const KEY_CONSUMER: usize = 7;
const SMALL_RATE_KEYS: usize = 10;
const LARGE_RATE_KEYS: usize = 100_000;
/// The header the rate-limit instances count by.
const RATE_KEY_HEADER: &str = "x-tenant";
const SMALL_DENY: usize = 10;
const LARGE_DENY: usize = 100_000;
/// The route every routes-case request matches (`/svc7`, stripped).
const ROUTE_PATH: &str = "/svc7/small";

const WRK_THREADS: u32 = 1;
const WRK_CONNECTIONS: u32 = 16;
const UPSTREAM: &str = "127.0.0.1:9000";

const TEMPLATE: Template = Template {
    file: "xgate-scale.yaml",
    text: include_str!("../peers/xgate-scale.yaml"),
};

/// XDP frames: a source on no list, one in the first deny CIDR.
const PASS_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const DENY_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const DENY_V4_NET: &str = "203.0.113.0/24";
const DST_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const XDP_PASS: u32 = 2;
const XDP_DROP: u32 = 1;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Instance {
    RoutesSmall,
    RoutesLarge,
    DenySmall,
    DenyLarge,
    KeysSmall,
    KeysLarge,
    RateKeysSmall,
    RateKeysLarge,
    RedisRateKeysSmall,
    RedisRateKeysLarge,
}

impl Instance {
    const ALL: [Instance; 10] = [
        Instance::RoutesSmall,
        Instance::RoutesLarge,
        Instance::DenySmall,
        Instance::DenyLarge,
        Instance::KeysSmall,
        Instance::KeysLarge,
        Instance::RateKeysSmall,
        Instance::RateKeysLarge,
        Instance::RedisRateKeysSmall,
        Instance::RedisRateKeysLarge,
    ];

    fn id(self) -> &'static str {
        match self {
            Instance::RoutesSmall => "routes-10",
            Instance::RoutesLarge => "routes-10000",
            Instance::DenySmall => "deny-10",
            Instance::DenyLarge => "deny-100000",
            Instance::KeysSmall => "consumers-10",
            Instance::KeysLarge => "consumers-100000",
            Instance::RateKeysSmall => "ratelimit-keys-10",
            Instance::RateKeysLarge => "ratelimit-keys-100000",
            Instance::RedisRateKeysSmall => "redis-ratelimit-keys-10",
            Instance::RedisRateKeysLarge => "redis-ratelimit-keys-100000",
        }
    }

    fn port(self) -> u16 {
        8001 + self as u16
    }

    fn path(self) -> &'static str {
        match self {
            Instance::RoutesSmall | Instance::RoutesLarge => ROUTE_PATH,
            Instance::KeysSmall | Instance::KeysLarge => KEYED_PATH,
            _ => upstream::SMALL_PATH,
        }
    }

    /// What the harness asks for to know the instance is up (a request
    /// without an API key: the consumers instances' open route).
    fn ready_path(self) -> &'static str {
        match self {
            Instance::KeysSmall | Instance::KeysLarge => upstream::SMALL_PATH,
            _ => self.path(),
        }
    }

    fn routes(self) -> usize {
        match self {
            Instance::RoutesSmall => SMALL_ROUTES,
            Instance::RoutesLarge => LARGE_ROUTES,
            _ => 1,
        }
    }

    fn consumers(self) -> usize {
        match self {
            Instance::KeysSmall => SMALL_CONSUMERS,
            Instance::KeysLarge => LARGE_CONSUMERS,
            _ => 0,
        }
    }

    /// Distinct rate-limit keys the requests are spread over.
    fn rate_keys(self) -> usize {
        match self {
            Instance::RateKeysSmall | Instance::RedisRateKeysSmall => SMALL_RATE_KEYS,
            Instance::RateKeysLarge | Instance::RedisRateKeysLarge => LARGE_RATE_KEYS,
            _ => 0,
        }
    }

    /// Whether the rate limit counts in Redis.
    fn redis(self) -> bool {
        matches!(
            self,
            Instance::RedisRateKeysSmall | Instance::RedisRateKeysLarge
        )
    }

    fn deny(self) -> usize {
        match self {
            Instance::DenySmall => SMALL_DENY,
            Instance::DenyLarge => LARGE_DENY,
            _ => 0,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Conn {
    KeepAlive,
    Close,
}

impl Conn {
    fn id(self) -> &'static str {
        match self {
            Conn::KeepAlive => "keep-alive",
            Conn::Close => "new connection per request",
        }
    }
}

struct HttpCase {
    instance: Instance,
    conn: Conn,
    rps: Samples,
    p99: Samples,
    errors: u64,
}

/// (`--only` name, small, large, connections, what differs): the HTTP
/// pairs judged against the target.
const PAIRS: &[(&str, Instance, Instance, Conn, &str)] = &[
    (
        "routes",
        Instance::RoutesSmall,
        Instance::RoutesLarge,
        Conn::KeepAlive,
        "routes: 10 vs 10,000 prefix routes",
    ),
    (
        "deny-keepalive",
        Instance::DenySmall,
        Instance::DenyLarge,
        Conn::KeepAlive,
        "L7 deny list: 10 vs 100,000 CIDRs, keep-alive",
    ),
    (
        "deny-close",
        Instance::DenySmall,
        Instance::DenyLarge,
        Conn::Close,
        "L7 deny list: 10 vs 100,000 CIDRs, new connection per request",
    ),
    (
        "consumers",
        Instance::KeysSmall,
        Instance::KeysLarge,
        Conn::KeepAlive,
        "key-auth: 10 vs 100,000 consumers",
    ),
    (
        "ratelimit-keys",
        Instance::RateKeysSmall,
        Instance::RateKeysLarge,
        Conn::KeepAlive,
        "local rate limit: 10 vs 100,000 distinct keys",
    ),
    (
        "redis-ratelimit-keys",
        Instance::RedisRateKeysSmall,
        Instance::RedisRateKeysLarge,
        Conn::KeepAlive,
        "Redis rate limit: 10 vs 100,000 distinct keys",
    ),
];

/// The `--only` name of the XDP comparisons (both run together).
const XDP_COMPARISONS: &str = "xdp";

/// Every comparison `--only` may name.
pub const COMPARISONS: [&str; 7] = [
    "routes",
    "deny-keepalive",
    "deny-close",
    "consumers",
    "ratelimit-keys",
    "redis-ratelimit-keys",
    XDP_COMPARISONS,
];

/// The comparisons to run: those `only` names (checked), or all.
pub fn chosen(only: Option<&str>) -> Result<Vec<&'static str>> {
    let Some(only) = only else {
        return Ok(COMPARISONS.to_vec());
    };
    let mut chosen = Vec::new();
    for name in only.split(',').map(str::trim) {
        let Some(known) = COMPARISONS.iter().find(|c| **c == name) else {
            anyhow::bail!(
                "--only: `{name}` is not a comparison of scale; they are: {}",
                COMPARISONS.join(", ")
            );
        };
        if !chosen.contains(known) {
            chosen.push(*known);
        }
    }
    Ok(chosen)
}

/// Consumer `i`'s API key.
fn api_key(i: usize) -> String {
    format!("bench-key-{i:08}")
}

/// `consumers:` with one key each, as a YAML flow list.
fn consumers_yaml(instance: Instance) -> String {
    let mut out = String::from(" [");
    for i in 0..instance.consumers() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&format!(
            "{{username: c{i}, keys: [{{key: {}}}]}}",
            api_key(i)
        ));
    }
    out.push(']');
    out
}

struct Running {
    instance: Instance,
    process: Spawned,
    start_s: f64,
    idle_rss_kib: u64,
}

fn deny_list(count: usize) -> Result<Vec<IpNet>> {
    rules::deny_v4(
        count,
        DENY_V4_NET.parse()?,
        &[Ipv4Addr::LOCALHOST, PASS_V4, DST_V4],
    )
}

fn routes_yaml(instance: Instance) -> String {
    let mut out = String::new();
    if instance.consumers() > 0 {
        out.push_str(
            "  - name: open\n    match: { path_prefix: / }\n    upstream: bench\n\
             \x20 - name: keyed\n    match: { path_prefix: /keyed }\n    upstream: bench\n    \
             strip_prefix: true\n    policies: [{ type: key-auth, key_names: [x-api-key] }]\n",
        );
        return out;
    }
    if instance.rate_keys() > 0 {
        // Limits far above what is sent, in windows of an hour: every key
        // seen stays counted for the whole run.
        let storage = if instance.redis() {
            ", storage: redis"
        } else {
            ""
        };
        out.push_str(&format!(
            "  - name: all\n    match: {{ path_prefix: / }}\n    upstream: bench\n    \
             policies: [{{ type: rate-limit, key: ['header:{RATE_KEY_HEADER}'], \
             limits: [{{ requests: 1000000000, per: 1h }}]{storage} }}]\n"
        ));
        return out;
    }
    if instance.routes() == 1 {
        out.push_str("  - name: all\n    match: { path_prefix: / }\n    upstream: bench\n");
        return out;
    }
    for i in 0..instance.routes() {
        out.push_str(&format!(
            "  - name: svc{i}\n    match: {{ path_prefix: /svc{i} }}\n    upstream: bench\n    strip_prefix: true\n"
        ));
    }
    out
}

/// The top-level `redis:` of the Redis rate-limit instances (nothing for
/// the others). A timeout far above a loopback round trip: a check that
/// fell back to local counting would not measure Redis.
fn redis_yaml(instance: Instance, url: Option<&str>) -> String {
    match url {
        Some(url) if instance.redis() => format!("redis:\n  url: \"{url}\"\n  timeout: 1s\n"),
        _ => String::new(),
    }
}

fn deny_yaml(list: &[IpNet]) -> String {
    if list.is_empty() {
        return " []".into();
    }
    let mut out = String::with_capacity(list.len() * 24);
    for net in list {
        out.push_str(&format!("\n    - {net}"));
    }
    out
}

fn start_instance(
    ns: &NetNs,
    xgate: &peers::Binary,
    dir: PathBuf,
    instance: Instance,
    cpu: usize,
    redis_url: Option<&str>,
) -> Result<Running> {
    std::fs::create_dir_all(&dir)?;
    let deny = deny_list(instance.deny().max(1))?;
    let deny = if instance.deny() == 0 {
        Vec::new()
    } else {
        deny
    };
    let text = peers::render(
        TEMPLATE.text,
        &[
            ("PORT", instance.port().to_string()),
            ("DIR", dir.display().to_string()),
            ("UPSTREAM", UPSTREAM.into()),
            ("DENY", deny_yaml(&deny)),
            ("ROUTES", routes_yaml(instance)),
            ("CONSUMERS", consumers_yaml(instance)),
            ("REDIS", redis_yaml(instance, redis_url)),
        ],
        false,
    )?;
    let config = dir.join(TEMPLATE.file);
    std::fs::write(&config, text)?;
    let mut cmd = ns.command(&xgate.path);
    cmd.arg("run")
        .arg("-c")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .current_dir(&dir);
    lab::run_on(&mut cmd, &[cpu]);
    let began = Instant::now();
    let mut process = Spawned::start(
        &format!("xgate {}", instance.id()),
        cmd,
        &dir.join("xgate.log"),
    )?;
    lab::wait_http(
        ns,
        &mut process,
        SocketAddr::from((Ipv4Addr::LOCALHOST, instance.port())),
        instance.ready_path(),
        upstream::SMALL_BODY,
        Duration::from_secs(120),
    )?;
    let start_s = began.elapsed().as_secs_f64();
    let idle_rss_kib = lab::rss_kib(process.pid()).unwrap_or(0);
    Ok(Running {
        instance,
        process,
        start_s,
        idle_rss_kib,
    })
}

fn permanent() -> Rule {
    Rule {
        expires_at_ns: 0,
        source: RuleSource::Config as u32,
        _pad: 0,
    }
}

/// As in the `xdp` scenario's pass cases: rate limiting on, with a budget
/// that is never exhausted (every pass finds and charges its bucket).
fn rule_set(deny: &[IpNet]) -> KernelRules {
    KernelRules {
        config: XdpConfig {
            flags: flags::RATE_LIMIT,
            v4_prefix_len: 32,
            v6_prefix_len: 64,
            rate: RateLimit::per_second(1_000_000, 1 << 40),
            ..XdpConfig::default()
        },
        ports: None,
        deny: deny.iter().map(|n| (*n, permanent())).collect(),
        allow: Vec::new(),
        rate_overrides: Vec::new(),
    }
}

struct XdpCase {
    id: &'static str,
    label: &'static str,
    large: bool,
    src: Ipv4Addr,
    verdict: u32,
    stat: Stat,
    ns: Samples,
}

fn xdp_cases() -> Vec<XdpCase> {
    let case = |id, label, large, src, verdict, stat| XdpCase {
        id,
        label,
        large,
        src,
        verdict,
        stat,
        ns: Samples::default(),
    };
    vec![
        case(
            "pass_10",
            "pass, 10 deny CIDRs",
            false,
            PASS_V4,
            XDP_PASS,
            Stat::Passed,
        ),
        case(
            "pass_100000",
            "pass, 100,000 deny CIDRs",
            true,
            PASS_V4,
            XDP_PASS,
            Stat::Passed,
        ),
        case(
            "deny_10",
            "deny hit, 10 deny CIDRs",
            false,
            DENY_V4,
            XDP_DROP,
            Stat::DeniedV4,
        ),
        case(
            "deny_100000",
            "deny hit, 100,000 deny CIDRs",
            true,
            DENY_V4,
            XDP_DROP,
            Stat::DeniedV4,
        ),
    ]
}

/// One BPF_PROG_TEST_RUN of `case`, checked: the verdict, and that exactly
/// its counter moved by `repeat`.
fn xdp_measure(plane: &mut XdpDataPlane, case: &XdpCase, repeat: u32) -> Result<f64> {
    sys::check_interrupted()?;
    let frame = udp4_frame(case.src, DST_V4);
    let before = plane.counters()?;
    let result = plane
        .program_mut()?
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            repeat,
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    let after = plane.counters()?;
    ensure!(
        result.return_value == case.verdict,
        "{}: verdict {}, expected {}",
        case.id,
        result.return_value,
        case.verdict
    );
    let moved: Vec<(Stat, u64)> = Stat::ALL
        .into_iter()
        .map(|s| (s, after.get(s) - before.get(s)))
        .filter(|(_, d)| *d > 0)
        .collect();
    ensure!(
        moved == [(case.stat, u64::from(repeat))],
        "{}: counters moved by {moved:?}, expected {:?} by {repeat}",
        case.id,
        case.stat
    );
    Ok(result.duration.as_nanos() as f64)
}

/// The XDP half's cases, the deny-list sizes and the two size labels.
type XdpPart = (Vec<XdpCase>, usize, Option<usize>, [String; 2]);

fn xdp_part(settings: &Settings) -> Result<XdpPart> {
    let rounds = settings.rounds.unwrap_or(DEFAULT_XDP_ROUNDS);
    let small = deny_list(SMALL_DENY)?;
    let large = deny_list(LARGE_DENY)?;
    let mixes = [rules::length_mix(&small), rules::length_mix(&large)];
    eprintln!("    XDP: loading the program twice, with {SMALL_DENY} and {LARGE_DENY} deny CIDRs");
    let mut planes = Vec::new();
    for list in [&small, &large] {
        let mut plane =
            XdpDataPlane::load(XDP_OBJECT, None).context("loading xgate's XDP program")?;
        plane
            .replace_rules(&rule_set(list))
            .with_context(|| format!("loading {} deny CIDRs", list.len()))?;
        planes.push(plane);
    }
    let cpu = sys::pin_to_last_cpu();
    let measured = (|| -> Result<Vec<XdpCase>> {
        let mut cases = xdp_cases();
        let warm = (settings.repeat / 10).max(1);
        for case in &cases {
            xdp_measure(&mut planes[usize::from(case.large)], case, warm)?;
        }
        for round in 1..=rounds {
            for k in 0..cases.len() {
                let i = (k + round - 1) % cases.len();
                let ns = xdp_measure(
                    &mut planes[usize::from(cases[i].large)],
                    &cases[i],
                    settings.repeat,
                )?;
                cases[i].ns.push(ns);
            }
        }
        Ok(cases)
    })();
    sys::unpin();
    Ok((measured?, rounds, cpu, mixes))
}

pub fn run(settings: &Settings) -> Result<Report> {
    let started = report::utc_now();
    let rounds = settings.rounds_or(DEFAULT_ROUNDS);
    let d = settings.duration_or(DEFAULT_DURATION_S);
    let cores = peers::threads();
    let (outside, gateway) = (0, cores.saturating_sub(1));

    let chosen = chosen(settings.only)?;
    let pairs_chosen: Vec<_> = PAIRS
        .iter()
        .filter(|p| chosen.contains(&p.0))
        .copied()
        .collect();
    let no_deep_idle = lab::NoDeepIdle::hold();
    let (xdp, xdp_rounds, xdp_cpu, mixes) = if chosen.contains(&XDP_COMPARISONS) {
        xdp_part(settings)?
    } else {
        (Vec::new(), 0, None, [String::new(), String::new()])
    };
    let needed: Vec<Instance> = Instance::ALL
        .into_iter()
        .filter(|i| pairs_chosen.iter().any(|p| p.1 == *i || p.2 == *i))
        .collect();

    let xgate = peers::find(peers::Kind::Xgate).context("xgate release binary")?;
    let tmp = sys::temp_dir("scale")?;
    let wrk = Wrk::new(tmp.path())?;
    let ns = sys::netns("scale")?;
    // Many short connections on one loopback: reuse TIME_WAIT ports.
    lab::ns_sh(
        &ns,
        "sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range='1024 65000'",
    )?;
    let exe = std::env::current_exe().context("finding the harness's own executable")?;
    let mut cmd = ns.command(exe);
    cmd.args([upstream::SUBCOMMAND, "--listen", UPSTREAM, "--threads", "1"]);
    lab::run_on(&mut cmd, &[gateway]);
    let mut upstream_process =
        Spawned::start("bench upstream", cmd, &tmp.path().join("upstream.log"))?;
    lab::wait_http(
        &ns,
        &mut upstream_process,
        UPSTREAM.parse()?,
        upstream::SMALL_PATH,
        upstream::SMALL_BODY,
        Duration::from_secs(10),
    )?;
    // The Redis rate-limit instances' redis-server, in the namespace (a
    // child of a thread that entered it), on the gateway's CPU.
    let redis = if needed.iter().any(|i| i.redis()) {
        eprintln!("    starting redis-server (the Redis rate-limit instances)");
        Some(lab::in_netns(&ns, Some(gateway), RedisServer::start)?)
    } else {
        None
    };
    let redis_url = redis.as_ref().map(RedisServer::url);
    let mut running = Vec::new();
    for &instance in &needed {
        eprintln!(
            "    starting xgate {} ({} routes, {} deny CIDRs)",
            instance.id(),
            instance.routes(),
            instance.deny()
        );
        running.push(start_instance(
            &ns,
            &xgate,
            tmp.path().join(instance.id()),
            instance,
            gateway,
            redis_url.as_deref(),
        )?);
    }

    let mut cases: Vec<HttpCase> = pairs_chosen
        .iter()
        .flat_map(|&(_, small, large, conn, _)| [(small, conn), (large, conn)])
        .map(|(instance, conn)| HttpCase {
            instance,
            conn,
            rps: Samples::default(),
            p99: Samples::default(),
            errors: 0,
        })
        .collect();

    let load = |instance: Instance, conn: Conn, seconds: u64| -> Result<crate::load::LoadResult> {
        let url = format!("http://127.0.0.1:{}{}", instance.port(), instance.path());
        let mut headers: Vec<String> = match conn {
            Conn::KeepAlive => Vec::new(),
            Conn::Close => vec!["Connection: close".into()],
        };
        if instance.consumers() > 0 {
            headers.push(format!("x-api-key: {}", api_key(KEY_CONSUMER)));
        }
        let shape = Shape {
            threads: WRK_THREADS,
            connections: WRK_CONNECTIONS,
            streams: 1,
            seconds,
        };
        let wrk = &wrk;
        let keys = instance.rate_keys();
        lab::in_netns(&ns, Some(outside), move || {
            if keys > 0 {
                wrk.run_keyed(&url, shape, &headers, RATE_KEY_HEADER, keys)
            } else {
                wrk.run(&url, shape, &headers)
            }
        })?
    };
    eprintln!(
        "    warming up, then {rounds} rounds of {} cases, {d} s each",
        cases.len()
    );
    for case in &cases {
        let r = load(case.instance, case.conn, 1)?;
        r.check(upstream::SMALL_BODY.len())
            .with_context(|| format!("warm-up of {} {}", case.instance.id(), case.conn.id()))?;
    }
    for r in &running {
        r.process.reset_peak_rss();
    }
    // The two cases of a pair run back to back (their order alternating
    // from round to round, the pairs' order rotating), so that drift in
    // the machine's speed lands on both sides of a ratio alike.
    let pairs: Vec<(usize, usize)> = pairs_chosen
        .iter()
        .filter_map(|&(_, small, large, conn, _)| {
            let at = |i: Instance| cases.iter().position(|c| c.instance == i && c.conn == conn);
            Some((at(small)?, at(large)?))
        })
        .collect();
    for round in 1..=rounds {
        let order: Vec<usize> = (0..pairs.len())
            .map(|k| (k + round - 1) % pairs.len())
            .flat_map(|p| {
                let (a, b) = pairs[p];
                if round % 2 == 1 {
                    [a, b]
                } else {
                    [b, a]
                }
            })
            .collect();
        for i in order {
            let case = &mut cases[i];
            sys::check_interrupted()?;
            let r = load(case.instance, case.conn, d)?;
            case.errors += r.socket_errors + r.bad_status;
            r.check(upstream::SMALL_BODY.len()).with_context(|| {
                format!("round {round}: {} {}", case.instance.id(), case.conn.id())
            })?;
            case.rps.push(r.rps);
            case.p99.push(r.p99_us);
        }
        eprintln!(
            "    round {round}/{rounds}: {}",
            cases
                .iter()
                .map(|c| format!(
                    "{} {} {:.0}",
                    c.instance.id(),
                    if c.conn == Conn::Close { "close" } else { "ka" },
                    c.rps.0.last().copied().unwrap_or(f64::NAN)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for r in running.iter_mut() {
        r.process.check_running()?;
    }
    // A Redis check that fell back to local counting (no answer within
    // redis.timeout) did not measure Redis: such a pair is not judged.
    let redis_check = match &redis {
        None => None,
        Some(redis) => {
            let mut fallbacks = 0.0;
            for r in running.iter().filter(|r| r.instance.redis()) {
                let admin = tmp.path().join(r.instance.id()).join("admin.sock");
                fallbacks += crate::policies::redis_fallbacks(&admin)
                    .with_context(|| format!("xgate {}: reading its metrics", r.instance.id()))?;
            }
            let keys = lab::in_netns(&ns, None, || redis.command(&["DBSIZE"]))?
                .context("asking redis-server for DBSIZE")?;
            Some(RedisCheck {
                fallbacks,
                keys: keys.trim_start_matches(':').parse().unwrap_or(0),
            })
        }
    };
    let memory: Vec<Value> = running
        .iter()
        .map(|r| {
            json!({
                "instance": r.instance.id(),
                "routes": r.instance.routes(),
                "deny_cidrs": r.instance.deny(),
                "start_seconds": r.start_s,
                "rss_kib_idle_after_start": r.idle_rss_kib,
                "rss_kib_after_load": lab::rss_kib(r.process.pid()),
                "peak_rss_kib_during_load": sys::peak_rss_kib(r.process.pid()),
            })
        })
        .collect();
    let info = Info {
        started,
        rounds,
        duration: d,
        xdp_rounds,
        xdp_cpu,
        repeat: settings.repeat,
        cores,
        gateway,
        outside,
        mixes,
        xgate: xgate.version.clone(),
        wrk: wrk.version.clone(),
        no_deep_idle: no_deep_idle.is_held(),
        chosen: chosen.clone(),
        redis: redis_check,
    };
    let report = build_report(&cases, &xdp, &memory, &info);
    drop(running);
    drop(redis);
    drop(upstream_process);
    drop(ns);
    drop(tmp);
    Ok(report)
}

struct Info {
    started: String,
    rounds: usize,
    duration: u64,
    xdp_rounds: usize,
    xdp_cpu: Option<usize>,
    repeat: u32,
    cores: usize,
    gateway: usize,
    outside: usize,
    mixes: [String; 2],
    xgate: String,
    wrk: String,
    no_deep_idle: bool,
    /// The comparisons run (`--only`, or all).
    chosen: Vec<&'static str>,
    redis: Option<RedisCheck>,
}

/// What the Redis rate-limit instances' run left: checks answered without
/// Redis (must be none) and the keys Redis holds.
struct RedisCheck {
    fallbacks: f64,
    keys: u64,
}

fn find(cases: &[HttpCase], instance: Instance, conn: Conn) -> Option<&HttpCase> {
    cases
        .iter()
        .find(|c| c.instance == instance && c.conn == conn)
}

fn mem(memory: &[Value], instance: Instance, key: &str) -> Option<u64> {
    memory
        .iter()
        .find(|m| m["instance"] == instance.id())
        .and_then(|m| m[key].as_u64())
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

/// `100000` → `100,000`.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn flat(cost_ratio: f64) -> bool {
    (cost_ratio - 1.0).abs() <= TARGET
}

fn build_report(cases: &[HttpCase], xdp: &[XdpCase], memory: &[Value], info: &Info) -> Report {
    let machine = report::machine();
    struct Judged {
        label: &'static str,
        small: String,
        large: String,
        small_value: f64,
        large_value: f64,
        unit: &'static str,
        cost_ratio: f64,
        paired: f64,
        /// The smallest and largest per-round ratio (the noise).
        range: (f64, f64),
        rss: Option<(Option<u64>, Option<u64>)>,
        /// Why the pair cannot be judged (it measured something else).
        invalid: Option<String>,
    }
    let mut judged = Vec::new();
    for &(_, small, large, conn, label) in PAIRS {
        let (Some(s), Some(l)) = (find(cases, small, conn), find(cases, large, conn)) else {
            continue;
        };
        // Cost per request ∝ 1 / req/s.
        let per_round = Samples(
            s.rps
                .0
                .iter()
                .zip(&l.rps.0)
                .map(|(a, b)| ratio(*a, *b))
                .collect(),
        );
        judged.push(Judged {
            label,
            small: small.id().into(),
            large: large.id().into(),
            small_value: s.rps.median(),
            large_value: l.rps.median(),
            unit: "req/s",
            cost_ratio: ratio(s.rps.median(), l.rps.median()),
            paired: per_round.median(),
            range: (per_round.min(), per_round.max()),
            rss: Some((
                mem(memory, small, "peak_rss_kib_during_load"),
                mem(memory, large, "peak_rss_kib_during_load"),
            )),
            invalid: info
                .redis
                .as_ref()
                .filter(|_| small.redis())
                .and_then(|r| crate::policies::not_redis(r.fallbacks)),
        });
    }
    for (small, large, label) in [
        (
            "pass_10",
            "pass_100000",
            "XDP pass path: 10 vs 100,000 deny CIDRs",
        ),
        (
            "deny_10",
            "deny_100000",
            "XDP deny hit: 10 vs 100,000 deny CIDRs",
        ),
    ] {
        let (Some(s), Some(l)) = (
            xdp.iter().find(|c| c.id == small),
            xdp.iter().find(|c| c.id == large),
        ) else {
            continue;
        };
        let per_round = Samples(
            l.ns.0
                .iter()
                .zip(&s.ns.0)
                .map(|(a, b)| ratio(*a, *b))
                .collect(),
        );
        judged.push(Judged {
            label,
            small: small.into(),
            large: large.into(),
            small_value: s.ns.median(),
            large_value: l.ns.median(),
            unit: "ns/packet",
            cost_ratio: ratio(l.ns.median(), s.ns.median()),
            paired: per_round.median(),
            range: (per_round.min(), per_round.max()),
            rss: None,
            invalid: None,
        });
    }
    let ok = |j: &Judged| j.invalid.is_none() && flat(j.paired);
    let met = !judged.is_empty() && judged.iter().all(ok);

    let json = json!({
        "scenario": "scale",
        "date": info.started,
        "machine": machine,
        "rounds": info.rounds,
        "load_seconds": info.duration,
        "xdp_rounds": info.xdp_rounds,
        "xdp_repeat": info.repeat,
        "xdp_pinned_cpu": info.xdp_cpu,
        "placement": {
            "xgate_and_upstream_cpu": info.gateway,
            "wrk_cpu": info.outside,
        },
        "xgate": info.xgate,
        "idle_cpus_poll": info.no_deep_idle,
        "comparisons": info.chosen,
        "redis": info.redis.as_ref().map(|r| json!({
            "checks_answered_without_redis": r.fallbacks,
            "keys_in_redis_after_the_run": r.keys,
        })),
        "load": {
            "tool": info.wrk, "threads": WRK_THREADS, "connections": WRK_CONNECTIONS,
            "routes_request": format!("GET {ROUTE_PATH} (matches route /svc7, stripped to {})", upstream::SMALL_PATH),
            "deny_request": format!("GET {} from 127.0.0.1 (on no list)", upstream::SMALL_PATH),
        },
        "deny_prefix_lengths": { "10": info.mixes[0], "100000": info.mixes[1] },
        "http_cases": cases.iter().map(|c| json!({
            "instance": c.instance.id(),
            "routes": c.instance.routes(),
            "deny_cidrs": c.instance.deny(),
            "connections": c.conn.id(),
            "rps_median": c.rps.median(), "rps_min": c.rps.min(), "rps_max": c.rps.max(),
            "rps_rounds": c.rps.0,
            "p99_us_median": c.p99.median(),
            "errors": c.errors,
        })).collect::<Vec<_>>(),
        "memory": memory,
        "xdp_cases": xdp.iter().map(|c| json!({
            "id": c.id, "case": c.label,
            "ns_per_packet_median": c.ns.median(), "ns_min": c.ns.min(), "ns_max": c.ns.max(),
            "ns_rounds": c.ns.0,
        })).collect::<Vec<_>>(),
        "pairs": judged.iter().map(|j| json!({
            "pair": j.label, "small": j.small, "large": j.large,
            "small_value": j.small_value, "large_value": j.large_value, "unit": j.unit,
            "cost_ratio_large_over_small": j.cost_ratio,
            "cost_ratio_paired_median": j.paired,
            "cost_ratio_per_round_min": j.range.0,
            "cost_ratio_per_round_max": j.range.1,
            "flat_within_10_percent": ok(j),
            "not_judged_because": j.invalid,
            "peak_rss_kib": j.rss.map(|(a, b)| json!({"small": a, "large": b})),
        })).collect::<Vec<_>>(),
        "target": {
            "text": "per-request (per-packet) cost flat within ±10% from small to large",
            "tolerance": TARGET,
            "met": met,
        },
    });

    let mut md = String::new();
    md.push_str("## Scaling with configuration size (`xgate-bench scale`)\n\n");
    md.push_str(&format!(
        "Run {} on {} cores ({}), kernel `{}`: HTTP {} rounds of {} s per case (wrk {}, \
         {WRK_THREADS} thread, {WRK_CONNECTIONS} connections, on CPU {}; xgate and the upstream \
         on CPU {}), the two cases of each pair back to back in every round (order \
         alternating); XDP {} rounds of BPF_PROG_TEST_RUN with repeat {} (CPU {}). Medians reported; the cost ratio is the \
         median of per-round ratios (large / small; for HTTP: small req/s / large req/s).\n\n",
        info.started,
        info.cores,
        machine["cpu"].as_str().unwrap_or("?"),
        machine["kernel"].as_str().unwrap_or("?"),
        info.rounds,
        info.duration,
        info.wrk,
        info.outside,
        info.gateway,
        info.xdp_rounds,
        info.repeat,
        info.xdp_cpu
            .map_or("unpinned".to_string(), |c| c.to_string()),
    ));
    if info.chosen.len() < COMPARISONS.len() {
        md.push_str(&format!(
            "Only these comparisons were run (`--only`): {}.\n\n",
            info.chosen.join(", ")
        ));
    }
    md.push_str(&format!(
        "**Target (per-request cost flat within ±{:.0}% from small to large): {}.** {}\n\n",
        TARGET * 100.0,
        if met { "met" } else { "NOT met" },
        judged
            .iter()
            .map(|j| format!(
                "{}: {:.2}x{}",
                j.label,
                j.paired,
                if let Some(why) = &j.invalid {
                    format!(" (not judged: {why})")
                } else if flat(j.paired) {
                    String::new()
                } else if j.paired < 1.0 {
                    " (outside ±10%, but faster: noise)".into()
                } else {
                    " (not flat)".into()
                }
            ))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    md.push_str("| comparison | small | large | cost ratio (large/small) | paired | per-round range | within ±10% | peak RSS small | peak RSS large |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|---|---:|---:|\n");
    for j in &judged {
        let (rs, rl) = j.rss.map_or(("-".to_string(), "-".to_string()), |(a, b)| {
            (mib(a), mib(b))
        });
        md.push_str(&format!(
            "| {} | {:.0} {} | {:.0} {} | {:.2}x | {:.2}x | {:.2}-{:.2}x | {} | {} | {} |\n",
            j.label,
            j.small_value,
            j.unit,
            j.large_value,
            j.unit,
            j.cost_ratio,
            j.paired,
            j.range.0,
            j.range.1,
            if j.invalid.is_some() {
                "not judged (see above)"
            } else if flat(j.paired) {
                "yes"
            } else if j.paired < 1.0 && j.range.1 >= 1.0 {
                "no (large faster: noise, the per-round range spans 1.0)"
            } else {
                "no"
            },
            rs,
            rl
        ));
    }
    md.push_str("\n### Every case\n\n");
    md.push_str("| xgate instance | routes | deny CIDRs | connections | req/s | min-max | p99 | RSS after start | peak RSS under load | start-up |\n");
    md.push_str("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|\n");
    for c in cases {
        let start = memory
            .iter()
            .find(|m| m["instance"] == c.instance.id())
            .and_then(|m| m["start_seconds"].as_f64())
            .unwrap_or(f64::NAN);
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {:.0}-{:.0} | {:.2} ms | {} | {} | {:.1} s |\n",
            c.instance.id(),
            c.instance.routes(),
            c.instance.deny(),
            c.conn.id(),
            c.rps.median(),
            c.rps.min(),
            c.rps.max(),
            c.p99.median() / 1e3,
            mib(mem(memory, c.instance, "rss_kib_idle_after_start")),
            mib(mem(memory, c.instance, "peak_rss_kib_during_load")),
            start,
        ));
    }
    md.push_str("\n| XDP case | ns/packet | min-max |\n|---|---:|---:|\n");
    for c in xdp {
        md.push_str(&format!(
            "| {} | {:.1} | {:.1}-{:.1} |\n",
            c.label,
            c.ns.median(),
            c.ns.min(),
            c.ns.max()
        ));
    }
    md.push_str(&format!(
        "\n### Setup\n\n\
         - Up to ten xgate instances (bench/peers/xgate-scale.yaml; only those of the comparisons run) side by side in a network \
         namespace made for the run (its own loopback; removed after it), each on its own port, \
         in front of the bench upstream (`xgate-bench serve-upstream`, 64-byte body). Routes: \
         `/svc0` ... `/svc9` or `/svc9999` as `path_prefix` routes with `strip_prefix`, the \
         request `GET {ROUTE_PATH}` matching `/svc7` (with 10,000 routes the prefixes have 5 to \
         8 characters). Deny lists: one route `/`, 10 or 100,000 IPv4 CIDRs in `xdp.deny` \
         (prefix lengths: {} / {}), no `xdp.interfaces`, so xgate checks them at accept(); the \
         client (127.0.0.1) is on no list. With `Connection: close` every request is a new \
         connection and pays the check. Consumers: a route `/keyed` with a key-auth policy \
         (`x-api-key`, prefix stripped), 10 or 100,000 consumers with one API key each, the \
         request `GET {KEYED_PATH}` carrying consumer 7's key. Rate-limit keys: one route `/` \
         with a local `rate-limit` keyed by `{RATE_KEY_HEADER}` (1,000,000,000 per hour: never \
         triggered, every key stays counted), a wrk script setting the header to each of 10 or \
         100,000 values in turn. Redis rate-limit keys: the same with `storage: redis` \
         (`redis.timeout` 1 s), counting in a redis-server started in the namespace on the \
         instances' CPU (one batched script call per round trip: see docs/policies.md){}.\n\
         - RSS: VmRSS after start-up, and VmHWM (reset after the warm-up) over the rounds.\n\
         - {}\n\
         - XDP: `xgate_xdp` loaded twice from the workspace's object with private maps, the \
         10 and the 100,000 CIDRs in its deny list (hash maps for /32 and /24, the other \
         lengths in the trie), rate limiting on with a budget never exhausted (as in the `xdp` \
         scenario's pass cases, so the passing source's verdict is cached in its bucket); a UDP frame from \
         {PASS_V4} (on no list) and one from {DENY_V4} (in `{DENY_V4_NET}`, the first CIDR of \
         both lists). Every run checks the verdict and that exactly the expected counter moved \
         by `repeat`.\n",
        info.mixes[0],
        info.mixes[1],
        info.redis.as_ref().map_or(String::new(), |r| format!(
            "; after the run Redis held {} keys, and {} checks were answered without it",
            group(r.keys),
            r.fallbacks
        )),
        crate::flood::idle_note(info.no_deep_idle),
    ));
    Report {
        scenario: "scale",
        json,
        markdown: md,
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn generated_yaml_and_lists() {
        let routes = routes_yaml(Instance::RoutesSmall);
        assert_eq!(routes.matches("path_prefix").count(), SMALL_ROUTES);
        assert!(routes.contains("path_prefix: /svc7 }"), "{routes}");
        assert_eq!(
            routes_yaml(Instance::DenyLarge)
                .matches("path_prefix")
                .count(),
            1
        );
        let list = deny_list(SMALL_DENY).unwrap();
        assert_eq!(list.len(), SMALL_DENY);
        assert!(list
            .iter()
            .all(|n| !n.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST))));
        assert_eq!(deny_yaml(&[]), " []");
        assert!(deny_yaml(&list).starts_with("\n    - 203.0.113.0/24"));
        let text = peers::render(
            TEMPLATE.text,
            &[
                ("PORT", "1".into()),
                ("DIR", "/d".into()),
                ("UPSTREAM", UPSTREAM.into()),
                ("DENY", deny_yaml(&list)),
                ("ROUTES", routes),
                ("CONSUMERS", consumers_yaml(Instance::KeysSmall)),
                ("REDIS", String::new()),
            ],
            false,
        )
        .unwrap();
        assert!(text.contains("  deny:\n    - 203.0.113.0/24\n"), "{text}");
        // The consumers' config is one that xgate accepts.
        let keys = peers::render(
            TEMPLATE.text,
            &[
                ("PORT", "1".into()),
                ("DIR", "/d".into()),
                ("UPSTREAM", UPSTREAM.into()),
                ("DENY", deny_yaml(&[])),
                ("ROUTES", routes_yaml(Instance::KeysSmall)),
                ("CONSUMERS", consumers_yaml(Instance::KeysSmall)),
                ("REDIS", String::new()),
            ],
            false,
        )
        .unwrap();
        let config = gateway_userspace::config::Config::from_yaml(&keys, "scale")
            .unwrap_or_else(|e| panic!("{e}\n{keys}"));
        assert_eq!(config.consumers.len(), SMALL_CONSUMERS);
        assert!(
            config.routes[0].policies.is_none(),
            "the open route, for readiness"
        );
        assert!(config.routes[1].policies.is_some());
        // So is the rate-limit instances'.
        let limited = peers::render(
            TEMPLATE.text,
            &[
                ("PORT", "1".into()),
                ("DIR", "/d".into()),
                ("UPSTREAM", UPSTREAM.into()),
                ("DENY", deny_yaml(&[])),
                ("ROUTES", routes_yaml(Instance::RateKeysLarge)),
                ("CONSUMERS", consumers_yaml(Instance::RateKeysLarge)),
                ("REDIS", String::new()),
            ],
            false,
        )
        .unwrap();
        let config = gateway_userspace::config::Config::from_yaml(&limited, "scale")
            .unwrap_or_else(|e| panic!("{e}\n{limited}"));
        assert!(matches!(
            config.routes[0].policies.as_deref(),
            Some([gateway_userspace::config::Policy::RateLimit(_)])
        ));
        assert_eq!(Instance::KeysSmall.path(), KEYED_PATH);
    }

    /// The Redis instances' config is one xgate accepts, counting in Redis.
    #[test]
    fn redis_rate_limit_instances_count_in_redis() {
        let instance = Instance::RedisRateKeysLarge;
        let text = peers::render(
            TEMPLATE.text,
            &[
                ("PORT", "1".into()),
                ("DIR", "/d".into()),
                ("UPSTREAM", UPSTREAM.into()),
                ("DENY", deny_yaml(&[])),
                ("ROUTES", routes_yaml(instance)),
                ("CONSUMERS", consumers_yaml(instance)),
                (
                    "REDIS",
                    redis_yaml(instance, Some("redis://127.0.0.1:6390")),
                ),
            ],
            false,
        )
        .unwrap();
        let config = gateway_userspace::config::Config::from_yaml(&text, "scale")
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            config.redis.as_ref().map(|r| r.url.as_str()),
            Some("redis://127.0.0.1:6390")
        );
        let Some([gateway_userspace::config::Policy::RateLimit(limit)]) =
            config.routes[0].policies.as_deref()
        else {
            panic!("one rate limit: {text}");
        };
        assert_eq!(limit.storage, gateway_userspace::config::Storage::Redis);
        assert_eq!(instance.rate_keys(), LARGE_RATE_KEYS);
        assert!(redis_yaml(Instance::RateKeysLarge, Some("redis://x")).is_empty());
    }

    #[test]
    fn only_chooses_comparisons() {
        assert_eq!(chosen(None).unwrap(), COMPARISONS);
        assert_eq!(
            chosen(Some("redis-ratelimit-keys,xdp,redis-ratelimit-keys")).unwrap(),
            ["redis-ratelimit-keys", "xdp"]
        );
        let e = chosen(Some("redis")).unwrap_err().to_string();
        assert!(e.contains("`redis`") && e.contains("ratelimit-keys"), "{e}");
        // Every HTTP pair can be named, and names one pair.
        for &(name, ..) in PAIRS {
            assert!(COMPARISONS.contains(&name), "{name}");
        }
        assert_eq!(PAIRS.len() + 1, COMPARISONS.len());
        assert_eq!(group(100_000), "100,000");
        assert_eq!(group(10), "10");
    }
}
