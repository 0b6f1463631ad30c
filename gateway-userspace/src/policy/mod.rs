//! API policies: what a route asks of a request after routing and before
//! the upstream. Each policy is one file here and implements
//! [`Authenticator`] (the phase every policy so far belongs to); a route
//! holds its [`Chain`], compiled once from the config and swapped with the
//! rest of the runtime on reload.
//!
//! - `consumers`: the callers the config knows, and the identity headers
//! - `key_auth`: API keys in a header or the query
//! - `jwt`: JSON Web Tokens, keys from consumers or a JWKS document
//! - `mtls`: the client certificate the listener verified
//! - `oidc`: an OpenID Connect provider's access tokens: JWTs with its
//!   discovered keys, opaque tokens through introspection
//! - `jwks`: fetching and refreshing a JWKS document
//! - `discovery`: an OpenID provider's discovery document
//! - `fetch`: the small HTTP(S) client policies use for their documents

pub mod consumers;
mod discovery;
mod fetch;
mod jwks;
pub mod jwt;
mod key_auth;
mod mtls;
mod oidc;

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc};

use http::{request::Parts, HeaderValue};
use prometheus_client::metrics::counter::Counter;

pub use self::consumers::{strip_identity_headers, Consumer, Consumers, Identity};
pub(crate) use self::key_auth::{percent_decode, unix_now};
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

    /// The response phase: headers to add to or strip from the response
    /// of a request this policy let through. None of the authentication
    /// policies needs it; the traffic policies' headers (RateLimit-*) will.
    fn on_response(&self, _headers: &mut http::HeaderMap) {}
}

/// The access log's verdict for a policy's decision (`key-auth:allow`).
fn verdict(kind: &'static str, result: &'static str) -> &'static str {
    match (kind, result) {
        ("key-auth", "allow") => "key-auth:allow",
        ("key-auth", "deny") => "key-auth:deny",
        ("key-auth", "anonymous") => "key-auth:anonymous",
        ("jwt", "allow") => "jwt:allow",
        ("jwt", "deny") => "jwt:deny",
        ("jwt", "anonymous") => "jwt:anonymous",
        ("oidc", "allow") => "oidc:allow",
        ("oidc", "deny") => "oidc:deny",
        ("oidc", "anonymous") => "oidc:anonymous",
        ("mtls", "allow") => "mtls:allow",
        ("mtls", "deny") => "mtls:deny",
        ("mtls", "anonymous") => "mtls:anonymous",
        (_, "allow") => "policy:allow",
        (_, "deny") => "policy:deny",
        _ => "policy:anonymous",
    }
}

/// One policy of a list, with what the chain needs around it.
struct Step {
    kind: &'static str,
    policy: Box<dyn Authenticator>,
    anonymous: Option<Arc<Consumer>>,
}

/// A declared list of policies (a route's, a listener's defaults, the
/// global defaults), compiled once however many routes use it: one JWKS
/// fetcher and one token cache per declaration.
pub struct PolicyList {
    mode: AuthMode,
    steps: Vec<Step>,
}

impl PolicyList {
    pub fn compile(
        mode: AuthMode,
        policies: &[config::Policy],
        consumers: &Arc<Consumers>,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        let steps = policies
            .iter()
            .map(|p| {
                let (policy, anonymous): (Box<dyn Authenticator>, _) = match p {
                    config::Policy::KeyAuth(c) => (
                        Box::new(key_auth::KeyAuth::new(c, consumers.clone())),
                        c.anonymous.as_deref(),
                    ),
                    config::Policy::Jwt(c) => (
                        Box::new(jwt::JwtPolicy::new(c, consumers.clone())?),
                        c.anonymous.as_deref(),
                    ),
                    config::Policy::Oidc(c) => (
                        Box::new(oidc::OidcPolicy::new(c, consumers.clone(), metrics)?),
                        c.anonymous.as_deref(),
                    ),
                    config::Policy::Mtls(c) => (
                        Box::new(mtls::Mtls::new(c, consumers.clone())),
                        c.anonymous.as_deref(),
                    ),
                };
                let anonymous = anonymous
                    .map(|name| {
                        consumers
                            .by_username(name)
                            .cloned()
                            .ok_or_else(|| format!("anonymous consumer '{name}' is not defined"))
                    })
                    .transpose()?;
                Ok(Step {
                    kind: p.kind(),
                    policy,
                    anonymous,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { mode, steps })
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
        Self { list, decisions }
    }

    pub fn is_empty(&self) -> bool {
        self.list.steps.is_empty()
    }

    /// The response phase: each policy, in order, on the response's headers.
    pub fn on_response(&self, headers: &mut http::HeaderMap) {
        for step in &self.list.steps {
            step.policy.on_response(headers);
        }
    }

    /// Runs the chain: who the caller is (`None` when no policy
    /// authenticates), or why it is refused. Each decision is noted in
    /// `verdicts` (the access log's).
    pub async fn run(
        &self,
        parts: &mut Parts,
        verdicts: &mut Vec<&'static str>,
    ) -> Result<Option<Identity>, Rejection> {
        let mode = self.list.mode;
        let mut found: Option<Identity> = None;
        let mut failure: Option<AuthError> = None;
        for (step, decisions) in self.list.steps.iter().zip(&self.decisions) {
            let result = match step.policy.check(parts) {
                Check::Now(result) => result,
                Check::Later(pending) => pending.await,
            };
            match result {
                Ok(identity) => {
                    decisions.allow.inc();
                    verdicts.push(verdict(step.kind, "allow"));
                    if found.as_ref().is_none_or(|f| f.anonymous) {
                        found = Some(identity);
                    }
                    if mode == AuthMode::Any {
                        return Ok(found);
                    }
                }
                Err(error) => match &step.anonymous {
                    // `all`: an anonymous pass counts as this policy's
                    // success; `any`: it is the answer if nothing better
                    // comes.
                    Some(anonymous) => {
                        decisions.anonymous.inc();
                        verdicts.push(verdict(step.kind, "anonymous"));
                        if found.is_none() {
                            found = Some(Identity::anonymous(anonymous.clone()));
                        }
                    }
                    None => {
                        decisions.deny.inc();
                        verdicts.push(verdict(step.kind, "deny"));
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
            (Some(identity), _) => Ok(Some(identity)),
            (None, Some(error)) => Err(error.into()),
            (None, None) => Ok(None),
        }
    }
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
        let key = config_key(&(mode, policies), self.consumers_key);
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
        }
    }
}

#[cfg(test)]
mod tests;
