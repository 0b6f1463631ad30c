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

mod balancer;
mod body;
mod client;
mod h1;
mod replay;
mod retry;
mod state_key;
mod stream;
mod target;
mod tls;

use std::{sync::Arc, time::Duration};

use http::{Request, Response};
use tokio::time::Instant;

use self::{
    balancer::{Balancer, Tried},
    client::UpstreamClient,
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
    targets: Vec<Target>,
    /// Per target, by index: response-time metrics.
    target_metrics: Vec<TargetMetrics>,
    balancer: Balancer,
    client: UpstreamClient,
    /// Per attempt: time to response headers.
    timeout: Duration,
    read_timeout: Duration,
    retry: RetryPolicy,
    budget: RetryBudget,
    /// Its name, config and TLS files, when it was built: a reload keeps
    /// this upstream (pools, budget, balancer) while the key is the same.
    pub state_key: StateKey,
}

impl Upstream {
    /// Builds the upstream from validated config (its TLS files read again)
    /// and reports every target healthy (health checks are not implemented
    /// yet). Errors carry the config path.
    pub fn new(name: &str, config: &config::Upstream, metrics: &Metrics) -> Result<Self, String> {
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
        let targets: Vec<Target> = config.targets.iter().map(Target::new).collect();
        assert!(!targets.is_empty(), "validation requires a target");
        Ok(Self {
            name: name.to_string(),
            target_metrics: targets
                .iter()
                .map(|t| metrics.target(name, &t.label))
                .collect(),
            balancer: Balancer::new(config, &targets, now),
            targets,
            client: UpstreamClient::new(config, tls),
            timeout: config.timeout,
            read_timeout: config.read_timeout,
            retry: RetryPolicy::new(config),
            budget: RetryBudget::new(&config.retry_budget, now),
            state_key,
        })
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
        let (parts, body) = request.into_parts();
        let body = RequestBody::new(body);
        let key = self.balancer.hash_key(&parts.headers, ctx.client_ip);
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
            let index = self.balancer.pick(&self.targets, key, &tried, now);
            previous = Some(index);
            let target = &self.targets[index];
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
                    self.target_metrics[index].response(elapsed);
                    self.balancer.observe(index, elapsed, now);
                    ctx.upstream_duration = Some(elapsed);
                    let status = response.status();
                    ctx.upstream_status = Some(status.as_u16());
                    let retry = may_retry_status
                        && self.retry.retries_status(status)
                        && retries_left
                        && self.budget.try_withdraw(now);
                    if !retry {
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
                    self.target_metrics[index].retried();
                    retries += 1;
                    ctx.retries = retries;
                    continue;
                }
                Some(Err(failed)) => {
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
            // A failure counts as slow as the slowest answer accepted, so
            // p2c_ewma steers away from a target that fails fast.
            self.balancer.observe(index, elapsed.max(self.timeout), now);
            self.target_metrics[index].failed(failure.kind());
            let never_sent = matches!(failure, Rejection::UpstreamConnect { .. });
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
            self.target_metrics[index].retried();
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
