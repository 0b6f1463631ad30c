//! `upstreams.<name>`: the services behind the gateway, how requests are
//! spread over their targets, how long each step may take, and when a failed
//! attempt is retried. See docs/upstreams.md.

use std::{collections::BTreeMap, fmt, path::PathBuf, str::FromStr, time::Duration};

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use super::{Errors, TargetAddress};

/// Long enough for a TCP handshake across a slow network, short enough that a
/// dead target fails fast.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed for the upstream to send response headers (nginx's
/// proxy_read_timeout default is 60s; APIs answer sooner).
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest silence between two chunks of a response body: nginx's
/// proxy_read_timeout, which also counts between reads. Long enough for
/// server-sent events with the usual 15-30 s heartbeats.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle keep-alive connections to an upstream are closed after this.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle keep-alive connections kept per target.
pub const DEFAULT_POOL_MAX_IDLE: usize = 128;
/// One retry. Only connect failures are retried unless `retry_on_status` is
/// set, and a request that could not connect never reached a target, so
/// the retry is always safe; one retry to another target hides a single
/// dead or restarting target, and the budget keeps it from doubling load
/// when they all are.
pub const DEFAULT_RETRIES: u32 = 1;
/// More attempts than this only stretch the client's wait: past a few
/// targets, failures are correlated.
pub const MAX_RETRIES: u32 = 10;
/// Weights are relative shares; 1000 gives a 0.1% resolution and keeps the
/// consistent-hash table build small.
pub const MAX_WEIGHT: u32 = 1000;
/// How fast p2c_ewma forgets a latency: linkerd2-proxy's and Finagle's
/// default decay.
pub const DEFAULT_EWMA_DECAY: Duration = Duration::from_secs(10);
/// Retries may add 20% to the requests of the window (linkerd's default)...
pub const DEFAULT_RETRY_RATIO: f64 = 0.2;
/// ...plus 10 per second so that a quiet upstream can still retry.
pub const DEFAULT_RETRY_MIN_PER_SECOND: f64 = 10.0;
/// ...counted over the last 10 s (linkerd's default TTL).
pub const DEFAULT_RETRY_WINDOW: Duration = Duration::from_secs(10);
/// The budget window is a sliding window of 10 slots; under 1 s the slots
/// get too thin, over a minute the budget reacts too late to an outage.
pub const MIN_RETRY_WINDOW: Duration = Duration::from_secs(1);
pub const MAX_RETRY_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `IP:port` or `host:port` (weight 1), or `{address: ..., weight: N}`,
    /// per target. A host name's addresses are all targets (`resolver`).
    pub targets: Vec<UpstreamTarget>,
    /// How a target is chosen for each attempt.
    #[serde(default)]
    pub balancer: Balancer,
    /// The key of `consistent_hash`; default `client_ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// How fast `p2c_ewma` forgets a latency; default 10s.
    #[schemars(with = "Option<crate::config::schema::DurationText>")]
    #[serde(
        default,
        with = "crate::duration::serde_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub ewma_decay: Option<Duration>,
    /// HTTP version spoken to the targets.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_connect_timeout", with = "crate::duration::serde")]
    pub connect_timeout: Duration,
    /// Time for the upstream to answer with response headers (else 504).
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_upstream_timeout", with = "crate::duration::serde")]
    pub timeout: Duration,
    /// Longest gap between two response body chunks (else the response is
    /// cut off).
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_read_timeout", with = "crate::duration::serde")]
    pub read_timeout: Duration,
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_pool_idle_timeout", with = "crate::duration::serde")]
    pub pool_idle_timeout: Duration,
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle_per_target: usize,
    /// Further attempts after a failed one; 0 disables retries.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Response statuses retried (429 or 5xx; idempotent requests without a
    /// body only).
    #[serde(default)]
    pub retry_on_status: Vec<u16>,
    #[serde(default)]
    pub retry_budget: RetryBudget,
    /// TLS to the targets; absent: plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// Active probes and passive outlier detection.
    #[serde(default)]
    pub health_checks: super::HealthChecks,
    /// Limits over which requests are refused at once (503).
    #[serde(default)]
    pub circuit_breakers: super::CircuitBreakers,
}

impl Upstream {
    /// The `tls` block, when it turns TLS on.
    pub fn tls(&self) -> Option<&UpstreamTls> {
        self.tls.as_ref().filter(|tls| tls.enabled)
    }

    /// `ewma_decay` or its default.
    pub fn ewma_decay(&self) -> Duration {
        self.ewma_decay.unwrap_or(DEFAULT_EWMA_DECAY)
    }

    /// `hash_on` or its default.
    pub fn hash_on(&self) -> HashOn {
        self.hash_on.clone().unwrap_or(HashOn::ClientIp)
    }

    pub(super) fn validate(&self, name: &str, errors: &mut Errors) {
        let base = format!("upstreams.{name}");
        if self.targets.is_empty() {
            errors.push(format!("{base}.targets"), "at least one target is required");
        }
        let mut seen = BTreeMap::new();
        for (i, target) in self.targets.iter().enumerate() {
            let path = format!("{base}.targets[{i}]");
            if target.address.port() == 0 {
                errors.push(&path, "port 0 is not a valid target port");
            } else if let Some(first) = seen.insert(&target.address, i) {
                errors.push(
                    &path,
                    format!("{} is listed twice (also targets[{first}])", target.address),
                );
            }
            if !(1..=MAX_WEIGHT).contains(&target.weight) {
                errors.push(
                    format!("{path}.weight"),
                    format!("must be between 1 and {MAX_WEIGHT}"),
                );
            }
        }
        for (field, value) in [
            ("connect_timeout", self.connect_timeout),
            ("timeout", self.timeout),
            ("read_timeout", self.read_timeout),
        ] {
            if value.is_zero() {
                errors.push(format!("{base}.{field}"), "must be greater than zero");
            }
        }
        if self.hash_on.is_some() && self.balancer != Balancer::ConsistentHash {
            errors.push(
                format!("{base}.hash_on"),
                "only used with `balancer: consistent_hash`",
            );
        }
        match self.ewma_decay {
            Some(_) if self.balancer != Balancer::P2cEwma => {
                errors.push(
                    format!("{base}.ewma_decay"),
                    "only used with `balancer: p2c_ewma`",
                );
            }
            Some(decay) if decay.is_zero() => {
                errors.push(format!("{base}.ewma_decay"), "must be greater than zero");
            }
            _ => {}
        }
        if self.retries > MAX_RETRIES {
            errors.push(
                format!("{base}.retries"),
                format!("at most {MAX_RETRIES} (more only stretches the client's wait)"),
            );
        }
        for (i, status) in self.retry_on_status.iter().enumerate() {
            if !(*status == 429 || (500..=599).contains(status)) {
                errors.push(
                    format!("{base}.retry_on_status[{i}]"),
                    format!("{status} cannot be retried; only 429 and 5xx statuses can"),
                );
            } else if self.retry_on_status[..i].contains(status) {
                errors.push(
                    format!("{base}.retry_on_status[{i}]"),
                    format!("{status} is listed twice"),
                );
            }
        }
        self.retry_budget
            .validate(&format!("{base}.retry_budget"), errors);
        if let Some(tls) = self.tls() {
            tls.validate(&format!("{base}.tls"), self.protocol, errors);
        }
        self.health_checks
            .validate(&format!("{base}.health_checks"), errors);
        if let (
            UpstreamProtocol::Http2,
            Some(super::ActiveCheck {
                kind: super::CheckKind::Http,
                ..
            }),
        ) = (self.protocol, &self.health_checks.active)
        {
            errors.push(
                format!("{base}.health_checks.active.type"),
                "http checks speak HTTP/1.1; use `type: tcp` with `protocol: http2`",
            );
        }
        self.circuit_breakers
            .validate(&format!("{base}.circuit_breakers"), errors);
    }
}

/// `upstreams.<name>.tls`: the targets are spoken to over TLS, their
/// certificates verified against `ca_file` (or the system's CAs) for
/// `server_name` (or each target's IP address).
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// `false` keeps the settings but speaks plain TCP.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// PEM bundle of the CAs the targets' certificates must chain to;
    /// absent: the system's (`tls::client::SYSTEM_CA_BUNDLE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Sent as SNI and verified against the certificate; absent: the
    /// target's IP address (verified, never sent: SNI carries names only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// `false` accepts any certificate: warned about at start, on reload
    /// and by `xgate validate`.
    #[serde(default = "yes")]
    pub verify: bool,
    /// Mutual TLS: the certificate chain (PEM) presented to the targets...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// ...and its private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
}

impl UpstreamTls {
    /// Builds the client configuration as a start or a reload would (every
    /// file read), so that `xgate validate` names the file that is wrong.
    fn validate(&self, base: &str, protocol: UpstreamProtocol, errors: &mut Errors) {
        if let Err(found) = crate::upstream::TlsConnector::new(base, self, protocol) {
            for error in found {
                errors.push(error.path, error.message);
            }
        }
    }
}

fn yes() -> bool {
    true
}

/// One server behind an upstream (or, by DNS name, every address the name
/// has).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    pub address: TargetAddress,
    /// Relative share of the traffic, 1..=1000.
    pub weight: u32,
}

impl<'de> Deserialize<'de> for UpstreamTarget {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// The long form; `deny_unknown_fields` catches `wieght`.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Weighted {
            address: TargetAddress,
            #[serde(default = "one")]
            weight: u32,
        }
        fn one() -> u32 {
            1
        }

        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = UpstreamTarget;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`IP:port`, `host:port` or `{address: ..., weight: N}`")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<UpstreamTarget, E> {
                let address = text.parse().map_err(E::custom)?;
                Ok(UpstreamTarget { address, weight: 1 })
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<UpstreamTarget, A::Error> {
                let Weighted { address, weight } =
                    Weighted::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(UpstreamTarget { address, weight })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Serialize for UpstreamTarget {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if self.weight == 1 {
            return serializer.collect_str(&self.address);
        }
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("address", &self.address)?;
        map.serialize_entry("weight", &self.weight)?;
        map.end()
    }
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Balancer {
    /// Smooth weighted round robin (nginx's).
    #[default]
    RoundRobin,
    /// Fewest requests in flight per unit of weight.
    LeastConn,
    /// The same key goes to the same target (Maglev table).
    ConsistentHash,
    /// Power of two choices over a peak EWMA of latency × load.
    P2cEwma,
}

/// What `consistent_hash` hashes: `client_ip`, `header:NAME`, `cookie:NAME`.
/// A request without the header or cookie is hashed on its client IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    ClientIp,
    /// Lower-cased header name.
    Header(http::HeaderName),
    Cookie(String),
}

impl FromStr for HashOn {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "client_ip" {
            return Ok(HashOn::ClientIp);
        }
        if let Some(name) = text.strip_prefix("header:") {
            return http::HeaderName::from_bytes(name.as_bytes())
                .map(HashOn::Header)
                .map_err(|_| format!("'{name}' is not a valid header name"));
        }
        if let Some(name) = text.strip_prefix("cookie:") {
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
            return if valid {
                Ok(HashOn::Cookie(name.to_string()))
            } else {
                Err(format!("'{name}' is not a valid cookie name"))
            };
        }
        Err(format!(
            "'{text}' is not one of client_ip, header:NAME, cookie:NAME"
        ))
    }
}

impl fmt::Display for HashOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashOn::ClientIp => f.write_str("client_ip"),
            HashOn::Header(name) => write!(f, "header:{name}"),
            HashOn::Cookie(name) => write!(f, "cookie:{name}"),
        }
    }
}

impl<'de> Deserialize<'de> for HashOn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

impl Serialize for HashOn {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with pooled keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c): one multiplexed connection per
    /// target.
    Http2,
}

/// Retries allowed in any `window`: `ratio` × requests + `min_per_second` ×
/// `window` (linkerd's and Finagle's retry budget).
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetryBudget {
    pub ratio: f64,
    pub min_per_second: f64,
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(with = "crate::duration::serde")]
    pub window: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ratio: DEFAULT_RETRY_RATIO,
            min_per_second: DEFAULT_RETRY_MIN_PER_SECOND,
            window: DEFAULT_RETRY_WINDOW,
        }
    }
}

impl RetryBudget {
    fn validate(&self, base: &str, errors: &mut Errors) {
        if !(0.0..=1.0).contains(&self.ratio) {
            errors.push(
                format!("{base}.ratio"),
                "must be between 0 and 1 (retries as a share of requests)",
            );
        }
        if !(self.min_per_second.is_finite() && self.min_per_second >= 0.0) {
            errors.push(format!("{base}.min_per_second"), "must be 0 or more");
        }
        if !(MIN_RETRY_WINDOW..=MAX_RETRY_WINDOW).contains(&self.window) {
            errors.push(
                format!("{base}.window"),
                format!(
                    "must be between {} and {}",
                    crate::duration::format(MIN_RETRY_WINDOW),
                    crate::duration::format(MAX_RETRY_WINDOW)
                ),
            );
        }
    }
}

fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}
fn default_upstream_timeout() -> Duration {
    DEFAULT_UPSTREAM_TIMEOUT
}
fn default_read_timeout() -> Duration {
    DEFAULT_READ_TIMEOUT
}
fn default_pool_idle_timeout() -> Duration {
    DEFAULT_POOL_IDLE_TIMEOUT
}
fn default_pool_max_idle() -> usize {
    DEFAULT_POOL_MAX_IDLE
}
fn default_retries() -> u32 {
    DEFAULT_RETRIES
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(upstream: &str) -> Result<Config, Vec<String>> {
        Config::from_yaml(
            &format!(
                "listeners: [{{address: '127.0.0.1:8080'}}]\n\
                 upstreams:\n  u: {upstream}\n\
                 routes: [{{match: {{path_prefix: /}}, upstream: u}}]\n"
            ),
            "test.yaml",
        )
        .map_err(|e| e.errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn defaults() {
        let config = parse("{targets: ['127.0.0.1:9001']}").unwrap();
        let u = &config.upstreams["u"];
        assert_eq!(
            u.targets,
            vec![UpstreamTarget {
                address: TargetAddress::Ip("127.0.0.1:9001".parse().unwrap()),
                weight: 1
            }]
        );
        assert_eq!(u.balancer, Balancer::RoundRobin);
        assert_eq!(u.hash_on(), HashOn::ClientIp);
        assert_eq!(u.ewma_decay(), DEFAULT_EWMA_DECAY);
        assert_eq!(u.protocol, UpstreamProtocol::Http1);
        assert_eq!(u.read_timeout, DEFAULT_READ_TIMEOUT);
        assert_eq!(u.retries, 1);
        assert!(u.retry_on_status.is_empty());
        assert_eq!(u.retry_budget.ratio, 0.2);
        assert_eq!(u.retry_budget.min_per_second, 10.0);
        assert_eq!(u.retry_budget.window, Duration::from_secs(10));
    }

    #[test]
    fn every_key_parses() {
        let config = parse(
            "{targets: ['127.0.0.1:9001', {address: '127.0.0.1:9002', weight: 3}, {address: '[::1]:9003'}],\n\
             \x20   balancer: consistent_hash, hash_on: 'header:X-User', protocol: http2,\n\
             \x20   connect_timeout: 1s, timeout: 5s, read_timeout: 2s, pool_idle_timeout: 30s,\n\
             \x20   pool_max_idle_per_target: 4, retries: 2, retry_on_status: [429, 502, 503],\n\
             \x20   retry_budget: {ratio: 0.5, min_per_second: 0.5, window: 30s}}",
        )
        .unwrap();
        let u = &config.upstreams["u"];
        assert_eq!(
            u.targets.iter().map(|t| t.weight).collect::<Vec<_>>(),
            [1, 3, 1]
        );
        assert_eq!(
            u.hash_on(),
            HashOn::Header(http::HeaderName::from_static("x-user"))
        );
        assert_eq!(u.protocol, UpstreamProtocol::Http2);
        assert_eq!(u.read_timeout, Duration::from_secs(2));
        assert_eq!(u.retry_on_status, [429, 502, 503]);
        assert_eq!(u.retry_budget.window, Duration::from_secs(30));
        let config =
            parse("{targets: ['127.0.0.1:9001'], balancer: p2c_ewma, ewma_decay: 5s}").unwrap();
        assert_eq!(config.upstreams["u"].ewma_decay(), Duration::from_secs(5));
        let config = parse(
            "{targets: ['127.0.0.1:9001'], balancer: consistent_hash, hash_on: 'cookie:sid'}",
        )
        .unwrap();
        assert_eq!(
            config.upstreams["u"].hash_on(),
            HashOn::Cookie("sid".into())
        );
    }

    #[test]
    fn round_trips_through_yaml() {
        let config = parse(
            "{targets: ['127.0.0.1:9001', {address: '127.0.0.1:9002', weight: 3}], \
             balancer: consistent_hash, hash_on: 'cookie:sid'}",
        )
        .unwrap();
        let text = serde_yaml::to_string(&config.upstreams["u"]).unwrap();
        let back: Upstream = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back.targets, config.upstreams["u"].targets);
        assert_eq!(back.hash_on, config.upstreams["u"].hash_on);
    }

    #[test]
    fn semantic_errors_are_all_reported_with_paths() {
        let errors = parse(
            "{targets: ['127.0.0.1:9001', {address: '127.0.0.1:9001', weight: 0}, \
             {address: '127.0.0.1:0', weight: 1001}],\n\
             \x20   hash_on: client_ip, ewma_decay: 1s, read_timeout: 0ms, retries: 11,\n\
             \x20   retry_on_status: [404, 503, 503],\n\
             \x20   retry_budget: {ratio: 1.5, min_per_second: -1, window: 500ms}}",
        )
        .unwrap_err();
        let expected = [
            "upstreams.u.targets[1]: 127.0.0.1:9001 is listed twice (also targets[0])",
            "upstreams.u.targets[1].weight: must be between 1 and 1000",
            "upstreams.u.targets[2]: port 0 is not a valid target port",
            "upstreams.u.targets[2].weight: must be between 1 and 1000",
            "upstreams.u.read_timeout: must be greater than zero",
            "upstreams.u.hash_on: only used with `balancer: consistent_hash`",
            "upstreams.u.ewma_decay: only used with `balancer: p2c_ewma`",
            "upstreams.u.retries: at most 10",
            "upstreams.u.retry_on_status[0]: 404 cannot be retried; only 429 and 5xx",
            "upstreams.u.retry_on_status[2]: 503 is listed twice",
            "upstreams.u.retry_budget.ratio: must be between 0 and 1",
            "upstreams.u.retry_budget.min_per_second: must be 0 or more",
            "upstreams.u.retry_budget.window: must be between 1s and 1m",
        ];
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        for (error, expected) in errors.iter().zip(expected) {
            assert!(error.starts_with(expected), "{error} vs {expected}");
        }
    }

    #[test]
    fn tls_files_are_read_and_every_problem_reported_with_its_path() {
        let errors = parse(
            "{targets: ['127.0.0.1:9001'], tls: {ca_file: /nonexistent/ca.pem, \
             server_name: 'bad name!', client_cert: /nonexistent/client.crt}}",
        )
        .unwrap_err();
        let expected = [
            "upstreams.u.tls.server_name: 'bad name!' is neither a DNS name nor an IP address",
            "upstreams.u.tls.ca_file: cannot read /nonexistent/ca.pem: ",
            "upstreams.u.tls.client_key: required with `client_cert`",
        ];
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        for (error, expected) in errors.iter().zip(expected) {
            assert!(error.starts_with(expected), "{error} vs {expected}");
        }

        for (tls, expected) in [
            (
                "{verify: false, ca_file: /etc/hostname}",
                "upstreams.u.tls.ca_file: only used with `verify: true`",
            ),
            (
                "{verify: false, client_key: /nonexistent/client.key}",
                "upstreams.u.tls.client_cert: required with `client_key`",
            ),
            (
                "{verify: false, client_cert: /nonexistent/c.crt, client_key: /nonexistent/c.key}",
                "upstreams.u.tls.client_cert: cannot read /nonexistent/c.crt: ",
            ),
            (
                "{verify: false, server_name: api.internal, sni: true}",
                "upstreams.u.tls.sni: unknown field `sni`",
            ),
        ] {
            let errors =
                parse(&format!("{{targets: ['127.0.0.1:9001'], tls: {tls}}}")).expect_err(tls);
            assert_eq!(errors.len(), 1, "{tls}: {errors:#?}");
            assert!(errors[0].starts_with(expected), "{tls}: {}", errors[0]);
        }
    }

    #[test]
    fn tls_off_reads_nothing_and_verify_false_is_warned_about() {
        let config = parse(
            "{targets: ['127.0.0.1:9001'], tls: {enabled: false, ca_file: /nonexistent/ca.pem}}",
        )
        .unwrap();
        assert!(config.upstreams["u"].tls().is_none());
        assert!(config.warnings().is_empty());

        let config =
            parse("{targets: ['127.0.0.1:9001'], tls: {verify: false, server_name: api.internal}}")
                .unwrap();
        let tls = config.upstreams["u"].tls().unwrap();
        assert!(!tls.verify);
        assert_eq!(tls.server_name.as_deref(), Some("api.internal"));
        let warnings: Vec<String> = config.warnings().iter().map(ToString::to_string).collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with(
                "upstreams.u.tls.verify: false: the targets' certificates are NOT verified"
            ),
            "{warnings:?}"
        );
    }

    #[test]
    fn parse_errors_carry_the_path() {
        for (upstream, expected) in [
            (
                "{targets: ['127.0.0.1:9001', 'localhost']}",
                "upstreams.u.targets[1]: 'localhost' has no port; write localhost:PORT",
            ),
            (
                "{targets: [{address: '127.0.0.1:9001', wieght: 2}]}",
                "upstreams.u.targets[0].wieght: unknown field `wieght`",
            ),
            (
                "{targets: ['127.0.0.1:9001'], balancer: fastest}",
                "upstreams.u.balancer: unknown variant `fastest`",
            ),
            (
                "{targets: ['127.0.0.1:9001'], balancer: consistent_hash, hash_on: 'query:id'}",
                "upstreams.u.hash_on: 'query:id' is not one of client_ip, header:NAME, cookie:NAME",
            ),
            (
                "{targets: ['127.0.0.1:9001'], balancer: consistent_hash, hash_on: 'header:a b'}",
                "upstreams.u.hash_on: 'a b' is not a valid header name",
            ),
            (
                "{targets: ['127.0.0.1:9001'], protocol: http3}",
                "upstreams.u.protocol: unknown variant `http3`",
            ),
            (
                "{targets: ['127.0.0.1:9001'], retry_budget: {ratio: 0.1, burst: 3}}",
                "upstreams.u.retry_budget.burst: unknown field `burst`",
            ),
        ] {
            let errors = parse(upstream).unwrap_err();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(
                errors[0].starts_with(expected),
                "{upstream}: got `{}`, want `{expected}`",
                errors[0]
            );
        }
    }
}
