//! `type: rate-limit` and `type: throttle` policies, and the top-level
//! `redis:` section that shared counters use.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Errors, Policy};

/// `redis:`: the Redis server that state shared between gateways lives in
/// (rate-limit counters with `storage: redis`). One per gateway; every
/// user shares its connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://` for TLS).
    pub url: String,
    /// The longest any request waits for one Redis call; past it the
    /// call counts as failed and the policy's fallback decides.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_redis_timeout", with = "crate::duration::serde")]
    pub timeout: Duration,
    /// The longest a (re)connection attempt takes.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(
        default = "default_redis_connect_timeout",
        with = "crate::duration::serde"
    )]
    pub connect_timeout: Duration,
    /// After a failure, how often Redis is probed (PING) until it answers
    /// again; requests meanwhile use the fallback without waiting.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(
        default = "default_redis_retry_interval",
        with = "crate::duration::serde"
    )]
    pub retry_interval: Duration,
}

/// A Redis on the same network answers in well under a millisecond; 50 ms
/// bounds what an overloaded or distant one adds to a request.
fn default_redis_timeout() -> Duration {
    Duration::from_millis(50)
}

fn default_redis_connect_timeout() -> Duration {
    Duration::from_secs(1)
}

/// One probe a second: back to shared counting within a second of Redis
/// returning, at one PING a second per worker while it is away.
fn default_redis_retry_interval() -> Duration {
    Duration::from_secs(1)
}

impl Redis {
    pub(super) fn validate(&self, errors: &mut Errors) {
        if let Err(e) = redis::Client::open(self.url.as_str()) {
            errors.push(
                "redis.url",
                format!("'{}' is not a Redis URL: {e}", self.url),
            );
        }
        let range = Duration::from_millis(1)..=Duration::from_secs(10);
        for (field, value) in [
            ("timeout", self.timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if !range.contains(&value) {
                errors.push(format!("redis.{field}"), "must be between 1ms and 10s");
            }
        }
        if self.retry_interval < Duration::from_millis(10)
            || self.retry_interval > Duration::from_secs(60)
        {
            errors.push("redis.retry_interval", "must be between 10ms and 1m");
        }
    }
}

/// `type: rate-limit`: requests over any of `limits` in the window get 429.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPolicy {
    /// Every limit applies (`10 per 1s` and `1000 per 1h`); a request
    /// counts against all of them, and only when all admit it.
    pub limits: Vec<Limit>,
    #[serde(default)]
    pub algorithm: RateAlgorithm,
    /// What is counted separately: one or more of `consumer`, `credential`,
    /// `ip`, `header:<name>`, `path`, `route` (together: a compound key).
    #[serde(default = "default_key")]
    pub key: Vec<String>,
    #[serde(default)]
    pub storage: Storage,
    /// `storage: redis` when Redis does not answer in `redis.timeout`.
    #[serde(default)]
    pub on_redis_error: RedisFallback,
    /// The counters' name in Redis (`xgate:rl2:<name>:<key>`): gateways
    /// whose policies have the same name share counters. Absent: a hash
    /// of this policy's settings (same settings, same counters).
    #[serde(default)]
    pub name: Option<String>,
    /// No `RateLimit-*` headers on responses.
    #[serde(default)]
    pub hide_headers: bool,
    /// Up to this much is added at random to `Retry-After`, so that
    /// refused clients do not all come back at the same instant.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default, with = "crate::duration::serde")]
    pub retry_after_jitter: Duration,
    /// Keys counted in memory at most (`storage: local`, and the
    /// fallback's); past it the keys that matter least are forgotten.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

/// `requests` per `per`; a token bucket also has a `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub requests: u64,
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(with = "crate::duration::serde")]
    pub per: Duration,
    /// Token bucket and throttle: how many requests may come at once (the
    /// bucket's size). Absent: `requests` (token bucket) or 1 (throttle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RateAlgorithm {
    /// The current window's count plus the previous one's, weighted by how
    /// much of it still overlaps the last `per`: no burst of twice the
    /// limit at a window boundary, two counters per key.
    #[default]
    SlidingWindow,
    /// Windows aligned to multiples of `per`, counted from zero each.
    FixedWindow,
    /// A bucket of `burst` tokens refilled at `requests` per `per` (GCRA).
    TokenBucket,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    /// Counters in this process.
    #[default]
    Local,
    /// Counters in the top-level `redis`, shared by every gateway using it.
    Redis,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RedisFallback {
    /// Count in this process until Redis is back (each gateway then
    /// admits up to the limit by itself).
    #[default]
    Local,
    /// 503: nothing is admitted that cannot be counted.
    Refuse,
}

/// `type: throttle`: requests over the rate wait their turn in a bounded
/// per-key queue instead of being refused.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThrottlePolicy {
    /// The rate requests are let through at, per key; `burst` of them may
    /// go at once without waiting.
    pub rate: Limit,
    #[serde(default = "default_key")]
    pub key: Vec<String>,
    /// Requests of one key waiting at most; one more is refused.
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
    /// A request that would wait longer than this is refused at once.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_max_wait", with = "crate::duration::serde")]
    pub max_wait: Duration,
    /// The refusal's status: 429 or 503.
    #[serde(default = "default_throttle_status")]
    pub status: u16,
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_key() -> Vec<String> {
    vec!["ip".into()]
}

/// A million keys: ~100 MB at most for a busy public API, far more keys
/// than a gateway sees in a window unless it is attacked.
fn default_max_keys() -> usize {
    1_000_000
}

fn default_max_queue() -> usize {
    100
}

/// Longer than a client's patience rarely helps anyone.
fn default_max_wait() -> Duration {
    Duration::from_secs(10)
}

fn default_throttle_status() -> u16 {
    429
}

/// Limits per policy at most (each is counted on every request).
pub const MAX_LIMITS: usize = 8;

fn validate_limit(limit: &Limit, path: &str, errors: &mut Errors) {
    if limit.requests == 0 {
        errors.push(format!("{path}.requests"), "must be at least 1");
    }
    if limit.requests > 1_000_000_000 {
        errors.push(format!("{path}.requests"), "at most 1000000000");
    }
    if limit.per < Duration::from_millis(1) || limit.per > Duration::from_secs(366 * 86_400) {
        errors.push(format!("{path}.per"), "must be between 1ms and 366d");
    }
    if limit.burst == Some(0) {
        errors.push(format!("{path}.burst"), "must be at least 1");
    }
}

fn validate_key(key: &[String], path: &str, errors: &mut Errors) {
    if key.is_empty() {
        errors.push(format!("{path}.key"), "must name at least one part");
    }
    for (j, part) in key.iter().enumerate() {
        if let Err(message) = crate::policy::KeyPart::parse(part) {
            errors.push(format!("{path}.key[{j}]"), message);
        }
    }
}

fn validate_max_keys(max_keys: usize, path: &str, errors: &mut Errors) {
    if !(1..=100_000_000).contains(&max_keys) {
        errors.push(
            format!("{path}.max_keys"),
            "must be between 1 and 100000000",
        );
    }
}

pub(super) fn validate_rate_limit(p: &RateLimitPolicy, path: &str, errors: &mut Errors) {
    if p.limits.is_empty() {
        errors.push(format!("{path}.limits"), "must have at least one limit");
    }
    if p.limits.len() > MAX_LIMITS {
        errors.push(format!("{path}.limits"), format!("at most {MAX_LIMITS}"));
    }
    for (j, limit) in p.limits.iter().enumerate() {
        let lpath = format!("{path}.limits[{j}]");
        validate_limit(limit, &lpath, errors);
        if limit.burst.is_some() && p.algorithm != RateAlgorithm::TokenBucket {
            errors.push(
                format!("{lpath}.burst"),
                "only a token_bucket has a burst (a window admits `requests` per window)",
            );
        }
    }
    validate_key(&p.key, path, errors);
    validate_max_keys(p.max_keys, path, errors);
    if p.retry_after_jitter > Duration::from_secs(3600) {
        errors.push(format!("{path}.retry_after_jitter"), "at most 1h");
    }
    if let Some(name) = &p.name {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            errors.push(
                format!("{path}.name"),
                "must be non-empty visible ASCII without ':'",
            );
        }
    }
}

pub(super) fn validate_throttle(p: &ThrottlePolicy, path: &str, errors: &mut Errors) {
    validate_limit(&p.rate, &format!("{path}.rate"), errors);
    validate_key(&p.key, path, errors);
    validate_max_keys(p.max_keys, path, errors);
    if !(1..=100_000).contains(&p.max_queue) {
        errors.push(format!("{path}.max_queue"), "must be between 1 and 100000");
    }
    if p.max_wait > Duration::from_secs(3600) {
        errors.push(format!("{path}.max_wait"), "at most 1h");
    }
    if p.status != 429 && p.status != 503 {
        errors.push(format!("{path}.status"), "must be 429 or 503");
    }
}

/// `storage: redis` needs the top-level `redis`.
pub(super) fn validate_redis_users(config: &super::Config, errors: &mut Errors) {
    if config.redis.is_some() {
        return;
    }
    let mut check = |policies: &[Policy], path: &str| {
        for (j, policy) in policies.iter().enumerate() {
            if let Policy::RateLimit(p) = policy {
                if p.storage == Storage::Redis {
                    errors.push(
                        format!("{path}[{j}].storage"),
                        "redis, and there is no top-level `redis: {url: ...}`",
                    );
                }
            }
        }
    };
    check(&config.policy_defaults.policies, "policy_defaults.policies");
    for (i, listener) in config.listeners.iter().enumerate() {
        if let Some(defaults) = &listener.policy_defaults {
            check(
                &defaults.policies,
                &format!("listeners[{i}].policy_defaults.policies"),
            );
        }
    }
    for (i, route) in config.routes.iter().enumerate() {
        if let Some(policies) = &route.policies {
            check(policies, &format!("routes[{i}].policies"));
        }
    }
}

#[cfg(test)]
mod tests {
    fn errors(yaml: &str) -> Vec<String> {
        match crate::config::Config::from_yaml(yaml, "t") {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

    const BASE: &str = "listeners: [{address: '127.0.0.1:1'}]\n";

    #[test]
    fn a_valid_rate_limit_and_throttle() {
        let yaml = format!(
            "{BASE}redis: {{url: 'redis://127.0.0.1:6379', timeout: 20ms}}\n\
             policy_defaults:\n  policies:\n\
             \x20   - {{type: rate-limit, limits: [{{requests: 10, per: 1s}}, {{requests: 1000, per: 1h}}], key: [consumer, ip], storage: redis, on_redis_error: refuse}}\n\
             \x20   - {{type: rate-limit, algorithm: token_bucket, limits: [{{requests: 5, per: 1s, burst: 20}}], key: ['header:x-tenant', path]}}\n\
             \x20   - {{type: throttle, rate: {{requests: 2, per: 1s}}, max_queue: 5, max_wait: 3s, status: 503}}\n"
        );
        assert_eq!(errors(&yaml), Vec::<String>::new());
    }

    #[test]
    fn every_mistake_is_reported_with_its_path() {
        let yaml = format!(
            "{BASE}policy_defaults:\n  policies:\n\
             \x20   - {{type: rate-limit, limits: [{{requests: 0, per: 0s, burst: 3}}], key: [nose, 'header:'], storage: redis, max_keys: 0}}\n\
             \x20   - {{type: rate-limit, limits: []}}\n\
             \x20   - {{type: throttle, rate: {{requests: 1, per: 1s}}, status: 404, max_queue: 0}}\n"
        );
        let found = errors(&yaml);
        for want in [
            "policy_defaults.policies[0].limits[0].requests: must be at least 1",
            "policy_defaults.policies[0].limits[0].per: must be between 1ms and 366d",
            "policy_defaults.policies[0].limits[0].burst: only a token_bucket has a burst",
            "policy_defaults.policies[0].key[0]: 'nose' is not a key part",
            "policy_defaults.policies[0].key[1]: 'header:' is not a valid header name",
            "policy_defaults.policies[0].max_keys: must be between 1 and 100000000",
            "policy_defaults.policies[0].storage: redis, and there is no top-level `redis",
            "policy_defaults.policies[1].limits: must have at least one limit",
            "policy_defaults.policies[2].max_queue: must be between 1 and 100000",
            "policy_defaults.policies[2].status: must be 429 or 503",
        ] {
            assert!(
                found.iter().any(|e| e.starts_with(want)),
                "{want} not in {found:#?}"
            );
        }
        assert_eq!(found.len(), 10, "{found:#?}");
    }

    #[test]
    fn a_bad_redis_section_is_refused() {
        let found = errors(&format!(
            "{BASE}redis: {{url: 'http://x', timeout: 0ms, retry_interval: 1ms}}\n"
        ));
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(found[0].starts_with("redis.url: 'http://x' is not a Redis URL"));
        assert!(found[1].starts_with("redis.timeout: must be between 1ms and 10s"));
        assert!(found[2].starts_with("redis.retry_interval: must be between 10ms and 1m"));
    }
}
