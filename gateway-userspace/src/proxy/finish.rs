//! What is done once a response is done (its last byte sent, or the client
//! gone): the access log line and the byte counters, with the bytes the
//! two bodies actually carried.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use http::{header, HeaderValue, Method, Request, Version};

use super::{
    access_log::{Entry, Finish},
    RequestContext, Runtime,
};
use crate::telemetry::RouteMetrics;

/// What the access log needs of the request as the client sent it (taken
/// before the request goes on and is rewritten).
pub(super) struct RequestFacts {
    protocol: &'static str,
    host: Option<HeaderValue>,
    path: String,
    query: Option<String>,
    user_agent: Option<HeaderValue>,
}

impl RequestFacts {
    pub fn of<B>(req: &Request<B>) -> Self {
        let uri = req.uri();
        let host = req
            .headers()
            .get(header::HOST)
            .cloned()
            .or_else(|| uri.authority().and_then(|a| a.as_str().parse().ok()));
        Self {
            protocol: protocol_name(req.version()),
            host,
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            user_agent: req.headers().get(header::USER_AGENT).cloned(),
        }
    }
}

fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// One exchange, waiting for its response to be done.
pub(super) struct Exchange {
    pub rt: Arc<Runtime>,
    pub ctx: RequestContext,
    pub method: Method,
    /// None when the access log is off.
    pub request: Option<RequestFacts>,
    /// Request body bytes read so far.
    pub received: Arc<AtomicU64>,
    pub status: u16,
}

impl Finish for Exchange {
    fn finish(self: Box<Self>, bytes_out: u64) {
        let Exchange {
            rt,
            ctx,
            method,
            request,
            received,
            status,
        } = *self;
        let bytes_in = received.load(Ordering::Relaxed);
        ctx.route
            .as_deref()
            .unwrap_or(&rt.no_route)
            .bytes(bytes_in, bytes_out);
        let Some(request) = request else {
            return;
        };
        fn text(value: &Option<HeaderValue>) -> Option<&str> {
            value.as_ref().and_then(|v| v.to_str().ok())
        }
        let request_id = ctx.request_id();
        rt.access_log.write(&Entry {
            ts: Some(std::time::SystemTime::now()),
            client_ip: Some(ctx.client_ip),
            listener: Some(&ctx.conn.listener)
                .filter(|l| !l.is_empty())
                .map(|l| &**l),
            protocol: Some(request.protocol),
            tls: ctx.conn.tls_version,
            method: Some(method.as_str()),
            host: text(&request.host),
            path: Some(ctx.normalized_path.as_deref().unwrap_or(&request.path)),
            query: request.query.as_deref(),
            status,
            bytes_in: Some(bytes_in),
            bytes_out: Some(bytes_out),
            duration_ms: Some(ctx.started.elapsed().as_secs_f64() * 1000.0),
            upstream: ctx.upstream_target,
            upstream_status: ctx.upstream_status,
            upstream_ms: ctx.upstream_duration.map(|d| d.as_secs_f64() * 1000.0),
            retries: ctx.upstream_target.map(|_| ctx.retries),
            route: ctx.route.as_deref().map(RouteMetrics::name),
            consumer: ctx.consumer().map(|c| &*c.username),
            request_id: Some(request_id).filter(|id| !id.is_empty()),
            user_agent: text(&request.user_agent),
            verdicts: &ctx.verdicts,
            rejection: ctx.rejection,
            detail: None,
        });
    }
}
