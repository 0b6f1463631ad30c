//! The L7 reverse proxy: the compiled runtime (router + upstreams), the
//! per-request forwarding path, and the listeners that feed it.

mod headers;
mod rejection;
mod router;
pub mod server;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Instant,
};

use bytes::Bytes;
use http::{uri::Uri, Request, Response, Version};
use http_body_util::{combinators::BoxBody, BodyExt};
use hyper::body::Incoming;
use ipnet::IpNet;

pub use self::rejection::{json_response, Rejection};
use self::{headers::Forwarded, router::Router};
use crate::{config::Config, upstream::Upstream};

/// Response body type: upstream bodies stream through; errors are small.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Everything a request needs, compiled once from config and immutable.
pub struct Runtime {
    router: Router,
    trusted_proxies: Vec<IpNet>,
}

impl Runtime {
    pub fn compile(config: &Config) -> Self {
        let upstreams: HashMap<String, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|(name, u)| (name.clone(), Arc::new(Upstream::new(name, u))))
            .collect();
        Self {
            router: Router::new(config, &upstreams),
            trusted_proxies: config.trusted_proxies.clone(),
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
    pub peer: SocketAddr,
    pub scheme: &'static str,
}

/// Handles one request end to end; never fails (errors become responses) and
/// always writes the access log line.
pub async fn handle(rt: Arc<Runtime>, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut route_name = None;
    let mut target = None;
    let response = match forward(&rt, req, conn, &mut route_name, &mut target).await {
        Ok(response) => response,
        Err(rejection) => rejection.into_response(),
    };
    tracing::info!(
        client.ip = %conn.peer.ip(),
        method = %method,
        path = %path,
        route = route_name.as_deref().unwrap_or("-"),
        upstream.target = %target.map(|t: SocketAddr| t.to_string()).unwrap_or_else(|| "-".into()),
        status = response.status().as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "access"
    );
    response
}

async fn forward(
    rt: &Runtime,
    req: Request<Incoming>,
    conn: ConnInfo,
    route_name: &mut Option<String>,
    chosen: &mut Option<SocketAddr>,
) -> Result<Response<Body>, Rejection> {
    if req.version() == Version::HTTP_11 && !req.headers().contains_key(http::header::HOST) {
        return Err(Rejection::MissingHost);
    }
    let route = rt
        .router
        .route(req.uri().path())
        .ok_or(Rejection::NoRoute)?;
    *route_name = Some(route.name.clone());
    let upstream = &route.upstream;
    let target = upstream.pick();
    *chosen = Some(target);

    let (mut parts, body) = req.into_parts();
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(target.to_string())
        .path_and_query(route.upstream_path(parts.uri.path_and_query()))
        .build()
        .expect("scheme, socket address and parsed path form a valid URI");
    parts.version = Version::HTTP_11;
    headers::strip_hop_by_hop(&mut parts.headers);
    Forwarded {
        peer: conn.peer.ip(),
        scheme: conn.scheme,
        trusted_proxies: &rt.trusted_proxies,
    }
    .apply(&mut parts.headers);

    let request = Request::from_parts(parts, body);
    let response =
        match tokio::time::timeout(upstream.timeout, upstream.client.request(request)).await {
            Err(_elapsed) => {
                return Err(Rejection::UpstreamTimeout {
                    target,
                    timeout_ms: upstream.timeout.as_millis(),
                })
            }
            Ok(Err(error)) => return Err(Rejection::from_client_error(target, error)),
            Ok(Ok(response)) => response,
        };
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body.boxed()))
}
