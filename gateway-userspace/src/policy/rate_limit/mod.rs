//! `type: rate-limit`: requests over a limit get 429 with `Retry-After`;
//! every response carries `RateLimit-Limit`, `-Remaining`, `-Reset` and
//! `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers) unless hidden.
//!
//! Counters live in this process (`local`) or in Redis (`redis`), where
//! a script counts atomically for every gateway sharing it (one call for
//! all the checks a worker has waiting, see `crate::redis::BatchScript`);
//! when Redis does not answer in time the policy counts locally or
//! refuses, as configured.
//!
//! - `algorithm`: the counting, on plain numbers (and `redis.lua`, the same
//!   in Redis)
//! - `local`: counters in memory, bounded
//! - `key`: what is counted separately

mod algorithm;
mod key;
mod local;

use std::{borrow::Cow, sync::Arc};

use http::{request::Parts, HeaderMap, HeaderName, HeaderValue, StatusCode};

pub use self::key::{KeyPart, KeySpec};
use self::{
    algorithm::{Decision, Limit},
    local::LocalCounters,
};
use super::{Caller, Guard, GuardCheck, GuardResult};
use crate::{
    config::{self, RateAlgorithm, RedisFallback},
    exchange::Rejection,
    redis::{BatchScript, Redis},
};

pub(super) const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub(super) const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub(super) const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
pub(super) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

const NANOS: u64 = 1_000_000_000;

/// Monotonic nanoseconds since the policy was made (tokio's clock, so
/// tests with paused time drive it).
#[derive(Clone, Copy)]
pub(super) struct Clock(tokio::time::Instant);

impl Clock {
    pub(super) fn new() -> Self {
        Self(tokio::time::Instant::now())
    }

    pub(super) fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Whole seconds, rounded up (a client told 0 comes back at once).
pub(super) fn seconds_up(nanos: u64) -> u64 {
    nanos.div_ceil(NANOS)
}

/// Counters in Redis.
struct Shared {
    redis: Arc<Redis>,
    /// `xgate:rl2:<name>:` ([`KEY_PREFIX`]); the key's bytes follow.
    prefix: Vec<u8>,
    /// The script's argument for a check of this policy: algorithm, then
    /// requests, window (us) and burst per limit.
    spec: bytes::Bytes,
    fallback: RedisFallback,
}

/// Where the counters live in Redis, and in which format: `redis.lua`'s
/// (a string per key). The first format (a hash per key, `xgate:rl:`) is
/// never read or written under this prefix, so a gateway of the previous
/// version sharing the Redis never meets a key of the other format
/// (WRONGTYPE, or a count misread); the two count apart meanwhile.
const KEY_PREFIX: &str = "xgate:rl2:";

/// Integers in the script's answer per check.
const ANSWER_WIDTH: usize = 5;
/// Checks per script run at most.
const MAX_BATCH: usize = 128;

/// The check, in Redis: atomic for every gateway, and one round trip for
/// all the checks a worker has waiting.
static SCRIPT: std::sync::LazyLock<BatchScript> = std::sync::LazyLock::new(|| {
    BatchScript::new(include_str!("redis.lua"), ANSWER_WIDTH, MAX_BATCH)
});

pub struct RateLimit {
    key: KeySpec,
    local: LocalCounters,
    shared: Option<Shared>,
    hide_headers: bool,
    jitter_ms: u64,
    /// `RateLimit-Policy`, made once.
    policy_header: HeaderValue,
    /// `RateLimit-Limit` of each limit (the usual values), made once.
    limit_headers: Box<[(u64, HeaderValue)]>,
    clock: Clock,
}

impl RateLimit {
    pub fn new(
        config: &config::RateLimitPolicy,
        redis: Option<&config::Redis>,
        metrics: &crate::telemetry::Metrics,
    ) -> Result<Self, String> {
        let limits: Box<[Limit]> = config.limits.iter().map(Limit::new).collect();
        let shared = match (config.storage, redis) {
            (config::Storage::Local, _) => None,
            (config::Storage::Redis, None) => {
                return Err("storage: redis needs the top-level `redis`".into())
            }
            (config::Storage::Redis, Some(settings)) => Some(Shared {
                redis: Redis::shared(settings, &metrics.redis)?,
                prefix: counters_prefix(config),
                spec: script_spec(config.algorithm, &limits),
                fallback: config.on_redis_error,
            }),
        };
        let policy = config
            .limits
            .iter()
            .map(|l| {
                let window = l.per.as_secs().max(1);
                match (config.algorithm, l.burst) {
                    (RateAlgorithm::TokenBucket, Some(burst)) => {
                        format!("{};w={window};burst={burst}", l.requests)
                    }
                    _ => format!("{};w={window}", l.requests),
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let limit_headers = config
            .limits
            .iter()
            .map(|l| {
                let shown = match (config.algorithm, l.burst) {
                    (RateAlgorithm::TokenBucket, Some(burst)) => burst,
                    _ => l.requests,
                };
                (shown, HeaderValue::from(shown))
            })
            .collect();
        Ok(Self {
            limit_headers,
            local: LocalCounters::new(config.algorithm, &limits, config.max_keys),
            key: KeySpec::new(&config.key),
            shared,
            hide_headers: config.hide_headers,
            jitter_ms: u64::try_from(config.retry_after_jitter.as_millis()).unwrap_or(u64::MAX),
            policy_header: HeaderValue::from_str(&policy).expect("digits, ';', '=' and ','"),
            clock: Clock::new(),
        })
    }

    /// Counts in this process.
    fn local(&self, parts: &Parts, caller: &Caller<'_>) -> Decision {
        self.local
            .check(self.key.hash(parts, caller), self.clock.now())
    }

    /// The answer to a decision, and its headers on the response.
    fn answer(&self, decision: Decision, response: &mut HeaderMap) -> GuardResult {
        if !self.hide_headers {
            let limit = self
                .limit_headers
                .iter()
                .find(|(n, _)| *n == decision.limit)
                .map_or_else(|| decision.limit.into(), |(_, value)| value.clone());
            response.insert(RATELIMIT_LIMIT, limit);
            response.insert(RATELIMIT_REMAINING, decision.remaining.into());
            response.insert(RATELIMIT_RESET, seconds_up(decision.reset).into());
            response.insert(RATELIMIT_POLICY, self.policy_header.clone());
        }
        if decision.allowed {
            return Ok(());
        }
        let jitter = match self.jitter_ms {
            0 => 0,
            ms => fastrand::u64(0..=ms) * 1_000_000,
        };
        let retry_after = seconds_up(decision.retry_after.saturating_add(jitter)).max(1);
        Err(refusal(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "rate limit exceeded",
            retry_after,
        ))
    }

    /// Counts in Redis; on failure, the fallback.
    async fn shared(
        &self,
        shared: &Shared,
        parts: &Parts,
        caller: &Caller<'_>,
    ) -> Result<Decision, Rejection> {
        let mut key = shared.prefix.clone();
        self.key.bytes(parts, caller, &mut key);
        match shared
            .redis
            .batched(&SCRIPT, key, shared.spec.clone())
            .await
        {
            Ok(answer) if answer.len() == ANSWER_WIDTH => {
                let value = |i: usize| u64::try_from(answer[i]).unwrap_or(0);
                Ok(Decision {
                    allowed: answer[0] == 1,
                    limit: value(1),
                    remaining: value(2),
                    reset: value(3).saturating_mul(1000),
                    retry_after: value(4).saturating_mul(1000),
                })
            }
            Ok(answer) => {
                tracing::warn!(?answer, "unexpected answer from the rate-limit script");
                self.fallback(shared, parts, caller)
            }
            Err(_) => self.fallback(shared, parts, caller),
        }
    }

    fn fallback(
        &self,
        shared: &Shared,
        parts: &Parts,
        caller: &Caller<'_>,
    ) -> Result<Decision, Rejection> {
        match shared.fallback {
            RedisFallback::Local => {
                shared.redis.metrics().fallback("local");
                Ok(self.local(parts, caller))
            }
            RedisFallback::Refuse => {
                shared.redis.metrics().fallback("refuse");
                Err(refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "rate_limit_unavailable",
                    "rate limit unavailable",
                    1,
                ))
            }
        }
    }
}

/// A refusal with `Retry-After`.
pub(super) fn refusal(
    status: StatusCode,
    reason: &'static str,
    message: &'static str,
    retry_after_s: u64,
) -> Rejection {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::RETRY_AFTER, retry_after_s.into());
    Rejection::Denied {
        status,
        reason,
        message: Cow::Borrowed(message),
        headers: Some(Box::new(headers)),
    }
}

/// The counters' name in Redis: the configured one, or a hash of what
/// decides the counting (limits, algorithm, key), so that gateways with
/// the same policy share counters and a changed policy starts afresh.
fn counters_name(config: &config::RateLimitPolicy) -> String {
    if let Some(name) = &config.name {
        return name.clone();
    }
    let what =
        serde_json::to_string(&(&config.limits, config.algorithm, &config.key)).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, what.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What every Redis key of the policy starts with: `xgate:rl2:<name>:`.
fn counters_prefix(config: &config::RateLimitPolicy) -> Vec<u8> {
    format!("{KEY_PREFIX}{}:", counters_name(config)).into_bytes()
}

/// The script's argument for this policy's checks (`redis.lua`):
/// `<algorithm> <requests> <window us> <burst>`, a triple per limit.
fn script_spec(algorithm: RateAlgorithm, limits: &[Limit]) -> bytes::Bytes {
    let mut spec = String::from(match algorithm {
        RateAlgorithm::SlidingWindow => "s",
        RateAlgorithm::FixedWindow => "f",
        RateAlgorithm::TokenBucket => "t",
    });
    for l in limits {
        spec.push_str(&format!(
            " {} {} {}",
            l.requests,
            (l.window / 1000).max(1),
            l.burst
        ));
    }
    bytes::Bytes::from(spec)
}

impl Guard for RateLimit {
    fn check<'a>(
        &'a self,
        parts: &'a mut Parts,
        caller: &'a Caller<'a>,
        response: &'a mut HeaderMap,
    ) -> GuardCheck<'a> {
        let Some(shared) = &self.shared else {
            let decision = self.local(parts, caller);
            return GuardCheck::Now(self.answer(decision, response));
        };
        if !shared.redis.available() {
            // Known to be away: the fallback, without a future.
            let result = self
                .fallback(shared, parts, caller)
                .and_then(|decision| self.answer(decision, response));
            return GuardCheck::Now(result);
        }
        GuardCheck::Later(Box::pin(async move {
            let decision = self.shared(shared, parts, caller).await?;
            self.answer(decision, response)
        }))
    }
}

#[cfg(test)]
mod tests;
