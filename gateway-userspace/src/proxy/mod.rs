//! The L7 reverse proxy: the compiled runtime (router + upstreams), the
//! per-request forwarding path, and the listeners that feed it.

mod context;
mod forward;
mod headers;
mod rejection;
mod router;
pub mod server;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use ipnet::IpNet;

use self::router::Router;
pub use self::{
    context::RequestContext,
    rejection::{json_response, Rejection},
};
use crate::{config::Config, telemetry::Metrics, upstream::Upstream};

/// Body type in both directions: bodies stream through; errors are small.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Everything a request needs, compiled once from config and immutable.
pub struct Runtime {
    router: Router,
    trusted_proxies: Vec<IpNet>,
    pub metrics: Arc<Metrics>,
}

impl Runtime {
    pub fn compile(config: &Config, metrics: Arc<Metrics>) -> Self {
        let upstreams: HashMap<String, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|(name, u)| (name.clone(), Arc::new(Upstream::new(name, u))))
            .collect();
        Self {
            router: Router::new(config, &upstreams),
            trusted_proxies: config.trusted_proxies.clone(),
            metrics,
        }
    }

    pub fn route_count(&self) -> usize {
        self.router.len()
    }
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

/// The client side of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The client as the connection itself says: the PROXY protocol header's
    /// source when a trusted peer sent one, else `peer`.
    pub client: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
}

/// Handles one request end to end; never fails (errors become responses) and
/// always writes the access log line.
pub async fn handle(rt: Arc<Runtime>, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
    let mut ctx = RequestContext::new(conn);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = match forward::forward(&rt, req, &mut ctx).await {
        Ok(response) => response,
        Err(rejection) => rejection.into_response(),
    };
    let route = ctx.route.as_deref().unwrap_or("-");
    let status = response.status().as_u16();
    let elapsed = ctx.started.elapsed();
    rt.metrics
        .request(route, method.as_str(), status, "anonymous", elapsed);
    tracing::info!(
        client.ip = %ctx.client_ip,
        method = %method,
        path = %path,
                route,
        upstream.target = %ctx.upstream_target.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        "access"
    );
    response
}
