//! `type: opa`: authorization by a Rego policy, as Kong's OPA plugin asks
//! it: the same input document, the same result forms. Evaluated in
//! process (`embedded`) or by an OPA-compatible server (`remote`); either
//! way decisions may be cached (`cache`), and a decision that cannot be
//! had fails closed (503) or open, as the policy says.
//!
//! - `input`: the input document, and the cache key taken from it
//! - `embedded`: Rego evaluated in process by regorus
//! - `remote`: `POST /v1/data/<decision>` over pooled connections
//! - `cache`: decisions kept for requests equal on a key
//! - `reads`: what of the input a Rego policy can read, and whether it is
//!   pure
//! - `memo`: an embedded pure policy's decisions kept by their exact input

mod cache;
mod embedded;
mod input;
mod memo;
mod reads;
mod remote;
#[cfg(test)]
mod tests;

use std::{
    borrow::Cow,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use http::{request::Parts, HeaderMap, HeaderName, HeaderValue, StatusCode};
use prometheus_client::metrics::counter::Counter;

pub use self::embedded::compile_check;
use super::{Caller, Guard, GuardCheck, GuardResult};
use crate::{
    config::{
        self,
        opa::{FailureMode, Opa as OpaConfig},
    },
    exchange::Rejection,
    telemetry::Metrics,
};

/// The request body, read before the chain ran because a policy asked for
/// it (`include_body`); the upstream gets these same bytes.
#[derive(Clone, Debug)]
pub struct BufferedBody(pub Bytes);

/// What a policy decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Go on, with these headers set on the request upstream.
    Allow(Vec<(HeaderName, HeaderValue)>),
    /// Refuse with this status, headers and message.
    Deny {
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
        message: String,
    },
}

/// What the client is told when a policy says no and nothing more.
const DEFAULT_DENY_MESSAGE: &str = "forbidden by policy";

impl Decision {
    fn deny() -> Self {
        Decision::Deny {
            status: StatusCode::FORBIDDEN,
            headers: Vec::new(),
            message: DEFAULT_DENY_MESSAGE.into(),
        }
    }

    /// A policy's result (the value of the decision; `None`: undefined):
    /// `true`/`false`, or `{allow, status, headers, message}`. Undefined is
    /// a refusal (OPA's default deny); any other shape is an error, which
    /// the failure mode handles like an unreachable server.
    pub fn from_result(result: Option<&serde_json::Value>) -> Result<Self, String> {
        use serde_json::Value;
        let object = match result {
            None => return Ok(Decision::deny()),
            Some(Value::Bool(true)) => return Ok(Decision::Allow(Vec::new())),
            Some(Value::Bool(false)) => return Ok(Decision::deny()),
            Some(Value::Object(object)) => object,
            Some(other) => {
                return Err(format!(
                    "the result is neither a boolean nor an object: {}",
                    short(other)
                ))
            }
        };
        let allow = match object.get("allow") {
            Some(Value::Bool(allow)) => *allow,
            other => {
                return Err(format!(
                    "the result object's `allow` is not a boolean: {}",
                    other.map_or("missing".into(), short)
                ))
            }
        };
        let headers = match object.get("headers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(map)) => {
                let mut headers = Vec::with_capacity(map.len());
                for (name, value) in map {
                    let name = HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("`headers`: '{name}' is not a header name"))?;
                    let values: Vec<&Value> = match value {
                        Value::Array(values) => values.iter().collect(),
                        value => vec![value],
                    };
                    for value in values {
                        let text = match value {
                            Value::String(s) => Cow::Borrowed(s.as_str()),
                            Value::Number(_) | Value::Bool(_) => Cow::Owned(value.to_string()),
                            other => {
                                return Err(format!(
                                    "`headers.{name}` is not a string: {}",
                                    short(other)
                                ))
                            }
                        };
                        let value = HeaderValue::from_str(&text)
                            .map_err(|_| format!("`headers.{name}` is not a header value"))?;
                        headers.push((name.clone(), value));
                    }
                }
                headers
            }
            Some(other) => return Err(format!("`headers` is not an object: {}", short(other))),
        };
        if allow {
            return Ok(Decision::Allow(headers));
        }
        let status = match object.get("status") {
            None | Some(Value::Null) => StatusCode::FORBIDDEN,
            Some(value) => value
                .as_u64()
                .filter(|s| (400..=599).contains(s))
                .and_then(|s| StatusCode::from_u16(s as u16).ok())
                .ok_or_else(|| format!("`status` is not a 4xx or 5xx code: {}", short(value)))?,
        };
        let message = match object.get("message") {
            None | Some(Value::Null) => DEFAULT_DENY_MESSAGE.to_string(),
            Some(Value::String(message)) => message.clone(),
            // Kong passes a structured message on as it is.
            Some(other) => other.to_string(),
        };
        Ok(Decision::Deny {
            status,
            headers,
            message,
        })
    }
}

/// A value cut to a length fit for a log line.
fn short(value: &serde_json::Value) -> String {
    let mut text = value.to_string();
    if text.len() > 80 {
        let mut end = 80;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Where decisions come from.
enum Evaluator {
    Embedded(Box<embedded::Embedded>),
    Remote(remote::Remote),
}

/// A failure to get a decision: counted, logged at most every
/// [`LOG_EVERY_SECS`], and answered as `failure_mode` says.
struct Failures {
    mode: FailureMode,
    counter: Counter,
    /// Unix seconds of the last failure logged.
    last_logged: AtomicU64,
    /// Failures since the last one logged.
    unlogged: AtomicU64,
}

/// A policy server that is down fails every request: one log line per this
/// many seconds says so without flooding the log.
const LOG_EVERY_SECS: u64 = 10;

impl Failures {
    fn fail(&self, decision: &str, error: &str) -> GuardResult {
        self.counter.inc();
        let now = super::unix_now().max(0) as u64;
        let last = self.last_logged.load(Ordering::Relaxed);
        if now >= last + LOG_EVERY_SECS
            && self
                .last_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let suppressed = self.unlogged.swap(0, Ordering::Relaxed);
            tracing::warn!(
                decision,
                error,
                failure_mode = ?self.mode,
                suppressed,
                "opa: no decision"
            );
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
        }
        match self.mode {
            FailureMode::Open => Ok(()),
            FailureMode::Closed => Err(Rejection::Denied {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: "opa_unavailable",
                message: Cow::Borrowed("authorization service unavailable"),
                headers: None,
            }),
        }
    }
}

pub struct Opa {
    decision: Arc<str>,
    evaluator: Evaluator,
    cache: Option<cache::DecisionCache>,
    /// Embedded and pure, with `memo_entries` above 0.
    memo: Option<memo::Memo>,
    failures: Failures,
    include_body: bool,
    include_parsed_json_body: bool,
    max_body_bytes: u64,
}

impl Opa {
    pub fn new(config: &OpaConfig, metrics: &Metrics) -> Result<Self, String> {
        let evaluator = match &config.server {
            Some(server) => Evaluator::Remote(remote::Remote::new(server, &config.decision)?),
            None => Evaluator::Embedded(Box::new(embedded::Embedded::new(config)?)),
        };
        let mode = match (&evaluator, config.failure_mode) {
            (Evaluator::Embedded(_), FailureMode::Closed) => ("embedded", "closed"),
            (Evaluator::Embedded(_), FailureMode::Open) => ("embedded", "open"),
            (Evaluator::Remote(_), FailureMode::Closed) => ("remote", "closed"),
            (Evaluator::Remote(_), FailureMode::Open) => ("remote", "open"),
        };
        let memo = match &evaluator {
            Evaluator::Embedded(engine) if engine.pure() => {
                let entries = config
                    .memo_entries
                    .unwrap_or(config::opa::DEFAULT_MEMO_ENTRIES);
                (entries > 0).then(|| memo::Memo::new(entries))
            }
            _ => None,
        };
        Ok(Self {
            decision: Arc::from(config.decision.as_str()),
            evaluator,
            cache: config.cache.as_ref().map(cache::DecisionCache::new),
            memo,
            failures: Failures {
                mode: config.failure_mode,
                counter: metrics.opa_failure(&config.decision, mode.0, mode.1),
                last_logged: AtomicU64::new(0),
                unlogged: AtomicU64::new(0),
            },
            include_body: config.include_body,
            include_parsed_json_body: config.include_parsed_json_body,
            max_body_bytes: config.max_body_bytes,
        })
    }

    /// Applies a decision: headers upstream on allow, the refusal on deny.
    fn apply(decision: &Decision, parts: &mut Parts) -> GuardResult {
        match decision {
            Decision::Allow(headers) => {
                for (name, _) in headers {
                    parts.headers.remove(name);
                }
                for (name, value) in headers {
                    parts.headers.append(name.clone(), value.clone());
                }
                Ok(())
            }
            Decision::Deny {
                status,
                headers,
                message,
            } => Err(Rejection::Denied {
                status: *status,
                reason: "opa_denied",
                message: Cow::Owned(message.clone()),
                headers: (!headers.is_empty()).then(|| {
                    let mut map = HeaderMap::with_capacity(headers.len());
                    for (name, value) in headers {
                        map.append(name.clone(), value.clone());
                    }
                    Box::new(map)
                }),
            }),
        }
    }

    /// A result turned into a decision, remembered under `key` (and in
    /// the memo under `exact`), applied.
    fn conclude(
        &self,
        result: Result<Option<serde_json::Value>, String>,
        key: Option<String>,
        exact: Option<Vec<u8>>,
        parts: &mut Parts,
    ) -> GuardResult {
        let decision = result.and_then(|result| Decision::from_result(result.as_ref()));
        match decision {
            Ok(decision) => {
                let outcome = Self::apply(&decision, parts);
                let decision = Arc::new(decision);
                if let (Some(memo), Some(exact)) = (&self.memo, exact) {
                    memo.insert(&exact, decision.clone());
                }
                if let (Some(cache), Some(key)) = (&self.cache, key) {
                    cache.insert(key, decision);
                }
                outcome
            }
            Err(error) => self.failures.fail(&self.decision, &error),
        }
    }
}

impl Guard for Opa {
    fn check<'a>(
        &'a self,
        parts: &'a mut Parts,
        caller: &'a Caller<'a>,
        _response: &'a mut HeaderMap,
    ) -> GuardCheck<'a> {
        let key = self
            .cache
            .as_ref()
            .map(|cache| input::cache_key(cache.fields(), parts, caller));
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            if let Some(decision) = cache.get(key) {
                return GuardCheck::Now(Self::apply(&decision, parts));
            }
        }
        let body = parts.extensions.get::<BufferedBody>().map(|b| &b.0);
        let reads = match &self.evaluator {
            // What the policy can read: its decision is the same.
            Evaluator::Embedded(engine) => engine.reads(),
            // The server's policy is unknown: all of it.
            Evaluator::Remote(_) => &reads::Reads::All,
        };
        let document = input::document(
            parts,
            caller,
            body.filter(|_| self.include_body),
            body.filter(|_| self.include_parsed_json_body),
            reads,
        );
        let exact = self.memo.as_ref().and_then(|_| memo::Memo::key(&document));
        if let (Some(memo), Some(exact)) = (&self.memo, &exact) {
            if let Some(decision) = memo.get(exact) {
                return GuardCheck::Now(Self::apply(&decision, parts));
            }
        }
        match &self.evaluator {
            Evaluator::Embedded(engine) => {
                if engine.runs_inline() {
                    let result = engine.evaluate(document);
                    GuardCheck::Now(self.conclude(result, key, exact, parts))
                } else {
                    GuardCheck::Later(Box::pin(async move {
                        let result = engine.evaluate_blocking(document).await;
                        self.conclude(result, key, exact, parts)
                    }))
                }
            }
            Evaluator::Remote(server) => GuardCheck::Later(Box::pin(async move {
                let result = server.ask(&document).await;
                self.conclude(result, key, None, parts)
            })),
        }
    }

    fn body_limit(&self) -> Option<u64> {
        (self.include_body || self.include_parsed_json_body).then_some(self.max_body_bytes)
    }
}

/// The contents of an opa policy's Rego and data files, for the key a
/// compiled policy list is kept under across reloads: a file changed in
/// place is a changed policy.
pub fn files_key(policies: &[config::Policy]) -> Vec<Option<Vec<u8>>> {
    policies
        .iter()
        .filter_map(|p| match p {
            config::Policy::Opa(opa) => Some(opa),
            _ => None,
        })
        .flat_map(|opa| opa.policy_files.iter().chain(&opa.data_files))
        .map(|path| std::fs::read(path).ok())
        .collect()
}
