//! The L7 reverse proxy: the compiled runtime (router + upstreams), the
//! per-request forwarding path, and the listeners that feed it.

mod access_log;
mod body_buffer;
mod conn_io;
mod drain;
mod finish;
mod forward;
pub mod http1;
pub(crate) mod limits;
mod local;
mod normalize;
pub(crate) mod proxy_protocol;
mod respond;
mod router;
pub mod server;
mod stream_stall;
pub mod tls;
mod upgrade;

use std::{
    collections::HashMap,
    sync::{atomic::AtomicU64, Arc, RwLock},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Body as HttpBody;
use ipnet::IpNet;

use self::access_log::AccessLogger;
use self::router::Router;
// The request's own types, shared with the upstream client (`exchange`),
// under the names the proxy's modules use.
#[cfg(test)]
pub(crate) use crate::exchange::test_body;
pub(crate) use crate::exchange::{conn_timer, headers};
pub use crate::exchange::{
    json_response, within, Body, BoxError, ClientCertificate, ConnInfo, ConnTimer, ForwardFields,
    Forwarding, Rejection, RequestContext,
};
pub(crate) use crate::upstream::resolve::Resolution;
pub use crate::workers;
use crate::{
    config::{Config, Limits, Normalization},
    lists::SourceLists,
    policy::PolicySet,
    telemetry::{Metrics, RouteMetrics},
    token_server::RefreshTokens,
    upstream::Upstream,
};

/// Everything a request needs, compiled once from config and immutable.
pub struct Runtime {
    /// What the gateway answers itself, before routing.
    local: Option<local::Local>,
    router: Router,
    /// Kept for the next reload, which takes over what did not change.
    policies: PolicySet,
    trusted_proxies: Vec<IpNet>,
    limits: Limits,
    normalization: Normalization,
    /// Source lists, checked per request against the client address a
    /// trusted proxy reports (the accept-time guard saw only the proxy).
    guard: Option<Arc<SourceLists>>,
    /// Where the policies report refusals (auto-ban rules), when anything
    /// listens.
    signals: Option<Arc<dyn crate::policy::Signals>>,
    access_log: AccessLogger,
    /// Counts the requests that matched no route (`route="-"`).
    no_route: Arc<RouteMetrics>,
    /// By name; the next reload keeps those whose config did not change.
    upstreams: Upstreams,
    /// The DNS names of upstream targets, kept resolved.
    resolution: Resolution,
    pub metrics: Arc<Metrics>,
}

/// The compiled upstreams, by name.
pub type Upstreams = HashMap<String, Arc<Upstream>>;

impl Runtime {
    /// Builds the runtime from a validated config. Upstreams of `previous`
    /// (the runtime a reload replaces) whose config and TLS files did not
    /// change are taken over, state and all. Fails when the access log file
    /// cannot be opened, or a policy's key file or an upstream's TLS file
    /// cannot be read.
    /// `refresh_tokens` outlives the runtime: reloads keep the tokens.
    pub fn compile(
        config: &Config,
        metrics: Arc<Metrics>,
        guard: Option<Arc<SourceLists>>,
        refresh_tokens: &Arc<RefreshTokens>,
        previous: Option<&Runtime>,
    ) -> Result<Self, String> {
        let resolution = Resolution::new(config, previous.map(|p| &p.resolution));
        let upstreams = compile_upstreams(
            config,
            &metrics,
            previous.map(|p| (&p.upstreams, &p.resolution)),
            &resolution,
        )?;
        let policies = PolicySet::compile(config, previous.map(|p| &p.policies), &metrics)?;
        Ok(Self {
            local: local::Local::compile(
                config,
                policies.consumers.clone(),
                refresh_tokens,
                &metrics,
            )?,
            router: Router::new(config, &upstreams, &policies, &metrics)?,
            policies,
            trusted_proxies: config.trusted_proxies.clone(),
            limits: config.limits.clone(),
            normalization: config.normalization.clone(),
            guard,
            signals: None,
            access_log: AccessLogger::open(&config.access_log)?,
            no_route: Arc::new(metrics.route("-")),
            upstreams,
            resolution,
            metrics,
        })
    }

    /// Resolves once the upstreams' DNS names have had their first answers
    /// (or failures): wait for it before serving with this runtime.
    pub async fn names_resolved(&self) {
        self.resolution.first_lookups().await;
    }

    /// Reports the policies' refusals to `signals` (auto-ban).
    pub fn with_signals(mut self, signals: Option<Arc<dyn crate::policy::Signals>>) -> Self {
        self.signals = signals;
        self
    }

    pub fn route_count(&self) -> usize {
        self.router.len()
    }

    /// The upstreams, by name (their health, for the admin API).
    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// Writes the access log lines held in its buffer, if it has one.
    pub fn flush_access_log(&self) {
        self.access_log.flush();
    }

    /// Opens the access log file again by its path (log rotation).
    pub fn reopen_access_log(&self) {
        self.access_log.reopen();
    }
}

/// One [`Upstream`] per configured upstream, by name: the one in `previous`
/// when its [`StateKey`](crate::upstream::StateKey) is unchanged (its pools,
/// retry budget and balancer state go on), else a new one. An upstream no
/// longer configured is dropped with the last runtime that holds it.
/// Upstreams with DNS names are kept only while the resolver settings are
/// the same, and new ones are handed to `resolution` to keep resolved.
pub(crate) fn compile_upstreams(
    config: &Config,
    metrics: &Arc<Metrics>,
    previous: Option<(&Upstreams, &Resolution)>,
    resolution: &Resolution,
) -> Result<Upstreams, String> {
    let mut upstreams = HashMap::with_capacity(config.upstreams.len());
    for (name, upstream) in &config.upstreams {
        let kept = previous
            .and_then(|(upstreams, old_resolution)| {
                let old = upstreams.get(name)?;
                let names = old.named_targets().next().is_some();
                (!names || resolution.same_resolver(old_resolution)).then_some(old)
            })
            .filter(|old| old.state_key == crate::upstream::StateKey::of(name, upstream));
        let compiled = match kept {
            Some(old) => {
                tracing::debug!(upstream = %name, "unchanged: connections, retry budget and balancer state kept");
                old.clone()
            }
            None => {
                let new = Arc::new(Upstream::new(name, upstream, metrics)?);
                resolution.watch(&new);
                new
            }
        };
        upstreams.insert(name.clone(), compiled);
    }
    Ok(upstreams)
}

/// The current runtime, swapped whole on reload. Each request takes the
/// runtime current when it starts and finishes on it.
pub struct RuntimeHandle(RwLock<Arc<Runtime>>);

impl RuntimeHandle {
    pub fn new(runtime: Runtime) -> Self {
        Self(RwLock::new(Arc::new(runtime)))
    }

    pub fn load(&self) -> Arc<Runtime> {
        self.0.read().unwrap().clone()
    }

    pub fn store(&self, runtime: Runtime) {
        *self.0.write().unwrap() = Arc::new(runtime);
    }
}

/// Handles one request end to end; never fails (errors become responses) and
/// always writes the access log line, once the response is done (see
/// `finish`).
pub async fn handle<B>(rt: Arc<Runtime>, req: Request<B>, conn: Arc<ConnInfo>) -> Response<Body>
where
    B: HttpBody<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let mut ctx = RequestContext::new(conn);
    let method = req.method().clone();
    let request = rt
        .access_log
        .enabled()
        .then(|| finish::RequestFacts::of(&req));
    let received = Arc::new(AtomicU64::new(0));
    let req = req.map(|body| access_log::CountedBody::new(body, received.clone()));
    let mut response = match forward::forward(&rt, req, &mut ctx).await {
        Ok(response) => response,
        Err(rejection) => {
            if rejection.status().is_server_error() {
                tracing::warn!(
                    request_id = %ctx.request_id(),
                    route = %ctx.route_name(),
                    upstream.target = %ctx
                        .upstream_target
                        .map_or_else(|| "-".to_string(), |t| t.to_string()),
                    error = %crate::error_text::Chain(&rejection),
                    "request failed"
                );
            }
            ctx.rejection = Some(rejection.kind());
            match &rejection {
                Rejection::Denied { reason, .. } => {
                    rt.metrics.refused_sources.record(ctx.client_ip, reason)
                }
                Rejection::Unauthenticated { .. } => rt
                    .metrics
                    .refused_sources
                    .record(ctx.client_ip, "unauthenticated"),
                _ => {}
            }
            rejection.into_response()
        }
    };
    if !ctx.response_headers.is_empty() {
        response
            .headers_mut()
            .extend(std::mem::take(&mut ctx.response_headers));
    }
    if !ctx.request_id.is_empty() {
        response
            .headers_mut()
            .insert(headers::X_REQUEST_ID, ctx.request_id.clone());
    }
    let status = response.status().as_u16();
    ctx.route.as_ref().unwrap_or(&rt.no_route).record(
        &method,
        status,
        ctx.started.elapsed(),
        ctx.consumer(),
    );
    let exchange = Box::new(finish::Exchange {
        rt,
        ctx,
        method,
        request,
        received,
        status,
    });
    response.map(|body| BodyExt::boxed(access_log::LoggedBody::new(body, exchange)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(users: &str, other: bool) -> Config {
        let other = if other {
            "  other: {targets: ['127.0.0.1:9002']}\n"
        } else {
            ""
        };
        let route = if other.is_empty() {
            ""
        } else {
            "  - {match: {path_prefix: /other}, upstream: other}\n"
        };
        Config::from_yaml(
            &format!(
                "listeners: [{{address: '127.0.0.1:8080'}}]\n\
                 upstreams:\n  users: {users}\n{other}\
                 routes:\n  - {{match: {{path_prefix: /}}, upstream: users}}\n{route}"
            ),
            "test.yaml",
        )
        .unwrap()
    }

    #[test]
    fn a_recompile_keeps_unchanged_upstreams_and_replaces_changed_ones() {
        let metrics = Arc::new(Metrics::default());
        let compile = |config: &Config, previous: Option<&Upstreams>| {
            let resolution = Resolution::new(config, None);
            let previous = previous.map(|p| (p, &resolution));
            compile_upstreams(config, &metrics, previous, &resolution)
        };
        let users = "{targets: ['127.0.0.1:9001'], balancer: p2c_ewma}";
        let first = compile(&config(users, false), None).unwrap();

        // Another upstream and route; `users` as it was.
        let second = compile(&config(users, true), Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&first["users"], &second["users"]), "kept");
        assert!(second.contains_key("other"));

        // `users` changes: a new one. `other` is gone.
        let changed = "{targets: ['127.0.0.1:9001'], balancer: p2c_ewma, ewma_decay: 5s}";
        let third = compile(&config(changed, false), Some(&second)).unwrap();
        assert!(!Arc::ptr_eq(&second["users"], &third["users"]), "rebuilt");
        assert!(!third.contains_key("other"));

        // Without a previous runtime (a start), everything is new.
        let fresh = compile(&config(changed, false), None).unwrap();
        assert!(!Arc::ptr_eq(&third["users"], &fresh["users"]));
    }
}
