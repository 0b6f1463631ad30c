//! Scenario `policies`: what API policies cost on top of plain proxying:
//! key-auth, an RS256 JWT, a local rate limit that is never triggered, and
//! the three together, against HAProxy (`map_str` key lookup, `jwt_verify`,
//! a stick table), Envoy (`api_key_auth`, `jwt_authn`, `local_ratelimit`)
//! and nginx (`limit_req` only: its open-source build verifies no JWT),
//! configured in bench/peers/haproxy-policies.cfg,
//! bench/peers/envoy-policies.yaml and bench/peers/nginx-policies.conf (one
//! listener per case).
//!
//! xgate's cases are configured in bench/peers/xgate-policies.yaml; it has
//! more: the JWT with its verified-token cache on (`jwt_cached`), the rate
//! limit counted in Redis (`rate_limit_redis`: a redis-server the harness
//! starts on loopback, one script per request), ip-restriction with a
//! 10,000-prefix deny list (`ip_restriction`) and bot detection with the
//! built-in list (`bot_detection`; the agent is a browser's, matched once,
//! then from the decision cache).
//!
//! Every case gets the same request (HTTP/1.1 keep-alive, wrk, 64-byte
//! response) carrying both credentials (`x-api-key` and `Authorization:
//! Bearer`) and a browser's `User-Agent`, so that the plain case differs
//! from the others only by the policy. Each peer's policies are checked
//! before any load: a request without (or with a tampered) credential, from
//! a denied address or with a scanner's agent must be refused, the real one
//! let through. The targets (on xgate): key-auth, the cached JWT, the three
//! together (xgate's JWT with its cache on there, as in `jwt_cached`; the
//! peers have no cache and verify every request), ip-restriction and bot detection at most 15% below plain
//! proxying in req/s, the local rate limit at most 5%, the Redis rate limit
//! at most 25%; the JWT verified on every request at least 1.2x HAProxy's
//! `jwt_verify` req/s.

use std::{io::Read, net::SocketAddr, path::Path};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use xgate_tests::redis::RedisServer;

use crate::{
    keys,
    peers::{self, Binary, Kind},
    proxy::{self, finite, one_line, Case, Fleet, Proto, Tools},
    report::{self, Report},
    stats::ratio,
    sys, upstream, Settings,
};

pub const DEFAULT_ROUNDS: usize = 5;
/// The target: a policy case's req/s at most this far below plain proxying
/// (the rate limits have their own: [`Policy::target`]).
const TARGET_OVERHEAD: f64 = 0.15;
/// A local rate limit never triggered: one counter update per request.
const TARGET_RATE_LIMIT: f64 = 0.05;
/// A rate limit in Redis: one round trip to Redis per request.
const TARGET_RATE_LIMIT_REDIS: f64 = 0.25;
/// The target for the JWT verified on every request: xgate's req/s at least
/// this many times HAProxy's `jwt_verify`.
const TARGET_JWT_VS_HAPROXY: f64 = 1.2;
/// Requests per second per source allowed: far above what one machine's
/// benchmark sends, so the limiter is consulted on every request and never
/// refuses one.
const RATE_LIMIT: u64 = 10_000_000;
/// API keys configured (one consumer each); the benchmark uses one of them.
const API_KEYS: usize = 100;
const CONSUMER: usize = 42;
/// Prefixes in the ip-restriction case's deny list (none holds the
/// benchmark's client but one: 127.0.0.2, for the check before the load).
const IP_DENY_PREFIXES: usize = 10_000;
/// The agent every request carries: an ordinary browser's, so that bot
/// detection matches it against its whole list (then its cache).
const USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    Plain,
    KeyAuth,
    Jwt,
    JwtCached,
    RateLimit,
    RateLimitRedis,
    All,
    IpRestriction,
    BotDetection,
    OpaEmbedded,
    OpaEmbeddedNoMemo,
    OpaRemote,
}

impl Policy {
    const ALL: [Policy; 12] = [
        Policy::Plain,
        Policy::KeyAuth,
        Policy::Jwt,
        Policy::JwtCached,
        Policy::RateLimit,
        Policy::RateLimitRedis,
        Policy::All,
        Policy::IpRestriction,
        Policy::BotDetection,
        Policy::OpaEmbedded,
        Policy::OpaEmbeddedNoMemo,
        Policy::OpaRemote,
    ];

    /// The cases a proxy is configured for.
    fn of(kind: Kind) -> &'static [Policy] {
        match kind {
            Kind::Xgate => &[
                Policy::Plain,
                Policy::KeyAuth,
                Policy::Jwt,
                Policy::JwtCached,
                Policy::RateLimit,
                Policy::RateLimitRedis,
                Policy::All,
                Policy::IpRestriction,
                Policy::BotDetection,
                Policy::OpaEmbedded,
                Policy::OpaEmbeddedNoMemo,
                Policy::OpaRemote,
            ],
            Kind::Nginx => &[Policy::Plain, Policy::RateLimit],
            Kind::Envoy => &[
                Policy::Plain,
                Policy::KeyAuth,
                Policy::Jwt,
                Policy::RateLimit,
                Policy::All,
                Policy::OpaRemote,
            ],
            Kind::Haproxy => &[
                Policy::Plain,
                Policy::KeyAuth,
                Policy::Jwt,
                Policy::RateLimit,
                Policy::All,
            ],
        }
    }

    /// Why `kind` has no row for this case.
    fn missing(self, kind: Kind) -> &'static str {
        match (kind, self) {
            (_, Policy::RateLimitRedis) => "no rate limit shared through Redis",
            (Kind::Nginx, _) => {
                "nginx has no JWT verification or API-key store in its open-source build"
            }
            (_, Policy::JwtCached) => "no verified-token cache (verifies every request)",
            (_, Policy::IpRestriction | Policy::BotDetection) => {
                "xgate's own case: judged against xgate's plain proxying"
            }
            (_, Policy::OpaEmbedded | Policy::OpaEmbeddedNoMemo) => "no embedded Rego evaluation",
            (_, Policy::OpaRemote) => {
                "no external authorization call without a Lua or SPOE agent \
                 (Envoy's ext_authz is the peer of this case)"
            }
            _ => "no listener for this case",
        }
    }

    /// Judged against xgate's own plain case (the JWT verified every time
    /// is judged against HAProxy instead).
    fn judged_by_overhead(self) -> bool {
        matches!(
            self,
            Policy::KeyAuth
                | Policy::JwtCached
                | Policy::RateLimit
                | Policy::RateLimitRedis
                | Policy::All
                | Policy::IpRestriction
                | Policy::BotDetection
                | Policy::OpaEmbedded
        )
    }

    /// The largest req/s overhead over plain proxying the target allows.
    fn target(self) -> f64 {
        match self {
            Policy::RateLimit => TARGET_RATE_LIMIT,
            Policy::RateLimitRedis => TARGET_RATE_LIMIT_REDIS,
            _ => TARGET_OVERHEAD,
        }
    }

    fn id(self) -> &'static str {
        match self {
            Policy::Plain => "plain",
            Policy::KeyAuth => "key_auth",
            Policy::Jwt => "jwt",
            Policy::JwtCached => "jwt_cached",
            Policy::RateLimit => "rate_limit",
            Policy::RateLimitRedis => "rate_limit_redis",
            Policy::All => "all",
            Policy::IpRestriction => "ip_restriction",
            Policy::BotDetection => "bot_detection",
            Policy::OpaEmbedded => "opa_embedded",
            Policy::OpaEmbeddedNoMemo => "opa_embedded_no_memo",
            Policy::OpaRemote => "opa_remote",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Policy::Plain => "plain proxying (no policy)",
            Policy::KeyAuth => "key-auth (x-api-key, 100 keys)",
            Policy::Jwt => "RS256 JWT (signature, iss, aud, exp), every request",
            Policy::JwtCached => "RS256 JWT, verified-token cache on",
            Policy::RateLimit => "local rate limit (not triggered)",
            Policy::RateLimitRedis => "rate limit in Redis (not triggered)",
            Policy::All => "key-auth + JWT + rate limit (xgate: JWT cache on)",
            Policy::IpRestriction => "ip-restriction (10,000 deny prefixes)",
            Policy::BotDetection => "bot detection with the built-in list",
            Policy::OpaEmbedded => "OPA, embedded Rego (small allow policy)",
            Policy::OpaEmbeddedNoMemo => {
                "OPA, embedded Rego, memo off (every request evaluated; reported, no target)"
            }
            Policy::OpaRemote => {
                "OPA, remote (bench policy server; xgate: OPA's data API, Envoy: ext_authz)"
            }
        }
    }

    /// The template variable holding this case's port.
    fn port_var(self) -> &'static str {
        match self {
            Policy::Plain => "PLAIN_PORT",
            Policy::KeyAuth => "KEY_AUTH_PORT",
            Policy::Jwt => "JWT_PORT",
            Policy::JwtCached => "JWT_CACHED_PORT",
            Policy::RateLimit => "RATE_LIMIT_PORT",
            Policy::RateLimitRedis => "RATE_LIMIT_REDIS_PORT",
            Policy::All => "ALL_PORT",
            Policy::IpRestriction => "IP_RESTRICTION_PORT",
            Policy::BotDetection => "BOT_DETECTION_PORT",
            Policy::OpaEmbedded => "OPA_EMBEDDED_PORT",
            Policy::OpaEmbeddedNoMemo => "OPA_EMBEDDED_NO_MEMO_PORT",
            Policy::OpaRemote => "OPA_REMOTE_PORT",
        }
    }

    /// Whether only xgate's template has this case.
    #[cfg(test)]
    fn xgate_only(self) -> bool {
        matches!(
            self,
            Policy::JwtCached
                | Policy::IpRestriction
                | Policy::BotDetection
                | Policy::OpaEmbedded
                | Policy::OpaEmbeddedNoMemo
        )
    }
}

/// Every `{{NAME}}` the policy templates use besides the proxy ones.
#[cfg(test)]
pub fn template_variable_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Policy::ALL.iter().map(|p| p.port_var()).collect();
    names.extend([
        "API_KEYS_MAP",
        "ENVOY_API_KEYS",
        "JWT_PUBLIC_KEY",
        "JWKS",
        "JWT_ISSUER",
        "JWT_AUDIENCE",
        "RATE_LIMIT",
        "REDIS_URL",
        "XGATE_CONSUMERS",
        "IP_DENY_LIST",
        "OPA_POLICY",
        "OPA_SERVER",
        "OPA_SERVER_PORT",
    ]);
    names
}

/// Credentials of the run: the keys, the signing key, one consumer's token.
struct Credentials {
    keys: Vec<String>,
    jwt: keys::JwtKeys,
    token: String,
    keys_map: std::path::PathBuf,
    /// The small allow policy of the opa cases.
    opa_policy: std::path::PathBuf,
}

/// The opa cases' policy: allow GET unless the request says it must be
/// refused (so the check before the load can see a refusal).
const OPA_POLICY: &str = "package bench\n\n\
default allow := false\n\n\
allow if {\n\
    input.request.http.method == \"GET\"\n\
    not input.request.http.headers[\"x-bench-deny\"]\n\
}\n";

impl Credentials {
    fn create(dir: &Path) -> Result<Self> {
        let mut random = vec![0u8; 16 * API_KEYS];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
        let keys: Vec<String> = random
            .chunks(16)
            .map(|c| c.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        let keys_map = dir.join("api-keys.map");
        let map: String = keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{k} consumer-{i}\n"))
            .collect();
        std::fs::write(&keys_map, map)?;
        let jwt = keys::jwt_keys(dir)?;
        let token = keys::rs256_token(&jwt, &format!("consumer-{CONSUMER}"));
        let opa_policy = dir.join("bench.rego");
        std::fs::write(&opa_policy, OPA_POLICY)?;
        Ok(Self {
            keys,
            jwt,
            token,
            keys_map,
            opa_policy,
        })
    }

    fn api_key(&self) -> &str {
        &self.keys[CONSUMER]
    }

    /// The headers every benchmark request carries.
    fn headers(&self) -> Vec<String> {
        vec![
            format!("x-api-key: {}", self.api_key()),
            format!("Authorization: Bearer {}", self.token),
            format!("User-Agent: {USER_AGENT}"),
        ]
    }

    /// xgate's `consumers:` as one YAML flow list: a consumer per key, and
    /// the token's subject holding the JWT key of the issuer.
    fn xgate_consumers(&self) -> String {
        let entries: Vec<String> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let jwt = if i == CONSUMER {
                    format!(
                        ", jwt: [{{issuer: \"{}\", algorithm: RS256, public_key_file: \"{}\"}}]",
                        keys::ISSUER,
                        self.jwt.public.display()
                    )
                } else {
                    String::new()
                };
                format!("{{username: consumer-{i}, keys: [{{key: \"{k}\"}}]{jwt}}}")
            })
            .collect();
        format!("[{}]", entries.join(", "))
    }

    fn envoy_list(&self) -> String {
        let entries: Vec<String> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{{key: \"{k}\", client: \"consumer-{i}\"}}"))
            .collect();
        format!("[{}]", entries.join(", "))
    }
}

/// A started policy peer: its ports per case.
struct PolicyPeer {
    kind: Kind,
    binary: Option<Binary>,
    server: Option<usize>,
    unavailable: Option<String>,
    ports: Vec<(Policy, u16)>,
    /// Per case: why its policy check failed.
    broken: Vec<(Policy, String)>,
}

fn start_peer(
    kind: Kind,
    dir: &Path,
    fleet: &mut Fleet,
    upstream_port: u16,
    creds: &Credentials,
    redis_url: &str,
) -> PolicyPeer {
    let mut peer = PolicyPeer {
        kind,
        binary: None,
        server: None,
        unavailable: None,
        ports: Vec::new(),
        broken: Vec::new(),
    };
    let binary = match peers::find(kind) {
        Ok(b) => b,
        Err(e) => {
            peer.unavailable = Some(format!("{e:#}"));
            return peer;
        }
    };
    let mut vars: Vec<(&str, String)> = vec![("UPSTREAM_PORT", upstream_port.to_string())];
    for &policy in Policy::of(kind) {
        match xgate_tests::ports::free_tcp_port() {
            Ok(port) => {
                peer.ports.push((policy, port));
                vars.push((policy.port_var(), port.to_string()));
            }
            Err(e) => {
                peer.unavailable = Some(format!("{e:#}"));
                return peer;
            }
        }
    }
    let plain_port = peer.ports[0].1;
    let template = match kind {
        Kind::Xgate => peers::XGATE_POLICIES,
        Kind::Haproxy => peers::HAPROXY_POLICIES,
        Kind::Envoy => peers::ENVOY_POLICIES,
        Kind::Nginx => peers::NGINX_POLICIES,
    };
    vars.extend([
        ("API_KEYS_MAP", creds.keys_map.display().to_string()),
        ("ENVOY_API_KEYS", creds.envoy_list()),
        ("JWT_PUBLIC_KEY", creds.jwt.public.display().to_string()),
        ("JWKS", creds.jwt.jwks.clone()),
        ("JWT_ISSUER", keys::ISSUER.to_string()),
        ("JWT_AUDIENCE", keys::AUDIENCE.to_string()),
        ("RATE_LIMIT", RATE_LIMIT.to_string()),
        ("REDIS_URL", redis_url.to_string()),
        ("XGATE_CONSUMERS", creds.xgate_consumers()),
        ("IP_DENY_LIST", ip_deny_list()),
        ("OPA_POLICY", creds.opa_policy.display().to_string()),
    ]);
    // The remote opa case's policy server: xgate asks its data API, Envoy
    // its ext_authz endpoint; each proxy has its own.
    if Policy::of(kind).contains(&Policy::OpaRemote) {
        match start_policy_server(dir, kind, &creds.opa_policy) {
            Ok((server, port)) => {
                fleet.servers.push(peers::Instance { process: server });
                vars.push(("OPA_SERVER", format!("http://127.0.0.1:{port}")));
                vars.push(("OPA_SERVER_PORT", port.to_string()));
            }
            Err(e) => {
                peer.unavailable = Some(format!("the bench policy server: {e:#}"));
                return peer;
            }
        }
    }
    let instance = match peers::start(
        kind,
        &binary,
        template,
        &dir.join(kind.id()),
        &vars,
        false,
        plain_port,
    ) {
        Ok(i) => i,
        Err(e) => {
            peer.unavailable = Some(format!("did not start: {e:#}"));
            return peer;
        }
    };
    for &(policy, port) in &peer.ports {
        if let Err(e) = check_policy(policy, port, creds) {
            eprintln!(
                "\n******** {} {}: the policy does not behave as configured: {e:#} ********\n",
                kind.name(),
                policy.id()
            );
            peer.broken.push((policy, format!("{e:#}")));
        }
    }
    fleet.servers.push(instance);
    peer.server = Some(fleet.servers.len() - 1);
    peer.binary = Some(binary);
    peer
}

/// The ip-restriction case's deny list as a YAML flow list: /24s in
/// 10.0.0.0/8 and 127.0.0.2, the address the check before the load is
/// refused from.
fn ip_deny_list() -> String {
    let mut entries: Vec<String> = (0..IP_DENY_PREFIXES - 1)
        .map(|i| format!("'10.{}.{}.0/24'", i >> 8, i & 0xff))
        .collect();
    entries.push("'127.0.0.2'".into());
    format!("[{}]", entries.join(", "))
}

/// A GET from `source` (a loopback address of the caller's choosing).
fn status_from(source: &str, addr: SocketAddr, headers: &[String]) -> Result<u16> {
    let mut request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n",
        upstream::SMALL_PATH
    );
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let source = SocketAddr::new(source.parse()?, 0);
    let response = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(xgate_tests::http::send(addr, Some(source), &request))?;
    Ok(response.status)
}

/// The real credentials get 200 and the body; a request missing (or with a
/// tampered) credential the policy checks gets 401 or 403, as does one
/// the access policies refuse.
fn check_policy(policy: Policy, port: u16, creds: &Credentials) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let good = creds.headers();
    let r = peers::http_get(addr, upstream::SMALL_PATH, &good)?;
    if r.status != 200 || r.body != upstream::SMALL_BODY {
        bail!(
            "with valid credentials: {} ({} bytes), expected 200 and the body",
            r.status,
            r.body.len()
        );
    }
    let key = good[0].clone();
    let bearer = good[1].clone();
    let mut refused: Vec<(&str, Vec<String>)> = Vec::new();
    if policy == Policy::IpRestriction {
        let status = status_from("127.0.0.2", addr, &good)?;
        if status != 403 {
            bail!("a request from a denied address got {status}, expected 403");
        }
    }
    if policy == Policy::BotDetection {
        refused.push((
            "a scanner's User-Agent",
            vec![
                key.clone(),
                bearer.clone(),
                "User-Agent: sqlmap/1.7.2".into(),
            ],
        ));
    }
    if matches!(policy, Policy::KeyAuth | Policy::All) {
        refused.push(("no x-api-key", vec![bearer.clone()]));
        refused.push((
            "an unknown x-api-key",
            vec![
                "x-api-key: 00000000000000000000000000000000".into(),
                bearer.clone(),
            ],
        ));
    }
    if matches!(policy, Policy::Jwt | Policy::JwtCached | Policy::All) {
        refused.push(("no token", vec![key.clone()]));
        refused.push((
            "a tampered token",
            vec![
                key.clone(),
                format!("Authorization: Bearer {}", keys::tampered(&creds.token)),
            ],
        ));
    }
    if matches!(
        policy,
        Policy::OpaEmbedded | Policy::OpaEmbeddedNoMemo | Policy::OpaRemote
    ) {
        let mut denied = good.clone();
        denied.push("x-bench-deny: 1".into());
        refused.push(("x-bench-deny (the policy refuses it)", denied));
    }
    for (what, headers) in refused {
        let r = peers::http_get(addr, upstream::SMALL_PATH, &headers)?;
        if r.status != 401 && r.status != 403 {
            bail!(
                "a request with {what} got {}, expected 401 or 403",
                r.status
            );
        }
    }
    Ok(())
}

/// The OPA-compatible policy server of `kind`'s remote opa case
/// (`xgate-bench serve-policy`, regorus behind OPA's data API and Envoy's
/// ext_authz check), serving `policy`.
fn start_policy_server(dir: &Path, kind: Kind, policy: &Path) -> Result<(sys::Spawned, u16)> {
    let port = xgate_tests::ports::free_tcp_port()?;
    let exe = std::env::current_exe().context("finding the harness's own executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(crate::SERVE_POLICY)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--policy", &policy.display().to_string()]);
    let mut process = sys::Spawned::start(
        "bench policy server",
        cmd,
        &dir.join(format!("policy-server-{}.log", kind.id())),
    )?;
    // Ready once it answers HTTP at all: it serves OPA's data API, not the
    // upstream's `GET /small` that `peers::wait_ready` asks for.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        sys::check_interrupted()?;
        process.check_running()?;
        match peers::http_get(addr, "/", &[]) {
            Ok(_) => return Ok((process, port)),
            Err(e) if std::time::Instant::now() >= deadline => {
                bail!(
                    "the bench policy server did not answer on {addr} within 10 s ({e:#}); \
                     end of its log:\n{}",
                    process.log_tail(20)
                )
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}

/// The policies' part of the profile-guided build's training (`xgate-bench
/// pgo-train`): xgate with this scenario's config, each policy case's load
/// for `seconds`, every response checked. Without it the policy code would
/// have no profile and be compiled as cold.
pub fn train(seconds: u64) -> Result<()> {
    let tmp = sys::temp_dir("pgo-train-policies")?;
    let tools = Tools::new(tmp.path())?;
    let creds = Credentials::create(tmp.path()).context("making the credentials")?;
    let (upstream_process, upstream_port) = peers::start_upstream(tmp.path())?;
    let mut fleet = Fleet {
        upstream: upstream_process,
        servers: Vec::new(),
    };
    let redis = RedisServer::start();
    let peer = start_peer(
        Kind::Xgate,
        tmp.path(),
        &mut fleet,
        upstream_port,
        &creds,
        &redis.url(),
    );
    if let Some(why) = &peer.unavailable {
        bail!("cannot train on the policies: xgate {why}");
    }
    if let Some((policy, why)) = peer.broken.first() {
        bail!("cannot train on {}: {why}", policy.id());
    }
    for &(policy, port) in &peer.ports {
        if policy == Policy::Plain {
            continue;
        }
        let mut case = Case::new(policy.id(), "xgate", "xgate", Proto::H1);
        case.headers = creds.headers();
        case.min_bytes = upstream::SMALL_BODY.len();
        case.server = peer.server;
        case.url = format!("http://127.0.0.1:{port}{}", upstream::SMALL_PATH);
        let sample = proxy::measure(&mut fleet, &tools, &case, seconds)?;
        eprintln!(
            "    trained on {}: {:.0} req/s",
            policy.title(),
            sample.load.rps
        );
    }
    drop(fleet);
    Ok(())
}

pub fn run(settings: &Settings) -> Result<Report> {
    sys::unpin();
    let rounds = settings.rounds_or(DEFAULT_ROUNDS);
    let seconds = settings.duration_or(proxy::DEFAULT_DURATION_S);
    let started = report::utc_now();
    let tmp = sys::temp_dir("policies")?;
    let tools = Tools::new(tmp.path())?;
    eprintln!("    generating {API_KEYS} API keys and an RS256 key pair and token (openssl)");
    let creds = Credentials::create(tmp.path()).context("making the credentials")?;

    eprintln!("    starting the bench upstream");
    let (upstream_process, upstream_port) = peers::start_upstream(tmp.path())?;
    let mut fleet = Fleet {
        upstream: upstream_process,
        servers: Vec::new(),
    };
    eprintln!("    starting redis-server (xgate's rate_limit_redis case)");
    let redis = RedisServer::start();
    let mut found = Vec::new();
    for kind in [Kind::Xgate, Kind::Haproxy, Kind::Envoy, Kind::Nginx] {
        eprintln!("    starting {}", kind.name());
        let peer = start_peer(
            kind,
            tmp.path(),
            &mut fleet,
            upstream_port,
            &creds,
            &redis.url(),
        );
        if let Some(why) = &peer.unavailable {
            eprintln!(
                "\n******** {} is NOT AVAILABLE; its rows say why: {why} ********\n",
                kind.name()
            );
        }
        found.push(peer);
    }

    let mut cases = Vec::new();
    for policy in Policy::ALL {
        for peer in &found {
            let label = match &peer.binary {
                Some(b) => format!("{} {}", peer.kind.name(), b.version),
                None => peer.kind.name().to_string(),
            };
            let mut case = Case::new(policy.id(), peer.kind.id(), &label, Proto::H1);
            case.headers = creds.headers();
            case.min_bytes = upstream::SMALL_BODY.len();
            case.server = peer.server;
            case.unavailable = peer.unavailable.clone();
            if let Some((_, why)) = peer.broken.iter().find(|(p, _)| *p == policy) {
                case.failed = Some(format!("policy check before the load: {why}"));
            }
            match peer.ports.iter().find(|(p, _)| *p == policy) {
                Some((_, port)) => {
                    case.url = format!("http://127.0.0.1:{port}{}", upstream::SMALL_PATH)
                }
                None => {
                    case.unavailable
                        .get_or_insert_with(|| policy.missing(peer.kind).into());
                }
            }
            cases.push(case);
        }
    }

    proxy::run_rounds(&mut fleet, &tools, &mut cases, rounds, seconds)?;
    // A Redis check that timed out was counted locally: such a run measured
    // (partly) the fallback, not Redis, and is not judged.
    let admin = tmp.path().join(Kind::Xgate.id()).join("admin.sock");
    if let Some(case) = cases
        .iter_mut()
        .find(|c| c.group == Policy::RateLimitRedis.id() && c.target == "xgate" && c.ok())
    {
        match redis_fallbacks(&admin) {
            Ok(n) => case.failed = not_redis(n),
            Err(e) => case.failed = Some(format!("cannot read xgate's metrics: {e:#}")),
        }
    }
    drop(fleet);
    Ok(build_report(
        &cases, &found, &tools, rounds, seconds, &started, &creds,
    ))
}

/// `xgate_rate_limit_redis_fallbacks_total`, all actions, from the admin
/// API's metrics.
pub(crate) fn redis_fallbacks(admin_socket: &Path) -> Result<f64> {
    use std::io::Write;
    let mut stream = std::os::unix::net::UnixStream::connect(admin_socket)
        .with_context(|| format!("connecting to {}", admin_socket.display()))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    if !text.starts_with("HTTP/1.1 200") {
        bail!("GET /metrics: {}", one_line(&text));
    }
    Ok(fallbacks_in(&text))
}

/// Why a run in which `fallbacks` checks were answered without Redis
/// (counted locally) is not a measurement of Redis; none when every check
/// reached it.
pub(crate) fn not_redis(fallbacks: f64) -> Option<String> {
    (fallbacks > 0.0).then(|| {
        format!(
            "{fallbacks} checks fell back to local counting (Redis did not answer within \
             redis.timeout): not a measurement of Redis"
        )
    })
}

fn fallbacks_in(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("xgate_rate_limit_redis_fallbacks_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A policy case's req/s overhead over the same proxy's plain case
/// (0.10 = 10% fewer requests per second), if both were measured.
fn overhead(cases: &[Case], case: &Case) -> Option<f64> {
    let plain = cases
        .iter()
        .find(|c| c.group == Policy::Plain.id() && c.target == case.target)?;
    if !plain.ok() || !case.ok() {
        return None;
    }
    Some(1.0 - ratio(case.rps().median(), plain.rps().median()))
}

fn plain_of<'a>(cases: &'a [Case], case: &Case) -> Option<&'a Case> {
    cases
        .iter()
        .find(|c| c.group == Policy::Plain.id() && c.target == case.target && c.ok())
}

fn build_report(
    cases: &[Case],
    peers_found: &[PolicyPeer],
    tools: &Tools,
    rounds: usize,
    seconds: u64,
    started: &str,
    creds: &Credentials,
) -> Report {
    let machine = report::machine();
    let mut md = String::from("## API policies (`xgate-bench policies`)\n\n");
    md.push_str(&format!(
        "Run {started} on {} cores ({}), kernel `{}`. What key-auth, an RS256 JWT and a local \
         rate limit cost on top of plain proxying, each proxy against its own plain case. Same \
         upstream and load as the `proxy` scenario's HTTP/1.1 64-byte case ({}, {} threads, {} \
         keep-alive connections; {}; medians). Every request of every case carries the same `x-api-key`, \
         `Authorization: Bearer` and (a browser's) `User-Agent` headers, so the cases differ only by the policy.\n\n",
        machine["cores"],
        machine["cpu"].as_str().unwrap_or("?"),
        machine["kernel"].as_str().unwrap_or("?"),
        tools.wrk.version,
        proxy::H1_THREADS,
        proxy::H1_CONNECTIONS,
        proxy::schedule_text(rounds, seconds),
    ));
    let verdict = overhead_verdict(cases);
    let jwt_verdict = jwt_verdict(cases);
    md.push_str(&format!(
        "**Target (xgate: key-auth, the cached JWT, all three, ip-restriction and bot \
         detection at most {:.0}% below xgate's plain proxying in req/s; the local rate limit \
         at most {:.0}%, the rate limit in Redis at most {:.0}%): {verdict}.**\n\n\
         **Target (xgate: the JWT verified on every request at least {TARGET_JWT_VS_HAPROXY}x \
         HAProxy's `jwt_verify` req/s): {jwt_verdict}.**\n\n",
        TARGET_OVERHEAD * 100.0,
        TARGET_RATE_LIMIT * 100.0,
        TARGET_RATE_LIMIT_REDIS * 100.0,
    ));
    let opa_remote = opa_remote_comparison(cases);
    md.push_str(&format!(
        "Remote OPA (reported, no target): {opa_remote}.\n\n"
    ));
    let (disturbed, disturbance_json) = proxy::disturbance(cases);
    if !disturbed.is_empty() {
        md.push_str(&disturbed);
        md.push_str("\n\n");
    }
    md.push_str(
        "| proxy | case | req/s (median) | min-max | p50 ms | p99 ms | CPU s / 100k req \
         | req/s overhead vs plain | CPU vs plain | p99 vs plain | within target |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    let mut notes = Vec::new();
    for peer in peers_found {
        for policy in Policy::ALL {
            let Some(case) = cases
                .iter()
                .find(|c| c.group == policy.id() && c.target == peer.kind.id())
            else {
                continue;
            };
            let name = &case.label;
            if let Some(why) = case.unavailable.as_ref().or(case.failed.as_ref()) {
                let state = if case.unavailable.is_some() {
                    "not available"
                } else {
                    "failed"
                };
                let target = if case.target == "xgate" && policy != Policy::Plain {
                    "not judged"
                } else {
                    "-"
                };
                md.push_str(&format!(
                    "| {name} | {} | {state}: {} | | | | | | | | {target} |\n",
                    policy.title(),
                    one_line(why)
                ));
                if case.failed.is_some() {
                    notes.push(format!("{name}, {}: {}", policy.id(), one_line(why)));
                }
                continue;
            }
            let rps = case.rps();
            let plain = plain_of(cases, case);
            let (over, cpu_vs, p99_vs, within) = match (policy, plain, overhead(cases, case)) {
                (Policy::Plain, _, _) => ("-".into(), "-".into(), "-".into(), "-".into()),
                (_, Some(plain), Some(o)) => {
                    let cpu = case
                        .cpu_per_100k()
                        .zip(plain.cpu_per_100k())
                        .map(|(a, b)| format!("{:+.0}%", (ratio(a, b) - 1.0) * 100.0))
                        .unwrap_or_else(|| "-".into());
                    let within = if case.target == "xgate" && policy == Policy::OpaRemote {
                        "vs Envoy"
                    } else if policy == Policy::OpaEmbeddedNoMemo {
                        "reported"
                    } else if case.target == "xgate" && !policy.judged_by_overhead() {
                        "vs HAProxy"
                    } else if o <= policy.target() {
                        "yes"
                    } else if case.target == "xgate" {
                        "**NO**"
                    } else {
                        "no"
                    };
                    (
                        format!("{:.1}%", o * 100.0),
                        cpu,
                        format!("{:.2}x", ratio(case.p99_ms(), plain.p99_ms())),
                        within.to_string(),
                    )
                }
                _ => ("-".into(), "-".into(), "-".into(), "-".into()),
            };
            md.push_str(&format!(
                "| {name} | {} | {:.0} | {:.0}-{:.0} | {:.2} | {:.2} | {} | {over} | {cpu_vs} | {p99_vs} | {within} |\n",
                policy.title(),
                rps.median(),
                rps.min(),
                rps.max(),
                case.p50_ms(),
                case.p99_ms(),
                case.cpu_per_100k()
                    .map(|c| format!("{c:.2}"))
                    .unwrap_or_else(|| "-".into()),
            ));
        }
    }
    if !notes.is_empty() {
        md.push('\n');
        for n in notes {
            md.push_str(&format!("- failed: {n}\n"));
        }
    }
    md.push_str(&format!(
        "\nThe targets apply to xgate; the peers' \"within target\" is for reference. \
         \"overhead\" is 1 - (case req/s / plain req/s) of the same proxy; CPU is the proxy's \
         utime+stime per 100,000 requests.\n\n\
         ### Setup\n\n\
         - Configs: [bench/peers/haproxy-policies.cfg](peers/haproxy-policies.cfg), \
         [bench/peers/envoy-policies.yaml](peers/envoy-policies.yaml), \
         [bench/peers/nginx-policies.conf](peers/nginx-policies.conf) and \
         [bench/peers/xgate-policies.yaml](peers/xgate-policies.yaml), one listener per case, \
         the same upstream, timeouts and forwarding headers as the `proxy` scenario's configs; \
         xgate's plain case uses [bench/peers/xgate.yaml](peers/xgate.yaml).\n\
         - Key-auth: {API_KEYS} random 128-bit keys (HAProxy: a `map_str` lookup in a map file; \
         Envoy: `api_key_auth` credentials), the request carries one in `x-api-key`.\n\
         - JWT: RS256 with a 2048-bit RSA key generated by openssl at run time (HAProxy: \
         `jwt_verify` with the public key PEM, then `alg`, `iss`, `aud` and `exp` checked; Envoy: \
         `jwt_authn` with the key as an inline JWKS, `issuer` and `audiences` set, no JWT cache). \
         Every request carries the same token and both verify its signature on every request.\n\
         - Key-auth + JWT + rate limit (`all`): the three policies in one chain (the local rate \
         limit). xgate's JWT there has its verified-token cache on, as in the `jwt_cached` row \
         (the all-three target is for the cached path); HAProxy and Envoy have no such cache and \
         verify the signature on every request, as in their `jwt` rows.\n\
         - Rate limit: {} requests/s (never reached). xgate counts per client address \
         (`type: rate-limit`, sliding window of 1 s, `key: [ip]`), in memory (`rate_limit`) or \
         in a redis-server the harness starts on loopback (`rate_limit_redis`: one atomic script, \
         one round trip per request); HAProxy counts per source address in a stick table \
         (`http_req_rate(1s)`); nginx's `limit_req` per source address in a shared-memory zone; \
         Envoy's `local_ratelimit` is one token bucket for all clients. With one client address \
         these are the same work per request. nginx has no JWT verification or API-key store in \
         its open-source build: only its plain and rate-limit rows are measured.\n\
         - xgate only: ip-restriction with {IP_DENY_PREFIXES} deny prefixes (none holds the \
         client); bot detection with the built-in signature list and its decision cache (the \
         in-process cost per agent, cache hit and miss with 1,000 patterns, is the `bots` \
         scenario).\n\
         - OPA: one small Rego policy (allow GET unless `x-bench-deny` is present). xgate \
         evaluates it in process (`opa_embedded`, regorus) or asks the bench policy server \
         (`xgate-bench serve-policy`: regorus behind OPA's REST API) with `POST \
         /v1/data/bench/allow` (`opa_remote`, pooled keep-alive connections). Envoy's peer of the \
         remote case is `ext_authz` in HTTP-service mode against the same server (its own \
         instance): Envoy sends the original method, path and all headers to the server's \
         ext_authz endpoint, which evaluates the same policy on an input shaped as xgate's and \
         answers 200 or 403. No `cache:` on either side; xgate's embedded case runs with its \
         defaults, so its memo (decisions of a pure policy remembered by the exact input it \
         reads: here the method and `x-bench-deny`, the same on every request) answers all but \
         the first request; `opa_embedded_no_memo` turns the memo off and evaluates every \
         request (reported, no target).\n\
         - Before the load, each case is checked: the real credentials get 200 and the body; a \
         request without the key, with an unknown key, without the token or with a tampered \
         token, from a denied address or with a scanner's agent gets 401/403 where that policy \
         applies.\n",
        group_digits(RATE_LIMIT)
    ));
    for peer in peers_found {
        md.push_str(&format!(
            "- {}: {}.\n",
            peer.kind.name(),
            peer.binary
                .as_ref()
                .map(|b| b.full_version.clone())
                .unwrap_or_else(|| format!(
                    "not available: {}",
                    one_line(peer.unavailable.as_deref().unwrap_or("?"))
                ))
        ));
    }
    let json = json!({
        "date": started,
        "machine": machine,
        "rounds": rounds,
        "seconds_per_run": seconds,
        "warm_up_seconds": proxy::WARM_UP_S,
        "load": {"tool": tools.wrk.version, "threads": proxy::H1_THREADS, "connections": proxy::H1_CONNECTIONS, "path": upstream::SMALL_PATH},
        "api_keys": API_KEYS,
        "rate_limit_per_second": RATE_LIMIT,
        "other_processes_user_cpu": disturbance_json,
        "jwt": {"alg": "RS256", "rsa_bits": 2048, "issuer": keys::ISSUER, "audience": keys::AUDIENCE, "token_bytes": creds.token.len()},
        "target": {
            "rule": format!("xgate: each policy case's req/s at most {:.0}% below xgate's plain proxying (local rate limit {:.0}%, rate limit in Redis {:.0}%)", TARGET_OVERHEAD * 100.0, TARGET_RATE_LIMIT * 100.0, TARGET_RATE_LIMIT_REDIS * 100.0),
            "verdict": verdict,
            "jwt_rule": format!("xgate: the JWT verified on every request at least {TARGET_JWT_VS_HAPROXY}x HAProxy's jwt_verify req/s"),
            "jwt_verdict": jwt_verdict,
            "opa_remote": opa_remote,
        },
        "proxies": peers_found.iter().map(|p| json!({
            "proxy": p.kind.id(),
            "version": p.binary.as_ref().map(|b| b.full_version.clone()),
            "unavailable": p.unavailable,
            "policy_checks_failed": p.broken.iter().map(|(pol, why)| json!({"case": pol.id(), "why": why})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "cases": cases.iter().map(|c| {
            let mut v = c.json();
            v["rps_overhead_vs_plain"] = overhead(cases, c).and_then(finite).map_or(Value::Null, |o| json!(o));
            v
        }).collect::<Vec<_>>(),
    });
    Report {
        scenario: "policies",
        json,
        markdown: md,
    }
}

/// The overhead target over xgate's cases judged by it: met, NOT met, or
/// why not (fully) judged.
fn overhead_verdict(cases: &[Case]) -> String {
    let rows: Vec<(&Case, Policy)> = cases
        .iter()
        .filter(|c| c.target == "xgate")
        .filter_map(|c| {
            let policy = Policy::ALL.into_iter().find(|p| p.id() == c.group)?;
            policy.judged_by_overhead().then_some((c, policy))
        })
        .collect();
    let mut judged = Vec::new();
    let mut missing = Vec::new();
    for (case, policy) in &rows {
        match overhead(cases, case) {
            Some(o) => judged.push((*policy, o)),
            None => missing.push(format!(
                "{} ({})",
                policy.id(),
                one_line(
                    case.unavailable
                        .as_deref()
                        .or(case.failed.as_deref())
                        .unwrap_or("not measured")
                )
            )),
        }
    }
    let over: Vec<String> = judged
        .iter()
        .filter(|(policy, o)| *o > policy.target())
        .map(|(policy, o)| {
            format!(
                "{} {:.1}% (target {:.0}%)",
                policy.id(),
                o * 100.0,
                policy.target() * 100.0
            )
        })
        .collect();
    let state = if judged.is_empty() {
        "not judged".to_string()
    } else if over.is_empty() {
        format!(
            "met for {}",
            judged
                .iter()
                .map(|(policy, _)| policy.id())
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        format!("NOT met ({})", over.join(", "))
    };
    if missing.is_empty() {
        state
    } else {
        format!("{state}; not judged: {}", missing.join("; "))
    }
}

/// xgate's JWT verified on every request against HAProxy's `jwt_verify`.
fn jwt_verdict(cases: &[Case]) -> String {
    let find = |target: &str| {
        cases
            .iter()
            .find(|c| c.group == Policy::Jwt.id() && c.target == target && c.ok())
    };
    match (find("xgate"), find("haproxy")) {
        (Some(ours), Some(theirs)) => {
            let r = ratio(ours.rps().median(), theirs.rps().median());
            let state = if r >= TARGET_JWT_VS_HAPROXY {
                "met"
            } else {
                "NOT met"
            };
            format!("{state} at {r:.2}x")
        }
        (None, _) => "not judged: xgate's JWT case was not measured".into(),
        (_, None) => "not judged: HAProxy's JWT case was not measured".into(),
    }
}

/// xgate's remote OPA (OPA's data API) against Envoy's ext_authz, both
/// asking the same kind of bench policy server.
fn opa_remote_comparison(cases: &[Case]) -> String {
    let find = |target: &str| {
        cases
            .iter()
            .find(|c| c.group == Policy::OpaRemote.id() && c.target == target && c.ok())
    };
    match (find("xgate"), find("envoy")) {
        (Some(ours), Some(theirs)) => format!(
            "xgate {:.0} req/s, Envoy's ext_authz {:.0} req/s: {:.2}x",
            ours.rps().median(),
            theirs.rps().median(),
            ratio(ours.rps().median(), theirs.rps().median())
        ),
        (None, _) => "not compared: xgate's remote OPA case was not measured".into(),
        (_, None) => "not compared: Envoy's ext_authz case was not measured".into(),
    }
}

/// 10000000 -> "10,000,000".
fn group_digits(n: u64) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_has_its_own_port_variable() {
        let vars: Vec<&str> = Policy::ALL.iter().map(|p| p.port_var()).collect();
        let mut unique = vars.clone();
        unique.dedup();
        assert_eq!(unique.len(), vars.len());
        for name in template_variable_names() {
            for t in [peers::HAPROXY_POLICIES, peers::ENVOY_POLICIES] {
                // xgate's own cases and consumers are in its template.
                let xgate_case = Policy::ALL
                    .iter()
                    .any(|p| p.xgate_only() && p.port_var() == name);
                if xgate_case
                    || matches!(
                        name,
                        "JWT_CACHED_PORT"
                            | "XGATE_CONSUMERS"
                            | "IP_DENY_LIST"
                            | "RATE_LIMIT_REDIS_PORT"
                            | "REDIS_URL"
                            | "OPA_EMBEDDED_PORT"
                            | "OPA_POLICY"
                            | "OPA_SERVER"
                    )
                {
                    continue;
                }
                if name == "API_KEYS_MAP" && t.file.starts_with("envoy")
                    || (name == "ENVOY_API_KEYS" || name == "JWKS") && t.file.starts_with("haproxy")
                    || name == "JWT_PUBLIC_KEY" && t.file.starts_with("envoy")
                    || (name == "OPA_REMOTE_PORT" || name == "OPA_SERVER_PORT")
                        && t.file.starts_with("haproxy")
                {
                    continue;
                }
                assert!(
                    t.text.contains(&format!("{{{{{name}}}}}")),
                    "{} does not use {{{{{name}}}}}",
                    t.file
                );
            }
        }
    }

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group_digits(10_000_000), "10,000,000");
        assert_eq!(group_digits(100), "100");
        assert_eq!(group_digits(1000), "1,000");
    }

    #[test]
    fn every_proxy_row_is_configured_or_says_why_not() {
        for kind in [Kind::Xgate, Kind::Haproxy, Kind::Envoy, Kind::Nginx] {
            for policy in Policy::ALL {
                if !Policy::of(kind).contains(&policy) {
                    assert_ne!(
                        policy.missing(kind),
                        "no listener for this case",
                        "{kind:?} {policy:?}"
                    );
                }
            }
        }
        let xgate = peers::XGATE_POLICIES.text;
        for policy in Policy::of(Kind::Xgate) {
            assert!(
                xgate.contains(&format!("{{{{{}}}}}", policy.port_var())),
                "{policy:?}"
            );
        }
        assert!(xgate.contains("{{XGATE_CONSUMERS}}"));
        assert!(xgate.contains("{{IP_DENY_LIST}}"));
        assert!(xgate.contains("{{OPA_POLICY}}") && xgate.contains("{{OPA_SERVER}}"));
        let envoy = peers::ENVOY_POLICIES.text;
        for policy in Policy::of(Kind::Envoy) {
            assert!(
                envoy.contains(&format!("{{{{{}}}}}", policy.port_var())),
                "{policy:?}"
            );
        }
        assert!(envoy.contains("{{OPA_SERVER_PORT}}"));
        let nginx = peers::NGINX_POLICIES.text;
        for policy in Policy::of(Kind::Nginx) {
            assert!(
                nginx.contains(&format!("{{{{{}}}}}", policy.port_var())),
                "{policy:?}"
            );
        }
    }

    /// The rendered template is a config xgate accepts.
    #[test]
    fn xgate_policies_config_is_valid() {
        let mut vars: Vec<(&str, String)> = Policy::ALL
            .iter()
            .enumerate()
            .map(|(i, p)| (p.port_var(), (20_000 + i).to_string()))
            .collect();
        vars.extend([
            ("DIR", "/tmp/xgate-bench-test".to_string()),
            ("UPSTREAM_PORT", "9000".to_string()),
            ("JWT_ISSUER", keys::ISSUER.to_string()),
            ("JWT_AUDIENCE", keys::AUDIENCE.to_string()),
            ("RATE_LIMIT", RATE_LIMIT.to_string()),
            ("REDIS_URL", "redis://127.0.0.1:6379".to_string()),
            ("XGATE_CONSUMERS", "[]".to_string()),
            ("IP_DENY_LIST", "['10.0.0.0/8']".to_string()),
            ("OPA_SERVER", "http://127.0.0.1:9181".to_string()),
        ]);
        // The Rego file is compiled by validation: a real one.
        let dir = xgate_tests::TempDir::new("bench-opa");
        let rego = dir.path().join("bench.rego");
        std::fs::write(&rego, OPA_POLICY).unwrap();
        vars.push(("OPA_POLICY", rego.display().to_string()));
        let text = peers::render(peers::XGATE_POLICIES.text, &vars, false).unwrap();
        let config = gateway_userspace::config::Config::from_yaml(&text, "xgate-policies.yaml")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(config.redis.is_some());
    }

    #[test]
    fn fallbacks_are_read_from_the_metrics() {
        let metrics = "# TYPE xgate_rate_limit_redis_fallbacks counter\n\
                       xgate_rate_limit_redis_fallbacks_total{action=\"local\"} 12\n\
                       xgate_rate_limit_redis_fallbacks_total{action=\"refuse\"} 3\n\
                       xgate_redis_errors_total{kind=\"timeout\"} 7\n";
        assert_eq!(fallbacks_in(metrics), 15.0);
        assert_eq!(fallbacks_in("# EOF\n"), 0.0);
        assert_eq!(not_redis(0.0), None);
        assert!(not_redis(15.0).is_some_and(|why| why.starts_with("15 checks fell back")));
    }

    #[test]
    fn the_rate_limits_have_their_own_targets() {
        assert_eq!(Policy::RateLimit.target(), 0.05);
        assert_eq!(Policy::RateLimitRedis.target(), 0.25);
        assert_eq!(Policy::KeyAuth.target(), TARGET_OVERHEAD);
    }
}
