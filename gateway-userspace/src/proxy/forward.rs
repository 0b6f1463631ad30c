//! The forwarding path: check the request, pick the route, rewrite what goes
//! upstream, hand it to the upstream, rewrite what comes back.

use http::{Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{headers, headers::Forwarded, Body, Rejection, RequestContext, Runtime};

pub(super) async fn forward(
    rt: &Runtime,
    req: Request<Incoming>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, Rejection> {
    if req.version() == Version::HTTP_11 && !req.headers().contains_key(http::header::HOST) {
        return Err(Rejection::MissingHost);
    }
    let route = rt
        .router
        .route(req.uri().path())
        .ok_or(Rejection::NoRoute)?;
    ctx.route = Some(route.name.clone());

    let (mut parts, body) = req.into_parts();
    parts.uri = route
        .upstream_path(parts.uri.path_and_query())
        .as_str()
        .parse()
        .expect("a path-and-query is a valid relative URI");
    parts.version = Version::HTTP_11;
    headers::strip_hop_by_hop(&mut parts.headers);
    Forwarded {
        peer: ctx.conn.peer.ip(),
        scheme: ctx.conn.scheme,
        trusted_proxies: &rt.trusted_proxies,
    }
    .apply(&mut parts.headers);

    let request = Request::from_parts(parts, body.boxed());
    let response = route.upstream.dispatch(request, ctx).await?;
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body.boxed()))
}
