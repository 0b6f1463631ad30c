//! The connection to the top-level `redis`, shared by everything that keeps
//! state there (rate-limit counters; cluster-wide lists may follow): one
//! client per URL and settings in the process, kept across reloads, with
//! one multiplexed connection per worker (a call never wakes another
//! thread), a timeout on every call, and a health gate: after a failure,
//! calls fail at once (the caller's fallback answers without waiting)
//! while a probe PINGs Redis every `retry_interval` until it answers.
//!
//! Users: `Redis::shared(&config.redis, &metrics.redis)` for the client,
//! then [`Redis::script`] (EVALSHA with load-on-NOSCRIPT),
//! [`Redis::batched`] (one item of a script that decides many per call,
//! see `batch`) or [`Redis::command`]; pub/sub takes a connection of its
//! own from [`Redis::client`].

mod batch;

pub use self::batch::BatchScript;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, OnceLock, Weak,
    },
    time::{Duration, Instant},
};

use ::redis::{aio::ConnectionManager, FromRedisValue, Script};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

use crate::config;

/// Why a Redis call gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// A recent call failed and the probe has not seen Redis back yet: not
    /// tried.
    #[error("Redis is unavailable (waiting for it to answer a probe)")]
    Down,
    #[error("no answer from Redis within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Failed(#[from] ::redis::RedisError),
    /// The batched call this item was part of failed.
    #[error("{0}")]
    Batch(Arc<RedisError>),
    #[error("unexpected answer from Redis")]
    Unexpected,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    action: &'static str,
}

/// `xgate_redis_*` and `xgate_rate_limit_redis_fallbacks_total`.
#[derive(Clone)]
pub struct RedisMetrics {
    errors: Family<ErrorLabels, Counter>,
    fallbacks: Family<FallbackLabels, Counter>,
    duration: Histogram,
    batch_items: Histogram,
}

impl RedisMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "redis_errors",
            "Redis calls that failed, by kind: timeout (no answer within redis.timeout) or \
             error (connection refused or lost, or an error reply)",
            errors.clone(),
        );
        let fallbacks = Family::<FallbackLabels, Counter>::default();
        registry.register(
            "rate_limit_redis_fallbacks",
            "Rate-limit checks answered without Redis, by action: local (counted in this \
             process) or refuse (503)",
            fallbacks.clone(),
        );
        // 50 us .. ~0.8 s: a loopback round trip to the timeout's limits.
        let duration = Histogram::new(exponential_buckets(0.000_05, 2.0, 15));
        registry.register(
            "redis_call_duration_seconds",
            "Time of each Redis call that got an answer (a rate-limit check is one)",
            duration.clone(),
        );
        // 1 .. 128: a batch is at most 128 items.
        let batch_items = Histogram::new(exponential_buckets(1.0, 2.0, 8));
        registry.register(
            "redis_batch_items",
            "Items (rate-limit checks) decided per batched Redis call: those a worker asked \
             while its previous call was on the wire",
            batch_items.clone(),
        );
        Self {
            errors,
            fallbacks,
            duration,
            batch_items,
        }
    }

    /// A rate-limit check that Redis could not answer: `local` or
    /// `refuse`.
    pub fn fallback(&self, action: &'static str) {
        self.fallbacks
            .get_or_create(&FallbackLabels { action })
            .inc();
    }
}

/// One worker's connection and its health.
#[derive(Default)]
struct Slot {
    connection: OnceLock<ConnectionManager>,
    down: AtomicBool,
    probing: AtomicBool,
    /// Items waiting for the worker's next batched call.
    queues: batch::Queues,
}

/// A Redis server's client.
pub struct Redis {
    client: ::redis::Client,
    settings: config::Redis,
    slots: OnceLock<Box<[Slot]>>,
    metrics: RedisMetrics,
    me: Weak<Redis>,
    log: LogLimit,
}

/// The process's clients, by settings: reloads and several users share
/// one.
static CLIENTS: Mutex<Vec<(config::Redis, Weak<Redis>)>> = Mutex::new(Vec::new());

impl Redis {
    /// The client for `settings` (one per process and settings).
    pub fn shared(settings: &config::Redis, metrics: &RedisMetrics) -> Result<Arc<Redis>, String> {
        let mut clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
        clients.retain(|(_, weak)| weak.strong_count() > 0);
        if let Some(existing) = clients
            .iter()
            .find(|(s, _)| s == settings)
            .and_then(|(_, weak)| weak.upgrade())
        {
            return Ok(existing);
        }
        let client =
            ::redis::Client::open(settings.url.as_str()).map_err(|e| format!("redis.url: {e}"))?;
        let redis = Arc::new_cyclic(|me| Redis {
            client,
            settings: settings.clone(),
            slots: OnceLock::new(),
            metrics: metrics.clone(),
            me: me.clone(),
            log: LogLimit::default(),
        });
        clients.push((settings.clone(), Arc::downgrade(&redis)));
        Ok(redis)
    }

    pub fn metrics(&self) -> &RedisMetrics {
        &self.metrics
    }

    /// Whether the calling worker's connection is believed to work (a
    /// call would be tried).
    pub fn available(&self) -> bool {
        !self.slot().1.down.load(Ordering::Relaxed)
    }

    /// The calling worker's slot (made on first use, inside the workers'
    /// runtimes).
    fn slot(&self) -> (usize, &Slot) {
        let slots = self.slots.get_or_init(|| {
            (0..crate::workers::count().max(1))
                .map(|_| Slot::default())
                .collect()
        });
        let index = crate::workers::current() % slots.len();
        (index, &slots[index])
    }

    fn connection(&self, slot: &Slot) -> Result<ConnectionManager, RedisError> {
        if let Some(c) = slot.connection.get() {
            return Ok(c.clone());
        }
        let config = ::redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.settings.connect_timeout))
            .set_response_timeout(Some(self.settings.timeout))
            // The health gate retries; the manager tries once per call.
            .set_number_of_retries(0);
        let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        Ok(slot.connection.get_or_init(|| manager).clone())
    }

    /// Runs `script` with `keys` and `args`: EVALSHA, and the script is
    /// loaded when Redis does not know it (NOSCRIPT) — after a restart, or
    /// on a new server. Never waits past `redis.timeout`.
    pub async fn script<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<T, RedisError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        self.call(
            |mut connection| async move { invocation.invoke_async::<T>(&mut connection).await },
        )
        .await
    }

    /// Runs one command (`redis::cmd("SMEMBERS").arg(...)`), under the
    /// same timeout and health gate as scripts.
    pub async fn command<T: FromRedisValue>(
        &self,
        command: &::redis::Cmd,
    ) -> Result<T, RedisError> {
        self.call(|mut connection| async move { command.query_async::<T>(&mut connection).await })
            .await
    }

    /// The client, for what a shared multiplexed connection cannot do
    /// (pub/sub needs a connection of its own).
    pub fn client(&self) -> &::redis::Client {
        &self.client
    }

    pub fn settings(&self) -> &config::Redis {
        &self.settings
    }

    /// One call on the calling worker's connection: refused at once while
    /// the worker's connection is down; timed, counted and logged.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, RedisError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = ::redis::RedisResult<T>>,
    {
        self.call_within(self.settings.timeout, call).await
    }

    /// [`Redis::call`] with a time limit of its own (at most
    /// `redis.timeout`): what a batch's oldest item has left.
    async fn call_within<T, F, Fut>(&self, limit: Duration, call: F) -> Result<T, RedisError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = ::redis::RedisResult<T>>,
    {
        let (index, slot) = self.slot();
        if slot.down.load(Ordering::Relaxed) {
            return Err(RedisError::Down);
        }
        let connection = self.connection(slot)?;
        let started = Instant::now();
        let result = tokio::time::timeout(limit, call(connection)).await;
        match result {
            Ok(Ok(value)) => {
                self.metrics
                    .duration
                    .observe(started.elapsed().as_secs_f64());
                Ok(value)
            }
            Ok(Err(e)) => {
                self.failed(index, slot, "error");
                self.log.warn(&self.settings.url, &e);
                Err(RedisError::Failed(e))
            }
            Err(_) => {
                self.failed(index, slot, "timeout");
                let e = RedisError::Timeout(limit);
                self.log.warn(&self.settings.url, &e);
                Err(e)
            }
        }
    }

    /// A call failed: the slot is down until a probe sees Redis again.
    fn failed(&self, index: usize, slot: &Slot, kind: &'static str) {
        self.metrics
            .errors
            .get_or_create(&ErrorLabels { kind })
            .inc();
        slot.down.store(true, Ordering::Relaxed);
        if slot.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(me) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move { me.probe(index).await });
    }

    /// PINGs every `retry_interval` until Redis answers; then calls go to
    /// it again. Ends when the client is dropped (a reload without Redis).
    async fn probe(self: Arc<Self>, index: usize) {
        let interval = self.settings.retry_interval;
        let me = Arc::downgrade(&self);
        drop(self);
        loop {
            tokio::time::sleep(interval).await;
            let Some(this) = me.upgrade() else {
                return;
            };
            let slots = this.slots.get().expect("a slot failed, so slots exist");
            let slot = &slots[index];
            let Ok(mut connection) = this.connection(slot) else {
                continue;
            };
            let ping = tokio::time::timeout(
                this.settings.connect_timeout.max(this.settings.timeout),
                ::redis::cmd("PING").query_async::<String>(&mut connection),
            )
            .await;
            if matches!(ping, Ok(Ok(_))) {
                slot.down.store(false, Ordering::Relaxed);
                slot.probing.store(false, Ordering::Release);
                this.log.back(&this.settings.url);
                return;
            }
        }
    }
}

/// Warnings about an unreachable Redis at most every 10 s, with the
/// number of failures in between (an outage under load is thousands of
/// failures a second).
#[derive(Default)]
struct LogLimit {
    /// Seconds since `START` of the last warning, plus one (0: none yet).
    last: AtomicU64,
    suppressed: AtomicU64,
}

const LOG_EVERY_S: u64 = 10;

fn seconds() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs() + 1
}

impl LogLimit {
    fn warn(&self, url: &str, error: &dyn std::fmt::Display) {
        let now = seconds();
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now < last + LOG_EVERY_S
            || self
                .last
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        tracing::warn!(
            redis = %redacted(url),
            %error,
            failures_not_logged = suppressed,
            "Redis call failed: policies use their fallback until it answers again"
        );
    }

    fn back(&self, url: &str) {
        tracing::info!(redis = %redacted(url), "Redis answers again");
    }
}

/// The URL without its password.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// The clients made so far that are still in use: for tests.
#[cfg(test)]
pub(crate) fn live_clients() -> usize {
    CLIENTS
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, w)| w.strong_count() > 0)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_the_log() {
        assert_eq!(
            redacted("redis://user:secret@10.0.0.1:6379/2"),
            "redis://***@10.0.0.1:6379/2"
        );
        assert_eq!(redacted("redis://10.0.0.1"), "redis://10.0.0.1");
    }

    #[test]
    fn one_client_per_settings() {
        let metrics = RedisMetrics::register(&mut Registry::default());
        let settings = |url: &str| config::Redis {
            url: url.into(),
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(1),
            retry_interval: Duration::from_secs(1),
        };
        let a = Redis::shared(&settings("redis://127.0.0.1:1"), &metrics).unwrap();
        let b = Redis::shared(&settings("redis://127.0.0.1:1"), &metrics).unwrap();
        let c = Redis::shared(&settings("redis://127.0.0.1:2"), &metrics).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(live_clients() >= 2);
    }

    /// Nothing listens on the port: the call fails fast, and the next
    /// ones (commands and scripts alike) fail at once without trying (the fallback answers) until a
    /// probe sees Redis.
    #[tokio::test]
    async fn an_unreachable_redis_fails_fast_then_is_not_tried() {
        let metrics = RedisMetrics::register(&mut Registry::default());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let redis = Redis::shared(
            &config::Redis {
                url: format!("redis://127.0.0.1:{port}"),
                timeout: Duration::from_millis(200),
                connect_timeout: Duration::from_millis(200),
                retry_interval: Duration::from_secs(60),
            },
            &metrics,
        )
        .unwrap();
        let script = Script::new("return 1");
        let first = redis.command::<String>(&::redis::cmd("PING")).await;
        assert!(
            matches!(first, Err(RedisError::Failed(_) | RedisError::Timeout(_))),
            "{first:?}"
        );
        let second = redis.script::<i64>(&script, &[], &[]).await;
        assert!(matches!(second, Err(RedisError::Down)), "{second:?}");
    }
}
