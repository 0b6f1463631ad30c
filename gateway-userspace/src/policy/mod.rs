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
//! - `jwks`: fetching and refreshing a JWKS document
//! - `fetch`: the small HTTP(S) client policies use for their documents

pub mod consumers;
mod fetch;
mod jwks;
pub mod jwt;
mod key_auth;
mod mtls;

use std::{future::Future, pin::Pin, sync::Arc};

use http::{request::Parts, HeaderValue};
use prometheus_client::metrics::counter::Counter;

pub use self::consumers::{strip_identity_headers, Consumer, Consumers, Identity};
use crate::{
    config::{self, AuthMode},
    proxy::Rejection,
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

    /// Runs the chain: who the caller is (`None` when no policy
    /// authenticates), or why it is refused.
    pub async fn run(&self, parts: &mut Parts) -> Result<Option<Identity>, Rejection> {
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
                        if found.is_none() {
                            found = Some(Identity::anonymous(anonymous.clone()));
                        }
                    }
                    None => {
                        decisions.deny.inc();
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
    global: Arc<PolicyList>,
    /// Listener name → its `policy_defaults`.
    listeners: Vec<(Arc<str>, Arc<PolicyList>)>,
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
    pub fn compile(config: &config::Config) -> Result<Self, String> {
        let consumers = Arc::new(Consumers::compile(&config.consumers)?);
        let defaults = &config.policy_defaults;
        let global = Arc::new(
            PolicyList::compile(defaults.authentication, &defaults.policies, &consumers)
                .map_err(|e| format!("policy_defaults: {e}"))?,
        );
        let listeners = config
            .listeners
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let d = l.policy_defaults.as_ref()?;
                let name = l.name.clone().unwrap_or_else(|| l.address.to_string());
                Some(
                    PolicyList::compile(d.authentication, &d.policies, &consumers)
                        .map(|list| (Arc::from(name.as_str()), Arc::new(list)))
                        .map_err(|e| format!("listeners[{i}].policy_defaults: {e}")),
                )
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            consumers,
            global,
            listeners,
        })
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
                PolicyList::compile(
                    route.authentication.unwrap_or_default(),
                    policies,
                    &self.consumers,
                )
                .map_err(|e| format!("routes[{index}].policies: {e}"))
            })
            .transpose()?
            .map(|list| Chain::new(name, Arc::new(list), metrics));
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
