//! API policies: what a route asks of a request after routing and before
//! the upstream. Each policy is one file here and implements
//! [`Authenticator`] (who is calling) or [`Guard`] (may this request go on:
//! access, authorization and traffic policies); a route holds its
//! [`Chain`], compiled once from the config and swapped with the rest of
//! the runtime on reload.
//!
//! A chain runs its policies by [`Phase`], in declaration order within a
//! phase: cheap refusals by address or agent first, then authentication,
//! then authorization (which needs the consumer), then traffic (so that a
//! refused request does not spend a rate limit).
//!
//! - `acl`: which consumer groups may use a route
//! - `rate_limit`: requests per window, counted here or in Redis
//! - `throttle`: requests over a rate wait in a bounded per-key queue
//! - `ip_restriction`: which client addresses may use a route
//! - `bot_detection`: which User-Agents may use a route, with
//!   `bot_signatures` (the built-in list) and `lru` (its decision cache)
//! - `consumers`: the callers the config knows, and the identity headers
//! - `key_auth`: API keys in a header or the query
//! - `jwt`: JSON Web Tokens, keys from consumers or a JWKS document
//! - `mtls`: the client certificate the listener verified
//! - `opa`: Rego policies, in process or on an OPA server
//! - `oidc`: an OpenID Connect provider's access tokens: JWTs with its
//!   discovered keys, opaque tokens through introspection
//! - `jwks`: fetching and refreshing a JWKS document
//! - `discovery`: an OpenID provider's discovery document
//! - `fetch`: the small HTTP(S) client policies use for their documents

mod acl;
pub mod bot_detection;
mod bot_signatures;
pub mod consumers;
mod discovery;
mod fetch;
mod ip_restriction;
pub(crate) mod jwks;
pub mod jwt;
mod key_auth;
mod lru;
mod mtls;
mod oidc;
pub mod opa;
mod rate_limit;
mod throttle;

use std::{collections::HashMap, future::Future, net::IpAddr, pin::Pin, sync::Arc};

use http::{request::Parts, HeaderValue};
use prometheus_client::metrics::counter::Counter;

pub use self::consumers::{strip_identity_headers, Consumer, Consumers, Identity};
pub(crate) use self::key_auth::{percent_decode, unix_now};
pub use self::rate_limit::KeyPart;
use crate::{
    config::{self, AuthMode},
    exchange::Rejection,
    telemetry::Metrics,
};

/// Why authentication failed: the 401's challenge and its description.
#[derive(Debug, Clone)]
pub struct AuthError {
    /// 401, or 403 when the caller is known but lacks what is asked
    /// (`insufficient_scope`).
    pub status: http::StatusCode,
    /// `WWW-Authenticate`.
    pub challenge: HeaderValue,
    /// What the client is told (`error_description`): short, fixed text,
    /// never internal detail.
    pub description: &'static str,
    /// Whether a credential was presented at all (a missing one is the
    /// weakest failure when several policies were tried).
    pub presented: bool,
}

impl From<AuthError> for Rejection {
    fn from(error: AuthError) -> Self {
        Rejection::Unauthenticated {
            status: error.status,
            challenge: error.challenge,
            description: error.description,
        }
    }
}

/// What an authentication policy found.
pub type AuthResult = Result<Identity, AuthError>;

/// A policy's answer: now (the common case, no allocation) or after a
/// wait (a JWKS fetch for an unknown key).
pub enum Check<'a> {
    Now(AuthResult),
    Later(Pin<Box<dyn Future<Output = AuthResult> + Send + 'a>>),
}

/// An authentication policy.
pub trait Authenticator: Send + Sync {
    /// Looks for this policy's credential in the request and checks it.
    /// May edit the request (`hide_credentials`).
    fn check<'a>(&'a self, parts: &'a mut Parts) -> Check<'a>;
}

/// When a policy runs in its chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Before anything costly: refusals by client address or agent
    /// (ip-restriction, bot-detection).
    Access,
    /// Who is calling (key-auth, jwt, oidc, mtls).
    Authentication,
    /// May this caller do this (acl, opa): sees the consumer.
    Authorization,
    /// How much (rate limits, throttling): runs last, so a request refused
    /// for another reason spends nothing.
    Traffic,
}

/// What a [`Guard`] knows of a request besides its head.
pub struct Caller<'a> {
    /// The client's address (the connection's, or what a trusted proxy
    /// says).
    pub client_ip: IpAddr,
    /// Who authentication found, if any policy before this one did.
    pub identity: Option<&'a Identity>,
    /// The route's name (`-` when unnamed is never the case here).
    pub route: &'a str,
    pub conn: &'a crate::exchange::ConnInfo,
}

/// A guard's answer: go on, or the refusal the client gets.
pub type GuardResult = Result<(), Rejection>;

/// Like [`Check`], for guards.
pub enum GuardCheck<'a> {
    Now(GuardResult),
    Later(Pin<Box<dyn Future<Output = GuardResult> + Send + 'a>>),
}

/// An access, authorization or traffic policy: decides whether a request
/// goes on.
pub trait Guard: Send + Sync {
    /// Decides on the request. May edit what goes upstream (`parts`: e.g.
    /// headers an authorization server asks for) and add headers to the
    /// response the client gets, whatever it is (`response`: e.g.
    /// `RateLimit-*` on the upstream's answer and on a 429).
    fn check<'a>(
        &'a self,
        parts: &'a mut Parts,
        caller: &'a Caller<'a>,
        response: &'a mut http::HeaderMap,
    ) -> GuardCheck<'a>;

    /// How much of the request body the guard reads (`opa` with
    /// `include_body`): the body is then buffered, up to this, before the
    /// chain runs, and found in the request's extensions as
    /// [`opa::BufferedBody`].
    fn body_limit(&self) -> Option<u64> {
        None
    }
}

/// What the chain reports about a client for rules that act on patterns
/// of refusals (auto-ban).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// An authentication policy refused the request (no anonymous
    /// fallback).
    AuthFailure { policy: &'static str },
    /// A guard refused the request.
    Denied {
        policy: &'static str,
        reason: &'static str,
    },
}

/// Where the chain sends [`Signal`]s.
pub trait Signals: Send + Sync {
    fn record(&self, client: IpAddr, signal: Signal);
}

/// The access log's verdict for a policy's decision (`key-auth:allow`):
/// one `&'static str` per (policy kind, result), made once.
fn verdict(kind: &'static str, result: &'static str) -> &'static str {
    use std::sync::{Mutex, OnceLock};
    type Interned = HashMap<(&'static str, &'static str), &'static str>;
    static VERDICTS: OnceLock<Mutex<Interned>> = OnceLock::new();
    let mut verdicts = VERDICTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    // Bounded: kinds and results are the code's own static strings.
    verdicts
        .entry((kind, result))
        .or_insert_with(|| Box::leak(format!("{kind}:{result}").into_boxed_str()))
}

/// What a step of a chain is.
enum StepPolicy {
    Authenticator {
        policy: Box<dyn Authenticator>,
        anonymous: Option<Arc<Consumer>>,
    },
    Guard(Box<dyn Guard>),
}

/// One policy of a list, with what the chain needs around it.
struct Step {
    kind: &'static str,
    phase: Phase,
    policy: StepPolicy,
    /// The access log's verdicts, made when the list is compiled.
    allow: &'static str,
    deny: &'static str,
    anonymous: &'static str,
}

/// A declared list of policies (a route's, a listener's defaults, the
/// global defaults), compiled once however many routes use it: one JWKS
/// fetcher and one token cache per declaration.
pub struct PolicyList {
    mode: AuthMode,
    steps: Vec<Step>,
    /// The most body any guard reads ([`Guard::body_limit`]).
    body_limit: Option<u64>,
}

impl PolicyList {
    pub fn compile(
        mode: AuthMode,
        policies: &[config::Policy],
        consumers: &Arc<Consumers>,
        redis: Option<&config::Redis>,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        // An authentication policy's `anonymous` consumer, resolved.
        let anonymous = |name: Option<&str>| {
            name.map(|name| {
                consumers
                    .by_username(name)
                    .cloned()
                    .ok_or_else(|| format!("anonymous consumer '{name}' is not defined"))
            })
            .transpose()
        };
        let authenticator = |policy: Box<dyn Authenticator>, name: Option<&str>| {
            Ok::<_, String>(StepPolicy::Authenticator {
                policy,
                anonymous: anonymous(name)?,
            })
        };
        let mut steps = policies
            .iter()
            .map(|p| {
                let policy = match p {
                    config::Policy::KeyAuth(c) => authenticator(
                        Box::new(key_auth::KeyAuth::new(c, consumers.clone())),
                        c.anonymous.as_deref(),
                    )?,
                    config::Policy::Jwt(c) => authenticator(
                        Box::new(jwt::JwtPolicy::new(c, consumers.clone())?),
                        c.anonymous.as_deref(),
                    )?,
                    config::Policy::Oidc(c) => authenticator(
                        Box::new(oidc::OidcPolicy::new(c, consumers.clone(), metrics)?),
                        c.anonymous.as_deref(),
                    )?,
                    config::Policy::Mtls(c) => authenticator(
                        Box::new(mtls::Mtls::new(c, consumers.clone())),
                        c.anonymous.as_deref(),
                    )?,
                    config::Policy::Acl(c) => StepPolicy::Guard(Box::new(acl::Acl::new(c))),
                    config::Policy::RateLimit(c) => {
                        StepPolicy::Guard(Box::new(rate_limit::RateLimit::new(c, redis, metrics)?))
                    }
                    config::Policy::Throttle(c) => {
                        StepPolicy::Guard(Box::new(throttle::Throttle::new(c)))
                    }
                    config::Policy::IpRestriction(c) => {
                        StepPolicy::Guard(Box::new(ip_restriction::IpRestriction::new(c)?))
                    }
                    config::Policy::BotDetection(c) => {
                        StepPolicy::Guard(Box::new(bot_detection::BotDetection::new(c)?))
                    }
                    config::Policy::Opa(c) => {
                        StepPolicy::Guard(Box::new(opa::Opa::new(c, metrics)?))
                    }
                };
                Ok(Step::new(p.kind(), p.phase(), policy))
            })
            .collect::<Result<Vec<_>, String>>()?;
        // By phase; declaration order within one (a stable sort).
        steps.sort_by_key(|step| step.phase);
        let body_limit = steps
            .iter()
            .filter_map(|step| match &step.policy {
                StepPolicy::Guard(guard) => guard.body_limit(),
                StepPolicy::Authenticator { .. } => None,
            })
            .max();
        Ok(Self {
            mode,
            steps,
            body_limit,
        })
    }
}

impl Step {
    fn new(kind: &'static str, phase: Phase, policy: StepPolicy) -> Self {
        Self {
            kind,
            phase,
            policy,
            allow: verdict(kind, "allow"),
            deny: verdict(kind, "deny"),
            anonymous: verdict(kind, "anonymous"),
        }
    }
}

/// `xgate_policy_decisions_total{route,policy,result}` of one step on one
/// route, resolved when the chain is compiled.
struct Decisions {
    allow: Counter,
    deny: Counter,
    anonymous: Counter,
}

/// The policies a route runs, with the route's decision counters.
pub struct Chain {
    list: Arc<PolicyList>,
    decisions: Vec<Decisions>,
    /// The route's name, for the guards' [`Caller`].
    route: Arc<str>,
}

/// What the chain needs of the request besides its head, and where it
/// writes what it decided.
pub struct ChainInput<'a> {
    pub client_ip: IpAddr,
    pub conn: &'a crate::exchange::ConnInfo,
    /// The access log's verdicts.
    pub verdicts: &'a mut Vec<&'static str>,
    /// Headers for the response the client gets.
    pub response_headers: &'a mut http::HeaderMap,
    /// Where refusals are reported (auto-ban), when anything listens.
    pub signals: Option<&'a dyn Signals>,
}

impl Chain {
    pub fn new(route: &str, list: Arc<PolicyList>, metrics: &Metrics) -> Self {
        let decisions = list
            .steps
            .iter()
            .map(|step| {
                let counter = |result| metrics.policy_decision(route, step.kind, result);
                Decisions {
                    allow: counter("allow"),
                    deny: counter("deny"),
                    anonymous: counter("anonymous"),
                }
            })
            .collect();
        Self {
            list,
            decisions,
            route: Arc::from(route),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.steps.is_empty()
    }

    /// How much of the body the chain's guards read, if any do.
    pub fn body_limit(&self) -> Option<u64> {
        self.list.body_limit
    }

    /// Runs the chain: who the caller is (`None` when no policy
    /// authenticates; its identity headers are set on the request), or why
    /// the request is refused. Each decision is noted in the input's
    /// `verdicts` (the access log's).
    pub async fn run(
        &self,
        parts: &mut Parts,
        input: ChainInput<'_>,
    ) -> Result<Option<Identity>, Rejection> {
        let ChainInput {
            client_ip,
            conn,
            verdicts,
            response_headers,
            signals,
        } = input;
        let mode = self.list.mode;
        let mut found: Option<Identity> = None;
        let mut failure: Option<AuthError> = None;
        let mut authenticated = false;
        for (step, decisions) in self.list.steps.iter().zip(&self.decisions) {
            let (policy, anonymous) = match &step.policy {
                StepPolicy::Guard(guard) => {
                    if step.phase > Phase::Authentication && !authenticated {
                        // Authentication is over: its answer (under `any`,
                        // the best failure when nothing was found) and the
                        // identity headers, which the guards after it see
                        // (and may hide).
                        authenticated = true;
                        if found.is_none() {
                            if let Some(error) = failure.take() {
                                return Err(error.into());
                            }
                        }
                        if let Some(identity) = &found {
                            identity.apply(&mut parts.headers);
                        }
                    }
                    let caller = Caller {
                        client_ip,
                        identity: found.as_ref(),
                        route: &self.route,
                        conn,
                    };
                    let result = match guard.check(parts, &caller, response_headers) {
                        GuardCheck::Now(result) => result,
                        GuardCheck::Later(pending) => pending.await,
                    };
                    match result {
                        Ok(()) => {
                            decisions.allow.inc();
                            verdicts.push(step.allow);
                        }
                        Err(rejection) => {
                            decisions.deny.inc();
                            verdicts.push(step.deny);
                            if let Some(signals) = signals {
                                let reason = rejection.kind();
                                signals.record(
                                    client_ip,
                                    Signal::Denied {
                                        policy: step.kind,
                                        reason,
                                    },
                                );
                            }
                            return Err(rejection);
                        }
                    }
                    continue;
                }
                StepPolicy::Authenticator { policy, anonymous } => (policy, anonymous),
            };
            if mode == AuthMode::Any && authenticated_any(&found) {
                // `any`: the first success decided; the rest are not asked.
                continue;
            }
            let result = match policy.check(parts) {
                Check::Now(result) => result,
                Check::Later(pending) => pending.await,
            };
            match result {
                Ok(identity) => {
                    decisions.allow.inc();
                    verdicts.push(step.allow);
                    if found.as_ref().is_none_or(|f| f.anonymous) {
                        found = Some(identity);
                    }
                }
                Err(error) => match anonymous {
                    // `all`: an anonymous pass counts as this policy's
                    // success; `any`: it is the answer if nothing better
                    // comes.
                    Some(anonymous) => {
                        decisions.anonymous.inc();
                        verdicts.push(step.anonymous);
                        if found.is_none() {
                            found = Some(Identity::anonymous(anonymous.clone()));
                        }
                    }
                    None => {
                        decisions.deny.inc();
                        verdicts.push(step.deny);
                        if let Some(signals) = signals {
                            signals.record(client_ip, Signal::AuthFailure { policy: step.kind });
                        }
                        if mode == AuthMode::All {
                            return Err(error.into());
                        }
                        // The most telling failure: a credential presented
                        // and refused beats one not presented.
                        if failure
                            .as_ref()
                            .is_none_or(|f| !f.presented && error.presented)
                        {
                            failure = Some(error);
                        }
                    }
                },
            }
        }
        match (found, failure) {
            (Some(identity), _) => {
                if !authenticated {
                    identity.apply(&mut parts.headers);
                }
                Ok(Some(identity))
            }
            (None, Some(error)) => Err(error.into()),
            (None, None) => Ok(None),
        }
    }
}

/// Under `any`, whether authentication already has its answer: a real
/// (not anonymous) identity.
fn authenticated_any(found: &Option<Identity>) -> bool {
    found.as_ref().is_some_and(|f| !f.anonymous)
}

/// Every policy list of a config, compiled once; routes take their chains
/// from here.
pub struct PolicySet {
    pub consumers: Arc<Consumers>,
    /// The hash of the consumers' config that `consumers` was compiled from.
    consumers_key: u64,
    global: Arc<PolicyList>,
    /// Listener name → its `policy_defaults`.
    listeners: Vec<(Arc<str>, Arc<PolicyList>)>,
    /// Every list compiled, by the hash of what it was compiled from: on
    /// reload a list whose declaration (and consumers) did not change is
    /// taken over with its state (JWKS keys, verified-token cache),
    /// keyed by identity, not by position.
    compiled: std::sync::Mutex<HashMap<u64, Arc<PolicyList>>>,
    previous: HashMap<u64, Arc<PolicyList>>,
    /// The top-level `redis` (shared rate-limit counters).
    redis: Option<config::Redis>,
}

/// A stable-within-the-process hash of a config piece.
fn config_key<T: serde::Serialize>(piece: &T, salt: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    salt.hash(&mut h);
    serde_json::to_string(piece)
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

/// The chains one route may run: its own, or what it inherits on each
/// listener.
pub struct RoutePolicies {
    own: Option<Chain>,
    listeners: Vec<(Arc<str>, Chain)>,
    global: Chain,
    /// No chain has a policy: requests skip the layer.
    pub empty: bool,
}

impl RoutePolicies {
    /// The chain for a request that came in on `listener`.
    pub fn chain(&self, listener: &str) -> &Chain {
        if let Some(own) = &self.own {
            return own;
        }
        self.listeners
            .iter()
            .find(|(name, _)| &**name == listener)
            .map_or(&self.global, |(_, chain)| chain)
    }
}

impl PolicySet {
    /// Compiles the config's consumers and policy lists. Lists (and the
    /// consumers) unchanged since `previous` are taken over, state and all.
    pub fn compile(
        config: &config::Config,
        previous: Option<&PolicySet>,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        // The key files' contents count too: a key replaced in place is a
        // change.
        let key_files: Vec<Option<Vec<u8>>> = config
            .consumers
            .iter()
            .flat_map(|c| &c.jwt)
            .filter_map(|j| j.public_key_file.as_ref())
            .map(|path| std::fs::read(path).ok())
            .collect();
        let consumers_key = config_key(&(&config.consumers, key_files), 0);
        let consumers = match previous {
            Some(p) if p.consumers_key == consumers_key => p.consumers.clone(),
            _ => Arc::new(Consumers::compile(&config.consumers)?),
        };
        let mut set = Self {
            consumers,
            consumers_key,
            global: Arc::new(PolicyList::empty()),
            listeners: Vec::new(),
            compiled: Default::default(),
            previous: previous
                .map(|p| p.compiled.lock().unwrap_or_else(|e| e.into_inner()).clone())
                .unwrap_or_default(),
            redis: config.redis.clone(),
        };
        let defaults = &config.policy_defaults;
        set.global = set
            .list(defaults.authentication, &defaults.policies, metrics)
            .map_err(|e| format!("policy_defaults: {e}"))?;
        for (i, l) in config.listeners.iter().enumerate() {
            let Some(d) = l.policy_defaults.as_ref() else {
                continue;
            };
            let name = l.name.clone().unwrap_or_else(|| l.address.to_string());
            let list = set
                .list(d.authentication, &d.policies, metrics)
                .map_err(|e| format!("listeners[{i}].policy_defaults: {e}"))?;
            set.listeners.push((Arc::from(name.as_str()), list));
        }
        Ok(set)
    }

    /// The compiled list for a declaration: the one compiled before for the
    /// same declaration and consumers, or a new one.
    fn list(
        &self,
        mode: AuthMode,
        policies: &[config::Policy],
        metrics: &Metrics,
    ) -> Result<Arc<PolicyList>, String> {
        if policies.is_empty() {
            return Ok(Arc::new(PolicyList::empty()));
        }
        // A list with Redis counters changes with the `redis` it uses.
        let redis = self.redis.as_ref().filter(|_| {
            policies.iter().any(|p| {
                matches!(p, config::Policy::RateLimit(r) if r.storage == config::Storage::Redis)
            })
        });
        // Rego and data files count with their contents: a policy edited
        // in place is a change.
        let key = config_key(
            &(mode, policies, redis, opa::files_key(policies)),
            self.consumers_key,
        );
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = compiled.get(&key).or_else(|| self.previous.get(&key)) {
            let list = list.clone();
            compiled.insert(key, list.clone());
            return Ok(list);
        }
        let list = Arc::new(PolicyList::compile(
            mode,
            policies,
            &self.consumers,
            self.redis.as_ref(),
            metrics,
        )?);
        compiled.insert(key, list.clone());
        Ok(list)
    }

    /// The chains of `routes[index]`, named `name` in metrics.
    pub fn for_route(
        &self,
        index: usize,
        route: &config::Route,
        name: &str,
        metrics: &Metrics,
    ) -> Result<RoutePolicies, String> {
        let own = route
            .policies
            .as_ref()
            .map(|policies| {
                self.list(route.authentication.unwrap_or_default(), policies, metrics)
                    .map_err(|e| format!("routes[{index}].policies: {e}"))
            })
            .transpose()?
            .map(|list| Chain::new(name, list, metrics));
        let (listeners, global) = if own.is_some() {
            (
                Vec::new(),
                Chain::new(name, Arc::new(PolicyList::empty()), metrics),
            )
        } else {
            (
                self.listeners
                    .iter()
                    .map(|(l, list)| (l.clone(), Chain::new(name, list.clone(), metrics)))
                    .collect(),
                Chain::new(name, self.global.clone(), metrics),
            )
        };
        let empty = own.as_ref().map_or_else(
            || global.is_empty() && listeners.iter().all(|(_, c)| c.is_empty()),
            Chain::is_empty,
        );
        Ok(RoutePolicies {
            own,
            listeners,
            global,
            empty,
        })
    }
}

impl PolicyList {
    fn empty() -> Self {
        Self {
            mode: AuthMode::All,
            steps: Vec::new(),
            body_limit: None,
        }
    }
}

#[cfg(test)]
mod tests;
