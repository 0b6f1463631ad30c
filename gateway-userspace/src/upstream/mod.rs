//! Upstream services: the targets, the balancer that picks one per attempt,
//! the retry rules and budget, and the pooled client that talks to them.
//! See docs/upstreams.md.
//!
//! - `target`: address, weight, requests in flight
//! - `balancer/`: round robin, least connections, consistent hash, P2C EWMA
//! - `retry`: what is retried, and the budget that bounds it
//! - `replay`: the request body, lendable to the next attempt until sent
//! - `client`: the HTTP/1.1 (`h1`) or HTTP/2 client
//! - `stream`, `tls`: connections to targets, plain or TLS
//! - `body`: the response body (read timeout, in-flight accounting)
//! - `state_key`: what an upstream's state is kept by across reloads
//! - `resolve`: targets by DNS name, kept resolved (`set_targets`)
//! - `health/`: passive and active health of the targets, forced states
//! - `breakers`: limits over which requests are shed (503 at once)

mod balancer;
mod body;
mod breakers;
mod client;
pub(crate) mod h1;
pub mod health;
mod replay;
pub mod resolve;
mod retry;
mod state_key;
mod stream;
mod target;
mod tls;

use std::{
    net::SocketAddr,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use http::{Request, Response};
use tokio::time::Instant;

use self::{
    balancer::{Balancer, Eligible, Tried},
    breakers::{CircuitBreakers, Limit},
    client::UpstreamClient,
    health::{Checker, Choice, Failure, Forced, Health, TargetHealth, UpstreamStatus},
    replay::RequestBody,
    retry::{RetryBudget, RetryPolicy},
    target::Target,
};
pub use self::{
    body::{BodyError, ReadTimeout, UpstreamBody},
    client::SendError,
    h1::Upgraded,
    state_key::StateKey,
    stream::Stream,
    tls::TlsConnector,
};
use crate::{
    config,
    exchange::{within, Body, ForwardFields, Rejection, RequestContext},
    telemetry::{Metrics, TargetMetrics},
};

/// One upstream service, compiled from config.
pub struct Upstream {
    pub name: String,
    /// The targets in use and their balancer; replaced whole by
    /// [`Upstream::set_targets`] (a DNS name's addresses changed). Each
    /// request uses the set current when it started.
    targets: RwLock<Arc<TargetSet>>,
    /// The settings a new target set's balancer is built from.
    config: config::Upstream,
    metrics: Arc<Metrics>,
    /// Asks the resolver for a fresh look at the DNS names (a connect
    /// failure may mean that an address went away).
    refresh: Arc<tokio::sync::Notify>,
    client: UpstreamClient,
    /// Per attempt: time to response headers.
    timeout: Duration,
    read_timeout: Duration,
    retry: RetryPolicy,
    budget: RetryBudget,
    /// The targets' health, kept by address (each target set holds its
    /// targets' handles by index).
    health: Arc<Health>,
    breakers: Arc<CircuitBreakers>,
    /// The active health checks, stopped when the upstream is dropped.
    _checker: Option<Checker>,
    /// Its name, config and TLS files, when it was built: a reload keeps
    /// this upstream (pools, budget, balancer) while the key is the same.
    pub state_key: StateKey,
}

/// The targets of an upstream at one time, with what is kept per target by
/// index.
pub struct TargetSet {
    targets: Vec<Target>,
    /// Per target, by index: response-time metrics.
    metrics: Vec<TargetMetrics>,
    /// Per target, by index: its health (kept by address across sets).
    health: Vec<Arc<TargetHealth>>,
    /// `None` while there is no target (a DNS name that does not resolve).
    balancer: Option<Balancer>,
}

impl Upstream {
    /// Builds the upstream from validated config (its TLS files read again)
    /// and starts its active health checks, if it has any. Targets given by
    /// DNS name are not in it until [`resolve`] has looked them up. Errors
    /// carry the config path.
    pub fn new(
        name: &str,
        config: &config::Upstream,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, String> {
        // Before the files are read to build the TLS configuration: a file
        // that changes in between gives a key that the next reload sees
        // differ, never the reverse.
        let state_key = StateKey::of(name, config);
        let tls = match config.tls() {
            None => None,
            Some(tls) => Some(Arc::new(
                TlsConnector::new(&format!("upstreams.{name}.tls"), tls, config.protocol).map_err(
                    |errors| {
                        errors
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    },
                )?,
            )),
        };
        let now = Instant::now();
        let health = Arc::new(Health::new(name, &config.health_checks));
        let prober = config
            .health_checks
            .active
            .clone()
            .map(|check| health::active::Prober {
                config: check,
                tls: tls.clone(),
            });
        let checker = Checker::start(&health, prober);
        let breakers = Arc::new(CircuitBreakers::new(name, &config.circuit_breakers));
        let upstream = Self {
            name: name.to_string(),
            targets: RwLock::new(Arc::new(TargetSet {
                targets: Vec::new(),
                metrics: Vec::new(),
                health: Vec::new(),
                balancer: None,
            })),
            config: config.clone(),
            metrics: metrics.clone(),
            refresh: Arc::default(),
            client: UpstreamClient::new(config, tls, &breakers),
            timeout: config.timeout,
            read_timeout: config.read_timeout,
            retry: RetryPolicy::new(config),
            budget: RetryBudget::new(&config.retry_budget, now),
            health,
            breakers,
            _checker: checker,
            state_key,
        };
        upstream.set_targets(
            config
                .targets
                .iter()
                .filter_map(|t| Some((t.address.ip()?, t.weight)))
                .collect(),
        );
        Ok(upstream)
    }

    /// The targets in use now.
    pub fn target_set(&self) -> Arc<TargetSet> {
        self.targets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the targets with `targets` (address, weight): the one place
    /// where an upstream's targets change at run time. A target whose
    /// address stays keeps its state (requests in flight); the others are
    /// added or dropped. Requests already started finish on the set they
    /// started with.
    pub fn set_targets(&self, targets: Vec<(SocketAddr, u32)>) {
        let current = self.target_set();
        let targets: Vec<Target> = targets
            .into_iter()
            .map(|(addr, weight)| {
                match current
                    .targets
                    .iter()
                    .find(|t| t.addr == addr && t.weight == weight.max(1))
                {
                    Some(kept) => kept.clone(),
                    None => Target::new(addr, weight),
                }
            })
            .collect();
        let addrs: Vec<SocketAddr> = targets.iter().map(|t| t.addr).collect();
        let set = TargetSet {
            health: self.health.sync(&addrs),
            metrics: targets
                .iter()
                .map(|t| self.metrics.target(&self.name, &t.label))
                .collect(),
            balancer: (!targets.is_empty())
                .then(|| Balancer::new(&self.config, &targets, Instant::now())),
            targets,
        };
        *self.targets.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
    }

    /// The targets written as `host:port`, with their weights.
    pub fn named_targets(&self) -> impl Iterator<Item = (&str, u16, u32)> {
        self.config.targets.iter().filter_map(|t| match &t.address {
            config::TargetAddress::Name { host, port } => Some((host.as_str(), *port, t.weight)),
            config::TargetAddress::Ip(_) => None,
        })
    }

    /// The targets written as `IP:port`, with their weights.
    pub fn fixed_targets(&self) -> impl Iterator<Item = (SocketAddr, u32)> + '_ {
        self.config
            .targets
            .iter()
            .filter_map(|t| Some((t.address.ip()?, t.weight)))
    }

    /// Each target's state and why, and the load on the limits.
    pub fn status(&self) -> UpstreamStatus {
        let limit = |limit| health::LimitStatus {
            limit: Limit::name(limit).to_string(),
            now: self.breakers.count(limit),
            max: self.breakers.max(limit),
            shed: self.breakers.shed(limit),
        };
        UpstreamStatus {
            name: self.name.clone(),
            limits: Limit::ALL.map(limit).to_vec(),
            targets: self.health.statuses(),
        }
    }

    /// Forces `target` up or down, or back to what the checks say (`None`).
    pub fn force(&self, target: SocketAddr, forced: Option<Forced>) -> Result<(), String> {
        self.health.force(target, forced)
    }

    /// Sends `request` (origin-form URI, headers already rewritten) to a
    /// target and returns its response once the headers are in, retrying on
    /// another target when the rules and the budget allow (see `retry`).
    /// `ctx.upstream_target` ends up naming the last attempt's target.
    /// `fields` go on every attempt after the request's headers.
    pub async fn dispatch(
        &self,
        request: Request<Body>,
        fields: &ForwardFields,
        ctx: &mut RequestContext,
    ) -> Result<Response<UpstreamBody>, Rejection> {
        let set = self.target_set();
        let Some(balancer) = &set.balancer else {
            self.refresh.notify_one();
            return Err(Rejection::NoTargets {
                upstream: self.name.clone(),
            });
        };
        let slot = self.breakers.admit()?;
        let (parts, body) = request.into_parts();
        let body = RequestBody::new(body);
        let key = balancer.hash_key(&parts.headers, ctx.client_ip);
        let may_retry_status = self.retry.may_retry_status(&parts.method, body.is_empty());
        let mut now = Instant::now();
        self.budget.deposit(now);
        // The request head for a retry: kept back only when the retry could
        // not get it back from the failed attempt (a retried status, or a
        // client that keeps unsent requests).
        let keep_head = may_retry_status || !self.client.returns_unsent();
        let mut parts = Some(parts);
        let mut unsent_head = None;
        let mut tried = Tried::default();
        // The attempt before this one: noted as tried only when there is a
        // next one (the usual single attempt allocates nothing for it).
        let mut previous = None;
        let mut retries = 0;
        loop {
            let retries_left = retries < self.retry.retries;
            if let Some(previous) = previous.take() {
                tried.push(previous);
            }
            let eligible = tried.eligible(set.targets.len());
            let index = match self.health.choose(&set.health, &eligible, now) {
                Choice::Any => balancer.pick_among(&set.targets, key, &eligible, now),
                Choice::Only(healthy) => {
                    balancer.pick_among(&set.targets, key, &Eligible::Only(&healthy), now)
                }
                Choice::Nothing => {
                    return Err(Rejection::AllTargetsDown {
                        upstream: self.name.clone(),
                    })
                }
            };
            previous = Some(index);
            let target = &set.targets[index];
            let health = &set.health[index];
            self.health.sent(health, now);
            ctx.upstream_target = Some(target.addr);
            let head = match unsent_head.take() {
                Some(head) => head,
                None if keep_head && retries_left => {
                    parts.clone().expect("kept while retries are left")
                }
                None => parts
                    .take()
                    .expect("taken once; later attempts get the unsent request back"),
            };
            let attempt_body = body
                .for_attempt()
                .expect("only retried while the body can be sent again");
            let request = Request::from_parts(head, attempt_body);

            let in_flight = target.start();
            let started = now;
            let result = within(
                ctx.conn.timer.as_ref(),
                started + self.timeout,
                self.send(target, request, fields),
            )
            .await;
            now = Instant::now();
            let elapsed = now - started;
            let failure = match result {
                Some(Ok(response)) => {
                    set.metrics[index].response(elapsed);
                    balancer.observe(index, elapsed, now);
                    ctx.upstream_duration = Some(elapsed);
                    let status = response.status();
                    let outcome = if status.is_server_error() {
                        Err(Failure::Status(status.as_u16()))
                    } else {
                        Ok(())
                    };
                    self.health.report(health, outcome, now);
                    ctx.upstream_status = Some(status.as_u16());
                    let retry = may_retry_status
                        && self.retry.retries_status(status)
                        && retries_left
                        && self.budget.try_withdraw(now);
                    if !retry {
                        let in_flight = in_flight.and(slot);
                        return Ok(response.map(|incoming| {
                            UpstreamBody::new(incoming, in_flight, target.addr, self.read_timeout)
                        }));
                    }
                    tracing::warn!(
                        upstream = %self.name,
                        upstream.target = %target.addr,
                        status = status.as_u16(),
                        "upstream answered with a retried status; retrying"
                    );
                    set.metrics[index].retried();
                    retries += 1;
                    ctx.retries = retries;
                    continue;
                }
                Some(Err(failed)) => {
                    if let SendError::Overloaded { limit, max } = failed.error {
                        // Shed (and counted) by the breakers: neither the
                        // target's fault nor worth a retry.
                        return Err(Rejection::UpstreamOverloaded {
                            upstream: self.name.clone(),
                            limit,
                            max,
                        });
                    }
                    unsent_head = failed.unsent.map(|request| request.into_parts().0);
                    Rejection::from_client_error(target.addr, failed.error)
                }
                None => Rejection::UpstreamTimeout {
                    target: target.addr,
                    timeout_ms: self.timeout.as_millis(),
                },
            };
            drop(in_flight);
            if let Some(error) = body.take_failure() {
                // The client's body failed, which failed the attempt: no
                // mark against the target, no retry.
                tracing::debug!(
                    upstream = %self.name,
                    upstream.target = %target.addr,
                    client.ip = %ctx.client_ip,
                    error = %crate::error_text::Chain(&*error),
                    attempt = %failure,
                    "request body failed on the client's side"
                );
                return Err(Rejection::RequestBody(error));
            }
            let failed = match failure {
                Rejection::UpstreamConnect { .. } => Failure::Connect,
                Rejection::UpstreamTimeout { .. } => Failure::Timeout,
                _ => Failure::Broken,
            };
            self.health.report(health, Err(failed), now);
            // A failure counts as slow as the slowest answer accepted, so
            // p2c_ewma steers away from a target that fails fast.
            balancer.observe(index, elapsed.max(self.timeout), now);
            set.metrics[index].failed(failure.kind());
            let never_sent = matches!(failure, Rejection::UpstreamConnect { .. });
            if never_sent {
                // A name's address may have gone away: look again.
                self.refresh.notify_one();
            }
            let retry =
                never_sent && retries_left && body.can_replay() && self.budget.try_withdraw(now);
            if !retry {
                return Err(failure);
            }
            tracing::warn!(
                upstream = %self.name,
                upstream.target = %target.addr,
                error = %failure,
                "upstream attempt failed before sending; retrying"
            );
            set.metrics[index].retried();
            retries += 1;
            ctx.retries = retries;
        }
    }

    /// One attempt at `target`.
    fn send<'a>(
        &'a self,
        target: &'a Target,
        request: Request<replay::AttemptBody>,
        fields: &'a ForwardFields,
    ) -> client::SendFuture<'a> {
        self.client
            .send(target.addr, &target.authority, request, fields)
    }
}

#[cfg(test)]
mod tests;
