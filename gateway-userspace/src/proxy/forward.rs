//! The forwarding path: check the request, answer it here if it is for the
//! gateway itself (`local`), else pick the route, rewrite what goes
//! upstream, hand it to the upstream, rewrite what comes back.

use bytes::Bytes;
use http::{Method, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Body as HttpBody;

use super::{
    body_buffer, headers, limits, normalize, router::Destination, Body, BoxError, Rejection,
    RequestContext, Runtime,
};

pub(super) async fn forward<B>(
    rt: &Runtime,
    req: Request<B>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, Rejection>
where
    B: HttpBody<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();

    // Who is asking: the connection's client, or what a trusted proxy says.
    let connection_client = ctx.conn.client.ip();
    let peer_trusted = headers::is_trusted(connection_client, &rt.trusted_proxies);
    ctx.client_ip = headers::client_ip(connection_client, &parts.headers, &rt.trusted_proxies);
    ctx.request_id = headers::request_id(&parts.headers, peer_trusted);
    if ctx.client_ip != connection_client
        || rt.guard.as_ref().is_some_and(|l| l.has_runtime_denies())
    {
        // The accept-time guard only saw the proxy, or an entry added since
        // (a ban) covers a connection it let in.
        if let Some(rule) = rt
            .guard
            .as_ref()
            .and_then(|lists| lists.denies(ctx.client_ip))
        {
            tracing::debug!(client.ip = %ctx.client_ip, %rule, "request refused by blocklist");
            ctx.verdicts.push("blocklist:deny");
            return Err(Rejection::Blocked(ctx.client_ip));
        }
    }

    if parts.version == Version::HTTP_11 && !parts.headers.contains_key(http::header::HOST) {
        return Err(Rejection::MissingHost);
    }
    limits::check_framing(&parts)?;
    limits::check_uri(&parts, rt.limits.max_uri_bytes)?;
    if parts.method == Method::CONNECT && !rt.router.allows_connect() {
        return Err(Rejection::MethodNotAllowed);
    }
    // From here on, routing, policies, the log and the upstream see one
    // request: the normalized path, one authority.
    ctx.normalized_path = normalize::request(&mut parts, &rt.normalization)?;
    normalize::underscore_headers(
        &mut parts.headers,
        rt.normalization.headers_with_underscores,
    )?;

    // Identity headers are the gateway's to set: a client's copies never
    // go upstream, whatever the route. The verified client certificate's
    // go on every request of its connection (routes may match on them).
    crate::policy::strip_identity_headers(&mut parts.headers);
    if let Some(local) = &rt.local {
        if let Some(endpoint) = local.find(&parts, &ctx.conn.listener) {
            return Ok(local.answer(endpoint, parts, body, peer_trusted, ctx).await);
        }
    }
    if let Some(cert) = &ctx.conn.client_cert {
        cert.apply(&mut parts.headers);
    }
    let matched = rt.router.route(&parts).ok_or(Rejection::NoRoute)?;
    let route = matched.route;
    ctx.route = Some(route.metrics.clone());
    let chain = (!route.policies.empty).then(|| route.policies.chain(&ctx.conn.listener));
    // A policy that reads the body (opa) gets all of it before it runs.
    let mut streamed = Some(body);
    let mut buffered = None;
    if let Some(limit) = chain.and_then(crate::policy::Chain::body_limit) {
        if let Some(body) = streamed.take() {
            buffered = Some(body_buffer::read(&mut parts, body_buffer::boxed(body), limit).await?);
        }
    }
    if let Some(chain) = chain {
        // For the mtls policy.
        if let Some(cert) = &ctx.conn.client_cert {
            parts.extensions.insert(cert.clone());
        }
        let input = crate::policy::ChainInput {
            client_ip: ctx.client_ip,
            conn: &ctx.conn,
            verdicts: &mut ctx.verdicts,
            response_headers: &mut ctx.response_headers,
            signals: rt.signals.as_deref(),
        };
        ctx.identity = chain.run(&mut parts, input).await?;
    }
    let upstream = match &route.destination {
        Destination::Upstream(upstream) => upstream,
        // The policies' response headers are added to it like to any.
        Destination::Respond(fixed) => return Ok(fixed.response()),
    };
    let max_body = route.max_body_bytes.or(rt.limits.max_body_bytes);
    let body = match (streamed, buffered) {
        (Some(body), _) => limits::limit_body(&parts, body, max_body)?,
        (None, Some(body)) => body,
        (None, None) => unreachable!("the body is streamed or buffered"),
    };

    parts.uri = route.upstream_path(parts.uri.path_and_query()).into();
    parts.version = Version::HTTP_11;
    let upgrade = super::upgrade::UpgradeRequest::take(&mut parts);
    headers::strip_request_hop_by_hop(&mut parts.headers);
    if let Some(upgrade) = &upgrade {
        upgrade.restore_request_headers(&mut parts.headers);
    }
    let forward_fields =
        ctx.conn
            .forwarding
            .fields(&mut parts.headers, peer_trusted, &ctx.request_id);

    let request = Request::from_parts(parts, body);
    let mut response = match upstream.dispatch(request, &forward_fields, ctx).await {
        Ok(response) => response,
        Err(rejection) if rejection.caused_by::<limits::BodyTooLarge>() => {
            return Err(Rejection::PayloadTooLarge)
        }
        Err(rejection) => return Err(rejection),
    };
    let switched = upgrade.and_then(|upgrade| upgrade.relay(&mut response, ctx));
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(switched) = &switched {
        switched.restore_response_headers(&mut parts.headers);
    }
    Ok(Response::from_parts(
        parts,
        body.map_err(Into::into).boxed(),
    ))
}
